"""The product: one talking-head video → the same video with an edited emotion (METHOD.md §2).

``VideoEditor(parts=..., options=...).edit(input, schedule, output) -> EditReport``.

**Pass 1 — analysis** (:mod:`emoedit.pipeline.analysis`): decode in chunks, detect and
track one face through the whole video (frames without a usable face are reported and pass
through unchanged; a video without any face is an :class:`EditError` naming the file),
then decode again and, exactly as ``emoedit preprocess`` made the training caches: align,
reconstruct the coefficients, extract the UV texture, encode it to W+ (x0) and classify it
(softmax over the training subjects).

**Planning** (small per-frame data only):

- emotion code per frame from the schedule at the video's fps
  (:meth:`~emoedit.editing.emotion_code.EmotionSchedule.codes_for_frames`: constant codes,
  mixtures, keyframed schedules interpolated linearly); strengths above the trained range
  (1.0 = MEAD level 3) are allowed and reported as a warning;
- geometry (§3.6): :func:`~emoedit.networks.geometry_editor.edit_geometry` with the
  video's own frames as the neutral reference (the input is a neutral talking head; the
  condition is the mean of their shape vectors), then the edited expression coefficients
  are smoothed over time (§3.8, eqs. 17-19; identity never). ``--no-shape``: the
  reconstructed coefficients, unchanged and unsmoothed;
- texture (§3.5): ``x = x0 + Σ_j a_j · Σ_v w_v · d[v, j]`` (eq. 4). **One identity per
  video**: the classifier's softmax weights ``w`` are averaged over all the video's frames
  with a face (the person does not change; per-frame weights would make the edit flicker
  with the classifier's noise). ``subject=NAME``: eq. 3 with that subject's directions;
  ``use_classifier=False``: the mean direction over all subjects (the paper's ablation).
  The edited W+ latents are smoothed over time like the expression coefficients.
  ``--no-texture``: the frame's own extracted texture.

**Pass 2 — synthesis** (:mod:`emoedit.pipeline.compositing`): decode a third time, chunk by
chunk; decode the edited texture with the t-GAN (``texture_mode="replace"``: render
``G(x)`` as the paper does; ``"residual"``: the frame's extracted texture plus
``G(x) − G(x0)``, a project option for t-GANs whose reconstructions ``G(E(I))`` are still
blurry: only the *change* comes from the generator), render the edited mesh with it under
the frame's own pose and camera in the texture crop (no lighting: the texture carries the
shading), paste it back with a feathered mask, complete the teeth
(:class:`~emoedit.editing.teeth_completion.TeethCompleter` on the projected landmarks of
the edited mesh), and encode H.264 at the input's exact fps, frame count and size with the
input's audio copied packet for packet (:class:`~emoedit.video.VideoWriter`, which writes
to a temporary file and moves it into place only when complete).

Memory: a few chunks of ``batch_size`` frames at once, whatever the video's length (three
decodes; decoding is cheap next to detection and the networks): the chunk being edited,
up to :data:`~emoedit.pipeline.analysis.DECODE_AHEAD_CHUNKS` decoded ahead by a background
thread and up to :data:`ENCODE_BEHIND_CHUNKS` waiting for the background encoder. Per
frame, the landmarks, coefficients, W+ and subject weights are kept (W+ is
``num_ws · w_dim`` floats: 32 kB at 16 × 512), in whole-video tensors.

Timing: :attr:`EditReport.seconds` has one entry per stage in
:data:`~emoedit.pipeline.stage_timer.EDIT_STAGES` (CUDA is synchronised per stage). "decode"
sums all three decodes and "encode" the encoding, each as the time the editing thread
waited for its background thread (decoding and encoding overlap the other stages);
"align" includes the crop warps; "uv" includes re-extraction in pass 2; "generator"
includes the W+ edit and its smoothing; "geometry" includes the expression smoothing;
"paste" includes the float → uint8 conversion.

Precision: float32; ``EditOptions.bf16`` runs the texture encoder, the classifier, the
t-GAN and a regression reconstructor (not a fitter) under bfloat16 autocast.

Runs on the parts' device (CPU or CUDA) without gradients, except inside a fitting
reconstructor, which optimises.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from emoedit.data.alignment import AlignmentTemplate, CropTransform
from emoedit.data.detection import LEFT_MOUTH_CORNER_ID, RIGHT_MOUTH_CORNER_ID, FaceDetector
from emoedit.data.mouth import INNER_LIP_IDS
from emoedit.editing.emotion_code import EMOTIONS, EmotionSchedule, format_emotion_code
from emoedit.editing.smoothing import temporal_smooth
from emoedit.networks.geometry_editor import edit_geometry
from emoedit.pipeline.analysis import (
    FaceAnalyzer,
    VideoAnalysis,
    detect_and_track,
    frames_to_tensor,
    network_autocast,
    timed_chunks,
    to_uint8,
)
from emoedit.pipeline.compositing import FaceCompositor
from emoedit.pipeline.intermediates import IntermediatesWriter
from emoedit.pipeline.parts import EditParts
from emoedit.pipeline.stage_timer import EDIT_STAGES, StageTimer
from emoedit.shape_checks import assert_shape
from emoedit.texture.face_region import compose_in_region, mask_outside_region
from emoedit.video import VideoReader, VideoWriter

TEXTURE_MODES: tuple[str, ...] = ("replace", "residual", "warp")
TRAINED_MAX_STRENGTH = 1.0  # α = j / E_m of MEAD's strongest level; stronger codes extrapolate
DEFAULT_DLIB_MIN_FACE_PX = 40.0  # dlib: smaller faces are not tracked (as emoedit preprocess)
TEXTURE_EDIT_CHUNK = 256  # frames per TextureEditor call (bounds the (B, num_ws·w_dim) temporaries)
ENCODE_BEHIND_CHUNKS = 2  # edited chunks waiting for the background encoder at most


class EditError(ValueError):
    """An edit that cannot run: no face in the video, unknown subject, bad options (the message says which)."""


@dataclass(frozen=True)
class EditOptions:
    """How :class:`VideoEditor` edits (the switches of ``emoedit edit``)."""

    use_classifier: bool = True  # False: --no-classifier = mean direction over the subjects (the paper's ablation)
    edit_shape: bool = True  # False: --no-shape (geometry editor off: the reconstructed coefficients)
    edit_texture: bool = True  # False: --no-texture (the frame's own extracted texture, no W+ edit)
    smoothing: bool = True  # False: --no-smoothing (no temporal smoothing of expression and W+)
    teeth: bool = True  # False: --no-teeth (no teeth completion)
    subject: str | None = None  # a training subject's name: eq. 3 with its directions instead of eq. 4
    texture_mode: str = "replace"  # "replace": render G(x) (the paper); "residual": extracted + G(x) − G(x0);
    # "warp": the frame's own pixels moved with the mesh + G(x) − G(x0) (compositing.FaceCompositor.warp)
    batch_size: int = 16  # frames decoded and run through the networks at once
    smoothing_half_window: int | None = None  # l of the Hann window (2l+1 frames); None: settings.smoothing_half_window
    progress: bool = True  # tqdm bar per pass
    save_intermediates: str | None = None  # folder for per-frame textures, renders, masks and edit_data.pt
    crf: float = 18.0  # x264 constant rate factor of the output (0 lossless .. 51)
    preset: str = "medium"  # x264 speed/size preset of the output
    teeth_gate: float = 0.0  # warp mode: complete teeth in proportion to how far the edit moved the inner lips
    # (mean over the 8 inner-lip landmarks), full strength from this fraction of the mouth width; 0: always complete
    bf16: bool = False  # run the encoder, classifier, t-GAN and a regression reconstructor under bfloat16 autocast
    # (faster on CPUs with AMX/AVX512-BF16 and on GPUs; results differ slightly: off by default)

    def __post_init__(self) -> None:
        problems = []
        if self.texture_mode not in TEXTURE_MODES:
            problems.append(f"texture_mode must be one of {TEXTURE_MODES}, got {self.texture_mode!r}")
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        half = self.smoothing_half_window
        if half is not None and (isinstance(half, bool) or int(half) != half or half < 0):
            problems.append(f"smoothing_half_window must be an integer >= 0 or None, got {half!r}")
        if self.subject is not None and not self.use_classifier:
            problems.append("subject (eq. 3) and use_classifier=False (mean-direction ablation) exclude each other")
        if self.subject is not None and not str(self.subject).strip():
            problems.append("subject must be a non-empty name or None")
        if not self.teeth_gate >= 0:
            problems.append(f"teeth_gate must be >= 0, got {self.teeth_gate}")
        if self.teeth_gate > 0 and self.texture_mode != "warp":
            problems.append("teeth_gate applies to texture_mode='warp' only")
        if not 0 <= self.crf <= 51:
            problems.append(f"crf must lie in [0, 51], got {self.crf}")
        if problems:
            raise EditError("EditOptions: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EditReport:
    """What one :meth:`VideoEditor.edit` did."""

    input: str  # input video path
    output: str  # output video path
    num_frames: int  # frames in the input (and in the output)
    frames_with_face: int  # frames edited
    passthrough_frames: list[int]  # indices of frames without a usable face, copied unchanged
    fps: float  # frame rate of input and output
    seconds: dict[str, float]  # wall-clock seconds per stage (EDIT_STAGES; 0.0 when a stage did not run)
    warnings: list[str]  # things the user should know (extrapolated intensities, faceless frames, no teeth, ...)
    details: dict[str, Any] = field(default_factory=dict)  # tracking report, texture edit mode, options, totals

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (seconds rounded to 0.1 ms)."""
        data = dataclasses.asdict(self)
        data["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        return data


@dataclass(frozen=True, eq=False)
class EditPlan:
    """The edit of every frame with a face, decided between the passes (rows as :class:`VideoAnalysis`)."""

    emotion_codes: Tensor  # (T, E) code per video frame (all frames)
    coeffs: Tensor  # (Tv, L) coefficients to render (edited and smoothed, or the reconstruction)
    coeffs_source: Tensor  # (Tv, L) the reconstruction with its expression smoothed alike: what warp mode warps from
    wplus: Tensor | None  # (Tv, num_ws, w_dim) latents to decode (edited, smoothed); None: no texture edit
    wplus_source: Tensor | None  # (Tv, num_ws, w_dim) x0 smoothed alike (residual and warp modes), else None
    subject_weights: Tensor | None  # (N,) eq. 4's mixing weights: the classifier's softmax averaged over the
    # video, tempered by the directions' τ (TextureEditor.mixing_weights); None unless eq. 4 ran
    texture_edit_mode: str  # "classifier" (eq. 4), "subject" (eq. 3), "mean" (ablation) or "off" (--no-texture)
    half_window: int  # l of the smoothing window actually used (0 = off)


def teeth_gate(
    landmarks: Tensor,  # (B, 68, 2) edited mesh's landmarks, frame pixels
    source_landmarks: Tensor,  # (B, 68, 2) source mesh's landmarks, frame pixels
    full_fraction: float,  # displacement that gives weight 1, as a fraction of the source mouth width (> 0)
) -> Tensor:
    """``(B,)`` float in [0, 1]: mean displacement of the inner-lip landmarks / (``full_fraction`` ·
    the source's mouth width, outer lip corners iBUG 49-55), clamped. Resolution-independent.

    Warp compositing keeps the frame's own mouth where the edit left the lips in place; teeth
    completion is only needed (and only trusted) where the edit moved them.
    """
    assert_shape(landmarks, ("B", 68, 2), "landmarks")
    assert_shape(source_landmarks, ("B", 68, 2), "source_landmarks")
    inner = list(INNER_LIP_IDS)
    moved = (landmarks[:, inner] - source_landmarks[:, inner]).norm(dim=-1).mean(dim=-1)
    width = (source_landmarks[:, RIGHT_MOUTH_CORNER_ID] - source_landmarks[:, LEFT_MOUTH_CORNER_ID]).norm(dim=-1)
    width = width.clamp_min(1e-6)
    return (moved / (full_fraction * width)).clamp(0.0, 1.0)


def smooth_runs(sequence: Tensor, runs: list[tuple[int, int]], half_window: int) -> Tensor:
    """Eqs. 17-19 on each row range ``[start, stop)`` separately: ``(Tv, ...)`` → same shape (a new tensor)."""
    out = sequence.clone()
    if half_window <= 0:
        return out
    for start, stop in runs:
        out[start:stop] = temporal_smooth(sequence[start:stop], half_window)
    return out


class _EncodeBehind:
    """Hands frame chunks to ``writer.write`` in a background thread, at most ``depth`` chunks behind.

    PyAV releases the GIL while it converts and encodes, so encoding overlaps the next
    chunk's work. ``write`` blocks while ``depth`` chunks wait (memory stays bounded) and
    re-raises an error of the thread; ``finish`` waits until everything is written. The
    chunks handed over must not be modified afterwards. Use as a context manager: on an
    exception the thread is stopped and the pending chunks are dropped.
    """

    _END = object()

    def __init__(self, writer: VideoWriter, *, depth: int) -> None:
        self.writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emoedit-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._END or self._stop.is_set():
                return
            try:
                self.writer.write(item)
            except BaseException as error:  # noqa: BLE001 - re-raised in the editing thread
                self._error = error
                return

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, frames: np.ndarray) -> None:
        """Queue ``(n, H, W, 3)`` uint8 frames for the writer."""
        while True:
            self._raise_error()
            if not self._thread.is_alive():
                raise RuntimeError("the video encoding thread stopped unexpectedly")
            try:
                self._queue.put(frames, timeout=0.05)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every queued chunk is written (re-raises the thread's error)."""
        if self._thread.is_alive():
            self.write(self._END)
            self._thread.join()
        self._raise_error()

    def __enter__(self) -> _EncodeBehind:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            return
        self._stop.set()
        while self._thread.is_alive():  # unblock and end the thread; pending chunks are dropped
            try:
                self._queue.put_nowait(self._END)
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
            self._thread.join(timeout=0.05)


def _resize_texture(texture: Tensor, size: int) -> Tensor:
    """``(B, C, S, S)`` → ``(B, C, size, size)`` (bilinear, antialiased when shrinking; unchanged at S = size)."""
    if texture.shape[-1] == size:
        return texture
    return F.interpolate(texture, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=texture.shape[-1] > size)


def _few(names: tuple[str, ...] | list[str], count: int = 8) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names)} in all)" if len(names) > count else "")


class VideoEditor:
    """Edit the emotion of talking-head videos with a set of frozen parts (see the module docstring)."""

    def __init__(
        self,
        *,
        parts: EditParts,  # the frozen networks and settings (e.g. emoedit.pipeline.bundle.load_bundle)
        options: EditOptions,  # switches
        detector: FaceDetector | None = None,  # None: dlib HOG + 68-point predictor (DlibFaceDetector)
        min_face_size: float | None = None,  # faces smaller than this (pixels) are not tracked; None: 40 (dlib) / 0
        max_gap: int = 5,  # longest run of faceless frames whose landmarks are interpolated (then edited)
        template: AlignmentTemplate | None = None,  # 5-point alignment template; None: the face model's (as preprocess)
    ) -> None:
        self.parts = parts
        self.options = options
        editor = parts.texture_editor
        if options.subject is not None and options.edit_texture and options.subject not in editor.subjects:
            raise EditError(f"subject {options.subject!r} has no edit directions in this bundle; known subjects: "
                            f"{_few(list(editor.subjects))}")
        if (options.edit_texture and options.use_classifier and options.subject is None
                and tuple(parts.classifier.subjects) != tuple(editor.subjects)):
            raise EditError("the classifier's subjects and the edit directions' rows differ (bundle inconsistent): "
                            f"{_few(list(parts.classifier.subjects), 4)} vs {_few(list(editor.subjects), 4)}")
        if max_gap < 0:
            raise EditError(f"max_gap must be >= 0, got {max_gap}")
        self.device = parts.face_model.mean_shape.device
        if detector is None:
            from emoedit.data.detection import DlibFaceDetector

            detector = DlibFaceDetector(detector="hog", upsample=0)
            min_face_size = DEFAULT_DLIB_MIN_FACE_PX if min_face_size is None else min_face_size
        self.detector = detector
        self.min_face_size = 0.0 if min_face_size is None else float(min_face_size)
        self.max_gap = int(max_gap)
        self.analyzer = FaceAnalyzer(parts=parts, template=template)
        self.compositor = FaceCompositor(face_model=parts.face_model, crop_size=parts.settings.texture_crop_size)

    # ---------------------------------------------------------------- entry
    def edit(
        self,
        input_path: str | os.PathLike,  # the talking-head video
        schedule: EmotionSchedule | str,  # target emotion over time (a str is parsed with EmotionSchedule.parse)
        out_path: str | os.PathLike,  # the edited video (.mp4, .mkv, .mov); written atomically
    ) -> EditReport:
        """Edit ``input_path`` into ``out_path``; raises VideoError (unreadable input) or EditError."""
        started = time.perf_counter()
        options = self.options
        input_path, out_path = Path(input_path), Path(out_path)
        if isinstance(schedule, str):
            schedule = EmotionSchedule.parse(schedule)
        if out_path.exists() and out_path.resolve() == input_path.resolve():
            raise EditError(f"{out_path}: the output would overwrite the input video")
        timer = StageTimer(stages=EDIT_STAGES, device=self.device)
        warnings: list[str] = []
        intermediates = IntermediatesWriter.create(options.save_intermediates) if options.save_intermediates else None
        with VideoReader(input_path) as reader:  # VideoError naming the file when unreadable
            info = reader.info
            codes = schedule.codes_for_frames(info.num_frames, info.fps)
            warnings.extend(self._check_codes(codes, schedule))
            track = detect_and_track(reader, self.detector, chunk_size=options.batch_size,
                                     min_face_size=self.min_face_size, max_gap=self.max_gap, timer=timer,
                                     progress=options.progress)
            valid = track.valid & torch.isfinite(track.landmarks).flatten(1).all(dim=1)
            if not bool(valid.any()):
                raise EditError(f"{input_path}: no usable face in any of its {info.num_frames} frames "
                                f"({track.report['message']}); nothing to edit")
            passthrough = torch.nonzero(~valid).flatten().tolist()
            if passthrough:
                warnings.append(f"{len(passthrough)} of {info.num_frames} frames have no usable face and pass "
                                f"through unchanged (frame ranges {track.report['unfilled_ranges']})")
            texture_edit = options.edit_texture
            analysis = self.analyzer.analyse(
                reader, track, chunk_size=options.batch_size, need_wplus=texture_edit,
                need_subject_weights=texture_edit and options.use_classifier and options.subject is None,
                timer=timer, progress=options.progress, autocast_dtype=self._autocast_dtype(),
            )
            plan = self._plan(analysis, codes, timer)
            teeth_on = options.teeth and self.parts.teeth is not None
            if options.teeth and self.parts.teeth is None:
                warnings.append("no teeth completer in the parts: the mouth is not completed (as --no-teeth)")
            if intermediates is not None:
                intermediates.write_data(self._edit_data(analysis, plan))
            height, width = info.frame_size
            pix_fmt = "yuv420p"
            if height % 2 or width % 2:
                pix_fmt = "yuv444p"
                warnings.append(f"odd frame size {width}x{height}: written as yuv444p (H.264 High 4:4:4) to keep "
                                "the exact size; not every player decodes it")
            with VideoWriter(out_path, fps=info.fps, audio_from=input_path, crf=options.crf, preset=options.preset,
                             pix_fmt=pix_fmt) as writer:
                self._synthesise(reader, analysis, plan, writer, timer, teeth_on=teeth_on,
                                 intermediates=intermediates)
        details = {
            "tracking": track.report,
            "texture_edit_mode": plan.texture_edit_mode,
            "texture_mode": options.texture_mode if options.edit_texture else "extracted",
            "shape_edit": options.edit_shape,
            "teeth_completion": teeth_on,
            "smoothing_half_window": plan.half_window,
            "max_strength": float(codes.max()) if codes.numel() else 0.0,
            "schedule": str(schedule),
            "device": str(self.device),
            "options": options.to_json(),
            "total_seconds": time.perf_counter() - started,
        }
        return EditReport(
            input=str(input_path), output=str(out_path), num_frames=info.num_frames,
            frames_with_face=analysis.num_faces, passthrough_frames=passthrough, fps=float(info.fps),
            seconds=dict(timer.seconds), warnings=warnings, details=details,
        )

    # ---------------------------------------------------------------- planning
    def _check_codes(self, codes: Tensor, schedule: EmotionSchedule) -> list[str]:
        """Refuse emotions without directions; warn about strengths beyond the trained range."""
        warnings = []
        editor = self.parts.texture_editor
        if self.options.edit_texture:
            unsolved = [i for i, name in enumerate(EMOTIONS) if name not in editor.solved]
            used = [EMOTIONS[i] for i in unsolved if bool((codes[:, i] != 0).any())]
            if used:
                raise EditError(f"schedule {str(schedule)!r}: this bundle has no texture edit directions for "
                                f"{used} (solved: {list(editor.solved)})")
        peak = float(codes.max()) if codes.numel() else 0.0
        if peak > TRAINED_MAX_STRENGTH + 1e-6:
            row = int(codes.max(dim=1).values.argmax())
            warnings.append(f"intensity up to {peak:.3g} ({format_emotion_code(codes[row])}) is beyond the trained "
                            f"range (1.0 = MEAD's strongest level): the edit is extrapolated")
        return warnings

    def _half_window(self) -> int:
        if not self.options.smoothing:
            return 0
        half = self.options.smoothing_half_window
        return int(self.parts.settings.smoothing_half_window if half is None else half)

    def _plan(self, analysis: VideoAnalysis, codes_all: Tensor, timer: StageTimer) -> EditPlan:
        """Per-frame codes → edited coefficients and latents (see the module docstring)."""
        options, parts = self.options, self.parts
        codes = codes_all[analysis.frame_indices].float()
        half = self._half_window()
        runs = analysis.runs()
        coeffs = analysis.coeffs
        exp = parts.face_model.layout.slices["exp"]
        source = coeffs.clone()
        if options.edit_shape:
            with timer("geometry"), torch.no_grad():
                device = next(parts.geometry.parameters()).device
                reconstructed = coeffs.to(device)
                edited = edit_geometry(parts.geometry, parts.face_model, reconstructed, codes.to(device),
                                       reconstructed).cpu()
                edited[:, exp] = smooth_runs(edited[:, exp], runs, half)
                # Warp mode moves pixels by (edited − source): smoothing both alike keeps the
                # reconstruction's own frame-to-frame noise out of that difference.
                source[:, exp] = smooth_runs(coeffs[:, exp], runs, half)
        else:
            edited = coeffs.clone()
        wplus = source_wplus = weights = None
        mode = "off"
        if options.edit_texture:
            assert analysis.wplus is not None
            editor = parts.texture_editor
            device = editor.directions.device
            kwargs: dict[str, Any]
            if options.subject is not None:
                mode = "subject"
                index = editor.subject_index([options.subject])
            elif options.use_classifier:
                mode = "classifier"
                assert analysis.subject_weights is not None
                weights = analysis.subject_weights.mean(dim=0)
                weights = weights / weights.sum()
            else:
                mode = "mean"
            with timer("generator"), torch.no_grad():
                pieces = []
                for start in range(0, analysis.num_faces, TEXTURE_EDIT_CHUNK):
                    x0 = analysis.wplus[start : start + TEXTURE_EDIT_CHUNK].to(device)
                    code = codes[start : start + TEXTURE_EDIT_CHUNK].to(device)
                    count = x0.shape[0]
                    if mode == "subject":
                        kwargs = {"subject_index": index.expand(count)}
                    elif mode == "classifier":
                        assert weights is not None
                        kwargs = {"subject_weights": weights.to(device).expand(count, -1)}
                    else:
                        kwargs = {"mode": "mean"}
                    pieces.append(editor(x0, code, **kwargs).wplus.float().cpu())
                wplus = smooth_runs(torch.cat(pieces), runs, half)
                if options.texture_mode in ("residual", "warp"):
                    source_wplus = smooth_runs(analysis.wplus, runs, half)
        if weights is not None:  # what the edit mixed with (the directions' τ applied), for the record
            weights = parts.texture_editor.mixing_weights(weights[None])[0]
        return EditPlan(emotion_codes=codes_all, coeffs=edited, coeffs_source=source, wplus=wplus, wplus_source=source_wplus,
                        subject_weights=weights, texture_edit_mode=mode, half_window=half)

    def _edit_data(self, analysis: VideoAnalysis, plan: EditPlan) -> dict[str, Any]:
        return {
            "frames": analysis.frame_indices, "coeffs": analysis.coeffs, "coeffs_edited": plan.coeffs,
            "landmarks": analysis.landmarks, "emotion_codes": plan.emotion_codes, "wplus": analysis.wplus,
            "wplus_edited": plan.wplus, "subject_weights": analysis.subject_weights,
            "subject_weights_mean": plan.subject_weights, "visible_fraction": analysis.visible_fraction,
            "texture_edit_mode": plan.texture_edit_mode, "texture_mode": self.options.texture_mode,
            "subjects": list(self.parts.texture_editor.subjects), "emotions": list(EMOTIONS),
            "smoothing_half_window": plan.half_window, "options": self.options.to_json(),
        }

    # ---------------------------------------------------------------- synthesis
    def _autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.options.bf16 else None

    def _decode_textures(self, wplus: Tensor) -> Tensor:
        """``(B, num_ws, w_dim)`` → ``(B, 3, R, R)`` t-GAN textures in [0, 1]."""
        with network_autocast(self.device, self._autocast_dtype()):
            image = self.parts.generator.synthesis(wplus.to(self.device), noise_mode="const").float()
        return image.add(1.0).div(2.0).clamp(0.0, 1.0)

    def _chunk_textures(
        self, frames: Tensor, rows: Tensor, transform: CropTransform, analysis: VideoAnalysis, plan: EditPlan,
        timer: StageTimer,
    ) -> tuple[Tensor | None, Tensor | None]:
        """``(texture to render (B, 3, T', T') in [0, 1], extracted texture (B, 3, T, T) or None)``.

        Warp mode: ``(texture change G(x′) − G(x0) (B, 3, R, R) in [−1, 1], or None without a texture edit,
        None)``.
        """
        options = self.options
        # The face region the texture networks model (None: every texel): outside it an edit
        # changes nothing and "replace" keeps the frame's own texture.
        region = self.analyzer.texture_region
        if options.texture_mode == "warp":
            if not options.edit_texture:
                return None, None
            assert plan.wplus is not None and plan.wplus_source is not None
            with timer("generator"), torch.no_grad():
                both = self._decode_textures(torch.cat([plan.wplus[rows], plan.wplus_source[rows]]))
                change = both[: rows.shape[0]] - both[rows.shape[0] :]
                return (change if region is None else mask_outside_region(change, region)), None
        extracted = None
        if not options.edit_texture or options.texture_mode == "residual" or region is not None:
            with timer("uv"):
                uv_u8, _ = self.analyzer.extract_textures(frames, analysis.coeffs[rows], transform)
                extracted = uv_u8.float().div_(255.0)
        if not options.edit_texture:
            assert extracted is not None
            return extracted, extracted
        assert plan.wplus is not None
        with timer("generator"), torch.no_grad():
            if options.texture_mode == "replace":
                decoded = self._decode_textures(plan.wplus[rows])
                if region is None:
                    return decoded, None
                assert extracted is not None
                return compose_in_region(_resize_texture(decoded, extracted.shape[-1]), extracted, region), extracted
            assert plan.wplus_source is not None and extracted is not None
            both = self._decode_textures(torch.cat([plan.wplus[rows], plan.wplus_source[rows]]))
            change = _resize_texture(both[: rows.shape[0]] - both[rows.shape[0] :], extracted.shape[-1])
            if region is not None:
                change = mask_outside_region(change, region)
            return (extracted + change).clamp(0.0, 1.0), extracted

    def _synthesise(
        self, reader: VideoReader, analysis: VideoAnalysis, plan: EditPlan, writer: VideoWriter, timer: StageTimer,
        *, teeth_on: bool, intermediates: IntermediatesWriter | None,
    ) -> None:
        """Pass 2: decode, render, paste, complete teeth, encode, chunk by chunk."""
        info = reader.info
        row_of = torch.full((info.num_frames,), -1, dtype=torch.int64)
        row_of[analysis.frame_indices] = torch.arange(analysis.num_faces)
        with tqdm(total=info.num_frames, desc="edit: synthesise", unit="frame",
                  disable=not self.options.progress) as bar, \
                _EncodeBehind(writer, depth=ENCODE_BEHIND_CHUNKS) as encoder:
            for start, chunk in timed_chunks(reader, self.options.batch_size, timer):
                rows_all = row_of[start : start + chunk.shape[0]]
                local = torch.nonzero(rows_all >= 0).flatten().tolist()
                output = chunk
                if local:
                    output = np.array(chunk, copy=True)
                    rows = rows_all[local]
                    with timer("align"):
                        frames = frames_to_tensor(chunk, local, self.device)
                        transform = analysis.texture_transform[rows]
                    uv_texture, extracted = self._chunk_textures(frames, rows, transform, analysis, plan, timer)
                    if self.options.texture_mode == "warp":
                        with timer("render"):
                            warped = self.compositor.warp(plan.coeffs[rows].to(self.device),
                                                          plan.coeffs_source[rows].to(self.device), transform, frames,
                                                          change_texture=uv_texture)
                        edited, landmarks = warped.frames.clamp_(0.0, 1.0), warped.landmarks
                        shown, shown_mask = warped.face, warped.paste_mask
                        if intermediates is not None:  # the change as an image, 0.5 = no change
                            uv_texture = (frames.new_full((frames.shape[0], 3, 1, 1), 0.5) if uv_texture is None
                                          else uv_texture.add(1.0).div(2.0))
                    else:
                        assert uv_texture is not None
                        with timer("render"):
                            render = self.compositor.render(plan.coeffs[rows].to(self.device), uv_texture)
                        with timer("paste"):
                            edited = self.compositor.paste(render, transform, frames).clamp_(0.0, 1.0)
                        landmarks = transform.to(self.device).crop_to_frame(render.landmarks)
                        shown, shown_mask = render.image, render.paste_mask
                    if teeth_on:
                        assert self.parts.teeth is not None
                        with timer("teeth"):
                            if self.options.texture_mode == "warp" and self.options.teeth_gate > 0:
                                # Only frames whose lips the edit moved go through the teeth networks.
                                gate = teeth_gate(warped.landmarks, warped.source_landmarks,
                                                  self.options.teeth_gate)
                                active = torch.nonzero(gate > 0).flatten()
                                if active.numel():
                                    moved = edited[active]
                                    completed = self.parts.teeth(moved, landmarks[active]).frames.clamp_(0.0, 1.0)
                                    weight = gate[active][:, None, None, None].to(moved)
                                    edited[active] = moved + weight * (completed - moved)
                            else:
                                edited = self.parts.teeth(edited, landmarks).frames.clamp_(0.0, 1.0)
                    with timer("paste"):
                        output[local] = to_uint8(edited).permute(0, 2, 3, 1).cpu().numpy()
                    if intermediates is not None:
                        assert uv_texture is not None
                        for i, row in enumerate(rows.tolist()):
                            intermediates.write_frame(
                                int(analysis.frame_indices[row]), uv_texture=uv_texture[i], render=shown[i],
                                paste_mask=shown_mask[i], extracted=None if extracted is None else extracted[i],
                            )
                with timer("encode"):  # the time waiting for the background encoder
                    encoder.write(output)
                bar.update(int(chunk.shape[0]))
            with timer("encode"):
                encoder.finish()


__all__ = [
    "ENCODE_BEHIND_CHUNKS", "EditError", "EditOptions", "EditPlan", "EditReport", "TEXTURE_MODES", "VideoEditor",
    "smooth_runs",
]
