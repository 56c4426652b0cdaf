#!/usr/bin/env python
"""Measured figures of the geometry editor (METHOD.md §3.6) on a synthetic world.

    # evaluate a trained editor on a world's coeffs cache
    python scripts/geometry_demo_world.py --world W --cache W_PRE/coeffs --checkpoint runs/geometry/x/checkpoints/last.ckpt
    # or train it first (train.run, experiment=demo plus any key=value overrides), then evaluate
    python scripts/geometry_demo_world.py --world W --cache W_PRE/coeffs --train --max-steps 3000

Inputs: a synthetic world (``emoedit synth``; its ground-truth edits are the reference) and
its ``coeffs`` cache (``emoedit preprocess`` stage ``reconstruct``, front view at least).

Training (``--train``; resumes with ``ckpt_path=last``): ``train.run`` of part
``geometry`` with ``experiment=<preset>``, the world's face model, and
``data.exclude = {subject: unseen subjects, clip: every evaluation clip}`` so that neither
the unseen subjects nor the held-out neutral clips of the seen subjects are trained on.

Evaluation. Sources: the world's neutral evaluation clips in ``--views`` (default front),
split into ``unseen`` (the unseen subjects) and ``seen_heldout`` (held-out neutral clips
of the training subjects). Each source clip's frames (from the cache, field
``--input-field``) are edited with :func:`~emoedit.networks.geometry_editor.edit_geometry`
into every emotion at levels 1, 2, 3 with the clip's own frames as the neutral reference
(``s_ref`` = their mean), and compared, frame by frame, with the world's ground-truth edit
of the same clip (same speech, same motion) — pose-free shapes ``V(id, exp)`` of the world's
face model, in millimetres:

- ``vertex_err_mm``: mean over vertices of ``‖V(edit) − V(truth)‖`` (the geometry error);
- ``upper_err_mm``: the same over the brow and eye landmarks only (the region the lip
  loss does not constrain; emotions of the world that open the mouth make the whole-face
  error include what the lip loss forbids on purpose);
- ``lip_change_mm``: ``|d(edit) − d(input)|`` of the outer (52/58) and inner (63/67)
  mouth openings, averaged over the two pairs (lip sync kept = 0); also for the truth;
- ``magnitude_mm``: mean over vertices of ``‖V(edit) − V(input)‖`` (how far the edit moves);
  G is also run at levels 0.5, 1.5, 2.5 to show continuous intensity control.

Methods: ``no_edit`` (the input itself), ``mean_offset`` (the input's expression plus the
mean expression change of each emotion and level over the training subjects' frames in
the cache: a subject-agnostic, data-driven baseline) and ``editor`` (G).

Writes ``--out/geometry_demo_world.json`` and ``.md`` (the tables) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # train.py and the top-level packages live at the repo root
    sys.path.insert(0, str(REPO_ROOT))

from emoedit.atomic_io import atomic_write_text  # noqa: E402
from emoedit.data.cache_reader import CacheReader, RecordIndex  # noqa: E402
from emoedit.data.synthetic import SyntheticWorld  # noqa: E402
from emoedit.editing.emotion_code import EMOTIONS, MAX_LEVEL, emotion_code_from_level  # noqa: E402
from emoedit.face_model import MorphableModel  # noqa: E402
from emoedit.losses.geometry import LANDMARK_REGIONS, LIP_PAIRS  # noqa: E402
from emoedit.machine import machine_info  # noqa: E402
from emoedit.metrics.geometry import MM_PER_MODEL_UNIT  # noqa: E402  (face-model space is in decimetres)
from emoedit.networks.geometry_editor import GeometryGenerator, ShapeCoeffLayout, edit_geometry  # noqa: E402

UPPER_FACE = LANDMARK_REGIONS["brows"] + LANDMARK_REGIONS["eyes"]  # landmarks away from the mouth
LEVELS = (1, 2, 3)
CONTINUOUS_LEVELS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
METHODS = ("no_edit", "mean_offset", "editor")
SETS = ("unseen", "seen_heldout")
SET_LABELS = {"unseen": "unseen subjects", "seen_heldout": "seen subjects, held-out neutral clips"}


@dataclass(frozen=True)
class Settings:
    world: Path  # synthetic world folder
    cache: Path  # its coeffs cache
    checkpoint: Path | None  # trained geometry checkpoint (None with --train: WORK/run/checkpoints/last.ckpt)
    out: Path  # output folder
    input_field: str  # cache field edited: "coeffs" (reconstruction) or "coeffs_true"
    views: tuple[str, ...]  # views of the source clips
    train: bool  # train before evaluating
    preset: str  # experiment name for training
    max_steps: int | None  # training steps (None: the experiment's)
    seed: int  # training seed
    overrides: tuple[str, ...]  # extra train.py overrides


# --------------------------------------------------------------------------- training
def training_exclusions(world: SyntheticWorld) -> dict[str, list[str]]:
    """What training must not see: the unseen subjects and every evaluation clip (all views)."""
    return {"subject": sorted(world.unseen_subjects), "clip": sorted(r.key.clip_id for r in world.clips(role="eval"))}


def train_editor(settings: Settings, world: SyntheticWorld) -> dict[str, Any]:
    """Train (or finish training) the editor with train.run into ``out/run``."""
    import train as train_entry

    from datamodules.coefficients import CoefficientDataModule
    from emoedit.config import compose_config
    from lightning_modules.geometry import GeometryRunConfig, GeometrySystem

    run_dir = settings.out / "run"
    overrides = [
        f"experiment={settings.preset}",
        f"data.cache_dir={settings.cache}",
        f"data.exclude={json.dumps(training_exclusions(world))}",
        f"model.face_model={world.root / 'truth' / 'face_model.pt'}",
        f"output_dir={run_dir}",
        f"seed={settings.seed}",
        "ckpt_path=last",
        "logger.kind=csv",
        "trainer.enable_progress_bar=false",
        *([f"trainer.max_steps={settings.max_steps}"] if settings.max_steps is not None else []),
        *settings.overrides,
    ]
    cfg = compose_config(GeometryRunConfig, part="geometry", config_dir=train_entry.CONFIG_DIR, overrides=overrides)
    start = time.perf_counter()
    spec = train_entry.PartSpec(GeometrySystem, CoefficientDataModule, GeometryRunConfig, "geometry editor")
    trainer = train_entry.run(spec, cfg)
    seconds = time.perf_counter() - start
    datamodule = trainer.datamodule
    return {
        "steps": int(trainer.global_step),
        "seconds": seconds,
        "train_records": len(datamodule.train_index) if datamodule is not None else None,
        "model": json.loads(json.dumps(dict(cfg.model), default=str)),
        "data": {"batch_size": int(cfg.data.batch_size), "coeff_field": str(cfg.data.coeff_field)},
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "overrides": overrides,
    }


# --------------------------------------------------------------------------- pieces
def shape_vertices_mm(model: MorphableModel, shape_layout: ShapeCoeffLayout, coeffs: Tensor) -> Tensor:
    """Full coefficients ``(T, L)`` → pose-free vertices ``(T, V, 3)`` in mm."""
    id_coeff, exp_coeff = shape_layout.split(shape_layout.extract(model.layout, coeffs.float()))
    return model.shape(id_coeff, exp_coeff) * MM_PER_MODEL_UNIT


def lip_distances_mm(model: MorphableModel, vertices_mm: Tensor) -> Tensor:
    """``(T, V, 3)`` → ``(T, 2)`` outer / inner mouth openings (distance, mm)."""
    landmarks = vertices_mm[:, model.landmark_ids]
    return torch.stack([(landmarks[:, a] - landmarks[:, b]).norm(dim=-1) for a, b in LIP_PAIRS], dim=1)


def mean_offsets(reader: CacheReader, index: RecordIndex, model: MorphableModel, field: str) -> Tensor:
    """``(E_t, 3, K_exp)``: mean over training subjects of (mean exp of emotion e, level l) − (mean neutral exp)."""
    layout = model.layout
    sums: dict[tuple[str, str, int], Tensor] = {}
    counts: dict[tuple[str, str, int], int] = defaultdict(int)
    for clip in index.unique("clip"):
        records = reader.load_clip(str(clip), [field])
        exp = layout.split(records[field].float()).exp_coeff
        key = (str(records["subject"][0]), str(records["emotion"][0]), int(records["level"][0]))
        sums[key] = sums.get(key, torch.zeros(layout.exp)) + exp.sum(0)
        counts[key] += exp.shape[0]
    offsets = torch.zeros(len(EMOTIONS), len(LEVELS), layout.exp)
    for e, emotion in enumerate(EMOTIONS):
        for j, level in enumerate(LEVELS):
            deltas = []
            for subject, name, lvl in sums:
                if name != emotion or lvl != level or (subject, "neutral", 1) not in sums:
                    continue
                neutral = sums[(subject, "neutral", 1)] / counts[(subject, "neutral", 1)]
                deltas.append(sums[(subject, name, lvl)] / counts[(subject, name, lvl)] - neutral)
            if deltas:
                offsets[e, j] = torch.stack(deltas).mean(0)
    return offsets


# --------------------------------------------------------------------------- evaluation
def evaluate(settings: Settings, world: SyntheticWorld, reader: CacheReader, generator: GeometryGenerator,
             model: MorphableModel) -> dict[str, Any]:
    """Every source clip × emotion × level: errors of each method (see the module docstring)."""
    shape_layout = generator.shape_layout
    layout = model.layout
    excluded = training_exclusions(world)
    train_index = reader.records()
    train_index = train_index.select(~train_index.mask("subject", excluded["subject"]))
    train_index = train_index.select(~train_index.mask("clip", excluded["clip"]))
    offsets = mean_offsets(reader, train_index, model, settings.input_field)
    rows: list[dict[str, Any]] = []
    continuous: dict[str, list[list[float]]] = {s: [] for s in SETS}
    unseen = set(world.unseen_subjects)
    for source in world.eval_clips():
        if source.key.view not in settings.views:
            continue
        set_name = "unseen" if source.subject in unseen else "seen_heldout"
        cid = source.key.clip_id
        if cid not in reader.clips:
            print(f"warning: {cid} is not in the cache; skipped")
            continue
        records = reader.load_clip(cid, [settings.input_field])
        coeffs = records[settings.input_field].float()
        frames = torch.tensor(records["frame"], dtype=torch.int64)
        input_vertices = shape_vertices_mm(model, shape_layout, coeffs)
        input_lips = lip_distances_mm(model, input_vertices)
        magnitudes = []
        for level in CONTINUOUS_LEVELS:
            per_emotion = []
            for e in range(len(EMOTIONS)):
                codes = torch.zeros(len(coeffs), len(EMOTIONS))
                codes[:, e] = level / MAX_LEVEL
                edited = edit_geometry(generator, model, coeffs, codes, coeffs)
                per_emotion.append(float((shape_vertices_mm(model, shape_layout, edited) - input_vertices)
                                         .norm(dim=-1).mean()))
            magnitudes.append(sum(per_emotion) / len(per_emotion))
        continuous[set_name].append(magnitudes)
        for e, emotion in enumerate(EMOTIONS):
            for j, level in enumerate(LEVELS):
                truth = world.load_truth(world.edit(source, emotion, level))
                true_coeffs = truth.coeffs[frames].float()
                true_vertices = shape_vertices_mm(model, ShapeCoeffLayout.from_layout(truth.layout), true_coeffs)
                codes = emotion_code_from_level(emotion, level).expand(len(coeffs), -1).clone()
                edited = edit_geometry(generator, model, coeffs, codes, coeffs)
                id_coeff, exp_coeff = shape_layout.split(shape_layout.extract(layout, coeffs))
                offset = shape_layout.replace(layout, coeffs, shape_layout.join(id_coeff, exp_coeff + offsets[e, j]))
                predictions = {"no_edit": coeffs, "mean_offset": offset, "editor": edited}
                row: dict[str, Any] = {"set": set_name, "clip": cid, "emotion": emotion, "level": level,
                                       "frames": len(coeffs)}
                for method, predicted in predictions.items():
                    vertices = shape_vertices_mm(model, shape_layout, predicted)
                    row[f"{method}/vertex_err_mm"] = float((vertices - true_vertices).norm(dim=-1).mean())
                    upper = model.landmark_ids[list(UPPER_FACE)]
                    row[f"{method}/upper_err_mm"] = float((vertices[:, upper] - true_vertices[:, upper]).norm(dim=-1).mean())
                    row[f"{method}/lip_change_mm"] = float((lip_distances_mm(model, vertices) - input_lips).abs().mean())
                    row[f"{method}/magnitude_mm"] = float((vertices - input_vertices).norm(dim=-1).mean())
                row["truth/lip_change_mm"] = float((lip_distances_mm(model, true_vertices) - input_lips).abs().mean())
                row["truth/magnitude_mm"] = float((true_vertices - input_vertices).norm(dim=-1).mean())
                rows.append(row)
    return {"rows": rows, "continuous_levels": list(CONTINUOUS_LEVELS),
            "continuous_magnitude_mm": {s: _mean_columns(v) for s, v in continuous.items()}}


def _mean_columns(values: list[list[float]]) -> list[float]:
    if not values:
        return []
    return [sum(col) / len(col) for col in zip(*values)]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per set, per (emotion, level) and per level."""
    metrics = [k for k in rows[0] if "/" in k] if rows else []
    out: dict[str, Any] = {}
    for set_name in SETS:
        chosen = [r for r in rows if r["set"] == set_name]
        if not chosen:
            continue

        def mean(group: list[dict[str, Any]]) -> dict[str, float]:
            return {m: sum(r[m] for r in group) / len(group) for m in metrics}

        by_key = defaultdict(list)
        by_level = defaultdict(list)
        for r in chosen:
            by_key[(r["emotion"], r["level"])].append(r)
            by_level[r["level"]].append(r)
        out[set_name] = {
            "clips": len({r["clip"] for r in chosen}),
            "all": mean(chosen),
            "by_level": {str(level): mean(group) for level, group in sorted(by_level.items())},
            "by_emotion_level": {f"{e}/{lvl}": mean(group) for (e, lvl), group in by_key.items()},
        }
    return out


def format_tables(summary: dict[str, Any], continuous: dict[str, Any]) -> str:
    """Markdown tables: per set, a summary by level, then rows = emotion × level."""
    lines: list[str] = []
    for set_name, data in summary.items():
        lines += [f"### {SET_LABELS[set_name]} ({data['clips']} clips, front): by level", "",
                  "| level | vertex err. no edit (mm) | mean offset | **editor** | brow+eye err. no edit (mm) "
                  "| mean offset | **editor** | lip change editor (mm) | mean offset | truth | edit size editor (mm) "
                  "| truth |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for level, m in [*data["by_level"].items(), ("1-3", data["all"])]:
            lines.append(
                f"| {level} | {m['no_edit/vertex_err_mm']:.2f} | {m['mean_offset/vertex_err_mm']:.2f} "
                f"| **{m['editor/vertex_err_mm']:.2f}** | {m['no_edit/upper_err_mm']:.2f} "
                f"| {m['mean_offset/upper_err_mm']:.2f} | **{m['editor/upper_err_mm']:.2f}** "
                f"| {m['editor/lip_change_mm']:.2f} | {m['mean_offset/lip_change_mm']:.2f} "
                f"| {m['truth/lip_change_mm']:.2f} | {m['editor/magnitude_mm']:.2f} | {m['truth/magnitude_mm']:.2f} |")
        lines += ["", f"### {SET_LABELS[set_name]}: by emotion and level", "",
                  "| emotion | level | vertex err. no edit (mm) | mean offset | **editor** | lip change editor (mm) "
                  "| lip change truth | edit size editor (mm) | truth |",
                  "|---|---|---|---|---|---|---|---|---|"]

        def line(label: str, level: str, m: dict[str, float]) -> str:
            return (f"| {label} | {level} | {m['no_edit/vertex_err_mm']:.2f} | {m['mean_offset/vertex_err_mm']:.2f} "
                    f"| **{m['editor/vertex_err_mm']:.2f}** | {m['editor/lip_change_mm']:.2f} "
                    f"| {m['truth/lip_change_mm']:.2f} | {m['editor/magnitude_mm']:.2f} | {m['truth/magnitude_mm']:.2f} |")

        for emotion in EMOTIONS:
            for level in LEVELS:
                m = data["by_emotion_level"].get(f"{emotion}/{level}")
                if m is not None:
                    lines.append(line(emotion, str(level), m))
        for level, m in data["by_level"].items():
            lines.append(line("**all**", level, m))
        lines.append(line("**all**", "1-3", data["all"]))
        magnitudes = continuous.get(set_name) or []
        if magnitudes:
            levels = ", ".join(f"{lvl:g}: {mag:.2f}" for lvl, mag in zip(CONTINUOUS_LEVELS, magnitudes))
            lines += ["", f"Editor edit size (mm, mean over emotions) by target level — {levels}."]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def run(settings: Settings) -> dict[str, Any]:
    start = time.perf_counter()
    world = SyntheticWorld.open(settings.world)
    model = world.face_model()
    reader = CacheReader.open(settings.cache, kind="coeffs")
    if settings.input_field not in reader.spec.fields:
        raise ValueError(f"{settings.cache}: no field {settings.input_field!r}")
    training = None
    checkpoint = settings.checkpoint
    if settings.train:
        training = train_editor(settings, world)
        checkpoint = Path(training["checkpoint"])
    if checkpoint is None:
        raise ValueError("give --checkpoint or --train")
    generator = GeometryGenerator.from_checkpoint(checkpoint)
    generator.shape_layout.check(model.layout)
    evaluation = evaluate(settings, world, reader, generator, model)
    summary = summarise(evaluation["rows"])
    results = {
        "world": str(settings.world), "cache": str(settings.cache), "checkpoint": str(checkpoint),
        "input_field": settings.input_field, "views": list(settings.views), "training": training,
        "machine": machine_info(), "summary": summary,
        "continuous_levels": evaluation["continuous_levels"],
        "continuous_magnitude_mm": evaluation["continuous_magnitude_mm"],
        "rows": evaluation["rows"], "seconds_total": time.perf_counter() - start,
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings.out / "geometry_demo_world.json", json.dumps(results, indent=1) + "\n")
    table = format_tables(summary, evaluation["continuous_magnitude_mm"])
    atomic_write_text(settings.out / "geometry_demo_world.md", table + "\n")
    results["table"] = table
    return results


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="synthetic world folder")
    parser.add_argument("--cache", type=Path, required=True, help="the world's coeffs cache")
    parser.add_argument("--checkpoint", type=Path, default=None, help="trained geometry checkpoint")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "results" / "geometry", help="output folder")
    parser.add_argument("--input-field", default="coeffs", choices=("coeffs", "coeffs_true"), help="cache field edited")
    parser.add_argument("--views", nargs="+", default=["front"], help="views of the source clips")
    parser.add_argument("--train", action="store_true", help="train first (train.run, resumes from OUT/run)")
    parser.add_argument("--preset", default="demo", help="experiment name for training (default demo)")
    parser.add_argument("--max-steps", type=int, default=None, help="training iterations (default: the experiment's)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("overrides", nargs="*", help="extra train.py key=value overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return Settings(world=args.world.resolve(), cache=args.cache.resolve(),
                    checkpoint=args.checkpoint.resolve() if args.checkpoint else None, out=args.out.resolve(),
                    input_field=args.input_field, views=tuple(args.views), train=args.train, preset=args.preset,
                    max_steps=args.max_steps, seed=args.seed, overrides=tuple(args.overrides))


def main(argv: Sequence[str] | None = None) -> int:
    results = run(parse_args(argv))
    if results["training"]:
        t = results["training"]
        print(f"trained {t['steps']} steps in {t['seconds']:.0f} s on {t['train_records']} frames")
    print(results["table"])
    print(f"total {results['seconds_total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
