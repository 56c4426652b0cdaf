"""Temporal smoothing (eqs. 17–19) against hand-computed windows."""

from __future__ import annotations

import pytest
import torch

from emoedit.editing.smoothing import hann_weights, temporal_smooth


def test_hann_weights_l1():
    # w' = ½(1 − cos(π k / 2)), k = 1, 2, 3 -> [0.5, 1, 0.5]
    expected = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(hann_weights(1, dtype=torch.float64), expected)


def test_hann_weights_l2():
    # w' = ½(1 − cos(π k / 3)), k = 1..5 -> [1/4, 3/4, 1, 3/4, 1/4], sum 3
    expected = torch.tensor([0.25, 0.75, 1.0, 0.75, 0.25], dtype=torch.float64) / 3.0
    torch.testing.assert_close(hann_weights(2, dtype=torch.float64), expected)


def test_hann_weights_properties():
    for half in range(0, 6):
        w = hann_weights(half, dtype=torch.float64)
        assert w.shape == (2 * half + 1,)
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(w, w.flip(0))
        assert int(w.argmax()) == half and (w > 0).all()
    with pytest.raises(ValueError):
        hann_weights(-1)


def test_identity_for_zero_window():
    x = torch.randn(7, 3)
    out = temporal_smooth(x, 0)
    torch.testing.assert_close(out, x)
    assert out.data_ptr() != x.data_ptr()


def test_constant_stays_constant_including_ends():
    x = torch.full((9, 16, 8), 2.5, dtype=torch.float64)
    for half in (1, 2, 4, 20):
        torch.testing.assert_close(temporal_smooth(x, half), x)


def test_linear_ramp_stays_linear_in_interior():
    t = torch.arange(12, dtype=torch.float64)
    x = torch.stack([3.0 * t - 1.0, -0.5 * t], dim=1)  # (T, 2)
    half = 3
    out = temporal_smooth(x, half)
    torch.testing.assert_close(out[half:-half], x[half:-half])


def test_ends_use_cut_renormalised_window():
    x = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    # l = 1: weights [0.25, 0.5, 0.25]; frame 0 keeps taps (0.5, 0.25) over frames (0, 1).
    out = temporal_smooth(x, 1)
    expected = [
        (0.5 * 1 + 0.25 * 2) / 0.75,
        0.25 * 1 + 0.5 * 2 + 0.25 * 4,
        0.25 * 2 + 0.5 * 4 + 0.25 * 8,
        0.25 * 4 + 0.5 * 8 + 0.25 * 16,
        (0.25 * 8 + 0.5 * 16) / 0.75,
    ]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))
    # l = 2: raw taps [1/4, 3/4, 1, 3/4, 1/4]; frame 0 sees (1, 3/4, 1/4) over frames (0, 1, 2).
    out2 = temporal_smooth(x, 2)
    torch.testing.assert_close(out2[0], torch.tensor((1 * 1 + 0.75 * 2 + 0.25 * 4) / 2.0, dtype=torch.float64))
    second = (0.75 * 1 + 1 * 2 + 0.75 * 4 + 0.25 * 8) / 2.75
    torch.testing.assert_close(out2[1], torch.tensor(second, dtype=torch.float64))


def test_window_longer_than_clip():
    x = torch.tensor([1.0, 3.0], dtype=torch.float64)
    # l = 5 >= T: raw taps around the centre: offset 0 -> 1, offset ±1 -> ½(1 − cos(5π/6))
    side = 0.5 * (1 - torch.cos(torch.tensor(5 * torch.pi / 6, dtype=torch.float64)))
    expected = torch.stack([(1 + 3 * side) / (1 + side), (side + 3) / (1 + side)])
    torch.testing.assert_close(temporal_smooth(x, 5), expected)
    single = torch.randn(1, 4)
    torch.testing.assert_close(temporal_smooth(single, 3), single)


def test_matches_direct_sum_on_wplus_shape():
    torch.manual_seed(0)
    x = torch.randn(10, 16, 512, dtype=torch.float64)
    half = 2
    out = temporal_smooth(x, half)
    assert out.shape == x.shape and out.dtype == x.dtype
    w = hann_weights(half, dtype=torch.float64)
    for g in range(10):  # reference: eqs. 17–19 with the window cut at the ends
        ys = [y for y in range(g - half, g + half + 1) if 0 <= y < 10]
        ws = torch.stack([w[y - g + half] for y in ys])
        ref = sum(wy * x[y] for wy, y in zip(ws / ws.sum(), ys))
        torch.testing.assert_close(out[g], ref)


def test_1d_input_not_mutated_and_differentiable():
    x = torch.randn(6, requires_grad=True)
    before = x.detach().clone()
    out = temporal_smooth(x, 2)
    assert out.shape == (6,)
    out.sum().backward()
    torch.testing.assert_close(x.detach(), before)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="floating"):
        temporal_smooth(torch.arange(5), 1)
    with pytest.raises(ValueError, match="NaN"):
        temporal_smooth(torch.tensor([1.0, float("nan"), 2.0]), 1)
