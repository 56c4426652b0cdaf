"""pSp texture encoder (GradualStyleEncoder over ResNet-IR-SE), its backbone, and the LPIPS loss."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import alexnet

from emoedit.losses.perceptual import LPIPSLoss
from emoedit.networks.ir_se import DEPTH_UNITS, ResNetIR
from emoedit.networks.psp_encoder import GradualStyleBlock, PSPEncoder

TINY = dict(input_size=32, depth=10, widths=(8, 16, 32, 64))


def _textures(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


def test_backbone_stage_shapes_and_layouts():
    net = ResNetIR(depth=10, widths=(8, 16, 32, 64)).eval()
    feats = net(_textures())
    assert feats.stage1.shape == (2, 8, 16, 16)
    assert feats.stage2.shape == (2, 16, 8, 8)
    assert feats.stage3.shape == (2, 32, 4, 4)
    assert feats.stage4.shape == (2, 64, 2, 2)
    # IR-SE50 layout: 3 + 4 + 14 + 3 units, InsightFace module names
    ir50 = ResNetIR(depth=50)
    assert len(ir50.body) == sum(DEPTH_UNITS[50]) == 24 and ir50.stage_ends == (2, 6, 20, 23)
    names = dict(ir50.named_parameters())
    assert "body.0.res_layer.5.fc1.weight" in names and "input_layer.2.weight" in names
    assert "body.3.shortcut_layer.0.weight" in names  # width change 64 -> 128
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNetIR(depth=7)
    with pytest.raises(ValueError, match="not divisible by 16"):
        net(torch.zeros(1, 3, 24, 24))


def test_backbone_loads_insightface_layout(tmp_path):
    source = ResNetIR(depth=10, widths=(8, 16, 32, 64))
    state = {**source.state_dict(), "output_layer.1.weight": torch.zeros(3)}  # extra keys are ignored
    path = tmp_path / "ir_se.pth"
    torch.save(state, path)
    target = ResNetIR(depth=10, widths=(8, 16, 32, 64))
    target.load_insightface_weights(path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(ValueError, match="weights do not fit"):
        ResNetIR(depth=18, widths=(8, 16, 32, 64)).load_insightface_weights(path)


def test_encoder_shapes_average_latent_and_finiteness():
    torch.manual_seed(0)
    encoder = PSPEncoder(num_ws=6, w_dim=16, coarse_end=2, medium_end=4, **TINY).eval()
    w_avg = torch.linspace(-1, 1, 16)
    encoder.set_average_latent(w_avg)
    out = encoder(_textures())
    assert out.wplus.shape == out.offsets.shape == (2, 6, 16)
    assert torch.isfinite(out.wplus).all()
    assert torch.allclose(out.wplus, w_avg + out.offsets)
    # textures of another side are resized to input_size first
    assert encoder(_textures(size=64)).wplus.shape == (2, 6, 16)
    with pytest.raises(ValueError, match="uv_texture"):
        encoder(torch.zeros(2, 4, 32, 32))


def test_heads_read_coarse_medium_fine_levels():
    encoder = PSPEncoder(num_ws=8, w_dim=16, input_size=64, depth=10, widths=(8, 16, 32, 64))
    # 64-px input: c3 is 4×4 (2 convs), p2 8×8 (3 convs), p1 16×16 (4 convs)
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in head.convs) for head in encoder.encoder.styles]
    assert convs == [2, 2, 2, 3, 3, 3, 3, 4]
    # ends are clamped to num_ws
    small = PSPEncoder(num_ws=2, w_dim=16, **TINY)
    assert (small.encoder.coarse_end, small.encoder.medium_end) == (2, 2)
    assert small(_textures()).wplus.shape == (2, 2, 16)
    with pytest.raises(ValueError, match="power of two"):
        GradualStyleBlock(in_channels=4, out_channels=4, spatial=6)


def test_encoder_seeded_regression():
    torch.manual_seed(0)
    encoder = PSPEncoder(num_ws=6, w_dim=16, coarse_end=2, medium_end=4, **TINY).eval()
    with torch.no_grad():
        wplus = encoder(_textures()).wplus
    expected = torch.tensor([
        [0.022136155515909195, 0.0008466879953630269, -0.012000835500657558,
         -0.014383852481842041, 0.015090041793882847, -0.05334065482020378],
        [0.018449166789650917, -0.004658718593418598, -0.021887287497520447,
         -0.01628912054002285, 0.011856655590236187, -0.058225374668836594],
    ])
    assert torch.allclose(wplus[:, :, 0], expected, atol=1e-5)
    assert float(wplus.abs().mean()) == pytest.approx(0.023373374715447426, rel=1e-4)


def test_encoder_gradients_and_state_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = PSPEncoder(num_ws=4, w_dim=16, **TINY)
    encoder.set_average_latent(torch.randn(16))
    encoder(_textures()).offsets.square().mean().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    path = tmp_path / "encoder.pt"
    torch.save(encoder.state_dict(), path)
    clone = PSPEncoder(**{**encoder.init_kwargs, "widths": tuple(encoder.init_kwargs["widths"])})
    clone.load_state_dict(torch.load(path, weights_only=True), strict=True)
    encoder.eval(), clone.eval()
    x = _textures()
    assert torch.equal(encoder(x).wplus, clone(x).wplus)


# --------------------------------------------------------------------------- LPIPS


def test_lpips_random_backbone_is_a_distance_without_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("LPIPSLoss tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    loss = LPIPSLoss.with_random_backbone(net="alex")
    x, y = _textures(seed=1), _textures(seed=2)
    same = loss(x, x)
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    d_xy, d_yx = loss(x, y), loss(y, x)
    assert (d_xy > 0).all() and torch.allclose(d_xy, d_yx, atol=1e-6)
    loss.train()
    assert not loss.training and not any(p.requires_grad for p in loss.parameters())
    x_var = x.clone().requires_grad_(True)
    loss(x_var, y).sum().backward()
    assert x_var.grad is not None and torch.isfinite(x_var.grad).all() and x_var.grad.abs().sum() > 0
    assert loss(_textures(size=16), _textures(size=16, seed=3)).shape == (2,)  # enlarged to min_size


def test_lpips_backbone_from_torchvision_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download attempted"))
    torch.manual_seed(3)
    reference = alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), path)
    loss = LPIPSLoss.from_files(net="alex", backbone_path=path)
    assert torch.equal(loss.lpips.net.slice1[0].weight, reference.features[0].weight)
    assert torch.equal(getattr(loss.lpips.net.slice5, "10").bias, reference.features[10].bias)
    # LPIPS trunk layout loads too
    trunk = tmp_path / "trunk.pth"
    torch.save({f"net.{k}": v for k, v in loss.lpips.net.state_dict().items()}, trunk)
    again = LPIPSLoss.from_files(net="alex", backbone_path=trunk)
    x, y = _textures(seed=4), _textures(seed=5)
    assert torch.allclose(loss(x, y), again(x, y))
    with pytest.raises(ValueError, match="not alex trunk weights"):
        LPIPSLoss.from_files(net="alex", backbone_path=_save(tmp_path / "bad.pth", {"x": torch.zeros(1)}))
    with pytest.raises(FileNotFoundError):
        LPIPSLoss.from_files(net="alex", backbone_path=tmp_path / "absent.pth")


def _save(path, obj):
    torch.save(obj, path)
    return path
