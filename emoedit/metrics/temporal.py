"""Temporal jitter of a video's landmarks or textures, alone and against the truth's.

The jitter of a sequence is its mean frame-to-frame change:

- landmarks ``(T, P, D)``: mean over steps and points of ``‖p_{t+1} − p_t‖`` (input units);
- images / UV textures ``(T, C, H, W)``: mean over steps of the mean absolute per-pixel,
  per-channel change, optionally over a mask (image units).

``order = 2`` measures the change of the change (``x_{t+1} − 2x_t + x_{t−1}``), which is
insensitive to smooth motion and so isolates flicker. A method's jitter alone mixes real
motion with flicker; :func:`compare_jitter` puts it next to the ground truth's jitter on
the same clip (ratio 1 / difference 0 = as smooth as the truth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from emoedit.shape_checks import assert_range, assert_shape


@dataclass(frozen=True)
class JitterComparison:
    """A sequence's jitter next to the truth's, from :func:`compare_jitter`."""

    jitter: Tensor  # () float64 jitter of the method's sequence
    truth_jitter: Tensor  # () float64 jitter of the ground-truth sequence
    ratio: Tensor  # () float64 jitter / truth_jitter (inf or NaN when the truth is still)
    difference: Tensor  # () float64 jitter − truth_jitter


def _differences(sequence: Tensor, order: int) -> Tensor:
    if order not in (1, 2):
        raise ValueError(f"jitter order must be 1 (change) or 2 (change of change), got {order}")
    if sequence.shape[0] < order + 1:
        raise ValueError(f"jitter of order {order} needs at least {order + 1} frames, got {sequence.shape[0]}")
    return torch.diff(sequence.to(torch.float64), n=order, dim=0)


def landmark_steps(
    landmarks: Tensor,  # (T, P, D) float landmark tracks (pixels or model units)
    *,
    order: int = 1,  # 1: frame-to-frame change; 2: change of the change
) -> Tensor:
    """``(T − order,)`` float64 mean over points of the per-step displacement norm, input units."""
    assert_shape(landmarks, (None, None, None), "landmarks")
    return torch.linalg.norm(_differences(landmarks, order), dim=-1).mean(dim=1)


def image_steps(
    frames: Tensor,  # (T, C, H, W) float frames or UV textures
    *,
    mask: Tensor | None = None,  # (H, W), (1, H, W), (T, 1, H, W) bool/float weights in [0, 1]; None = everywhere
    order: int = 1,  # 1: frame-to-frame change; 2: change of the change
) -> Tensor:
    """``(T − order,)`` float64 mean absolute per-pixel change (image units), over the mask when given.

    A per-frame mask weights a step by the product of the masks of the frames it spans
    (for order 1: both frames must show the region).
    """
    dims = assert_shape(frames, ("T", "C", "H", "W"), "frames")
    steps = _differences(frames, order).abs().mean(dim=1, keepdim=True)  # (T - order, 1, H, W)
    if mask is None:
        return steps.mean(dim=(1, 2, 3))
    weights = mask.to(torch.float64)
    if weights.ndim == 2:
        weights = weights[None, None]
    elif weights.ndim == 3:
        weights = weights[None]
    assert_shape(weights, (None, 1, dims["H"], dims["W"]), "mask")
    assert_range(weights, 0.0, 1.0, "mask")
    if weights.shape[0] == dims["T"]:
        spanned = weights[: dims["T"] - order].clone()
        for shift in range(1, order + 1):
            spanned = spanned * weights[shift: dims["T"] - order + shift]
        weights = spanned
    elif weights.shape[0] != 1:
        raise ValueError(f"mask: expected 1 or T={dims['T']} masks, got {weights.shape[0]}")
    area = (weights * torch.ones_like(steps)).sum(dim=(1, 2, 3))
    total = (steps * weights).sum(dim=(1, 2, 3))
    return torch.where(area > 0, total / area.clamp(min=1e-300), torch.full_like(total, math.nan))


def landmark_jitter(
    landmarks: Tensor,  # (T, P, D) float landmark tracks
    *,
    order: int = 1,  # 1: frame-to-frame change; 2: change of the change
) -> Tensor:
    """``()`` float64 mean of :func:`landmark_steps` (input units)."""
    return landmark_steps(landmarks, order=order).mean()


def image_jitter(
    frames: Tensor,  # (T, C, H, W) float frames or UV textures
    *,
    mask: Tensor | None = None,  # see image_steps
    order: int = 1,  # 1: frame-to-frame change; 2: change of the change
) -> Tensor:
    """``()`` float64 mean of :func:`image_steps` over the steps with a non-empty mask (image units)."""
    return image_steps(frames, mask=mask, order=order).nanmean()


def compare_jitter(
    jitter: Tensor | float,  # the method's jitter (landmark_jitter / image_jitter)
    truth_jitter: Tensor | float,  # the ground truth's jitter on the same clip, same unit
) -> JitterComparison:
    """Ratio and difference of a jitter against the truth's."""
    value = torch.as_tensor(jitter, dtype=torch.float64)
    truth = torch.as_tensor(truth_jitter, dtype=torch.float64)
    return JitterComparison(jitter=value, truth_jitter=truth, ratio=value / truth, difference=value - truth)


def landmark_jitter_against_truth(
    landmarks: Tensor,  # (T, P, D) float landmark tracks of the method's output
    truth: Tensor,  # (T, P, D) float landmark tracks of the ground-truth video
    *,
    order: int = 1,  # 1: frame-to-frame change; 2: change of the change
) -> JitterComparison:
    """:func:`compare_jitter` of the two landmark jitters."""
    dims = assert_shape(landmarks, ("T", "P", "D"), "landmarks")
    assert_shape(truth, ("T", "P", "D"), "truth", dims)
    return compare_jitter(landmark_jitter(landmarks, order=order), landmark_jitter(truth, order=order))


def image_jitter_against_truth(
    frames: Tensor,  # (T, C, H, W) float frames / textures of the method's output
    truth: Tensor,  # (T, C, H, W) float frames / textures of the ground truth
    *,
    mask: Tensor | None = None,  # see image_steps; the same mask weights both
    order: int = 1,  # 1: frame-to-frame change; 2: change of the change
) -> JitterComparison:
    """:func:`compare_jitter` of the two image jitters."""
    dims = assert_shape(frames, ("T", "C", "H", "W"), "frames")
    assert_shape(truth, ("T", "C", "H", "W"), "truth", dims)
    return compare_jitter(image_jitter(frames, mask=mask, order=order), image_jitter(truth, mask=mask, order=order))


__all__ = [
    "JitterComparison",
    "compare_jitter",
    "image_jitter",
    "image_jitter_against_truth",
    "image_steps",
    "landmark_jitter",
    "landmark_jitter_against_truth",
    "landmark_steps",
]
