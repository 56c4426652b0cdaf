"""CPBD sharpness: known answers on hand-made edges, blur monotonicity, and the reference width rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from emoedit.metrics.cpbd import (
    BETA,
    cpbd,
    cpbd_grey,
    edge_widths,
    sobel_vertical_edges,
    to_grey_levels,
)


def _ramp_image(length: int, contrast: int, *, height: int = 64, width: int = 128, start: int = 30) -> np.ndarray:
    """Grey levels: 100 left of ``start``, rising by ``contrast`` over ``length`` equal steps, then flat."""
    step = contrast / length
    columns = np.clip(np.arange(width) - start, 0, length) * step
    return np.round(np.broadcast_to(100.0 + columns, (height, width))).astype(np.float64)


def _rectangles(seed: int = 0, size: int = 192) -> np.ndarray:
    """Piecewise-constant grey image with sharp edges (random flat rectangles)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 128.0)
    for _ in range(50):
        y, x = rng.integers(0, size, 2)
        h, w = rng.integers(8, 60, 2)
        image[y:y + h, x:x + w] = rng.integers(0, 256)
    return image


def test_ramp_widths_and_the_jnb_rule():
    # A linear ramp of L steps has edge width L (from the local minimum to the maximum).
    for length in (1, 2, 3, 5):
        grey = _ramp_image(length, 200)
        widths = edge_widths(grey, sobel_vertical_edges(grey))
        measured = widths[widths > 0]
        assert measured.size > 0 and np.all(measured == max(length, 2)), (length, np.unique(measured))
    # High contrast (> 50 levels): w_JNB = 3, so P_blur = 1 − exp(−(w/3)^3.6) is <= 0.63 up to w = 3.
    assert 1 - math.exp(-((3 / 3) ** BETA)) == pytest.approx(0.632, abs=1e-3)
    assert cpbd_grey(_ramp_image(1, 200)) == 1.0
    assert cpbd_grey(_ramp_image(3, 200)) == 1.0
    assert cpbd_grey(_ramp_image(4, 200)) == 0.0
    # Low contrast (<= 50 levels): w_JNB = 5, so a 4-pixel edge is still "sharp", a 6-pixel one is not.
    assert cpbd_grey(_ramp_image(4, 40)) == 1.0
    assert cpbd_grey(_ramp_image(6, 40)) == 0.0


def test_flat_image_scores_zero_and_small_images_are_refused():
    assert cpbd_grey(np.full((64, 64), 90.0)) == 0.0
    with pytest.raises(ValueError, match="at least 64"):
        cpbd_grey(np.zeros((63, 128)))


def test_sharp_beats_blurred_and_blur_lowers_the_score():
    assert cpbd_grey(_rectangles()) == 1.0  # ideal steps: every edge is 2 px wide
    assert cpbd_grey(np.round(ndimage.gaussian_filter(_rectangles(), 1.0))) == 0.0
    # Edges of many contrasts over a smooth texture: the score falls step by step with the blur σ.
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (192, 192)), 2.0)
    image = np.clip(_rectangles() + 20.0 * texture / texture.std(), 0, 255)
    sigmas = (0.0, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)
    scores = [cpbd_grey(np.round(ndimage.gaussian_filter(image, s) if s else image)) for s in sigmas]
    assert 0.2 < scores[0] < 0.6
    assert all(a > b for a, b in zip(scores[:4], scores[1:5])), scores
    assert all(a >= b for a, b in zip(scores[4:], scores[5:])) and scores[-1] < 0.02, scores


def _reference_widths(edges: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Literal loop translation of the reference ``marziliano_method`` (0-based indices)."""
    height, width = image.shape
    gy, gx = np.gradient(image)
    angle = np.zeros(image.shape)
    nonzero = gx != 0
    angle[nonzero] = np.degrees(np.arctan2(gy[nonzero], gx[nonzero]))
    quantised = 45 * np.sign(angle / 45) * np.floor(np.abs(angle / 45) + 0.5)
    out = np.zeros(image.shape)
    for m in range(1, height - 1):
        for n in range(1, width - 1):
            if not edges[m, n]:
                continue
            rising = quantised[m, n] == 0
            if not (rising or abs(quantised[m, n]) == 180):
                continue
            sign = 1.0 if rising else -1.0
            for k in range(101):  # right side: keep going while the intensity keeps moving away
                a, b = n + 1 + k, n + 2 + k
                if b > width - 1 or sign * (image[m, b] - image[m, a]) <= 0:
                    break
            right = k + 1
            for k in range(101):  # left side
                a, b = n - 1 - k, n - 2 - k
                if b < 0 or sign * (image[m, b] - image[m, a]) >= 0:
                    break
            out[m, n] = right + k + 1
    return out


def test_vectorised_widths_equal_the_reference_loops():
    image = np.round(ndimage.gaussian_filter(_rectangles(1, 96), 1.3))[:70, :90]
    edges = sobel_vertical_edges(image)
    assert edges.sum() > 50
    assert np.array_equal(edge_widths(image, edges), _reference_widths(edges, image))


def test_tensor_batch_rgb_and_uint8():
    grey = _rectangles(2, 128) / 255.0
    rgb = torch.from_numpy(np.stack([grey] * 3))[None]  # equal channels: luma = the grey level
    blurred = torch.from_numpy(ndimage.gaussian_filter(grey, 1.5))[None, None].expand(1, 3, -1, -1)
    scores = cpbd(torch.cat([rgb, blurred]).float())
    assert scores.shape == (2,) and scores.dtype == torch.float64
    assert float(scores[0]) == pytest.approx(cpbd_grey(to_grey_levels(grey)))
    assert scores[0] > scores[1]
    as_uint8 = (rgb * 255).round().to(torch.uint8)
    assert torch.equal(cpbd(as_uint8), scores[:1])
    assert torch.equal(cpbd(rgb[:, :1].float()), scores[:1])
    with pytest.raises(ValueError, match="channels"):
        cpbd(torch.zeros(1, 2, 64, 64))
    with pytest.raises(ValueError, match="images"):
        cpbd(torch.full((1, 3, 64, 64), 2.0))


def test_real_photo_blur(fixtures_dir):
    from PIL import Image

    path = fixtures_dir / "faces" / "happy.png"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255.0
    grey = to_grey_levels(rgb)
    scores = [cpbd_grey(grey)] + [cpbd_grey(np.round(ndimage.gaussian_filter(grey, s))) for s in (0.5, 1.0, 2.0)]
    assert 0.1 < scores[0] < 0.9
    assert scores[0] > scores[1] > scores[2] >= scores[3], scores
