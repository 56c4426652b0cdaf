"""Smoke tests of the result scripts (scripts/recon_demo_world.py, scripts/recon_real_clips.py).

Each script's core function runs end to end at tiny sizes: the ``tiny`` synthetic world with
a 2-step training run, and 2 frames of one real fixture clip (skipped without fixtures).
The JSON they write must hold the expected keys with finite numbers.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import torch

from emoedit.reconstruction import FitterConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_FITTER = FitterConfig(pose_steps=3, shape_steps=3, photo_steps=2, render_backend="torch")


def _load_script(name: str) -> ModuleType:
    path = REPO_ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_results_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_finite_numbers(value: Any, where: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _assert_finite_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _assert_finite_numbers(item, f"{where}[{index}]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} is not finite: {value}"


def test_feathered_mask_and_psnr_known_answers() -> None:
    real = _load_script("recon_real_clips")
    mask = torch.zeros(1, 1, 21, 21)
    mask[..., 2:19, 2:19] = 1.0
    soft = real.feathered(mask, 2)
    assert float(soft[0, 0, 10, 10]) == pytest.approx(1.0)  # deep inside
    assert float(soft[0, 0, 1, 10]) == 0.0  # just outside
    assert float(soft[0, 0, 2, 10]) == pytest.approx(1.0 / 5.0)  # outermost mask pixel: 1 / (2r + 1)
    assert float(soft[0, 0, 6, 10]) == pytest.approx(1.0)  # 2r inside
    assert bool((soft <= mask).all())  # never grows the mask
    a = torch.full((2, 3, 8, 8), 0.5)
    b = a + 0.1
    assert real.psnr(a, b).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    region = torch.zeros(2, 1, 8, 8)
    region[..., :4, :] = 1.0
    c = b.clone()
    c[..., 4:, :] = 0.5 + 0.3  # outside the region: ignored
    assert real.psnr(a, c, region).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)


def test_recon_demo_world_runs_on_the_tiny_world(tmp_path: Path) -> None:
    demo = _load_script("recon_demo_world")
    settings = demo.DemoSettings(
        work=tmp_path / "work", world=tmp_path / "world", preset="tiny", seed=0, max_steps=2, fitter=TINY_FITTER,
        fitter_frames=2, fitter_clips=1, train_sample_every=100,
    )
    results = demo.run_demo(settings)
    written = json.loads((settings.work / "recon_demo_world.json").read_text())
    assert written["preset"] == "tiny" and written["training"]["steps"] == 2
    _assert_finite_numbers({k: v for k, v in written.items() if k != "evaluation"})
    sets = written["evaluation"]["sets"]
    assert {"unseen_front_talking", "unseen_front_emotional", "unseen_side_talking", "seen_heldout_talking"} <= set(sets)
    for name, entry in sets.items():
        methods = entry["methods"]
        assert {"regressor", "regressor_exp0", "mean_face"} <= set(methods), name
        if name.startswith("unseen"):
            assert {"fitter", "regressor@fitter_subset"} <= set(methods), name
            assert methods["fitter"]["frames"] == methods["regressor@fitter_subset"]["frames"] > 0
        for values in methods.values():
            for key in ("landmark_px_224", "exp_mae", "exp_rel_error", "vertex_mm"):
                assert math.isfinite(values[key]) and values[key] >= 0.0, (name, key)
        # the mean face's expression error is the true expression magnitude itself
        assert methods["mean_face"]["exp_rel_error"] == pytest.approx(1.0)
    assert "| set | method |" in (settings.work / "recon_demo_world.md").read_text()
    # The training split leaves out every unseen subject and held-out clip.
    from emoedit.data.cache_reader import CacheReader
    from emoedit.data.synthetic import SyntheticWorld

    world = SyntheticWorld.open(settings.world)
    val_keys, train = demo.training_split(world, CacheReader.open(settings.work / "cache" / "frames"))
    assert not {c.split("/")[0] for c in train} & set(world.unseen_subjects)
    assert not set(train) & set(val_keys)
    assert results["split"]["train_clips"] == len(train)


def test_recon_real_clips_runs_on_two_fixture_frames(fixtures_dir: Path, tmp_path: Path) -> None:
    real = _load_script("recon_real_clips")
    video = fixtures_dir / "videos" / "retalking_2.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    settings = real.RealSettings(
        fixtures=fixtures_dir, work=tmp_path / "real", max_frames=2, crop_size=96, texture_size=64,
        models=("procedural",), fitter=(("pose_steps", 3), ("shape_steps", 3), ("photo_steps", 2)),
        detect_all=False, videos=(str(video),),
    )
    real.run_real(settings)
    written = json.loads((settings.work / "recon_real_clips.json").read_text())
    _assert_finite_numbers(written)
    (clip, detection), = written["detection"].items()
    assert detection["frames"] == 2 and 0.0 <= detection["detected_percent"] <= 100.0
    values = written["models"]["procedural"]["clips"][clip]
    assert values["frames"] == 2
    for key in ("landmark_px_224", "landmark_nme_interocular", "psnr_face_db", "psnr_frame_db"):
        assert math.isfinite(values[key]) and values[key] > 0.0, key
    assert values["psnr_frame_db"] >= values["psnr_face_db"]  # outside the face the frame is unchanged
    assert list((settings.work / "examples").glob("*.png"))
