"""``emoedit demo --evaluate`` (``make evaluate``): judges, baselines and the evaluation harness.

Continues a demo output folder (same ``--out``, same stage stamps in ``<out>/.stages``)
after the method's stages with these stages (sizes: the preset's
:class:`~emoedit.demo.presets.EvaluationPlan`):

1. ``train_<job>`` for the jobs of :data:`~emoedit.demo.presets.EVALUATION_JOBS` — ``train.py``
   in worker processes (:func:`emoedit.demo.training.train_lanes`, two lanes on a CPU), run
   folders ``runs/<job>``: ``judge`` twice (``model.kind=emotion`` → ``runs/judge_emotion``,
   ``model.kind=identity`` over the training subjects → ``runs/judge_identity``),
   ``stargan``, ``exprgan``, ``psp_tgan`` then ``psp_encoder`` (its ``model.tgan_checkpoint``
   = psp_tgan's ``last.ckpt``). All read the demo's **frames cache** (aligned face crops of
   the world's ground-truth front clips: never a truth edit or a method's output) and never
   see an evaluation clip or an unseen subject: the baselines as the method's parts do
   (``data.filter`` = front view + training subjects, ``data.exclude`` = every evaluation
   clip and the unseen subjects); the judges (whose frames DataModule has no filter) get
   every evaluation clip as ``data.val_keys`` — which holds every clip of the unseen
   subjects too — with validation switched off, so those clips are never even read;
2. ``psp_directions`` — the pSp baseline's global directions (one per emotion,
   :func:`emoedit.baselines.psp_face.run_psp_face_directions`) from the training subjects'
   front training crops (neutral and the top level; the held-out neutral clips excluded,
   as for the method's own directions) → ``psp_directions.pt``;
3. ``evaluate`` — :func:`emoedit.evaluation.harness.run_evaluation` with
   ``configs/evaluate/demo.yaml`` pointed at this folder (:func:`build_evaluate_config`),
   once over every set (each with its own number of items: ``items_per_set``) into
   ``evaluate/`` (``results.json``, ``tables.md``). A set the world has no items for (no side
   views: ``unseen_views``) is dropped, with a note in both files.

Stage settings are recorded in the stamps like the method's; each stage's settings contain
the settings of the stages it depends on. Unlike the method's stages (which refuse a folder
made with other settings), a lane stage whose settings changed — a budget, the number of
items — is **run again** (:attr:`~emoedit.demo.stages.OnSettingsChange.RERUN`): its old
outputs (run folder, directions file, ``evaluate/``) are removed first, and so, through the
nested settings, are the lane stages after it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from emoedit.demo.presets import EVALUATION_JOB_DEPENDENCIES, EVALUATION_JOB_PARTS, EvaluationPlan, json_ready
from emoedit.demo.stages import OnSettingsChange, StageResult, StageRunner, format_seconds
from emoedit.demo.training import REPO_ROOT, TrainJob, train_lanes

if TYPE_CHECKING:
    from emoedit.evaluation.config import EvaluateConfig

#: The harness config the lane starts from (its paths are replaced by the output folder's).
EVALUATE_CONFIG_FILE = REPO_ROOT / "configs" / "evaluate" / "demo.yaml"
#: Files and folders the lane writes into the output folder (besides ``runs/<job>``).
DIRECTIONS_FILE = "psp_directions.pt"
EVALUATE_DIR = "evaluate"
#: Which baseline file of the harness config each job's ``last.ckpt`` is.
_BASELINE_FIELDS: dict[str, str] = {"stargan": "stargan", "exprgan": "exprgan", "psp_tgan": "psp_tgan",
                                    "psp_encoder": "psp_encoder"}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def run_folder(out_dir: Path, job: str) -> Path:
    """``<out>/runs/<job>``."""
    return Path(out_dir) / "runs" / job


def job_checkpoint(out_dir: Path, job: str) -> Path:
    """``<out>/runs/<job>/checkpoints/last.ckpt`` (what train.py keeps at the final step)."""
    return run_folder(out_dir, job) / "checkpoints" / "last.ckpt"


def _spelled(path: Path, cwd: Path | None) -> str:
    """``path`` relative to ``cwd`` when it lies inside it (as configs/evaluate/demo.yaml spells its paths),
    else absolute; ``cwd=None``: always absolute."""
    path = Path(path).resolve()
    if cwd is not None:
        try:
            return str(path.relative_to(Path(cwd).resolve()))
        except ValueError:
            pass
    return str(path)


def build_evaluate_config(
    out_dir: str | os.PathLike[str],  # the demo's output folder (world/, bundle/, runs/ inside)
    plan: EvaluationPlan,  # items, frames and the intensity sweep
    *,
    sets: Sequence[str],  # the evaluation sets the world has items for
    device: str = "cpu",  # the harness's device
    progress: bool = True,  # the harness's progress bars
    cwd: str | os.PathLike[str] | None = None,  # spell paths relative to this folder when inside it (None: absolute)
    config_file: str | os.PathLike[str] = EVALUATE_CONFIG_FILE,  # the base harness config
) -> EvaluateConfig:
    """The harness config of the lane: ``config_file`` with every path pointed into ``out_dir``.

    The item counts are ``plan``'s, per set (``items_per_set``). With ``cwd`` = the repository root and ``out_dir`` = ``outputs/demo`` the paths
    are exactly ``configs/evaluate/demo.yaml``'s, so ``emoedit evaluate --config
    configs/evaluate/demo.yaml`` continues the lane's ``evaluate/`` folder.
    """
    from emoedit.evaluation.config import BaselineFiles, JudgeFiles, check_config, load_evaluate_config

    out = Path(out_dir).resolve()
    base = load_evaluate_config(config_file)  # its paths are replaced below
    where = {} if cwd is None else {"cwd": Path(cwd)}

    def spell(path: Path) -> str:
        return _spelled(path, where.get("cwd"))

    counts = plan.max_items()
    unknown = [s for s in sets if s not in counts]
    if unknown or not sets:
        raise ValueError(f"evaluation lane: sets must be a non-empty subset of {sorted(counts)}, got {list(sets)}")
    cfg = dataclasses.replace(
        base,
        world=spell(out / "world"), out=spell(out / EVALUATE_DIR), bundle=spell(out / "bundle"),
        judges=JudgeFiles(emotion=spell(job_checkpoint(out, "judge_emotion")),
                          identity=spell(job_checkpoint(out, "judge_identity"))),
        baselines=BaselineFiles(**{field: spell(job_checkpoint(out, job)) for job, field in _BASELINE_FIELDS.items()},
                                psp_directions=spell(out / DIRECTIONS_FILE)),
        sets=list(sets), max_items=None, items_per_set={s: counts[s] for s in sets}, max_frames=plan.max_frames,
        frame_stride=plan.frame_stride, device=device, progress=progress, strict=True,
        monotonicity=dataclasses.replace(base.monotonicity, enabled=plan.monotonicity_items > 0,
                                         items=max(1, plan.monotonicity_items)),
    )
    return check_config(cfg)


@dataclass(frozen=True)
class EvaluationLaneSummary:
    """What the lane produced (paths inside the output folder)."""

    results: Path  # evaluate/results.json (every set merged)
    tables: Path  # evaluate/tables.md
    table_text: str  # the content of tables.md
    sets: dict[str, int]  # evaluation set → items scored
    dropped_sets: tuple[str, ...]  # sets the world has no items for
    skipped_methods: tuple[str, ...]  # methods the harness skipped (with the reasons in results.json)
    stage_seconds: dict[str, float]  # lane stage → seconds of the run that did it
    wall_seconds: float  # wall time of the lane's stages (the training lanes' overlap counted once)
    training_wall_seconds: float  # wall time of the training stages alone
    budget_seconds: int  # what the plan is sized for

    def to_json(self, out_dir: Path) -> dict[str, Any]:
        """``summary.json``'s ``evaluate`` section (paths relative to ``out_dir``)."""
        return {"results": str(self.results.relative_to(out_dir)), "tables": str(self.tables.relative_to(out_dir)),
                "sets": dict(self.sets), "dropped_sets": list(self.dropped_sets),
                "skipped_methods": list(self.skipped_methods), "stage_seconds": dict(self.stage_seconds),
                "wall_seconds": round(self.wall_seconds, 1),
                "training_wall_seconds": round(self.training_wall_seconds, 1), "budget_seconds": self.budget_seconds}


class EvaluationLane:
    """The lane's stages on one demo run (``demo``: :class:`emoedit.demo.run._Demo`, its paths and world)."""

    def __init__(self, demo: Any, plan: EvaluationPlan) -> None:
        self.demo = demo
        self.plan = plan
        self.out: Path = demo.out
        self.log_dir: Path = demo.runs_dir / "evaluate_logs"  # the lanes' lane<k>.log (the method's are in runs/)

    # ------------------------------------------------------------------ training
    def train_job(self, job: str) -> TrainJob:
        """train.py overrides of ``job`` (see the module docstring for the data selection)."""
        demo = self.demo
        world = demo.world
        preset = demo.preset
        train_subjects = list(world.train_subjects)
        unseen = sorted(world.unseen_subjects)
        eval_ids = demo.eval_clip_ids()
        unseen_clips = {r.key.clip_id
                        for r in world.clips(view="front") if r.key.subject in set(unseen)}
        if not unseen_clips <= set(eval_ids):
            raise ValueError(f"{demo.world_dir}: unseen subjects' clips outside the evaluation split "
                             f"({sorted(unseen_clips - set(eval_ids))[:3]}): the judges would train on them")
        frames = demo.cache_dir / "frames"
        crop = preset.preprocess.crop_size
        select = [f"data.cache_dir={frames}",
                  f"data.filter={_json({'view': 'front', 'subject': train_subjects})}",
                  f"data.exclude={_json({'subject': unseen, 'clip': eval_ids})}"]
        judge = [f"data.cache_dir={frames}", "data.views=[front]", "data.split_by=clip",
                 f"data.val_keys={_json(eval_ids)}", f"model.input_size={crop}"]
        if job == "judge_emotion":
            data = [*judge, "model.kind=emotion"]
        elif job == "judge_identity":
            data = [*judge, "model.kind=identity", f"model.subjects={_json(train_subjects)}"]
        elif job in ("stargan", "exprgan"):
            data = [*select, f"model.resolution={crop}"]
        elif job == "psp_tgan":
            data = [*select, f"model.resolution={crop}"]
        elif job == "psp_encoder":
            data = [*select, f"model.tgan_checkpoint={job_checkpoint(self.out, 'psp_tgan')}",
                    f"data.resolution={crop}", f"model.input_size={crop}", "model.loss.lpips=0"]
        else:
            raise KeyError(f"unknown evaluation job {job!r}")
        logger = ["logger.kind=wandb", f"logger.group=demo-{preset.name}-evaluate", f"logger.name={job}"]
        budget = self.plan.budget(job)
        return TrainJob(part=EVALUATION_JOB_PARTS[job], run_dir=str(run_folder(self.out, job)),
                        experiment=budget.experiment, overrides=tuple([*data, *logger]), max_steps=budget.max_steps,
                        max_seconds=budget.max_seconds, checkpoint_every=budget.checkpoint_every,
                        validate=budget.validate, seed=preset.train_seed,
                        threads=1 if preset.device == "cpu" else 4,
                        accelerator="cpu" if preset.device == "cpu" else "gpu")

    def job_settings(self, job: str) -> dict[str, Any]:
        """The stamp settings of ``train_<job>``: its TrainJob and the settings of the jobs it needs."""
        body = self.train_job(job).settings()
        needs = EVALUATION_JOB_DEPENDENCIES[job]
        if needs:
            body["needs"] = {n: self.job_settings(n) for n in needs}
        return body

    def train_all(self, runner: StageRunner) -> None:
        """Every job not yet stamped with its current settings, in the plan's lanes of worker processes."""
        lanes: list[list[TrainJob]] = []
        settings: dict[str, dict[str, Any]] = {}
        for lane in self.plan.lanes:
            pending = []
            for job in lane:
                settings[job] = self.job_settings(job)
                done = runner.is_done(f"train_{job}", settings[job], on_change=OnSettingsChange.RERUN,
                                      outputs=[run_folder(self.out, job)])
                if done is None:
                    pending.append(self.train_job(job))
                else:
                    runner.reuse(done)
            lanes.append(pending)
        if not any(lanes):
            return

        def name(job: TrainJob) -> str:
            return Path(job.run_dir).name

        def on_start(job: TrainJob) -> None:
            cap = f", at most {format_seconds(job.max_seconds)}" if job.max_seconds else ""
            print(f"[train_{name(job)}] training {name(job)} (train.py {job.part}): {job.max_steps} steps{cap}",
                  flush=True)

        def on_done(job: TrainJob, result: dict[str, Any], seconds: float) -> None:
            outputs = {"steps": result["steps"], "train_seconds": round(result["seconds"], 1),
                       "cpu_seconds": round(result.get("cpu_seconds", 0.0), 1), "stopped_by": result["stopped_by"],
                       "checkpoint": self.demo.rel(job.checkpoint), "metrics": result.get("metrics", {})}
            runner.record(f"train_{name(job)}", settings[name(job)],
                          StageResult(outputs=outputs, files=(self.demo.rel(job.checkpoint),)), seconds,
                          cpu=result.get("cpu_seconds"))

        print(f"training the judges and baselines in {sum(1 for lane in lanes if lane)} worker process(es); logs: "
              f"{self.demo.rel(self.log_dir)}/lane*.log", flush=True)
        train_lanes(lanes, log_dir=self.log_dir, on_start=on_start, on_done=on_done,
                    progress=self.demo.progress)

    # ------------------------------------------------------------------ pSp directions
    def directions_settings(self) -> dict[str, Any]:
        return {"encoder": self.job_settings("psp_encoder"), "views": ["front"], "subjects": "training",
                "excluded_clips": "every evaluation clip", "level": "max", "batch_size": 64}

    def directions(self) -> StageResult:
        """One global direction per emotion from the training subjects' front training crops."""
        import torch

        from emoedit.baselines.psp_face import run_psp_face_directions

        demo = self.demo
        device = "cuda" if demo.preset.device == "cuda" and torch.cuda.is_available() else "cpu"
        subjects = list(demo.world.train_subjects)
        present = list(demo.preset.world.emotions)  # the world's emotions, code order
        result = run_psp_face_directions(demo.cache_dir / "frames", job_checkpoint(self.out, "psp_encoder"),
                                         self.out / DIRECTIONS_FILE, views=("front",), subjects=subjects,
                                         exclude_clips=demo.eval_clip_ids(), emotions=present, batch_size=64,
                                         device=device)
        records = int(result.counts.sum()) + int(result.neutral_counts.sum())
        return StageResult(outputs={"records": records, "subjects": len(subjects), "emotions": present},
                           files=(DIRECTIONS_FILE,))

    # ------------------------------------------------------------------ harness
    def available_sets(self) -> tuple[list[str], list[str]]:
        """``(sets with items, sets without)`` among the plan's sets, in table order."""
        from emoedit.evaluation.splits import EVALUATION_SETS, evaluation_items

        kept, dropped = [], []
        for name in EVALUATION_SETS:
            (kept if evaluation_items(self.demo.world, name, max_items=1) else dropped).append(name)
        return kept, dropped

    def evaluate_config(self, sets: Sequence[str], *, cwd: Path | None) -> EvaluateConfig:
        return build_evaluate_config(self.out, self.plan, sets=sets, device=self.demo.preset.device,
                                     progress=self.demo.progress, cwd=cwd)

    def evaluate_settings(self, sets: Sequence[str], dropped: Sequence[str]) -> dict[str, Any]:
        """The config (absolute paths, no progress switch), the items per set and every input's settings."""
        config = json_ready(self.evaluate_config(sets, cwd=None).to_json())
        config.pop("progress", None)
        counts = self.plan.max_items()
        return {"config": config, "max_items": {s: counts[s] for s in sets}, "dropped_sets": list(dropped),
                "inputs": {**{job: self.job_settings(job) for job in EVALUATION_JOB_PARTS},
                           "psp_directions": self.directions_settings()}}

    def evaluate(self, sets: Sequence[str], dropped: Sequence[str]) -> StageResult:
        """The harness over every set the world has (its own ``results.json`` and ``tables.md`` in ``evaluate/``)."""
        from emoedit.evaluation.harness import RESULTS_FILE, TABLES_FILE, run_evaluation

        cfg = self.evaluate_config(sets, cwd=Path.cwd())
        print(f"[evaluate] items per set: {cfg.items_per_set}", flush=True)
        dropped_notes = [f"set {s!r} dropped by `emoedit demo --evaluate`: the world has no items for it "
                         "(no side views)" for s in dropped]  # reported where the tables are read
        results = run_evaluation(cfg, notes=dropped_notes).results
        if results["failures"]:
            raise RuntimeError(f"evaluate: {len(results['failures'])} output(s) failed, e.g. "
                               f"{results['failures'][:2]}; re-run to retry them")
        notes = list(results.get("notes", []))
        outputs = {"sets": {s: b["items"] for s, b in results["sets"].items()}, "dropped_sets": list(dropped),
                   "skipped": results.get("skipped", []), "notes": notes,
                   "counts": {s: b["counts"] for s, b in results["sets"].items()},
                   "produced": results["run"].get("produced_this_call"),
                   "scored": results["run"].get("scored_this_call")}
        return StageResult(outputs=outputs, files=(f"{EVALUATE_DIR}/{RESULTS_FILE}", f"{EVALUATE_DIR}/{TABLES_FILE}"))

    # ------------------------------------------------------------------ all stages
    def run(self, runner: StageRunner) -> EvaluationLaneSummary:
        """Every lane stage (resumable; see the module docstring)."""
        first = len(runner.records)
        self.train_all(runner)
        trained = list(runner.records[first:])
        runner.run("psp_directions", self.directions_settings(), self.directions,
                   title="pSp baseline: global emotion directions from the training crops",
                   on_change=OnSettingsChange.RERUN, outputs=[self.out / DIRECTIONS_FILE])
        sets, dropped = self.available_sets()
        if dropped:
            print(f"[evaluate] the world has no items for {', '.join(dropped)} (no side views): set(s) dropped",
                  flush=True)
        record = runner.run("evaluate", self.evaluate_settings(sets, dropped), lambda: self.evaluate(sets, dropped),
                            title=f"evaluation harness: {', '.join(sets)} (Tables 1 and 2)",
                            on_change=OnSettingsChange.RERUN, outputs=[self.out / EVALUATE_DIR])
        records = runner.records[first:]
        folder = self.out / EVALUATE_DIR
        from emoedit.evaluation.harness import RESULTS_FILE, TABLES_FILE

        return EvaluationLaneSummary(
            results=folder / RESULTS_FILE, tables=folder / TABLES_FILE,
            table_text=(folder / TABLES_FILE).read_text(encoding="utf-8"),
            sets=dict(record.outputs.get("sets", {})), dropped_sets=tuple(dropped),
            skipped_methods=tuple(s.get("name", "?") for s in record.outputs.get("skipped", [])),
            stage_seconds={r.name: round(r.seconds, 1) for r in records},
            wall_seconds=runner.wall_total(records), training_wall_seconds=runner.wall_total(trained) if trained else 0.0,
            budget_seconds=self.plan.budget_seconds,
        )


__all__ = [
    "DIRECTIONS_FILE",
    "EVALUATE_CONFIG_FILE",
    "EVALUATE_DIR",
    "EvaluationLane",
    "EvaluationLaneSummary",
    "build_evaluate_config",
    "job_checkpoint",
    "run_folder",
]
