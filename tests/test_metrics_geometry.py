"""Geometry errors: known answers on hand-made coefficients, meshes and landmarks."""

from __future__ import annotations

import pytest
import torch

from emoedit.face_model import MorphableModel
from emoedit.losses.geometry import LIP_PAIRS
from emoedit.metrics.geometry import (
    MM_PER_MODEL_UNIT,
    expression_error,
    interocular_distance,
    landmark_error,
    lip_opening_distances,
    lip_opening_error,
    shape_vertex_error_mm,
    vertex_error_mm,
)


def test_expression_error_is_the_mean_absolute_difference():
    predicted = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 2.5, 2.0, 4.0], [1.0, -1.0, 1.0, -1.0]])
    assert torch.allclose(expression_error(predicted, target), torch.tensor([0.375, 1.0]))
    with pytest.raises(ValueError, match="target"):
        expression_error(predicted, target[:, :3])


def test_vertex_error_in_millimetres():
    assert MM_PER_MODEL_UNIT == 100.0  # decimetres -> mm
    reference = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0))
    shifted = reference + torch.tensor([0.03, 0.0, 0.04])  # 0.05 model units = 5 mm for every vertex
    assert torch.allclose(vertex_error_mm(shifted, reference), torch.full((2,), 5.0), atol=1e-5)
    assert torch.allclose(vertex_error_mm(shifted, reference, unit_scale=1.0), torch.full((2,), 0.05), atol=1e-7)


def test_shape_vertex_error_through_the_face_model():
    model = MorphableModel.procedural()
    layout = model.layout
    generator = torch.Generator().manual_seed(1)
    id_coeff = torch.randn(2, layout.id, generator=generator)
    exp_coeff = torch.randn(2, layout.exp, generator=generator)
    assert torch.allclose(shape_vertex_error_mm(model, id_coeff, exp_coeff, id_coeff, exp_coeff), torch.zeros(2))
    other = exp_coeff + 0.5
    expected = (model.shape(id_coeff, other) - model.shape(id_coeff, exp_coeff)).norm(dim=-1).mean(dim=1) * 100
    error = shape_vertex_error_mm(model, id_coeff, other, id_coeff, exp_coeff)
    assert torch.allclose(error, expected) and torch.all(error > 0)


def _landmarks() -> torch.Tensor:
    points = torch.zeros(1, 68, 2)
    points[0, 36] = torch.tensor([0.0, 0.0])  # outer eye corners 10 px apart
    points[0, 45] = torch.tensor([10.0, 0.0])
    points[0, 51] = torch.tensor([5.0, 20.0])  # outer lip: 52 / 58 (1-based), 3 px apart
    points[0, 57] = torch.tensor([5.0, 23.0])
    points[0, 62] = torch.tensor([5.0, 21.0])  # inner lip: 63 / 67 (1-based), 1 px apart
    points[0, 66] = torch.tensor([5.0, 22.0])
    return points


def test_lip_opening_of_hand_made_landmarks():
    assert LIP_PAIRS == ((51, 57), (62, 66))
    original = _landmarks()
    assert torch.allclose(lip_opening_distances(original), torch.tensor([[3.0, 1.0]]))
    edited = original.clone()
    edited[0, 57, 1] = 25.0  # outer opening 3 -> 5 px, inner unchanged
    assert torch.allclose(lip_opening_error(edited, original), torch.tensor([1.0]))
    moved = original + torch.tensor([7.0, -2.0])  # translation keeps the openings
    assert torch.allclose(lip_opening_error(moved, original), torch.zeros(1))
    points3d = torch.cat([original, torch.zeros(1, 68, 1)], dim=-1)
    assert torch.allclose(lip_opening_distances(points3d), torch.tensor([[3.0, 1.0]]))


def test_landmark_error_plain_and_normalised():
    target = _landmarks()
    predicted = target + torch.tensor([3.0, 4.0])  # every point 5 px off
    assert torch.allclose(landmark_error(predicted, target), torch.tensor([5.0]))
    assert torch.allclose(interocular_distance(target), torch.tensor([10.0]))
    assert torch.allclose(landmark_error(predicted, target, normalize=True), torch.tensor([0.5]))
