"""Differentiable mesh renderer: UV-textured or vertex-coloured, optional SH shading.

The renderer rasterises screen-space vertices (``(x_img, y_img, depth)``, see
:class:`~emoedit.face_model.camera.PerspectiveCamera.project`), interpolates per-pixel
albedo — from a UV texture (``grid_sample``, ``align_corners=True``, v downward) or from
per-vertex colours — optionally multiplies it by the SH irradiance of the interpolated,
renormalised vertex normals (Deep3DFaceRecon's lighting), and composites it over a
constant background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.render.fragments import Fragments
from emoedit.render.rasterizer import Rasterizer, interpolate_vertex_attributes, make_rasterizer
from emoedit.shape_checks import assert_shape


@dataclass(frozen=True)
class RenderOutput:
    """What :class:`MeshRenderer` produces.

    Attributes:
        image: ``(B, 3, H, W)`` float in [0, 1]; the background value outside the face.
        mask: ``(B, 1, H, W)`` float in {0, 1}, 1 where the mesh covers the pixel.
        fragments: the rasteriser's :class:`Fragments` (reusable, e.g. for texture
            extraction or depth tests).
    """

    image: Tensor
    mask: Tensor
    fragments: Fragments


class MeshRenderer(nn.Module):
    """Render a batch of meshes sharing one triangle list (no learnable parameters)."""

    def __init__(
        self,
        *,
        image_size: int,  # side of the square output image, pixels
        backend: str = "auto",  # rasteriser: "auto" | "torch" | "pytorch3d" (make_rasterizer)
        cull_backfaces: bool = True,  # drop triangles facing away from the camera
        background: float = 0.0,  # image value outside the mesh, in [0, 1]
        perspective_correct: bool = True,  # perspective-correct interpolation
    ) -> None:
        super().__init__()
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"MeshRenderer: image_size must be a positive int, got {image_size!r}")
        if not 0.0 <= float(background) <= 1.0:
            raise ValueError(f"MeshRenderer: background must lie in [0, 1], got {background}")
        self.image_size = image_size
        self.background = float(background)
        self.rasterizer: Rasterizer = make_rasterizer(
            backend, cull_backfaces=cull_backfaces, perspective_correct=perspective_correct
        )

    def forward(
        self,
        vertices_screen: Tensor,  # (B,V,3) (x_img, y_img, depth), pixels / decimetres
        triangles: Tensor,  # (F,3) int64
        *,
        uv_coords: Tensor | None = None,  # (V,2) or (B,V,2) in [0,1], u right, v down
        uv_texture: Tensor | None = None,  # (B,3,T,T) or (1,3,T,T) albedo in [0,1]
        vertex_colors: Tensor | None = None,  # (B,V,3) or (V,3) albedo/colour in [0,1]
        vertex_normals: Tensor | None = None,  # (B,V,3) unit normals (world space), for gamma
        gamma: Tensor | None = None,  # (B,27) SH lighting (Deep3D layout); None = unshaded
    ) -> RenderOutput:
        """Render.

        Exactly one colour source: ``uv_texture`` (with ``uv_coords``) or ``vertex_colors``.
        With ``gamma``, the per-pixel colour is ``albedo × sh_irradiance(n, gamma)`` where
        ``n`` is the interpolated and renormalised ``vertex_normals``; without it the
        albedo is shown as is (pass already-shaded ``vertex_colors`` that way).

        Returns:
            :class:`RenderOutput`; ``image`` is clamped to [0, 1] (colours outside that
            range, e.g. from strong lights, saturate and get no gradient).
        """
        dims = assert_shape(vertices_screen, ("B", "V", 3), "vertices_screen")
        assert_shape(triangles, (None, 3), "triangles")
        batch = vertices_screen.shape[0]
        size = self.image_size
        if (uv_texture is None) == (vertex_colors is None):
            raise ValueError("MeshRenderer: pass exactly one of uv_texture (with uv_coords) or vertex_colors")
        if gamma is not None and vertex_normals is None:
            raise ValueError("MeshRenderer: gamma (SH lighting) needs vertex_normals")

        fragments = self.rasterizer(vertices_screen, triangles, (size, size))
        if uv_texture is not None:
            if uv_coords is None:
                raise ValueError("MeshRenderer: uv_texture needs uv_coords")
            albedo = self._sample_texture(fragments, triangles, uv_coords, uv_texture, dims)
        else:
            assert vertex_colors is not None
            _check_per_vertex(vertex_colors, 3, "vertex_colors", dims)
            albedo = interpolate_vertex_attributes(fragments, triangles, vertex_colors)  # (B,H,W,3)

        if gamma is not None:
            assert vertex_normals is not None
            from emoedit.face_model.lighting import sh_irradiance  # engineer A's SH model

            assert_shape(vertex_normals, ("B", "V", 3), "vertex_normals", dims)
            assert_shape(gamma, ("B", 27), "gamma", dims)
            normals = interpolate_vertex_attributes(fragments, triangles, vertex_normals)
            normals = F.normalize(normals, dim=-1, eps=1e-8)
            shading = sh_irradiance(normals.reshape(batch, -1, 3), gamma.to(normals.dtype))
            albedo = albedo * shading.view(batch, size, size, 3)

        colour = albedo.permute(0, 3, 1, 2)  # (B,3,H,W)
        low, high = torch.aminmax(colour.detach())
        if float(low) < 0.0 or float(high) > 1.0:  # e.g. strong lights; skipped (cheaper) otherwise
            colour = colour.clamp(0.0, 1.0)
        mask = fragments.mask.unsqueeze(1).to(colour.dtype)  # (B,1,H,W) in {0,1}
        image = colour * mask  # exact: × 1 or × 0 (colours are finite everywhere)
        if self.background != 0.0:
            image = image + self.background * (1.0 - mask)
        return RenderOutput(image=image, mask=mask, fragments=fragments)

    def _sample_texture(
        self,
        fragments: Fragments,
        triangles: Tensor,
        uv_coords: Tensor,
        uv_texture: Tensor,
        dims: dict[str, int],
    ) -> Tensor:
        """``(B, H, W, 3)`` bilinear texture lookup at the interpolated UV of each pixel."""
        batch = dims["B"]
        _check_per_vertex(uv_coords, 2, "uv_coords", dims)
        assert_shape(uv_texture, (None, 3, "T", "T"), "uv_texture")
        if uv_texture.shape[0] not in (1, batch):
            raise ValueError(f"MeshRenderer: uv_texture batch is {uv_texture.shape[0]}, expected 1 or {batch}")
        if uv_texture.shape[0] != batch:
            uv_texture = uv_texture.expand(batch, -1, -1, -1)
        uv = interpolate_vertex_attributes(fragments, triangles, uv_coords.to(uv_texture.dtype))
        grid = uv * 2.0 - 1.0  # u·(T−1) texels ⇔ normalised 2u − 1 (align_corners=True)
        sampled = F.grid_sample(uv_texture, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled.permute(0, 2, 3, 1)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, background={self.background}, rasterizer={self.rasterizer!r}"


def _check_per_vertex(values: Tensor, channels: int, name: str, dims: dict[str, int]) -> None:
    """Accept ``(V, C)`` shared by the batch or ``(B, V, C)``."""
    if values.ndim == 2:
        assert_shape(values, ("V", channels), name, dims)
    else:
        assert_shape(values, ("B", "V", channels), name, dims)
