"""Temporal jitter: known answers on hand-made landmark tracks and frames."""

from __future__ import annotations

import math

import pytest
import torch

from emoedit.metrics.temporal import (
    JitterComparison,
    compare_jitter,
    image_jitter,
    image_jitter_against_truth,
    image_steps,
    landmark_jitter,
    landmark_jitter_against_truth,
    landmark_steps,
)

T, P = 9, 68


def _tracks(velocity: float = 2.0, flicker: float = 0.0) -> torch.Tensor:
    """``(T, P, 2)``: every point moves right by ``velocity`` px per frame, ± ``flicker`` px in y alternately."""
    t = torch.arange(T, dtype=torch.float64)
    base = torch.randn(P, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = base[:, 0][None] + velocity * t[:, None]
    y = base[:, 1][None] + flicker * (-1.0) ** t[:, None]
    return torch.stack([x, y], dim=-1)


def test_landmark_jitter_known_answers():
    smooth = _tracks(2.0, 0.0)
    assert torch.allclose(landmark_steps(smooth), torch.full((T - 1,), 2.0, dtype=torch.float64))
    assert float(landmark_jitter(smooth)) == pytest.approx(2.0)
    assert float(landmark_jitter(smooth, order=2)) == pytest.approx(0.0, abs=1e-12)  # constant velocity
    shaky = _tracks(2.0, 0.5)  # y alternates ±0.5: each step moves 1 px in y
    assert float(landmark_jitter(shaky)) == pytest.approx(math.hypot(2.0, 1.0))
    assert float(landmark_jitter(shaky, order=2)) == pytest.approx(4 * 0.5)  # |x_{t+1} − 2x_t + x_{t−1}| = 4e


def test_comparison_against_the_truth():
    same = landmark_jitter_against_truth(_tracks(2.0), _tracks(2.0))
    assert isinstance(same, JitterComparison)
    assert float(same.ratio) == pytest.approx(1.0) and float(same.difference) == pytest.approx(0.0)
    shaky = landmark_jitter_against_truth(_tracks(2.0, 0.5), _tracks(2.0), order=2)
    assert float(shaky.truth_jitter) == pytest.approx(0.0, abs=1e-12) and float(shaky.difference) == pytest.approx(2.0)
    halved = compare_jitter(1.0, 2.0)
    assert float(halved.ratio) == 0.5 and float(halved.difference) == -1.0


def test_image_jitter_known_answers_and_masks():
    levels = torch.tensor([0.1, 0.3, 0.2, 0.6])
    frames = levels[:, None, None, None].expand(4, 3, 8, 8).clone()
    assert torch.allclose(image_steps(frames), torch.tensor([0.2, 0.1, 0.4], dtype=torch.float64))
    assert float(image_jitter(frames)) == pytest.approx(0.7 / 3)
    assert float(image_jitter(frames, order=2)) == pytest.approx((0.3 + 0.5) / 2)
    # Changes only outside the mask do not count.
    still = torch.full((4, 3, 8, 8), 0.5)
    still[:, :, :, 4:] = levels[:, None, None, None]
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1.0
    assert float(image_jitter(still, mask=mask)) == pytest.approx(0.0)
    # Per-frame masks: a step counts where both of its frames are masked; an empty step is skipped.
    per_frame = torch.ones(4, 1, 8, 8)
    per_frame[1] = 0.0  # steps 0->1 and 1->2 have no common region
    steps = image_steps(frames, mask=per_frame)
    assert math.isnan(float(steps[0])) and math.isnan(float(steps[1])) and float(steps[2]) == pytest.approx(0.4)
    assert float(image_jitter(frames, mask=per_frame)) == pytest.approx(0.4)
    comparison = image_jitter_against_truth(frames, frames * 0.5)
    assert float(comparison.ratio) == pytest.approx(2.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="order"):
        landmark_jitter(_tracks(), order=3)
    with pytest.raises(ValueError, match="at least 3 frames"):
        landmark_jitter(_tracks()[:2], order=2)
    with pytest.raises(ValueError, match="truth"):
        landmark_jitter_against_truth(_tracks(), _tracks()[:5])
    with pytest.raises(ValueError, match="mask"):
        image_jitter(torch.zeros(3, 3, 8, 8), mask=torch.ones(3, 1, 4, 4))
