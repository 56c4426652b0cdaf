"""CPBD: cumulative probability of blur detection (Narvekar & Karam, IEEE TIP 2011).

A no-reference sharpness score in [0, 1]; higher is sharper (METHOD.md §6, Table 1). Our
own implementation of the published algorithm, following the authors' reference code
(``CPBD_compute.m``) step by step:

1. the image is converted to 8-bit grey levels ``A`` (0…255; RGB → BT.601 luma, rounded,
   as MATLAB's ``rgb2gray`` of a uint8 image);
2. **edge blocks**: the image is cut into 64 × 64 blocks (incomplete blocks at the right and
   bottom are dropped); a block is an edge block when more than 0.2 % of its pixels are
   Canny edges (MATLAB ``edge(A, 'canny')``: derivative of a Gaussian with σ = √2,
   non-maximum suppression, hysteresis with the high threshold where 70 % of the
   normalised gradient magnitudes lie below it and the low one at 0.4 × high);
3. **edge widths** (Marziliano et al. 2004) at the *vertical* Sobel edges (MATLAB
   ``edge(A, 'sobel', [], 'vertical')``: ``|Sobel_x| / 8`` squared above 4 × its mean,
   thinned to horizontal local maxima) whose gradient angle ``atan2(g_y, g_x)``, rounded
   to a multiple of 45°, is 0° (rising edge) or ±180° (falling edge): the number of
   pixels from the local intensity minimum to the local maximum around the edge pixel,
   counted with the reference code's rules (each side 1 + the number of monotone steps,
   at most 101; the edge pixel's own two neighbour steps are not examined);
4. per edge in an edge block, with the block contrast ``C = max A − min A`` and the
   just-noticeable-blur width ``w_JNB = 5`` if ``C ≤ 50`` else ``3``:
   ``P_blur = 1 − exp(−(w / w_JNB)^β)`` with ``β = 3.6``;
5. ``CPBD = P(P_blur ≤ P_JNB)`` over all those edges, with ``P_blur`` rounded to a
   hundredth and ``P_JNB = 63 %`` (the reference code's ``sum(hist(1:64))``).

An image with no edge block scores 0 (as the reference code). Images need at least one
full 64 × 64 block: smaller ones raise ``ValueError``.

The metric is computed in float64 numpy/scipy on the CPU (it is a data-dependent,
non-differentiable evaluation); :func:`cpbd` takes a batch of tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from emoedit.shape_checks import assert_range, assert_shape

BLOCK_SIZE: int = 64  # side of the square blocks, pixels
EDGE_BLOCK_FRACTION: float = 0.002  # a block is an edge block above this fraction of Canny edge pixels
BETA: float = 3.6  # slope of the psychometric blur-detection function
JNB_WIDTH_LOW_CONTRAST: float = 5.0  # w_JNB for block contrast <= JNB_CONTRAST_LIMIT (grey levels)
JNB_WIDTH_HIGH_CONTRAST: float = 3.0  # w_JNB for block contrast > JNB_CONTRAST_LIMIT
JNB_CONTRAST_LIMIT: int = 50  # grey levels
P_JNB_BIN: int = 63  # P_blur rounded to a hundredth counts as undetected blur up to 0.63
MAX_SIDE_STEPS: int = 100  # each side of an edge is at most MAX_SIDE_STEPS + 1 pixels
CANNY_SIGMA: float = math.sqrt(2.0)  # MATLAB's default Canny smoothing
CANNY_NON_EDGE_FRACTION: float = 0.7  # MATLAB's PercentOfPixelsNotEdges
CANNY_LOW_RATIO: float = 0.4  # MATLAB's ThresholdRatio
SOBEL_SCALE: float = 4.0  # MATLAB's automatic Sobel cutoff: SOBEL_SCALE * mean(b)
LUMA_WEIGHTS: tuple[float, float, float] = (0.298936, 0.587043, 0.114021)  # MATLAB rgb2gray (BT.601)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB's ``round`` (halves away from zero), not numpy's round-half-to-even."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def to_grey_levels(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(3, H, W)`` float image in [0, 1] → ``(H, W)`` float64 grey levels 0…255 (integers)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        if image.shape[0] != 3:
            raise ValueError(f"to_grey_levels: expected (H, W) or (3, H, W), got {image.shape}")
        image = np.tensordot(np.asarray(LUMA_WEIGHTS), image, axes=1)
    elif image.ndim != 2:
        raise ValueError(f"to_grey_levels: expected (H, W) or (3, H, W), got {image.shape}")
    return _round_half_away(np.clip(image, 0.0, 1.0) * 255.0)


def canny_edges(grey: np.ndarray) -> np.ndarray:
    """``(H, W)`` float grey image → ``(H, W)`` bool Canny edges with MATLAB's default parameters."""
    gx = ndimage.gaussian_filter(grey, CANNY_SIGMA, order=(0, 1), mode="nearest")
    gy = ndimage.gaussian_filter(grey, CANNY_SIGMA, order=(1, 0), mode="nearest")
    magnitude = np.hypot(gx, gy)
    peak = magnitude.max()
    if peak <= 0:
        return np.zeros(grey.shape, dtype=bool)
    magnitude = magnitude / peak
    counts, _ = np.histogram(magnitude, bins=64, range=(0.0, 1.0))
    above = np.nonzero(np.cumsum(counts) > CANNY_NON_EDGE_FRACTION * magnitude.size)[0]
    high = (above[0] + 1) / 64.0 if above.size else 1.0
    low = CANNY_LOW_RATIO * high
    # Non-maximum suppression along the gradient direction quantised to 0°, 45°, 90°, 135°.
    angle = np.mod(np.degrees(np.arctan2(gy, gx)), 180.0)
    sector = np.mod(_round_half_away(angle / 45.0), 4).astype(np.int64)  # 0: x, 1: diagonal, 2: y, 3: anti-diagonal
    padded = np.pad(magnitude, 1, mode="constant")
    height, width = magnitude.shape
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}  # (dy, dx) along the gradient, y down
    keep = np.zeros(magnitude.shape, dtype=bool)
    for index, (dy, dx) in offsets.items():
        forward = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        backward = padded[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        keep |= (sector == index) & (magnitude >= forward) & (magnitude > backward)
    candidates = keep & (magnitude > low)
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return candidates
    strong = np.zeros(count + 1, dtype=bool)
    strong[np.unique(labels[candidates & (magnitude > high)])] = True
    strong[0] = False
    return strong[labels]


def sobel_vertical_edges(grey: np.ndarray) -> np.ndarray:
    """``(H, W)`` float grey image → ``(H, W)`` bool vertical Sobel edges (MATLAB's automatic threshold, thinned)."""
    kernel = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0
    bx = np.abs(ndimage.correlate(grey, kernel, mode="nearest"))
    strength = bx * bx
    cutoff = SOBEL_SCALE * strength.mean()
    left = np.concatenate([strength[:, :1], strength[:, :-1]], axis=1)
    right = np.concatenate([strength[:, 1:], strength[:, -1:]], axis=1)
    # Horizontal local maxima; the left comparison is inclusive so that a two-pixel plateau keeps one pixel.
    return (strength > cutoff) & (left <= strength) & (strength > right)


def _runs_rightward(mask: np.ndarray) -> np.ndarray:
    """``out[:, i]`` = number of consecutive True in ``mask[:, i], mask[:, i+1], …``."""
    out = np.zeros(mask.shape, dtype=np.int64)
    running = np.zeros(mask.shape[0], dtype=np.int64)
    for column in range(mask.shape[1] - 1, -1, -1):
        running = (running + 1) * mask[:, column]
        out[:, column] = running
    return out


def _runs_leftward(mask: np.ndarray) -> np.ndarray:
    """``out[:, i]`` = number of consecutive True in ``mask[:, i], mask[:, i-1], …``."""
    out = np.zeros(mask.shape, dtype=np.int64)
    running = np.zeros(mask.shape[0], dtype=np.int64)
    for column in range(mask.shape[1]):
        running = (running + 1) * mask[:, column]
        out[:, column] = running
    return out


def edge_widths(grey: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Marziliano edge widths: ``(H, W)`` float64, the width (pixels, >= 2) at each measured edge, 0 elsewhere.

    Only edge pixels away from the image border whose rounded gradient angle is 0° or ±180°
    are measured (see the module docstring).
    """
    height, width = grey.shape
    gy, gx = np.gradient(grey)
    angle = np.where(gx != 0, np.degrees(np.arctan2(gy, gx)), 0.0)  # the reference leaves g_x = 0 at 0°
    quantised = 45.0 * _round_half_away(angle / 45.0)
    rising = quantised == 0.0
    falling = np.abs(quantised) == 180.0
    inner = np.zeros(grey.shape, dtype=bool)
    inner[1:-1, 1:-1] = True
    measured_rising = edges & inner & rising
    measured_falling = edges & inner & falling
    widths = np.zeros(grey.shape, dtype=np.float64)
    if width < 3 or not (measured_rising.any() or measured_falling.any()):
        return widths
    steps = np.diff(grey, axis=1)  # (H, W-1): steps[:, i] = A[:, i+1] - A[:, i]
    cap = MAX_SIDE_STEPS
    zero_column = np.zeros((height, 1), dtype=np.int64)

    def after(runs: np.ndarray) -> np.ndarray:  # runs starting at step c+1 (0 past the right border)
        return np.concatenate([runs[:, 1:], zero_column, zero_column], axis=1)[:, :width]

    def before(runs: np.ndarray) -> np.ndarray:  # runs ending at step c-2 (0 before the left border)
        return np.concatenate([zero_column, zero_column, runs], axis=1)[:, :width]

    up, down = steps > 0, steps < 0
    rising_width = np.minimum(after(_runs_rightward(up)), cap) + np.minimum(before(_runs_leftward(up)), cap) + 2
    falling_width = np.minimum(after(_runs_rightward(down)), cap) + np.minimum(before(_runs_leftward(down)), cap) + 2
    widths[measured_rising] = rising_width[measured_rising]
    widths[measured_falling] = falling_width[measured_falling]
    return widths


def cpbd_grey(grey: np.ndarray) -> float:
    """CPBD of one ``(H, W)`` grey-level image (float, 0…255, H and W >= 64) → float in [0, 1]."""
    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim != 2:
        raise ValueError(f"cpbd_grey: expected an (H, W) image, got shape {grey.shape}")
    height, width = grey.shape
    if height < BLOCK_SIZE or width < BLOCK_SIZE:
        raise ValueError(f"CPBD needs images of at least {BLOCK_SIZE}×{BLOCK_SIZE} pixels, got {height}×{width}")
    if not np.isfinite(grey).all():
        raise ValueError("cpbd_grey: image contains NaN or inf")
    canny = canny_edges(grey)
    widths = edge_widths(grey, sobel_vertical_edges(grey))
    rows, cols = height // BLOCK_SIZE, width // BLOCK_SIZE
    threshold = EDGE_BLOCK_FRACTION * BLOCK_SIZE * BLOCK_SIZE
    total = 0
    undetected = 0
    for i in range(rows):
        for j in range(cols):
            block = (slice(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE), slice(j * BLOCK_SIZE, (j + 1) * BLOCK_SIZE))
            if np.count_nonzero(canny[block]) <= threshold:
                continue
            block_widths = widths[block]
            block_widths = block_widths[block_widths != 0]
            if block_widths.size == 0:
                continue
            contrast = int(grey[block].max() - grey[block].min())
            jnb = JNB_WIDTH_LOW_CONTRAST if contrast <= JNB_CONTRAST_LIMIT else JNB_WIDTH_HIGH_CONTRAST
            probability = 1.0 - np.exp(-np.abs(block_widths / jnb) ** BETA)
            bins = np.floor(probability * 100.0 + 0.5)
            undetected += int(np.count_nonzero(bins <= P_JNB_BIN))
            total += int(block_widths.size)
    return undetected / total if total else 0.0


def cpbd(
    images: Tensor,  # (B, C, H, W) float in [0, 1] (C = 1 grey or 3 RGB) or uint8 0..255; H, W >= 64
) -> Tensor:
    """``(B,)`` float64 CPBD sharpness of each image, in [0, 1] (higher = sharper)."""
    assert_shape(images, (None, None, None, None), "images")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected 1 or 3 channels, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise TypeError(f"images: expected float in [0, 1] or uint8, got {images.dtype}")
    else:
        assert_range(images, 0.0, 1.0, "images")
    array = images.detach().to("cpu", torch.float64).numpy()
    scores = [cpbd_grey(to_grey_levels(image[0] if image.shape[0] == 1 else image)) for image in array]
    return torch.tensor(scores, dtype=torch.float64)


__all__ = [
    "BETA",
    "BLOCK_SIZE",
    "canny_edges",
    "cpbd",
    "cpbd_grey",
    "edge_widths",
    "sobel_vertical_edges",
    "to_grey_levels",
]
