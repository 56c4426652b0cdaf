"""Temporal smoothing of per-frame codes with a Hann window (METHOD §3.8, eqs. 17–19).

For frame ``g`` and half-window ``l`` (window ``2l+1`` frames)::

    x̃_g = Σ_{y=g−l}^{g+l} w_y x_y,   w'_y = ½(1 − cos(π (y − (g−l−1)) / (l+1))),
    w_y = w'_y / Σ_z w'_z

a Hann window peaking at ``y = g`` (tap ``k = y − (g−l−1)`` runs over ``1..2l+1``, so no tap
is zero). It is applied to expression coefficients β and W+ latents x, never to identity.

**Project choice** (METHOD §3.8): at the ends of the video the window is cut to the frames
that exist and renormalised over them, so a constant sequence stays constant everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from emoedit.shape_checks import assert_finite


def hann_weights(
    half_window: int,  # l >= 0; the window has 2l+1 taps
    *,
    dtype: torch.dtype = torch.float32,  # dtype of the result
    device: torch.device | str | None = None,  # device of the result
) -> Tensor:
    """Normalised eq.-19 weights ``w`` for offsets ``y − g = −l..l``: (2l+1,), sum 1, symmetric."""
    if isinstance(half_window, bool) or not isinstance(half_window, int) or half_window < 0:
        raise ValueError(f"half_window must be an int >= 0, got {half_window!r}")
    taps = torch.arange(1, 2 * half_window + 2, dtype=torch.float64)  # y − (g−l−1)
    raw = 0.5 * (1.0 - torch.cos(math.pi * taps / (half_window + 1)))
    return (raw / raw.sum()).to(dtype=dtype, device=device)


def temporal_smooth(
    sequence: Tensor,  # (T, ...) float: one entry per frame along dim 0, e.g. (T,64) exp_coeff, (T,16,512) wplus
    half_window: int,  # l >= 0 (0 = identity); window 2l+1 frames
) -> Tensor:
    """Smooth ``sequence`` over time (dim 0) with eqs. 17–19: (T, ...), same dtype and device.

    At the ends the window is cut and renormalised over the frames that exist; ``l >= T`` is
    allowed (then every frame sees the whole clip, weighted). Differentiable; the input is
    not modified.
    """
    if not isinstance(sequence, Tensor):
        raise TypeError(f"sequence: expected a torch.Tensor, got {type(sequence).__name__}")
    if sequence.ndim < 1:
        raise ValueError("sequence: expected shape (T, ...), got a scalar")
    if not sequence.dtype.is_floating_point:
        raise ValueError(f"sequence: expected a floating-point tensor, got {sequence.dtype}")
    weights = hann_weights(half_window, dtype=sequence.dtype, device=sequence.device)
    if half_window == 0 or sequence.shape[0] <= 1 or sequence[0].numel() == 0:
        return sequence.clone()
    assert_finite(sequence, "sequence")
    num_frames = sequence.shape[0]
    # (T, D) -> (D, 1, T): every feature is an independent 1-channel signal over time.
    signals = sequence.reshape(num_frames, -1).transpose(0, 1).unsqueeze(1)
    kernel = weights.view(1, 1, -1)  # symmetric, so correlation == convolution
    numerator = F.conv1d(signals, kernel, padding=half_window)  # zeros outside the clip
    # Weight mass of the taps that fall inside the clip: 1 in the interior, < 1 at the ends.
    ones = torch.ones(1, 1, num_frames, dtype=sequence.dtype, device=sequence.device)
    mass = F.conv1d(ones, kernel, padding=half_window)
    smoothed = (numerator / mass).squeeze(1).transpose(0, 1)
    return smoothed.reshape(sequence.shape)
