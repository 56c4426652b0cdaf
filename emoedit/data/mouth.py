"""Mouth crops for teeth completion (METHOD.md §3.7): the crop, the teeth-removed crop, the mask.

The mouth crop is aligned from the 20 mouth landmarks (iBUG 49-68, projected with the
reconstructed camera) by :func:`emoedit.data.alignment.align_mouths`. The *teeth region*
is the inside of the inner-lip contour, the polygon through the 0-based landmarks 60..67
(iBUG 61-68, in that order), mapped into the mouth crop and grown by ``dilate_px``
pixels so no teeth pixel survives at the lip border. The teeth-removed crop is the crop
with that region replaced by ``fill`` (0 = black, what the face model's mouth hole shows
when rendered over the renderer's default background): it equals the crop everywhere
outside the mask.

:func:`polygon_mask` (pixel centres inside a polygon, optionally dilated) is shared with
the FFHQ quality filter's face-region mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from emoedit.data.alignment import CropTransform, MouthTemplate, align_mouths
from emoedit.data.detection import MOUTH_IDS, NUM_LANDMARKS68
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

INNER_LIP_IDS: tuple[int, ...] = tuple(range(60, 68))  # 0-based iBUG ids of the inner-lip contour (61-68 1-based), in order
DEFAULT_MOUTH_CROP_SIZE = 128  # mouth crop side, pixels
DEFAULT_MOUTH_WIDTH = 0.5  # mouth-corner distance as a fraction of the crop side
DEFAULT_DILATE_PX = 1.0  # growth of the teeth region beyond the inner-lip polygon, mouth-crop pixels
_MAX_POLYGON_WORK = 1 << 22  # pixels × edges × polygons evaluated at once by polygon_mask


def polygon_mask(
    polygons: Tensor,  # (B, N, 2) vertices in pixels (x right, y down), in order around the polygon
    size: tuple[int, int],  # (H, W) of the mask, pixels
    *,
    dilate_px: float = 0.0,  # also count pixel centres closer than this to the polygon's outline
) -> Tensor:
    """(B, 1, H, W) bool: pixel centres inside each (closed, possibly non-convex) polygon.

    Inside = even-odd rule (crossing count of a ray toward +x). With ``dilate_px > 0``
    pixel centres within that distance of any edge count too, so a degenerate polygon
    (e.g. a closed mouth, all points on a line) gives a thin band instead of nothing.
    """
    dims = assert_shape(polygons, ("B", "N", 2), "polygons")
    if dims["N"] < 2:
        raise ValueError(f"polygon_mask: need at least 2 vertices, got {dims['N']}")
    if dilate_px < 0:
        raise ValueError(f"polygon_mask: dilate_px must be >= 0, got {dilate_px}")
    assert_finite(polygons, "polygons")
    height, width = int(size[0]), int(size[1])
    chunk = max(1, _MAX_POLYGON_WORK // max(1, height * width * dims["N"]))
    if dims["B"] > chunk:  # bound the (B, H·W, N) temporaries
        return torch.cat([polygon_mask(polygons[i : i + chunk], size, dilate_px=dilate_px)
                          for i in range(0, dims["B"], chunk)])
    points = polygons.detach().to(torch.float64)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=points.device),
        torch.arange(width, dtype=torch.float64, device=points.device),
        indexing="ij",
    )
    px = xs.reshape(1, -1, 1)  # (1, P, 1)
    py = ys.reshape(1, -1, 1)
    a = points[:, None, :, :]  # (B, 1, N, 2) edge starts
    b = torch.roll(points, shifts=-1, dims=1)[:, None, :, :]  # edge ends
    ax, ay, bx, by = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    straddles = (ay > py) != (by > py)
    dy = torch.where(by == ay, torch.ones_like(by), by - ay)
    x_cross = ax + (py - ay) * (bx - ax) / dy
    crossings = (straddles & (px < x_cross)).sum(dim=-1)  # (B, P)
    inside = crossings % 2 == 1
    if dilate_px > 0:
        ex, ey = bx - ax, by - ay
        length2 = (ex * ex + ey * ey).clamp(min=1e-12)
        t = (((px - ax) * ex + (py - ay) * ey) / length2).clamp(0.0, 1.0)
        dist2 = (ax + t * ex - px) ** 2 + (ay + t * ey - py) ** 2  # (B, P, N)
        inside = inside | (dist2.min(dim=-1).values <= dilate_px * dilate_px)
    return inside.reshape(-1, 1, height, width)


def remove_region(
    crops: Tensor,  # (B, 3, S, S) float in [0, 1]
    mask: Tensor,  # (B, 1, S, S) bool region to remove
    *,
    fill: float = 0.0,  # value written inside the region, in [0, 1]
) -> Tensor:
    """A copy of ``crops`` with ``fill`` inside ``mask`` (unchanged outside). (B, 3, S, S) float."""
    dims = assert_shape(crops, ("B", 3, "S", "S"), "crops")
    assert_shape(mask, ("B", 1, "S", "S"), "mask", dims)
    if mask.dtype != torch.bool:
        raise TypeError(f"remove_region: mask must be bool, got {mask.dtype}")
    if not 0.0 <= fill <= 1.0:
        raise ValueError(f"remove_region: fill must lie in [0, 1], got {fill}")
    return torch.where(mask, crops.new_tensor(fill), crops)


@dataclass(frozen=True, eq=False)
class MouthCrops:
    """Aligned mouth crops of a batch of frames, with the teeth region removed (B frames, S = crop side)."""

    crop: Tensor  # (B, 3, S, S) float in [0, 1], the real mouth
    crop_removed: Tensor  # (B, 3, S, S) float in [0, 1], the same with the teeth region set to ``fill``
    mask: Tensor  # (B, 1, S, S) bool, the teeth region (inner-lip polygon, dilated)
    transform: CropTransform  # batch (B,): frame pixels -> mouth-crop pixels
    landmarks: Tensor  # (B, 20, 2) float32 mouth landmarks (iBUG 49-68) in mouth-crop pixels


def extract_mouths(
    images: Tensor | np.ndarray,  # (B, H, W, 3) uint8 or (B, 3, H, W) float in [0, 1] frames
    landmarks68: Tensor,  # (B, 68, 2) frame pixels (e.g. the reconstruction's projected landmarks)
    *,
    crop_size: int = DEFAULT_MOUTH_CROP_SIZE,  # mouth crop side, pixels
    mouth_width: float = DEFAULT_MOUTH_WIDTH,  # corner distance as a fraction of crop_size
    template: MouthTemplate | None = None,  # alignment target; None: MouthTemplate.default()
    dilate_px: float = DEFAULT_DILATE_PX,  # growth of the teeth region, mouth-crop pixels
    fill: float = 0.0,  # value of the removed region, in [0, 1]
) -> MouthCrops:
    """Align mouth crops from the 20 mouth landmarks and remove the teeth region (see the module doc)."""
    assert_shape(landmarks68, (None, NUM_LANDMARKS68, 2), "landmarks68")
    aligned = align_mouths(images, landmarks68, template, crop_size=crop_size, mouth_width=mouth_width)
    inner = aligned.landmarks[:, list(INNER_LIP_IDS)]
    mask = polygon_mask(inner, (crop_size, crop_size), dilate_px=dilate_px)
    crop = aligned.crop
    assert_range(crop, 0.0, 1.0, "mouth crop")
    return MouthCrops(
        crop=crop,
        crop_removed=remove_region(crop, mask, fill=fill),
        mask=mask,
        transform=aligned.transform,
        landmarks=aligned.landmarks[:, list(MOUTH_IDS)].float(),
    )
