"""The demo's resumable stage runner, its presets and its pure helpers (fast: no training)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from emoedit.demo.evaluation import face_region_errors, format_table, stored_level, summarise
from emoedit.demo.presets import DEMO, GPU, PART_ORDER, PRESETS, QUICK, EditPlan, TrainingPlan, get_preset
from emoedit.demo.run import edit_specs
from emoedit.demo.stages import (
    OnSettingsChange,
    StageError,
    StageResult,
    StageRunner,
    StageSettingsError,
    format_seconds,
    normalise_settings,
    settings_differences,
)
from emoedit.demo.training import TrainJob


class Counter:
    """A stage function that counts its calls and writes one file."""

    def __init__(self, out: Path, name: str = "a.txt") -> None:
        self.out, self.name, self.calls = out, name, 0

    def __call__(self) -> StageResult:
        self.calls += 1
        (self.out / self.name).write_text(f"call {self.calls}")
        return StageResult(outputs={"calls": self.calls}, files=(self.name,))


def quiet(out: Path) -> StageRunner:
    import io

    return StageRunner(out, stream=io.StringIO())


def test_stage_runs_once_and_is_reused(tmp_path: Path) -> None:
    work = Counter(tmp_path)
    first = quiet(tmp_path).run("alpha", {"size": 3, "names": ("x", "y")}, work)
    assert work.calls == 1 and not first.reused
    stamp = json.loads((tmp_path / ".stages" / "alpha.json").read_text())
    assert stamp["settings"] == {"names": ["x", "y"], "size": 3}
    assert stamp["outputs"] == {"calls": 1} and stamp["files"] == ["a.txt"] and stamp["seconds"] >= 0
    assert stamp["cpu_seconds"] is not None
    # same settings (a tuple and a list are the same JSON): reused, the work is not called
    again = quiet(tmp_path).run("alpha", {"names": ["x", "y"], "size": 3}, work)
    assert work.calls == 1 and again.reused and again.outputs == {"calls": 1}


def test_settings_mismatch_names_the_key_and_the_way_out(tmp_path: Path) -> None:
    work = Counter(tmp_path)
    quiet(tmp_path).run("alpha", {"size": 3, "nested": {"steps": 10}}, work)
    with pytest.raises(StageSettingsError) as info:
        quiet(tmp_path).run("alpha", {"size": 3, "nested": {"steps": 20}}, work)
    message = str(info.value)
    assert "nested.steps: 10 → 20" in message and "--out" in message and "--restart" in message
    assert work.calls == 1


def test_missing_output_file_runs_the_stage_again(tmp_path: Path) -> None:
    work = Counter(tmp_path)
    quiet(tmp_path).run("alpha", {}, work)
    (tmp_path / "a.txt").unlink()
    record = quiet(tmp_path).run("alpha", {}, work)
    assert work.calls == 2 and not record.reused


def test_failed_stage_leaves_no_stamp_and_runs_again(tmp_path: Path) -> None:
    def boom() -> StageResult:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        quiet(tmp_path).run("alpha", {}, boom)
    assert not (tmp_path / ".stages" / "alpha.json").exists()
    work = Counter(tmp_path)
    quiet(tmp_path).run("alpha", {}, work)
    assert work.calls == 1


def test_stage_must_write_the_files_it_names(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="nothing.txt"):
        quiet(tmp_path).run("alpha", {}, lambda: StageResult(files=("nothing.txt",)))


def test_rerun_policy_removes_the_outputs_and_runs_again(tmp_path: Path) -> None:
    import io

    work = Counter(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    log = io.StringIO()
    runner = StageRunner(tmp_path, stream=log)
    rerun = dict(on_change=OnSettingsChange.RERUN, outputs=[folder, "a.txt"])
    runner.run("alpha", {"steps": 3}, work, **rerun)
    assert runner.run("alpha", {"steps": 3}, work, **rerun).reused and folder.is_dir()  # same settings: reused
    record = runner.run("alpha", {"steps": 4}, work, **rerun)
    assert work.calls == 2 and not record.reused and not folder.exists()  # "a.txt" was removed, then written again
    assert "[alpha] settings changed (steps: 3 → 4): running it again" in log.getvalue()
    assert json.loads((tmp_path / ".stages" / "alpha.json").read_text())["settings"] == {"steps": 4}
    # is_done alone forgets as well (the training lanes check first and run the work elsewhere)
    assert runner.is_done("alpha", {"steps": 5}, on_change="rerun") is None
    assert runner.read_stamp("alpha") is None and runner.is_done("never_ran", {"a": 1}, **rerun) is None
    # the default policy refuses instead, and leaves everything in place
    runner.run("alpha", {"steps": 5}, work)
    with pytest.raises(StageSettingsError, match="steps: 5 → 6"):
        runner.is_done("alpha", {"steps": 6})
    assert runner.read_stamp("alpha") is not None and (tmp_path / "a.txt").is_file()


def test_is_done_reads_the_stamp_once_and_reuse_records_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    work = Counter(tmp_path)
    quiet(tmp_path).run("alpha", {"v": 1}, work)
    reads: list[str] = []
    read_stamp = StageRunner.read_stamp
    monkeypatch.setattr(StageRunner, "read_stamp", lambda self, name: reads.append(name) or read_stamp(self, name))
    log = io.StringIO()
    runner = StageRunner(tmp_path, stream=log)
    done = runner.is_done("alpha", {"v": 1}, on_change=OnSettingsChange.RERUN)
    assert done is not None and reads == ["alpha"]
    assert runner.reuse(done) is done and runner.records == [done]
    assert runner.run("alpha", {"v": 1}, work).reused and reads == ["alpha", "alpha"] and work.calls == 1
    assert log.getvalue().splitlines() == ["[alpha] done earlier (" + format_seconds(done.seconds) + "): alpha"] * 2


def test_bad_stamp_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ".stages").mkdir()
    (tmp_path / ".stages" / "alpha.json").write_text("{not json")
    with pytest.raises(StageError, match="alpha.json"):
        quiet(tmp_path).run("alpha", {}, Counter(tmp_path))
    (tmp_path / ".stages" / "alpha.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(StageError, match="not a stamp"):
        quiet(tmp_path).run("alpha", {}, Counter(tmp_path))
    with pytest.raises(StageError, match="bad stage name"):
        quiet(tmp_path).stamp_path("../x")


def test_report_counts_overlapping_stages_once(tmp_path: Path) -> None:
    from emoedit.demo.stages import StageRecord

    def record(name: str, start: float, seconds: float) -> StageRecord:
        import datetime

        end = datetime.datetime.fromtimestamp(1_000_000 + start + seconds).astimezone()
        return StageRecord(name=name, settings={}, outputs={}, files=(), seconds=seconds,
                           finished=end.isoformat(timespec="milliseconds"), cpu_seconds=seconds)

    records = [record("a", 0, 10), record("b", 10, 30), record("c", 12, 20), record("d", 50, 5)]
    assert StageRunner.wall_total(records) == pytest.approx(10 + 30 + 5, abs=1e-3)
    runner = quiet(tmp_path)
    runner.records.extend(records)
    assert "all stages" in runner.report()


def test_normalise_and_differences() -> None:
    assert normalise_settings({"p": Path("/x"), "t": (1, 2)}) == {"p": "/x", "t": [1, 2]}
    with pytest.raises(TypeError):
        normalise_settings({"bad": object()})
    assert settings_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4}) == [
        "b.c: 2 → 3", "d: (absent) → 4"]


# --------------------------------------------------------------------------- presets
def test_presets_are_complete_and_json_able() -> None:
    assert set(PRESETS) == {"quick", "demo", "gpu"} and get_preset("demo") is DEMO
    with pytest.raises(ValueError, match="unknown demo preset"):
        get_preset("huge")
    for preset in (QUICK, DEMO, GPU):
        json.dumps(preset.to_json())
        for part in PART_ORDER:
            budget = preset.training.budget(part)
            assert budget.max_steps > 0 and budget.max_seconds > 0
    # the CPU presets are sized for their budgets: no part's time cap exceeds a lane's share
    for preset in (QUICK, DEMO):
        for lane in preset.training.lanes:
            assert sum(preset.training.budget(p).max_seconds for p in lane) < 0.65 * preset.budget_seconds
    assert DEMO.budget_seconds == 1200 and QUICK.budget_seconds == 300
    assert GPU.device == "cuda" and GPU.preprocess.texture_size == 512


def test_lanes_must_respect_dependencies() -> None:
    budgets = {p: DEMO.training.budget(p) for p in PART_ORDER}
    with pytest.raises(ValueError, match="needs 'tgan'"):
        TrainingPlan(**budgets, lanes=(("texture_encoder", "tgan"),
                                       ("recon", "teeth_tgan", "teeth_encoder", "geometry", "classifier")))
    with pytest.raises(ValueError, match="every part once"):
        TrainingPlan(**budgets, lanes=(("tgan", "texture_encoder"),))


def test_edit_plan_checks_and_edit_specs() -> None:
    with pytest.raises(ValueError, match="unknown emotions"):
        dataclasses.replace(DEMO.edit, emotions=("joyful",))
    with pytest.raises(ValueError, match="texture_mode"):
        dataclasses.replace(DEMO.edit, texture_mode="paint")
    with pytest.raises(ValueError, match="unknown ablations"):
        dataclasses.replace(DEMO.edit, ablations=("no_brain",))
    with pytest.raises(ValueError, match="ablation_emotions"):
        dataclasses.replace(QUICK.edit, ablation_emotions=("sad",))
    for bad in (0.0, -1.0, float("inf"), "hot", True):
        with pytest.raises(ValueError, match="subject_temperature"):
            dataclasses.replace(DEMO.edit, subject_temperature=bad)
    assert DEMO.edit.subject_temperature == QUICK.edit.subject_temperature == "calibrate"
    assert dataclasses.replace(DEMO.edit, subject_temperature=2).subject_temperature == 2
    specs = edit_specs(DEMO)
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 7 + 5  # happy at strength 1 is not repeated in the intensity row
    assert names[0] == "happy_1.00" and "happy_0.17" in names
    assert isinstance(DEMO.edit, EditPlan)


def test_train_job_overrides() -> None:
    job = TrainJob(part="tgan", run_dir="/r/tgan", experiment="demo", overrides=("data.cache_dir=/c",),
                   max_steps=100, max_seconds=60, checkpoint_every=10, validate=False, seed=3, threads=1, accelerator="cpu")
    args = job.train_overrides()
    assert args[0] == "experiment=demo" and "ckpt_path=last" in args and "seed=3" in args
    assert 'trainer.max_time={"seconds": 60}' in args and "trainer.limit_val_batches=0" in args
    assert "trainer.max_steps=100" in args
    assert TrainJob.from_json(json.loads(json.dumps(job.settings()))) == job
    validated = dataclasses.replace(job, validate=True, max_seconds=0)
    assert not any(a.startswith(("trainer.max_time", "trainer.limit_val")) for a in validated.train_overrides())


# --------------------------------------------------------------------------- evaluation helpers
def test_stored_level() -> None:
    assert stored_level(1.0, (1, 2, 3)) == 3 and stored_level(2 / 3, (1, 2, 3)) == 2
    assert stored_level(0.5, (1, 2, 3)) is None and stored_level(2 / 3, (1, 3)) is None


def test_face_region_errors_known_answer() -> None:
    target = torch.zeros(2, 3, 4, 4)
    output = target.clone()
    output[:, :, :2] = 0.1  # error 0.1 on the top half
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2] = True  # the face region is exactly the top half
    errors = face_region_errors(output, target, mask)
    assert errors["l1"] == pytest.approx(0.1)
    assert errors["psnr_db"] == pytest.approx(20.0)  # MSE 0.01
    assert errors["region_fraction"] == pytest.approx(0.5)
    outside = target.clone()
    outside[:, :, 2:] = 1.0  # errors outside the region do not count
    assert face_region_errors(outside, target, mask)["l1"] == 0.0


def test_summary_and_table() -> None:
    def entry(alpha: float, psnr_out: float) -> dict:
        image = {"output_vs_truth": {"psnr_db": psnr_out, "l1": 0.02},
                 "input_vs_truth": {"psnr_db": 30.0, "l1": 0.01}}
        refit = {who: {"vertex_mm": 1.0, "exp_mae": 0.1, "landmark_px": 0.5} for who in
                 ("output", "input", "truth_video")}
        return {"emotion": "happy", "alpha": alpha, "image": image, "refit": refit, "true_change_mm": 2.0}

    results = [entry(1.0, 25.0), entry(0.5, 27.0)]
    summary = summarise(results)
    assert summary["full_strength"]["edits"] == 1 and summary["all"]["edits"] == 2
    assert summary["all"]["output_vs_truth"]["psnr_db"] == pytest.approx(26.0)
    table = format_table({"edits": results, "summary": summary})
    assert "| happy | 1.00 | 25.00 / 30.00 |" in table and "mean, all edits" in table
    assert math.isfinite(summary["all"]["refit"]["output"]["vertex_mm"])


def test_preprocess_stamp_keeps_its_keys_from_before_the_face_region(tmp_path: Path) -> None:
    """Settings added to PreprocessConfig later are left out of the demo's preprocess stamp at their
    defaults, so demo folders made before them are reused, not refused."""
    from emoedit.demo.presets import DEMO
    from emoedit.demo.run import _Demo

    body = _Demo(DEMO, tmp_path, progress=False).preprocess_settings()
    assert "texture_region_min_cos" not in body and "texture_region_margin" not in body
    assert body["texture_size"] == DEMO.preprocess.texture_size and "inputs" not in body
