"""What ``--save-intermediates DIR`` writes, for inspecting one edit.

Layout of ``DIR``:

- ``edit_data.pt`` (``torch.load(..., weights_only=True)``): a dict with the per-frame
  numbers of the edit (rows = frames with a face, ``frames`` their video indices):
  ``coeffs`` (Tv, L) reconstructed, ``coeffs_edited`` (Tv, L) rendered, ``landmarks``
  (Tv, 68, 2) tracked (frame pixels), ``emotion_codes`` (T, E) per video frame, ``wplus``
  (Tv, num_ws, w_dim) encoder output x0, ``wplus_edited`` (Tv, num_ws, w_dim) decoded
  latents (smoothed), ``subject_weights`` (Tv, N) per frame and ``subject_weights_mean``
  (N,) (the mixture eq. 4 used: their video mean, tempered by the directions' τ), ``visible_fraction`` (Tv,), and plain values:
  ``texture_edit_mode`` ("classifier", "subject", "mean" or "off"), ``texture_mode``,
  ``subjects``, ``emotions``, ``smoothing_half_window``, ``options``;
- ``textures/NNNNNN.png``: the UV texture rendered for frame NNNNNN (edited or extracted);
- ``extracted/NNNNNN.png``: the frame's own extracted texture (modes that re-extract it);
- ``renders/NNNNNN.png``: the face rendered in the texture crop;
- ``masks/NNNNNN.png``: the feathered paste weight in the texture crop.

Every file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from emoedit.atomic_io import atomic_torch_save
from emoedit.pipeline.contact_sheet import write_png

EDIT_DATA_FILE = "edit_data.pt"


class IntermediatesWriter:
    """Writes the intermediates of one edit into a folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @classmethod
    def create(cls, folder: str | os.PathLike) -> IntermediatesWriter:
        """Create ``folder`` (and parents) and return a writer for it."""
        writer = cls(folder)
        writer.folder.mkdir(parents=True, exist_ok=True)
        return writer

    def write_data(self, data: Mapping[str, Any]) -> Path:
        """``edit_data.pt``: tensors and plain values only (loadable with ``weights_only=True``)."""
        return atomic_torch_save(dict(data), self.folder / EDIT_DATA_FILE)

    def write_frame(
        self,
        frame_index: int,  # video frame index
        *,
        uv_texture: Tensor,  # (3, T, T) float in [0, 1]: the texture rendered
        render: Tensor,  # (3, S, S) float in [0, 1]: the render in the texture crop
        paste_mask: Tensor,  # (1, S, S) float in [0, 1]: the paste weight
        extracted: Tensor | None = None,  # (3, T, T) float in [0, 1]: the frame's own texture, if extracted
    ) -> None:
        """One frame's PNGs."""
        name = f"{frame_index:06d}.png"
        write_png(self.folder / "textures" / name, uv_texture)
        write_png(self.folder / "renders" / name, render)
        write_png(self.folder / "masks" / name, paste_mask.expand(3, -1, -1))
        if extracted is not None:
            write_png(self.folder / "extracted" / name, extracted)


__all__ = ["EDIT_DATA_FILE", "IntermediatesWriter"]
