"""Masked PSNR / SSIM / LPIPS of an edited region: known answers on hand-made images."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from emoedit.losses.perceptual import LPIPSLoss
from emoedit.metrics.image_quality import (
    PSNR_CAP_DB,
    ImageQualityScores,
    image_quality,
    masked_lpips,
    masked_psnr,
    masked_ssim,
    ssim_map,
)


def _images(seed: int = 0, shape: tuple[int, ...] = (2, 3, 40, 48)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_psnr_identical_is_the_cap_and_known_mse_gives_known_psnr():
    x = _images()
    assert torch.equal(masked_psnr(x, x), torch.full((2,), PSNR_CAP_DB, dtype=torch.float64))
    assert PSNR_CAP_DB == 100.0
    assert float(masked_psnr(x, x, cap_db=60.0)[0]) == 60.0
    a, b = torch.full((1, 3, 8, 8), 0.5), torch.full((1, 3, 8, 8), 0.6)  # MSE = 0.01 -> 20 dB
    assert float(masked_psnr(a, b)[0]) == pytest.approx(20.0, abs=1e-5)
    assert float(masked_psnr(a * 255, b * 255, max_value=255.0)[0]) == pytest.approx(20.0, abs=1e-5)
    # MSE over channels: one channel off by 0.3, the others exact -> MSE 0.03
    c = a.clone()
    c[:, 0] += 0.3
    assert float(masked_psnr(c, a)[0]) == pytest.approx(10 * math.log10(1 / 0.03), abs=1e-5)


def test_psnr_mask_selects_the_region():
    target = torch.full((2, 3, 16, 16), 0.5)
    output = target.clone()
    output[:, :, :, 8:] = 0.9  # changed only in the right half
    left = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    left[..., :8] = True
    assert torch.all(masked_psnr(output, target, left) == PSNR_CAP_DB)
    right = ~left
    assert torch.allclose(masked_psnr(output, target, right[:, 0]), torch.full((2,), 10 * math.log10(1 / 0.16), dtype=torch.float64))
    # float weights: half weight on the changed half -> MSE = 0.5*0.16 / (8*16 + 0.5*8*16)·(8*16) ...
    weights = left.float() + 0.5 * right.float()
    expected_mse = (0.5 * 128 * 0.16) / (128 + 0.5 * 128)
    assert float(masked_psnr(output, target, weights)[0]) == pytest.approx(10 * math.log10(1 / expected_mse), abs=1e-5)
    empty = torch.zeros(2, 1, 16, 16)
    empty[1, :, 0, 0] = 1.0
    scores = masked_psnr(output, target, empty)
    assert math.isnan(float(scores[0])) and float(scores[1]) == PSNR_CAP_DB


def test_ssim_identical_is_one_and_drops_with_noise():
    x = _images()
    assert torch.allclose(masked_ssim(x, x), torch.ones(2, dtype=torch.float64))
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    light = masked_ssim(x, (x + 0.05 * noise).clamp(0, 1))
    heavy = masked_ssim(x, (x + 0.2 * noise).clamp(0, 1))
    assert torch.all(light < 1.0) and torch.all(heavy < light)


def test_ssim_map_matches_torchmetrics_inside_the_image():
    x = _images(2)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).clamp(0, 1)
    _, full = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none", return_full_image=True)
    assert torch.allclose(full[..., 5:-5, 5:-5], ssim_map(x, y), atol=1e-10)  # torchmetrics pads by reflection


def test_ssim_mask_ignores_changes_outside():
    target = _images(4, (1, 3, 48, 48))
    output = target.clone()
    output[..., 32:] = 1.0 - output[..., 32:]  # change columns 32+
    mask = torch.zeros(1, 1, 48, 48)
    mask[..., :20] = 1.0  # windows centred left of column 20 never reach column 32
    assert float(masked_ssim(output, target, mask)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(masked_ssim(output, target)[0]) < 0.9


def test_lpips_of_the_region():
    lpips = LPIPSLoss.with_random_backbone()
    target = _images(5, (2, 3, 32, 32)).float()
    output = target.clone()
    output[..., 16:] = torch.rand(2, 3, 32, 16, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., :16] = 1.0
    assert torch.allclose(masked_lpips(lpips, target, target), torch.zeros(2), atol=1e-7)
    assert torch.allclose(masked_lpips(lpips, output, target, mask), torch.zeros(2), atol=1e-7)
    assert torch.all(masked_lpips(lpips, output, target) > 1e-4)
    scores = image_quality(output, target, 1.0 - mask, lpips=lpips)
    assert isinstance(scores, ImageQualityScores) and scores.lpips is not None and torch.all(scores.lpips > 1e-4)
    assert image_quality(output, target).lpips is None


def test_bad_inputs_are_named():
    x = _images()
    with pytest.raises(ValueError, match="output"):
        masked_psnr(x * 2, x)
    with pytest.raises(ValueError, match="target"):
        masked_ssim(x, x[:, :, :10])
    with pytest.raises(ValueError, match="mask"):
        masked_psnr(x, x, torch.ones(2, 1, 5, 5))
    with pytest.raises(ValueError, match="window"):
        masked_ssim(x[..., :8, :8], x[..., :8, :8])
