"""The softmax temperature of eq. 4's subject weights, calibrated leave-one-subject-out.

Eq. 4 (METHOD.md §3.5) edits anyone with a mixture of the training subjects' directions,
weighted by the subject classifier's softmax: ``x = x0 + α Σ_v softmax(f(I))_v d[v, j]``.
A classifier trained to tell the training subjects apart is confident, so for a new face
``softmax(f(I))`` puts almost all its weight on the one nearest training subject, and eq. 4
becomes that subject's direction alone. A temperature ``τ`` softens the mixture::

    w = softmax(f(I) / τ)          τ = 1: the paper;  τ → ∞: the plain mean (the ablation)

This module picks ``τ`` without any unseen face: each training subject ``s`` in turn plays
the new face. Its textures are classified, the logit of ``s`` itself is dropped, the others
are softened by ``τ`` and mix the *other* subjects' directions; the mixture is compared with
``s``'s own direction ``d[s, j]`` (cosine in W+, every solved emotion). The candidate with the
best mean cosine over subjects wins (:func:`calibrate_subject_temperature`). The score of the
plain mean of the other subjects (the ablation's direction for a new face) is reported beside
it, so the calibration also says whether appearance predicts the edit at all: when it does
not, the largest candidates win and eq. 4 approaches the ablation.

Applying ``τ`` (:func:`temper_weights`) works on softmax weights, not logits:
``softmax(l / τ) = normalise(softmax(l) ** (1 / τ))``, so callers that keep only the
classifier's weights (the pipeline averages them over a video) temper those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from emoedit.shape_checks import assert_finite, assert_shape

DEFAULT_CANDIDATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclass(frozen=True)
class TemperatureCalibration:
    """The result of :func:`calibrate_subject_temperature` (plain data: JSON- and
    ``weights_only``-safe through :meth:`as_dict`)."""

    temperature: float  # the chosen τ (>= 1 with the default candidates)
    candidates: tuple[float, ...]  # the τ values tried
    scores: tuple[float, ...]  # mean leave-one-subject-out cosine per candidate
    mean_score: float  # the same score for the plain mean of the other subjects (τ → ∞)
    per_subject: tuple[float, ...]  # the chosen τ's cosine per subject (directions' row order)
    textures: int  # classified textures used

    def as_dict(self) -> dict[str, object]:
        return {"temperature": self.temperature, "candidates": list(self.candidates), "scores": list(self.scores),
                "mean_score": self.mean_score, "per_subject": list(self.per_subject), "textures": self.textures}


def temper_weights(
    weights: Tensor,  # (..., N) float softmax weights over the training subjects (rows sum to 1)
    temperature: float,  # τ > 0; 1 returns the weights unchanged
) -> Tensor:
    """``softmax(log(weights) / τ)``: the weights a classifier with logits divided by ``τ`` gives.
    Same shape; rows sum to 1; a zero weight stays zero (a one-hot row stays one-hot)."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if temperature == 1.0:
        return weights
    return torch.softmax(weights.log() / temperature, dim=-1)  # log 0 = -inf: a zero weight stays zero


def held_out_mixture_cosine(
    logits: Tensor,  # (M, N) float classifier logits of M textures of training subjects
    subject_rows: Tensor,  # (M,) int64: each texture's subject, a row of ``directions``
    directions: Tensor,  # (N, E, num_ws, w_dim) float: d[i, j] of the solved emotions
    temperature: float | None,  # τ; None = uniform weights over the other subjects (the mean)
) -> Tensor:
    """(N,) float: for each subject s with textures, the mean over its textures and the E emotions
    of ``cos(Σ_{v≠s} softmax(l_v / τ) d[v, j], d[s, j])`` (logit of s dropped); NaN for a
    subject without textures."""
    assert_shape(logits, ("M", "N"), "logits")
    assert_shape(subject_rows, ("M",), "subject_rows", {"M": logits.shape[0]})
    assert_shape(directions, (logits.shape[1], None, None, None), "directions")
    assert_finite(logits, "logits")
    n = logits.shape[1]
    if n < 2:
        raise ValueError("leave-one-subject-out needs at least 2 training subjects")
    flat = directions.flatten(2).to(torch.float64)  # (N, E, D)
    own = F.one_hot(subject_rows, n).bool()
    if temperature is None:
        weights = (~own).to(torch.float64) / (n - 1)
    else:
        scaled = logits.to(torch.float64).masked_fill(own, float("-inf")) / float(temperature)
        weights = torch.softmax(scaled, dim=-1)
    mixed = torch.einsum("mn,ned->med", weights, flat)  # (M, E, D)
    cos = F.cosine_similarity(mixed, flat[subject_rows], dim=-1).mean(dim=-1)  # (M,)
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, subject_rows, cos)
    counts = torch.bincount(subject_rows, minlength=n).to(torch.float64)
    return (sums / counts).to(torch.float32)  # 0/0 = NaN for subjects without textures


def calibrate_subject_temperature(
    logits: Tensor,  # (M, N) float classifier logits of textures of the training subjects
    subject_rows: Tensor,  # (M,) int64: each texture's subject, a row of ``directions``
    directions: Tensor,  # (N, E, num_ws, w_dim) float: d[i, j] of the solved emotions only
    *,
    candidates: Sequence[float] = DEFAULT_CANDIDATES,  # τ values to try (> 0)
) -> TemperatureCalibration:
    """The candidate ``τ`` whose leave-one-subject-out mixtures best match each held-out subject's
    own directions (mean cosine over the subjects that have textures; ties: the smaller τ)."""
    if not candidates or any(not (c > 0 and math.isfinite(c)) for c in candidates):
        raise ValueError(f"candidates must be positive finite temperatures, got {list(candidates)}")
    present = torch.bincount(subject_rows, minlength=logits.shape[1]) > 0
    if int(present.sum()) < 2:
        raise ValueError("leave-one-subject-out needs textures of at least 2 training subjects")

    def score(per_subject: Tensor) -> float:
        return float(per_subject[present].mean())

    per = [held_out_mixture_cosine(logits, subject_rows, directions, float(c)) for c in candidates]
    scores = tuple(score(p) for p in per)
    best = max(range(len(scores)), key=lambda i: (scores[i], -candidates[i]))
    mean_score = score(held_out_mixture_cosine(logits, subject_rows, directions, None))
    return TemperatureCalibration(
        temperature=float(candidates[best]), candidates=tuple(float(c) for c in candidates), scores=scores,
        mean_score=mean_score, per_subject=tuple(float(v) for v in per[best]), textures=int(logits.shape[0]),
    )


__all__ = [
    "DEFAULT_CANDIDATES",
    "TemperatureCalibration",
    "calibrate_subject_temperature",
    "held_out_mixture_cosine",
    "temper_weights",
]
