"""A UV template computed once from a face model's mean shape (METHOD.md §3.2, project choice).

Cylindrical unwrap around the vertical (y) axis through the head centre: ``u`` follows the
arc length around the cylinder (left to right as seen by the viewer), ``v`` the height
(downward). Each axis is fitted into ``[margin, 1 − margin]`` (the whole texture is used);
with ``keep_aspect=True`` both use the same factor instead, so texels are square on the
face but part of the texture stays empty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emoedit.shape_checks import assert_finite, assert_shape


def cylindrical_uv(
    vertices: Tensor,  # (V, 3) mean shape, x right, y up, z toward the viewer
    *,
    margin: float = 0.02,  # empty border kept on each side of the [0, 1] square
    keep_aspect: bool = False,  # True: same scale for u and v (square texels, unused texture area)
) -> Tensor:
    """Cylindrical UV coordinates for a face mesh.

    The cylinder axis is vertical, at the horizontal centre of the mesh and one half-width
    behind its frontmost point (a head seen from the front is about as deep as it is wide).

    Args:
        vertices: ``(V, 3)`` float, any unit.
        margin: border in [0, 0.5).
        keep_aspect: scale u and v alike (centred) instead of filling both axes.

    Returns:
        ``(V, 2)`` float ``(u, v)`` in ``[margin, 1 − margin]``, u right, v down.
    """
    assert_shape(vertices, (None, 3), "vertices")
    assert_finite(vertices, "vertices")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must lie in [0, 0.5), got {margin}")
    points = vertices.double()
    x, y, z = points.unbind(dim=1)
    x_min, x_max = x.min(), x.max()
    radius = 0.5 * (x_max - x_min)
    if float(radius) <= 0:
        raise ValueError("vertices: the mesh has no horizontal extent, cannot unwrap")
    x_axis = 0.5 * (x_min + x_max)
    z_axis = z.max() - radius
    angle = torch.atan2(x - x_axis, z - z_axis)  # 0 straight ahead, + toward the viewer's right
    flat = torch.stack([angle * radius, -y], dim=1)
    low = flat.min(dim=0).values
    span = flat.max(dim=0).values - low
    if float(span.min()) <= 0:
        raise ValueError("vertices: the mesh is flat along one unwrap axis, cannot unwrap")
    scale = (1.0 - 2.0 * margin) / (span.max() if keep_aspect else span)
    offset = margin + 0.5 * ((1.0 - 2.0 * margin) - span * scale)
    uv = (flat - low) * scale + offset
    return uv.clamp(0.0, 1.0).to(vertices.dtype)
