"""ReconRegressor: shapes, zero-initialised heads, seeded regression, save/load, input checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emoedit.face_model import CoeffLayout
from emoedit.networks import BACKBONES, ReconRegressor
from tests.recon_helpers import one_thread  # noqa: F401  (autouse fixture)


def _randomise_heads(net: ReconRegressor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in net.heads.values():
            head.weight.copy_(0.05 * torch.randn(head.weight.shape, generator=g))
            head.bias.copy_(0.1 * torch.randn(head.bias.shape, generator=g))


@pytest.mark.parametrize("backbone", ["resnet_tiny", "resnet18"])
def test_shapes_zero_init_and_named_blocks(backbone: str) -> None:
    net = ReconRegressor(backbone=backbone, id_size=12, exp_size=7, tex_size=5, input_size=64).eval()
    images = torch.rand(2, 3, 64, 64)
    out = net(images)
    layout = CoeffLayout(id=12, exp=7, tex=5)
    assert out.coeffs.shape == (2, layout.size) and out.coeffs.dtype == torch.float32
    assert torch.count_nonzero(out.coeffs) == 0, "heads are zero-initialised (Deep3D): mean face at start"
    _randomise_heads(net, 0)
    out = net(images)
    assert torch.isfinite(out.coeffs).all() and torch.count_nonzero(out.coeffs) > 0
    for name, block in layout.slices.items():
        field = {"id": "id_coeff", "exp": "exp_coeff", "tex": "tex_coeff"}.get(name, name)
        assert torch.equal(getattr(out.parts, field), out.coeffs[:, block])
    # trans = [trans_xy head, trans_z head]
    feats = net.features(images)[:, :, None, None]
    torch.testing.assert_close(out.parts.trans[:, :2], net.heads["trans_xy"](feats).flatten(1))
    torch.testing.assert_close(out.parts.trans[:, 2:], net.heads["trans_z"](feats).flatten(1))


def test_no_albedo_head_for_models_without_albedo_basis() -> None:
    net = ReconRegressor(backbone="resnet_tiny", id_size=40, exp_size=10, tex_size=0, input_size=32)
    assert "tex" not in net.heads
    out = net(torch.rand(3, 3, 32, 32))
    assert out.coeffs.shape == (3, 40 + 10 + 33) and out.parts.tex_coeff.shape == (3, 0)


CHECKSUM_SUM = 2.2777910232543945  # recorded with torch 2.12.1 CPU
CHECKSUM_ABS = 12.319159507751465


def test_seeded_regression_checksum() -> None:
    torch.manual_seed(1234)
    net = ReconRegressor(backbone="resnet_tiny", id_size=8, exp_size=6, tex_size=4, input_size=32).eval()
    _randomise_heads(net, 7)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        coeffs = net(images).coeffs
    # Fixed seed -> fixed output (catches accidental changes of the architecture or init).
    assert coeffs.shape == (2, 51)
    assert float(coeffs.sum()) == pytest.approx(CHECKSUM_SUM, rel=1e-4, abs=1e-4)
    assert float(coeffs.abs().sum()) == pytest.approx(CHECKSUM_ABS, rel=1e-4)


def test_save_load_round_trip(tmp_path: Path) -> None:
    net = ReconRegressor(backbone="resnet_tiny", id_size=5, exp_size=3, tex_size=2, input_size=32)
    _randomise_heads(net, 3)
    net.train()
    net(torch.rand(4, 3, 32, 32))  # update batch-norm running statistics
    net.eval()
    path = tmp_path / "regressor.pt"
    torch.save(net.state_dict(), path)
    other = ReconRegressor(backbone="resnet_tiny", id_size=5, exp_size=3, tex_size=2, input_size=32)
    other.load_state_dict(torch.load(path, weights_only=True), strict=True)
    other.eval()
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(other(images).coeffs, net(images).coeffs, rtol=0, atol=0)


def test_input_checks() -> None:
    net = ReconRegressor(backbone="resnet_tiny", id_size=5, exp_size=3, tex_size=2, input_size=32)
    with pytest.raises(ValueError, match="images"):
        net(torch.rand(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net(torch.rand(1, 3, 32, 32) * 2 - 1)
    with pytest.raises(ValueError, match="unknown reconstruction backbone"):
        ReconRegressor(backbone="vgg", id_size=5, exp_size=3, tex_size=2)
    assert "resnet50" in BACKBONES
