#!/usr/bin/env python
"""Measured figures of the 3D reconstruction part on the built-in synthetic world.

    python scripts/recon_demo_world.py                       # demo world, seed 0, experiment=demo
    python scripts/recon_demo_world.py --max-steps 100 --work outputs/results/recon_quick

Steps (each resumes: an interrupted run picks up where it stopped):

1. generate the synthetic world ``--preset`` / ``--seed`` (:func:`generate_world`) into
   ``--world`` (default ``WORK/world``); a complete world of the same preset and seed is only read;
2. preprocess stage ``align`` (truth landmarks, crop size of the experiment, views
   front + left_30 + right_30) into ``WORK/cache/frames`` with ``coeffs_true``;
3. train the regressor with ``train.run`` and ``experiment=<preset>`` on the training
   subjects' frontal training clips: the datamodule keeps ``view == front`` and puts every
   frontal evaluation clip of the world (unseen subjects, held-out neutral clips of the
   training subjects) into ``data.val_keys`` (``split_by=clip``), so none is trained on.
   The evaluation uses ``last.ckpt`` (never the "best" one: validation holds the test clips);
4. evaluate on the unseen subjects: their frontal talking clips, the world's ground-truth
   edits of those clips into every emotion and level (aligned here with the same library
   functions as the preprocessing), and the same for their ``left_30`` / ``right_30``
   clips (unseen poses); plus the held-out clips and a sample of training clips of the
   seen subjects. Per set and method: mean 68-landmark error in crop px × 224 / S, mean
   absolute error of the expression coefficients (and its ratio to the mean absolute true
   coefficient), mean vertex distance of the pose-free shape (mm). Methods: the regressor;
   the regressor with its expression zeroed; the mean face (id = exp = 0) posed by the
   regressor; the optimisation fitter on a subset (``--fitter-clips`` clips per subject,
   first ``--fitter-frames`` frames) next to the regressor on the same frames; and the
   true coefficients themselves (a check of the metric: the landmark error is the
   re-fit residual of ``coeffs_true``, the rest 0).

Writes ``WORK/recon_demo_world.json`` and ``WORK/recon_demo_world.md`` (the table), and
prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # train.py and the top-level packages live at the repo root
    sys.path.insert(0, str(REPO_ROOT))

from emoedit.atomic_io import atomic_write_text  # noqa: E402
from emoedit.data.alignment import AlignmentTemplate, face_crop_transform, warp_to_crop  # noqa: E402
from emoedit.data.cache_reader import CacheReader  # noqa: E402
from emoedit.data.preprocess import PreprocessConfig, run_preprocess, truth_to_crop_camera  # noqa: E402
from emoedit.data.synthetic import SyntheticWorld, generate_world  # noqa: E402
from emoedit.face_model import MorphableModel, PerspectiveCamera  # noqa: E402
from emoedit.machine import machine_info  # noqa: E402
from emoedit.metrics.geometry import MM_PER_MODEL_UNIT  # noqa: E402  (face-model space is in decimetres)
from emoedit.reconstruction import FitterConfig, FittingReconstructor, RegressorReconstructor  # noqa: E402
from emoedit.shape_checks import assert_shape  # noqa: E402
from emoedit.video import read_video  # noqa: E402

DEEP3D_CROP = 224  # landmark errors are reported at Deep3D's crop scale
VIEWS = ("front", "left_30", "right_30")
SIDE_VIEWS = ("left_30", "right_30")
METHODS = ("regressor", "regressor_exp0", "mean_face", "regressor@fitter_subset", "fitter", "truth")
METHOD_LABELS = {
    "regressor": "regressor",
    "regressor_exp0": "regressor, expression zeroed",
    "mean_face": "mean face (id = exp = 0), regressor pose",
    "regressor@fitter_subset": "regressor, fitter's frames",
    "fitter": "optimisation fitter",
    "truth": "true coefficients (checks the metric: ≈ 0)",
}
SET_LABELS = {
    "unseen_front_talking": "unseen subjects, front, talking (neutral)",
    "unseen_front_emotional": "unseen subjects, front, emotional (GT edits, 7 emotions × 3 levels)",
    "unseen_side_talking": "unseen subjects, left/right 30° (unseen pose), talking",
    "unseen_side_emotional": "unseen subjects, left/right 30°, emotional (GT edits)",
    "seen_heldout_talking": "training subjects, held-out clips, front, talking",
    "seen_train_sample": "training subjects, training clips (sample)",
}


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class DemoSettings:
    """Everything one run needs (the CLI fills it; tests use tiny values)."""

    work: Path  # output folder (world, caches, run, results)
    world: Path  # synthetic world folder
    preset: str  # synthetic world preset and experiment name ("demo", "tiny")
    seed: int  # world seed and training seed
    max_steps: int | None  # training step budget; None: the experiment's
    fitter: FitterConfig  # fitter settings of the reference
    fitter_frames: int  # frames per clip given to the fitter (the first ones)
    fitter_clips: int  # clips per unseen subject and set given to the fitter
    train_sample_every: int  # every n-th training clip is evaluated (seen_train_sample)
    threads: int = 1  # torch threads
    train_overrides: tuple[str, ...] = ()  # extra train.py key=value overrides
    progress: bool = False  # progress bars of the world generation / training

    @property
    def cache_root(self) -> Path:
        return self.work / "cache"

    @property
    def run_dir(self) -> Path:
        return self.work / "run"


# --------------------------------------------------------------------------- world and cache
def ensure_world(world_dir: Path, preset: str, seed: int, *, progress: bool) -> tuple[SyntheticWorld, dict[str, Any]]:
    """Open the complete world ``(preset, seed)`` in ``world_dir``, generating (or finishing) it first if needed."""
    start = time.perf_counter()
    generated = False
    description = world_dir / "truth" / "world.json"
    complete = False
    if description.is_file():
        data = json.loads(description.read_text(encoding="utf-8"))
        if data.get("preset", {}).get("name") != preset or int(data.get("seed", -1)) != seed:
            raise ValueError(f"{world_dir}: holds the world {data.get('preset', {}).get('name')!r} seed "
                             f"{data.get('seed')}, not {preset!r} seed {seed}")
        complete = bool(data.get("complete"))
    if not complete:
        generate_world(world_dir, preset, seed, progress=progress, torch_threads=torch.get_num_threads())
        generated = True
    world = SyntheticWorld.open(world_dir)
    return world, {"path": str(world_dir), "generated_now": generated, "seconds": time.perf_counter() - start}


def build_frames_cache(world: SyntheticWorld, cache_root: Path, crop_size: int) -> dict[str, Any]:
    """Stage ``align`` over the world's MEAD clips (truth landmarks, all three views)."""
    config = PreprocessConfig(
        input_kind="mead", inputs=(str(world.root / "mead"),), output_dir=str(cache_root), stage="align",
        detector="truth", crop_size=crop_size, views=VIEWS, workers=1, torch_threads=torch.get_num_threads(),
        progress=False,
    )
    summary = run_preprocess(config)
    return summary.to_json()


# --------------------------------------------------------------------------- training
def training_split(world: SyntheticWorld, reader: CacheReader) -> tuple[list[str], list[str]]:
    """``(val_keys, train_clips)``: every frontal evaluation clip goes to validation (never trained on).

    Raises ``ValueError`` if a clip of an unseen subject or a held-out clip would be trained on.
    """
    front = set(reader.records(view="front").unique("clip"))
    val_keys = sorted(r.key.clip_id for r in world.clips(role="eval", view="front"))
    missing = [k for k in val_keys if k not in front]
    if missing:
        raise ValueError(f"{reader.root}: evaluation clips missing from the frames cache: {missing[:5]}")
    train = sorted(front - set(val_keys))
    unseen = set(world.unseen_subjects)
    held_out = {(s, c) for s, clips in world.split.held_out_neutral_clips.items() for c in clips}
    for cid in train:
        subject, _view, emotion, _level, name = cid.split("/")
        if subject in unseen or (emotion == "neutral" and (subject, name) in held_out):
            raise ValueError(f"training split would contain the evaluation clip {cid}")
    return val_keys, train


def train_regressor(settings: DemoSettings, world: SyntheticWorld, val_keys: Sequence[str]) -> dict[str, Any]:
    """Train (or finish training) the regressor with train.run; returns what was done."""
    import train as train_entry

    from emoedit.config import compose_config, config_to_plain
    from lightning_modules.recon import ReconRunConfig

    summary_file = settings.run_dir / "train_summary.json"
    last = settings.run_dir / "checkpoints" / "last.ckpt"
    overrides = [
        f"experiment={settings.preset}",
        f"data.cache_dir={settings.cache_root / 'frames'}",
        "data.views=[front]",
        "data.split_by=clip",
        f"data.val_keys={json.dumps(list(val_keys))}",
        f"model.face_model={world.root / 'truth' / 'face_model.pt'}",
        f"output_dir={settings.run_dir}",
        f"seed={settings.seed}",
        "ckpt_path=last",
        "logger.kind=csv",
        f"trainer.enable_progress_bar={str(settings.progress).lower()}",
        *([f"trainer.max_steps={settings.max_steps}"] if settings.max_steps is not None else []),
        *settings.train_overrides,
    ]
    cfg = compose_config(ReconRunConfig, part="recon", config_dir=train_entry.CONFIG_DIR, overrides=overrides)
    max_steps = int(cfg.trainer.get("max_steps", -1))
    if summary_file.is_file() and last.is_file():
        done = json.loads(summary_file.read_text(encoding="utf-8"))
        if done.get("max_steps") == max_steps and done.get("steps") == max_steps:
            done["reused"] = True
            done["model"] = config_to_plain(cfg.model)
            return done
    start = time.perf_counter()
    trainer = train_entry.run(train_entry._parts()["recon"], cfg)
    seconds = time.perf_counter() - start
    datamodule = trainer.datamodule
    done = {
        "max_steps": max_steps,
        "steps": int(trainer.global_step),
        "seconds": seconds,
        "seconds_per_step": seconds / max(1, int(trainer.global_step)),
        "train_records": len(datamodule.train_index) if datamodule is not None else None,
        "val_records": len(datamodule.val_index) if datamodule is not None else None,
        "model": config_to_plain(cfg.model),
        "batch_size": int(cfg.data.batch_size),
        "checkpoint": str(last),
        "val_metrics": _last_val_metrics(settings.run_dir / "csv" / "metrics.csv"),
        "reused": False,
    }
    atomic_write_text(summary_file, json.dumps(done, indent=2) + "\n")
    return done


def _last_val_metrics(path: Path) -> dict[str, float]:
    """The last logged recon/val/* values of the CSV logger (empty without)."""
    if not path.is_file():
        return {}
    import csv

    values: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key and key.startswith("recon/val/") and value not in ("", None):
                    values[key] = float(value)
    return values


# --------------------------------------------------------------------------- evaluation data
@dataclass(frozen=True)
class EvalClip:
    """One clip ready for evaluation (crop camera of size S)."""

    name: str  # clip id (MEAD clip id, or "edit:<source>/<emotion>/<level>")
    subject: str
    crops: Tensor  # (T, 3, S, S) uint8
    landmarks: Tensor  # (T, 68, 2) float32 true landmarks, crop px
    coeffs_true: Tensor  # (T, L) float32 true coefficients for the crop camera


def cache_clip(reader: CacheReader, cid: str) -> EvalClip:
    """A clip of the frames cache."""
    data = reader.load_clip(cid, fields=("crop", "landmarks", "coeffs_true"))
    return EvalClip(name=cid, subject=str(data["subject"][0]), crops=data["crop"], landmarks=data["landmarks"].float(),
                    coeffs_true=data["coeffs_true"].float())


def aligned_edit(world: SyntheticWorld, edit: Any, model: MorphableModel, template: AlignmentTemplate,
                 crop_size: int) -> EvalClip:
    """A ground-truth edit aligned like the preprocessing aligns a MEAD clip (truth landmarks,
    Deep3D 5-point alignment, uint8 crop, truth re-fitted to the crop camera)."""
    truth = world.load_truth(edit)
    frames, _info = read_video(edit.video_path)
    count = min(frames.shape[0], truth.landmarks.shape[0])
    images = torch.from_numpy(frames[:count]).permute(0, 3, 1, 2).float().div_(255.0)
    points = truth.landmarks[:count].float()
    transform = face_crop_transform(points, template, frame_size=tuple(images.shape[-2:]), crop_size=crop_size)
    crops = warp_to_crop(images, transform).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    coeffs, _residual = truth_to_crop_camera(model, truth.coeffs[:count].float(), truth.perspective_camera(), transform,
                                             PerspectiveCamera().scaled(crop_size))
    key = edit.key
    return EvalClip(name=f"edit:{key.source.clip_id}/{key.emotion}/{key.level}", subject=key.source.subject,
                    crops=crops, landmarks=transform.frame_to_crop(points).float(), coeffs_true=coeffs.float())


def eval_sets(world: SyntheticWorld, reader: CacheReader, model: MorphableModel, crop_size: int,
              train_clips: Sequence[str], train_sample_every: int) -> dict[str, list[Any]]:
    """Set name → list of loaders (callables returning an :class:`EvalClip`), built lazily."""
    template = AlignmentTemplate.from_face_model(model)
    unseen = set(world.unseen_subjects)
    sets: dict[str, list[Any]] = {name: [] for name in SET_LABELS}
    for record in world.clips(role="eval", emotion="neutral"):
        key = record.key
        cid = key.clip_id
        side = key.view in SIDE_VIEWS
        if key.subject in unseen:
            sets["unseen_side_talking" if side else "unseen_front_talking"].append(lambda c=cid: cache_clip(reader, c))
            for edit in world.edits(source=record):
                target = "unseen_side_emotional" if side else "unseen_front_emotional"
                sets[target].append(lambda e=edit: aligned_edit(world, e, model, template, crop_size))
        elif key.view == "front":
            sets["seen_heldout_talking"].append(lambda c=cid: cache_clip(reader, c))
    for cid in list(train_clips)[:: max(1, train_sample_every)]:
        sets["seen_train_sample"].append(lambda c=cid: cache_clip(reader, c))
    return {name: loaders for name, loaders in sets.items() if loaders}


# --------------------------------------------------------------------------- metrics
@dataclass
class MetricSums:
    """Running sums of one (set, method)."""

    frames: int = 0
    clips: int = 0
    landmark_px: float = 0.0  # Σ over frames of the mean 68-point error, 224-px units
    exp_abs_error: float = 0.0  # Σ |Δexp| over frames and coefficients
    exp_abs_true: float = 0.0  # Σ |exp_true|
    exp_count: int = 0  # frames × K_exp
    vertex_mm: float = 0.0  # Σ over frames of the mean vertex distance, mm

    def add(self, model: MorphableModel, camera: PerspectiveCamera, coeffs: Tensor, clip: EvalClip,
            frames: slice = slice(None)) -> None:
        """Accumulate predicted ``coeffs`` (T', L) against ``clip``'s truth on ``frames``."""
        layout = model.layout
        true = clip.coeffs_true[frames]
        assert_shape(coeffs, (true.shape[0], layout.size), "coeffs")
        with torch.no_grad():
            pred = layout.split(coeffs.float())
            truth = layout.split(true)
            points = model(coeffs.float(), camera).landmarks
            error = torch.linalg.norm(points - clip.landmarks[frames], dim=-1).mean(dim=1)
            scale = DEEP3D_CROP / camera.image_size
            shape_pred = model.shape(pred.id_coeff, pred.exp_coeff)
            shape_true = model.shape(truth.id_coeff, truth.exp_coeff)
            vertex = torch.linalg.norm(shape_pred - shape_true, dim=-1).mean(dim=1) * MM_PER_MODEL_UNIT
        self.frames += int(true.shape[0])
        self.clips += 1
        self.landmark_px += float(error.sum()) * scale
        self.exp_abs_error += float((pred.exp_coeff - truth.exp_coeff).abs().sum())
        self.exp_abs_true += float(truth.exp_coeff.abs().sum())
        self.exp_count += int(truth.exp_coeff.numel())
        self.vertex_mm += float(vertex.sum())

    def to_json(self) -> dict[str, Any]:
        n = max(1, self.frames)
        return {
            "clips": self.clips,
            "frames": self.frames,
            "landmark_px_224": self.landmark_px / n,
            "exp_mae": self.exp_abs_error / max(1, self.exp_count),
            "exp_true_mean_abs": self.exp_abs_true / max(1, self.exp_count),
            "exp_rel_error": self.exp_abs_error / self.exp_abs_true if self.exp_abs_true > 0 else float("nan"),
            "vertex_mm": self.vertex_mm / n,
        }


def _zeroed(model: MorphableModel, coeffs: Tensor, blocks: Iterable[str]) -> Tensor:
    out = coeffs.clone()
    for block in blocks:
        out[:, model.layout.slices[block]] = 0.0
    return out


def fitter_choice(loaders: Sequence[Any], subjects: Sequence[str], per_subject: int, seed: int) -> set[int]:
    """Indices of the loaders given to the fitter: ``per_subject`` per subject, seeded."""
    by_subject: dict[str, list[int]] = {}
    for index, subject in enumerate(subjects):
        by_subject.setdefault(subject, []).append(index)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for subject in sorted(by_subject):
        indices = by_subject[subject]
        chosen.update(rng.sample(indices, min(per_subject, len(indices))))
    return chosen


def evaluate(settings: DemoSettings, world: SyntheticWorld, checkpoint: Path, train_clips: Sequence[str]) -> dict[str, Any]:
    """Every set × method (see the module docstring)."""
    model = world.face_model()
    reader = CacheReader.open(settings.cache_root / "frames")
    recon = RegressorReconstructor.from_checkpoint(checkpoint, model)
    crop_size = int(reader.spec.fields["crop"].shape[-1])
    camera = PerspectiveCamera().scaled(crop_size)
    fitter = FittingReconstructor(face_model=model, crop_size=crop_size, config=settings.fitter,
                                  chunk_size=max(1, settings.fitter_frames))
    sets = eval_sets(world, reader, model, crop_size, train_clips, settings.train_sample_every)
    results: dict[str, Any] = {}
    seconds = {"load": 0.0, "regressor": 0.0, "fitter": 0.0}
    fitter_frames = 0
    for set_name, loaders in sets.items():
        sums = {m: MetricSums() for m in METHODS}
        start = time.perf_counter()
        clips = [load() for load in loaders]
        seconds["load"] += time.perf_counter() - start
        use_fitter = set_name.startswith("unseen") and settings.fitter_clips > 0 and settings.fitter_frames > 0
        chosen = (fitter_choice(clips, [c.subject for c in clips], settings.fitter_clips, settings.seed)
                  if use_fitter else set())
        for index, clip in enumerate(clips):
            crops = clip.crops.float().div(255.0)
            start = time.perf_counter()
            coeffs = recon.regress(crops)
            seconds["regressor"] += time.perf_counter() - start
            sums["regressor"].add(model, camera, coeffs, clip)
            sums["regressor_exp0"].add(model, camera, _zeroed(model, coeffs, ("exp",)), clip)
            sums["mean_face"].add(model, camera, _zeroed(model, coeffs, ("id", "exp")), clip)
            sums["truth"].add(model, camera, clip.coeffs_true, clip)
            if index in chosen:
                part = slice(0, settings.fitter_frames)
                start = time.perf_counter()
                fitted = fitter.reconstruct_clip(crops[part], clip.landmarks[part])
                seconds["fitter"] += time.perf_counter() - start
                fitter_frames += int(fitted.shape[0])
                sums["fitter"].add(model, camera, fitted, clip, part)
                sums["regressor@fitter_subset"].add(model, camera, coeffs[part], clip, part)
        results[set_name] = {
            "label": SET_LABELS[set_name],
            "methods": {m: s.to_json() for m, s in sums.items() if s.frames > 0},
        }
    return {
        "crop_size": crop_size,
        "checkpoint": str(checkpoint),
        "sets": results,
        "seconds": seconds,
        "fitter": {
            "config": dataclasses.asdict(settings.fitter),
            "frames_per_clip": settings.fitter_frames,
            "clips_per_subject_and_set": settings.fitter_clips,
            "frames_fitted": fitter_frames,
            "seconds_per_frame": seconds["fitter"] / max(1, fitter_frames),
        },
    }


# --------------------------------------------------------------------------- report
def format_table(evaluation: dict[str, Any]) -> str:
    """The results as a markdown table."""
    lines = [
        "| set | method | clips | frames | landmark err. (px @224) | exp. coeff. MAE | exp. MAE / mean abs true exp. | vertex err. (mm) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in evaluation["sets"].items():
        for method in METHODS:
            values = entry["methods"].get(method)
            if values is None:
                continue
            lines.append(
                f"| {entry['label']} | {METHOD_LABELS[method]} | {values['clips']} | {values['frames']} | "
                f"{values['landmark_px_224']:.2f} | {values['exp_mae']:.3f} | {values['exp_rel_error']:.2f} | "
                f"{values['vertex_mm']:.2f} |"
            )
    return "\n".join(lines)


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; writes and returns the results."""
    torch.set_num_threads(settings.threads)
    settings.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    world, world_info = ensure_world(settings.world, settings.preset, settings.seed, progress=settings.progress)

    import train as train_entry

    from emoedit.config import compose_config
    from lightning_modules.recon import ReconRunConfig

    base = compose_config(ReconRunConfig, part="recon", config_dir=train_entry.CONFIG_DIR,
                          overrides=[f"experiment={settings.preset}"])
    crop_size = int(base.model.crop_size)
    start = time.perf_counter()
    preprocess = build_frames_cache(world, settings.cache_root, crop_size)
    preprocess_seconds = time.perf_counter() - start
    reader = CacheReader.open(settings.cache_root / "frames")
    val_keys, train_clips = training_split(world, reader)
    training = train_regressor(settings, world, val_keys)
    start = time.perf_counter()
    evaluation = evaluate(settings, world, Path(training["checkpoint"]), train_clips)
    evaluation["seconds_total"] = time.perf_counter() - start
    results = {
        "script": "scripts/recon_demo_world.py",
        "machine": machine_info(),
        "preset": settings.preset,
        "seed": settings.seed,
        "world": {**world_info, "train_subjects": list(world.train_subjects), "unseen_subjects": list(world.unseen_subjects),
                  "clips": len(world.clips()), "edits": len(world.edits())},
        "preprocess": {"summary": preprocess, "seconds": preprocess_seconds},
        "split": {"train_clips": len(train_clips), "val_keys": len(val_keys)},
        "training": training,
        "evaluation": evaluation,
        "seconds_total": time.perf_counter() - started,
    }
    table = format_table(evaluation)
    atomic_write_text(settings.work / "recon_demo_world.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(settings.work / "recon_demo_world.md", table + "\n")
    return results


def parse_args(argv: Sequence[str] | None = None) -> DemoSettings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "outputs" / "results" / "recon", help="output folder")
    parser.add_argument("--world", type=Path, default=None, help="synthetic world folder (default WORK/world)")
    parser.add_argument("--preset", default="demo", help="world preset and experiment name (default demo)")
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps (default: the experiment's)")
    parser.add_argument("--fitter-frames", type=int, default=12, help="first frames of a clip given to the fitter")
    parser.add_argument("--fitter-clips", type=int, default=2, help="fitter clips per unseen subject and set")
    parser.add_argument("--train-sample-every", type=int, default=10, help="evaluate every n-th training clip")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("overrides", nargs="*", help="extra train.py key=value overrides")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    return DemoSettings(
        work=work, world=(args.world or work / "world").resolve(), preset=args.preset, seed=args.seed,
        max_steps=args.max_steps, fitter=FitterConfig(), fitter_frames=args.fitter_frames,
        fitter_clips=args.fitter_clips, train_sample_every=args.train_sample_every, threads=args.threads,
        train_overrides=tuple(args.overrides), progress=args.progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    results = run_demo(settings)
    training = results["training"]
    print(f"preset {results['preset']}, seed {results['seed']}, {training['steps']} steps "
          f"({training['seconds']:.0f} s), total {results['seconds_total']:.0f} s")
    print(format_table(results["evaluation"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
