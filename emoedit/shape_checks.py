"""Shape and range checks used at every public boundary.

``assert_shape(x, (None, 3, "H", "W"))`` checks rank and sizes: an ``int`` must match
exactly, ``None`` matches anything, and a ``str`` names a size that must be equal
everywhere the same name appears in one call (pass ``dims`` to share names across calls).
"""

from __future__ import annotations

from typing import Sequence

import torch


def assert_shape(
    tensor: torch.Tensor,
    shape: Sequence[int | str | None],
    name: str = "tensor",
    dims: dict[str, int] | None = None,
) -> dict[str, int]:
    """Raise ``ValueError`` unless ``tensor.shape`` matches ``shape``.

    Returns the (updated) mapping of named sizes so later checks can reuse it.
    """
    dims = {} if dims is None else dims
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != len(shape):
        raise ValueError(f"{name}: expected {len(shape)} dims {tuple(shape)}, got shape {tuple(tensor.shape)}")
    for axis, (size, want) in enumerate(zip(tensor.shape, shape)):
        if want is None:
            continue
        if isinstance(want, str):
            if want in dims and dims[want] != size:
                raise ValueError(
                    f"{name}: axis {axis} ('{want}') is {size}, expected {dims[want]} "
                    f"(shape {tuple(tensor.shape)})"
                )
            dims[want] = size
        elif size != want:
            raise ValueError(f"{name}: axis {axis} is {size}, expected {want} (shape {tuple(tensor.shape)})")
    return dims


def assert_range(tensor: torch.Tensor, low: float, high: float, name: str = "tensor", atol: float = 1e-4) -> None:
    """Raise ``ValueError`` if any finite value of ``tensor`` lies outside ``[low, high]``."""
    if tensor.numel() == 0:
        return
    lo, hi = float(tensor.min()), float(tensor.max())
    if lo < low - atol or hi > high + atol:
        raise ValueError(f"{name}: values must lie in [{low}, {high}], got [{lo:.4g}, {hi:.4g}]")


def assert_finite(tensor: torch.Tensor, name: str = "tensor") -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or inf."""
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or inf")
