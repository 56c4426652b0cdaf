"""Rasteriser backend on ``pytorch3d.renderer.mesh.rasterize_meshes`` (optional dependency).

pytorch3d is imported lazily, inside the class, so the package works without it.

Conventions (pytorch3d's NDC, read from its rasteriser): +X points left, +Y up, and the
shorter image side spans [-1, 1] while the longer spans ``[-L/S, L/S]``; the output pixel
(row r, col c) is sampled at ``x_ndc = (W − 1 − 2c) / S``, ``y_ndc = (H − 1 − 2r) / S`` with
``S = min(H, W)``. Our pixel centres are ``(x=c, y=r)``, so a screen-space vertex maps to
``x_ndc = (W − 1 − 2 x_img) / S``, ``y_ndc = (H − 1 − 2 y_img) / S``, ``z = depth``.
Both axes flip, a rotation by 180°, so the sign of a triangle's screen area is unchanged.

Culling and degenerate/behind-camera triangles are filtered here, with the same rule as
the torch backend (:func:`rasterizable_triangles`), before calling pytorch3d; pytorch3d
returns only ``pix_to_face`` of the nearest face, and barycentrics are recomputed by the
shared differentiable code.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from emoedit.render.barycentric import rasterizable_triangles
from emoedit.render.rasterizer import Rasterizer


@functools.lru_cache(maxsize=1)
def pytorch3d_import_error() -> str | None:
    """None when pytorch3d's mesh rasteriser imports, else the reason it does not."""
    try:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes  # noqa: F401
        from pytorch3d.structures import Meshes  # noqa: F401
    except Exception as error:  # ImportError, or OSError from a broken compiled extension
        return f"{type(error).__name__}: {error}"
    return None


def screen_to_pytorch3d_ndc(vertices: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Map screen-space vertices to pytorch3d's NDC (see the module docstring).

    Args:
        vertices: ``(..., 3)`` float ``(x_img, y_img, depth)``.
        image_size: ``(H, W)`` in pixels.

    Returns:
        ``(..., 3)`` float ``(x_ndc, y_ndc, depth)``.
    """
    height, width = image_size
    shorter = float(min(height, width))
    x_ndc = (width - 1 - 2.0 * vertices[..., 0]) / shorter
    y_ndc = (height - 1 - 2.0 * vertices[..., 1]) / shorter
    return torch.stack([x_ndc, y_ndc, vertices[..., 2]], dim=-1)


class Pytorch3dRasterizer(Rasterizer):
    """Visibility by pytorch3d's rasteriser (CUDA: fast; CPU: seconds per frame)."""

    name = "pytorch3d"

    def __init__(
        self,
        *,
        cull_backfaces: bool = False,  # drop triangles facing away from the camera
        perspective_correct: bool = True,  # perspective-correct barycentrics and depth
        bin_size: int | None = None,  # pytorch3d coarse-to-fine bin size (None: its heuristic)
        max_faces_per_bin: int | None = None,  # pytorch3d per-bin face budget (None: its default)
    ) -> None:
        super().__init__(cull_backfaces=cull_backfaces, perspective_correct=perspective_correct)
        reason = pytorch3d_import_error()
        if reason is not None:
            raise ImportError(
                "rasteriser backend 'pytorch3d' requested but pytorch3d cannot be imported "
                f"({reason}); install it (pip install 'emoedit[pytorch3d]') or use backend='torch'"
            )
        self.bin_size = bin_size
        self.max_faces_per_bin = max_faces_per_bin

    def visible_faces(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``(B, H, W)`` int64 nearest triangle per pixel centre, -1 = background."""
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
        from pytorch3d.structures import Meshes

        height, width = image_size
        batch = vertices.shape[0]
        verts = vertices.to(torch.float32)
        face_vertices = verts[:, triangles]  # (B,F,3,3)
        drawable = rasterizable_triangles(face_vertices, cull_backfaces=self.cull_backfaces)  # (B,F)
        kept_ids = [torch.nonzero(drawable[b]).squeeze(1) for b in range(batch)]
        result = torch.full((batch, height, width), -1, dtype=torch.int64, device=vertices.device)
        if all(ids.numel() == 0 for ids in kept_ids):
            return result
        ndc = screen_to_pytorch3d_ndc(verts, (height, width))
        ndc = torch.nan_to_num(ndc, nan=0.0, posinf=0.0, neginf=0.0)  # non-drawable corners only
        meshes = Meshes(verts=list(ndc.unbind(0)), faces=[triangles[ids] for ids in kept_ids])
        pix_to_face, _, _, _ = rasterize_meshes(
            meshes,
            image_size=(height, width),
            blur_radius=0.0,
            faces_per_pixel=1,
            bin_size=self.bin_size,
            max_faces_per_bin=self.max_faces_per_bin,
            perspective_correct=self.perspective_correct,
            cull_backfaces=False,
        )
        packed = pix_to_face[..., 0]  # (B,H,W) index into the packed face list
        first = meshes.mesh_to_faces_packed_first_idx()
        for b, ids in enumerate(kept_ids):
            hit = packed[b] >= 0
            if ids.numel():
                result[b][hit] = ids[packed[b][hit] - first[b]]
        return result
