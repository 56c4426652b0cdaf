"""emoedit.texture.face_region: the fixed face region of a UV layout, the rim fill and the change mask."""

from __future__ import annotations

import math

import pytest
import torch

from emoedit.face_model.morphable_model import MorphableModel
from emoedit.texture.face_region import (
    REGION_FILL_FLOAT,
    REGION_FILL_UINT8,
    check_region_min_cos,
    face_region,
    fill_outside_region,
    frontal_cosine,
    mask_outside_region,
)
from emoedit.texture.uv_layout import UVLayout


@pytest.fixture(scope="module")
def model_and_layout() -> tuple[MorphableModel, UVLayout]:
    model = MorphableModel.procedural(resolution=24, num_identity=4, num_albedo=2)
    return model, UVLayout.from_model(model, 32)


def test_frontal_cosine_faces_the_camera_in_the_middle_and_turns_away_at_the_rim(model_and_layout):
    model, layout = model_and_layout
    cosine = frontal_cosine(model, layout)
    assert cosine.shape == (32, 32) and cosine.dtype == torch.float32
    assert bool(torch.isfinite(cosine).all()) and float(cosine.abs().max()) <= 1.0 + 1e-6
    middle = cosine[12:20, 12:20].mean()
    assert middle > 0.7  # the front of the face
    assert cosine[:, :2].mean() < middle - 0.3 and cosine[:, -2:].mean() < middle - 0.3  # the sides of the head
    assert cosine[-1].mean() < 0.1  # the underside of the chin faces down
    # seeded regression: the procedural model's layout (resolution 24) at T = 32
    assert float(cosine.sum()) == pytest.approx(615.17, abs=0.05)


def test_face_region_is_nested_in_the_threshold_and_refuses_an_empty_region(model_and_layout):
    model, layout = model_and_layout
    loose, strict = face_region(model, layout, 0.0), face_region(model, layout, 0.45)
    assert loose.dtype == torch.bool and loose.shape == (32, 32)
    assert bool((strict <= loose).all())  # a stricter threshold keeps a subset
    assert 0.5 < float(strict.float().mean()) < float(loose.float().mean()) < 1.0
    assert float(strict.float().mean()) == pytest.approx(0.7734, abs=1e-3)  # seeded regression
    with pytest.raises(ValueError, match="no texel"):
        face_region(model, layout, 0.9999)
    with pytest.raises(ValueError, match="min_cos"):
        face_region(model, layout, 1.0)


def test_enclosed_low_cosine_texels_stay_and_the_margin_moves_the_rim_inward(monkeypatch):
    import emoedit.texture.face_region as module

    cosine = torch.full((9, 9), 0.9)
    cosine[0, :] = cosine[-1, :] = cosine[:, 0] = cosine[:, -1] = 0.1  # the rim: a ring on the border
    cosine[4, 4] = 0.1  # a nostril: low cosine, enclosed by the face
    monkeypatch.setattr(module, "frontal_cosine", lambda model, layout: cosine)
    region = module.face_region(None, None, 0.5)
    assert bool(region[4, 4])  # enclosed: kept
    assert not bool(region[0].any() or region[:, 0].any()) and int(region.sum()) == 49
    one = module.face_region(None, None, 0.5, margin=1)
    assert int(one.sum()) == 25 and bool(one[2:7, 2:7].all())  # the ring moved one texel inward, the hole did not grow
    with pytest.raises(ValueError, match="no texel left"):
        module.face_region(None, None, 0.5, margin=4)
    with pytest.raises(ValueError, match="margin"):
        module.face_region(None, None, 0.5, margin=-1)


def test_fill_outside_region_sets_the_rim_only_and_keeps_the_input():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 1:3] = True
    uv = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    before = uv.clone()
    out = fill_outside_region(uv, region)
    assert out.dtype == torch.uint8 and torch.equal(uv, before)
    assert torch.equal(out[:, :, region], uv[:, :, region])
    assert bool((out[:, :, ~region] == REGION_FILL_UINT8).all())
    floats = uv.float() / 255.0
    out_f = fill_outside_region(floats, region)
    assert out_f.dtype == torch.float32 and torch.equal(out_f[:, :, region], floats[:, :, region])
    assert torch.allclose(out_f[:, :, ~region], torch.full_like(out_f[:, :, ~region], REGION_FILL_FLOAT))
    # the fill is the networks' zero: uint8 128 → [−1, 1] ≈ 0, and float fill = uint8 fill / 255
    assert abs(REGION_FILL_UINT8 / 127.5 - 1.0) < 0.01 and REGION_FILL_FLOAT == REGION_FILL_UINT8 / 255.0
    assert torch.equal(fill_outside_region(out, region), out)  # idempotent: a cache texture stays as it is
    with pytest.raises(ValueError):
        fill_outside_region(uv[..., :3], region)  # texture and region sizes differ


def test_mask_outside_region_zeroes_the_rim_at_any_texture_size():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:, :2] = True  # the left half
    change = torch.randn(1, 3, 4, 4)
    masked = mask_outside_region(change, region)
    assert torch.equal(masked[..., :2], change[..., :2]) and bool((masked[..., 2:] == 0).all())
    big = torch.randn(2, 3, 8, 8)
    masked_big = mask_outside_region(big, region)  # the region resized to 8 (nearest)
    assert torch.equal(masked_big[..., :4], big[..., :4]) and bool((masked_big[..., 4:] == 0).all())


@pytest.mark.parametrize("bad", [1.0, -1.5, math.nan, math.inf, True, "0.5"])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match="texture_region_min_cos"):
        check_region_min_cos(bad)


def test_good_thresholds_pass():
    assert check_region_min_cos(None) is None
    assert check_region_min_cos(0) == 0.0 and check_region_min_cos(-1.0) == -1.0 and check_region_min_cos(0.45) == 0.45


def test_compose_in_region_takes_each_side_from_its_texture():
    from emoedit.texture.face_region import compose_in_region

    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3] = True
    inside, outside = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    out = compose_in_region(inside, outside, region)
    assert bool((out[:, :, region] == 1).all()) and bool((out[:, :, ~region] == 0).all())
    with pytest.raises(ValueError):
        compose_in_region(inside, outside[..., :3], region)
