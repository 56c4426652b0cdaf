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
classifier's weights (the pipeline averages them over a video) temper those. The τ in use
travels with the directions (``EditDirections.subject_temperature``, 1 = the paper) into the
:class:`~emoedit.editing.texture_editor.TextureEditor`.

On a ``textures`` cache, :func:`classify_neutral_textures` gathers the classifier's logits of
the direction subjects' neutral textures (the same view filter and excluded clips as the
directions) in batches, and :func:`calibrate_subject_temperature_on_cache` feeds them to the
calibration (``emoedit directions --subject-temperature calibrate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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
    if weights.numel() and bool((weights.sum(dim=-1) <= 0).any()):
        raise ValueError("subject_weights: a row of zeros cannot be tempered (τ != 1 needs weights)")
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


def describe_calibration(
    record: Mapping[str, Any],  # TemperatureCalibration.as_dict() (or the record stored with the directions)
) -> str:
    """A few lines for the command line: the chosen τ, the score of every candidate and of the plain mean."""
    candidates, scores = list(record.get("candidates") or ()), list(record.get("scores") or ())
    lines = [f"eq. 4 subject temperature: τ = {float(record['temperature']):g}, chosen leave-one-subject-out on "
             f"{record.get('textures', '?')} neutral textures (1 = the paper)",
             "  mean cosine of the held-out subject's mixture to its own directions:",
             "    " + "  ".join(f"τ={float(c):g}: {float(v):.4f}" for c, v in zip(candidates, scores))]
    if "mean_score" in record:
        mean = float(record["mean_score"])
        lines.append(f"    plain mean of the other subjects (τ → ∞, the ablation): {mean:.4f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- on a textures cache
def classify_neutral_textures(
    reader: Any,  # an opened CacheReader of kind "textures"
    classifier: Any,  # a SubjectClassifier covering every subject of ``directions`` (run on its own device)
    directions: Any,  # EditDirections: its subjects are the rows (and the subjects whose textures are used)
    *,
    views: Sequence[str] | None = ("front",),  # keep only these views (None: all; ignored when the cache has no 'view')
    exclude_clips: Sequence[str] = (),  # clip ids (the cache's "clip" metadata) left out
    batch_size: int = 32,  # textures per classifier pass
    num_workers: int = 0,  # DataLoader workers reading shards
    max_cached_shards: int = 4,  # shards kept in memory per worker
    index: Any | None = None,  # already selected neutral records (views, exclude_clips ignored), e.g. run_directions'
) -> tuple[Tensor, Tensor]:
    """Logits ``(M, N)`` float32 (columns in ``directions.subjects`` order) and rows ``(M,)`` int64
    (each texture's subject, a row of ``directions``) of the cache's neutral textures of the
    direction subjects, minus ``exclude_clips`` — the inputs of :func:`calibrate_subject_temperature`."""
    from torch.utils.data import DataLoader

    from emoedit.data.cache import CacheDataset, ShardLocalSampler
    from emoedit.editing.directions import DirectionsError, texture_to_network, without_clips
    from emoedit.editing.emotion_code import NEUTRAL

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    subjects = tuple(directions.subjects)
    unknown = [s for s in subjects if s not in classifier.subjects]
    if unknown:
        raise DirectionsError(f"the subject classifier has no class for the direction subjects {unknown[:5]} "
                              f"(classifier subjects: {list(classifier.subjects)[:8]})")
    order = torch.tensor([classifier.subjects.index(s) for s in subjects], dtype=torch.int64)
    if index is None:
        index = reader.records()
        for name in ("subject", "emotion"):
            if name not in index.names:
                raise DirectionsError(f"{reader.root}: the cache has no {name!r} metadata "
                                      "(needed to pick neutral textures)")
        if views is not None and "view" in index.names:
            index = index.where(view=list(views))
        index = index.where(subject=list(subjects))
        index = index.select(index.mask("emotion", NEUTRAL))
        index = without_clips(reader, index, exclude_clips)
    if len(index) == 0:
        raise DirectionsError(f"{reader.root}: no neutral textures of the direction subjects (views {views})")
    dataset = CacheDataset(reader, fields=("uv_texture",), index=index, max_cached_shards=max_cached_shards)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardLocalSampler(dataset.index, shuffle=False),
                        num_workers=num_workers)
    device = next(classifier.parameters()).device
    row_of = {s: i for i, s in enumerate(subjects)}
    logits, rows = [], []
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                out = classifier(texture_to_network(batch["uv_texture"]).to(device)).logits.float().cpu()
                logits.append(out[:, order])
                rows.append(torch.tensor([row_of[str(s)] for s in batch["subject"]], dtype=torch.int64))
    finally:
        classifier.train(was_training)
    return torch.cat(logits), torch.cat(rows)


def calibrate_subject_temperature_on_cache(
    reader: Any,  # an opened CacheReader of kind "textures" (the one the directions were solved from)
    classifier: Any,  # a SubjectClassifier covering every subject of ``directions``
    directions: Any,  # EditDirections (eq. 5); only its solved emotions are compared
    *,
    views: Sequence[str] | None = ("front",),  # the directions' view filter
    exclude_clips: Sequence[str] = (),  # the directions' excluded clips (held-out evaluation clips)
    batch_size: int = 32,  # textures per classifier pass
    num_workers: int = 0,  # DataLoader workers reading shards
    candidates: Sequence[float] = DEFAULT_CANDIDATES,  # τ values to try (> 0)
    index: Any | None = None,  # already selected neutral records (views, exclude_clips ignored)
) -> TemperatureCalibration:
    """:func:`calibrate_subject_temperature` on the logits of :func:`classify_neutral_textures`."""
    logits, rows = classify_neutral_textures(reader, classifier, directions, views=views, exclude_clips=exclude_clips,
                                             batch_size=batch_size, num_workers=num_workers, index=index)
    solved = directions.solved_mask
    return calibrate_subject_temperature(logits, rows, directions.directions[:, solved], candidates=candidates)


__all__ = [
    "DEFAULT_CANDIDATES",
    "TemperatureCalibration",
    "calibrate_subject_temperature",
    "calibrate_subject_temperature_on_cache",
    "classify_neutral_textures",
    "describe_calibration",
    "held_out_mixture_cosine",
    "temper_weights",
]
