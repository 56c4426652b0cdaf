"""Contact sheets: labelled rows of frames in one image (like the paper's figures).

Fig. 2 of the paper is rows = emotions, columns = frames of the edited video; Fig. 3 is one
row of intensities. ``contact_sheet([("happy", frames), ("sad", frames)])`` builds such an
image: a label column on the left (PIL's default font), then every frame of the row scaled
to ``tile`` pixels high (aspect kept), rows padded with the background colour to the
widest. Optional ``column_labels`` add a header row (e.g. intensities or times).

Frames may be ``(H, W, 3)`` uint8 numpy arrays or tensors, or ``(3, H, W)`` float tensors
in [0, 1] (the renderer's convention). :func:`save_contact_sheet` writes a PNG atomically;
:func:`write_png` writes any ``(H, W, 3)`` uint8 image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from emoedit.atomic_io import atomic_path

Frame = np.ndarray | Tensor

BACKGROUND = (24, 24, 24)  # sheet background, RGB uint8
TEXT_COLOUR = (235, 235, 235)  # label colour, RGB uint8
GAP_PX = 2  # gap between tiles, pixels


def as_hwc_uint8(frame: Frame, name: str = "frame") -> np.ndarray:
    """``(H, W, 3)`` uint8 array or tensor, or ``(3, H, W)`` float tensor in [0, 1] → ``(H, W, 3)`` uint8 numpy."""
    if isinstance(frame, Tensor):
        tensor = frame.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3) and tensor.is_floating_point():
            if tensor.shape[0] == 1:
                tensor = tensor.expand(3, -1, -1)
            return tensor.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        frame = tensor.numpy()
    array = np.asarray(frame)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name}: expected (H, W, 3) uint8 or a (3, H, W) float tensor, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise TypeError(f"{name}: numpy frames must be uint8 (H, W, 3), got {array.dtype}")
    return np.ascontiguousarray(array)


def _resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    if h == height:
        return image
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[Frame]]],  # (label, frames) per row; frames as in as_hwc_uint8
    *,
    label_width: int = 120,  # width of the label column, pixels (0: no labels)
    tile: int = 128,  # height every frame is scaled to, pixels (aspect kept)
    column_labels: Sequence[str] | None = None,  # optional header text above each column
) -> np.ndarray:
    """``(H, W, 3)`` uint8 image: one labelled row per entry of ``rows`` (see the module docstring)."""
    from PIL import Image, ImageDraw, ImageFont

    if not rows:
        raise ValueError("contact_sheet: no rows")
    if tile < 1 or label_width < 0:
        raise ValueError(f"contact_sheet: tile must be >= 1 and label_width >= 0, got {tile}, {label_width}")
    tiles: list[list[np.ndarray]] = []
    for r, (label, frames) in enumerate(rows):
        if not frames:
            raise ValueError(f"contact_sheet: row {r} ({label!r}) has no frames")
        tiles.append([_resize_to_height(as_hwc_uint8(f, f"rows[{r}][{i}]"), tile) for i, f in enumerate(frames)])
    columns = max(len(row) for row in tiles)
    column_width = [max((row[c].shape[1] for row in tiles if c < len(row)), default=0) for c in range(columns)]
    header = 16 if column_labels else 0
    width = label_width + sum(w + GAP_PX for w in column_width) + GAP_PX
    height = header + len(tiles) * (tile + GAP_PX) + GAP_PX
    sheet = np.empty((height, width, 3), np.uint8)
    sheet[:] = BACKGROUND
    for r, row in enumerate(tiles):
        top = header + GAP_PX + r * (tile + GAP_PX)
        left = label_width + GAP_PX
        for c, image in enumerate(row):
            sheet[top : top + tile, left : left + image.shape[1]] = image
            left += column_width[c] + GAP_PX
    canvas = Image.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if label_width > 0:
        for r, (label, _) in enumerate(rows):
            top = header + GAP_PX + r * (tile + GAP_PX)
            draw.text((4, top + tile // 2 - 6), str(label), fill=TEXT_COLOUR, font=font)
    if column_labels:
        left = label_width + GAP_PX
        for c, text in enumerate(list(column_labels)[:columns]):
            draw.text((left + 2, 2), str(text), fill=TEXT_COLOUR, font=font)
            left += column_width[c] + GAP_PX
    return np.asarray(canvas).copy()


def write_png(path: str | os.PathLike, image: Frame) -> Path:
    """Write an image (as :func:`as_hwc_uint8` accepts) as PNG, atomically; returns ``path``."""
    from PIL import Image

    array = as_hwc_uint8(image, str(path))
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def save_contact_sheet(
    path: str | os.PathLike,  # output PNG
    rows: Sequence[tuple[str, Sequence[Frame]]],  # as contact_sheet
    *,
    label_width: int = 120,  # as contact_sheet
    tile: int = 128,  # as contact_sheet
    column_labels: Sequence[str] | None = None,  # as contact_sheet
) -> Path:
    """:func:`contact_sheet` written as a PNG (atomically); returns ``path``."""
    return write_png(path, contact_sheet(rows, label_width=label_width, tile=tile, column_labels=column_labels))


__all__ = ["as_hwc_uint8", "contact_sheet", "save_contact_sheet", "write_png"]
