"""Judged emotion: accuracy, confidence in the target emotion, and its monotonicity in α.

The emotion judge (:class:`emoedit.networks.judges.EmotionJudge`, trained by the harness
on ground-truth frames only) classifies edited frames into neutral + the 7 emotions.

- :func:`emotion_accuracy` — fraction of frames classified as the target emotion;
- :func:`target_confidence` — the judge's softmax probability of the target emotion;
- :func:`intensity_monotonicity` — given the confidence at several strengths α of one
  edit, the Spearman rank correlation between α and the confidence, and the fraction of
  consecutive α steps (sorted by α) where the confidence rises. An edit whose confidence
  rises with α scores 1 and 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from emoedit.shape_checks import assert_finite, assert_shape


@dataclass(frozen=True)
class MonotonicityScores:
    """Result of :func:`intensity_monotonicity`."""

    alphas: Tensor  # (N,) float64 strengths, ascending
    confidences: Tensor  # (N,) float64 confidence at each strength (mean over repeats)
    spearman: Tensor  # () float64 Spearman rank correlation in [-1, 1]; NaN for a constant sequence
    increasing_fraction: Tensor  # () float64 fraction of the N − 1 steps whose confidence rises


def emotion_accuracy(
    logits: Tensor,  # (B, K) float judge logits (or probabilities)
    targets: Tensor,  # (B,) int64 target class index
) -> Tensor:
    """``()`` float64 fraction of samples whose arg-max class is the target."""
    dims = assert_shape(logits, ("B", "K"), "logits")
    assert_shape(targets, (dims["B"],), "targets")
    return (logits.argmax(dim=1) == targets.to(logits.device)).to(torch.float64).mean()


def target_confidence(
    logits: Tensor,  # (B, K) float judge logits
    targets: Tensor,  # (B,) int64 target class index
) -> Tensor:
    """``(B,)`` softmax probability of the target class, in [0, 1]."""
    dims = assert_shape(logits, ("B", "K"), "logits")
    assert_shape(targets, (dims["B"],), "targets")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets: expected int64 class indices, got {targets.dtype}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= dims["K"]):
        raise ValueError(f"targets: class indices must lie in [0, {dims['K']}), got [{int(targets.min())}, {int(targets.max())}]")
    probabilities = torch.softmax(logits.to(torch.float64), dim=1)
    return probabilities.gather(1, targets.to(logits.device)[:, None])[:, 0]


def average_ranks(values: Tensor) -> Tensor:
    """``(N,)`` float64 1-based ranks of ``(N,)`` values, ties sharing their mean rank."""
    assert_shape(values, (None,), "values")
    values = values.to(torch.float64)
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    sorted_values = values[order]
    start = 0
    count = values.shape[0]
    while start < count:
        end = start
        while end + 1 < count and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman_correlation(
    x: Tensor,  # (N,) float values
    y: Tensor,  # (N,) float values
) -> Tensor:
    """``()`` float64 Spearman rank correlation (Pearson of average ranks); NaN if either is constant."""
    dims = assert_shape(x, ("N",), "x")
    assert_shape(y, ("N",), "y", dims)
    if dims["N"] < 2:
        raise ValueError(f"Spearman correlation needs at least 2 values, got {dims['N']}")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = torch.sqrt(rx.square().sum() * ry.square().sum())
    if float(denominator) == 0.0:
        return torch.tensor(math.nan, dtype=torch.float64)
    return (rx * ry).sum() / denominator


def intensity_monotonicity(
    alphas: Tensor,  # (N,) float strengths α of the edits (any order, distinct)
    confidences: Tensor,  # (N,) or (N, R) float judge confidence in the target emotion (R repeats: averaged)
    *,
    min_increase: float = 0.0,  # a step counts as rising when the confidence grows by more than this
) -> MonotonicityScores:
    """Spearman correlation of confidence with α and the fraction of rising consecutive steps."""
    dims = assert_shape(alphas, ("N",), "alphas")
    if confidences.ndim == 2:
        assert_shape(confidences, (dims["N"], None), "confidences")
        confidences = confidences.to(torch.float64).mean(dim=1)
    else:
        assert_shape(confidences, (dims["N"],), "confidences")
    assert_finite(alphas, "alphas")
    assert_finite(confidences, "confidences")
    if dims["N"] < 2:
        raise ValueError(f"intensity monotonicity needs at least 2 strengths, got {dims['N']}")
    alphas = alphas.to(torch.float64)
    if torch.unique(alphas).numel() != dims["N"]:
        raise ValueError(f"alphas must be distinct, got {alphas.tolist()}")
    order = torch.argsort(alphas)
    alphas, confidences = alphas[order], confidences.to(torch.float64)[order]
    rising = (confidences[1:] - confidences[:-1]) > min_increase
    return MonotonicityScores(
        alphas=alphas,
        confidences=confidences,
        spearman=spearman_correlation(alphas, confidences),
        increasing_fraction=rising.to(torch.float64).mean(),
    )


__all__ = [
    "MonotonicityScores",
    "average_ranks",
    "emotion_accuracy",
    "intensity_monotonicity",
    "spearman_correlation",
    "target_confidence",
]
