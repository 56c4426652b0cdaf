"""``make demo``: the whole method on the built-in synthetic world, resumably, in one call.

:func:`run_demo` runs these stages into ``out_dir`` (METHOD §4's training order; each stage
is stamped in ``<out>/.stages`` when done, so re-running continues instead of starting over):

1. ``world`` — the synthetic world (``emoedit.data.synthetic``) in ``world/``, rendered by
   two processes (:mod:`emoedit.demo.world`);
2. ``preprocess`` — ``run_preprocess`` stage ``all`` over the world's **front** clips into
   ``cache/{frames,coeffs,textures,mouths}``: aligned crops for the regressor, and the
   coefficients, UV textures and mouth crops the other parts train on. Detection uses the
   world's true landmarks and the caches' coefficients are the world's **true**
   coefficients (reconstructor ``truth``): the texture, teeth and geometry parts learn from
   exact textures and shapes, and only the edit itself runs the trained regressor — in the
   paper the trained reconstruction model makes the caches, which on a CPU budget would
   feed every later part a regressor that has not learnt expressions yet (docs/RESULTS.md);
3. ``train_<part>`` for recon, tgan, texture_encoder, teeth_tgan, teeth_encoder, geometry,
   classifier — ``train.py`` runs in worker processes ("lanes", two on a 2-core CPU: the
   t-GAN → texture-encoder chain next to the others), each part resuming from
   its ``last.ckpt`` when interrupted, W&B logs offline in ``runs/<part>/wandb``. Every part
   trains on the training subjects' front training clips only: ``data.filter`` keeps the
   training subjects' front view, ``data.exclude`` drops every evaluation clip of the
   world's split (the recon regressor gets them as ``data.val_keys`` instead);
4. ``directions`` — eq. 5 from the same training records (neutral and level 3) → ``directions.pt``;
5. ``bundle`` — ``build_bundle`` → ``bundle/``;
6. ``edit`` — the unseen subject's neutral front clip edited to every emotion of the preset
   at α = 1 and to one emotion at several strengths → ``edits/<emotion>_<α>.mp4``
   (+ the editor's report ``.json``; detection = the world's true landmarks of the clip);
   plus, when the preset names ablations, the same clip edited at strength 1 with one
   component switched off (``edits/ablations/<variant>/``: the paper's Table 2 variants);
7. ``contact_sheet`` — ``contact_sheet.png`` (rows = input and emotions, columns = frames,
   like the paper's Fig. 2; below, the intensity row like Fig. 3) and
   ``contact_sheet_truth.png``, the same layout from the world's ground-truth edits;
8. ``evaluation`` — :mod:`emoedit.demo.evaluation` → ``evaluation.json`` / ``evaluation.md``.

``summary.json`` records the preset, the machine, the load average, every stage's time
and the total; the end of the run prints the stage times and the evaluation table.

With ``evaluate=True`` (``emoedit demo --evaluate``, ``make evaluate``) the run then continues
with the evaluation lane (:mod:`emoedit.demo.evaluation_lane`): the judges and the StarGAN,
ExprGAN and pSp baselines trained on the frames cache, the pSp directions, and the
evaluation harness over the world's evaluation sets → ``evaluate/results.json`` and
``evaluate/tables.md`` (printed at the end; ``summary.json`` gets an ``evaluate`` section).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from emoedit.atomic_io import atomic_write_bytes, atomic_write_text
from emoedit.demo.presets import ABLATIONS, DemoPreset, get_preset
from emoedit.demo.stages import StageResult, StageRunner, format_seconds
from emoedit.demo.training import TrainJob, train_lanes
from emoedit.editing.directions import CALIBRATE
from emoedit.machine import machine_info

if TYPE_CHECKING:
    from emoedit.demo.evaluation_lane import EvaluationLaneSummary

#: Sub-folders and files a demo run writes (``restart`` removes exactly these).
OWNED = ("world", ".world-preset.json", ".world-helper.log", ".world-helper.count", "cache", "runs", "directions.pt",
         "bundle", "edits", "contact_sheet.png", "contact_sheet_truth.png", "evaluation.json", "evaluation.md",
         "psp_directions.pt", "evaluate", "summary.json", ".stages")


@dataclass(frozen=True)
class EditSpec:
    """One edited video of the demo."""

    name: str  # file stem: "<emotion>_<α with 2 decimals>"
    emotion: str  # target emotion
    alpha: float  # strength α = level / 3


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`run_demo` produced (paths are inside ``out_dir``)."""

    preset: str  # preset name
    out_dir: Path  # the output folder
    stage_seconds: dict[str, float]  # stage → seconds of the run that did it
    reused_stages: tuple[str, ...]  # stages done by an earlier run
    total_seconds: float  # wall time of all stages (overlapping training stages counted once)
    cpu_seconds: float  # CPU time of all stages (processes and their children)
    run_seconds: float  # wall time of this call
    videos: tuple[Path, ...]  # the edited videos
    contact_sheet: Path  # rows = emotions, columns = frames, plus the intensity row
    truth_contact_sheet: Path  # the same layout from the ground-truth edits
    evaluation: Path  # evaluation.json
    summary_file: Path  # summary.json
    table: str  # the evaluation table (markdown)
    evaluate: EvaluationLaneSummary | None = None  # what --evaluate produced (emoedit.demo.evaluation_lane); None without it


def edit_specs(preset: DemoPreset) -> list[EditSpec]:
    """The edits of a preset: every emotion at α = 1, then the intensity row (α = 1 not repeated)."""
    plan = preset.edit
    specs = [EditSpec(f"{e}_1.00", e, 1.0) for e in plan.emotions]
    have = {s.name for s in specs}
    for alpha in plan.intensities:
        spec = EditSpec(f"{plan.intensity_emotion}_{alpha:.2f}", plan.intensity_emotion, float(alpha))
        if spec.name not in have:
            specs.append(spec)
            have.add(spec.name)
    return specs


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _Demo:
    """One demo run: the paths, the world's split and the stage functions."""

    def __init__(self, preset: DemoPreset, out_dir: Path, *, progress: bool) -> None:
        self.preset = preset
        self.out = out_dir
        self.progress = progress
        self.world_dir = out_dir / "world"
        self.cache_dir = out_dir / "cache"
        self.runs_dir = out_dir / "runs"
        self.bundle_dir = out_dir / "bundle"
        self.edits_dir = out_dir / "edits"
        self._world: Any = None

    def rel(self, path: Path) -> str:
        """``path`` relative to the output folder (as stamps record it)."""
        return str(Path(path).relative_to(self.out))

    # ------------------------------------------------------------------ world and split
    @property
    def world(self) -> Any:
        if self._world is None:
            from emoedit.data.synthetic import SyntheticWorld

            self._world = SyntheticWorld.open(self.world_dir)
        return self._world

    def eval_clip_ids(self) -> list[str]:
        """Cache clip ids of every front evaluation clip (held-out neutral clips, unseen subjects)."""
        return sorted(r.key.clip_id for r in self.world.clips(view="front") if r.role == "eval")

    def source_clip(self) -> Any:
        """The clip the demo edits: the first unseen subject's first neutral front clip."""
        world = self.world
        if not world.unseen_subjects:
            raise ValueError(f"{self.world_dir}: the world has no unseen subject to edit")
        subject = world.unseen_subjects[0]
        clips = world.eval_clips(view="front", subject=subject)
        if not clips:
            raise ValueError(f"{self.world_dir}: unseen subject {subject} has no neutral front clip")
        return clips[0]

    # ------------------------------------------------------------------ stage: world
    def world_settings(self) -> dict[str, Any]:
        return {"world": self.preset.world.to_json(), "seed": self.preset.world_seed}

    def make_world(self) -> StageResult:
        from emoedit.demo.world import generate_demo_world

        summary = generate_demo_world(self.world_dir, self.preset.world, self.preset.world_seed,
                                      workers=self.preset.world_workers, progress=self.progress)
        return StageResult(outputs=summary, files=("world/truth/world.json",))

    # ------------------------------------------------------------------ stage: preprocess
    def preprocess_config(self) -> Any:
        from emoedit.data.preprocess import PreprocessConfig

        p = self.preset.preprocess
        return PreprocessConfig(
            input_kind="mead", inputs=(str(self.world_dir),), output_dir=str(self.cache_dir), stage="all",
            views=("front",), detector="truth", reconstructor="truth", crop_size=p.crop_size,
            texture_size=p.texture_size, mouth_crop_size=p.mouth_crop_size, workers=p.workers,
            torch_threads=1 if self.preset.device == "cpu" else None, progress=self.progress,
            devices=("cpu",) if self.preset.device == "cpu" else (),
        )

    def preprocess_settings(self) -> dict[str, Any]:
        from emoedit.data.preprocess import OPTIONAL_SETTINGS
        from emoedit.demo.presets import json_ready

        body = json_ready(dataclasses.asdict(self.preprocess_config()))
        body.pop("inputs"), body.pop("output_dir"), body.pop("progress")
        for name, default in OPTIONAL_SETTINGS.items():  # demo folders made before these options still fit
            if body.get(name) == default:
                body.pop(name, None)
        return body

    def preprocess(self) -> StageResult:
        from emoedit.data.preprocess import run_preprocess

        summary = run_preprocess(self.preprocess_config())
        if summary.clips_failed:
            raise RuntimeError(f"preprocess: {summary.clips_failed} clips failed, e.g. {summary.failed[:3]}; "
                               "re-run the demo to retry them")
        out = {"clips": summary.num_clips, "records": summary.records_written, "seconds": round(summary.seconds, 1),
               "stage_seconds": {k: round(v, 1) for k, v in summary.stage_seconds.items()}}
        return StageResult(outputs=out, files=tuple(f"cache/{k}" for k in ("frames", "coeffs", "textures", "mouths")))

    # ------------------------------------------------------------------ stage: training
    def run_dir(self, part: str) -> Path:
        return self.runs_dir / part

    def checkpoint(self, part: str) -> Path:
        return self.run_dir(part) / "checkpoints" / "last.ckpt"

    def train_job(self, part: str) -> TrainJob:
        """train.py overrides of ``part`` (see the module docstring for the data selection)."""
        world = self.world
        train_subjects = list(world.train_subjects)
        eval_ids = self.eval_clip_ids()
        p = self.preset.preprocess
        face_model = str(self.world_dir / "truth" / "face_model.pt")
        select = [f"data.filter={_json({'view': 'front', 'subject': train_subjects})}",
                  f"data.exclude={_json({'clip': eval_ids})}"]
        logger = ["logger.kind=wandb", f"logger.group=demo-{self.preset.name}", f"logger.name={part}"]
        cache = self.cache_dir
        if part == "recon":
            data = [f"data.cache_dir={cache / 'frames'}", "data.views=[front]", "data.split_by=clip",
                    f"data.val_keys={_json(eval_ids)}", f"model.face_model={face_model}",
                    f"model.crop_size={p.crop_size}"]
        elif part == "tgan":
            data = [f"data.cache_dir={cache / 'textures'}", *select, f"model.resolution={p.texture_size}"]
        elif part == "texture_encoder":
            data = [f"data.cache_dir={cache / 'textures'}", *select, f"model.tgan_checkpoint={self.checkpoint('tgan')}",
                    f"data.resolution={p.texture_size}", "model.loss.lpips=0"]
        elif part == "classifier":
            data = [f"data.cache_dir={cache / 'textures'}", *select, f"model.subjects={_json(train_subjects)}"]
        elif part == "geometry":
            exclude = {"subject": sorted(world.unseen_subjects), "clip": eval_ids}
            data = [f"data.cache_dir={cache / 'coeffs'}", f"data.exclude={_json(exclude)}",
                    f"model.face_model={face_model}"]
        elif part == "teeth_tgan":
            data = [f"data.cache_dir={cache / 'mouths'}", *select, f"model.resolution={p.mouth_crop_size}"]
        elif part == "teeth_encoder":
            data = [f"data.cache_dir={cache / 'mouths'}", *select,
                    f"model.tgan_checkpoint={self.checkpoint('teeth_tgan')}", f"data.resolution={p.mouth_crop_size}",
                    "model.loss.lpips=0"]
        else:
            raise KeyError(f"unknown part {part!r}")
        budget = self.preset.training.budget(part)
        return TrainJob(part=part, run_dir=str(self.run_dir(part)), experiment=budget.experiment,
                        overrides=tuple([*data, *logger]), max_steps=budget.max_steps, max_seconds=budget.max_seconds,
                        checkpoint_every=budget.checkpoint_every, validate=budget.validate, seed=self.preset.train_seed,
                        threads=1 if self.preset.device == "cpu" else 4,
                        accelerator="cpu" if self.preset.device == "cpu" else "gpu")

    def train_all(self, runner: StageRunner) -> None:
        """Every part not yet stamped, in the preset's lanes of worker processes (:mod:`emoedit.demo.training`)."""
        lanes: list[list[TrainJob]] = []
        for lane in self.preset.training.lanes:
            pending = []
            for part in lane:
                job = self.train_job(part)
                done = runner.is_done(f"train_{part}", job.settings())  # a stamp of other settings: refused
                if done is None:
                    pending.append(job)
                else:
                    runner.reuse(done)
            lanes.append(pending)
        if not any(lanes):
            return

        def on_start(job: TrainJob) -> None:
            cap = f", at most {format_seconds(job.max_seconds)}" if job.max_seconds else ""
            print(f"[train_{job.part}] training {job.part}: {job.max_steps} steps{cap}", flush=True)

        def on_done(job: TrainJob, result: dict[str, Any], seconds: float) -> None:
            outputs = {"steps": result["steps"], "train_seconds": round(result["seconds"], 1),
                       "cpu_seconds": round(result.get("cpu_seconds", 0.0), 1), "stopped_by": result["stopped_by"],
                       "checkpoint": self.rel(job.checkpoint), "metrics": result.get("metrics", {})}
            runner.record(f"train_{job.part}", job.settings(),
                          StageResult(outputs=outputs, files=(self.rel(job.checkpoint),)), seconds,
                          cpu=result.get("cpu_seconds"))

        print(f"training in {sum(1 for lane in lanes if lane)} worker process(es); logs: "
              f"{self.rel(self.runs_dir)}/lane*.log", flush=True)
        train_lanes(lanes, log_dir=self.runs_dir, on_start=on_start, on_done=on_done, progress=self.progress)

    # ------------------------------------------------------------------ stage: directions
    def directions_settings(self, runner: StageRunner) -> dict[str, Any]:
        """The encoder's training settings, eq. 4's temperature and, when it is calibrated, the classifier's."""
        tau = self.preset.edit.subject_temperature
        settings = {"encoder": runner.read_stamp("train_texture_encoder").settings,  # type: ignore[union-attr]
                    "subject_temperature": tau}
        if tau == CALIBRATE:
            settings["classifier"] = runner.read_stamp("train_classifier").settings  # type: ignore[union-attr]
        return settings

    def directions(self) -> StageResult:
        """Eq. 5 from the training records only (neutral + level 3 of the training subjects' front training clips)."""
        import torch

        from emoedit.editing.directions import run_directions
        from emoedit.editing.emotion_code import MAX_LEVEL

        device = "cuda" if self.preset.device == "cuda" and torch.cuda.is_available() else "cpu"
        subjects = list(self.world.train_subjects)
        present = list(self.preset.world.emotions)  # the world's emotions, code order
        tau = self.preset.edit.subject_temperature
        result = run_directions(self.cache_dir / "textures", self.checkpoint("texture_encoder"),
                                self.out / "directions.pt", device=device, batch_size=64, subjects=subjects,
                                views=("front",), level=MAX_LEVEL, emotions=present,
                                exclude_clips=self.eval_clip_ids(),
                                classifier=str(self.checkpoint("classifier")) if tau == CALIBRATE else None,
                                subject_temperature=tau)
        records = int(result.counts.sum()) + int(result.neutral_counts.sum())
        return StageResult(outputs={"records": records, "subjects": len(subjects), "emotions": present,
                                    "describe": result.describe()}, files=("directions.pt",))

    # ------------------------------------------------------------------ stage: bundle
    def bundle_settings(self) -> dict[str, Any]:
        plan = self.preset.edit
        return {"recon_refine": list(plan.fitter_steps) if plan.recon_refine else None, "teeth": plan.teeth}

    def bundle(self) -> StageResult:
        from emoedit.pipeline.bundle import BundleSources, build_bundle

        plan = self.preset.edit
        sources = BundleSources(
            face_model=str(self.world_dir / "truth" / "face_model.pt"), recon=str(self.checkpoint("recon")),
            tgan=str(self.checkpoint("tgan")), texture_encoder=str(self.checkpoint("texture_encoder")),
            classifier=str(self.checkpoint("classifier")), directions=str(self.out / "directions.pt"),
            geometry=str(self.checkpoint("geometry")),
            teeth_tgan=str(self.checkpoint("teeth_tgan")) if plan.teeth else None,
            teeth_encoder=str(self.checkpoint("teeth_encoder")) if plan.teeth else None,
            cache=str(self.cache_dir),
        )
        refine = None
        if plan.recon_refine:
            pose, shape, photo = plan.fitter_steps
            refine = {"pose_steps": pose, "shape_steps": shape, "photo_steps": photo}
        manifest = build_bundle(self.bundle_dir, sources, recon_refine=refine)
        body = json.loads(Path(manifest).read_text(encoding="utf-8"))
        return StageResult(outputs={"recon": body.get("recon"), "notes": body.get("notes", []),
                                    "settings": body.get("settings")},
                           files=(self.rel(Path(manifest)),))

    # ------------------------------------------------------------------ stage: edit
    def edit_settings(self) -> dict[str, Any]:
        from emoedit.demo.presets import json_ready

        plan = self.preset.edit
        return {"source": self.source_clip().key.clip_id, "edits": [s.__dict__ for s in edit_specs(self.preset)],
                "texture_mode": plan.texture_mode, "teeth_gate": plan.teeth_gate, "teeth": plan.teeth,
                "device": self.preset.device,
                "bundle": json_ready(self.bundle_settings()),
                "ablations": [json_ready(ABLATIONS[a].__dict__) for a in plan.ablations],
                "ablation_emotions": list(plan.ablation_emotions)}

    def ablation_videos(self) -> dict[str, list[Any]]:
        """Ablation name → its edited videos (strength 1, ``ablation_emotions``)."""
        from emoedit.demo.evaluation import EditedVideo

        plan = self.preset.edit
        return {a: [EditedVideo(f"{e}_1.00", e, 1.0, self.edits_dir / "ablations" / a / f"{e}_1.00.mp4")
                    for e in plan.ablation_emotions] for a in plan.ablations}

    def edit(self) -> StageResult:
        import torch
        from tqdm import tqdm

        from emoedit.data.detection import GivenLandmarksDetector
        from emoedit.editing.emotion_code import EmotionSchedule, emotion_code_from_alpha
        from emoedit.pipeline.bundle import load_bundle
        from emoedit.pipeline.editor import EditOptions, VideoEditor

        plan = self.preset.edit
        source = self.source_clip()
        truth = self.world.load_truth(source)
        device = "cuda" if self.preset.device == "cuda" and torch.cuda.is_available() else "cpu"
        parts = load_bundle(self.bundle_dir, device=device)
        options = EditOptions(teeth=plan.teeth, texture_mode=plan.texture_mode, progress=False,
                              batch_size=32, preset="veryfast",
                              teeth_gate=plan.teeth_gate if plan.texture_mode == "warp" else 0.0)
        if plan.detector == "truth":
            detector = GivenLandmarksDetector(truth.landmarks)
        else:
            from emoedit.data.detection import DlibFaceDetector

            detector = DlibFaceDetector(detector="hog", upsample=plan.detect_upsample)
        editor = VideoEditor(parts=parts, options=options, detector=detector)
        self.edits_dir.mkdir(parents=True, exist_ok=True)
        input_copy = self.edits_dir / "input_neutral.mp4"
        if not input_copy.exists():
            atomic_write_bytes(input_copy, Path(source.video_path).read_bytes())
        files = [self.rel(input_copy)]
        timings: dict[str, float] = {}
        faces: dict[str, list[int]] = {}  # edit → [frames with a face, frames]
        specs = edit_specs(self.preset)
        for spec in tqdm(specs, desc="edits", unit="video", disable=not self.progress, dynamic_ncols=True):
            video = self.edits_dir / f"{spec.name}.mp4"
            report_file = self.edits_dir / f"{spec.name}.json"
            if not (video.is_file() and report_file.is_file()):  # an interrupted stage keeps the finished edits
                schedule = EmotionSchedule.constant(emotion_code_from_alpha(spec.emotion, spec.alpha))
                report = editor.edit(source.video_path, schedule, video)
                atomic_write_text(report_file, json.dumps(report.to_json(), indent=2) + "\n")
            report_body = json.loads(report_file.read_text(encoding="utf-8"))
            timings[spec.name] = round(sum(report_body["seconds"].values()), 2)
            faces[spec.name] = [report_body["frames_with_face"], report_body["num_frames"]]
            files += [self.rel(video), self.rel(report_file)]
        ablation_jobs = [(name, video) for name, videos in self.ablation_videos().items() for video in videos]
        for name, video in tqdm(ablation_jobs, desc="ablations", unit="video", disable=not self.progress or
                                not ablation_jobs, dynamic_ncols=True):
            if not video.path.is_file():
                variant = ABLATIONS[name]
                variant_options = dataclasses.replace(
                    options, use_classifier=variant.use_classifier, edit_shape=variant.edit_shape,
                    edit_texture=variant.edit_texture, teeth=variant.teeth and plan.teeth,
                    texture_mode=variant.texture_mode or plan.texture_mode,
                    teeth_gate=plan.teeth_gate if (variant.texture_mode or plan.texture_mode) == "warp" else 0.0)
                schedule = EmotionSchedule.constant(emotion_code_from_alpha(video.emotion, video.alpha))
                VideoEditor(parts=parts, options=variant_options, detector=detector).edit(
                    source.video_path, schedule, video.path)
            files.append(self.rel(video.path))
        return StageResult(outputs={"source": str(source.video_path), "subject": source.key.subject,
                                    "videos": [f"edits/{s.name}.mp4" for s in specs], "seconds_per_edit": timings,
                                    "detector": plan.detector, "frames_with_face": faces,
                                    "recon": parts.provenance.get("bundle", {}).get("recon")},
                           files=tuple(files))

    # ------------------------------------------------------------------ stage: contact sheets
    def contact_sheets(self) -> StageResult:
        import numpy as np

        from emoedit.editing.emotion_code import MAX_LEVEL
        from emoedit.pipeline.contact_sheet import contact_sheet, write_png
        from emoedit.video import read_video

        plan = self.preset.edit
        source = self.source_clip()
        specs = edit_specs(self.preset)
        input_frames, _ = read_video(source.video_path)
        count = input_frames.shape[0]
        columns = sorted({int(round(x)) for x in np.linspace(0, count - 1, plan.sheet_frames)})
        intensity = sorted((s for s in specs if s.emotion == plan.intensity_emotion and s.alpha in plan.intensities),
                           key=lambda s: s.alpha)
        middle = columns[len(columns) // 2]

        def truth_frames(spec: EditSpec) -> np.ndarray:
            from emoedit.demo.evaluation import stored_level

            level = stored_level(spec.alpha, self.world.preset.levels)
            if level is not None:
                frames, _ = read_video(self.world.edit(source, spec.emotion, level).video_path)
                return frames
            return self.world.render_edit(source, spec.emotion, spec.alpha * MAX_LEVEL).frames

        written = []
        for name, load in (("contact_sheet.png", lambda s: read_video(self.edits_dir / f"{s.name}.mp4")[0]),
                           ("contact_sheet_truth.png", truth_frames)):
            loaded = {s.name: load(s) for s in specs}
            rows = [("input (neutral)", [input_frames[c] for c in columns])]
            rows += [(f"{s.emotion}, strength 1", [loaded[s.name][c] for c in columns]) for s in specs
                     if s.alpha == 1.0 and s.emotion in plan.emotions]
            top = contact_sheet(rows, column_labels=[f"frame {c}" for c in columns])
            bottom = contact_sheet([(f"{plan.intensity_emotion}, frame {middle}",
                                     [loaded[s.name][middle] for s in intensity])],
                                   column_labels=[f"strength {s.alpha:.2f}" for s in intensity])
            write_png(self.out / name, _stack_images([top, bottom]))
            written.append(name)
        return StageResult(outputs={"columns": columns, "intensities": [s.alpha for s in intensity],
                                    "sheets": written}, files=tuple(written))

    # ------------------------------------------------------------------ stage: evaluation
    def evaluation_settings(self) -> dict[str, Any]:
        return {**self.preset.evaluation.__dict__, "edits": [s.name for s in edit_specs(self.preset)],
                "ablations": {name: [v.name for v in videos] for name, videos in self.ablation_videos().items()}}

    def evaluation(self) -> StageResult:
        from emoedit.demo.evaluation import (
            EditedVideo,
            EditTargets,
            evaluate_ablations,
            evaluate_edits,
            format_table,
        )

        settings = self.preset.evaluation
        source = self.source_clip()
        targets = EditTargets.every(self.world, source, settings.frame_stride)  # read once for edits and ablations
        edits = [EditedVideo(s.name, s.emotion, s.alpha, self.edits_dir / f"{s.name}.mp4")
                 for s in edit_specs(self.preset)]
        result = evaluate_edits(self.world, source, edits, frame_stride=settings.frame_stride,
                                fit_photo_steps=settings.fit_photo_steps, fit_render_size=settings.fit_render_size,
                                progress=self.progress, targets=targets)
        ablations = self.ablation_videos()
        if ablations:
            result["ablations"] = evaluate_ablations(
                self.world, source, ablations, full=result, frame_stride=settings.frame_stride,
                labels={name: ABLATIONS[name].label for name in ablations}, progress=self.progress, targets=targets)
        table = format_table(result)
        atomic_write_text(self.out / "evaluation.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(self.out / "evaluation.md", table + "\n")
        return StageResult(outputs={"summary": result["summary"]}, files=("evaluation.json", "evaluation.md"))


def _stack_images(images: Sequence[Any]) -> Any:
    """Stack (H, W, 3) uint8 images vertically, padding narrower ones on the right with the sheet background."""
    import numpy as np

    from emoedit.pipeline.contact_sheet import BACKGROUND

    width = max(i.shape[1] for i in images)
    padded = []
    for image in images:
        if image.shape[1] < width:
            pad = np.empty((image.shape[0], width - image.shape[1], 3), dtype=np.uint8)
            pad[:] = BACKGROUND
            image = np.concatenate([image, pad], axis=1)
        padded.append(image)
    gap = np.empty((6, width, 3), dtype=np.uint8)
    gap[:] = BACKGROUND
    out = [padded[0]]
    for image in padded[1:]:
        out += [gap, image]
    return np.concatenate(out, axis=0)


def _restart(out_dir: Path) -> None:
    """Remove what an earlier demo run wrote into ``out_dir`` (only the demo's own files and folders)."""
    for name in OWNED:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_demo(
    preset: str | DemoPreset,  # "quick", "demo", "gpu" or a DemoPreset
    out_dir: str | os.PathLike[str],  # output folder (created); re-running continues where it stopped
    *,
    restart: bool = False,  # first remove everything an earlier run wrote into out_dir
    progress: bool = True,  # progress bars and stage lines
    evaluate: bool = False,  # then the evaluation lane: judges, baselines, harness (emoedit.demo.evaluation_lane)
) -> DemoSummary:
    """Run the demo (see the module docstring); returns where everything is and how long it took.

    Raises :class:`~emoedit.demo.stages.StageSettingsError` when ``out_dir`` holds a run of
    other settings (use another folder or ``restart=True``), and the stage's own error
    otherwise (re-running resumes from the failed stage).
    """
    preset = get_preset(preset)
    if evaluate and preset.evaluate is None:
        raise ValueError(f"preset {preset.name!r} has no evaluation plan (DemoPreset.evaluate); "
                         "--evaluate runs with the presets that have one (quick, demo)")
    if preset.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"preset {preset.name!r} needs CUDA, and torch sees no CUDA device")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if restart:
        _restart(out)
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    threads = torch.get_num_threads()
    previous_sigterm = _sigterm_as_interrupt()
    if preset.device == "cpu":
        # One intra-op thread in this process: the heavy work runs in worker processes (one
        # thread each), and on a busy CPU torch's extra threads spin and slow the small
        # operations of the edit and the evaluation down several-fold (measured: 10x).
        torch.set_num_threads(1)
    try:
        return _run(preset, out, progress=progress, evaluate=evaluate)
    finally:
        torch.set_num_threads(threads)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM raise KeyboardInterrupt in this (main) thread, so that a killed demo stops its
    worker processes on the way out; returns the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def _run(preset: DemoPreset, out: Path, *, progress: bool, evaluate: bool = False) -> DemoSummary:
    started = time.perf_counter()
    machine_start = machine_info()
    runner = StageRunner(out)
    demo = _Demo(preset, out, progress=progress)
    print(f"emoedit demo: preset '{preset.name}' (sized for {format_seconds(preset.budget_seconds)}) → {out}",
          flush=True)
    runner.run("world", demo.world_settings(), demo.make_world,
               title=f"synthetic world '{preset.world.name}' (seed {preset.world_seed})")
    runner.run("preprocess", demo.preprocess_settings(), demo.preprocess,
               title="preprocess front clips: frames, coefficients, UV textures, mouth crops")
    demo.train_all(runner)
    runner.run("directions", demo.directions_settings(runner),
               demo.directions, title="edit directions (eq. 5) from the training records")
    runner.run("bundle", demo.bundle_settings(), demo.bundle, title="bundle the parts")
    runner.run("edit", demo.edit_settings(), demo.edit,
               title=f"edit {demo.source_clip().key.subject}'s neutral clip (unseen subject)")
    runner.run("contact_sheet", {"edits": demo.edit_settings(), "frames": preset.edit.sheet_frames},
               demo.contact_sheets, title="contact sheets")
    record = runner.run("evaluation", demo.evaluation_settings(), demo.evaluation,
                        title="evaluation against the ground-truth edits")
    table = (out / "evaluation.md").read_text(encoding="utf-8").strip()
    lane = None
    if evaluate:
        from emoedit.demo.evaluation_lane import EvaluationLane

        assert preset.evaluate is not None  # checked by run_demo
        lane = EvaluationLane(demo, preset.evaluate).run(runner)
    run_seconds = time.perf_counter() - started
    stage_seconds = {r.name: round(r.seconds, 1) for r in runner.records}
    reused = tuple(r.name for r in runner.records if r.reused)
    total = runner.wall_total(runner.records)
    cpu_total = sum(r.cpu_seconds or 0.0 for r in runner.records)
    summary_file = out / "summary.json"
    body = {"preset": preset.to_json(), "out_dir": str(out), "stage_seconds": stage_seconds,
            "reused_stages": list(reused), "total_seconds": round(total, 1), "cpu_seconds": round(cpu_total, 1),
            "run_seconds": round(run_seconds, 1),
            "budget_seconds": preset.budget_seconds, "machine_at_start": machine_start,
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "stages": {r.name: {"seconds": round(r.seconds, 1), "cpu_seconds": r.cpu_seconds, "outputs": r.outputs,
                                "finished": r.finished, "reused": r.reused}
                       for r in runner.records},
            "evaluation_summary": record.outputs.get("summary")}
    if lane is not None:
        body["evaluate"] = lane.to_json(out)
    atomic_write_text(summary_file, json.dumps(body, indent=2) + "\n")
    specs = edit_specs(preset)
    print("\n" + runner.report())
    load = body["load_average_at_end"]
    if load:
        print(f"load average (1/5/15 min) at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
              f"on {os.cpu_count()} cores")
    print(f"\nEvaluation against the synthetic truth ({demo.source_clip().key.subject}, unseen; "
          f"out = the edit, in = the unedited input, floor = the measurement on the true video):\n\n{table}\n")
    if lane is not None:
        dropped = f"; dropped (no items): {', '.join(lane.dropped_sets)}" if lane.dropped_sets else ""
        print(f"Evaluation harness (judges and baselines trained here; sets {lane.sets}{dropped}; "
              f"{lane.results.relative_to(out)}):\n\n{lane.table_text.strip()}\n")
        print(f"evaluation lane: {format_seconds(lane.wall_seconds)} (training {format_seconds(lane.training_wall_seconds)}"
              f"; sized for {format_seconds(lane.budget_seconds)})")
    print(f"outputs in {out}: edits/*.mp4, contact_sheet.png, contact_sheet_truth.png, evaluation.json, "
          + ("evaluate/tables.md, " if lane is not None else "") + "summary.json")
    return DemoSummary(
        preset=preset.name, out_dir=out, stage_seconds=stage_seconds, reused_stages=reused, total_seconds=total, cpu_seconds=cpu_total,
        run_seconds=run_seconds, videos=tuple(out / "edits" / f"{s.name}.mp4" for s in specs),
        contact_sheet=out / "contact_sheet.png", truth_contact_sheet=out / "contact_sheet_truth.png",
        evaluation=out / "evaluation.json", summary_file=summary_file, table=table, evaluate=lane,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emoedit.demo.run ...`` = ``emoedit demo ...`` (one command line, in :mod:`emoedit.cli`)."""
    from emoedit.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
