"""Texture editing in W+ (METHOD.md §3.5, eqs. 3–4 and the "without classifier" ablation).

With the edit directions ``d`` (N subjects × E emotions, :mod:`emoedit.editing.directions`)
and an emotion code ``a`` (B, E) of strengths α ≥ 0 (``emoedit.editing.emotion_code``; a
one-hot code scaled by α is eq. 2, several non-zero entries mix emotions), one batched call
edits W+ latents ``x0`` (B, num_ws, w_dim):

- **known subject** (eq. 3), ``subject_index`` (B,)::

      x = x0 + Σ_j a_j · d[i, j]

- **anyone** (eq. 4), ``subject_weights`` (B, N) = softmax(f(I)) of the subject classifier,
  tempered by the editor's ``subject_temperature`` τ (1 = the paper, the default; a calibrated
  τ > 1 softens a confident classifier's near one-hot weights, :mod:`emoedit.editing.subject_temperature`)::

      x = x0 + Σ_j a_j · Σ_v softmax(f(I) / τ)_v · d[v, j]      (w = softmax(log w / τ) on given weights)

- **without classifier** (ablation), ``mode="mean"``::

      x = x0 + Σ_j a_j · mean_v d[v, j]

For a one-hot code these are exactly eqs. 3 and 4 with α = a_i. The edit is linear in the
code, so α may be any real ≥ 0: between the trained levels (α = j / E_m) and beyond 1.
Mixtures add the single-emotion edits (a consequence of the linearity, not something the
paper trained). The directions are buffers; the subject names (rows) are kept as a tuple.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from emoedit.editing.directions import DirectionsError, EditDirections, check_subject_temperature
from emoedit.editing.emotion_code import EMOTIONS
from emoedit.editing.subject_temperature import temper_weights
from emoedit.shape_checks import assert_finite, assert_shape

MODES: tuple[str, ...] = ("auto", "subject", "classifier", "mean")


@dataclass(frozen=True)
class TextureEditOutput:
    """An edited batch of W+ latents."""

    wplus: Tensor  # (B, num_ws, w_dim): x = x0 + offset
    offset: Tensor  # (B, num_ws, w_dim): the edit added to x0


class TextureEditor(nn.Module):
    """Eqs. 3 / 4 / the mean-direction ablation as one batched ``forward`` (see the module docstring)."""

    def __init__(
        self,
        *,
        directions: Tensor,  # (N, E, num_ws, w_dim) float: d[i, j] (eq. 5)
        subjects: Sequence[str],  # N subject names: row order of ``directions`` and of subject_weights
        emotions: Sequence[str] = EMOTIONS,  # E emotion names: order of ``directions``' columns and of the code
        solved: Sequence[str] | None = None,  # emotions that have directions; None = all (others may not be applied)
        subject_temperature: float = 1.0,  # τ of eq. 4: subject_weights become softmax(log w / τ); 1 = the paper
    ) -> None:
        super().__init__()
        names, emotion_names = tuple(subjects), tuple(emotions)
        assert_shape(directions, (len(names), len(emotion_names), None, None), "directions")
        assert_finite(directions, "directions")
        if emotion_names != EMOTIONS:
            raise ValueError(f"TextureEditor: emotions must be in code order {EMOTIONS}, got {emotion_names}")
        solved_names = emotion_names if solved is None else tuple(solved)
        unknown = [name for name in solved_names if name not in emotion_names]
        if unknown:
            raise ValueError(f"TextureEditor: solved emotions {unknown} are not among {emotion_names}")
        self.subject_temperature: float = check_subject_temperature(subject_temperature)
        self.subjects: tuple[str, ...] = names
        self.emotions: tuple[str, ...] = emotion_names
        self.solved: tuple[str, ...] = tuple(name for name in emotion_names if name in solved_names)
        unsolved = torch.tensor([name not in solved_names for name in emotion_names], dtype=torch.bool)
        self.register_buffer("unsolved_mask", unsolved, persistent=False)
        self.register_buffer("directions", directions.detach().clone().float())
        self.register_buffer("mean_directions", directions.detach().float().mean(dim=0))

    @classmethod
    def from_directions(
        cls,
        directions: EditDirections,  # solved directions
        subjects: Sequence[str] | None = None,  # row order to use (e.g. the classifier's subjects); None = as stored
    ) -> TextureEditor:
        """An editor over ``directions`` (rows reordered to ``subjects`` when given), with their
        eq. 4 temperature (``directions.subject_temperature``)."""
        if subjects is not None:
            directions = directions.reorder(subjects)
        return cls(directions=directions.directions, subjects=directions.subjects, emotions=directions.emotions,
                   solved=directions.solved, subject_temperature=directions.subject_temperature)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,  # a directions file (EditDirections.save)
        subjects: Sequence[str] | None = None,  # row order to use; None = as stored
    ) -> TextureEditor:
        """An editor over the directions stored at ``path``."""
        return cls.from_directions(EditDirections.load(path), subjects)

    @property
    def num_subjects(self) -> int:
        return len(self.subjects)

    @property
    def num_ws(self) -> int:
        return int(self.directions.shape[2])

    @property
    def w_dim(self) -> int:
        return int(self.directions.shape[3])

    def forward(
        self,
        wplus: Tensor,  # (B, num_ws, w_dim) float: x0
        emotion_code: Tensor,  # (B, E) float strengths α >= 0 in EMOTIONS order
        *,
        subject_weights: Tensor | None = None,  # (B, N) float >= 0 (softmax(f(I))): eq. 4, tempered by τ
        subject_index: Tensor | None = None,  # (B,) int64 in [0, N): eq. 3
        mode: str = "auto",  # "auto" (from the argument given), "subject", "classifier" or "mean" (ablation)
    ) -> TextureEditOutput:
        """Edit ``wplus`` by ``emotion_code``; exactly one of subject_index / subject_weights,
        or neither with ``mode="mean"``."""
        dims = assert_shape(wplus, ("B", self.num_ws, self.w_dim), "wplus")
        assert_shape(emotion_code, ("B", len(self.emotions)), "emotion_code", dims)
        assert_finite(emotion_code, "emotion_code")
        if emotion_code.numel() and float(emotion_code.min()) < 0:
            raise ValueError("emotion_code: strengths must be >= 0 (a negative α is not an emotion)")
        unsolved = self.unsolved_mask.to(emotion_code.device)
        if bool(unsolved.any()) and bool((emotion_code[:, unsolved] != 0).any()):
            missing = [name for name, off in zip(self.emotions, self.unsolved_mask.tolist()) if off]
            raise ValueError(f"emotion_code: no edit directions for {missing} (solved: {list(self.solved)})")
        mode = self._resolve_mode(mode, subject_weights, subject_index)
        code = emotion_code.to(self.directions.dtype)
        flat_size = self.num_ws * self.w_dim
        if mode == "mean":
            offset = code @ self.mean_directions.reshape(len(self.emotions), flat_size)
        elif mode == "subject":
            assert subject_index is not None
            assert_shape(subject_index, ("B",), "subject_index", dims)
            if subject_index.dtype.is_floating_point or subject_index.dtype == torch.bool:
                raise TypeError(f"subject_index: expected an integer tensor, got {subject_index.dtype}")
            out_of_range = subject_index.numel() and (
                int(subject_index.min()) < 0 or int(subject_index.max()) >= self.num_subjects
            )
            if out_of_range:
                raise IndexError(f"subject_index: values must lie in [0, {self.num_subjects})")
            rows = self.directions[subject_index.to(self.directions.device)]  # (B, E, K, C)
            offset = torch.einsum("be,bef->bf", code, rows.reshape(rows.shape[0], len(self.emotions), flat_size))
        else:
            assert subject_weights is not None
            assert_shape(subject_weights, ("B", self.num_subjects), "subject_weights", dims)
            assert_finite(subject_weights, "subject_weights")
            if subject_weights.numel() and float(subject_weights.min()) < 0:
                raise ValueError("subject_weights: weights must be >= 0 (softmax probabilities)")
            weights = self.mixing_weights(subject_weights.to(self.directions.dtype))
            mixture = (weights[:, :, None] * code[:, None, :]).reshape(weights.shape[0], -1)  # (B, N·E)
            offset = mixture @ self.directions.reshape(-1, flat_size)
        offset = offset.reshape(wplus.shape[0], self.num_ws, self.w_dim).to(wplus.dtype)
        return TextureEditOutput(wplus=wplus + offset, offset=offset)

    def mixing_weights(
        self,
        subject_weights: Tensor,  # (B, N) float >= 0: the classifier's softmax(f(I))
    ) -> Tensor:
        """(B, N): the weights eq. 4 mixes the directions with — ``subject_weights`` tempered by
        ``subject_temperature`` (rows renormalised to sum 1), or unchanged at τ = 1."""
        return temper_weights(subject_weights, self.subject_temperature)

    @staticmethod
    def _resolve_mode(mode: str, weights: Tensor | None, index: Tensor | None) -> str:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if weights is not None and index is not None:
            raise ValueError("give subject_weights (eq. 4) or subject_index (eq. 3), not both")
        if mode == "auto":
            if index is not None:
                return "subject"
            if weights is not None:
                return "classifier"
            raise ValueError("give subject_index (eq. 3) or subject_weights (eq. 4), or mode='mean' (ablation)")
        needs = {"subject": index, "classifier": weights}
        if mode in needs and needs[mode] is None:
            raise ValueError(f"mode {mode!r} needs {'subject_index' if mode == 'subject' else 'subject_weights'}")
        if mode == "mean" and (weights is not None or index is not None):
            raise ValueError("mode 'mean' (without classifier) takes no subject_index or subject_weights")
        return mode

    def subject_index(self, names: Sequence[str]) -> Tensor:
        """``(B,)`` int64 rows of subject names; :class:`DirectionsError` for a subject without directions."""
        lookup = {s: i for i, s in enumerate(self.subjects)}
        unknown = sorted({n for n in names if n not in lookup})
        if unknown:
            raise DirectionsError(f"subjects {unknown[:5]} have no edit directions (known: {len(self.subjects)})")
        return torch.tensor([lookup[n] for n in names], dtype=torch.int64, device=self.directions.device)
