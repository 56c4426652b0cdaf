"""Rendering one frame of the synthetic world: face + mouth interior + background.

:class:`SceneRenderer` poses the face model with the frame's coefficients, poses the
subject's :class:`~emoedit.data.synthetic.mouth_interior.MouthInterior` with the same head
pose (lower teeth and tongue displaced by the jaw), rasterises face and interior as one
mesh with the built-in torch rasteriser (so the nearer surface wins per pixel: the
interior shows only through the lip opening), shades the face with its per-frame UV
albedo and the SH lighting (Deep3DFaceRecon's model, like the reconstruction will assume),
shades the interior with the light's ambient term, and composites over the background.

Also here: the world's camera (:func:`world_camera`), per-clip lighting
(:func:`draw_lighting`), framing (:func:`draw_framing`) and backgrounds
(:func:`draw_background`).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.data.synthetic.mouth_interior import MouthInterior, jaw_basis
from emoedit.face_model import MorphableModel, PerspectiveCamera
from emoedit.face_model.lighting import sh_irradiance
from emoedit.render import make_rasterizer
from emoedit.shape_checks import assert_shape

#: Video camera zoom relative to Deep3DFaceRecon's 224-px crop camera: the face (jaw
#: contour) is then about 40 % of the frame wide and the whole face sheet about 70 %
#: of the frame tall, leaving room for the framing offsets, detection and alignment.
VIDEO_ZOOM = 0.7
#: FFHQ-like stills are framed tighter (FFHQ's alignment crop).
STILL_ZOOM = 0.75


def world_camera(image_size: int, zoom: float = VIDEO_ZOOM) -> PerspectiveCamera:
    """The pinhole camera of a ``image_size``-pixel frame: Deep3D's camera scaled to that
    size, with the focal length multiplied by ``zoom`` (principal point at the centre)."""
    base = PerspectiveCamera().scaled(image_size)
    return PerspectiveCamera(
        focal=base.focal * zoom, center=base.center, camera_distance=base.camera_distance, image_size=int(image_size)
    )


def camera_tensor(camera: PerspectiveCamera) -> Tensor:
    """``(4,)`` float64 ``[focal, center, camera_distance, image_size]`` (stored in truth files)."""
    return torch.tensor([camera.focal, camera.center, camera.camera_distance, float(camera.image_size)], dtype=torch.float64)


def camera_from_tensor(values: Tensor) -> PerspectiveCamera:
    """Inverse of :func:`camera_tensor`."""
    assert_shape(values, (4,), "camera")
    focal, center, distance, size = (float(v) for v in values.tolist())
    return PerspectiveCamera(focal=focal, center=center, camera_distance=distance, image_size=int(round(size)))


def draw_lighting(rng: np.random.Generator, *, strength: float = 1.0, dark: bool = False) -> Tensor:
    """``(27,)`` float32 mild random SH lighting (Deep3D layout, 3 channels × 9 bands).

    ``strength`` scales the random directional part; ``dark`` gives an under-exposed light
    (overall brightness about a quarter of normal), used for "bad" FFHQ stills.
    """
    gamma = np.zeros((3, 9))
    gamma[:, 0] = rng.normal(0.0, 0.02) + rng.normal(0.0, 0.01, size=3)
    # Bands 1-3 multiply -n_y, n_z, -n_x: the n_z band acts on the whole (frontal) face
    # like an exposure change, so it varies least.
    directional = rng.normal(0.0, 1.0, size=3) * np.array([0.04, 0.02, 0.05])
    gamma[:, 1:4] = strength * (directional[None] + rng.normal(0.0, 0.006, size=(3, 3)))
    gamma[:, 4:9] = strength * rng.normal(0.0, 0.02, size=5)[None]
    if dark:
        gamma[:, 0] = -0.58 + rng.normal(0.0, 0.03, size=3)
        gamma[:, 1:] *= 0.3
    return torch.from_numpy(gamma.reshape(-1)).float()


def draw_framing(
    rng: np.random.Generator,  # the clip's scene stream
    *,
    offset_x_dm: float = 0.22,  # largest sideways offset, decimetres
    offset_y_dm: float = 0.15,  # largest vertical offset (the face is taller than wide)
    depth_dm: float = 0.7,  # largest depth change (scale about ± depth_dm / 10)
) -> Tensor:
    """``(3,)`` float32 translation placing the face in the frame (x, y offset, depth)."""
    return torch.tensor(
        [rng.uniform(-offset_x_dm, offset_x_dm), rng.uniform(-offset_y_dm, offset_y_dm), rng.uniform(-depth_dm, depth_dm)],
        dtype=torch.float32,
    )


def draw_background(rng: np.random.Generator, size: int) -> Tensor:
    """``(3, size, size)`` float32 in [0, 1]: a smooth two-colour gradient plus colour noise."""
    colours = []
    for _ in range(2):
        hue, sat, val = rng.uniform(0, 1), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.9)
        colours.append(np.array(colorsys.hsv_to_rgb(hue, sat, val)))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ramp = np.clip(0.5 + (xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle), 0.0, 1.0)
    image = colours[0][:, None, None] * (1.0 - ramp)[None] + colours[1][:, None, None] * ramp[None]
    cells = int(rng.integers(2, 6))
    coarse = torch.from_numpy(rng.normal(size=(1, 3, cells + 1, cells + 1))).float()
    noise = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
    image = torch.from_numpy(image).float() + float(rng.uniform(0.02, 0.08)) * noise
    return image.clamp(0.0, 1.0)


@dataclass(frozen=True)
class SceneFrames:
    """Rendered frames and what was visible (B frames of H×W pixels)."""

    image: Tensor  # (B, 3, H, W) float in [0, 1]
    face_mask: Tensor  # (B, H, W) bool, face surface visible
    interior_mask: Tensor  # (B, H, W) bool, mouth interior visible (through the lips)
    landmarks: Tensor  # (B, 68, 2) true landmarks, pixels
    vertices_screen: Tensor  # (B, V, 3) face vertices (x_img, y_img, depth)


class SceneRenderer(nn.Module):
    """Renders the synthetic world's frames (see the module docstring). No parameters."""

    jaw_basis: Tensor

    def __init__(
        self,
        *,
        model: MorphableModel,  # the world's face model (AU-named expression basis)
        camera: PerspectiveCamera,  # the frame camera (image_size = frame side)
    ) -> None:
        super().__init__()
        self.model = model
        self.camera = camera
        self.image_size = int(camera.image_size)
        self.rasterizer = make_rasterizer("torch", cull_backfaces=True)
        self.register_buffer("jaw_basis", jaw_basis(model))

    def forward(
        self,
        coeffs: Tensor,  # (B, layout.size) full coefficient vectors
        uv_texture: Tensor,  # (B, 3, T, T) true UV albedo per frame, or (M, 3, T, T) with texture_index
        interior: MouthInterior,  # the subject's mouth interior
        background: Tensor,  # (3, H, W) or (B, 3, H, W) in [0, 1]
        texture_index: Tensor | None = None,  # (B,) int64 row of uv_texture used by each frame
    ) -> SceneFrames:
        """Render B frames; returns :class:`SceneFrames`.

        Frames sharing a texture (a clip whose expression texture does not change) may
        pass the M distinct textures once and ``texture_index``.
        """
        model, size = self.model, self.image_size
        dims = assert_shape(coeffs, ("B", model.layout.size), "coeffs")
        if texture_index is None:
            assert_shape(uv_texture, ("B", 3, "T", "T"), "uv_texture", dims)
        else:
            assert_shape(texture_index, ("B",), "texture_index", dims)
            assert_shape(uv_texture, (None, 3, "T", "T"), "uv_texture")
            if int(texture_index.min()) < 0 or int(texture_index.max()) >= uv_texture.shape[0]:
                raise ValueError(f"texture_index must lie in [0, {uv_texture.shape[0]})")
        if background.ndim == 3:
            background = background.unsqueeze(0).expand(dims["B"], -1, -1, -1)
        assert_shape(background, ("B", 3, size, size), "background", dims)
        batch = dims["B"]
        parts = model.layout.split(coeffs)
        out = model(coeffs, self.camera)
        jaw = parts.exp_coeff @ self.jaw_basis  # (B, 3)
        inner_world = interior.vertices(jaw) @ out.rotation + parts.trans.unsqueeze(1)
        inner_screen = self.camera.project(inner_world)
        num_vertices, num_faces = model.num_vertices, model.num_faces
        screen = torch.cat([out.vertices_screen, inner_screen], dim=1)
        triangles = torch.cat([model.triangles, interior.triangles + num_vertices], dim=0)
        fragments = self.rasterizer(screen, triangles, (size, size))
        pix = fragments.pix_to_face
        face_mask = (pix >= 0) & (pix < num_faces)
        interior_mask = pix >= num_faces

        # Shade covered pixels only (gathers over the visible triangle's corners).
        flat_face = pix.reshape(-1)
        covered = torch.nonzero(flat_face >= 0).squeeze(1)  # (n,) flat ids b·H·W + i·W + j
        face_id = flat_face[covered]
        bary = fragments.bary_coords.permute(3, 0, 1, 2).reshape(3, -1)[:, covered].t()  # (n, 3)
        image_id = torch.div(covered, size * size, rounding_mode="floor")
        total_vertices = screen.shape[1]
        corners = triangles[face_id]  # (n, 3) vertex ids
        is_face = face_id < num_faces
        vi = interior.num_vertices
        # One per-vertex table for the whole batch: uv (2), interior colour (3), normal (3).
        uv = torch.cat([model.uv_coords, model.uv_coords.new_zeros(vi, 2)], dim=0)
        colours = torch.cat([model.uv_coords.new_zeros(num_vertices, 3), interior.colours], dim=0)
        shared = torch.cat([uv, colours], dim=1).unsqueeze(0).expand(batch, -1, -1)
        normals = torch.cat([out.normals, out.normals.new_zeros(batch, vi, 3)], dim=1)
        table = torch.cat([shared, normals], dim=2).reshape(-1, 8)  # (B·(V+Vi), 8)
        ids = corners + image_id[:, None] * total_vertices
        attributes = table[ids[:, 0]] * bary[:, 0:1]
        attributes.addcmul_(table[ids[:, 1]], bary[:, 1:2]).addcmul_(table[ids[:, 2]], bary[:, 2:3])
        pixel_uv, pixel_colour = attributes[:, 0:2], attributes[:, 2:5]
        pixel_normal = F.normalize(attributes[:, 5:8], dim=-1, eps=1e-8)
        texture_id = image_id if texture_index is None else texture_index[image_id]
        albedo = _bilinear_lookup(uv_texture, texture_id, pixel_uv)  # (n, 3)
        # SH shading (lighting.sh_irradiance), once per distinct light (one per clip).
        lights, light_index = torch.unique(parts.gamma, dim=0, return_inverse=True)
        pixel_light = light_index[image_id]
        shading = torch.empty_like(pixel_normal)
        for k in range(lights.shape[0]):
            lit = pixel_light == k if lights.shape[0] > 1 else slice(None)
            shading[lit] = sh_irradiance(pixel_normal[lit][None], lights[k : k + 1])[0]
        # Interior: lit by the light's response for a surface facing the camera.
        facing = torch.tensor([0.0, 0.0, 1.0], dtype=coeffs.dtype).expand(batch, 1, 3)
        ambient = sh_irradiance(facing, parts.gamma)[:, 0]  # (B, 3)
        colour = torch.where(is_face[:, None], albedo * shading, pixel_colour * ambient[image_id])
        image = background.permute(0, 2, 3, 1).reshape(-1, 3).clone()
        image[covered] = colour.to(image.dtype)
        image = image.view(batch, size, size, 3).permute(0, 3, 1, 2)
        return SceneFrames(
            image=image.clamp(0.0, 1.0),
            face_mask=face_mask,
            interior_mask=interior_mask,
            landmarks=out.landmarks,
            vertices_screen=out.vertices_screen,
        )


def _bilinear_lookup(texture: Tensor, image_id: Tensor, uv: Tensor) -> Tensor:
    """``(n, C)`` bilinear values at ``uv`` (n, 2) in [0, 1] of texture ``image_id`` (n,).

    Same as ``grid_sample(..., align_corners=True, padding_mode="border")`` at the points.
    """
    batch, channels, height, width = texture.shape
    flat = texture.permute(0, 2, 3, 1).reshape(-1, channels)
    x = (uv[:, 0] * (width - 1)).clamp(0, width - 1)
    y = (uv[:, 1] * (height - 1)).clamp(0, height - 1)
    x0 = x.floor().clamp(max=width - 2).long() if width > 1 else x.floor().long()
    y0 = y.floor().clamp(max=height - 2).long() if height > 1 else y.floor().long()
    fx = (x - x0).unsqueeze(1)
    fy = (y - y0).unsqueeze(1)
    x1 = (x0 + 1).clamp(max=width - 1)
    y1 = (y0 + 1).clamp(max=height - 1)
    base = image_id * (height * width)
    top = flat[base + y0 * width + x0] * (1 - fx) + flat[base + y0 * width + x1] * fx
    bottom = flat[base + y1 * width + x0] * (1 - fx) + flat[base + y1 * width + x1] * fx
    return top * (1 - fy) + bottom * fy


def to_uint8_frames(image: Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` float in [0, 1] -> ``(B, H, W, 3)`` uint8 (round half up)."""
    return (image.clamp(0.0, 1.0) * 255.0 + 0.5).floor().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def polygon_mask(polygon: Tensor, size: int) -> Tensor:
    """``(B, size, size)`` bool: pixel centres inside each closed polygon (even-odd rule).

    Args:
        polygon: ``(B, P, 2)`` float vertices (x, y) in pixels, e.g. the inner-lip
            landmarks ``landmarks[:, 60:68]``.
        size: image side in pixels.
    """
    assert_shape(polygon, (None, None, 2), "polygon")
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=polygon.dtype), torch.arange(size, dtype=polygon.dtype), indexing="ij"
    )
    x, y = xs[None], ys[None]
    inside = torch.zeros(polygon.shape[0], size, size, dtype=torch.bool)
    count = polygon.shape[1]
    for k in range(count):
        x0, y0 = polygon[:, k, 0, None, None], polygon[:, k, 1, None, None]
        x1, y1 = polygon[:, (k + 1) % count, 0, None, None], polygon[:, (k + 1) % count, 1, None, None]
        crosses = (y0 > y) != (y1 > y)
        dy = torch.where(y1 != y0, y1 - y0, torch.full_like(y1, 1e-12))
        x_cross = x0 + (y - y0) * (x1 - x0) / dy
        inside ^= crosses & (x < x_cross)
    return inside
