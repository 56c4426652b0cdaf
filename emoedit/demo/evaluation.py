"""The demo's numbers against the synthetic world's truth.

The demo edits one **unseen** subject's neutral front clip. The world knows what that
clip looks like with every emotion at every strength: the *ground-truth edit* (same
speech, head motion and light; the true expression and texture effects added). Levels 1,
2, 3 (α = 1/3, 2/3, 1) are stored videos of the world (``mead/<S>/edited/...``, H.264 like
the input); other strengths are rendered on demand by the world's renderer (uncompressed;
marked ``rendered`` in the JSON).

For every edited video, on every ``frame_stride``-th frame:

- **Face-region image error** (:func:`face_region_errors`): PSNR (dB) and L1 (mean absolute
  error, [0, 1] units) of the output against the ground-truth edit, and of the **unedited
  input** against it (the baseline an edit must beat), over the face region = the pixels
  covered by the true face mesh in the input frame or in the ground-truth frame
  (rasterised from the true coefficients with the world's camera: exact).
- **Re-reconstruction** (:class:`~emoedit.metrics.refit.ReReconstructor`): the expression is
  measured back from the pixels of each video with the optimisation fitter — photometric
  stage only, no landmarks (the output has no known landmarks and no detector weights ship), started
  from the input's **true** coefficients, with the true identity and albedo held fixed;
  expression, pose and lighting are fitted. The same fit runs on the output, the input
  and the ground-truth video, and each is compared with the ground-truth edit's true
  coefficients: vertex error of the pose-free shape (mm), expression-coefficient MAE and
  the 68 projected landmarks' distance to the true landmarks (px). The ground-truth video's
  own row is the floor of the measurement (the fitter's error where the answer is known);
  the input's row is how far "no edit" is (``true_change_mm``: the same distance between
  the true shapes of the input and the ground-truth edit, i.e. the size of the true edit).
  Because the fit starts at the input, an
  under-fitted output looks closer to the input, i.e. the measure errs against the edit.

Everything is written to ``evaluation.json``; :func:`format_table` gives the short table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from emoedit.editing.emotion_code import MAX_LEVEL
from emoedit.metrics.face_region import face_masks
from emoedit.metrics.refit import FitErrors, ReReconstructor
from emoedit.shape_checks import assert_shape

LEVEL_TOLERANCE = 1e-6  # a strength α is a stored level when 3α is this close to an integer


@dataclass(frozen=True)
class EditedVideo:
    """One output of the demo's edit stage."""

    name: str  # file stem, e.g. "happy_1.00"
    emotion: str  # target emotion
    alpha: float  # strength α (1.0 = MEAD level 3)
    path: Path  # the edited .mp4


@dataclass(frozen=True)
class ClipFrames:
    """Frames and true per-frame values of one video on the evaluated frames."""

    frames: Tensor  # (N, 3, H, W) float in [0, 1]
    coeffs: Tensor | None  # (N, L) true coefficients (None for the method's output)
    landmarks: Tensor | None  # (N, 68, 2) true landmarks, pixels (None for the output)
    source: str  # where it came from ("video <path>", "rendered on demand (level 1.5)")


def stored_level(alpha: float, levels: Sequence[int]) -> int | None:
    """The world's level ``3α`` when it is one of ``levels`` (a stored ground-truth edit), else None."""
    level = alpha * MAX_LEVEL
    nearest = round(level)
    if abs(level - nearest) <= LEVEL_TOLERANCE and nearest in levels:
        return int(nearest)
    return None


def load_input(world: Any, source: Any, rows: Sequence[int], truth: Any | None = None) -> ClipFrames:
    """The neutral source clip (video + truth) on ``rows`` (``truth``: the source's, when already loaded)."""
    from emoedit.video import read_frame_rows

    truth = world.load_truth(source) if truth is None else truth
    return ClipFrames(frames=read_frame_rows(source.video_path, rows), coeffs=truth.coeffs[list(rows)].float(),
                      landmarks=truth.landmarks[list(rows)].float(), source=f"video {source.video_path}")


def load_truth_edit(world: Any, source: Any, emotion: str, alpha: float, rows: Sequence[int]) -> ClipFrames:
    """The ground-truth edit of ``source`` into ``emotion`` at strength ``alpha`` on ``rows``
    (the world's stored video when 3α is a generated level, else rendered now)."""
    from emoedit.video import read_frame_rows

    level = stored_level(alpha, world.preset.levels)
    if level is not None:
        record = world.edit(source, emotion, level)
        truth = world.load_truth(record)
        return ClipFrames(frames=read_frame_rows(record.video_path, rows), coeffs=truth.coeffs[list(rows)].float(),
                          landmarks=truth.landmarks[list(rows)].float(), source=f"video {record.video_path}")
    clip = world.render_edit(source, emotion, alpha * MAX_LEVEL)
    frames = torch.from_numpy(clip.frames[list(rows)]).permute(0, 3, 1, 2).float().div(255.0)
    return ClipFrames(frames=frames, coeffs=clip.truth.coeffs[list(rows)].float(),
                      landmarks=clip.truth.landmarks[list(rows)].float(),
                      source=f"rendered on demand (level {alpha * MAX_LEVEL:.3g}, not video-encoded)")


class EditTargets:
    """The source clip and its ground-truth edits on fixed frame rows, each read (and its face
    region rasterised) once, then shared by every scoring of the same source: the full method's
    edits and each ablation's. Nothing is read until asked for."""

    def __init__(
        self,
        world: Any,  # the SyntheticWorld
        source: Any,  # the edited neutral clip (a ClipRecord of the world)
        rows: Sequence[int],  # frame indices evaluated
        source_truth: Any | None = None,  # the source's loaded truth (None: read when first needed)
    ) -> None:
        self.world, self.source, self.rows = world, source, tuple(int(r) for r in rows)
        self._source_truth = source_truth
        self._input: tuple[ClipFrames, Tensor] | None = None
        self._truth: dict[tuple[str, float], tuple[ClipFrames, Tensor]] = {}

    @classmethod
    def every(cls, world: Any, source: Any, frame_stride: int) -> EditTargets:
        """Targets on every ``frame_stride``-th frame of ``source``."""
        truth = world.load_truth(source)
        return cls(world, source, range(0, truth.num_frames, max(1, frame_stride)), source_truth=truth)

    def _mask(self, coeffs: Tensor) -> Tensor:
        return face_masks(self.world.face_model(), self.world.camera, coeffs, self.world.image_size)

    def input(self) -> tuple[ClipFrames, Tensor]:
        """The unedited source on the rows and its face region (N, 1, H, W) bool."""
        if self._input is None:
            inputs = load_input(self.world, self.source, self.rows, self._source_truth)
            self._input = (inputs, self._mask(inputs.coeffs))
        return self._input

    def truth(self, emotion: str, alpha: float) -> tuple[ClipFrames, Tensor]:
        """The ground-truth edit on the rows and the face region of the input or the truth (N, 1, H, W) bool."""
        key = (emotion, float(alpha))
        if key not in self._truth:
            truth = load_truth_edit(self.world, self.source, emotion, alpha, self.rows)
            self._truth[key] = (truth, self.input()[1] | self._mask(truth.coeffs))
        return self._truth[key]


def face_region_errors(
    output: Tensor,  # (N, 3, H, W) float in [0, 1]
    target: Tensor,  # (N, 3, H, W) float in [0, 1]
    mask: Tensor,  # (N, 1, H, W) bool face region
) -> dict[str, float]:
    """PSNR (dB, from the MSE pooled over every masked pixel) and L1 over the face region."""
    from emoedit.metrics.image_quality import masked_psnr

    dims = assert_shape(output, ("N", 3, "H", "W"), "output")
    assert_shape(target, ("N", 3, "H", "W"), "target", dims)
    assert_shape(mask, ("N", 1, "H", "W"), "mask", dims)
    weights = mask.to(torch.float64)
    count = float(weights.sum()) * 3
    diff = (output.double() - target.double()) * weights
    mse = float(diff.square().sum()) / max(count, 1.0)
    return {
        "psnr_db": 10.0 * math.log10(1.0 / max(mse, 1e-12)),
        "mean_frame_psnr_db": float(masked_psnr(output.clamp(0, 1), target.clamp(0, 1), mask).mean()),
        "l1": float(diff.abs().sum()) / max(count, 1.0),
        "region_fraction": float(weights.mean()),
    }


def evaluate_edits(
    world: Any,  # the SyntheticWorld
    source: Any,  # the edited neutral clip (a ClipRecord of the world)
    edits: Sequence[EditedVideo],  # the demo's outputs
    *,
    frame_stride: int,  # evaluate every n-th frame
    fit_photo_steps: int,  # 0: no re-reconstruction
    fit_render_size: int,  # photometric render side, pixels
    progress: bool = True,  # tqdm bar over the edits
    targets: EditTargets | None = None,  # the source's input and truths, shared with other scorings (its rows replace frame_stride's)
) -> dict[str, Any]:
    """Every number of the module docstring, as a JSON-able dict."""
    from tqdm import tqdm

    from emoedit.metrics.geometry import shape_vertex_error_mm
    from emoedit.video import read_frame_rows

    if targets is None:
        targets = EditTargets.every(world, source, frame_stride)
    elif targets.source.key != source.key:
        raise ValueError(f"evaluate_edits: targets of {targets.source.key}, not of {source.key}")
    elif len(targets.rows) > 1 and targets.rows[1] - targets.rows[0] != max(1, frame_stride):
        raise ValueError(f"evaluate_edits: targets on every {targets.rows[1] - targets.rows[0]}th frame, "
                         f"but frame_stride={frame_stride}")
    rows = list(targets.rows)
    model, camera = world.face_model(), world.camera
    inputs, _ = targets.input()
    fitter = None
    input_fit = None
    if fit_photo_steps > 0:
        fitter = ReReconstructor(face_model=model, camera=camera, photo_steps=fit_photo_steps,
                                 render_size=fit_render_size)
        input_fit = fitter.fit(inputs.frames, inputs.coeffs, inputs.landmarks)
    results = []
    for edit in tqdm(edits, desc="evaluation", unit="video", disable=not progress, dynamic_ncols=True):
        truth, mask = targets.truth(edit.emotion, edit.alpha)
        output = read_frame_rows(edit.path, rows)
        if output.shape != truth.frames.shape:
            raise ValueError(f"{edit.path}: frames {tuple(output.shape)} but the truth has {tuple(truth.frames.shape)}")
        entry: dict[str, Any] = {
            "name": edit.name, "emotion": edit.emotion, "alpha": edit.alpha, "level": edit.alpha * MAX_LEVEL,
            "output": str(edit.path), "truth": truth.source, "frames": len(rows),
            "image": {"output_vs_truth": face_region_errors(output, truth.frames, mask),
                      "input_vs_truth": face_region_errors(inputs.frames, truth.frames, mask)},
        }
        with torch.no_grad():
            layout = model.layout
            a, b = layout.split(inputs.coeffs), layout.split(truth.coeffs)
            entry["true_change_mm"] = float(shape_vertex_error_mm(model, a.id_coeff, a.exp_coeff, b.id_coeff,
                                                                  b.exp_coeff).mean())
        if fitter is not None and input_fit is not None:
            entry["refit"] = {
                "output": fitter.errors(fitter.fit(output, inputs.coeffs, inputs.landmarks), truth.coeffs,
                                         truth.landmarks).to_json(),
                "input": fitter.errors(input_fit, truth.coeffs, truth.landmarks).to_json(),
                "truth_video": fitter.errors(fitter.fit(truth.frames, inputs.coeffs, inputs.landmarks),
                                              truth.coeffs, truth.landmarks).to_json(),
            }
        results.append(entry)
    return {
        "source_clip": str(source.video_path),
        "subject": source.key.subject,
        "subject_is_unseen": source.key.subject in world.unseen_subjects,
        "frames": rows,
        "method": {
            "face_region": "pixels covered by the true face mesh in the input or the ground-truth frame "
                           "(true coefficients, world camera)",
            "psnr": "10·log10(1/MSE), MSE pooled over the face-region pixels of the evaluated frames, [0, 1] images",
            "refit": (f"FaceFitter photometric stage only ({fit_photo_steps} steps, render {fit_render_size} px, "
                      "no landmarks), started from the input's true coefficients with the true identity and "
                      "albedo fixed; compared with the ground-truth edit's true coefficients and landmarks")
            if fit_photo_steps > 0 else None,
        },
        "edits": results,
        "summary": summarise(results),
    }


def evaluate_ablations(
    world: Any,  # the SyntheticWorld
    source: Any,  # the edited neutral clip
    variants: dict[str, Sequence[EditedVideo]],  # ablation name → its videos
    *,
    full: dict[str, Any],  # evaluate_edits' result of the full method (its rows on the same edits are reused)
    frame_stride: int,  # as evaluate_edits
    labels: dict[str, str],  # ablation name → table label
    progress: bool = True,
    targets: EditTargets | None = None,  # the full method's targets (input and truths read once for all variants)
) -> dict[str, Any]:
    """Face-region image errors (no re-reconstruction) of each ablation, next to the full method
    and the unedited input on the same edits: ``{"rows": [{"name", "label", "psnr_db", "l1"}], "edits": [...]}``."""
    names = sorted({v.name for videos in variants.values() for v in videos})
    chosen = [r for r in full["edits"] if r["name"] in names]
    rows = [{"name": "full", "label": "full method",
             "psnr_db": _mean([r["image"]["output_vs_truth"]["psnr_db"] for r in chosen]),
             "l1": _mean([r["image"]["output_vs_truth"]["l1"] for r in chosen])}]
    targets = targets or EditTargets.every(world, source, frame_stride)
    for name, videos in variants.items():
        result = evaluate_edits(world, source, videos, frame_stride=frame_stride, fit_photo_steps=0,
                                fit_render_size=0, progress=progress, targets=targets)
        rows.append({"name": name, "label": labels.get(name, name),
                     "psnr_db": _mean([r["image"]["output_vs_truth"]["psnr_db"] for r in result["edits"]]),
                     "l1": _mean([r["image"]["output_vs_truth"]["l1"] for r in result["edits"]])})
    rows.append({"name": "input", "label": "unedited input",
                 "psnr_db": _mean([r["image"]["input_vs_truth"]["psnr_db"] for r in chosen]),
                 "l1": _mean([r["image"]["input_vs_truth"]["l1"] for r in chosen])})
    return {"edits": names, "rows": rows}


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the full-strength edits (α = 1) and over all edits."""
    out: dict[str, Any] = {}
    for name, chosen in (("full_strength", [r for r in results if abs(r["alpha"] - 1.0) < 1e-6]),
                         ("all", list(results))):
        if not chosen:
            continue
        block: dict[str, Any] = {"edits": len(chosen),
                                 "true_change_mm": _mean([r.get("true_change_mm") for r in chosen])}
        for side in ("output_vs_truth", "input_vs_truth"):
            block[side] = {k: _mean([r["image"][side][k] for r in chosen]) for k in ("psnr_db", "l1")}
        if all("refit" in r for r in chosen):
            block["refit"] = {who: {k: _mean([r["refit"][who][k] for r in chosen])
                                    for k in ("vertex_mm", "exp_mae", "landmark_px")}
                              for who in ("output", "input", "truth_video")}
        out[name] = block
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_table(evaluation: dict[str, Any]) -> str:
    """A short markdown table of :func:`evaluate_edits`' result (one row per edit, then the means)."""
    has_fit = all("refit" in r for r in evaluation["edits"])
    head = "| edit | strength | face PSNR out / in (dB) ↑ | face L1 out / in ↓ |"
    rule = "|---|---:|---|---|"
    if has_fit:
        head += " vertex err. out / in / floor (mm) ↓ | landmark err. out / in / floor (px) ↓ | true change (mm) |"
        rule += "---|---|---:|"
    lines = [head, rule]

    def row(label: str, alpha: str, image: dict[str, Any], refit: dict[str, Any] | None, change: float | None) -> str:
        out, inp = image["output_vs_truth"], image["input_vs_truth"]
        text = (f"| {label} | {alpha} | {_fmt(out['psnr_db'])} / {_fmt(inp['psnr_db'])} | "
                f"{_fmt(out['l1'], 4)} / {_fmt(inp['l1'], 4)} |")
        if has_fit and refit is not None:
            text += (f" {_fmt(refit['output']['vertex_mm'])} / {_fmt(refit['input']['vertex_mm'])} / "
                     f"{_fmt(refit['truth_video']['vertex_mm'])} | {_fmt(refit['output']['landmark_px'])} / "
                     f"{_fmt(refit['input']['landmark_px'])} / {_fmt(refit['truth_video']['landmark_px'])} | "
                     f"{_fmt(change)} |")
        return text

    for r in evaluation["edits"]:
        lines.append(row(r["emotion"], f"{r['alpha']:.2f}", r["image"], r.get("refit"), r.get("true_change_mm")))
    for name, label in (("full_strength", "**mean, strength 1**"), ("all", "**mean, all edits**")):
        block = evaluation["summary"].get(name)
        if block:
            lines.append(row(label, "", block, block.get("refit"), block.get("true_change_mm")))
    ablations = evaluation.get("ablations")
    if ablations:
        lines += ["", f"Ablations (strength 1; {', '.join(ablations['edits'])}):", "",
                  "| variant | face PSNR (dB) ↑ | face L1 ↓ |", "|---|---|---|"]
        lines += [f"| {r['label']} | {_fmt(r['psnr_db'])} | {_fmt(r['l1'], 4)} |" for r in ablations["rows"]]
    return "\n".join(lines)


__all__ = [
    "ClipFrames",
    "EditedVideo",
    "FitErrors",
    "ReReconstructor",
    "EditTargets",
    "evaluate_ablations",
    "evaluate_edits",
    "face_masks",
    "face_region_errors",
    "format_table",
    "load_input",
    "load_truth_edit",
    "stored_level",
    "summarise",
]
