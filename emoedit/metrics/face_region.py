"""The face region of a frame: pixels covered by the face mesh (where face metrics are taken)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def face_masks(model: Any, camera: Any, coeffs: Tensor, image_size: int) -> Tensor:
    """``(N, 1, S, S)`` bool: pixels covered by the face mesh of ``coeffs`` (N, L) under ``camera``.

    ``model`` is a :class:`~emoedit.face_model.MorphableModel`, ``camera`` a
    :class:`~emoedit.face_model.PerspectiveCamera` for ``image_size`` (S) pixels; back faces are culled.
    """
    from emoedit.render.renderer import MeshRenderer

    renderer = MeshRenderer(image_size=image_size, backend="torch", cull_backfaces=True)
    with torch.no_grad():
        face = model(coeffs.float(), camera)
        colours = torch.ones_like(face.vertex_colors)
        out = renderer(face.vertices_screen, model.triangles, vertex_colors=colours)
    return out.mask > 0.5


__all__ = ["face_masks"]
