"""StyleGAN2 networks and adversarial losses: known answers, references, seeded regressions, round trips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emoedit.losses.adversarial import (
    PathLengthPenalty,
    discriminator_logistic_loss,
    generator_logistic_loss,
    gradient_penalty,
    r1_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from emoedit.networks.stylegan2 import (
    MappingNetwork,
    MinibatchStdLayer,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    bias_act,
    conv2d_resample,
    downsample2d,
    modulated_conv2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)
from lightning_modules.tgan import ema_beta, lazy_adam_hparams, mixed_ws, update_ema


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions are fastest (and not starved by other jobs) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_generator(**kw) -> StyleGAN2Generator:
    args = dict(z_dim=16, w_dim=16, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                mapping_layers=2)
    args.update(kw)
    return StyleGAN2Generator(**args)


def tiny_discriminator(**kw) -> StyleGAN2Discriminator:
    args = dict(img_resolution=16, img_channels=3, channel_base=128, channel_max=16)
    args.update(kw)
    return StyleGAN2Discriminator(**args)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- upfirdn2d and friends


def reference_upfirdn2d(x, taps, up, down, pad, gain, flip_filter=False):
    """Direct reference: zero insertion by index assignment, padding, depthwise conv2d with the
    flipped 2-D (outer product) filter, decimation by slicing."""
    b, c, h, w = x.shape
    z = torch.zeros(b, c, h * up, w * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    z = F.pad(z, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    z = z[:, :, max(-y0, 0): z.shape[2] - max(-y1, 0), max(-x0, 0): z.shape[3] - max(-x1, 0)]
    f2 = torch.outer(taps, taps) * gain if taps.ndim == 1 else taps * gain
    if not flip_filter:
        f2 = f2.flip([0, 1])
    out = F.conv2d(z, f2[None, None].repeat(c, 1, 1, 1), groups=c)
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize(
    ("up", "down", "pad", "gain", "two_d", "flip"),
    [(1, 1, (1, 2, 0, 1), 1.0, False, False), (2, 1, (2, 1, 2, 1), 4.0, False, False),
     (1, 2, (1, 1, 1, 1), 1.0, True, False), (3, 1, (0, -1, 2, 0), 2.0, True, True),
     (1, 3, (2, 2, 0, 3), 1.0, False, True)],
)
def test_upfirdn2d_matches_direct_reference(up, down, pad, gain, two_d, flip):
    x = torch.randn(2, 3, 7, 9, generator=_seeded(0), dtype=torch.float64)
    taps = torch.tensor([1.0, 2.0, 4.0, 3.0], dtype=torch.float64)  # asymmetric: catches flips
    f = torch.outer(taps, taps) if two_d else taps
    got = upfirdn2d(x, f, up=up, down=down, padding=pad, gain=gain, flip_filter=flip)
    want = reference_upfirdn2d(x, taps, up, down, pad, gain, flip)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_resampling_keeps_constants_and_sizes():
    f = setup_filter([1, 3, 3, 1])
    assert torch.isclose(f.sum(), torch.tensor(1.0)) and torch.allclose(torch.outer(f, f).sum(), torch.tensor(1.0))
    x = torch.full((1, 2, 8, 8), 0.7)
    up = upsample2d(x, f)
    down = downsample2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 0.7))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 0.7))


def generic_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight):
    """stylegan2's generic path: upfirdn2d(up, pad) → conv2d → upfirdn2d(down)."""
    k = f.shape[0]
    p0 = p1 = padding
    if up > 1:
        p0 += (k + up - 1) // 2
        p1 += (k - up) // 2
    if down > 1:
        p0 += (k - down + 1) // 2
        p1 += (k - down) // 2
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=[p0, p1, p0, p1], gain=up * up)
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = upfirdn2d(x, f, down=down)
    return x


@pytest.mark.parametrize(("kernel", "up", "down", "groups", "flip"),
                         [(3, 2, 1, 1, False), (3, 2, 1, 2, True), (1, 2, 1, 1, True), (3, 1, 2, 1, True),
                          (1, 1, 2, 1, True), (3, 1, 2, 2, False), (3, 1, 1, 1, True)])
def test_conv2d_resample_fast_paths_match_generic(kernel, up, down, groups, flip):
    x = torch.randn(2, 4, 8, 8, generator=_seeded(1), dtype=torch.float64)
    w = torch.randn(6, 4 // groups, kernel, kernel, generator=_seeded(2), dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    got = conv2d_resample(x, w, f, up=up, down=down, padding=kernel // 2, groups=groups, flip_weight=flip)
    want = generic_conv2d_resample(x, w, f, up, down, kernel // 2, groups, flip)
    assert got.shape == (2, 6, 8 * up // down, 8 * up // down)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_bias_act_known_answer():
    x = torch.tensor([[-1.0, 2.0], [3.0, -4.0]])
    b = torch.tensor([0.5, -1.0])
    out = bias_act(x, b, act="lrelu")
    want = torch.tensor([[-0.5 * 0.2, 1.0], [3.5, -5.0 * 0.2]]) * math.sqrt(2)
    torch.testing.assert_close(out, want)
    assert torch.equal(bias_act(x, act="linear", gain=2.0, clamp=3.0), torch.tensor([[-2.0, 3.0], [3.0, -3.0]]))


def test_modulated_conv_demodulation_gives_unit_variance():
    x = torch.randn(4, 64, 16, 16, generator=_seeded(3))
    weight = torch.randn(32, 64, 3, 3, generator=_seeded(4))
    styles = torch.rand(4, 64, generator=_seeded(5)) * 3 + 0.1
    fused = modulated_conv2d(x, weight, styles, padding=1, fused_modconv=True)
    split = modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False)
    torch.testing.assert_close(fused, split, rtol=1e-4, atol=1e-4)
    interior = fused[..., 1:-1, 1:-1]
    assert abs(interior.std().item() - 1.0) < 0.05 and abs(interior.mean().item()) < 0.05
    plain = modulated_conv2d(x, weight, styles, padding=1, demodulate=False)
    assert plain.std() > 5.0  # without demodulation the scale follows the styles and weights


# --------------------------------------------------------------------------- mapping, truncation, mixing


def test_mapping_w_avg_tracking_and_truncation():
    torch.manual_seed(0)
    mapping = MappingNetwork(z_dim=8, w_dim=8, num_ws=5, num_layers=2, w_avg_beta=0.9)
    z = torch.randn(6, 8, generator=_seeded(6))
    ws = mapping(z)
    assert ws.shape == (6, 5, 8) and torch.equal(mapping.w_avg, torch.zeros(8)), "w_avg moved without update_w_avg"
    assert torch.equal(ws[:, 0], ws[:, 4])
    mapping(z, update_w_avg=True)
    torch.testing.assert_close(mapping.w_avg, 0.1 * ws[:, 0].mean(0))
    mapping(z, update_w_avg=True)
    torch.testing.assert_close(mapping.w_avg, 0.9 * 0.1 * ws[:, 0].mean(0) + 0.1 * ws[:, 0].mean(0))
    collapsed = mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(collapsed, mapping.w_avg.expand(6, 5, 8))
    half = mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(half[:, :2], mapping.w_avg.lerp(ws[:, :2], 0.5))
    torch.testing.assert_close(half[:, 2:], ws[:, 2:])


def test_style_mixing_gives_two_segments():
    torch.manual_seed(1)
    mapping = MappingNetwork(z_dim=8, w_dim=8, num_ws=6, num_layers=2)
    z = torch.randn(3, 8, generator=_seeded(7))
    for _ in range(5):
        ws = mixed_ws(mapping, z, mixing_prob=1.0)
        differs = [not torch.equal(ws[:, i], ws[:, i + 1]) for i in range(5)]
        assert sum(differs) == 1, "expected exactly one switch between two constant segments"
        cutoff = differs.index(True) + 1
        torch.testing.assert_close(ws[:, :cutoff], mapping(z)[:, :cutoff])
    assert torch.equal(mixed_ws(mapping, z, mixing_prob=0.0), mapping(z))


# --------------------------------------------------------------------------- generator / discriminator


def test_generator_shapes_num_ws_and_regression():
    assert StyleGAN2Generator(z_dim=4, w_dim=4, img_resolution=512, img_channels=3, channel_base=512 * 2,
                              channel_max=4, mapping_layers=1).num_ws == 16  # the paper's W+ 16×512 layout
    torch.manual_seed(0)
    G = tiny_generator()
    assert G.num_ws == 6 and G.mapping.w_avg.shape == (16,)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
        z = torch.randn(2, 16, generator=_seeded(1))
        img = G(z, noise_mode="const")
        ws = G.mapping(z)
        assert torch.equal(G.synthesis(ws, noise_mode="const"), img)
        assert not torch.equal(G.synthesis(ws, noise_mode="random"), img)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    # Seeded regression (torch.manual_seed(0) init, const noise with strength 0.1).
    assert img.sum().item() == pytest.approx(-625.8202514648438, abs=1e-3)
    assert img.abs().sum().item() == pytest.approx(957.7396240234375, abs=1e-3)
    torch.testing.assert_close(img[0, 0, 0, :4], torch.tensor([-1.2354, -1.7927, -1.4263, -1.1326]), atol=1e-4, rtol=0)


def test_discriminator_shapes_and_regression():
    torch.manual_seed(0)
    D = tiny_discriminator()
    x = torch.randn(2, 3, 16, 16, generator=_seeded(2))
    with torch.no_grad():
        logits = D(x)
    assert logits.shape == (2, 1) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits.flatten(), torch.tensor([-0.11700516194105148, -0.35722604393959045]),
                               atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="discriminator input"):
        D(torch.zeros(2, 3, 8, 8))


def test_minibatch_std_layer_known_answer():
    x = torch.arange(4 * 2 * 2 * 2, dtype=torch.float32).reshape(4, 2, 2, 2)
    out = MinibatchStdLayer(group_size=2)(x)
    assert out.shape == (4, 3, 2, 2)
    # groups are samples {0, 2} and {1, 3}; both differ by 16 everywhere → std 8
    torch.testing.assert_close(out[:, 2], torch.full((4, 2, 2), 8.0), rtol=1e-6, atol=1e-5)
    assert MinibatchStdLayer(group_size=4)(x[:3]).shape == (3, 3, 2, 2)  # 3 not divisible by 4: group of 3


@pytest.mark.parametrize("factory", [tiny_generator, tiny_discriminator])
def test_save_load_round_trip(tmp_path, factory):
    torch.manual_seed(0)
    a = factory()
    path = tmp_path / "net.pt"
    torch.save(a.state_dict(), path)
    torch.manual_seed(123)
    b = factory()
    b.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        if isinstance(a, StyleGAN2Generator):
            z = torch.randn(2, 16, generator=_seeded(9))
            assert torch.equal(a(z, noise_mode="const"), b(z, noise_mode="const"))
        else:
            x = torch.randn(2, 3, 16, 16, generator=_seeded(9))
            assert torch.equal(a(x), b(x))


def test_bf16_and_channels_last_match_float32():
    torch.manual_seed(0)
    G = tiny_generator()
    D = tiny_discriminator()
    z = torch.randn(2, 16, generator=_seeded(1))
    with torch.no_grad():
        ref_img = G(z, noise_mode="const")
        ref_logits = D(ref_img)
        for kw, tol in (({"channels_last": True}, 1e-4), ({"num_bf16_res": 2}, 0.1)):
            G2, D2 = tiny_generator(**kw), tiny_discriminator(**kw)
            G2.load_state_dict(G.state_dict())
            D2.load_state_dict(D.state_dict())
            img = G2(z, noise_mode="const")
            assert img.dtype == torch.float32 and torch.isfinite(img).all()
            assert (img - ref_img).abs().max() < tol * ref_img.abs().max()
            assert (D2(ref_img) - ref_logits).abs().max() < tol * (1 + ref_logits.abs().max())
    # gradients flow through the bf16 blocks into float32 parameters
    G2 = tiny_generator(num_bf16_res=2)
    G2(z).square().mean().backward()
    assert G2.synthesis.b16.conv1.weight.grad is not None and G2.synthesis.b16.conv1.weight.grad.dtype == torch.float32


def test_generator_rejects_bad_inputs():
    with pytest.raises(ValueError, match="power of two"):
        tiny_generator(img_resolution=24)
    G = tiny_generator()
    with pytest.raises(ValueError, match="z"):
        G(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="ws"):
        G.synthesis(torch.zeros(2, 3, 16))
    with pytest.raises(ValueError, match="noise_mode"):
        G(torch.zeros(2, 16), noise_mode="nope")


# --------------------------------------------------------------------------- losses


def test_logistic_losses_known_answer():
    real = torch.tensor([[0.0], [2.0]])
    fake = torch.tensor([[-1.0], [1.0]])
    terms = discriminator_logistic_loss(real, fake)
    sp = F.softplus
    torch.testing.assert_close(terms.real, (sp(torch.tensor(0.0)) + sp(torch.tensor(-2.0))) / 2)
    torch.testing.assert_close(terms.fake, (sp(torch.tensor(-1.0)) + sp(torch.tensor(1.0))) / 2)
    torch.testing.assert_close(terms.total, terms.real + terms.fake)
    torch.testing.assert_close(generator_logistic_loss(fake), (sp(torch.tensor(1.0)) + sp(torch.tensor(-1.0))) / 2)


def test_r1_penalty_equals_hand_computation():
    a = torch.tensor(0.7, requires_grad=True)
    x = torch.randn(3, 2, 4, 4, generator=_seeded(11)).requires_grad_(True)
    logits = (a * x.square()).flatten(1).sum(1, keepdim=True)  # D(x) = a·Σx² → ∇ = 2a·x
    penalty = r1_penalty(logits, x)
    hand = (2 * a.detach() * x.detach()).square().flatten(1).sum(1)
    torch.testing.assert_close(penalty, hand)
    penalty.sum().backward()  # differentiable: d/da Σ 4a²x² = 8a Σx²
    torch.testing.assert_close(a.grad, 8 * 0.7 * x.detach().square().sum())
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(logits, x.detach())


def test_path_length_penalty_tracks_its_mean():
    torch.manual_seed(0)
    G = tiny_generator()
    reg = PathLengthPenalty(decay=0.01)
    ws = G.mapping(torch.randn(2, 16, generator=_seeded(12)))
    img = G.synthesis(ws)
    out = reg(img, ws)
    assert out.penalty.shape == (2,) and torch.isfinite(out.penalty).all() and (out.lengths > 0).all()
    torch.testing.assert_close(reg.pl_mean, 0.01 * out.lengths.detach().mean())
    first = reg.pl_mean.clone()
    out2 = reg(img, ws)
    torch.testing.assert_close(reg.pl_mean, first.lerp(out2.lengths.detach().mean(), 0.01))
    torch.testing.assert_close(out2.penalty, (out2.lengths - reg.pl_mean).square())
    out2.penalty.mean().backward()
    assert G.synthesis.b16.conv1.weight.grad is not None
    assert "pl_mean" in reg.state_dict()
    # known answer for a linear "generator": img = ws·M (rows summed), noise y → length = ‖(Mᵀy) per row‖ averaged
    M = torch.randn(4, 3 * 2 * 2, generator=_seeded(13))
    ws_lin = torch.randn(1, 2, 4, generator=_seeded(14)).requires_grad_(True)
    images = (ws_lin.sum(1) @ M).reshape(1, 3, 2, 2)
    y = torch.randn(1, 3, 2, 2, generator=_seeded(15))
    got = PathLengthPenalty()(images, ws_lin, noise=y).lengths
    grad_row = M @ y.flatten()  # ∂(Σ img·y)/∂ws_row, the same for both rows
    torch.testing.assert_close(got, grad_row.norm().reshape(1))


def test_wgan_losses_and_gradient_penalty():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -0.5])
    assert wgan_critic_loss(real, fake).item() == pytest.approx(0.0 - 2.0)
    assert wgan_generator_loss(fake).item() == pytest.approx(0.0)
    v = torch.tensor([3.0, 4.0])  # linear critic ⟨v, x⟩: gradient norm 5 everywhere → (5 − 1)² = 16
    gp = gradient_penalty(lambda s: s @ v, torch.randn(5, 2), torch.randn(5, 2), generator=_seeded(16))
    assert gp.item() == pytest.approx(16.0)
    w = torch.tensor([0.6, 0.8], requires_grad=True)  # unit-norm critic → zero penalty, and differentiable
    gp = gradient_penalty(lambda s: s @ w, torch.randn(5, 2), torch.randn(5, 2))
    assert gp.item() == pytest.approx(0.0, abs=1e-10)
    gp.backward()
    assert w.grad is not None


# --------------------------------------------------------------------------- EMA and lazy regularisation


def test_ema_copies_buffers_and_equals_model_at_beta_zero():
    torch.manual_seed(0)
    G = tiny_generator()
    ema = tiny_generator()
    G.mapping(torch.randn(4, 16), update_w_avg=True)  # a non-trivial buffer
    update_ema(ema, G, beta=1.0)  # parameters kept, buffers copied
    assert torch.equal(ema.mapping.w_avg, G.mapping.w_avg)
    assert torch.equal(ema.synthesis.b8.conv0.noise_const, G.synthesis.b8.conv0.noise_const)
    assert not torch.equal(ema.synthesis.b8.conv0.weight, G.synthesis.b8.conv0.weight)
    update_ema(ema, G, beta=0.0)
    for (name, p_ema), p in zip(ema.named_parameters(), G.parameters()):
        assert torch.equal(p_ema, p), name
    before = ema.synthesis.b8.conv0.weight.clone()
    with torch.no_grad():
        G.synthesis.b8.conv0.weight.add_(1.0)
    update_ema(ema, G, beta=0.75)
    torch.testing.assert_close(ema.synthesis.b8.conv0.weight, before + 0.25)


def test_ema_beta_half_life_and_rampup():
    beta = ema_beta(batch_size=32, ema_kimg=10.0, images_seen=10**6, ema_rampup=None)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)  # half-life of 10 kimg
    assert ema_beta(batch_size=32, ema_kimg=10.0, images_seen=0, ema_rampup=0.05) == 0.0
    ramped = ema_beta(batch_size=32, ema_kimg=10.0, images_seen=1000, ema_rampup=0.05)
    assert ramped == pytest.approx(0.5 ** (32 / 50))


def test_lazy_regularisation_adam_adjustment():
    lr, betas = lazy_adam_hparams(0.002, [0.0, 0.99], 16, True)
    assert lr == pytest.approx(0.002 * 16 / 17) and betas == (0.0, pytest.approx(0.99 ** (16 / 17)))
    assert lazy_adam_hparams(0.002, [0.0, 0.99], 16, False) == (0.002, (0.0, 0.99))
