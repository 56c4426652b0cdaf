"""``run_demo`` end to end on the ``tiny`` world with 2 steps per part (slow: worker processes
start train.py seven times), then its resume and settings-mismatch behaviour on that run."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from emoedit.data.synthetic.presets import PRESETS as WORLD_PRESETS
from emoedit.demo.presets import (
    PART_ORDER,
    TWO_LANES,
    DemoPreset,
    EditPlan,
    EvaluationSettings,
    PartBudget,
    PreprocessSettings,
    TrainingPlan,
)
from emoedit.demo.run import run_demo
from emoedit.demo.stages import StageSettingsError

pytestmark = pytest.mark.slow

TINY = DemoPreset(
    name="test_tiny",
    world=dataclasses.replace(WORLD_PRESETS["tiny"], name="demo_test", side_views=(), num_ffhq=0, num_ffhq_bad_each=0),
    world_seed=0,
    train_seed=0,
    world_workers=2,
    preprocess=PreprocessSettings(crop_size=64, texture_size=32, mouth_crop_size=32, workers=1),
    training=TrainingPlan(**{p: PartBudget("tiny", max_steps=2, max_seconds=120, checkpoint_every=1) for p in PART_ORDER},
                          lanes=TWO_LANES),
    edit=EditPlan(emotions=("happy", "angry"), intensity_emotion="happy", intensities=(1 / 3, 1.0), sheet_frames=3,
                  recon_refine=False, fitter_steps=(0, 0, 0), teeth=True, texture_mode="residual",
                  ablations=("no_edit",), ablation_emotions=("happy",)),
    evaluation=EvaluationSettings(frame_stride=4, fit_photo_steps=2, fit_render_size=32),
    device="cpu",
    budget_seconds=120,
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(TINY, out, progress=False)


def test_demo_writes_every_output(demo_run) -> None:
    out, summary = demo_run
    assert summary.out_dir == out.resolve()
    names = {p.name for p in summary.videos}
    assert names == {"happy_1.00.mp4", "angry_1.00.mp4", "happy_0.33.mp4"}
    for video in summary.videos:
        assert video.is_file() and video.with_suffix(".json").is_file()
    from emoedit.video import probe_video

    info = probe_video(summary.videos[0])
    assert info.num_frames == TINY.world.num_frames
    for sheet in (summary.contact_sheet, summary.truth_contact_sheet):
        assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = json.loads(summary.evaluation.read_text())
    assert evaluation["subject_is_unseen"] and len(evaluation["edits"]) == 3
    for entry in evaluation["edits"]:
        for side in ("output_vs_truth", "input_vs_truth"):
            assert math.isfinite(entry["image"][side]["psnr_db"])
        assert set(entry["refit"]) == {"output", "input", "truth_video"}
        assert entry["truth"].startswith("video ")  # levels 1 and 3 are stored ground-truth edits
    assert "face PSNR" in summary.table and "no edit" in summary.table
    assert (out / "edits" / "ablations" / "no_edit" / "happy_1.00.mp4").is_file()
    assert [r["name"] for r in evaluation["ablations"]["rows"]] == ["full", "no_edit", "input"]
    body = json.loads(summary.summary_file.read_text())
    assert set(body["stage_seconds"]) == {"world", "preprocess", *(f"train_{p}" for p in PART_ORDER), "directions",
                                          "bundle", "edit", "contact_sheet", "evaluation"}
    assert body["machine_at_start"]["cores"] >= 1
    for part in PART_ORDER:  # every part trained, with its W&B offline log and its stamp
        stamp = json.loads((out / ".stages" / f"train_{part}.json").read_text())
        assert stamp["outputs"]["steps"] == 2, part
        assert (out / "runs" / part / "checkpoints" / "last.ckpt").is_file()
        assert list((out / "runs" / part / "wandb").glob("offline-run-*")), part
    # training never saw an evaluation clip: every part excludes them (recon: as validation keys)
    from emoedit.data.synthetic import SyntheticWorld

    world = SyntheticWorld.open(out / "world")
    eval_ids = sorted(f"{r.key.subject}/front/{r.key.emotion}/level_{r.key.level}/{r.key.clip}"
                      for r in world.clips(view="front", role="eval"))
    assert any(world.unseen_subjects[0] in c for c in eval_ids) and len(eval_ids) > 1
    for part in PART_ORDER:
        overrides = json.loads((out / ".stages" / f"train_{part}.json").read_text())["settings"]["overrides"]
        key = "data.val_keys=" if part == "recon" else "data.exclude="
        listed = json.loads(next(o for o in overrides if o.startswith(key)).split("=", 1)[1])
        clips = listed if part == "recon" else listed["clip"]
        assert sorted(clips) == eval_ids, part


def test_rerun_reuses_every_stage(demo_run) -> None:
    out, first = demo_run
    again = run_demo(TINY, out, progress=False)
    assert set(again.reused_stages) == set(first.stage_seconds)
    assert again.run_seconds < 30


def test_lost_stage_runs_again_alone(demo_run) -> None:
    out, _ = demo_run
    (out / ".stages" / "evaluation.json").unlink()
    again = run_demo(TINY, out, progress=False)
    assert set(again.stage_seconds) - set(again.reused_stages) == {"evaluation"}


def test_other_settings_in_the_same_folder_are_refused(demo_run) -> None:
    out, _ = demo_run
    other = dataclasses.replace(TINY, evaluation=dataclasses.replace(TINY.evaluation, frame_stride=2))
    with pytest.raises(StageSettingsError, match="evaluation.*--restart"):
        run_demo(other, out, progress=False)
