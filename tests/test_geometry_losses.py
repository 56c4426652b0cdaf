"""Geometry editor losses (METHOD §3.6, eqs. 6–16): each term responds to what it measures."""

from __future__ import annotations

import pytest
import torch

from emoedit.losses.adversarial import gradient_penalty
from emoedit.face_model import MorphableModel
from emoedit.losses.geometry import (
    LANDMARK_REGIONS,
    LIP_PAIRS,
    LIP_PAIRS_1BASED,
    ShapeGeometry,
    emotion_regression_loss,
    lip_opening_loss,
    lip_openings,
    region_landmark_loss,
    region_landmark_weights,
    vertex_loss,
)


def _landmarks(batch: int = 2, dim: int = 3) -> torch.Tensor:
    return torch.randn(batch, 68, dim, generator=torch.Generator().manual_seed(0)) * 10


def test_regions_partition_the_68_points_and_lip_pairs_are_the_papers():
    ids = sorted(i for region in LANDMARK_REGIONS.values() for i in region)
    assert ids == list(range(68))
    assert LIP_PAIRS_1BASED == ((52, 58), (63, 67)) and LIP_PAIRS == ((51, 57), (62, 66))
    for a, b in LIP_PAIRS:
        assert a in LANDMARK_REGIONS["mouth"] and b in LANDMARK_REGIONS["mouth"]


def test_region_weights_are_lambda_over_region_size():
    w = region_landmark_weights({"eyes": 3.0, "jaw": 1.7})
    assert torch.allclose(w[36:48], torch.full((12,), 3.0 / 12))
    assert torch.allclose(w[0:17], torch.full((17,), 1.7 / 17))
    assert float(w[17:36].abs().sum()) == 0 and float(w[48:].abs().sum()) == 0
    assert float(w.sum()) == pytest.approx(4.7)
    with pytest.raises(ValueError, match="unknown landmark regions"):
        region_landmark_weights({"ears": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        region_landmark_weights({"eyes": -1.0})


@pytest.mark.parametrize("region", list(LANDMARK_REGIONS))
def test_landmark_loss_weights_each_region_as_configured(region):
    weights = {"jaw": 1.0, "brows": 2.0, "nose": 0.5, "eyes": 3.0, "mouth": 0.0}
    w = region_landmark_weights(weights)
    target = _landmarks()
    moved = target.clone()
    shift = torch.tensor([0.3, -0.4, 0.0])  # 0.5 units
    moved[:, list(LANDMARK_REGIONS[region])] += shift
    loss = region_landmark_loss(moved, target, w)
    # every point of the region moved by 0.5: Σ_k λ_q/|K_q| · 0.25 = λ_q · 0.25 per sample
    assert float(loss) == pytest.approx(weights[region] * 0.25, rel=1e-5)
    assert float(region_landmark_loss(target, target, w)) == 0.0


def test_lip_loss_zero_for_unchanged_opening_and_grows_with_the_change():
    original = _landmarks(batch=3)
    same_opening = original.clone()
    same_opening[:, :48] += torch.randn(3, 48, 3)  # everything but the mouth moves
    same_opening[:, 48:] += torch.tensor([1.0, 2.0, -0.5])  # the mouth moves rigidly
    assert float(lip_opening_loss(same_opening, original)) == pytest.approx(0.0, abs=1e-4)
    losses = []
    for opening in (0.0, 0.5, 1.0, 2.0):
        edited = original.clone()
        edited[:, 57] = original[:, 51] + (original[:, 57] - original[:, 51]) * (1 + opening)  # 58 moves away from 52
        losses.append(float(lip_opening_loss(edited, original)))
    assert losses[0] == pytest.approx(0.0, abs=1e-4)
    assert losses[1] < losses[2] < losses[3]
    # known answer: only the outer pair changes, |(1+o)² d² − d²| averaged over the batch
    d2 = lip_openings(original)[:, 0]
    assert losses[3] == pytest.approx(float(((3.0**2 - 1) * d2).mean()), rel=1e-5)
    inner = original.clone()
    inner[:, 66] += torch.tensor([0.0, -1.0, 0.0])  # inner pair 63/67 changes
    assert float(lip_opening_loss(inner, original)) > 0


def test_vertex_loss_is_mean_squared_vertex_distance():
    a = torch.randn(2, 50, 3)
    assert float(vertex_loss(a, a)) == 0.0
    b = a + torch.tensor([0.0, 3.0, 4.0])  # every vertex 5 units away
    assert float(vertex_loss(b, a)) == pytest.approx(25.0, rel=1e-5)


def test_emotion_loss_zero_at_target():
    target = torch.zeros(4, 7)
    target[:, 3] = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    assert float(emotion_regression_loss(target.clone(), target)) == 0.0
    off = target.clone()
    off[:, 0] += 0.5
    assert float(emotion_regression_loss(off, target)) == pytest.approx(0.25)


def test_gradient_penalty_matches_hand_computation():
    w = torch.tensor([0.6, -1.2, 2.0])
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    # a linear critic has gradient w everywhere: penalty = (‖w‖ − 1)²
    linear = gradient_penalty(lambda x: x @ w + 0.3, real, fake).detach()
    assert float(linear) == pytest.approx((float(w.norm()) - 1.0) ** 2, rel=1e-6)
    # a quadratic critic ½‖x‖² has gradient x̃: the penalty depends on the interpolation
    quadratic = gradient_penalty(lambda x: 0.5 * x.square().sum(1), real, fake,
                                 generator=torch.Generator().manual_seed(7)).detach()
    a = torch.rand(5, 1, generator=torch.Generator().manual_seed(7))
    mixed = a * real + (1 - a) * fake
    assert float(quadratic) == pytest.approx(float((mixed.norm(dim=1) - 1).square().mean()), rel=1e-5)


def test_shape_geometry_equals_the_mesh_computation():
    model = MorphableModel.procedural(resolution=24, num_identity=6, num_albedo=2)
    layout = model.layout
    geometry = ShapeGeometry.from_face_model(model, unit_scale=100.0)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, layout.id + layout.exp, generator=g)
    b = a + 0.3 * torch.randn(3, layout.id + layout.exp, generator=g)

    def mesh(s: torch.Tensor) -> torch.Tensor:
        return model.shape(s[:, : layout.id], s[:, layout.id :]) * 100.0

    reference = vertex_loss(mesh(a), mesh(b))
    assert float(geometry.vertex_loss(a, b)) == pytest.approx(float(reference), rel=1e-4)
    assert float(geometry.vertex_loss(a, a)) == 0.0
    assert torch.allclose(geometry.landmarks(a), mesh(a)[:, model.landmark_ids], atol=1e-4)
    assert not any(k in geometry.state_dict() for k in ("gram", "landmark_basis"))  # never in checkpoints
