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

import math
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

    Only the pixels of the batch's common bounding box (grown by ``dilate_px`` + 1) are
    tested: every pixel outside it is outside every polygon (a ray from left of a polygon
    crosses it an even number of times, one from right of it or above / below it none),
    so the result is the same as testing the whole image, at a fraction of the work.
    """
    dims = assert_shape(polygons, ("B", "N", 2), "polygons")
    if dims["N"] < 2:
        raise ValueError(f"polygon_mask: need at least 2 vertices, got {dims['N']}")
    if dilate_px < 0:
        raise ValueError(f"polygon_mask: dilate_px must be >= 0, got {dilate_px}")
    assert_finite(polygons, "polygons")
    height, width = int(size[0]), int(size[1])
    points = polygons.detach().to(torch.float64)
    mask = torch.zeros(dims["B"], 1, height, width, dtype=torch.bool, device=points.device)
    if dims["B"] == 0 or height == 0 or width == 0:
        return mask
    margin = float(dilate_px) + 1.0
    low = points.amin(dim=(0, 1)) - margin  # (2,) x, y
    high = points.amax(dim=(0, 1)) + margin
    (x_low, y_low), (x_high, y_high) = low.tolist(), high.tolist()
    x0, y0 = max(0, math.floor(x_low)), max(0, math.floor(y_low))
    x1, y1 = min(width - 1, math.ceil(x_high)), min(height - 1, math.ceil(y_high))
    if x1 < x0 or y1 < y0:  # the polygons lie wholly outside the image
        return mask
    mask[:, :, y0 : y1 + 1, x0 : x1 + 1] = _polygon_window(points, x0, y0, y1 - y0 + 1, x1 - x0 + 1, dilate_px)
    return mask


def _polygon_window(
    points: Tensor,  # (B, N, 2) float64 polygon vertices, pixels
    x0: int,  # first column of the window
    y0: int,  # first row of the window
    height: int,  # rows of the window
    width: int,  # columns of the window
    dilate_px: float,  # see polygon_mask
) -> Tensor:
    """(B, 1, height, width) bool: :func:`polygon_mask`'s test on the pixel centres of one window."""
    batch, count = points.shape[:2]
    chunk = max(1, _MAX_POLYGON_WORK // max(1, height * width * count))
    if batch > chunk:  # bound the (B, H·W, N) temporaries
        return torch.cat([_polygon_window(points[i : i + chunk], x0, y0, height, width, dilate_px)
                          for i in range(0, batch, chunk)])
    ys, xs = torch.meshgrid(
        torch.arange(y0, y0 + height, dtype=torch.float64, device=points.device),
        torch.arange(x0, x0 + width, dtype=torch.float64, device=points.device),
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
