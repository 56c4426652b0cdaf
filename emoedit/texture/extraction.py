"""Image → UV texture extraction (METHOD §3.2).

Every texel of the UV layout belongs to one mesh triangle at fixed barycentrics. Given the
mesh projected into a frame (``vertices_screen`` from the face model), the texel's point
on the surface projects to an image position; the texture is the frame sampled there.

Two samplings (``sampling``):
- ``"image_coords"`` (project choice, default): interpolate the projected *image
  coordinates* of the triangle's corners at the texel's barycentrics (perspective-correct)
  and sample the frame bilinearly at that point. Keeps detail finer than the mesh.
- ``"vertex_colors"``: sample the frame at each projected vertex, then interpolate those
  colours over the UV triangle (classic per-vertex texture; loses detail between vertices).

Both return the same visibility: a texel is visible when it is filled in the layout, its
triangle faces the camera (screen-space winding, preamble convention), its point projects
inside the frame, and it is not occluded: every pixel its bilinear sample reads shows
nothing, its own triangle, or a surface no nearer than its own (depth test against the
frame-size z-buffer of the same mesh, with a small tolerance plus a slope-scaled bias for
steep triangles).

Invisible texels hold 0, except the ``pad_texels`` rings around the visible region, which
repeat the nearest visible colours (edge padding) so that bilinear texture lookups at the
visibility border, e.g. when re-rendering, do not pull in black. ``visibility`` stays 0
there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.render.fragments import Fragments
from emoedit.render.rasterizer import Rasterizer, make_rasterizer
from emoedit.shape_checks import assert_finite, assert_range, assert_shape
from emoedit.texture.uv_layout import UVLayout

Sampling = Literal["image_coords", "vertex_colors"]
_SAMPLINGS: tuple[str, ...] = ("image_coords", "vertex_colors")

# Image points this many pixels beyond the first/last pixel centre still count as inside
# (floating-point slack for texels that project exactly onto the border pixels).
_BORDER_SLACK_PX = 1e-3

# A bilinear tap weighing at most this little is ignored by the occlusion test (rounding
# noise of points that project exactly onto a pixel row or column).
_NEGLIGIBLE_TAP_WEIGHT = 1e-3

# Triangles with a doubled screen area below this (pixels²) are edge-on: no depth slope.
_MIN_SCREEN_AREA2_PX = 1e-6


@dataclass(frozen=True)
class UVExtraction:
    """Result of image → UV extraction.

    uv_texture: (B,3,T,T) float in [0,1]; the frame's colour on visible texels, edge-padded
        colours on the ``pad_texels`` rings of invisible texels around them, 0 elsewhere.
    visibility: (B,1,T,T) float in {0,1}; 1 where the texel was seen in the frame.
    """

    uv_texture: Tensor
    visibility: Tensor


def screen_facing(vertices_screen: Tensor, triangles: Tensor) -> Tensor:
    """Which triangles face the camera, from their winding in the image.

    vertices_screen: (B,V,3) (x_img, y_img, depth), pixels / depth units.
    triangles: (F,3) int64, wound so (v1−v0)×(v2−v0) points out of the surface in model
    space (y up). The image's y axis points down, which flips the winding: a triangle
    faces the camera iff its signed image-space area is negative.
    Returns (B,F) bool.
    """
    assert_shape(vertices_screen, (None, None, 3), "vertices_screen")
    assert_shape(triangles, (None, 3), "triangles")
    corners = vertices_screen[:, triangles, :2]  # (B,F,3,2)
    e1 = corners[:, :, 1] - corners[:, :, 0]
    e2 = corners[:, :, 2] - corners[:, :, 0]
    signed_area2 = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    return signed_area2 < 0


def _pixel_lookup(values: Tensor, col: Tensor, row: Tensor) -> Tensor:
    """Gather values (B,H,W) at integer pixels col, row (B,N) (clamped into the image) -> (B,N)."""
    _, height, width = values.shape
    col = col.clamp(0, width - 1)
    row = row.clamp(0, height - 1)
    return torch.gather(values.reshape(values.shape[0], -1), 1, row * width + col)


def inverse_depth_gradient(vertices_screen: Tensor, triangles: Tensor) -> Tensor:
    """Per-triangle gradient of 1/depth over the image plane, d(1/depth)/d(x_img, y_img).

    Under perspective projection 1/depth of a planar triangle is affine in image
    coordinates, so this is exact over the whole triangle (and its plane).
    vertices_screen: (B,V,3) (x_img, y_img, depth > 0); triangles: (F,3) int64.
    Returns (B,F,2) in 1/(depth unit · pixel); zeros for triangles of (near-)zero screen
    area (edge-on).
    """
    assert_shape(vertices_screen, (None, None, 3), "vertices_screen")
    assert_shape(triangles, (None, 3), "triangles")
    corners = vertices_screen[:, triangles]  # (B,F,3,3)
    inverse = 1.0 / corners[..., 2]  # (B,F,3)
    e1 = corners[:, :, 1, :2] - corners[:, :, 0, :2]
    e2 = corners[:, :, 2, :2] - corners[:, :, 0, :2]
    d1 = inverse[..., 1] - inverse[..., 0]
    d2 = inverse[..., 2] - inverse[..., 0]
    det = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    usable = det.abs() > _MIN_SCREEN_AREA2_PX
    safe = torch.where(usable, det, torch.ones_like(det))
    grad_x = (d1 * e2[..., 1] - d2 * e1[..., 1]) / safe
    grad_y = (e1[..., 0] * d2 - e2[..., 0] * d1) / safe
    grad = torch.stack([grad_x, grad_y], dim=-1)
    return torch.where(usable[..., None], grad, torch.zeros_like(grad))


def _unoccluded(
    fragments: Fragments,  # Fragments (B,H,W) of the mesh at the frame size
    x: Tensor,  # (B,N) pixel x of each texel's surface point
    y: Tensor,  # (B,N) pixel y
    depth: Tensor,  # (B,N) depth of each texel's surface point
    inverse_gradient: Tensor,  # (B,N,2) d(1/depth)/d(x, y) of the texel's triangle
    face: Tensor,  # (N,) triangle of each texel
    tolerance: float,  # depth slack, depth units
    max_slope_bias: float,  # cap of the slope-scaled slack, depth units
) -> Tensor:
    """(B,N) bool: no bilinear tap of the point shows a surface nearer than the texel's own.

    Each of the (up to) four pixels the bilinear sample at (x, y) reads must show nothing,
    the texel's own triangle, or a surface no nearer than the texel's own triangle plane at
    that pixel (the slope-scaled bias of shadow mapping, capped at ``max_slope_bias``)
    minus ``tolerance``. So a texel next to an occluder's silhouette is masked rather than
    sampled with the occluder's colour mixed in, while a steep (grazing) surface is not
    mistaken for an occluder of itself.
    """
    zbuf = fragments.zbuf.to(depth.dtype)
    pix_to_face = fragments.pix_to_face.to(torch.int64)
    x0, y0 = torch.floor(x).long(), torch.floor(y).long()
    result = torch.ones_like(depth, dtype=torch.bool)
    for col in (x0, x0 + 1):
        for row in (y0, y0 + 1):
            z_seen = _pixel_lookup(zbuf, col, row)
            face_seen = _pixel_lookup(pix_to_face, col, row)
            # Depth of the texel's own plane at the tap: 1/depth is affine in the image.
            plane_inverse = (
                1.0 / depth + inverse_gradient[..., 0] * (col - x) + inverse_gradient[..., 1] * (row - y)
            )
            plane_depth = 1.0 / plane_inverse.clamp(min=1e-12)
            # A plane that passes behind the camera before the tap: allow the full bias.
            nearer_by = torch.where(plane_inverse > 0, depth - plane_depth, torch.full_like(depth, max_slope_bias))
            slack = tolerance + nearer_by.clamp(min=0.0, max=max_slope_bias)
            ok = (depth <= z_seen + slack) | (face_seen == face[None])
            # Taps with (nearly) zero bilinear weight (point on a pixel row/column) don't count.
            weight = (1.0 - (x - col).abs()).clamp(min=0) * (1.0 - (y - row).abs()).clamp(min=0)
            result &= ok | (weight <= _NEGLIGIBLE_TAP_WEIGHT)
    return result


def pad_invisible(uv_texture: Tensor, visibility: Tensor, texels: int) -> Tensor:
    """Edge padding: grow visible colours ``texels`` rings into the invisible texels.

    uv_texture: (B,C,T,T); visibility: (B,1,T,T) in {0,1}. Each ring gives every still-empty
    texel with a filled 8-neighbour the mean of those neighbours. Texels farther than
    ``texels`` from any visible texel are 0. Returns (B,C,T,T); visible texels unchanged.
    Differentiable w.r.t. ``uv_texture``.
    """
    dims = assert_shape(uv_texture, ("B", None, "T", "T"), "uv_texture")
    assert_shape(visibility, ("B", 1, "T", "T"), "visibility", dims)
    if int(texels) != texels or texels < 0:
        raise ValueError(f"pad_invisible: texels must be an int >= 0, got {texels}")
    kernel = uv_texture.new_ones(1, 1, 3, 3)
    filled = visibility.to(uv_texture.dtype)
    colour = uv_texture * visibility
    for _ in range(texels):
        count = F.conv2d(filled, kernel, padding=1)  # (B,1,T,T)
        total = F.conv2d(colour.flatten(0, 1)[:, None], kernel, padding=1).view_as(colour)
        grow = (filled == 0) & (count > 0)
        colour = torch.where(grow, total / count.clamp(min=1.0), colour)
        filled = torch.where(grow, torch.ones_like(filled), filled)
    return colour


def _normalised_grid(xy: Tensor, height: int, width: int) -> Tensor:
    """Pixel (x, y) (…,2) → grid_sample coordinates in [−1,1] (align_corners=True)."""
    scale = xy.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    return xy * scale - 1.0


class TextureExtractor(nn.Module):
    """Extract UV textures from frames given the projected mesh (METHOD §3.2).

    forward(image (B,3,H,W) in [0,1], vertices_screen (B,V,3)) -> UVExtraction with
    uv_texture (B,3,T,T) in [0,1] and visibility (B,1,T,T) in {0,1}. Batched and
    differentiable w.r.t. the image (and, through the sample positions, the vertices).
    """

    def __init__(
        self,
        *,
        layout: UVLayout,  # texel → (triangle, barycentrics) tables of the model's UV template
        sampling: Sampling = "image_coords",  # "image_coords" (project choice) or "vertex_colors"
        depth_tolerance: float = 0.05,  # depth-test slack, model depth units (decimetres: 5 mm)
        max_slope_bias: float = 0.2,  # cap of the extra slack on steep triangles, depth units
        pad_texels: int = 2,  # rings of invisible texels given the nearest visible colours
        perspective_correct: bool = True,  # interpolate image coords perspective-correctly
        backend: str = "auto",  # rasteriser backend for the occlusion z-buffer
    ) -> None:
        super().__init__()
        if not isinstance(layout, UVLayout):
            raise TypeError(f"TextureExtractor: layout must be a UVLayout, got {type(layout).__name__}")
        if sampling not in _SAMPLINGS:
            raise ValueError(f"TextureExtractor: sampling must be one of {_SAMPLINGS}, got {sampling!r}")
        if depth_tolerance < 0:
            raise ValueError(f"TextureExtractor: depth_tolerance must be >= 0, got {depth_tolerance}")
        if max_slope_bias < 0:
            raise ValueError(f"TextureExtractor: max_slope_bias must be >= 0, got {max_slope_bias}")
        if int(pad_texels) != pad_texels or pad_texels < 0:
            raise ValueError(f"TextureExtractor: pad_texels must be an int >= 0, got {pad_texels}")
        self.layout = layout
        self.sampling: Sampling = sampling
        self.depth_tolerance = float(depth_tolerance)
        self.max_slope_bias = float(max_slope_bias)
        self.pad_texels = int(pad_texels)
        self.perspective_correct = bool(perspective_correct)
        self.backend = backend
        self._rasterizer: Rasterizer | None = None  # built on first use

    def _get_rasterizer(self) -> Rasterizer:
        """The z-buffer rasteriser: no culling (a back face in front still hides), true depth."""
        if self._rasterizer is None:
            self._rasterizer = make_rasterizer(self.backend, cull_backfaces=False, perspective_correct=True)
        return self._rasterizer

    def forward(
        self,
        image: Tensor,  # (B,3,H,W) float in [0,1], the frame
        vertices_screen: Tensor,  # (B,V,3) (x_img, y_img, depth) of the mesh in that frame
        *,
        fragments: Fragments | None = None,  # this mesh rasterised at (H,W); None = rasterise here
    ) -> UVExtraction:
        """Sample the frame into the UV layout.

        Args:
            image: (B,3,H,W) float in [0,1].
            vertices_screen: (B,V,3) (x_img, y_img, depth): pixels, pixels, positive depth
                (``FaceModelOutput.vertices_screen`` for a camera at this frame size).
            fragments: optional :class:`Fragments` (B,H,W) of the same mesh, e.g. a
                ``RenderOutput.fragments``, to skip rasterising the occlusion z-buffer
                (a renderer that culls back faces gives a z-buffer without them: the same
                for a closed surface, slightly more lenient for an open one).

        Returns:
            :class:`UVExtraction` with uv_texture (B,3,T,T) in [0,1] and visibility
            (B,1,T,T) in {0,1}; differentiable w.r.t. ``image``.
        """
        layout = self.layout
        dims = assert_shape(image, ("B", 3, "H", "W"), "image")
        assert_shape(vertices_screen, ("B", layout.num_vertices, 3), "vertices_screen", dims)
        if not image.is_floating_point():
            raise TypeError(f"TextureExtractor: image must be float in [0,1], got {image.dtype}")
        assert_finite(image.detach(), "image")
        assert_range(image.detach(), 0.0, 1.0, "image")
        assert_finite(vertices_screen.detach(), "vertices_screen")
        if bool((vertices_screen[..., 2] <= 0).any()):
            raise ValueError("TextureExtractor: vertices_screen depth must be positive (mesh behind the camera)")
        batch, _, height, width = image.shape
        size = layout.texture_size
        triangles = layout.triangles
        vertices_screen = vertices_screen.to(image.dtype)

        if fragments is None:
            fragments = self._get_rasterizer()(vertices_screen.detach(), triangles, (height, width))
        assert_shape(fragments.zbuf, (batch, height, width), "fragments.zbuf")
        assert_shape(fragments.pix_to_face, (batch, height, width), "fragments.pix_to_face")

        # Surface point of every texel, projected: perspective-correct mix of the corners.
        corners = layout.gather_corners(vertices_screen)  # (B,T,T,3,3) corner × (x,y,depth)
        bary = layout.bary_coords.to(image.dtype)[None]  # (1,T,T,3)
        depth = (bary * corners[..., 2]).sum(-1)  # (B,T,T) true depth of the texel's point
        if self.perspective_correct:
            weights = bary * corners[..., 2] / depth.clamp(min=1e-8)[..., None]
        else:
            weights = bary.expand(batch, -1, -1, -1)
        xy = (weights[..., None] * corners[..., :2]).sum(-2)  # (B,T,T,2) pixels

        # Visibility.
        filled = layout.filled_mask[None]  # (1,T,T)
        facing = screen_facing(vertices_screen, triangles)  # (B,F)
        texel_facing = torch.gather(facing, 1, layout.face_index.clamp(min=0).reshape(1, -1).expand(batch, -1))
        texel_facing = texel_facing.reshape(batch, size, size)
        x, y = xy[..., 0].detach(), xy[..., 1].detach()
        inside = (
            (x >= -_BORDER_SLACK_PX) & (x <= width - 1 + _BORDER_SLACK_PX)
            & (y >= -_BORDER_SLACK_PX) & (y <= height - 1 + _BORDER_SLACK_PX)
        )
        slope = inverse_depth_gradient(vertices_screen.detach(), triangles)  # (B,F,2)
        texel_slope = slope.index_select(1, layout.face_index.clamp(min=0).reshape(-1))  # (B,T·T,2)
        unoccluded = _unoccluded(
            fragments,
            x.reshape(batch, -1),
            y.reshape(batch, -1),
            depth.detach().reshape(batch, -1),
            texel_slope,
            layout.face_index.reshape(-1),
            self.depth_tolerance,
            self.max_slope_bias,
        ).reshape(batch, size, size)
        visible = filled & texel_facing & inside & unoccluded  # (B,T,T)
        visibility = visible[:, None].to(image.dtype)  # (B,1,T,T)

        # Colour.
        if self.sampling == "image_coords":
            lo = xy.new_zeros(2)
            hi = xy.new_tensor([width - 1, height - 1])
            grid = _normalised_grid(torch.maximum(torch.minimum(xy, hi), lo), height, width)
            colour = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
        else:
            vxy = vertices_screen[..., :2]  # (B,V,2)
            lo = vxy.new_zeros(2)
            hi = vxy.new_tensor([width - 1, height - 1])
            grid = _normalised_grid(torch.maximum(torch.minimum(vxy, hi), lo), height, width)[:, None]  # (B,1,V,2)
            vertex_colors = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
            vertex_colors = vertex_colors[:, :, 0].transpose(1, 2)  # (B,V,3)
            colour = layout.interpolate(vertex_colors)  # (B,3,T,T)
        uv_texture = pad_invisible(colour, visibility, self.pad_texels).clamp(0.0, 1.0)
        return UVExtraction(uv_texture=uv_texture, visibility=visibility)

    def extra_repr(self) -> str:
        return (
            f"sampling={self.sampling!r}, depth_tolerance={self.depth_tolerance}, "
            f"max_slope_bias={self.max_slope_bias}, pad_texels={self.pad_texels}, "
            f"perspective_correct={self.perspective_correct}, backend={self.backend!r}"
        )


def extract_uv_texture(
    image: Tensor,  # (B,3,H,W) float in [0,1]
    vertices_screen: Tensor,  # (B,V,3) (x_img, y_img, depth)
    layout: UVLayout,  # UV layout of the mesh
    *,
    sampling: Sampling = "image_coords",  # "image_coords" or "vertex_colors"
    depth_tolerance: float = 0.05,  # depth-test slack, model depth units
    max_slope_bias: float = 0.2,  # cap of the extra slack on steep triangles, depth units
    pad_texels: int = 2,  # rings of invisible texels given the nearest visible colours
    backend: str = "auto",  # rasteriser backend for the occlusion z-buffer
    fragments: Fragments | None = None,  # this mesh rasterised at (H,W); None = rasterise here
) -> UVExtraction:
    """Functional form of :class:`TextureExtractor` (builds one per call; same shapes)."""
    extractor = TextureExtractor(
        layout=layout,
        sampling=sampling,
        depth_tolerance=depth_tolerance,
        max_slope_bias=max_slope_bias,
        pad_texels=pad_texels,
        backend=backend,
    )
    return extractor(image, vertices_screen, fragments=fragments)
