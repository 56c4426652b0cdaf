"""FID / FED: the Fréchet distance against its Gaussian closed form, the FID Inception loader, FED."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import Tensor, nn

from emoedit.metrics.frechet import (
    FID_FEATURE_DIM,
    EmotionFeatures,
    FIDInceptionV3,
    feature_statistics,
    fed_metric,
    fid_metric,
    frechet_distance,
    frechet_distance_from_features,
    frechet_metric,
)
from emoedit.networks.judges import EmotionJudge


class _PassThrough(nn.Module):
    """"Images" that are already features: (B, D) -> (B, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: Tensor) -> Tensor:
        return x


class _PatchMeans(nn.Module):
    """(B, 3, H, W) -> (B, 12): per-channel means of the four image quadrants."""

    num_features = 12

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def _gaussian(mean: Tensor, cov: Tensor, n: int, seed: int) -> Tensor:
    noise = torch.randn(n, mean.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mean + noise @ torch.linalg.cholesky(cov).T


def _scipy_distance(m1: np.ndarray, c1: np.ndarray, m2: np.ndarray, c2: np.ndarray) -> float:
    root = linalg.sqrtm(c1 @ c2).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root))


def test_closed_form_for_gaussians():
    # Diagonal covariances: d² = ‖μ₁ − μ₂‖² + Σ (√a − √b)².
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    expected = 5.0 + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert float(frechet_distance(m1, torch.diag(a), m2, torch.diag(b))) == pytest.approx(float(expected), abs=1e-10)
    assert float(frechet_distance(m1, torch.diag(a), m1, torch.diag(a))) == pytest.approx(0.0, abs=1e-10)
    # General covariances: against scipy's sqrtm of Σ₁Σ₂.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    c1, c2 = x @ x.T + 0.1 * torch.eye(5), y @ y.T + 0.1 * torch.eye(5)
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    reference = _scipy_distance(mu1.numpy(), c1.numpy(), mu2.numpy(), c2.numpy())
    assert float(frechet_distance(mu1, c1, mu2, c2)) == pytest.approx(reference, rel=1e-8)


def test_metric_on_gaussian_samples_matches_the_closed_form():
    mean1, mean2 = torch.zeros(4, dtype=torch.float64), torch.tensor([1.0, 0.5, 0.0, -0.5], dtype=torch.float64)
    cov1 = torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64))
    cov2 = torch.tensor([[1.5, 0.3, 0.0, 0.0], [0.3, 1.0, 0.2, 0.0], [0.0, 0.2, 0.8, 0.1], [0.0, 0.0, 0.1, 1.2]],
                        dtype=torch.float64)
    real, fake = _gaussian(mean1, cov1, 20000, 1), _gaussian(mean2, cov2, 20000, 2)
    metric = frechet_metric(_PassThrough(4))
    for start in range(0, 20000, 5000):  # streamed in batches
        metric.update(real[start:start + 5000], real=True)
        metric.update(fake[start:start + 5000], real=False)
    streamed = float(metric.compute())
    direct = float(frechet_distance_from_features(real, fake))
    assert streamed == pytest.approx(direct, rel=1e-6)  # torchmetrics == our own computation
    truth = float(frechet_distance(mean1, cov1, mean2, cov2))
    assert direct == pytest.approx(truth, abs=0.06)  # sampling error only
    mean, cov = feature_statistics(real)
    assert torch.allclose(mean, mean1, atol=0.05) and torch.allclose(cov, cov1, atol=0.08)


def test_set_against_itself_is_zero_and_grows_with_a_mean_shift():
    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.6 + 0.2
    distances = []
    for shift in (0.0, 0.05, 0.1, 0.2):
        metric = frechet_metric(_PatchMeans())
        metric.update(images, real=True)
        metric.update(images + shift, real=False)
        distances.append(float(metric.compute()))
    assert abs(distances[0]) < 1e-8
    # A pure mean shift adds ‖Δμ‖² = 12 · shift² exactly (the covariances are equal).
    assert distances[1:] == pytest.approx([12 * s * s for s in (0.05, 0.1, 0.2)], rel=1e-5)


def test_fid_inception_shapes_and_weights_round_trip(tmp_path: Path):
    network = FIDInceptionV3()
    assert not any(p.requires_grad for p in network.parameters())
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(4))
    features = network(images)
    assert features.shape == (2, FID_FEATURE_DIM) and torch.isfinite(features).all()
    network.train()
    assert not network.training  # feature modules stay in eval mode
    # A weights file in the pytorch-fid layout: the network's tensors + the unused 1008-way fc layer,
    # without BatchNorm's num_batches_tracked (older files lack it).
    state = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    state.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    loaded = FIDInceptionV3.from_file(path)
    assert torch.equal(loaded(images), features)
    metric = fid_metric(path)
    metric.update(images, real=True)
    metric.update(images, real=False)
    value = float(metric.compute())
    assert abs(value) < 1e-3 * float(feature_statistics(features)[1].trace().abs() + 1.0)
    del state["Mixed_6c.branch7x7_1.conv.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken.pth: not FID Inception v3 weights: Mixed_6c.branch7x7_1.conv.weight: missing"):
        FIDInceptionV3.from_file(tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        FIDInceptionV3.from_file(tmp_path / "absent.pth")


@pytest.mark.skipif(not os.environ.get("EMOEDIT_FID_WEIGHTS"), reason="set EMOEDIT_FID_WEIGHTS to the pt_inception file")
def test_fid_with_the_real_weights(fixtures_dir: Path):
    from PIL import Image

    faces = [fixtures_dir / "faces" / name for name in ("happy.png", "sad.png")]
    images = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in faces])
    images = images.float() / 255.0
    network = FIDInceptionV3.from_file(os.environ["EMOEDIT_FID_WEIGHTS"])
    features = network(images)
    assert features.min() >= 0  # pool3 follows a ReLU
    blurred = network(nn.functional.avg_pool2d(images, 9, stride=1, padding=4))
    assert float((features - blurred).norm()) > 0


def test_fed_with_a_judge_and_by_path(tmp_path: Path):
    judge = EmotionJudge(input_size=32, widths=(8, 16, 32, 64)).eval()
    images = torch.rand(24, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    features = EmotionFeatures.from_judge(judge)
    assert features.num_features == 64 and features(images).shape == (24, 64)
    with torch.no_grad():
        direct = judge(nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False,
                                                 antialias=True) * 2 - 1).features
    assert torch.allclose(features(images), direct, atol=1e-6)

    metric = fed_metric(judge)
    metric.update(images, real=True)
    metric.update(images, real=False)
    assert abs(float(metric.compute())) < 1e-5
    path = judge.save(tmp_path / "emotion_judge.ckpt")
    shifted = fed_metric(path)
    shifted.update(images, real=True)
    shifted.update((images * 0.5).clamp(0, 1), real=False)
    assert float(shifted.compute()) > 1e-3
    with pytest.raises(TypeError, match="fed_metric"):
        fed_metric(42)  # type: ignore[arg-type]


def test_fed_with_an_exported_feature_network(tmp_path: Path):
    network = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    example = torch.rand(2, 3, 16, 16) * 2 - 1
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    path = tmp_path / "emotion_features.pt2"
    torch.export.save(program, str(path))
    features = EmotionFeatures.from_file(path, input_size=16)
    assert features.num_features == 6
    images = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(6))
    expected = network(nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False,
                                                 antialias=True) * 2 - 1)
    assert torch.allclose(features(images), expected, atol=1e-5)
    metric = fed_metric(path, input_size=16)
    metric.eval()  # stays usable: exported programs are not switched
    metric.update(images, real=True)
    metric.update(images, real=False)
    assert abs(float(metric.compute())) < 1e-6
