"""Teeth, gums, tongue and the oral cavity: meshes that exist in the renders only.

The face model used for reconstruction has no mouth interior (METHOD §3.7: BFM has no
teeth), so in the synthetic world the interior is a separate set of meshes rendered with
the same camera and depth-tested against the face: it shows only through the lip opening.

- **cavity**: a dark copy of the skin around the mouth pushed 2 cm into the head (the
  lip cut closed), so every line of sight through the opening ends on it; fixed to the head;
- **upper teeth** and upper gums: a band along a dental arch just behind the lips, fixed
  to the head;
- **lower teeth**, lower gums and the **tongue**: move with the jaw. The jaw's motion per
  unit of AU26/AU27 is read from the expression basis at the lower lip (iBUG 58 and 67),
  so the lower teeth follow the face model's jaw drop and nothing else (lips parting,
  AU25, leaves the teeth where they are).

All parts are built from the subject's neutral shape, so they sit behind *their* lips.
Triangles face the camera (+z) in model space; colours are per vertex, with dark gaps
between teeth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from emoedit.face_model import MorphableModel
from emoedit.shape_checks import assert_shape

#: Parts of the interior (values of :attr:`MouthInterior.part`).
PARTS: tuple[str, ...] = ("cavity", "upper_teeth", "lower_teeth", "tongue")
JAW_AUS: tuple[str, ...] = ("AU26", "AU27")
_CAVITY_DEPTH = 0.2  # how far the cavity lies behind the skin, decimetres
_CAVITY_COLOUR = np.array([0.2, 0.06, 0.06])
_GUM_COLOUR = np.array([0.72, 0.36, 0.38])
_TONGUE_COLOUR = np.array([0.7, 0.33, 0.34])
_TOOTH_ARC_DM = 0.075  # width of one tooth along the arch


@dataclass(frozen=True)
class MouthInterior:
    """Interior meshes of one subject in model space (decimetres); ``Vi`` vertices."""

    rest_vertices: Tensor  # (Vi, 3) float32 positions with the jaw closed
    jaw_weight: Tensor  # (Vi,) float32, 1 for vertices that move with the jaw, else 0
    triangles: Tensor  # (Fi, 3) int64 ids into rest_vertices, facing +z
    colours: Tensor  # (Vi, 3) float32 RGB albedo in [0, 1]
    part: Tensor  # (Vi,) int64 index into PARTS

    @property
    def num_vertices(self) -> int:
        """Vi."""
        return int(self.rest_vertices.shape[0])

    def vertices(self, jaw_offset: Tensor) -> Tensor:
        """``(B, Vi, 3)`` posed-in-model-space vertices for ``(B, 3)`` jaw offsets (dm)."""
        assert_shape(jaw_offset, (None, 3), "jaw_offset")
        return self.rest_vertices[None] + self.jaw_weight[None, :, None] * jaw_offset[:, None, :]


def jaw_basis(model: MorphableModel) -> Tensor:
    """``(K, 3)`` float32 jaw displacement per unit of each AU: the expression basis at the
    lower lip (mean of iBUG 58 and 67) for the jaw AUs (AU26, AU27), zero for the others."""
    names = model.expression_names
    if names is None:
        raise ValueError("jaw_basis: the face model has no expression names")
    anchor = model.landmark_ids[[57, 66]]
    basis = model.exp_basis[anchor].mean(dim=0).t().clone()  # (K, 3)
    keep = torch.tensor([n in JAW_AUS for n in names], dtype=torch.bool)
    basis[~keep] = 0.0
    return basis


def build_mouth_interior(
    model: MorphableModel,  # the world's face model
    id_coeff: Tensor,  # (K_id,) the subject's identity
    teeth_colour: Tensor,  # (3,) RGB of the teeth
) -> MouthInterior:
    """The interior meshes behind the subject's neutral lips (see the module docstring)."""
    assert_shape(id_coeff, (model.layout.id,), "id_coeff")
    with torch.no_grad():
        neutral = model.shape(id_coeff[None].float(), torch.zeros(1, model.layout.exp))[0].double().numpy()
    lm = neutral[model.landmark_ids.numpy()]
    centre = lm[60:68].mean(axis=0)
    half_width = 0.5 * abs(lm[64, 0] - lm[60, 0])
    teeth = np.clip(teeth_colour.double().numpy(), 0.0, 1.0)

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, int]] = []
    parts.append(_cavity(model, neutral, centre) + (0.0, PARTS.index("cavity")))
    front_z = centre[2] - 0.04
    arch_x, arch_z = 0.92 * half_width, 0.75 * half_width
    # Upper teeth: gum line hidden under the upper lip, incisal edge at the lip line.
    rows_up = np.array([0.13, 0.075, 0.06, 0.03, 0.0, -0.006])
    colours_up = [_GUM_COLOUR, _GUM_COLOUR, teeth, teeth, teeth, teeth * 0.93]
    parts.append(
        _arch(centre, front_z, arch_x, arch_z, rows_up, colours_up, teeth_rows=range(2, 6))
        + (0.0, PARTS.index("upper_teeth"))
    )
    # Lower teeth, a little behind the upper ones (overbite), moving with the jaw.
    rows_low = np.array([0.002, -0.005, -0.035, -0.06, -0.075, -0.13])
    colours_low = [teeth * 0.93, teeth, teeth, teeth, _GUM_COLOUR, _GUM_COLOUR]
    parts.append(
        _arch(centre, front_z - 0.015, 0.94 * arch_x, 0.94 * arch_z, rows_low, colours_low, teeth_rows=range(0, 4))
        + (1.0, PARTS.index("lower_teeth"))
    )
    parts.append(_tongue(centre, front_z - 0.03, 0.8 * arch_x) + (1.0, PARTS.index("tongue")))

    vertices, triangles, colours, weights, labels = [], [], [], [], []
    offset = 0
    for v, f, c, weight, label in parts:
        vertices.append(v)
        triangles.append(_facing_camera(v, f) + offset)
        colours.append(c)
        weights.append(np.full(len(v), weight))
        labels.append(np.full(len(v), label))
        offset += len(v)
    return MouthInterior(
        rest_vertices=torch.from_numpy(np.concatenate(vertices)).float(),
        jaw_weight=torch.from_numpy(np.concatenate(weights)).float(),
        triangles=torch.from_numpy(np.concatenate(triangles)).long(),
        colours=torch.from_numpy(np.clip(np.concatenate(colours), 0.0, 1.0)).float(),
        part=torch.from_numpy(np.concatenate(labels)).long(),
    )


def _grid_triangles(rows: int, cols: int) -> np.ndarray:
    """Two triangles per cell of a rows × cols vertex grid (row-major ids)."""
    ids = np.arange(rows * cols).reshape(rows, cols)
    a, b = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel()
    c, d = ids[1:, :-1].ravel(), ids[1:, 1:].ravel()
    return np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])


def _facing_camera(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Rewind triangles so ``(v1 − v0) × (v2 − v0)`` points toward +z (the viewer)."""
    v0, v1, v2 = (vertices[triangles[:, k]] for k in range(3))
    normal_z = np.cross(v1 - v0, v2 - v0)[:, 2]
    flipped = triangles.copy()
    back = normal_z < 0
    flipped[back] = triangles[back][:, [0, 2, 1]]
    return flipped


def _arch(
    centre: np.ndarray,
    front_z: float,
    radius_x: float,
    radius_z: float,
    row_heights: np.ndarray,
    row_colours: list[np.ndarray],
    *,
    teeth_rows: range,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A band along an elliptic dental arch: rows at ``centre.y + row_heights``."""
    theta_max = 1.25
    arc_per_col = _TOOTH_ARC_DM / 4.0
    cols = 2 * int(np.ceil(theta_max * radius_x / arc_per_col)) + 1
    theta = np.linspace(-theta_max, theta_max, cols)
    x = centre[0] + radius_x * np.sin(theta)
    z = front_z - radius_z * (1.0 - np.cos(theta))
    arc = radius_x * theta
    # Dark gaps at tooth boundaries (incisors meet on the midline).
    phase = np.abs(arc) / _TOOTH_ARC_DM
    gap = np.exp(-((phase - np.round(phase)) / 0.12) ** 2)
    darken = 1.0 - 0.45 * gap - 0.35 * (np.abs(theta) / theta_max) ** 2  # and darker toward the back
    vertices, colours = [], []
    for r, (height, colour) in enumerate(zip(row_heights, row_colours)):
        y = np.full(cols, centre[1] + height)
        vertices.append(np.stack([x, y, z], axis=1))
        shade = darken if r in teeth_rows else 1.0 - 0.35 * (np.abs(theta) / theta_max) ** 2
        colours.append(colour[None, :] * np.asarray(shade)[:, None] * np.ones((cols, 1)))
    return np.concatenate(vertices), _grid_triangles(len(row_heights), cols), np.concatenate(colours)


def _tongue(centre: np.ndarray, front_z: float, half_width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tongue surface rising toward the back, between the lower teeth."""
    cols, rows = 11, 6
    u = np.linspace(-1.0, 1.0, cols)
    w = np.linspace(0.0, 1.0, rows)  # 0 = tip (front), 1 = back
    uu, ww = np.meshgrid(u, w)
    x = centre[0] + half_width * uu * (1.0 - 0.25 * ww)
    y = centre[1] - 0.075 + 0.05 * ww - 0.03 * uu**2
    z = front_z - 0.22 * ww - 0.03 * uu**2
    vertices = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    shade = (1.0 - 0.5 * ww - 0.2 * uu**2).reshape(-1, 1)
    return vertices, _grid_triangles(rows, cols), _TONGUE_COLOUR[None] * shade


def _cavity(model: MorphableModel, neutral: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The skin around the mouth, closed across the lip cut and pushed back by _CAVITY_DEPTH."""
    triangles = model.triangles.numpy()
    mean = model.mean_shape.double().numpy()
    # Lip-cut copies coincide in the mean shape: map every copy onto its first vertex.
    _, first, inverse = np.unique(np.round(mean, 9), axis=0, return_index=True, return_inverse=True)
    canonical = first[inverse.reshape(-1)]
    tri = canonical[triangles]
    rel = neutral - centre
    region = (np.abs(rel[:, 0]) < 0.36) & (rel[:, 1] < 0.22) & (rel[:, 1] > -0.3)
    keep = region[tri].all(axis=1) & (tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])
    tri = tri[keep]
    used = np.unique(tri)
    remap = np.full(len(mean), -1)
    remap[used] = np.arange(len(used))
    vertices = neutral[used].copy()
    vertices[:, 2] -= _CAVITY_DEPTH
    distance = np.hypot((vertices[:, 0] - centre[0]) / 0.3, (vertices[:, 1] - centre[1]) / 0.25)
    shade = (0.55 + 0.45 * np.clip(distance, 0.0, 1.0))[:, None]
    return vertices, remap[tri], _CAVITY_COLOUR[None] * shade
