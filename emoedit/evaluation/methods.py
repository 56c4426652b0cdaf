"""The methods the harness evaluates: ours, its ablations, the baselines and two references.

Every method turns one input clip + a target emotion code into an **output video** of the
same size, fps and length (written atomically; an existing file is a finished output).
All methods are then scored by the same code on the same frames (:mod:`.scoring`), so
the numbers are comparable:

- ``ours`` and the ablations run :class:`~emoedit.pipeline.editor.VideoEditor` with one
  :class:`~emoedit.pipeline.editor.EditOptions` switch each (:data:`ABLATION_OPTIONS`:
  ``w/o classifier`` = the mean direction over the subjects, ``w/o shape``, ``w/o
  texture``, ``w/o smoothing``, ``w/o teeth``), from one bundle of frozen parts;
- the baselines (StarGAN, ExprGAN: :mod:`emoedit.baselines.crop_editor`; pSp:
  :mod:`emoedit.baselines.psp_face`; all :class:`~emoedit.baselines.crop_editor.CropEditor`) edit
  **aligned face crops**: each frame is aligned exactly as the frames cache was (Deep3D
  5-point alignment to the face model's template, ``editor.crop_size``), the crops are
  edited with the item's code, and pasted back into the frame with a feathered square
  mask (:func:`crop_paste_mask`, :func:`~emoedit.data.alignment.paste_crop_into_frame`).
  So every method is scored on full frames; scores that need a face crop align the
  output frame with the **input** frame's transform for every method alike;
- the references ``input (no edit)`` and ``ground truth`` copy the input / the truth
  video: the floor and ceiling of every metric (e.g. the judge's accuracy on true frames,
  the re-reconstruction's own error). They are not methods and never enter the ordering.

Face detection everywhere = the world's true landmarks of the input clip (as ``emoedit
preprocess --detector truth`` built the caches), so detector errors do not enter the scores.

A method whose bundle or checkpoint is not configured is **skipped** with the reason
(:class:`SkippedMethod`), never replaced by something else.
"""

from __future__ import annotations

import abc
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from emoedit.atomic_io import atomic_path
from emoedit.evaluation.config import ALL_METHODS, EvaluateConfig
from emoedit.shape_checks import assert_shape

INPUT_REFERENCE = "input (no edit)"
TRUTH_REFERENCE = "ground truth"
REFERENCES: tuple[str, ...] = (INPUT_REFERENCE, TRUTH_REFERENCE)
KINDS: tuple[str, ...] = ("ours", "ablation", "baseline", "reference")
#: EditOptions switches of ours and of each ablation.
ABLATION_OPTIONS: dict[str, dict[str, bool]] = {
    "ours": {},
    "w/o classifier": {"use_classifier": False},
    "w/o shape": {"edit_shape": False},
    "w/o texture": {"edit_texture": False},
    "w/o smoothing": {"smoothing": False},
    "w/o teeth": {"teeth": False},
}
BASELINES: tuple[str, ...] = ("StarGAN", "pSp", "ExprGAN")
#: Soft border of the baselines' paste mask, as a fraction of the crop side.
CROP_FEATHER_FRACTION = 0.08


def method_slug(name: str) -> str:
    """Folder name of a method: ``"w/o classifier"`` → ``"wo_classifier"``, ``"StarGAN"`` → ``"stargan"``."""
    slug = name.lower().replace("w/o", "wo").replace("(", "").replace(")", "")
    return "_".join("".join(c if c.isalnum() else " " for c in slug).split())


_ALIASES: dict[str, str] = {method_slug(n): n for n in (*ALL_METHODS, *REFERENCES)}
_ALIASES.update({"input": INPUT_REFERENCE, "truth": TRUTH_REFERENCE})


def canonical_method_name(name: str) -> str:
    """The registry's name of ``name`` (a display name or slug, any case); ``ValueError`` otherwise."""
    slug = method_slug(str(name))
    if slug not in _ALIASES:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(ALL_METHODS)} (or their slugs, e.g. "
                         f"wo_classifier)")
    return _ALIASES[slug]


def method_kind(name: str) -> str:
    """``ours``, ``ablation``, ``baseline`` or ``reference``."""
    name = canonical_method_name(name)
    if name == "ours":
        return "ours"
    if name in ABLATION_OPTIONS:
        return "ablation"
    if name in BASELINES:
        return "baseline"
    return "reference"


@dataclass(frozen=True)
class SkippedMethod:
    """A requested method that cannot run, and why (reported in the tables and results.json)."""

    name: str  # registry name
    reason: str  # e.g. "no bundle configured (bundle: null)"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass(frozen=True, eq=False)
class MethodInput:
    """What a method may use to produce one output."""

    input_video: Path  # the neutral input clip
    landmarks: Tensor  # (T, 68, 2) float the input's landmarks per frame, pixels (the world's truth)
    emotion_code: Tensor  # (7,) float target code (EMOTIONS order; strengths α)
    truth_video: Path | None = None  # the ground-truth edit (the "ground truth" reference only)


class EvaluationMethod(abc.ABC):
    """One row of the tables: produces an output video per item."""

    name: str  # registry name (table row)
    kind: str  # one of KINDS
    continuous: bool = True  # accepts any strength α (the intensity sweep)

    @property
    def slug(self) -> str:
        """Folder name under ``videos/``."""
        return method_slug(self.name)

    @abc.abstractmethod
    def produce(self, source: MethodInput, out_path: Path) -> dict[str, Any]:
        """Write the output video to ``out_path`` (atomically); returns JSON-able details."""

    def describe(self) -> str:
        """One line for results.json."""
        return self.name


# ---------------------------------------------------------------------------------- references
class ReferenceMethod(EvaluationMethod):
    """``input (no edit)`` copies the input; ``ground truth`` copies the true edit."""

    kind = "reference"

    def __init__(self, *, name: str) -> None:  # INPUT_REFERENCE or TRUTH_REFERENCE
        if name not in REFERENCES:
            raise ValueError(f"ReferenceMethod: name must be one of {REFERENCES}, got {name!r}")
        self.name = name

    def produce(self, source: MethodInput, out_path: Path) -> dict[str, Any]:
        path = source.input_video if self.name == INPUT_REFERENCE else source.truth_video
        if path is None:
            raise ValueError("the ground-truth reference needs MethodInput.truth_video")
        with atomic_path(out_path) as tmp:
            shutil.copyfile(path, tmp)
        return {"copied_from": str(path)}

    def describe(self) -> str:
        return "the input clip, unedited" if self.name == INPUT_REFERENCE else "the world's ground-truth edit"


# ---------------------------------------------------------------------------------- ours
class EditorMethod(EvaluationMethod):
    """Ours or an ablation: :class:`~emoedit.pipeline.editor.VideoEditor` with one switch."""

    def __init__(
        self,
        *,
        name: str,  # "ours" or a key of ABLATION_OPTIONS
        parts: Any,  # EditParts of the bundle
        options: Any,  # EditOptions (the ablation switch already applied)
    ) -> None:
        self.name = name
        self.kind = "ours" if name == "ours" else "ablation"
        self.parts = parts
        self.options = options

    def produce(self, source: MethodInput, out_path: Path) -> dict[str, Any]:
        from emoedit.data.detection import GivenLandmarksDetector
        from emoedit.editing.emotion_code import EmotionSchedule
        from emoedit.pipeline.editor import VideoEditor

        editor = VideoEditor(parts=self.parts, options=self.options, detector=GivenLandmarksDetector(source.landmarks))
        report = editor.edit(source.input_video, EmotionSchedule.constant(source.emotion_code.float().cpu()), out_path)
        return {"seconds": round(sum(report.seconds.values()), 3), "warnings": list(report.warnings),
                "frames_with_face": report.frames_with_face, "texture_edit_mode": report.details.get("texture_edit_mode")}

    def describe(self) -> str:
        switches = ABLATION_OPTIONS[self.name]
        return "VideoEditor" + (f" with {switches}" if switches else " (every part on)")


# ---------------------------------------------------------------------------------- baselines
def crop_paste_mask(
    size: int,  # crop side S, pixels
    *,
    feather_fraction: float = CROP_FEATHER_FRACTION,  # soft border width / S
) -> Tensor:
    """``(1, 1, S, S)`` float in [0, 1]: 1 inside, a raised-cosine ramp to 0 over the border."""
    if size < 2:
        raise ValueError(f"crop_paste_mask: size must be >= 2, got {size}")
    ramp = max(feather_fraction * size, 1e-6)
    coords = torch.arange(size, dtype=torch.float32)
    distance = torch.minimum(coords + 0.5, size - 0.5 - coords)  # distance to the crop border, pixels
    line = torch.where(distance >= ramp, torch.ones_like(distance),
                       0.5 - 0.5 * torch.cos(math.pi * (distance / ramp).clamp(0, 1)))
    return (line[:, None] * line[None, :])[None, None]


class CropBaselineMethod(EvaluationMethod):
    """A crop editor (``.name``, ``.crop_size``, ``.edit(crops, codes)``) pasted back into the frames."""

    kind = "baseline"

    def __init__(
        self,
        *,
        name: str,  # table row: "StarGAN", "pSp", "ExprGAN"
        editor: Any,  # CropEditor: edit((B, 3, S, S) [0, 1], (B, 7)) -> (B, 3, S, S) [0, 1]
        face_model: Any,  # MorphableModel whose mean landmarks are the alignment template (as the frames cache)
        batch_size: int = 16,  # frames per edit call
        crf: float = 18.0,  # x264 quality of the output
        preset: str = "veryfast",  # x264 speed preset of the output
        device: str | torch.device = "cpu",  # where the crops are edited
    ) -> None:
        from emoedit.data.alignment import AlignmentTemplate

        self.name = name
        self.editor = editor
        self.crop_size = int(editor.crop_size)
        self.template = AlignmentTemplate.from_face_model(face_model)
        self.batch_size = int(batch_size)
        self.crf = float(crf)
        self.preset = preset
        self.device = torch.device(device)
        self.continuous = bool(getattr(editor, "continuous", True))
        self.mask = crop_paste_mask(self.crop_size)

    def edit_frames(
        self,
        frames: Tensor,  # (B, 3, H, W) float in [0, 1]
        landmarks: Tensor,  # (B, 68, 2) float frame pixels
        emotion_code: Tensor,  # (7,) float target code
    ) -> Tensor:
        """``(B, 3, H, W)`` float in [0, 1]: the frames with the edited crops pasted in."""
        from emoedit.data.alignment import face_crop_transform, paste_crop_into_frame, warp_to_crop

        dims = assert_shape(frames, ("B", 3, "H", "W"), "frames")
        assert_shape(landmarks, (dims["B"], 68, 2), "landmarks")
        frames = frames.to(self.device)
        transform = face_crop_transform(landmarks.float(), self.template, frame_size=(dims["H"], dims["W"]),
                                        crop_size=self.crop_size).to(self.device)
        crops = warp_to_crop(frames, transform).clamp(0.0, 1.0)
        codes = emotion_code.float().to(self.device)[None].expand(dims["B"], -1)
        with torch.no_grad():
            edited = self.editor.edit(crops, codes)
        assert_shape(edited, (dims["B"], 3, self.crop_size, self.crop_size), f"{self.name}.edit output")
        mask = self.mask.to(self.device).expand(dims["B"], -1, -1, -1)
        return paste_crop_into_frame(edited.float().clamp(0.0, 1.0), transform, frames, mask).clamp(0.0, 1.0)

    def produce(self, source: MethodInput, out_path: Path) -> dict[str, Any]:
        from emoedit.video import VideoReader, VideoWriter

        started = time.perf_counter()
        landmarks = source.landmarks.float()
        with VideoReader(source.input_video) as reader:
            info = reader.info
            if landmarks.shape[0] < info.num_frames:
                raise ValueError(f"{source.input_video}: {info.num_frames} frames but landmarks for "
                                 f"{landmarks.shape[0]}")
            with VideoWriter(out_path, fps=info.fps, audio_from=source.input_video, crf=self.crf,
                             preset=self.preset) as writer:
                start = 0
                for chunk in reader.iter_chunks(self.batch_size):
                    count = int(chunk.shape[0])
                    frames = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().div(255.0)
                    edited = self.edit_frames(frames, landmarks[start:start + count], source.emotion_code)
                    writer.write(edited.mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
                    start += count
        return {"seconds": round(time.perf_counter() - started, 3), "crop_size": self.crop_size}

    def describe(self) -> str:
        return (f"{type(self.editor).__name__} on {self.crop_size}² aligned crops, pasted back with a feathered "
                f"square mask ({CROP_FEATHER_FRACTION:.0%} border)")


# ---------------------------------------------------------------------------------- registry
@dataclass
class MethodRegistry:
    """The methods to run (in table order) and the requested ones that were skipped."""

    methods: list[EvaluationMethod] = field(default_factory=list)
    skipped: list[SkippedMethod] = field(default_factory=list)
    parts: Any = None  # the bundle's EditParts when loaded (its reconstructor re-reconstructs outputs)

    def get(self, name: str) -> EvaluationMethod | None:
        """The method called ``name`` (any alias), or None."""
        name = canonical_method_name(name)
        return next((m for m in self.methods if m.name == name), None)


def _missing(path: str | None, what: str, cfg: EvaluateConfig) -> str | None:
    """Why ``path`` cannot be used (None: it can); raises in strict mode for a configured but missing file."""
    if path is None:
        return f"no {what} configured"
    if not Path(path).exists():
        if cfg.strict:
            raise FileNotFoundError(f"{what}: {path} not found (strict mode)")
        return f"{what} {path} not found"
    return None


def _load_baseline(name: str, cfg: EvaluateConfig) -> tuple[Any | None, str | None]:
    """``(editor, None)`` or ``(None, reason)``."""
    files = cfg.baselines
    if name == "pSp":
        needed = {"baselines.psp_tgan": files.psp_tgan, "baselines.psp_encoder": files.psp_encoder,
                  "baselines.psp_directions": files.psp_directions}
    elif name == "StarGAN":
        needed = {"baselines.stargan": files.stargan}
    else:
        needed = {"baselines.exprgan": files.exprgan}
    for key, path in needed.items():
        reason = _missing(path, f"{key} checkpoint", cfg)
        if reason is not None:
            return None, reason
    try:
        if name == "pSp":
            from emoedit.baselines.psp_face import PSPFaceEditor
        else:
            from emoedit.baselines.crop_editor import ExprGANEditor, StarGANEditor
    except ImportError as err:
        if cfg.strict:
            raise
        return None, f"the baselines package is not available ({err})"
    if name == "StarGAN":
        return StarGANEditor.from_checkpoint(files.stargan), None
    if name == "ExprGAN":
        return ExprGANEditor.from_checkpoint(files.exprgan), None
    return PSPFaceEditor.from_checkpoints(files.psp_tgan, files.psp_encoder, files.psp_directions), None


def build_methods(
    cfg: EvaluateConfig,  # the evaluation config
    *,
    face_model: Any,  # the world's MorphableModel (alignment template of the baselines)
    names: Sequence[str] | None = None,  # methods to build (default: cfg.methods, + references if cfg.references)
    bundle_loader: Callable[..., Any] | None = None,  # load_bundle(dir, device=) (tests inject tiny parts)
) -> MethodRegistry:
    """Build the requested methods; unavailable ones become :class:`SkippedMethod` entries."""
    from emoedit.pipeline.editor import EditOptions

    requested = [canonical_method_name(n) for n in (cfg.methods if names is None else names)]
    if names is None and cfg.references:
        requested += list(REFERENCES)
    requested = list(dict.fromkeys(requested))
    registry = MethodRegistry()
    editor_names = [n for n in requested if n in ABLATION_OPTIONS]
    parts, bundle_reason = None, None
    if editor_names:
        bundle_reason = _missing(cfg.bundle, "bundle", cfg)
        if bundle_reason is None:
            if bundle_loader is None:
                from emoedit.pipeline.bundle import load_bundle as bundle_loader  # noqa: N813
            parts = bundle_loader(cfg.bundle, device=cfg.device)
            registry.parts = parts
    for name in requested:
        if name in ABLATION_OPTIONS:
            if parts is None:
                registry.skipped.append(SkippedMethod(name, str(bundle_reason)))
                continue
            if name == "w/o teeth" and getattr(parts, "teeth", None) is None:
                registry.skipped.append(SkippedMethod(name, "the bundle has no teeth parts: ours already runs "
                                                            "without teeth completion"))
                continue
            options = EditOptions(texture_mode=cfg.edit.texture_mode, teeth_gate=cfg.edit.teeth_gate,
                                  batch_size=cfg.edit.batch_size,
                                  smoothing_half_window=cfg.edit.smoothing_half_window, progress=False,
                                  crf=cfg.edit.crf, preset=cfg.edit.preset, **ABLATION_OPTIONS[name])
            registry.methods.append(EditorMethod(name=name, parts=parts, options=options))
        elif name in BASELINES:
            editor, reason = _load_baseline(name, cfg)
            if editor is None:
                registry.skipped.append(SkippedMethod(name, str(reason)))
                continue
            mover = getattr(editor, "to", None)
            if callable(mover):
                editor = mover(cfg.device) or editor
            registry.methods.append(CropBaselineMethod(name=name, editor=editor, face_model=face_model,
                                                       batch_size=cfg.edit.batch_size, crf=cfg.edit.crf,
                                                       preset=cfg.edit.preset, device=cfg.device))
        else:
            registry.methods.append(ReferenceMethod(name=name))
    return registry


__all__ = [
    "ABLATION_OPTIONS",
    "BASELINES",
    "CropBaselineMethod",
    "EditorMethod",
    "EvaluationMethod",
    "INPUT_REFERENCE",
    "MethodInput",
    "MethodRegistry",
    "REFERENCES",
    "ReferenceMethod",
    "SkippedMethod",
    "TRUTH_REFERENCE",
    "build_methods",
    "canonical_method_name",
    "crop_paste_mask",
    "method_kind",
    "method_slug",
]
