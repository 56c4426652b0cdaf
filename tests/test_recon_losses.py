"""Reconstruction losses: each is zero at the truth and grows with what it measures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from emoedit.face_model import CoeffLayout
from emoedit.losses import (
    IdentityLoss,
    coefficient_prior,
    deep3d_landmark_weights,
    gamma_regularizer,
    landmark_error_px,
    landmark_loss,
    photometric_loss,
    reflectance_loss,
    region_pixel_mask,
    supervised_coeff_loss,
    vertex_loss,
)
from emoedit.losses.identity import ARCFACE_TEMPLATE_112, similarity_to_template
from tests.recon_helpers import one_thread  # noqa: F401  (autouse fixture)


def test_photometric_zero_at_truth_and_monotone() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 16, generator=g)
    mask = torch.ones(2, 1, 16, 16)
    noise = torch.randn(2, 3, 16, 16, generator=g)
    values = [float(photometric_loss(target + s * noise, target, mask, eps=0.0)) for s in (0.0, 0.05, 0.1, 0.2)]
    assert values[0] == 0.0 and values[1] < values[2] < values[3]
    # known answer: a constant (0.3, 0.4, 0) difference -> per-pixel L2 norm 0.5, squared 0.25
    shifted = target + torch.tensor([0.3, 0.4, 0.0]).view(1, 3, 1, 1)
    assert float(photometric_loss(shifted, target, mask, eps=0.0)) == pytest.approx(0.5, abs=1e-6)
    assert float(photometric_loss(shifted, target, mask, robust=False)) == pytest.approx(0.25, abs=1e-6)


def test_photometric_ignores_pixels_outside_the_mask() -> None:
    target = torch.rand(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    rendered = target.clone()
    rendered[..., 4:] = 0.0  # wrong only outside the mask
    assert float(photometric_loss(rendered, target, mask, eps=0.0)) == 0.0
    rendered[..., :4] += 0.1
    assert float(photometric_loss(rendered, target, mask, eps=0.0)) > 0
    assert photometric_loss(rendered, target, mask, reduction="none").shape == (1,)


def test_region_pixel_mask() -> None:
    pix_to_face = torch.tensor([[[-1, 0], [1, 2]]])
    assert region_pixel_mask(pix_to_face, None).flatten().tolist() == [0, 1, 1, 1]
    faces = torch.tensor([True, False, True])
    assert region_pixel_mask(pix_to_face, faces).flatten().tolist() == [0, 1, 0, 1]


def test_landmark_loss_weights_and_scale() -> None:
    weights = deep3d_landmark_weights()
    assert weights[28:31].tolist() == [20.0] * 3 and weights[60:68].tolist() == [20.0] * 8
    assert float(weights.sum()) == 68 - 11 + 11 * 20
    target = torch.rand(2, 68, 2) * 100
    assert float(landmark_loss(target, target)) == 0.0
    chin = target.clone()
    chin[:, 0, 0] += 1.0
    nose = target.clone()
    nose[:, 30, 0] += 1.0
    assert float(landmark_loss(nose, target)) == pytest.approx(20 * float(landmark_loss(chin, target)))
    assert float(landmark_loss(chin, target)) == pytest.approx(1.0 / 68)
    assert float(landmark_loss(chin, target, scale=2.0)) == pytest.approx(4.0 / 68)
    losses = [float(landmark_loss(target + s, target)) for s in (0.5, 1.0, 2.0)]
    assert losses[0] < losses[1] < losses[2]


def test_landmark_error_px_known_answer() -> None:
    target = torch.zeros(3, 68, 2)
    predicted = target + torch.tensor([3.0, 4.0])
    torch.testing.assert_close(landmark_error_px(predicted, target), torch.full((3,), 5.0))


def test_coefficient_losses() -> None:
    layout = CoeffLayout(id=4, exp=3, tex=2)
    zero = layout.zeros(2)
    assert float(coefficient_prior(layout.split(zero))) == 0.0
    coeffs = zero.clone()
    coeffs[:, layout.slices["id"]] = 1.0
    coeffs[:, layout.slices["exp"]] = 2.0
    coeffs[:, layout.slices["tex"]] = 3.0
    # per sample: 1·4·1 + 0.8·3·4 + 0.017·2·9 (Deep3D weights)
    expected = 4.0 + 0.8 * 12.0 + 1.7e-2 * 18.0
    assert float(coefficient_prior(layout.split(coeffs))) == pytest.approx(expected)
    assert float(supervised_coeff_loss(coeffs, coeffs, layout)) == 0.0
    grows = [float(supervised_coeff_loss(coeffs + s, coeffs, layout)) for s in (0.1, 0.2)]
    assert 0 < grows[0] < grows[1]
    only_exp = float(supervised_coeff_loss(coeffs + 0.1, coeffs, layout, block_weights={"id": 0, "tex": 0, "angle": 0,
                                                                                         "gamma": 0, "trans": 0}))
    assert only_exp == pytest.approx(0.01, rel=1e-4)


def test_gamma_and_reflectance_regularisers() -> None:
    mono = torch.randn(2, 1, 9).expand(2, 3, 9).reshape(2, 27)
    assert float(gamma_regularizer(mono)) == pytest.approx(0.0, abs=1e-12)
    coloured = mono + torch.randn(2, 27) * 0.1
    assert float(gamma_regularizer(coloured)) > 0
    uniform = torch.full((2, 10, 3), 0.6)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[:6] = True
    assert float(reflectance_loss(uniform, mask)) == pytest.approx(0.0, abs=1e-12)
    patchy = uniform.clone()
    patchy[:, 7:] = 0.1  # outside the skin mask: ignored
    assert float(reflectance_loss(patchy, mask)) == pytest.approx(0.0, abs=1e-12)
    patchy[:, 0] = 0.9
    assert float(reflectance_loss(patchy, mask)) > 0


def test_vertex_loss_known_answer() -> None:
    vertices = torch.rand(2, 5, 3)
    assert float(vertex_loss(vertices, vertices)) == pytest.approx(0.0, abs=1e-5)
    moved = vertices + torch.tensor([0.0, 0.3, 0.4])
    assert float(vertex_loss(moved, vertices)) == pytest.approx(0.5, abs=1e-5)


class TinyRecognizer(nn.Module):
    """A small random 'face recognition' network: (B, 3, 32, 32) in [-1, 1] -> (B, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                                 nn.LazyLinear(16))
        self.net(torch.zeros(1, 3, 32, 32))  # materialise the lazy layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def save_exported(network: nn.Module, path: Path) -> None:
    """The recommended self-contained format of an identity network (torch.export, dynamic batch)."""
    program = torch.export.export(network.eval(), (torch.zeros(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)


def test_identity_loss_zero_for_equal_images_and_grows(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loss = IdentityLoss(network=TinyRecognizer(), input_size=32)
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.network.training, "the recognition network stays in eval mode"
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 48, 48, generator=g)
    assert float(loss(image, image)) == pytest.approx(0.0, abs=1e-6)
    noise = torch.rand(2, 3, 48, 48, generator=g)
    values = [float(loss((1 - s) * image + s * noise, image)) for s in (0.1, 0.5, 1.0)]
    assert 0 < values[0] < values[2] and values[1] < values[2]
    # the gradient reaches the rendered image, not the network
    rendered = image.clone().requires_grad_(True)
    loss(rendered * 0.9, image).backward()
    assert rendered.grad is not None and float(rendered.grad.abs().sum()) > 0
    # loaders: a state dict (weights_only) and TorchScript give the same loss
    state_path = tmp_path / "recog.pt"
    torch.save(loss.network.state_dict(), state_path)
    reloaded = IdentityLoss.from_weights(state_path, network=TinyRecognizer(), input_size=32)
    exported_path = tmp_path / "recog.pt2"
    save_exported(loss.network, exported_path)
    scripted = IdentityLoss.from_file(exported_path, input_size=32)
    scripted.train()
    blended = 0.5 * image + 0.5 * noise
    for other in (reloaded, scripted):
        assert float(other(blended, image)) == pytest.approx(values[1], rel=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        IdentityLoss.from_weights(state_path, network=nn.Linear(2, 2))


def test_identity_alignment_similarity() -> None:
    template = torch.tensor(ARCFACE_TEMPLATE_112)
    points = (template * 2.0 + 5.0)[None]  # an image where the face is twice as large, shifted
    matrix = similarity_to_template(points, template)
    expected = torch.tensor([[[0.5, 0.0, -2.5], [0.0, 0.5, -2.5]]])
    torch.testing.assert_close(matrix, expected, atol=1e-5, rtol=0)
    loss = IdentityLoss(network=TinyRecognizer(), input_size=32)
    image = torch.rand(1, 3, 64, 64)
    landmarks = torch.rand(1, 68, 2) * 30 + 17
    assert float(loss(image, image, landmarks)) == pytest.approx(0.0, abs=1e-6)
