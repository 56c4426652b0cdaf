"""The face region of a UV layout: the texels the texture networks model.

A UV texture sampled from a frame (METHOD §3.2) is reliable on the front of the face and
unreliable on the mesh's rim (the sides of the head, the underside of the chin): there the
surface meets the camera at a grazing angle, so a texel's sample lands on the silhouette,
where the frame's background, the neighbouring hair or neck and the video codec's chroma
bleed in. Those colours change with every recording (background, framing, head pose) and
not with the emotion, yet they reach the t-GAN, the texture encoder and the subject
classifier unchanged. In W+ they dominate: on the synthetic families world, the rim (28 % of
the texels at the threshold 0.45) makes 78 % of the W+ distance between two neutral clips of
one subject, a distance larger than an emotion's direction, so eq. 5's per-subject
directions mostly measured which backgrounds their clips had (docs/RESULTS.md, session 6;
``scripts/texture_direction_check.py --rim-check``).

The face region is fixed per layout and face model, never per frame. The *rim* is the set of
texels where the mean shape's surface normal, in the model's frontal pose, faces the camera
by less than ``min_cos`` (the cosine between the normal and the +z axis; preamble
convention: z toward the viewer) and that connect to the border of the texture through such
texels: low-cosine texels enclosed by the face (the sides of the nostrils) are seen fine in a
frontal video and stay in the region. ``margin`` then moves the rim inward by that many texels
(the face's own outline, e.g. the jaw line over the neck and the mesh's last texels beside
the background, spills into the neighbouring texels of the frame). A fixed region keeps the
networks' input layout identical for every frame and recording. Texels outside hold one
constant colour in what the networks see (:func:`fill_outside_region`; mid-grey, the
networks' zero), so the rim carries nothing to learn, and texture edits leave those texels
as the frame shows them (:func:`mask_outside_region` on a change, :func:`compose_in_region`
for a decoded texture).

- :func:`frontal_cosine` — ``(T, T)`` cosine of every texel's mean-shape normal to +z;
- :func:`face_region` — the boolean region for a threshold and a margin;
- :func:`fill_outside_region` — a texture with the rim set to the fill (uint8 or float);
- :func:`compose_in_region` — one texture inside the region, another outside it;
- :func:`mask_outside_region` — a texture change with the rim set to 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.shape_checks import assert_shape
from emoedit.texture.uv_layout import UVLayout

#: Fill of the texels outside the region, uint8 textures: 128 ≈ 0 in the networks' [−1, 1].
REGION_FILL_UINT8 = 128
#: The same fill for float textures in [0, 1].
REGION_FILL_FLOAT = REGION_FILL_UINT8 / 255.0


def check_region_min_cos(value: float | None, name: str = "texture_region_min_cos") -> float | None:
    """``value`` if it is None (no region: every texel) or a finite cosine in [−1, 1); else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not -1.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be None or a cosine in [-1, 1), got {value!r}")
    return float(value)


def frontal_cosine(
    model: nn.Module,  # a MorphableModel (mean_shape (V,3), triangles (F,3), vertex_normals)
    layout: UVLayout,  # the UV layout of that model at the texture size in use
) -> Tensor:
    """``(T, T)`` float32 in [−1, 1]: per texel, the z component of the mean shape's unit normal
    (interpolated at the texel's barycentrics, renormalised) in the frontal pose. 1 = facing the
    camera head-on, 0 = edge-on, < 0 = facing away. On the layout's device."""
    mean_shape = getattr(model, "mean_shape", None)
    if not isinstance(mean_shape, Tensor) or not hasattr(model, "vertex_normals"):
        raise TypeError(f"frontal_cosine: {type(model).__name__} has no mean_shape (V,3) and vertex_normals()")
    assert_shape(mean_shape, (layout.num_vertices, 3), "mean_shape")
    with torch.no_grad():
        normals = model.vertex_normals(mean_shape[None].float())  # (1, V, 3)
        texel = layout.interpolate(normals.to(layout.bary_coords.device))  # (1, 3, T, T)
        texel = F.normalize(texel, dim=1, eps=1e-12)
    return texel[0, 2].float()


def check_region_margin(value: int, name: str = "texture_region_margin") -> int:
    """``value`` if it is an int ≥ 0 (texels); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (texels), got {value!r}")
    return value


def _connected_to_border(mask: Tensor) -> Tensor:
    """``(T, T)`` bool: the texels of ``mask`` reachable from the texture's border through ``mask``
    (4-neighbours), by repeated dilation."""
    reached = torch.zeros_like(mask)
    reached[0], reached[-1], reached[:, 0], reached[:, -1] = mask[0], mask[-1], mask[:, 0], mask[:, -1]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=mask.device)[None, None]
    while True:
        grown = (F.conv2d(reached.float()[None, None], kernel, padding=1)[0, 0] > 0) & mask
        if torch.equal(grown, reached):
            return reached
        reached = grown


def face_region(
    model: nn.Module,  # a MorphableModel
    layout: UVLayout,  # its UV layout at the texture size in use
    min_cos: float,  # the rim: border-connected texels whose frontal normal's cosine to +z is below this, [−1, 1)
    margin: int = 0,  # texels the rim is moved inward (chebyshev distance), ≥ 0
) -> Tensor:
    """``(T, T)`` bool: the texels the texture networks model (see the module docstring)."""
    checked = check_region_min_cos(min_cos, "min_cos")
    assert checked is not None
    check_region_margin(margin, "margin")
    rim = _connected_to_border(frontal_cosine(model, layout) < checked)
    if margin:
        outside = F.pad(rim.float()[None, None], (margin,) * 4, value=1.0)  # beyond the texture counts as rim
        rim = F.max_pool2d(outside, 2 * margin + 1, stride=1)[0, 0] > 0
    region = ~rim
    if not bool(region.any()):
        raise ValueError(f"face_region: no texel left for cos >= {checked} and margin {margin}; "
                         "lower min_cos or the margin")
    return region


def _region_for(texture: Tensor, region: Tensor) -> Tensor:
    assert_shape(texture, (None, None, region.shape[0], region.shape[1]), "texture")
    return region.to(device=texture.device, dtype=torch.bool)


def fill_outside_region(
    texture: Tensor,  # (B, C, T, T) uint8 in [0, 255] or float in [0, 1]
    region: Tensor,  # (T, T) bool from face_region
) -> Tensor:
    """A new texture (same shape, dtype, device) with every texel outside ``region`` set to the
    fill (:data:`REGION_FILL_UINT8` for uint8, :data:`REGION_FILL_FLOAT` for floats). The input is
    not modified."""
    inside = _region_for(texture, region)
    fill = REGION_FILL_UINT8 if texture.dtype == torch.uint8 else REGION_FILL_FLOAT
    return torch.where(inside, texture, torch.full((), fill, dtype=texture.dtype, device=texture.device))


def compose_in_region(
    inside: Tensor,  # (B, C, T, T) float: what is shown inside the region (e.g. a decoded texture)
    outside: Tensor,  # (B, C, T, T) float, same shape: what is shown outside it (the frame's own texture)
    region: Tensor,  # (T, T) bool from face_region
) -> Tensor:
    """``inside`` on the region's texels, ``outside`` elsewhere (a new tensor)."""
    assert_shape(outside, tuple(inside.shape), "outside")
    return torch.where(_region_for(inside, region), inside, outside)


def mask_outside_region(
    change: Tensor,  # (B, C, S, S) float texture change; S may differ from the region's T
    region: Tensor,  # (T, T) bool from face_region
) -> Tensor:
    """``change`` with the texels outside ``region`` set to 0 (a new tensor). A change of another
    side S is masked by the region resized to S (nearest texel)."""
    assert_shape(change, ("B", "C", "S", "S"), "change")
    inside = region.to(device=change.device, dtype=torch.float32)[None, None]
    if change.shape[-1] != region.shape[-1]:
        inside = F.interpolate(inside, size=change.shape[-2:], mode="nearest")
    return change * inside.to(change.dtype)


__all__ = [
    "REGION_FILL_FLOAT",
    "REGION_FILL_UINT8",
    "check_region_margin",
    "check_region_min_cos",
    "compose_in_region",
    "face_region",
    "fill_outside_region",
    "frontal_cosine",
    "mask_outside_region",
]
