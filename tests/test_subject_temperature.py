"""emoedit.editing.subject_temperature: tempering eq. 4's weights and the leave-one-subject-out
calibration of τ."""

from __future__ import annotations

import pytest
import torch

from emoedit.editing.subject_temperature import (
    calibrate_subject_temperature,
    held_out_mixture_cosine,
    temper_weights,
)


def test_temper_weights_equals_softmax_of_scaled_logits():
    torch.manual_seed(0)
    logits = torch.randn(5, 7) * 4
    weights = torch.softmax(logits, dim=-1)
    for tau in (0.5, 1.0, 3.0, 50.0):
        assert torch.allclose(temper_weights(weights, tau), torch.softmax(logits / tau, dim=-1), atol=1e-6)
    assert temper_weights(weights, 1.0) is weights
    one_hot = torch.eye(4)[[2, 0]]
    assert torch.equal(temper_weights(one_hot, 20.0), one_hot)  # a zero weight stays zero
    flat = temper_weights(weights, 1e6)
    assert torch.allclose(flat, torch.full_like(flat, 1 / 7), atol=1e-4)  # τ → ∞: uniform
    with pytest.raises(ValueError, match="temperature"):
        temper_weights(weights, 0.0)


def _world(num_families: int = 3, per_family: int = 4, emotions: int = 2, dim: int = 12, spread: float = 0.3,
           seed: int = 0):
    """Subjects in families: directions = family direction + subject noise; logits = closeness of
    appearance codes (a subject is nearest its own family)."""
    g = torch.Generator().manual_seed(seed)
    family_dirs = torch.randn(num_families, emotions, 2, dim, generator=g)
    family_look = torch.randn(num_families, 8, generator=g) * 3
    directions, looks = [], []
    for f in range(num_families):
        for _ in range(per_family):
            directions.append(family_dirs[f] + spread * torch.randn(emotions, 2, dim, generator=g))
            looks.append(family_look[f] + torch.randn(8, generator=g))
    directions, looks = torch.stack(directions), torch.stack(looks)
    n = directions.shape[0]
    rows = torch.arange(n).repeat_interleave(5)
    samples = looks[rows] + 0.3 * torch.randn(rows.shape[0], 8, generator=g)
    logits = -torch.cdist(samples, looks) * 4  # a confident classifier: the own subject is far ahead
    return logits, rows, directions


def test_held_out_cosine_known_answer():
    # 3 subjects, 1 emotion, directions along axes: subject 2's direction is the mean of 0 and 1's.
    directions = torch.zeros(3, 1, 1, 2)
    directions[0, 0, 0] = torch.tensor([1.0, 0.0])
    directions[1, 0, 0] = torch.tensor([0.0, 1.0])
    directions[2, 0, 0] = torch.tensor([1.0, 1.0])
    rows = torch.tensor([2])
    logits = torch.tensor([[0.0, 0.0, 9.0]])  # own logit dropped: equal weight on 0 and 1
    cos = held_out_mixture_cosine(logits, rows, directions, 1.0)
    assert cos[2].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isnan(cos[0]) and torch.isnan(cos[1])  # no textures of those subjects
    logits = torch.tensor([[50.0, 0.0, 9.0]])  # all weight on subject 0
    assert held_out_mixture_cosine(logits, rows, directions, 1.0)[2].item() == pytest.approx(2 ** -0.5, abs=1e-6)
    assert held_out_mixture_cosine(logits, rows, directions, None)[2].item() == pytest.approx(1.0, abs=1e-6)


def test_calibration_softens_a_confident_classifier_when_families_share_directions():
    logits, rows, directions = _world()
    result = calibrate_subject_temperature(logits, rows, directions)
    assert result.temperature > 1.0  # the paper's τ = 1 is too sharp here
    best = max(result.scores)
    assert result.scores[result.candidates.index(1.0)] < best
    assert best > result.mean_score  # appearance predicts the edit: beats the plain mean
    assert len(result.per_subject) == directions.shape[0] and result.textures == rows.numel()
    assert set(result.as_dict()) >= {"temperature", "scores", "mean_score"}


def test_calibration_prefers_large_temperatures_when_appearance_says_nothing():
    logits, rows, directions = _world()
    shuffled = directions[torch.randperm(directions.shape[0], generator=torch.Generator().manual_seed(1))]
    result = calibrate_subject_temperature(logits, rows, shuffled)
    assert result.temperature >= 16.0
    assert result.mean_score >= max(result.scores) - 0.02


def test_calibration_rejects_bad_input():
    logits, rows, directions = _world()
    with pytest.raises(ValueError, match="candidates"):
        calibrate_subject_temperature(logits, rows, directions, candidates=[0.0])
    with pytest.raises(ValueError, match="at least 2"):
        calibrate_subject_temperature(logits[:5], rows[:5], directions)
