"""Full-reference image quality of an edited face region: masked PSNR, SSIM and LPIPS.

On the synthetic world the ground-truth edited video exists, so the method's output can
be compared with it pixel by pixel inside the face region (a mask, e.g. the rendered face
mask of the truth). Images are NCHW float in ``[0, max_value]`` (the renderer's [0, 1] by
default); masks are ``(B, 1, H, W)`` or ``(B, H, W)``, bool or float weights in [0, 1].

- :func:`masked_psnr` — ``10·log10(max² / MSE)`` with the MSE over the mask's pixels and
  all channels; identical images (MSE = 0) and anything above ``cap_db`` give ``cap_db``
  (default :data:`PSNR_CAP_DB` = 100 dB), so averages stay finite;
- :func:`masked_ssim` — SSIM (Wang et al. 2004) with the standard 11 × 11 Gaussian window
  (σ = 1.5), ``K1 = 0.01``, ``K2 = 0.03``, computed per channel on the windows that lie
  inside the image ("valid"), averaged over channels, then over the window centres weighted
  by the mask there;
- :func:`masked_lpips` — LPIPS (:class:`emoedit.losses.perceptual.LPIPSLoss`, loaded from
  local files) of ``output`` composited onto ``target`` outside the mask, against
  ``target``: only differences inside the region count;
- :func:`image_quality` — all of them at once, as :class:`ImageQualityScores`.

A sample whose mask is empty gives NaN (no pixel to compare), never an exception, so a
frame without a face does not stop an evaluation; average with ``nanmean``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from emoedit.losses.perceptual import LPIPSLoss
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

#: PSNR of identical images (and the upper limit of every PSNR), dB.
PSNR_CAP_DB: float = 100.0
#: SSIM window: side (pixels) and Gaussian σ (pixels); stability constants K1, K2.
SSIM_WINDOW: int = 11
SSIM_SIGMA: float = 1.5
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03


@dataclass(frozen=True)
class ImageQualityScores:
    """Per-sample scores of :func:`image_quality`."""

    psnr: Tensor  # (B,) float64 dB, <= the cap; NaN for an empty mask
    ssim: Tensor  # (B,) float64 in [-1, 1] (1 = identical); NaN for an empty mask
    lpips: Tensor | None  # (B,) float >= 0 (0 = identical), None without an LPIPS network


def _check_pair(output: Tensor, target: Tensor, max_value: float) -> dict[str, int]:
    dims = assert_shape(output, ("B", "C", "H", "W"), "output")
    assert_shape(target, ("B", "C", "H", "W"), "target", dims)
    if not output.is_floating_point() or not target.is_floating_point():
        raise TypeError(f"output/target must be float images, got {output.dtype} and {target.dtype}")
    if not max_value > 0:
        raise ValueError(f"max_value must be > 0, got {max_value}")
    for tensor, name in ((output, "output"), (target, "target")):
        assert_finite(tensor, name)
        assert_range(tensor, 0.0, max_value, name)
    return dims


def _mask_weights(mask: Tensor | None, dims: dict[str, int], like: Tensor) -> Tensor:
    """``(B, 1, H, W)`` float64 weights in [0, 1] (all ones without a mask)."""
    batch, height, width = dims["B"], dims["H"], dims["W"]
    if mask is None:
        return torch.ones(batch, 1, height, width, dtype=torch.float64, device=like.device)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    assert_shape(mask, (batch, 1, height, width), "mask")
    weights = mask.to(torch.float64)
    assert_range(weights, 0.0, 1.0, "mask")
    return weights


def masked_psnr(
    output: Tensor,  # (B, C, H, W) float in [0, max_value], the method's frames
    target: Tensor,  # (B, C, H, W) float in [0, max_value], the ground-truth frames
    mask: Tensor | None = None,  # (B, 1, H, W) / (B, H, W) bool or float weights in [0, 1]; None = whole image
    *,
    max_value: float = 1.0,  # peak signal value (1 for [0, 1] images, 255 for 8-bit levels)
    cap_db: float = PSNR_CAP_DB,  # PSNR of identical images and upper limit, dB
) -> Tensor:
    """``(B,)`` float64 PSNR (dB) over the masked pixels, capped at ``cap_db``; NaN for an empty mask."""
    dims = _check_pair(output, target, max_value)
    weights = _mask_weights(mask, dims, output)
    squared = (output.to(torch.float64) - target.to(torch.float64)).square().sum(dim=1, keepdim=True)
    area = weights.sum(dim=(1, 2, 3))
    mse = (squared * weights).sum(dim=(1, 2, 3)) / (area * dims["C"]).clamp(min=1e-300)
    floor = max_value**2 * 10.0 ** (-cap_db / 10.0)  # the MSE at which PSNR reaches the cap
    psnr = 10.0 * torch.log10(max_value**2 / mse.clamp(min=floor))
    return torch.where(area > 0, psnr, torch.full_like(psnr, math.nan))


def gaussian_window(
    size: int = SSIM_WINDOW,  # window side, pixels (odd)
    sigma: float = SSIM_SIGMA,  # Gaussian σ, pixels
    *,
    dtype: torch.dtype = torch.float64,  # dtype of the window
    device: torch.device | str | None = None,  # where the window lives
) -> Tensor:
    """``(size, size)`` normalised Gaussian window (sums to 1)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"SSIM window size must be a positive odd number, got {size}")
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    line = torch.exp(-coords.square() / (2 * sigma * sigma))
    line = line / line.sum()
    return line[:, None] * line[None, :]


def ssim_map(
    output: Tensor,  # (B, C, H, W) float in [0, max_value]
    target: Tensor,  # (B, C, H, W) float in [0, max_value]
    *,
    max_value: float = 1.0,  # dynamic range L of the images
    window_size: int = SSIM_WINDOW,  # Gaussian window side, pixels (odd, <= H, W)
    sigma: float = SSIM_SIGMA,  # Gaussian window σ, pixels
) -> Tensor:
    """``(B, C, H − w + 1, W − w + 1)`` float64 local SSIM at every window centre inside the image."""
    dims = _check_pair(output, target, max_value)
    if window_size > min(dims["H"], dims["W"]):
        raise ValueError(f"SSIM window {window_size} is larger than the images ({dims['H']}×{dims['W']})")
    channels = dims["C"]
    window = gaussian_window(window_size, sigma, device=output.device).expand(channels, 1, -1, -1)
    x, y = output.to(torch.float64), target.to(torch.float64)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * max_value) ** 2, (SSIM_K2 * max_value) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))


def masked_ssim(
    output: Tensor,  # (B, C, H, W) float in [0, max_value]
    target: Tensor,  # (B, C, H, W) float in [0, max_value]
    mask: Tensor | None = None,  # (B, 1, H, W) / (B, H, W) bool or float weights in [0, 1]; None = whole image
    *,
    max_value: float = 1.0,  # dynamic range L of the images
    window_size: int = SSIM_WINDOW,  # Gaussian window side, pixels (odd)
    sigma: float = SSIM_SIGMA,  # Gaussian window σ, pixels
) -> Tensor:
    """``(B,)`` float64 mean SSIM over the window centres, weighted by the mask there; NaN for an empty mask."""
    dims = _check_pair(output, target, max_value)
    weights = _mask_weights(mask, dims, output)
    local = ssim_map(output, target, max_value=max_value, window_size=window_size, sigma=sigma).mean(dim=1, keepdim=True)
    half = window_size // 2
    centres = weights[:, :, half:dims["H"] - half, half:dims["W"] - half]
    area = centres.sum(dim=(1, 2, 3))
    score = (local * centres).sum(dim=(1, 2, 3)) / area.clamp(min=1e-300)
    return torch.where(area > 0, score, torch.full_like(score, math.nan))


def masked_lpips(
    lpips: LPIPSLoss,  # the LPIPS network (LPIPSLoss.from_files; with_random_backbone in tests)
    output: Tensor,  # (B, 3, H, W) float in [0, 1]
    target: Tensor,  # (B, 3, H, W) float in [0, 1]
    mask: Tensor | None = None,  # (B, 1, H, W) / (B, H, W) bool or float weights in [0, 1]; None = whole image
) -> Tensor:
    """``(B,)`` LPIPS of ``output·m + target·(1 − m)`` against ``target`` (0 = identical in the region)."""
    dims = _check_pair(output, target, 1.0)
    if dims["C"] != 3:
        raise ValueError(f"LPIPS needs RGB images, got {dims['C']} channels")
    weights = _mask_weights(mask, dims, output).to(output.dtype)
    composite = output * weights + target * (1.0 - weights)
    with torch.no_grad():
        return lpips(composite * 2.0 - 1.0, target * 2.0 - 1.0)


def image_quality(
    output: Tensor,  # (B, C, H, W) float in [0, 1], the method's frames
    target: Tensor,  # (B, C, H, W) float in [0, 1], the ground-truth frames
    mask: Tensor | None = None,  # (B, 1, H, W) / (B, H, W) bool or float weights in [0, 1]; None = whole image
    *,
    lpips: LPIPSLoss | None = None,  # LPIPS network; None = no LPIPS score
    psnr_cap_db: float = PSNR_CAP_DB,  # PSNR of identical images, dB
) -> ImageQualityScores:
    """PSNR, SSIM (and LPIPS when a network is given) of the masked region, per sample."""
    return ImageQualityScores(
        psnr=masked_psnr(output, target, mask, cap_db=psnr_cap_db),
        ssim=masked_ssim(output, target, mask),
        lpips=None if lpips is None else masked_lpips(lpips, output, target, mask),
    )


__all__ = [
    "ImageQualityScores",
    "PSNR_CAP_DB",
    "gaussian_window",
    "image_quality",
    "masked_lpips",
    "masked_psnr",
    "masked_ssim",
    "ssim_map",
]
