"""The evaluation lane of ``emoedit demo --evaluate`` (emoedit/demo/evaluation_lane.py).

Fast: the presets' evaluation plans, the harness config the lane builds for an output
folder (and its agreement with configs/evaluate/demo.yaml), the train.py overrides (no
evaluation clip, no unseen subject), the stage settings' change detection and the merge of
the per-set results. Slow: the quick preset end to end with ``--evaluate`` and its resume.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from emoedit.data.synthetic.layout import ClipKey
from emoedit.demo.evaluation_lane import EVALUATE_CONFIG_FILE, EvaluationLane, build_evaluate_config
from emoedit.demo.presets import (
    DEMO,
    EVALUATION_JOB_DEPENDENCIES,
    EVALUATION_JOBS,
    EVALUATION_LANES,
    PRESETS,
    QUICK,
    EvaluationPlan,
    PartBudget,
)
from emoedit.demo.stages import StageRunner

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- plans
@pytest.mark.parametrize("preset", [QUICK, DEMO], ids=lambda p: p.name)
def test_plan_budgets_and_lanes(preset) -> None:
    plan = preset.evaluate
    assert plan is not None
    listed = [job for lane in plan.lanes for job in lane]
    assert sorted(listed) == sorted(EVALUATION_JOBS) and len(plan.lanes) == 2
    for lane in plan.lanes:  # no job depends on a job of another lane
        for position, job in enumerate(lane):
            assert set(EVALUATION_JOB_DEPENDENCIES[job]) <= set(lane[:position])
    for job in EVALUATION_JOBS:
        budget = plan.budget(job)
        assert budget.max_steps > 0 and budget.max_seconds > 0 and budget.checkpoint_every > 0
        assert budget.experiment == ("demo_quick" if preset is QUICK else "demo")
    assert plan.lanes[1].index("psp_tgan") < plan.lanes[1].index("psp_encoder")
    assert plan.frame_stride >= 1 and (plan.max_frames is None or plan.max_frames >= 3)


def test_plan_sizes() -> None:
    # quick: about 1 minute of training wall time, demo: about 14 (two lanes at once)
    assert 40 <= max(QUICK.evaluate.training_seconds().values()) <= 75
    assert 780 <= max(DEMO.evaluate.training_seconds().values()) <= 900
    assert DEMO.evaluate.max_items() == {"seen": 14, "unseen_subjects": 7, "unseen_views": 7}
    assert set(QUICK.evaluate.max_items().values()) == {2}
    assert PRESETS["gpu"].evaluate is None


def test_plan_rejects_bad_lanes() -> None:
    budget = PartBudget("demo", max_steps=1, max_seconds=1, checkpoint_every=1)
    fields = {job: budget for job in EVALUATION_JOBS}
    common = dict(seen_items=1, unseen_subject_items=1, unseen_view_items=1, max_frames=None, frame_stride=1,
                  monotonicity_items=0, budget_seconds=1)
    EvaluationPlan(**fields, lanes=EVALUATION_LANES, **common)
    with pytest.raises(ValueError, match="psp_encoder.*psp_tgan"):
        EvaluationPlan(**fields, lanes=(("judge_emotion", "judge_identity", "stargan", "psp_encoder"),
                                        ("psp_tgan", "exprgan")), **common)
    with pytest.raises(ValueError, match="every job once"):
        EvaluationPlan(**fields, lanes=(("judge_emotion",),), **common)
    with pytest.raises(ValueError, match="max_frames"):
        EvaluationPlan(**fields, lanes=EVALUATION_LANES, **{**common, "max_frames": 2})


# ----------------------------------------------------------------------------- harness config
def test_evaluate_config_points_into_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "somewhere" / "run"
    cfg = build_evaluate_config(out, DEMO.evaluate, sets=["seen", "unseen_subjects"], progress=False)
    run = out.resolve()
    assert cfg.world == str(run / "world") and cfg.out == str(run / "evaluate") and cfg.bundle == str(run / "bundle")
    assert cfg.judges.emotion == str(run / "runs/judge_emotion/checkpoints/last.ckpt")
    assert cfg.judges.identity == str(run / "runs/judge_identity/checkpoints/last.ckpt")
    for name in ("stargan", "exprgan", "psp_tgan", "psp_encoder"):
        assert getattr(cfg.baselines, name) == str(run / f"runs/{name}/checkpoints/last.ckpt")
    assert cfg.baselines.psp_directions == str(run / "psp_directions.pt")
    assert cfg.sets == ["seen", "unseen_subjects"] and cfg.strict and not cfg.progress
    assert (cfg.max_frames, cfg.frame_stride) == (DEMO.evaluate.max_frames, DEMO.evaluate.frame_stride)
    assert cfg.monotonicity.items == DEMO.evaluate.monotonicity_items and cfg.monotonicity.enabled
    assert cfg.max_items is None and cfg.items_per_set == {"seen": 14, "unseen_subjects": 7}
    # relative to a working directory that holds the folder; absolute otherwise
    rel = build_evaluate_config(out, QUICK.evaluate, sets=["seen"], cwd=tmp_path)
    assert rel.bundle == "somewhere/run/bundle" and rel.monotonicity.enabled == (QUICK.evaluate.monotonicity_items > 0)
    other = build_evaluate_config(out, QUICK.evaluate, sets=["seen"], cwd=tmp_path / "elsewhere")
    assert other.bundle == str(run / "bundle")
    with pytest.raises(ValueError, match="sets"):
        build_evaluate_config(out, QUICK.evaluate, sets=[])


def test_default_out_matches_configs_evaluate_demo_yaml() -> None:
    """`emoedit evaluate --config configs/evaluate/demo.yaml` continues what `make evaluate` wrote."""
    from emoedit.evaluation.config import load_evaluate_config
    from emoedit.evaluation.harness import SCORING_KEYS

    cfg = build_evaluate_config(REPO / "outputs" / "demo", DEMO.evaluate,
                                sets=["seen", "unseen_subjects", "unseen_views"], cwd=REPO)
    yaml = load_evaluate_config(EVALUATE_CONFIG_FILE)
    lane, file = cfg.to_json(), yaml.to_json()
    for key in SCORING_KEYS:  # what the harness's evaluation_state.json compares
        assert lane[key] == file[key], key
    assert lane["out"] == file["out"] == "outputs/demo/evaluate"
    assert lane["methods"] == file["methods"] and lane["sets"] == file["sets"]
    assert yaml.items_per_set == DEMO.evaluate.max_items()
    # "ours" is edited as `make demo` edits.
    assert (yaml.edit.texture_mode, yaml.edit.teeth_gate) == (DEMO.edit.texture_mode, DEMO.edit.teeth_gate)


# ----------------------------------------------------------------------------- jobs and settings
def _clip(subject: str, emotion: str, level: int, clip: str, role: str) -> SimpleNamespace:
    return SimpleNamespace(key=ClipKey(subject=subject, view="front", emotion=emotion, level=level, clip=clip), role=role)


class _FakeWorld:
    train_subjects = ("M001", "W002")
    unseen_subjects = ("M003",)

    def clips(self, *, view: str | None = None, role: str | None = None) -> list[SimpleNamespace]:
        records = [_clip("M001", "neutral", 1, "001", "train"), _clip("M001", "neutral", 1, "002", "eval"),
                   _clip("M001", "happy", 3, "001", "train"), _clip("W002", "neutral", 1, "002", "eval"),
                   _clip("M003", "neutral", 1, "001", "eval"), _clip("M003", "happy", 3, "001", "eval")]
        return [r for r in records if role is None or r.role == role]


def _lane(tmp_path: Path, plan: EvaluationPlan | None = None) -> EvaluationLane:
    from emoedit.demo.run import _Demo

    preset = QUICK if plan is None else dataclasses.replace(QUICK, evaluate=plan)
    demo = _Demo(preset, tmp_path.resolve(), progress=False)
    demo._world = _FakeWorld()
    return EvaluationLane(demo, preset.evaluate)


def _override(job, key: str):
    return json.loads(next(o for o in job.overrides if o.startswith(key + "=")).split("=", 1)[1])


def test_jobs_never_see_evaluation_clips_or_unseen_subjects(tmp_path: Path) -> None:
    lane = _lane(tmp_path)
    eval_ids = ["M001/front/neutral/level_1/002", "M003/front/happy/level_3/001", "M003/front/neutral/level_1/001",
                "W002/front/neutral/level_1/002"]
    for name in ("judge_emotion", "judge_identity"):
        job = lane.train_job(name)
        assert job.part == "judge" and Path(job.run_dir) == tmp_path.resolve() / "runs" / name
        assert sorted(_override(job, "data.val_keys")) == eval_ids and not job.validate
        assert f"data.cache_dir={tmp_path.resolve() / 'cache' / 'frames'}" in job.overrides
    assert "model.kind=emotion" in lane.train_job("judge_emotion").overrides
    assert _override(lane.train_job("judge_identity"), "model.subjects") == ["M001", "W002"]
    for name in ("stargan", "exprgan", "psp_tgan", "psp_encoder"):
        job = lane.train_job(name)
        assert _override(job, "data.filter") == {"view": "front", "subject": ["M001", "W002"]}
        assert _override(job, "data.exclude") == {"subject": ["M003"], "clip": eval_ids}
        assert "model.resolution=64" in job.overrides or "data.resolution=64" in job.overrides  # the crop side
    encoder = lane.train_job("psp_encoder")
    assert f"model.tgan_checkpoint={tmp_path.resolve() / 'runs/psp_tgan/checkpoints/last.ckpt'}" in encoder.overrides
    assert "model.input_size=64" in encoder.overrides


def test_settings_change_only_the_changed_job_and_what_follows(tmp_path: Path) -> None:
    plan = QUICK.evaluate
    base = _lane(tmp_path, plan)
    faster = _lane(tmp_path, dataclasses.replace(plan, psp_tgan=dataclasses.replace(plan.psp_tgan, max_seconds=5)))
    changed = {job for job in EVALUATION_JOBS if base.job_settings(job) != faster.job_settings(job)}
    assert changed == {"psp_tgan", "psp_encoder"}
    assert base.directions_settings() != faster.directions_settings()
    assert base.evaluate_settings(["seen"], []) != faster.evaluate_settings(["seen"], [])
    judge = _lane(tmp_path, dataclasses.replace(plan, judge_emotion=dataclasses.replace(plan.judge_emotion, max_steps=7)))
    assert {job for job in EVALUATION_JOBS if base.job_settings(job) != judge.job_settings(job)} == {"judge_emotion"}
    assert base.directions_settings() == judge.directions_settings()
    more = _lane(tmp_path, dataclasses.replace(plan, seen_items=3))
    assert all(base.job_settings(j) == more.job_settings(j) for j in EVALUATION_JOBS)
    assert base.evaluate_settings(["seen"], []) != more.evaluate_settings(["seen"], [])
    assert base.evaluate_settings(["seen"], []) == _lane(tmp_path, plan).evaluate_settings(["seen"], [])


class _FakeTraining:
    """Stands in for ``train_lanes``: writes each job's checkpoint and reports it done (no worker process)."""

    def __init__(self) -> None:
        self.trained: list[str] = []

    def __call__(self, lanes, *, log_dir, on_start, on_done, progress) -> None:
        for jobs in lanes:
            for job in jobs:
                on_start(job)
                job.checkpoint.parent.mkdir(parents=True, exist_ok=True)
                job.checkpoint.write_bytes(b"weights")
                self.trained.append(Path(job.run_dir).name)
                on_done(job, {"steps": 1, "seconds": 0.1, "stopped_by": "max_steps"}, 0.1)


def _counting_stamp_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    read_stamp = StageRunner.read_stamp
    monkeypatch.setattr(StageRunner, "read_stamp", lambda self, name: reads.append(name) or read_stamp(self, name))
    return reads


def test_train_all_reruns_changed_jobs_and_reads_each_stamp_once(tmp_path: Path, monkeypatch) -> None:
    import io

    import emoedit.demo.evaluation_lane as lane_module

    out = tmp_path.resolve()
    training = _FakeTraining()
    monkeypatch.setattr(lane_module, "train_lanes", training)
    _lane(tmp_path).train_all(StageRunner(out, stream=io.StringIO()))
    assert sorted(training.trained) == sorted(EVALUATION_JOBS)
    stale = out / "runs" / "psp_tgan" / "stale.txt"
    stale.write_text("from the old budget")
    plan = QUICK.evaluate
    faster = _lane(tmp_path, dataclasses.replace(plan, psp_tgan=dataclasses.replace(plan.psp_tgan, max_seconds=5)))
    training.trained.clear()
    reads = _counting_stamp_reads(monkeypatch)
    log = io.StringIO()
    runner = StageRunner(out, stream=log)
    faster.train_all(runner)
    # the changed job and the one that needs it run again (their old run folders removed first); the others are reused
    assert sorted(training.trained) == ["psp_encoder", "psp_tgan"] and not stale.exists()
    assert sorted(reads) == sorted(f"train_{job}" for job in EVALUATION_JOBS)  # one read per stamp
    assert {r.name for r in runner.records if r.reused} == {f"train_{job}" for job in EVALUATION_JOBS} - {
        "train_psp_tgan", "train_psp_encoder"}
    assert "[train_psp_tgan] settings changed (" in log.getvalue()


def test_method_train_all_refuses_changed_parts_and_reads_each_stamp_once(tmp_path: Path, monkeypatch) -> None:
    """The method's training stages (emoedit.demo.run, same fake world) keep refusing a folder of other settings."""
    import io

    import emoedit.demo.run as run_module
    from emoedit.demo.presets import PART_ORDER
    from emoedit.demo.stages import StageSettingsError

    out = tmp_path.resolve()
    training = _FakeTraining()
    monkeypatch.setattr(run_module, "train_lanes", training)
    demo = _lane(tmp_path).demo
    demo.train_all(StageRunner(out, stream=io.StringIO()))
    assert sorted(training.trained) == sorted(PART_ORDER)
    training.trained.clear()
    reads = _counting_stamp_reads(monkeypatch)
    runner = StageRunner(out, stream=io.StringIO())
    demo.train_all(runner)
    assert not training.trained and sorted(reads) == sorted(f"train_{part}" for part in PART_ORDER)
    assert [r.name for r in runner.records] == [f"train_{p}" for lane in QUICK.training.lanes for p in lane]
    assert all(r.reused for r in runner.records)
    plan = QUICK.training
    other = run_module._Demo(dataclasses.replace(QUICK, training=dataclasses.replace(
        plan, tgan=dataclasses.replace(plan.tgan, max_seconds=5))), out, progress=False)
    other._world = demo._world
    with pytest.raises(StageSettingsError, match="train_tgan.*--restart"):
        other.train_all(StageRunner(out, stream=io.StringIO()))
    assert not training.trained and (out / "runs" / "tgan" / "checkpoints" / "last.ckpt").is_file()


def test_evaluate_refused_for_a_preset_without_a_plan(tmp_path: Path) -> None:
    from emoedit.demo.run import main, run_demo

    with pytest.raises(ValueError, match="no evaluation plan"):
        run_demo(PRESETS["gpu"], tmp_path, evaluate=True, progress=False)
    assert main(["--preset", "gpu", "--out", str(tmp_path), "--evaluate"]) == 2  # the CLI's error exit


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_quick_preset_with_evaluate_end_to_end(tmp_path: Path) -> None:
    """`make evaluate PRESET=quick` into a fresh folder: the demo, the lane, the harness; then a resume."""
    import time

    from emoedit.demo.run import run_demo

    out = tmp_path / "quick"
    summary = run_demo("quick", out, progress=False, evaluate=True)
    lane = summary.evaluate
    assert lane is not None
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert (out / "evaluate" / "tables.md").read_text() == lane.table_text
    assert lane.dropped_sets == ("unseen_views",) and lane.sets == {"seen": 2, "unseen_subjects": 2}
    assert not {s["name"] for s in results["skipped"]} & {"StarGAN", "pSp", "ExprGAN"}
    for set_name in ("seen", "unseen_subjects"):
        counts = results["sets"][set_name]["counts"]
        for method in ("ours", "StarGAN", "pSp", "ExprGAN", "ground truth"):
            assert counts.get(method) == 2, (set_name, method, counts)
        assert results["sets"][set_name]["summary"]["StarGAN"]["psnr"] is not None
    assert any("unseen_views" in n for n in results["notes"])
    for name in ("StarGAN", "pSp", "ExprGAN"):
        assert f"| {name}" in lane.table_text or name in lane.table_text
    body = json.loads(summary.summary_file.read_text())
    assert body["evaluate"]["results"] == "evaluate/results.json" and "stage_seconds" in body
    assert {"train_judge_emotion", "train_judge_identity", "train_stargan", "train_exprgan", "train_psp_tgan",
            "train_psp_encoder", "psp_directions", "evaluate"} <= set(body["stage_seconds"])
    for job in EVALUATION_JOBS:
        stamp = json.loads((out / ".stages" / f"train_{job}.json").read_text())
        assert stamp["outputs"]["steps"] > 0 and (out / "runs" / job / "checkpoints" / "last.ckpt").is_file()
    print("evaluation lane stage seconds:", lane.stage_seconds, "wall", round(lane.wall_seconds, 1),
          "training wall", round(lane.training_wall_seconds, 1))
    started = time.perf_counter()
    again = run_demo("quick", out, progress=False, evaluate=True)
    assert set(again.reused_stages) == set(again.stage_seconds)  # nothing ran
    assert time.perf_counter() - started < 60
