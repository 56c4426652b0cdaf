"""Euler-angle rotation in Deep3DFaceRecon's convention.

``angle = (x, y, z)`` radians; ``R = (Rz @ Ry @ Rx)ᵀ`` and vertices are row vectors, so the
posed vertex is ``v @ R + trans`` — equivalent to the column-vector rotation
``Rz Ry Rx v`` (x applied first). ``Rx``, ``Ry``, ``Rz`` are the standard right-handed
rotations about the x, y and z axes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape


def euler_to_rotation(angle: Tensor) -> Tensor:
    """Rotation matrices for row vectors from Euler angles.

    Args:
        angle: ``(B, 3)`` float, Euler x, y, z in radians.

    Returns:
        ``(B, 3, 3)`` float, ``R = (Rz @ Ry @ Rx)ᵀ``; apply as ``v @ R`` to ``(B, V, 3)``.
    """
    assert_shape(angle, (None, 3), "angle")
    x, y, z = angle.unbind(dim=1)
    one = torch.ones_like(x)
    zero = torch.zeros_like(x)
    cx, sx = torch.cos(x), torch.sin(x)
    cy, sy = torch.cos(y), torch.sin(y)
    cz, sz = torch.cos(z), torch.sin(z)
    rot_x = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], dim=1).view(-1, 3, 3)
    rot_y = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=1).view(-1, 3, 3)
    rot_z = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], dim=1).view(-1, 3, 3)
    return (rot_z @ rot_y @ rot_x).transpose(1, 2)
