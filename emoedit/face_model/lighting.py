"""Spherical-harmonics (order 2, 9 bands) Lambertian shading, Deep3DFaceRecon convention.

Colour = albedo × ``sh_irradiance(normals, gamma)``. ``gamma`` (B, 27) is reshaped to
(B, 3 channels, 9 bands); ``init_lit`` (0.8) is added to the DC band of every channel, so
zero ``gamma`` means a white ambient light of strength 0.8·a0·c0 ≈ 0.709.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape

# Lambertian kernel factors a_l and SH normalisation constants c_l (Deep3DFaceRecon's SH).
SH_A: tuple[float, float, float] = (math.pi, 2.0 * math.pi / math.sqrt(3.0), 2.0 * math.pi / math.sqrt(8.0))
SH_C: tuple[float, float, float] = (
    1.0 / math.sqrt(4.0 * math.pi),
    math.sqrt(3.0) / math.sqrt(4.0 * math.pi),
    3.0 * math.sqrt(5.0) / math.sqrt(12.0 * math.pi),
)
NUM_SH_BANDS = 9


def sh_basis(normals: Tensor) -> Tensor:
    """The 9 scaled SH basis values per normal (Deep3DFaceRecon's ``Y``).

    Args:
        normals: ``(B, N, 3)`` float unit normals (x right, y up, z toward the viewer).

    Returns:
        ``(B, N, 9)`` float.
    """
    assert_shape(normals, (None, None, 3), "normals")
    a0, a1, a2 = SH_A
    c0, c1, c2 = SH_C
    nx, ny, nz = normals.unbind(dim=-1)
    k1 = a1 * c1
    k2 = a2 * c2
    return torch.stack(
        [
            torch.full_like(nx, a0 * c0),
            -k1 * ny,
            k1 * nz,
            -k1 * nx,
            k2 * nx * ny,
            -k2 * ny * nz,
            0.5 * k2 / math.sqrt(3.0) * (3.0 * nz * nz - 1.0),
            -k2 * nx * nz,
            0.5 * k2 * (nx * nx - ny * ny),
        ],
        dim=-1,
    )


def sh_irradiance(normals: Tensor, gamma: Tensor, init_lit: float = 0.8) -> Tensor:
    """Per-point RGB shading factor from SH lighting.

    Args:
        normals: ``(B, N, 3)`` float unit normals in world (posed) space.
        gamma: ``(B, 27)`` float SH coefficients, Deep3D layout (3 channels × 9 bands,
            channel-major: ``gamma.view(B, 3, 9)``).
        init_lit: added to the DC band of each channel (Deep3DFaceRecon: 0.8).

    Returns:
        ``(B, N, 3)`` float shading factor (≥ 0 for physically plausible lights); the
        shaded colour is ``albedo * factor``.
    """
    dims = assert_shape(normals, ("B", None, 3), "normals")
    assert_shape(gamma, ("B", 3 * NUM_SH_BANDS), "gamma", dims)
    lit = gamma.view(-1, 3, NUM_SH_BANDS)
    dc = torch.zeros_like(lit)
    dc[..., 0] = init_lit
    lit = lit + dc
    return torch.einsum("bnk,bck->bnc", sh_basis(normals), lit)
