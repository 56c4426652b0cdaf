#!/usr/bin/env python
"""Texture editing measured on a synthetic world (METHOD.md §3.4–3.5, eqs. 3–5): the
figures of docs/RESULTS.md "Texture editing", reproducible end to end on a CPU.

    .venv/bin/python scripts/texture_demo_world.py [--work outputs/results/texture]
        [--world DIR] [--seed 0] [--tgan-steps N] [--encoder-steps N] [--classifier-steps N]

Steps (every artefact goes under ``--work``; finished steps are reused by a re-run):

1. the world: ``--world DIR`` (an existing synthetic world) or the ``demo`` preset
   generated into ``<work>/world`` (3–5 minutes on 2 CPU cores);
2. preprocessing (:func:`emoedit.data.preprocess.run_preprocess`, stage ``reconstruct``,
   reconstructor ``truth``: the world's exact coefficients) of every **front** MEAD clip
   into ``<work>/preprocess/textures`` at ``--texture-size`` texels (64 for CPU, the paper
   uses 512). No FFHQ pretraining: the t-GAN trains on MEAD textures only (budget);
3. training, through ``train.run`` with ``configs/experiment/demo.yaml``, on the training
   subjects' training clips only — ``data.filter`` keeps the training subjects' front
   clips and ``data.exclude`` drops every evaluation clip of the world's split (held-out
   neutral clips of training subjects, all clips of unseen subjects):
   the t-GAN (StyleGAN2, bf16 convolutions), the pSp texture encoder (frozen EMA generator,
   L2 + latent regulariser; LPIPS off unless ``--lpips-backbone`` names a torchvision
   AlexNet state dict), the subject classifier over the training subjects;
4. edit directions (eq. 5) from the same training records (neutral and level 3);
5. measurements, written to ``<work>/results.json`` and printed as markdown tables:

   a. reconstruction ``G(E(I))`` vs ``I`` on the front textures of **unseen** subjects
      (L1 and PSNR over visible texels);
   b. classifier accuracy on the held-out neutral clips of the **seen** subjects (never
      trained on) and the classifier's own validation split (held-out training clips);
   c. edit accuracy: neutral frames of an evaluation clip are edited to every emotion at
      α = 1 (level 3) and compared with the **ground-truth edit** of the same frame
      (the world renders the same clip — same speech, pose and light — with the emotion).
      Both the input and the truth are UV textures extracted from the videos in the same
      way (truth coefficients, :class:`~emoedit.texture.extraction.TextureExtractor`,
      frame camera), so shading, sampling and video compression are alike on both sides
      (the world's ``true_texture`` is unshaded albedo: it would not compare like with
      like with a texture extracted from a lit video). Rows: the unedited input, ``G(E(I))``
      (reconstruction without edit), eq. 4 (classifier-weighted), the "without classifier"
      mean-direction ablation, for seen subjects also eq. 3 (own directions), and the floor
      ``G(E(truth))`` (the best any W+ edit through this G and E could reach). Errors are
      over texels visible in both the input and the truth frame.

With ``--texture-region-min-cos`` the cache holds the rim outside the face region filled
(:mod:`emoedit.texture.face_region`); the networks get their inputs filled the same way, (a)
is scored inside the region, and in (c) every decoded row is shown as the edit pipeline shows
it: the decoded texture inside the region, the frame's own outside (the ``residual`` rows'
change is zero there).

Training elsewhere (``--accelerator gpu --train-only``): a run with ``--stop-after preprocess``
leaves the split in ``<work>/selection.json``; that file and ``<work>/preprocess/textures`` are all
``--train-only`` reads (no world, no video stack), so they can travel to a GPU machine alone. Copy
its ``runs/<part>`` folders back into a ``--work`` holding the world's cache, and a normal run
reuses them (a reused run's checkpoint is looked up in its new folder).

The core (:func:`evaluate`) works on in-memory networks, so the tests run it on the tiny
world with untrained networks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from emoedit.atomic_io import atomic_write_text  # noqa: E402
from emoedit.editing.emotion_code import EMOTIONS, MAX_LEVEL, NEUTRAL, emotion_code_from_level  # noqa: E402
from emoedit.machine import machine_info  # noqa: E402
from emoedit.shape_checks import assert_shape  # noqa: E402

PARTS = ("tgan", "texture_encoder", "classifier")
EQ4_TAU = "eq. 4 (classifier, calibrated τ)"  # softmax(f(I) / τ), τ from leave-one-subject-out (subject_temperature)
# Uses the truth: x0 + mean over the clip's frames of E(truth) − E(input) — the best a single W+
# direction per (clip, emotion) could do with these networks (what eq. 5 estimates from other clips).
ORACLE = "oracle direction (clip's mean E(truth) − E(I))"
EDIT_ROWS = ("eq. 3 (own directions)", "eq. 4 (classifier)", EQ4_TAU, "mean direction (w/o classifier)",
             ORACLE, "floor G(E(truth))")
# The method's change Δ = G(x) − G(x0) added to the input texture itself: what the pipeline's
# ``residual`` and ``warp`` texture modes put on the face (``replace`` puts G(x) there).
DIAGNOSTIC_PREFIX = "residual: I + Δ of "
EXPERIMENT = "demo"


# --------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class TrainingSelection:
    """Which cache records the parts may train on (from the world's split)."""

    train_subjects: tuple[str, ...]  # the classes of the classifier and the rows of the directions
    unseen_subjects: tuple[str, ...]  # never trained on
    eval_clip_ids: tuple[str, ...]  # cache clip ids of every front evaluation clip (excluded from training)
    held_out_clip_ids: tuple[str, ...]  # the seen subjects' held-out neutral clips (front)
    unseen_clip_ids: tuple[str, ...]  # the unseen subjects' front clips

    def data_filter(self) -> dict[str, Any]:
        """``data.filter`` of every part: front view, training subjects."""
        return {"view": "front", "subject": list(self.train_subjects)}

    def data_exclude(self) -> dict[str, Any]:
        """``data.exclude`` of every part: every evaluation clip."""
        return {"clip": list(self.eval_clip_ids)}

    def as_dict(self) -> dict[str, list[str]]:
        """Plain JSON (``<work>/selection.json``: what ``--train-only`` trains from)."""
        return {name: list(getattr(self, name)) for name in SELECTION_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "selection") -> TrainingSelection:
        """The inverse of :meth:`as_dict`; a missing or extra key is an error naming ``source``."""
        if not isinstance(data, dict) or set(data) != set(SELECTION_FIELDS):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{source}: expected the keys {list(SELECTION_FIELDS)}, found {found}")
        for name in SELECTION_FIELDS:
            if not isinstance(data[name], list) or not all(isinstance(v, str) for v in data[name]):
                raise ValueError(f"{source}: {name} must be a list of strings")
        return cls(**{name: tuple(data[name]) for name in SELECTION_FIELDS})


SELECTION_FIELDS = ("train_subjects", "unseen_subjects", "eval_clip_ids", "held_out_clip_ids", "unseen_clip_ids")


def training_selection(world: Any) -> TrainingSelection:
    """Training / evaluation clips of a :class:`~emoedit.data.synthetic.SyntheticWorld`."""
    eval_front = [r for r in world.clips(view="front") if r.role == "eval"]
    train_set = set(world.train_subjects)
    return TrainingSelection(
        train_subjects=tuple(world.train_subjects),
        unseen_subjects=tuple(world.unseen_subjects),
        eval_clip_ids=tuple(r.key.clip_id for r in eval_front),
        held_out_clip_ids=tuple(r.key.clip_id for r in eval_front
                                if r.key.subject in train_set and r.key.emotion == NEUTRAL),
        unseen_clip_ids=tuple(r.key.clip_id for r in eval_front if r.key.subject not in train_set),
    )


# --------------------------------------------------------------------------- steps 1-2
def ensure_world(world_dir: str | None, work: Path, *, preset: str, seed: int) -> Path:
    """An existing world folder, or the ``preset`` world generated (resumably) into ``work/world``."""
    from emoedit.data.synthetic import generate_world

    if world_dir:
        return Path(world_dir)
    root = work / "world"
    generate_world(root, preset, seed, progress=False, torch_threads=1)
    return root


def preprocess(world: Path, work: Path, *, texture_size: int, frame_stride: int, threads: int,
               region_min_cos: float | None = None, region_margin: int = 0) -> dict[str, Any]:
    """Front MEAD clips → ``<work>/preprocess/textures`` (stage reconstruct, truth coefficients;
    ``region_min_cos``, ``region_margin``: the cache's face region, ``PreprocessConfig.texture_region_*``)."""
    from emoedit.data.preprocess import PreprocessConfig, run_preprocess

    config = PreprocessConfig(
        input_kind="mead", inputs=(str(world),), output_dir=str(work / "preprocess"), stage="reconstruct",
        views=("front",), reconstructor="truth", crop_size=64, texture_size=texture_size, mouth_crop_size=32,
        frame_stride=frame_stride, torch_threads=threads, progress=False, texture_region_min_cos=region_min_cos,
        texture_region_margin=region_margin,
    )
    summary = run_preprocess(config)
    if summary.clips_failed:
        raise RuntimeError(f"preprocess: {summary.clips_failed} clips failed: {summary.failed[:3]}")
    return {"cache": str(work / "preprocess" / "textures"), "clips": summary.num_clips,
            "clips_written": summary.clips_written, "records_written": summary.records_written,
            "seconds": summary.seconds}


# --------------------------------------------------------------------------- step 3
def part_spec(name: str) -> Any:
    """``train.PartSpec`` of a part: the train.py table row, or built here if the row is not there yet."""
    import train

    parts = train._parts()
    if name in parts:
        return parts[name]
    if name == "tgan":
        from datamodules.textures import TextureDataModule
        from lightning_modules.tgan import TGANRunConfig, TGANSystem

        return train.PartSpec(TGANSystem, TextureDataModule, TGANRunConfig, "t-GAN")
    if name == "texture_encoder":
        from datamodules.textures import TextureDataModule
        from lightning_modules.texture_encoder import TextureEncoderRunConfig, TextureEncoderSystem

        return train.PartSpec(TextureEncoderSystem, TextureDataModule, TextureEncoderRunConfig, "texture encoder")
    if name == "classifier":
        from lightning_modules.classifier import ClassifierRunConfig, ClassifierSystem, SubjectTextureDataModule

        return train.PartSpec(ClassifierSystem, SubjectTextureDataModule, ClassifierRunConfig, "subject classifier")
    raise KeyError(name)


def train_part(
    name: str,  # tgan | texture_encoder | classifier
    run_dir: Path,  # run folder (checkpoints/final.ckpt is the result)
    overrides: Sequence[str],  # key=value overrides on top of configs/<name>.yaml + experiment demo
    *,
    config_dir: Path = REPO_ROOT / "configs",  # where <name>.yaml and experiment/ live
    experiment: str | None = EXPERIMENT,  # experiment file name (None: none)
) -> dict[str, Any]:
    """Train one part with ``train.run`` unless ``run_dir`` already holds its final checkpoint
    (``checkpoints/final.ckpt`` + ``done.json``)."""
    import train
    from emoedit.config import compose_config

    spec = part_spec(name)
    done_file = run_dir / "done.json"
    final = run_dir / "checkpoints" / "final.ckpt"
    if done_file.is_file() and final.is_file():
        info = json.loads(done_file.read_text())
        info["reused"] = True
        info["checkpoint"] = str(final)  # here, also when the run was made in another folder or machine
        return info
    args = [f"output_dir={run_dir}", *overrides]
    if experiment:
        args.insert(0, f"experiment={experiment}")
    cfg = compose_config(spec.schema, part=name, config_dir=config_dir, overrides=args)
    start = time.perf_counter()
    trainer = train.run(spec, cfg)
    seconds = time.perf_counter() - start
    # The final weights, whatever stopped the run (max_steps, max_time) and whatever the
    # checkpoint interval: ModelCheckpoint saves only on its own schedule.
    final = run_dir / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(str(final))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    info = {"checkpoint": str(final), "steps": int(trainer.global_step), "seconds": seconds, "metrics": metrics,
            "overrides": list(overrides)}
    atomic_write_text(done_file, json.dumps(info, indent=2) + "\n")
    return info


def _json_value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def data_overrides(selection: TrainingSelection, cache: str) -> list[str]:
    """The data section every part shares: the cache, the training records only."""
    return [f"data.cache_dir={cache}", f"data.filter={_json_value(selection.data_filter())}",
            f"data.exclude={_json_value(selection.data_exclude())}"]


def _limits(steps: int, minutes: float | None) -> list[str]:
    out = [f"trainer.max_steps={steps}"]
    if minutes:
        total = int(round(minutes * 60))
        out.append(f"trainer.max_time={_json_value({'seconds': total})}")
    return out


# --------------------------------------------------------------------------- step 4
def solve_training_directions(
    cache: str, encoder: Any, selection: TrainingSelection, *, batch_size: int = 64,
) -> Any:
    """Eq. 5 from the training records only (``run_directions`` takes subjects and views but cannot
    drop clips, so the held-out neutral clips are excluded here with the cache index)."""
    from emoedit.data.cache import CacheReader
    from emoedit.editing.directions import DirectionAccumulator, encode_cache

    reader = CacheReader.open(cache, kind="textures")
    index = reader.records().where(view="front", subject=list(selection.train_subjects))
    index = index.select(~index.mask("clip", list(selection.eval_clip_ids)))
    index = index.select(index.mask("emotion", NEUTRAL) | index.mask("level", MAX_LEVEL))
    accumulator = DirectionAccumulator(num_ws=encoder.num_ws, w_dim=encoder.w_dim, level=MAX_LEVEL)
    for batch in encode_cache(reader, encoder, index=index, batch_size=batch_size):
        accumulator.add(batch.wplus, batch.subjects, batch.emotions, batch.levels)
    present = sorted({e for e in index.unique("emotion") if e != NEUTRAL}, key=EMOTIONS.index)
    return accumulator.solve(subjects=selection.train_subjects, emotions=present, missing="error")


def calibrate_temperature(cache: str, classifier: Any, directions: Any, selection: TrainingSelection) -> Any:
    """Eq. 4's softmax temperature, leave-one-subject-out
    (:func:`~emoedit.editing.subject_temperature.calibrate_subject_temperature`) on the training
    subjects' neutral training textures: each subject's textures, its own logit dropped, mix the
    other subjects' directions; the τ whose mixtures best match its own directions wins. The
    library's :func:`~emoedit.editing.subject_temperature.calibrate_subject_temperature_on_cache`
    on the front view without the evaluation clips (the directions' rows are the training subjects)."""
    from emoedit.data.cache import CacheReader
    from emoedit.editing.subject_temperature import calibrate_subject_temperature_on_cache

    reader = CacheReader.open(cache, kind="textures")
    return calibrate_subject_temperature_on_cache(reader, classifier, directions, views=("front",),
                                                  exclude_clips=selection.eval_clip_ids, batch_size=64)


# --------------------------------------------------------------------------- step 5: textures
@dataclass(frozen=True)
class ExtractedClip:
    """UV textures of some frames of one video (truth coefficients, frame camera)."""

    uv_texture: Tensor  # (N, 3, T, T) float in [0, 1]
    visibility: Tensor  # (N, 1, T, T) bool
    frames: tuple[int, ...]  # the frame indices


class TruthTextures:
    """Extracts UV textures from a world's videos with the world's true coefficients.

    The same extraction as ``emoedit preprocess`` (``TextureExtractor``, ``image_coords``
    sampling) but straight from the frame with the world's frame camera instead of an aligned
    crop; used for both the neutral inputs and the ground-truth edits of the edit evaluation.
    """

    def __init__(self, world: Any, texture_size: int) -> None:
        from emoedit.texture.extraction import TextureExtractor
        from emoedit.texture.uv_layout import UVLayout

        self.world = world
        self.model = world.face_model()
        self.camera = world.camera
        self.extractor = TextureExtractor(layout=UVLayout.from_model(self.model, texture_size))

    def __call__(self, video: Path, truth: Any, frames: Sequence[int]) -> ExtractedClip:
        from emoedit.video import read_video

        video_frames, _ = read_video(video, as_tensor=True)
        rows = [f for f in frames if f < min(video_frames.shape[0], truth.num_frames)]
        image = video_frames[rows].permute(0, 3, 1, 2).float().div(255.0)
        with torch.no_grad():
            screen = self.model(truth.coeffs[rows].float(), self.camera).vertices_screen
            out = self.extractor(image, screen)
        return ExtractedClip(uv_texture=out.uv_texture, visibility=out.visibility > 0.5, frames=tuple(rows))


# --------------------------------------------------------------------------- step 5: metrics
def masked_errors(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-texture L1 and PSNR (dB) over masked texels.

    pred, target: (B, 3, T, T) float in [0, 1]; mask: (B, 1, T, T) bool.
    Returns (B,) mean absolute error (0..1 units) and (B,) PSNR = 10·log10(1 / MSE).
    """
    dims = assert_shape(pred, ("B", 3, "T", "T"), "pred")
    assert_shape(target, ("B", 3, "T", "T"), "target", dims)
    assert_shape(mask, ("B", 1, "T", "T"), "mask", dims)
    weight = mask.float().expand_as(pred)
    count = weight.flatten(1).sum(1).clamp(min=1.0)
    diff = (pred.float() - target.float()) * weight
    l1 = diff.abs().flatten(1).sum(1) / count
    mse = diff.pow(2).flatten(1).sum(1) / count
    return l1, 10.0 * torch.log10(1.0 / mse.clamp(min=1e-10))


class Accumulator:
    """Per-row lists of per-texture errors → mean L1, mean PSNR, count."""

    def __init__(self) -> None:
        self.l1: dict[str, list[float]] = {}
        self.psnr: dict[str, list[float]] = {}

    def add(self, row: str, l1: Tensor, psnr: Tensor) -> None:
        self.l1.setdefault(row, []).extend(l1.tolist())
        self.psnr.setdefault(row, []).extend(psnr.tolist())

    def summary(self) -> dict[str, dict[str, float]]:
        return {row: {"l1": sum(v) / len(v), "psnr": sum(self.psnr[row]) / len(self.psnr[row]), "count": len(v)}
                for row, v in self.l1.items()}


@dataclass
class Networks:
    """The trained networks, in eval mode on the CPU."""

    encoder: Any  # PSPEncoder: [-1, 1] textures -> W+
    generator: Any  # StyleGAN2Generator (its synthesis decodes W+)
    classifier: Any  # SubjectClassifier over the training subjects
    directions: Any  # EditDirections (eq. 5)
    region: Tensor | None = None  # (T, T) bool face region the networks were trained on (None: every texel)

    def cache_view(self, uv01: Tensor) -> Tensor:
        """(B, 3, T, T) [0, 1] textures as the cache holds them: the rim filled when there is a region."""
        from emoedit.texture.face_region import fill_outside_region

        return uv01 if self.region is None else fill_outside_region(uv01, self.region)

    def network_input(self, uv01: Tensor) -> Tensor:
        """(B, 3, T, T) [0, 1] → the networks' [−1, 1] input (:meth:`cache_view`, rescaled)."""
        return self.cache_view(uv01) * 2.0 - 1.0

    def in_region(self, decoded: Tensor, texture: Tensor) -> Tensor:
        """What the pipeline shows for a decoded texture: ``decoded`` inside the face region,
        ``texture`` (the frame's own) outside it; ``decoded`` itself without a region."""
        from emoedit.texture.face_region import compose_in_region

        return decoded if self.region is None else compose_in_region(decoded, texture, self.region)

    def region_change(self, change: Tensor) -> Tensor:
        """A texture change with the texels outside the face region set to 0 (what an edit changes)."""
        from emoedit.texture.face_region import mask_outside_region

        return change if self.region is None else mask_outside_region(change, self.region)

    def encode(self, uv01: Tensor) -> Tensor:
        """(B, 3, T, T) [0, 1] → W+ (B, num_ws, w_dim)."""
        with torch.no_grad():
            return self.encoder(self.network_input(uv01)).wplus

    def decode(self, wplus: Tensor, size: int) -> Tensor:
        """W+ → (B, 3, size, size) [0, 1] (resized when the generator's resolution differs)."""
        with torch.no_grad():
            image = self.generator.synthesis(wplus, noise_mode="const").float()
        image = image.clamp(-1.0, 1.0).add(1.0).div(2.0)
        if image.shape[-1] != size:
            image = torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", align_corners=False,
                                                    antialias=image.shape[-1] > size)
        return image

    def subject_weights(self, uv01: Tensor) -> Tensor:
        """(B, N) softmax weights over the training subjects (directions' row order)."""
        with torch.no_grad():
            out = self.classifier(self.network_input(uv01))
        order = [self.classifier.subjects.index(s) for s in self.directions.subjects]
        return out.subject_weights[:, order]


def _batches(count: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, count)) for i in range(0, count, size)]


def evaluate(
    world: Any,  # SyntheticWorld
    networks: Networks,  # trained (or, in tests, untrained) networks
    selection: TrainingSelection,  # the split
    *,
    cache: str,  # the preprocess textures cache (reconstruction and classifier figures)
    texture_size: int,  # T of the cache and of the extracted textures
    eval_frame_stride: int = 2,  # every n-th frame of the evaluation clips
    batch_size: int = 32,  # textures per network call
    emotions: Sequence[str] | None = None,  # target emotions (default: every solved emotion)
    subject_temperature: float | None = None,  # calibrated τ of eq. 4's softmax: adds the EQ4_TAU row
    log: Callable[[str], None] = print,  # progress messages
) -> dict[str, Any]:
    """Measurements (a)–(c) of the module docstring as a JSON-able dict."""

    from emoedit.data.cache import CacheReader
    from emoedit.editing.texture_editor import TextureEditor

    results: dict[str, Any] = {}
    reader = CacheReader.open(cache, kind="textures")
    records = reader.records()

    # (a) reconstruction on the unseen subjects' front textures (the cache's, as trained on).
    recon = Accumulator()
    index = records.select(records.mask("clip", list(selection.unseen_clip_ids)))
    if len(index) == 0:
        raise RuntimeError(f"{cache}: no records of the unseen subjects' front clips")
    for clip in index.unique("clip"):
        data = reader.load_clip(str(clip), fields=("uv_texture", "visibility"))
        uv = data["uv_texture"].float().div(255.0)
        for rows in _batches(uv.shape[0], batch_size):
            rebuilt = networks.decode(networks.encode(uv[rows]), texture_size)
            scored = data["visibility"][rows]  # with a face region: the texels the networks model
            if networks.region is not None:
                scored = scored & networks.region
            recon.add("G(E(I))", *masked_errors(rebuilt, uv[rows], scored))
    results["reconstruction_unseen"] = {**recon.summary()["G(E(I))"], "source": "unseen subjects' front clips"}
    log(f"(a) reconstruction on unseen subjects: {results['reconstruction_unseen']}")

    # (b) classifier accuracy on the seen subjects' held-out neutral clips.
    hits = total = 0
    true_weight = 0.0
    per_subject: dict[str, list[int]] = {}
    for clip in selection.held_out_clip_ids:
        if clip not in reader.clips:
            continue
        data = reader.load_clip(clip, fields=("uv_texture",))
        subject = clip.split("/")[0]
        uv = data["uv_texture"].float().div(255.0)
        with torch.no_grad():
            out = networks.classifier(networks.network_input(uv))
        target = networks.classifier.subjects.index(subject)
        correct = int((out.logits.argmax(-1) == target).sum())
        hits += correct
        total += uv.shape[0]
        true_weight += float(out.subject_weights[:, target].sum())
        per_subject.setdefault(subject, [0, 0])
        per_subject[subject][0] += correct
        per_subject[subject][1] += uv.shape[0]
    results["classifier_held_out"] = {
        "accuracy": hits / max(total, 1), "true_weight": true_weight / max(total, 1), "frames": total,
        "clips": len(selection.held_out_clip_ids), "chance": 1.0 / len(networks.classifier.subjects),
        "per_subject": {s: c[0] / c[1] for s, c in sorted(per_subject.items())},
    }
    log(f"(b) classifier on held-out neutral clips of seen subjects: accuracy {hits}/{total}")

    # (c) edits of neutral evaluation clips (front) vs the ground-truth edits.
    editor = TextureEditor.from_directions(networks.directions)
    tempered = (None if subject_temperature is None else  # the pipeline's path: τ travels with the directions
                TextureEditor.from_directions(networks.directions.with_subject_temperature(subject_temperature)))
    targets = tuple(emotions or networks.directions.solved)
    extract = TruthTextures(world, texture_size)
    groups = {"unseen": [], "seen": []}
    train_set = set(selection.train_subjects)
    for record in world.eval_clips(view="front"):
        groups["seen" if record.key.subject in train_set else "unseen"].append(record)
    sanity = Accumulator()
    for group, sources in groups.items():
        acc = Accumulator()
        per_emotion: dict[str, Accumulator] = {e: Accumulator() for e in targets}
        per_cell: dict[str, Accumulator] = {}  # "<clip id>|<emotion>": every row, decoded and residual
        cosines: dict[str, list[float]] = {}
        for source in sources:
            truth = world.load_truth(source)
            frames = list(range(0, truth.num_frames, eval_frame_stride))
            inputs = extract(source.video_path, truth, frames)
            frames = list(inputs.frames)
            x = inputs.uv_texture
            cached_id = source.key.clip_id
            if cached_id in reader.clips:  # like-with-like check: this extraction vs the preprocess cache
                cached = reader.load_clip(cached_id, fields=("uv_texture", "visibility"))
                where = {int(f): i for i, f in enumerate(cached["frame"])}
                rows = [where[f] for f in frames if f in where]
                if len(rows) == len(frames):
                    both = inputs.visibility & cached["visibility"][rows]
                    sanity.add("direct extraction vs cache", *masked_errors(
                        networks.cache_view(x), cached["uv_texture"][rows].float().div(255.0), both))
            x0 = torch.cat([networks.encode(x[r]) for r in _batches(len(frames), batch_size)])
            recon_x = networks.in_region(  # as shown: the frame's own texture outside a face region
                torch.cat([networks.decode(x0[r], texture_size) for r in _batches(len(frames), batch_size)]), x)
            weights = torch.cat([networks.subject_weights(x[r]) for r in _batches(len(frames), batch_size)])
            own = source.key.subject in editor.subjects
            for emotion in targets:
                edit = world.edit(source, emotion, MAX_LEVEL)
                gt = extract(edit.video_path, world.load_truth(edit), frames)
                mask = inputs.visibility & gt.visibility
                y = gt.uv_texture
                code = emotion_code_from_level(emotion, MAX_LEVEL).expand(len(frames), -1)
                outputs = {
                    "input (unedited)": x,
                    "G(E(I)) (no edit)": recon_x,
                    "eq. 4 (classifier)": networks.decode(
                        editor(x0, code, subject_weights=weights).wplus, texture_size),
                    "mean direction (w/o classifier)": networks.decode(editor(x0, code, mode="mean").wplus,
                                                                       texture_size),
                }
                truth_codes = torch.cat([networks.encode(y[r]) for r in _batches(len(frames), batch_size)])
                outputs[ORACLE] = networks.decode(x0 + (truth_codes - x0).mean(dim=0, keepdim=True), texture_size)
                outputs["floor G(E(truth))"] = networks.decode(truth_codes, texture_size)
                if tempered is not None:
                    outputs[EQ4_TAU] = networks.decode(tempered(x0, code, subject_weights=weights).wplus, texture_size)
                if own:
                    index_rows = editor.subject_index([source.key.subject] * len(frames))
                    outputs["eq. 3 (own directions)"] = networks.decode(
                        editor(x0, code, subject_index=index_rows).wplus, texture_size)
                # With a face region, every decoded row is shown as the pipeline shows it: the
                # frame's own texture outside the region (the networks never model the rim).
                outputs = {row: pred if row == "input (unedited)" else networks.in_region(pred, x)
                           for row, pred in outputs.items()}
                cell = per_cell.setdefault(f"{source.key.clip_id}|{emotion}", Accumulator())
                for row, pred in outputs.items():
                    errors = masked_errors(pred, y, mask)
                    acc.add(row, *errors)
                    per_emotion[emotion].add(row, *errors)
                    cell.add(row, *errors)
                    if row in EDIT_ROWS:
                        # Diagnostics that separate the edit from the reconstruction error: the
                        # method's texture change Δ = G(x) − G(x0) against the true change y − I
                        # (cosine over the visible texels), and Δ added to the input itself.
                        change = networks.region_change(pred - recon_x)
                        cos = torch.nn.functional.cosine_similarity((change * mask).flatten(1),
                                                                    ((y - x) * mask).flatten(1), dim=1)
                        cosines.setdefault(row, []).extend(cos.tolist())
                        transfer = masked_errors((x + change).clamp(0.0, 1.0), y, mask)
                        acc.add(DIAGNOSTIC_PREFIX + row, *transfer)
                        per_emotion[emotion].add(DIAGNOSTIC_PREFIX + row, *transfer)
                        cell.add(DIAGNOSTIC_PREFIX + row, *transfer)
            log(f"(c) {group}: {source.key.subject} done")
        if not sources:
            continue
        results[f"edit_{group}"] = {
            "rows": acc.summary(),
            "per_emotion": {e: a.summary() for e, a in per_emotion.items()},
            "per_cell": {key: {row: v["psnr"] for row, v in a.summary().items()} for key, a in per_cell.items()},
            "change_cosine": {row: sum(v) / len(v) for row, v in cosines.items()},
            "subjects": sorted({s.key.subject for s in sources}),
            "frames_per_clip": len(range(0, world.load_truth(sources[0]).num_frames, eval_frame_stride)),
            "emotions": list(targets),
            "level": MAX_LEVEL,
        }
    results["extraction_check"] = sanity.summary().get("direct extraction vs cache")
    return results


def paired_difference(
    per_cell: dict[str, dict[str, float]],  # "<clip>|<emotion>" -> row -> mean PSNR of the cell's textures
    better: str,  # row whose advantage is measured
    than: str,  # the row it is compared with
    *,
    resamples: int = 2000,  # bootstrap resamples of the cells
    seed: int = 0,  # bootstrap seed
) -> dict[str, float] | None:
    """``better − than`` in PSNR over the cells holding both rows: mean, 95 % bootstrap interval
    (percentiles, cells resampled with replacement), cells where ``better`` is ahead; None
    without such cells."""
    diffs = torch.tensor([row[better] - row[than] for row in per_cell.values() if better in row and than in row],
                         dtype=torch.float64)
    if diffs.numel() == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, diffs.numel(), (resamples, diffs.numel()), generator=generator)
    means = diffs[picks].mean(dim=1)
    return {"mean": float(diffs.mean()), "low": float(torch.quantile(means, 0.025)),
            "high": float(torch.quantile(means, 0.975)), "ahead": int((diffs > 0).sum()), "cells": int(diffs.numel())}


#: Paired comparisons printed under each group's table: (better, than).
#: Residual rows (I + Δ, what the pipeline's residual and warp modes show) first, then the decoded
#: rows (G(x′) inside the face region, the ``replace`` mode, the paper's); eq. 4 at the calibrated τ
#: and at the paper's τ = 1.
PAIRED = ((DIAGNOSTIC_PREFIX + EQ4_TAU, "input (unedited)"),
          (DIAGNOSTIC_PREFIX + EQ4_TAU, DIAGNOSTIC_PREFIX + "mean direction (w/o classifier)"),
          (DIAGNOSTIC_PREFIX + "eq. 4 (classifier)", DIAGNOSTIC_PREFIX + "mean direction (w/o classifier)"),
          (DIAGNOSTIC_PREFIX + "eq. 3 (own directions)", DIAGNOSTIC_PREFIX + "mean direction (w/o classifier)"),
          (EQ4_TAU, "mean direction (w/o classifier)"),
          ("eq. 4 (classifier)", "mean direction (w/o classifier)"),
          ("eq. 3 (own directions)", "mean direction (w/o classifier)"))


# --------------------------------------------------------------------------- tables
ROW_ORDER = ("input (unedited)", "G(E(I)) (no edit)", "eq. 3 (own directions)", "eq. 4 (classifier)", EQ4_TAU,
             "mean direction (w/o classifier)", ORACLE, "floor G(E(truth))")
DIAGNOSTIC_ROWS = tuple(DIAGNOSTIC_PREFIX + r for r in EDIT_ROWS)


def markdown_tables(results: dict[str, Any]) -> str:
    """Markdown of the measurements in ``results["metrics"]``."""
    m = results["metrics"]
    lines = []
    r = m["reconstruction_unseen"]
    c = m["classifier_held_out"]
    lines += ["| measurement | value |", "|---|---|",
              f"| (a) G(E(I)) vs I, unseen subjects ({r['count']} front textures): PSNR / L1 | "
              f"{r['psnr']:.2f} dB / {r['l1']:.4f} |",
              f"| (b) classifier accuracy, held-out neutral clips of seen subjects ({c['frames']} frames) | "
              f"{c['accuracy']:.3f} (chance {c['chance']:.3f}; mean true-subject weight {c['true_weight']:.3f}) |"]
    own_val = results.get("training", {}).get("classifier", {}).get("metrics", {}).get("classifier/val/accuracy")
    if own_val is not None:
        lines.append("| (b') classifier accuracy, its own validation clips (held-out training clips) | "
                     f"{own_val:.3f} |")
    tau = results.get("subject_temperature")
    if tau:
        scores = ", ".join(f"τ={c:g}: {v:.3f}" for c, v in zip(tau["candidates"], tau["scores"]))
        lines.append(f"| eq. 4 temperature, leave-one-subject-out on training textures ({tau['textures']}): "
                     f"mean cosine to the held-out subject's own directions | τ = {tau['temperature']:g} chosen "
                     f"({scores}; plain mean of the others {tau['mean_score']:.3f}) |")
    check = m.get("extraction_check")
    if check:
        lines.append(f"| like-with-like check: direct extraction vs preprocess cache (neutral eval clips) | "
                     f"{check['psnr']:.2f} dB / {check['l1']:.4f} |")
    for group in ("unseen", "seen"):
        block = m.get(f"edit_{group}")
        if not block:
            continue
        rows = block["rows"]
        lines += ["", f"Edit accuracy, {group} subjects ({', '.join(block['subjects'])}), every emotion at level "
                  f"{block['level']} (α = 1), {block['frames_per_clip']} frames per clip; error to the ground-truth "
                  "edit over texels visible in both:", "",
                  "| output | PSNR (dB) ↑ | L1 ↓ | cos(Δ, true Δ) ↑ | textures |", "|---|---|---|---|---|"]
        for name in ROW_ORDER + DIAGNOSTIC_ROWS:
            if name in rows:
                row = rows[name]
                cos = block["change_cosine"].get(name)
                cos_text = f"{cos:.3f}" if cos is not None else "–"
                lines.append(f"| {name} | {row['psnr']:.2f} | {row['l1']:.4f} | {cos_text} | {row['count']} |")
        lines += ["", "PSNR (dB) per emotion:", "",
                  "| output | " + " | ".join(block["emotions"]) + " |",
                  "|---|" + "---|" * len(block["emotions"])]
        for name in ROW_ORDER + DIAGNOSTIC_ROWS:
            if name in rows:
                values = [block["per_emotion"][e][name]["psnr"] for e in block["emotions"]]
                lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        paired = [(a, b, paired_difference(block.get("per_cell", {}), a, b)) for a, b in PAIRED]
        if any(p is not None for _, _, p in paired):
            lines += ["", "Paired, per clip × emotion cell (mean PSNR of the cell's frames; 95 % bootstrap interval "
                      "of the mean over cells). Residual: I + Δ (the residual and warp modes); decoded: G(x′) inside "
                      "the face region (the replace mode, the paper's):", "",
                      "| rows | comparison | mean difference (dB) | 95 % interval | ahead in |", "|---|---|---|---|---|"]
            for a, b, p in paired:
                if p is not None:
                    kind = "residual" if a.startswith(DIAGNOSTIC_PREFIX) else "decoded"
                    lines.append(f"| {kind} | {a.removeprefix(DIAGNOSTIC_PREFIX)} − {b.removeprefix(DIAGNOSTIC_PREFIX)} "
                                 f"| {p['mean']:+.3f} | [{p['low']:+.3f}, {p['high']:+.3f}] | "
                                 f"{p['ahead']} / {p['cells']} cells |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def cache_region(cache: str, world: Any, texture_size: int) -> Tensor | None:
    """The face region a textures cache was written with (its ``texture.region_min_cos`` attribute), or None."""
    from emoedit.data.cache import CacheReader
    from emoedit.texture.face_region import face_region
    from emoedit.texture.uv_layout import UVLayout

    texture = CacheReader.open(cache, kind="textures").attributes.get("texture", {})
    if texture.get("region_min_cos") is None:
        return None
    model = world.face_model()
    return face_region(model, UVLayout.from_model(model, texture_size), float(texture["region_min_cos"]),
                       int(texture.get("region_margin", 0)))


def load_networks(tgan_ckpt: str, encoder_ckpt: str, classifier_ckpt: str, directions: Any,
                  region: Tensor | None = None) -> Networks:
    from emoedit.checkpoint_io import load_checkpoint
    from emoedit.networks.psp_encoder import PSPEncoder
    from emoedit.networks.subject_classifier import SubjectClassifier
    from emoedit.networks.stylegan2.checkpoint import finetunes_generator, load_encoder_generator
    from lightning_modules.texture_encoder import load_tgan_generator

    ckpt = load_checkpoint(encoder_ckpt)
    if finetunes_generator(ckpt):  # jointly fine-tuned: decode with the encoder's own generator
        generator = load_encoder_generator(ckpt, path=encoder_ckpt)
    else:
        generator, _, _ = load_tgan_generator(tgan_ckpt)
    return Networks(encoder=PSPEncoder.from_checkpoint(encoder_ckpt), generator=generator.float(),
                    classifier=SubjectClassifier.from_checkpoint(classifier_ckpt), directions=directions,
                    region=region)


def train_parts(work: Path, cache: str, selection: TrainingSelection, args: argparse.Namespace) -> dict[str, Any]:
    """Step 3: the t-GAN, the texture encoder, the classifier (each reused when ``<work>/runs/<part>``
    holds its final checkpoint), on ``--accelerator``."""
    data = data_overrides(selection, cache)
    extra: dict[str, list[str]] = {p: [] for p in PARTS}
    for item in args.extra:
        part, _, kv = item.partition(":")
        if part not in extra:
            raise SystemExit(f"--extra {item!r}: the part must be one of {PARTS}")
        extra[part].append(kv)
    common = [f"seed={args.seed}", "logger.kind=csv", f"trainer.accelerator={args.accelerator}"]
    training: dict[str, Any] = {}
    tgan_dir = work / "runs" / "tgan"
    training["tgan"] = train_part("tgan", tgan_dir, [
        *common, *data, f"model.resolution={args.texture_size}", *_limits(args.tgan_steps, args.tgan_minutes),
        *extra["tgan"]])
    print(f"tgan: {training['tgan']['steps']} steps, {training['tgan']['seconds']:.0f} s", flush=True)
    lpips = ([f"model.lpips_backbone={args.lpips_backbone}"] if args.lpips_backbone else ["model.loss.lpips=0"])
    training["texture_encoder"] = train_part("texture_encoder", work / "runs" / "texture_encoder", [
        *common, *data, f"model.tgan_checkpoint={training['tgan']['checkpoint']}",
        f"data.resolution={args.texture_size}", f"model.input_size={args.texture_size}", *lpips,
        *_limits(args.encoder_steps, args.encoder_minutes), *extra["texture_encoder"]])
    print(f"texture_encoder: {training['texture_encoder']['steps']} steps", flush=True)
    training["classifier"] = train_part("classifier", work / "runs" / "classifier", [
        *common, *data, f"model.subjects={_json_value(list(selection.train_subjects))}",
        f"model.input_size={args.texture_size}", *_limits(args.classifier_steps, args.classifier_minutes),
        *extra["classifier"]])
    print(f"classifier: {training['classifier']['steps']} steps", flush=True)
    return training


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="outputs/results/texture", help="output folder (runs, caches, results.json)")
    p.add_argument("--world", default=None, help="an existing synthetic world (default: generate --preset)")
    p.add_argument("--preset", default="demo", help="world preset generated when --world is not given")
    p.add_argument("--seed", type=int, default=0, help="world seed and training seed")
    p.add_argument("--texture-size", type=int, default=64, help="UV texture side of the cache and the t-GAN")
    p.add_argument("--frame-stride", type=int, default=1, help="preprocess every n-th frame")
    p.add_argument("--texture-region-min-cos", type=float, default=None,
                   help="face region of the textures (PreprocessConfig.texture_region_min_cos; default: every texel)")
    p.add_argument("--texture-region-margin", type=int, default=0,
                   help="texels the face region's rim is moved inward (PreprocessConfig.texture_region_margin)")
    p.add_argument("--eval-frame-stride", type=int, default=2, help="evaluate every n-th frame of the eval clips")
    p.add_argument("--tgan-steps", type=int, default=1000, help="t-GAN iterations")
    p.add_argument("--tgan-minutes", type=float, default=11.0, help="t-GAN wall-time cap (0: none)")
    p.add_argument("--encoder-steps", type=int, default=2000, help="texture encoder steps")
    p.add_argument("--encoder-minutes", type=float, default=8.0, help="encoder wall-time cap (0: none)")
    p.add_argument("--classifier-steps", type=int, default=600, help="classifier steps")
    p.add_argument("--classifier-minutes", type=float, default=3.0, help="classifier wall-time cap (0: none)")
    p.add_argument("--lpips-backbone", default=None, help="torchvision alexnet state dict (LPIPS on; default off)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--stop-after", choices=("preprocess", "train", "directions"), default=None)
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator of the three trainings (cpu, gpu)")
    p.add_argument("--train-only", action="store_true",
                   help="train from <work>/selection.json and <work>/preprocess/textures alone (no world, no"
                        " preprocessing, no evaluation; for another machine), writing <work>/training.json")
    p.add_argument("--extra", nargs="*", default=[], help="PART:key=value overrides, e.g. tgan:model.g_lr=0.0025")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "times": {}}
    if args.train_only:  # another machine: the cache and the split travelled, the world did not
        selection_file = work / "selection.json"
        if not selection_file.is_file():
            raise SystemExit(f"--train-only: {selection_file} is missing (a run with --stop-after preprocess writes it)")
        selection = TrainingSelection.from_dict(json.loads(selection_file.read_text()), source=str(selection_file))
        out["training"] = train_parts(work, str(work / "preprocess" / "textures"), selection, args)
        atomic_write_text(work / "training.json", json.dumps(out, indent=2, default=str) + "\n")
        return 0
    from emoedit.data.synthetic import SyntheticWorld  # the video stack: not needed by --train-only

    t0 = time.perf_counter()
    world_dir = ensure_world(args.world, work, preset=args.preset, seed=args.seed)
    world = SyntheticWorld.open(world_dir)
    out["world"] = {"path": str(world_dir), "preset": world.description.get("preset_name", world.preset.name),
                    "seed": world.seed, "train_subjects": list(world.train_subjects),
                    "unseen_subjects": list(world.unseen_subjects)}
    out["times"]["world_s"] = time.perf_counter() - t0
    print(f"world: {world!r}", flush=True)

    t0 = time.perf_counter()
    out["preprocess"] = preprocess(world_dir, work, texture_size=args.texture_size, frame_stride=args.frame_stride,
                                   threads=args.threads, region_min_cos=args.texture_region_min_cos,
                                   region_margin=args.texture_region_margin)
    out["times"]["preprocess_s"] = time.perf_counter() - t0
    print(f"preprocess: {out['preprocess']}", flush=True)
    cache = out["preprocess"]["cache"]
    selection = training_selection(world)
    atomic_write_text(work / "selection.json", json.dumps(selection.as_dict(), indent=1) + "\n")
    if args.stop_after == "preprocess":
        return 0
    out["selection"] = {"held_out_clips": list(selection.held_out_clip_ids),
                        "unseen_clips": list(selection.unseen_clip_ids), "excluded_clips": len(selection.eval_clip_ids)}
    training = train_parts(work, cache, selection, args)
    out["training"] = training
    if args.stop_after == "train":
        return 0

    from emoedit.editing.directions import EditDirections
    from emoedit.networks.psp_encoder import PSPEncoder

    t0 = time.perf_counter()
    directions_file = work / "directions.pt"
    encoder_ckpt = training["texture_encoder"]["checkpoint"]
    if directions_file.is_file() and training["texture_encoder"].get("reused"):
        directions = EditDirections.load(directions_file)
    else:
        directions = solve_training_directions(cache, PSPEncoder.from_checkpoint(encoder_ckpt), selection)
        directions.save(directions_file)
    out["directions"] = {"file": str(directions_file), "describe": directions.describe(),
                         "seconds": time.perf_counter() - t0}
    print(directions.describe(), flush=True)
    if args.stop_after == "directions":
        return 0

    t0 = time.perf_counter()
    networks = load_networks(training["tgan"]["checkpoint"], encoder_ckpt, training["classifier"]["checkpoint"],
                             directions, region=cache_region(cache, world, args.texture_size))
    calibration = calibrate_temperature(cache, networks.classifier, directions, selection)
    out["subject_temperature"] = calibration.as_dict()
    print(f"eq. 4 temperature (leave-one-subject-out): {calibration.as_dict()}", flush=True)
    out["metrics"] = evaluate(world, networks, selection, cache=cache, texture_size=args.texture_size,
                              eval_frame_stride=args.eval_frame_stride, subject_temperature=calibration.temperature)
    out["times"]["evaluate_s"] = time.perf_counter() - t0
    text = markdown_tables(out)
    atomic_write_text(work / "results.json", json.dumps(out, indent=2, default=str) + "\n")
    atomic_write_text(work / "results.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
