"""``run_evaluation(config)``: every method over the evaluation sets, resumably, into tables.

For each set (:mod:`.splits`), item and method (:mod:`.methods`), item-major so that an
item's shared data (:class:`~emoedit.evaluation.scoring.ItemReference`) is computed once:

1. the method's output video ``<out>/videos/<method>/<set>/<item>.mp4`` — skipped when the
   file exists (every writer is atomic, so an existing file is complete);
2. its scores (:class:`~emoedit.evaluation.scoring.Scorer`): one JSON line per (set, item,
   method) appended to ``<out>/rows.jsonl`` (one ``write`` + ``fsync`` per row; a torn last
   line from a crash is dropped on the next start), and its FID/FED features in
   ``<out>/features/<method>/<set>/<item>.pt`` (written atomically *before* the row, so a
   row implies its features). A (set, item, method) with a row is never redone: re-running
   continues where the last run stopped, and a finished run does no work;
3. aggregation: per set and method, the mean of each per-item metric over its items and the
   Fréchet distances (FID, FED) of the pooled output features against the pooled
   ground-truth features of the same items → ``results.json`` and ``tables.md``
   (:mod:`.tables`), optionally a W&B table (``evaluate/...`` keys, offline by default).
   ``results.json``'s ``rereconstruction`` (and the tables' footnote) says how the geometry
   columns were measured (``rereconstruct``: the bundle's regressor or the photometric re-fit).

The intensity sweep (``monotonicity``) edits a few items at every α with ours (and a
baseline that accepts continuous codes) into ``<out>/videos/<method>/monotonicity/`` and
appends ``<out>/monotonicity.jsonl`` rows the same way.

``max_frames`` cuts every input to its first N frames once (``<out>/inputs/``, lossless
x264, no audio) so that editing *and* scoring stay cheap on a CPU. The settings that change
the numbers are recorded in ``<out>/evaluation_state.json``; resuming with different ones
is an error naming them (use another ``out`` folder).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from emoedit.atomic_io import atomic_torch_save, atomic_write_text
from emoedit.evaluation.config import EvaluateConfig
from emoedit.evaluation.methods import (
    TRUTH_REFERENCE,
    EvaluationMethod,
    MethodInput,
    MethodRegistry,
    build_methods,
    canonical_method_name,
    method_kind,
    method_slug,
)
from emoedit.evaluation.scoring import METRICS, ItemReference, Scorer, frechet_from_features
from emoedit.evaluation.splits import SET_TITLES, EvaluationItem, evaluation_items
from emoedit.evaluation.tables import (
    TABLE1_COLUMNS,
    TABLE2_COLUMNS,
    check_table,
    format_report,
)

ROWS_FILE = "rows.jsonl"
MONOTONICITY_FILE = "monotonicity.jsonl"
RESULTS_FILE = "results.json"
TABLES_FILE = "tables.md"
STATE_FILE = "evaluation_state.json"
RESULTS_FORMAT = "emoedit-evaluation"
RESULTS_VERSION = 1
#: Config keys whose change makes existing rows stale.
SCORING_KEYS: tuple[str, ...] = (
    "world", "bundle", "recon_checkpoint", "judges", "baselines", "fid_weights", "arcface_weights", "lpips_backbone",
    "lpips_net", "max_frames", "frame_stride", "crop_size", "edit", "rereconstruct", "refit_steps",
    "refit_render_size",
)
#: State of a run from before a key existed: the value it had then (an old state resumes when these still hold).
STATE_KEY_DEFAULTS: dict[str, Any] = {"rereconstruct": "regressor", "refit_steps": None, "refit_render_size": None}


# ---------------------------------------------------------------------------------- rows
def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, tensors numbers."""
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class RowStore:
    """An append-only JSON-lines file of rows keyed by a tuple of fields (see the module docstring)."""

    def __init__(self, path: Path, key_fields: Sequence[str]) -> None:
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._load()

    def key(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] for k in self.key_fields)

    def _load(self) -> None:
        if not self.path.is_file():
            return
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        good: list[str] = []
        torn = False
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or any(k not in row for k in self.key_fields):
                    raise ValueError("not a row")
            except ValueError:
                if number >= len(lines) - 2:  # the last line only: a row torn by a crash
                    torn = True
                    continue
                raise ValueError(f"{self.path}:{number + 1}: not a JSON row (delete the line or the file)") from None
            self.rows[self.key(row)] = row
            good.append(line)
        if torn or (text and not text.endswith("\n")):
            atomic_write_text(self.path, "".join(g + "\n" for g in good))

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return key in self.rows

    def append(self, row: dict[str, Any]) -> None:
        """Append one row (one write + fsync) and remember it."""
        row = _plain(row)
        data = (json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.rows[self.key(row)] = row


# ---------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class EvaluationResults:
    """What :func:`run_evaluation` produced."""

    out_dir: Path  # the output folder
    results: dict[str, Any]  # the content of results.json
    results_path: Path  # results.json
    tables_path: Path  # tables.md
    produced: int  # output videos made by this call (0 on a finished resume)
    scored: int  # rows scored by this call (0 on a finished resume)

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Requested methods that did not run, with their reasons."""
        return list(self.results.get("skipped", []))

    def summary(self, set_name: str) -> dict[str, dict[str, Any]]:
        """``{method: {metric: value}}`` of one set."""
        return self.results["sets"][set_name]["summary"]


# ---------------------------------------------------------------------------------- scorer
def _load_arcsim(path: str) -> Any:
    from emoedit.metrics.identity import ArcSim

    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return ArcSim.from_onnx(path)
    if suffix in (".pt2", ".ts", ".torchscript"):
        return ArcSim.from_file(path)
    return ArcSim.from_insightface(path)


def _optional(path: str | None, what: str, cfg: EvaluateConfig, notes: list[str], absent: str) -> str | None:
    """``path`` when usable; otherwise a note (or an error in strict mode for a missing configured file)."""
    if path is None:
        notes.append(absent)
        return None
    if not Path(path).exists():
        if cfg.strict:
            raise FileNotFoundError(f"{what}: {path} not found (strict mode)")
        notes.append(f"{what} {path} not found: " + absent.split(": ", 1)[-1])
        return None
    return path


def build_scorer(
    cfg: EvaluateConfig,  # the config
    world: Any,  # the SyntheticWorld
    parts: Any = None,  # EditParts of the bundle (its reconstructor), when loaded
) -> Scorer:
    """The scoring networks of ``cfg`` (absent ones noted, see :mod:`emoedit.evaluation.config`)."""
    from emoedit.networks.judges import EmotionJudge, IdentityJudge

    notes: list[str] = []
    device = torch.device(cfg.device)
    emotion = identity = arcface = fid = lpips = reconstructor = refitter = None
    path = _optional(cfg.judges.emotion, "judges.emotion", cfg, notes,
                     "no emotion judge: emotion accuracy, target confidence, FED and the intensity sweep are omitted")
    if path:
        emotion = EmotionJudge.from_checkpoint(path)
    path = _optional(cfg.judges.identity, "judges.identity", cfg, notes,
                     "no identity judge: ID sim. (judge) is omitted")
    if path:
        identity = IdentityJudge.from_checkpoint(path)
    if cfg.arcface_weights is not None and _optional(cfg.arcface_weights, "arcface_weights", cfg, notes,
                                                     "no ArcFace weights: ArcSim falls back to the identity judge"):
        arcface = _load_arcsim(cfg.arcface_weights)
    elif cfg.arcface_weights is None:
        notes.append("no ArcFace weights (arcface_weights): ArcSim is computed with the identity judge's embedding"
                     if identity is not None else "no ArcFace weights and no identity judge: ArcSim is omitted")
    path = _optional(cfg.fid_weights, "fid_weights", cfg, notes,
                     "no FID Inception weights (fid_weights: pt_inception-2015-12-05-6726825d.pth): FID is omitted")
    if path:
        from emoedit.metrics.frechet import FIDInceptionV3

        fid = FIDInceptionV3.from_file(path)
    path = _optional(cfg.lpips_backbone, "lpips_backbone", cfg, notes,
                     "no LPIPS trunk weights (lpips_backbone): LPIPS is omitted")
    if path:
        from emoedit.losses.perceptual import LPIPSLoss

        lpips = LPIPSLoss.from_files(net=cfg.lpips_net, backbone_path=path)
    if cfg.rereconstruct == "fitter":  # the world's model and camera on whole frames: no regressor needed
        refitter = _build_refitter(cfg, world, device)
    elif parts is not None:
        reconstructor = parts.reconstructor
    elif cfg.recon_checkpoint is not None and _optional(cfg.recon_checkpoint, "recon_checkpoint", cfg, notes,
                                                        "no reconstructor: geometry metrics omitted"):
        from emoedit.reconstruction.reconstructor import RegressorReconstructor

        reconstructor = RegressorReconstructor.from_checkpoint(cfg.recon_checkpoint, world.face_model()).to(device)
    elif cfg.recon_checkpoint is None:
        notes.append("no reconstructor (no bundle, no recon_checkpoint): expression / vertex / lip-opening errors "
                     "and landmark jitter are omitted")
    crop = cfg.crop_size or (emotion.input_size if emotion is not None else
                             identity.input_size if identity is not None else 112)
    return Scorer(face_model=world.face_model(), camera=world.camera, crop_size=crop, emotion_judge=emotion,
                  identity_judge=identity, arcface=arcface, fid_network=fid, lpips=lpips,
                  reconstructor=reconstructor, refitter=refitter, device=device, notes=notes)


def _build_refitter(cfg: EvaluateConfig, world: Any, device: torch.device) -> Any:
    """The photometric re-reconstruction of ``rereconstruct: fitter`` (the world's model on ``device``)."""
    import copy

    from emoedit.metrics.refit import ReReconstructor

    model = world.face_model()
    if model.mean_shape.device != device:  # a copy: the world's cached model stays where the methods expect it
        model = copy.deepcopy(model).to(device)
    return ReReconstructor(face_model=model, camera=world.camera, photo_steps=cfg.refit_steps,
                           render_size=cfg.refit_render_size)


# ---------------------------------------------------------------------------------- helpers
def _file_fingerprints(cfg: EvaluateConfig) -> dict[str, str | None]:
    """SHA-256 of every configured network file (the bundle: its manifest), so a retrained judge is noticed."""
    from emoedit.atomic_io import sha256_file

    files = {"judges.emotion": cfg.judges.emotion, "judges.identity": cfg.judges.identity,
             "fid_weights": cfg.fid_weights, "arcface_weights": cfg.arcface_weights,
             "lpips_backbone": cfg.lpips_backbone, "recon_checkpoint": cfg.recon_checkpoint,
             "bundle": None if cfg.bundle is None else str(Path(cfg.bundle) / "manifest.json")}
    files.update({f"baselines.{k}": v for k, v in vars(cfg.baselines).items()})
    return {k: sha256_file(v) if v is not None and Path(v).is_file() else None for k, v in sorted(files.items())}


def _state(cfg: EvaluateConfig) -> dict[str, Any]:
    plain = cfg.to_json()
    state = {k: plain[k] for k in SCORING_KEYS}
    if cfg.rereconstruct != "fitter":  # the re-fit's settings change nothing then
        state["refit_steps"] = state["refit_render_size"] = None
    state["world"] = str(Path(cfg.world).resolve())
    state["files"] = _file_fingerprints(cfg)
    return state


def _check_state(out: Path, cfg: EvaluateConfig) -> None:
    """Refuse to resume with settings or network files that would make the existing rows stale.

    Everything in :data:`SCORING_KEYS` must match, and every network file that existed must
    still have the same SHA-256. A baseline checkpoint may be *added* later (its method simply
    runs now); the state file then records it.
    """
    path = out / STATE_FILE
    state = _state(cfg)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        old_files = old.get("files", {})
        differences = []
        for key in SCORING_KEYS:
            if key == "baselines":
                before, now = old.get(key, {}), state[key]
                differences += [f"baselines.{k}" for k, v in now.items() if before.get(k) not in (None, v)]
            elif old.get(key, STATE_KEY_DEFAULTS.get(key)) != state[key]:
                differences.append(key)
        differences += [f"the contents of {k}" for k, v in state["files"].items() if old_files.get(k) not in (None, v)]
        if differences:
            raise ValueError(f"{out}: holds an evaluation made with other settings ({', '.join(differences)} "
                             f"differ; see {path}); use another out folder or delete this one")
        if old == state:
            return
    atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def _num_frames(path: Path) -> int:
    from emoedit.video import probe_video

    return int(probe_video(path).num_frames)


def prepare_input(item: EvaluationItem, cfg: EvaluateConfig, out: Path) -> tuple[Path, int]:
    """``(input video the methods get, its frame count)``: the item's clip, or its first ``max_frames``."""
    total = _num_frames(item.input_video)
    if cfg.max_frames is None or cfg.max_frames >= total:
        return item.input_video, total
    path = out / "inputs" / item.set_name / f"{item.subject}_{item.view}_{item.clip}.mp4"
    if not path.is_file():
        from emoedit.video import read_video, write_video

        frames, info = read_video(item.input_video)
        write_video(path, frames[: cfg.max_frames], fps=info.fps, crf=0.0, preset="veryfast", pix_fmt="yuv444p")
    return path, cfg.max_frames


def _landmarks(item: EvaluationItem, num_frames: int) -> Tensor:
    from emoedit.data.synthetic.truth_format import load_clip_truth

    return load_clip_truth(item.input_truth).landmarks[:num_frames].float()


def _video_path(out: Path, method: EvaluationMethod, item: EvaluationItem) -> Path:
    return out / "videos" / method.slug / item.set_name / f"{item.item_id}.mp4"


def _features_path(out: Path, slug: str, item: EvaluationItem) -> Path:
    return out / "features" / slug / item.set_name / f"{item.item_id}.pt"


def _save_features(path: Path, features: dict[str, Tensor]) -> None:
    atomic_torch_save({k: v.detach().cpu().float().contiguous() for k, v in features.items()}, path)


def _load_features(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        return {}
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a features file")
    return payload


def _mean(values: Iterable[Any]) -> float | None:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


# ---------------------------------------------------------------------------------- main loop
def _evaluate_item(
    item: EvaluationItem,
    methods: Sequence[EvaluationMethod],
    *,
    cfg: EvaluateConfig,
    out: Path,
    rows: RowStore,
    scorer: Scorer,
    counters: dict[str, int],
    failures: list[dict[str, str]],
) -> None:
    """Produce and score every method of one item that has no row yet (failures are collected, not rows)."""
    pending = [m for m in methods if (item.set_name, item.item_id, m.name) not in rows]
    if not pending:
        return
    input_video, num_frames = prepare_input(item, cfg, out)
    landmarks = _landmarks(item, num_frames)
    source = MethodInput(input_video=input_video, landmarks=landmarks, emotion_code=item.emotion_code,
                         truth_video=item.truth_video)
    reference: ItemReference | None = None
    real_path = _features_path(out, "_real", item)
    for method in pending:
        video = _video_path(out, method, item)
        details: dict[str, Any] = {}
        if not video.is_file():
            started = time.perf_counter()
            try:
                details = method.produce(source, video)
            except (ValueError, RuntimeError, OSError) as error:  # EditError, VideoError, CheckpointError, ...
                if cfg.strict:
                    raise
                failures.append({"set": item.set_name, "item": item.item_id, "method": method.name,
                                 "error": f"{type(error).__name__}: {error}"})
                continue  # no row: a re-run tries again
            details["produce_seconds"] = round(time.perf_counter() - started, 3)
            counters["produced"] += 1
        if reference is None:
            reference = scorer.reference(item, input_video=input_video, num_frames=num_frames,
                                         frame_stride=cfg.frame_stride)
            if reference.real_features and not real_path.is_file():
                _save_features(real_path, reference.real_features)
        started = time.perf_counter()
        scored = scorer.score(reference, video)
        if scored.features:
            _save_features(_features_path(out, method.slug, item), scored.features)
        rows.append({"set": item.set_name, "item": item.item_id, "method": method.name, "kind": method.kind,
                     "subject": item.subject, "view": item.view, "emotion": item.emotion, "level": item.level,
                     "frames": int(reference.rows.numel()), "metrics": scored.metrics, "video": str(video),
                     "score_seconds": round(time.perf_counter() - started, 3), "details": details})
        counters["scored"] += 1


def _summarise_set(
    set_name: str, items: Sequence[EvaluationItem], method_names: Sequence[str], rows: RowStore, out: Path,
) -> dict[str, Any]:
    """``summary`` (method -> metric -> mean), counts and the ordering checks of one set."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ids = {i.item_id for i in items}
    for (row_set, item_id, method), row in rows.rows.items():
        if row_set == set_name and item_id in ids and method in method_names:
            by_method[method].append(row)
    summary: dict[str, dict[str, Any]] = {}
    counts = {}
    real_cache: dict[str, dict[str, Tensor]] = {}  # the truth's features of each item, read once for every method

    def real_features(item: EvaluationItem) -> dict[str, Tensor]:
        if item.item_id not in real_cache:
            real_cache[item.item_id] = _load_features(_features_path(out, "_real", item))
        return real_cache[item.item_id]

    for method in method_names:
        chosen = by_method.get(method, [])
        if not chosen:
            continue
        counts[method] = len(chosen)
        block: dict[str, Any] = {}
        for spec in METRICS:
            if not spec.set_level:
                block[spec.key] = _mean(r["metrics"].get(spec.key) for r in chosen)
        done = [i for i in items if (set_name, i.item_id, method) in rows]
        slug = method_slug(method)
        fakes = [_load_features(_features_path(out, slug, i)) for i in done]  # each file read once
        reals = [real_features(i) for i in done]
        for key in ("fid", "fed"):
            fake = [f[key] for f in fakes if key in f]
            real = [f[key] for f in reals if key in f]
            block[key] = frechet_from_features(fake, real) if len(fake) == len(done) and len(real) == len(done) \
                else None
        summary[method] = block
    table1 = check_table({m: summary[m] for m in TABLE1_COLUMNS if m in summary}, TABLE1_COLUMNS[1:])
    table2 = check_table({m: summary[m] for m in TABLE2_COLUMNS if m in summary}, TABLE2_COLUMNS[1:])
    return {
        "title": SET_TITLES[set_name], "items": len(items), "level": items[0].level if items else None,
        "counts": counts, "summary": summary,
        "ordering": {"table1_ours_best": {k: v.to_json() for k, v in table1.items()},
                     "table2_ablations_worse": {k: v.to_json() for k, v in table2.items()}},
    }


# ---------------------------------------------------------------------------------- monotonicity
def _alpha_name(alpha: float) -> str:
    return f"{alpha:.3f}".rstrip("0").rstrip(".") if alpha else "0"


def _run_monotonicity(
    cfg: EvaluateConfig, world: Any, registry: MethodRegistry, scorer: Scorer, out: Path, counters: dict[str, int],
) -> dict[str, Any] | None:
    from emoedit.data.synthetic.layout import ClipKey
    from emoedit.editing.emotion_code import MAX_LEVEL, emotion_code_from_alpha
    from emoedit.metrics.monotonicity import intensity_monotonicity
    from emoedit.video import read_frame_rows

    mono = cfg.monotonicity
    if not mono.enabled or scorer.emotion_judge is None:
        return None
    items = evaluation_items(world, mono.set, max_items=mono.items)
    methods, not_run = [], []
    for name in mono.methods:
        method = registry.get(canonical_method_name(name))
        if method is not None and method.continuous and method.kind != "reference":
            methods.append(method)
        else:
            not_run.append(canonical_method_name(name) + (" (takes no continuous codes)" if method is not None
                                                          else " (not run: skipped or not requested)"))
    names = [m.name for m in methods] + ([TRUTH_REFERENCE] if mono.truth else [])
    if not items or not names:
        return None
    store = RowStore(out / MONOTONICITY_FILE, ("item", "method", "alpha"))
    for item in tqdm(items, desc="evaluate: intensity", unit="item", disable=not cfg.progress, dynamic_ncols=True):
        todo = [(n, a) for n in names for a in mono.alphas if (item.item_id, n, _alpha_name(a)) not in store]
        if not todo:
            continue
        input_video, num_frames = prepare_input(item, cfg, out)
        landmarks = _landmarks(item, num_frames)
        rows = torch.arange(0, num_frames, max(1, cfg.frame_stride))
        for name, alpha in todo:
            code = emotion_code_from_alpha(item.emotion, alpha)
            if name == TRUTH_REFERENCE:
                key = ClipKey(subject=item.subject, view=item.view, emotion="neutral", level=1, clip=item.clip)
                clip = world.render_edit(key, item.emotion, alpha * MAX_LEVEL)
                frames = torch.from_numpy(clip.frames[:num_frames][rows.numpy()]).permute(0, 3, 1, 2).float() / 255.0
            else:
                method = next(m for m in methods if m.name == name)
                video = out / "videos" / method.slug / "monotonicity" / f"{item.item_id}_a{_alpha_name(alpha)}.mp4"
                if not video.is_file():
                    method.produce(MethodInput(input_video=input_video, landmarks=landmarks, emotion_code=code,
                                               truth_video=None), video)
                    counters["produced"] += 1
                frames = read_frame_rows(video, rows, min_frames=num_frames)
            confidence = scorer.target_confidence(frames, landmarks[rows], item.emotion)
            store.append({"item": item.item_id, "method": name, "alpha": _alpha_name(alpha), "alpha_value": alpha,
                          "emotion": item.emotion, "confidence": confidence})
            counters["scored"] += 1
    result: dict[str, Any] = {"set": mono.set, "num_items": len(items), "alphas": list(mono.alphas), "methods": {},
                              "not_run": not_run}
    for name in names:
        per_item, curves = [], defaultdict(list)
        for item in items:
            found = [(a, store.rows.get((item.item_id, name, _alpha_name(a)))) for a in mono.alphas]
            if any(r is None for _, r in found):
                continue
            confidences = torch.tensor([float(r["confidence"]) for _, r in found], dtype=torch.float64)
            scores = intensity_monotonicity(torch.tensor(list(mono.alphas), dtype=torch.float64), confidences)
            per_item.append(scores)
            for a, r in found:
                curves[f"{a:g}"].append(float(r["confidence"]))
        result["methods"][name] = {
            "items": len(per_item),
            "spearman": _mean(float(s.spearman) for s in per_item),
            "increasing_fraction": _mean(float(s.increasing_fraction) for s in per_item),
            "mean_confidence": {k: _mean(v) for k, v in curves.items()},
        }
    return result


# ---------------------------------------------------------------------------------- W&B
def log_wandb(cfg: EvaluateConfig, results: dict[str, Any]) -> None:
    """One ``wandb.Table`` of every (set, method) summary + scalar keys ``evaluate/<set>/<method>/<metric>``.

    When exactly one non-reference method was evaluated (a sweep trial), its numbers are also
    logged as ``evaluate/<set>/<metric>`` (the keys the sweep files optimise).
    """
    import wandb

    settings = cfg.wandb
    out = Path(cfg.out)
    run = wandb.init(project=settings.project, entity=settings.entity, name=settings.name or out.name,
                     group=settings.group, mode=settings.mode, dir=str(out), config=cfg.to_json(),
                     job_type="evaluate", reinit="finish_previous")
    try:
        metric_keys = [m.key for m in METRICS]
        table = wandb.Table(columns=["set", "method", "kind", "items", *metric_keys])
        scalars: dict[str, float] = {}
        for set_name, block in results["sets"].items():
            summary = block["summary"]
            primary = [m for m in summary if method_kind(m) != "reference"]
            for method, values in summary.items():
                table.add_data(set_name, method, method_kind(method), block["counts"].get(method, 0),
                               *[values.get(k) for k in metric_keys])
                for key in metric_keys:
                    if values.get(key) is not None:
                        scalars[f"evaluate/{set_name}/{method_slug(method)}/{key}"] = values[key]
                        if len(primary) == 1 and method == primary[0]:
                            scalars[f"evaluate/{set_name}/{key}"] = values[key]
        payload: dict[str, Any] = {"evaluate/results": table, **scalars}
        mono = results.get("monotonicity")
        if mono:
            for name, block in mono["methods"].items():
                for key in ("spearman", "increasing_fraction"):
                    if block.get(key) is not None:
                        payload[f"evaluate/monotonicity/{method_slug(name)}/{key}"] = block[key]
        run.log(payload)
        for key, value in scalars.items():
            run.summary[key] = value
    finally:
        run.finish()


# ---------------------------------------------------------------------------------- entry
def set_items(world: Any, cfg: EvaluateConfig) -> dict[str, list[EvaluationItem]]:
    """Set → its items: ``cfg.items_per_set[set]`` of them where given, else ``cfg.max_items`` (None: all)."""
    return {s: evaluation_items(world, s, max_items=cfg.items_per_set.get(s, cfg.max_items)) for s in cfg.sets}


def run_evaluation(
    config: EvaluateConfig,  # the evaluation config (load_evaluate_config)
    *,
    registry: MethodRegistry | None = None,  # methods to run (default: build_methods(config)); tests inject fakes
    scorer: Scorer | None = None,  # scoring networks (default: build_scorer(config)); tests inject tiny ones
    bundle_loader: Callable[..., Any] | None = None,  # load_bundle replacement for build_methods
    notes: Sequence[str] = (),  # the caller's notes, reported with the harness's own (results, tables, W&B)
) -> EvaluationResults:
    """Run (or continue) the evaluation described by ``config``; see the module docstring."""
    from emoedit.data.synthetic import SyntheticWorld
    from emoedit.machine import machine_info

    cfg = config
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    world_dir = Path(cfg.world)
    if not world_dir.is_dir():
        raise FileNotFoundError(f"world: {world_dir} is not a folder (generate one with `emoedit synth`)")
    world = SyntheticWorld.open(world_dir)
    _check_state(out, cfg)
    if registry is None:
        registry = build_methods(cfg, face_model=world.face_model(), bundle_loader=bundle_loader)
    if scorer is None:
        scorer = build_scorer(cfg, world, registry.parts)
    sets = set_items(world, cfg)
    rows = RowStore(out / ROWS_FILE, ("set", "item", "method"))
    counters = {"produced": 0, "scored": 0}
    failures: list[dict[str, str]] = []
    methods = list(registry.methods)
    total = sum(len(v) for v in sets.values())
    with tqdm(total=total, desc="evaluate", unit="item", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for set_name, items in sets.items():
            for item in items:
                bar.set_postfix_str(f"{set_name} {item.item_id}")
                _evaluate_item(item, methods, cfg=cfg, out=out, rows=rows, scorer=scorer, counters=counters,
                               failures=failures)
                bar.update(1)
    monotonicity = _run_monotonicity(cfg, world, registry, scorer, out, counters)
    names = [m.name for m in methods]
    notes = [*notes, *scorer.notes]
    if failures:
        notes.append(f"{len(failures)} output(s) could not be made this time and have no row (results.json "
                     "'failures'; re-run to retry): " + "; ".join(f"{f['method']} on {f['item']}" for f in failures[:5]))
    empty = [s for s, items in sets.items() if not items]
    if empty:
        notes.append(f"the world has no items for the set(s) {empty} (e.g. no side views)")
    frames = f"the first {cfg.max_frames}" if cfg.max_frames else "all"
    frames += "" if cfg.frame_stride == 1 else f", every {cfg.frame_stride}th"
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT, "format_version": RESULTS_VERSION,
        "world": {"path": str(world.root), "preset": world.description.get("preset_name"), "seed": world.seed,
                  "image_size": world.image_size, "num_frames": world.preset.num_frames},
        "run": {"machine": _machine_line(machine_info()), "device": cfg.device, "torch": torch.__version__,
                "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "frames": {"max_frames": cfg.max_frames, "frame_stride": cfg.frame_stride, "description": frames},
                "seconds_this_call": round(time.perf_counter() - started, 1), "produced_this_call": counters["produced"],
                "scored_this_call": counters["scored"]},
        "config": cfg.to_json(),
        "methods": [{"name": m.name, "kind": m.kind, "description": m.describe()} for m in methods],
        "skipped": [s.to_json() for s in registry.skipped],
        "failures": failures,
        "notes": notes,
        "arcsim_source": scorer.arcsim_source,
        "rereconstruction": scorer.rereconstruction,  # how the geometry columns were measured (None: they weren't)
        "sets": {s: _summarise_set(s, items, names, rows, out) for s, items in sets.items()},
        "monotonicity": monotonicity,
    }
    results = _plain(results)
    results_path = atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    tables_path = atomic_write_text(out / TABLES_FILE, format_report(results))
    if cfg.wandb.enabled:
        log_wandb(cfg, results)
    return EvaluationResults(out_dir=out, results=results, results_path=Path(results_path),
                             tables_path=Path(tables_path), produced=counters["produced"], scored=counters["scored"])


def _machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ""
    return f"{info.get('cpu')} ({info.get('cores')} cores{gpu}), Python {info.get('python')}"


__all__ = [
    "EvaluationResults",
    "RESULTS_FILE",
    "ROWS_FILE",
    "RowStore",
    "TABLES_FILE",
    "build_scorer",
    "log_wandb",
    "prepare_input",
    "run_evaluation",
]
