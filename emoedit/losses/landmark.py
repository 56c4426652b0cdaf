"""68-point landmark losses and errors (METHOD.md §3.1).

Deep3DFaceRecon's ``landmark_loss``: the weighted squared distance between predicted and
detected landmarks, summed and divided by ``B·68``. The weights are 20 for the nose
(0-based iBUG ids 28–30, i.e. points 29–31) and the inner lip contour (ids 60–67, points
61–68), 1 elsewhere (Deep3D: ``weight[28:31] = 20; weight[-8:] = 20``).

Distances are in pixels. Deep3D's weights were tuned for 224-pixel crops; pass
``scale = 224 / crop_size`` to measure in 224-pixel units at any crop size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape

NUM_LANDMARKS = 68
NOSE_IDS = (28, 29, 30)  # 0-based iBUG ids weighted by Deep3D (points 29-31, the lower nose bridge / tip)
INNER_MOUTH_IDS = tuple(range(60, 68))  # 0-based iBUG ids of the inner lip contour (points 61-68)


def deep3d_landmark_weights(
    *,
    nose_weight: float = 20.0,  # weight of NOSE_IDS
    inner_mouth_weight: float = 20.0,  # weight of INNER_MOUTH_IDS
    device: torch.device | str | None = None,  # where the tensor lives
) -> Tensor:
    """``(68,)`` float32 per-landmark weights, Deep3DFaceRecon's (1 elsewhere)."""
    weights = torch.ones(NUM_LANDMARKS, device=device)
    weights[list(NOSE_IDS)] = nose_weight
    weights[list(INNER_MOUTH_IDS)] = inner_mouth_weight
    return weights


def landmark_loss(
    predicted: Tensor,  # (B, 68, 2) float pixels, predicted landmarks
    target: Tensor,  # (B, 68, 2) float pixels, detected / true landmarks
    weights: Tensor | None = None,  # (68,) or (B, 68) per-landmark weights; None: deep3d_landmark_weights()
    *,
    scale: float = 1.0,  # multiplies the distances (224 / crop_size: measure in 224-px units)
) -> Tensor:
    """Scalar ``Σ w·‖scale·(p − t)‖² / (B·68)`` (Deep3D), in squared (scaled) pixels."""
    dims = assert_shape(predicted, ("B", NUM_LANDMARKS, 2), "predicted")
    assert_shape(target, ("B", NUM_LANDMARKS, 2), "target", dims)
    if weights is None:
        weights = deep3d_landmark_weights(device=predicted.device)
    if weights.ndim == 1:
        assert_shape(weights, (NUM_LANDMARKS,), "weights")
        weights = weights[None]
    else:
        assert_shape(weights, ("B", NUM_LANDMARKS), "weights", dims)
    squared = ((predicted - target) * scale).pow(2).sum(dim=-1)
    return (squared * weights.to(squared)).sum() / (dims["B"] * NUM_LANDMARKS)


def landmark_error_px(predicted: Tensor, target: Tensor) -> Tensor:
    """``(B,)`` mean Euclidean distance over the 68 points, pixels (an evaluation metric, unweighted).

    Args:
        predicted: ``(B, 68, 2)`` float pixels.
        target: ``(B, 68, 2)`` float pixels.
    """
    dims = assert_shape(predicted, ("B", NUM_LANDMARKS, 2), "predicted")
    assert_shape(target, ("B", NUM_LANDMARKS, 2), "target", dims)
    return torch.linalg.norm(predicted - target, dim=-1).mean(dim=1)
