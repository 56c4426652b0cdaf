"""``emoedit preprocess``: videos and images → the preprocessed caches (METHOD.md §4 step 2).

Library entry: :func:`run_preprocess` (config :class:`PreprocessConfig`, result
:class:`PreprocessSummary`). Clips come from :mod:`emoedit.data.datasets`; the work is
spread over processes/GPUs by :mod:`emoedit.data.parallel`; every cache is written through
:class:`~emoedit.data.cache_writer.CacheWriter` (atomic files, resume, one writer per rank).

Stages (``PreprocessConfig.stage``):

``align`` → cache ``<output_dir>/frames`` (kind ``frames``): per frame, face detection and
68 landmarks (dlib, or the synthetic world's true landmarks), :func:`track_faces` through
the clip (short gaps interpolated, the rest skipped and reported), Deep3D 5-point alignment
to the template, the crop. Needs no reconstruction (it is what reconstruction trains on).

``reconstruct`` → three caches written together, one record per frame in each:

- ``<output_dir>/coeffs`` (kind ``coeffs``): coefficients, projected and detected
  landmarks, crop transform — small, for the geometry editor;
- ``<output_dir>/textures`` (kind ``textures``): UV texture + visibility (+ coefficients),
  for the t-GAN, its encoder, the classifier and the edit directions;
- ``<output_dir>/mouths`` (kind ``mouths``): mouth crop, teeth-removed crop, teeth mask,
  for the teeth t-GAN and its encoder.

Separate caches because their consumers differ and read whole shards: the geometry
editor must not load 196 kB textures to read 1 kB of coefficients. A clip is done when all
three hold it. When a finished ``frames`` cache of the same detector and alignment is in
the output folder its landmarks are reused instead of detecting again.

``all`` = both in one pass (one decode and one detection per clip).

Per-record fields (``T`` texture size, ``S`` crop size, ``M`` mouth crop size, ``L`` the
face model's ``layout.size``); every cache has metadata ``subject`` (str), ``emotion``
(str), ``level`` (int), ``view`` (str), ``frame`` (int, the frame's index in its video) and
the reserved clip id:

====================  ===============================================================
frames                ``crop`` uint8 (3,S,S) RGB; ``landmarks`` float32 (68,2) detected,
                      crop px; ``transform`` float32 (8,) ``CropTransform.as_tensor()``
                      frame → crop; [``coeffs_true`` float32 (L,)]
coeffs                ``coeffs`` float32 (L,) crop camera; ``landmarks`` float32 (68,2) the
                      reconstruction's projection, crop px; ``landmarks_detected``
                      float32 (68,2) crop px; ``transform`` float32 (8,); [``coeffs_true``]
textures              ``uv_texture`` uint8 (3,T,T); ``visibility`` bool (1,T,T);
                      ``coeffs`` float32 (L,)
mouths                ``crop`` uint8 (3,M,M); ``crop_removed`` uint8 (3,M,M) (teeth region
                      = ``fill``); ``mask`` bool (1,M,M) teeth region; ``landmarks``
                      float32 (20,2) iBUG 49-68 in mouth-crop px (projected);
                      ``transform`` float32 (8,) frame → mouth crop
====================  ===============================================================

``coeffs_true`` (synthetic worlds only): the world's true coefficients of the frame, in
this cache's face model layout and for the **crop camera** (``PerspectiveCamera().scaled(S)``
applied to the crop): ``id``, ``exp``, ``tex``, ``gamma`` are the truth's own (pose-free);
``angle`` and ``trans`` are re-fitted (Gauss-Newton, least squares over the projected
vertices) so that the crop camera reproduces the truth's projection mapped into the crop.
A similarity crop of a perspective image is not exactly another perspective camera, so
this is exact up to the fit residual, reported per clip (``coeffs_true_residual_px``,
mean and max over frames, crop pixels; about 0.02 px on the synthetic world).

Texture extraction samples a second, larger crop of the same alignment
(``texture_crop_size``, default ``2·texture_size``) with the crop camera scaled to it, so
textures keep the source resolution; mouth crops are aligned in the original frame from
the reconstruction's projected mouth landmarks.

Problems never stop a run: a clip that cannot be decoded is reported as failed (with the
:class:`~emoedit.video.VideoError` message) and retried by the next run; a clip without a
usable face in any frame gets a ``skipped`` report (done); frames without a face are left
out (short gaps are interpolated and kept) and listed in the clip's report (the
:func:`track_faces` report: no face, several faces, tiny faces, interpolated and unfilled
ranges). Image (FFHQ) inputs pass the quality filter (:mod:`emoedit.data.ffhq_filter`)
in stage reconstruct: a rejected image gets a ``skipped`` report with its reasons and
measurements in the reconstruction caches (the frames cache still keeps it, for
reconstruction training); the counts per reason are in the summary (``filter_counts``),
in ``<output_dir>/preprocess-<stage>-summary.json``, and with every image's measurements
in ``<output_dir>/quality_filter.json``. They are not cache attributes: attributes are
part of a cache's identity (a resumed run must match them), so they hold the thresholds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

import emoedit
from emoedit.atomic_io import atomic_write_text, sha256_file
from emoedit.data.alignment import (
    AlignmentTemplate,
    CropTransform,
    MouthTemplate,
    face_crop_transform,
    warp_to_crop,
)
from emoedit.data.cache_format import (
    MANIFEST_FILE,
    CacheError,
    CacheSpec,
    FieldSpec,
    merge_entries,
    read_all_entries,
)
from emoedit.data.cache_writer import CacheWriter
from emoedit.data.datasets import ClipSource, read_inputs
from emoedit.data.detection import FaceDetection, FaceDetector, GivenLandmarksDetector
from emoedit.data.face_tracking import FrameStatus, TrackResult, track_faces
from emoedit.data.ffhq_filter import (
    FaceFilterConfig,
    assess_faces,
    count_reasons,
    reject_reasons,
    uv_photometric_outliers,
)
from emoedit.data.mouth import (
    DEFAULT_DILATE_PX,
    DEFAULT_MOUTH_CROP_SIZE,
    DEFAULT_MOUTH_WIDTH,
    extract_mouths,
)
from emoedit.face_model.camera import PerspectiveCamera
from emoedit.face_model.morphable_model import MorphableModel
from emoedit.shape_checks import assert_shape
from emoedit.video import VideoError, VideoReader

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("align", "reconstruct", "all")
RECONSTRUCTORS: tuple[str, ...] = ("fitter", "checkpoint", "deep3d", "truth")
DETECTORS: tuple[str, ...] = ("auto", "dlib-hog", "dlib-cnn", "truth")
FRAMES_KIND, COEFFS_KIND, TEXTURES_KIND, MOUTHS_KIND = "frames", "coeffs", "textures", "mouths"
CACHE_VERSION = 1  # content version of every kind written here (bump when a field's meaning changes)
META_TYPES: dict[str, str] = {"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"}
PRODUCER = "emoedit.data.preprocess"
QUALITY_FILTER_FILE = "quality_filter.json"  # <output_dir>/: thresholds, counts and every image's measurements
DEFAULT_MIN_FACE_SIZE_PX = 40.0  # dlib: faces smaller than this (sqrt of the box area, pixels) are not tracked


# PreprocessConfig fields that do not change any record (left out of the cache attributes).
RUN_ONLY_SETTINGS: tuple[str, ...] = (
    "inputs", "input_root", "subjects", "emotions", "views", "levels", "output_dir", "stage", "max_clips", "workers",
    "devices", "chunk_frames", "images_per_shard", "keep_frames_mb", "torch_threads", "progress", "fail_fast",
    "verify_checksums",
)

# PreprocessConfig fields that only shape the reconstruction caches (coeffs, textures, mouths).
RECONSTRUCTION_SETTINGS: tuple[str, ...] = (
    "reconstructor", "reconstructor_path", "fitter", "refine", "fitter_chunk_frames", "texture_size",
    "texture_crop_size", "texture_sampling", "texture_region_min_cos", "texture_region_margin", "mouth_crop_size",
    "mouth_width", "teeth_dilate_px", "teeth_fill", "quality_filter", "filter",
)


# Settings added after caches were first written: left out of ``content_settings`` at these
# defaults, so that an older cache still fits a run that does not use them.
OPTIONAL_SETTINGS: dict[str, Any] = {"texture_region_min_cos": None, "texture_region_margin": 0}


class PreprocessError(ValueError):
    """A preprocessing configuration or input that cannot work (raised before any clip is processed)."""


class MediaError(RuntimeError):
    """An input image that cannot be read (the image counterpart of VideoError)."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PreprocessConfig:
    """Everything ``emoedit preprocess`` needs (see the module docstring for the stages)."""

    # ---- input
    input_kind: str = "mead"  # "mead" (MEAD layout or a synthetic world), "ffhq" (image folder) or "videos" (files / lists)
    inputs: tuple[str, ...] = ()  # mead/ffhq: one root folder; videos: video files and/or list files
    input_root: str | None = None  # videos: dataset root that list entries are confined to (default: each list's folder)
    subjects: tuple[str, ...] | None = None  # mead: keep only these subjects
    emotions: tuple[str, ...] | None = None  # mead: keep only these emotions
    views: tuple[str, ...] | None = None  # mead: keep only these views
    levels: tuple[int, ...] | None = None  # mead: keep only these intensity levels
    # ---- output
    output_dir: str = ""  # folder of the caches: <output_dir>/{frames,coeffs,textures,mouths}
    stage: str = "align"  # "align", "reconstruct" or "all"
    # ---- face model and alignment
    face_model: str = "auto"  # "auto" (a synthetic world's truth/face_model.pt, else procedural), "procedural",
    #                           "3ddfa:<dir>", "deep3d:<BFM_model_front.mat>", or a MorphableModel.save() file
    alignment_template: str | None = None  # Deep3D similarity_Lm3D_all.mat; None: the face model's mean landmarks
    crop_size: int = 224  # aligned face crop side, pixels (Deep3D: 224; smaller for CPU presets)
    # ---- detection and tracking
    detector: str = "auto"  # "auto" (truth landmarks for a synthetic world, else dlib-hog), "dlib-hog", "dlib-cnn", "truth"
    detect_upsample: int = 0  # dlib: times the frame is upsampled ×2 before detection (1 finds faces down to ~40 px)
    detect_max_side: int | None = None  # detect on frames downscaled to this longest side (landmarks mapped back); None: full size
    min_face_size: float | None = None  # faces smaller than this (pixels, sqrt of box area) are not tracked; None: 40 (dlib) / 0 (truth)
    max_gap: int = 5  # longest run of frames without a face that is interpolated
    # ---- frame selection
    max_frames: int | None = None  # use at most this many (selected) frames per clip; None: all
    frame_stride: int = 1  # use every n-th frame
    max_clips: int | None = None  # process at most this many clips (after sorting by id); None: all
    # ---- reconstruction (stages reconstruct / all)
    reconstructor: str = "fitter"  # "fitter" (no checkpoint), "checkpoint" (a recon .ckpt), "deep3d" (epoch_20.pth), "truth" (synthetic)
    reconstructor_path: str | None = None  # checkpoint file for "checkpoint" / "deep3d"
    fitter: Mapping[str, Any] = field(default_factory=dict)  # FitterConfig overrides (fitter, or refinement of a regressor)
    refine: bool = False  # regressors: refine the regression with the fitter
    fitter_chunk_frames: int = 32  # fitter: frames optimised together
    texture_size: int = 256  # UV texture side T, texels
    texture_crop_size: int | None = None  # side of the crop textures are sampled from; None: 2·texture_size
    texture_sampling: str = "image_coords"  # "image_coords" (project choice) or "vertex_colors"
    # Face region of the textures (emoedit.texture.face_region): texels whose mean-shape normal faces the
    # camera by a cosine below this hold mid-grey in the cache (the rim: background, silhouette); None: all texels.
    texture_region_min_cos: float | None = None
    texture_region_margin: int = 0  # texels the rim is moved inward (the face outline's spill); with a region only
    mouth_crop_size: int = DEFAULT_MOUTH_CROP_SIZE  # mouth crop side, pixels
    mouth_width: float = DEFAULT_MOUTH_WIDTH  # mouth-corner distance as a fraction of the mouth crop
    teeth_dilate_px: float = DEFAULT_DILATE_PX  # growth of the teeth region beyond the inner lips, mouth-crop pixels
    teeth_fill: float = 0.0  # value of the removed teeth region, [0, 1]
    # ---- FFHQ quality filter (image inputs, stage reconstruct)
    quality_filter: bool | None = None  # None: on for image (ffhq) inputs, off for videos
    filter: FaceFilterConfig = field(default_factory=FaceFilterConfig)  # thresholds
    # ---- execution
    workers: int = 1  # processes (ranks); each handles its share of the clips
    devices: tuple[str, ...] = ()  # devices of the ranks, rank r gets devices[r % len]; (): cuda:(r % n_gpu) if CUDA, else cpu
    chunk_frames: int = 32  # frames decoded / warped / textured at once
    images_per_shard: int = 64  # image inputs: images written together into one shard file
    keep_frames_mb: int = 512  # keep decoded frames of a clip in memory up to this size instead of decoding again
    torch_threads: int | None = None  # CPU threads per rank; None: cpu_count // workers
    progress: bool = True  # tqdm bars (one per rank)
    fail_fast: bool = False  # re-raise the first unexpected per-clip exception (debugging); decode errors never raise
    verify_checksums: bool = False  # finalize(): verify every shard's SHA-256

    def __post_init__(self) -> None:
        problems = []
        if self.stage not in STAGES:
            problems.append(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.reconstructor not in RECONSTRUCTORS:
            problems.append(f"reconstructor must be one of {RECONSTRUCTORS}, got {self.reconstructor!r}")
        if self.detector not in DETECTORS:
            problems.append(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.reconstructor in ("checkpoint", "deep3d") and not self.reconstructor_path:
            problems.append(f"reconstructor {self.reconstructor!r} needs reconstructor_path")
        for name in ("crop_size", "texture_size", "mouth_crop_size"):
            if getattr(self, name) < 16:
                problems.append(f"{name} must be >= 16, got {getattr(self, name)}")
        if self.texture_crop_size is not None and self.texture_crop_size < 16:
            problems.append(f"texture_crop_size must be >= 16, got {self.texture_crop_size}")
        for name in ("workers", "frame_stride", "chunk_frames", "images_per_shard", "fitter_chunk_frames"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_frames", "max_clips", "detect_max_side"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or None, got {value}")
        if self.max_gap < 0:
            problems.append(f"max_gap must be >= 0, got {self.max_gap}")
        if self.texture_sampling not in ("image_coords", "vertex_colors"):
            problems.append(f"texture_sampling must be 'image_coords' or 'vertex_colors', got {self.texture_sampling!r}")
        from emoedit.texture.face_region import check_region_margin, check_region_min_cos

        for check, value in ((check_region_min_cos, self.texture_region_min_cos),
                             (check_region_margin, self.texture_region_margin)):
            try:
                check(value)
            except ValueError as error:
                problems.append(str(error))
        if not 0.0 <= self.teeth_fill <= 1.0:
            problems.append(f"teeth_fill must lie in [0, 1], got {self.teeth_fill}")
        if not isinstance(self.filter, FaceFilterConfig):
            problems.append(f"filter must be a FaceFilterConfig, got {type(self.filter).__name__}")
        if problems:
            raise PreprocessError("PreprocessConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build from plain values (YAML / argparse): lists become tuples, ``filter`` may be a dict.

        Unknown keys raise :class:`PreprocessError` naming them.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PreprocessError(f"PreprocessConfig: unknown settings {unknown}; known: {sorted(names)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if isinstance(values.get("filter"), Mapping):
            filter_names = {f.name for f in dataclasses.fields(FaceFilterConfig)}
            bad = sorted(set(values["filter"]) - filter_names)
            if bad:
                raise PreprocessError(f"PreprocessConfig.filter: unknown thresholds {bad}; known: {sorted(filter_names)}")
            values["filter"] = FaceFilterConfig(**values["filter"])
        if isinstance(values.get("fitter"), Mapping):
            values["fitter"] = dict(values["fitter"])
        return cls(**values)

    # ---- derived
    @property
    def does_align(self) -> bool:
        """Whether the frames cache is written."""
        return self.stage in ("align", "all")

    @property
    def does_reconstruct(self) -> bool:
        """Whether the coeffs/textures/mouths caches are written."""
        return self.stage in ("reconstruct", "all")

    @property
    def resolved_texture_crop_size(self) -> int:
        """Side of the texture-sampling crop, pixels."""
        return self.texture_crop_size or 2 * self.texture_size

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict of every setting."""
        data = dataclasses.asdict(self)
        data["filter"] = self.filter.to_json()
        data["fitter"] = dict(self.fitter)
        return json.loads(json.dumps(data, default=list))

    def content_settings(self, kind: str) -> dict[str, Any]:
        """The settings that shape the records of cache ``kind`` (recorded in its attributes).

        Leaves out which clips are processed (inputs, id filters, ``max_clips``), the stage,
        how the work runs (workers, devices, chunking, memory, progress, checks) and, for
        the frames cache, every reconstruction setting, so that a resumed or extended run
        with other such settings still fits the cache.
        """
        data = self.to_json()
        for name, default in OPTIONAL_SETTINGS.items():  # caches written before these options fit runs without them
            if data.get(name) == default:
                data.pop(name, None)
        for name in RUN_ONLY_SETTINGS + (RECONSTRUCTION_SETTINGS if kind == FRAMES_KIND else ()):
            data.pop(name, None)
        return data

    def select_frames(self, num_frames: int) -> list[int]:
        """Indices of the frames used out of ``num_frames`` (stride, then the max_frames limit)."""
        indices = list(range(0, num_frames, self.frame_stride))
        return indices[: self.max_frames] if self.max_frames is not None else indices


# --------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class PreprocessSummary:
    """What a :func:`run_preprocess` call did (this run only; a resumed run counts its own work)."""

    stage: str  # the stage run
    output_dir: Path  # folder of the caches
    caches: Mapping[str, Path]  # kind -> cache folder written
    num_clips: int  # clips selected from the input
    clips_already_done: int  # clips skipped because every cache of the stage already held them (resume)
    clips_written: int  # clips written with records
    clips_skipped: int  # clips given a "skipped" report: no usable face, or rejected by the quality filter
    clips_failed: int  # clips that could not be processed (decode errors, ...); retried by the next run
    failed: tuple[tuple[str, str], ...]  # (clip id, message) of the failed clips
    frames_used: int  # frames selected from the processed clips
    records_written: int  # records (frames) written per cache
    frames_without_face: int  # selected frames without a usable face (not written)
    frames_interpolated: int  # frames whose landmarks were interpolated over a short gap
    filter_counts: Mapping[str, int]  # quality filter: kept / rejected / per reason (empty when off)
    seconds: float  # wall-clock time of the run
    stage_seconds: Mapping[str, float]  # summed over ranks: decode, detect, align, reconstruct, texture, mouth, write
    workers: int  # processes used

    @property
    def frames_per_second(self) -> float:
        """Selected frames processed per wall-clock second."""
        return self.frames_used / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["output_dir"] = str(self.output_dir)
        data["caches"] = {k: str(v) for k, v in self.caches.items()}
        data["failed"] = [list(f) for f in self.failed]
        data["frames_per_second"] = round(self.frames_per_second, 3)
        data["seconds"] = round(self.seconds, 3)
        data["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        return data


@dataclass
class RankStats:
    """Counters of one rank (merged into the summary)."""

    clips_already_done: int = 0
    clips_written: int = 0
    clips_skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    frames_used: int = 0
    records_written: int = 0
    frames_without_face: int = 0
    frames_interpolated: int = 0
    filter_decisions: list[list[str]] = field(default_factory=list)
    filter_measures: dict[str, Any] = field(default_factory=dict)  # clip id -> {"reasons", "quality"}
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["failed"] = [list(item) for item in self.failed]
        data["stage_seconds"] = dict(self.stage_seconds)
        return json.loads(json.dumps(data))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RankStats:
        stats = cls(**{k: v for k, v in data.items() if k not in ("stage_seconds", "failed")})
        stats.failed = [tuple(f) for f in data.get("failed", [])]  # type: ignore[misc]
        stats.stage_seconds = defaultdict(float, data.get("stage_seconds", {}))
        return stats


# --------------------------------------------------------------------------- face model and truth
def _sha256_tensor(tensor: Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def synthetic_world_dir(config: PreprocessConfig) -> Path | None:
    """The synthetic world folder the input belongs to (it has ``truth/world.json``), or None."""
    if config.input_kind not in ("mead", "ffhq") or len(config.inputs) != 1:
        return None
    path = Path(config.inputs[0]).resolve()
    for candidate in (path, *path.parents[:3]):
        if (candidate / "truth" / "world.json").is_file():
            return candidate
    return None


def load_face_model(spec: str, world: Path | None) -> MorphableModel:
    """The face model named by ``PreprocessConfig.face_model``."""
    if spec == "auto":
        if world is not None and (world / "truth" / "face_model.pt").is_file():
            return MorphableModel.load(world / "truth" / "face_model.pt")
        return MorphableModel.procedural()
    if spec == "procedural":
        return MorphableModel.procedural()
    if spec.startswith("3ddfa:"):
        return MorphableModel.from_3ddfa(spec.split(":", 1)[1])
    if spec.startswith("deep3d:"):
        return MorphableModel.from_deep3d_mat(spec.split(":", 1)[1])
    path = Path(spec)
    if not path.is_file():
        raise PreprocessError(
            f"face_model {spec!r}: not 'auto', 'procedural', '3ddfa:<dir>', 'deep3d:<mat>' nor an existing model file"
        )
    return MorphableModel.load(path)


def face_model_identity(model: MorphableModel) -> dict[str, Any]:
    """What a consumer checks about the face model: name, sizes, layout, a hash of the mean shape."""
    layout = model.layout
    return {
        "name": model.name,
        "num_vertices": model.num_vertices,
        "num_faces": model.num_faces,
        "layout": {k: s.stop - s.start for k, s in layout.slices.items()},
        "layout_size": layout.size,
        "mean_shape_sha256": _sha256_tensor(model.mean_shape),
        "triangles_sha256": _sha256_tensor(model.triangles),
    }


@dataclass(frozen=True)
class ClipTruth:
    """The synthetic world's truth for the selected frames of one clip."""

    landmarks: Tensor  # (T, 68, 2) float32 frame pixels
    coeffs: Tensor | None  # (T, L) float32 for ``camera`` (the frame camera), or None
    camera: PerspectiveCamera | None  # the camera the truth coefficients project with (frame size)


TruthLookup = Callable[[ClipSource, Sequence[int]], "ClipTruth | None"]


class SyntheticTruth:
    """The truth of a synthetic world's clips and stills, read through
    :class:`emoedit.data.synthetic.reader.SyntheticWorld` (paths confined to the world).

    MEAD clips are matched by their ids (subject, view, emotion, level, clip name), stills
    by their image file.
    """

    def __init__(self, world: Path) -> None:
        from emoedit.data.synthetic.reader import SyntheticWorld

        self.reader = SyntheticWorld.open(world, require_complete=False)
        self._records = {(r.key.subject, r.key.view, r.key.emotion, r.key.level, r.key.clip): r
                         for r in self.reader.clips()}
        self._stills: dict[str, int] | None = None
        self._ffhq: Any = None

    def __call__(self, source: ClipSource, indices: Sequence[int]) -> ClipTruth | None:
        if source.media == "image":
            return self._still(source)
        record = self._records.get((source.subject, source.view, source.emotion, source.level, source.name))
        if record is None:
            return None
        truth = self.reader.load_truth(record)
        if indices and max(indices) >= truth.num_frames:
            raise PreprocessError(
                f"{record.truth_path}: truth has {truth.num_frames} frames, the video at least {max(indices) + 1}")
        rows = list(indices)
        return ClipTruth(landmarks=truth.landmarks[rows].float(), coeffs=truth.coeffs[rows].float(),
                         camera=truth.perspective_camera())

    def _still(self, source: ClipSource) -> ClipTruth | None:
        if self._stills is None:
            try:
                self._ffhq = self.reader.ffhq()
            except (FileNotFoundError, ValueError):
                self._ffhq = None
            paths = () if self._ffhq is None else self._ffhq.image_paths
            self._stills = {str(Path(p).resolve()): i for i, p in enumerate(paths)}
        row = self._stills.get(str(source.path.resolve()))
        if row is None:
            return None
        return ClipTruth(landmarks=self._ffhq.landmarks[row : row + 1].float(),
                         coeffs=self._ffhq.coeffs[row : row + 1].float(), camera=self._ffhq.camera)


def open_truth(world: Path | None) -> TruthLookup | None:
    """A function giving the truth of a clip's selected frames, for a synthetic world (else None)."""
    return None if world is None else SyntheticTruth(world)


# --------------------------------------------------------------------------- detection
class ScaledDetector(FaceDetector):
    """Runs ``inner`` on frames downscaled to ``max_side`` and maps the detections back."""

    def __init__(self, inner: FaceDetector, *, max_side: int) -> None:
        super().__init__(min_face_size=0.0)
        self.inner = inner
        self.max_side = int(max_side)

    def _detect(self, image: np.ndarray, frame_index: int | None) -> list[FaceDetection]:
        height, width = image.shape[:2]
        factor = self.max_side / max(height, width)
        if factor >= 1.0:
            return self.inner.detect(image, frame_index=frame_index)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        small = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float(), size=size,
            mode="bilinear", align_corners=False, antialias=True,
        )
        small_np = small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        fx, fy = width / size[1], height / size[0]

        def back(points: np.ndarray) -> np.ndarray:  # pixel centres: x_full = (x + 0.5)·f − 0.5
            return ((points + 0.5) * np.array([fx, fy], np.float32) - 0.5).astype(np.float32)

        out = []
        for d in self.inner.detect(small_np, frame_index=frame_index):
            x0, y0, x1, y1 = d.box
            out.append(FaceDetection(
                box=((x0 + 0.5) * fx - 0.5, (y0 + 0.5) * fy - 0.5, (x1 + 0.5) * fx - 0.5, (y1 + 0.5) * fy - 0.5),
                score=d.score, landmarks5=back(np.asarray(d.landmarks5)),
                landmarks68=None if d.landmarks68 is None else back(np.asarray(d.landmarks68)),
            ))
        return out


def resolve_detector_name(config: PreprocessConfig, world: Path | None) -> str:
    """The detector actually used ("dlib-hog", "dlib-cnn" or "truth")."""
    if config.detector == "auto":
        return "truth" if world is not None else "dlib-hog"
    if config.detector == "truth" and world is None:
        raise PreprocessError("detector 'truth' needs a synthetic world input (a folder with truth/world.json)")
    return config.detector


def build_detector(name: str, config: PreprocessConfig) -> FaceDetector | None:
    """The frame detector (None for "truth": a GivenLandmarksDetector is built per clip)."""
    if name == "truth":
        return None
    from emoedit.data.detection import DlibFaceDetector

    detector: FaceDetector = DlibFaceDetector(detector="cnn" if name == "dlib-cnn" else "hog", upsample=config.detect_upsample)
    if config.detect_max_side is not None:
        detector = ScaledDetector(detector, max_side=config.detect_max_side)
    return detector


# --------------------------------------------------------------------------- media
def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; :class:`MediaError` naming it when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise MediaError(f"{path}: cannot read the image ({error})") from None


class ClipFrames:
    """Decoded frames of one clip (selected indices only); a context manager.

    The video is probed once; every pass (:meth:`chunks`) decodes again from the first
    frame, unless the selected frames fit in ``keep_frames_mb``: then the first pass keeps
    them and later passes reuse them. An image is one frame, always kept.
    """

    def __init__(self, source: ClipSource, config: PreprocessConfig) -> None:
        self.source = source
        self.config = config
        self._kept: list[np.ndarray] | None = None
        self._reader: VideoReader | None = None
        self._keep = False
        if source.media == "image":
            image = read_image(source.path)
            self.frame_size = (int(image.shape[0]), int(image.shape[1]))
            self.indices = [0]
            self._kept = [image[None]]
            return
        reader = VideoReader(source.path)
        info = reader.__enter__().info  # probes: VideoError for an unreadable file
        self._reader = reader
        self.frame_size = (info.height, info.width)
        self.indices = config.select_frames(info.num_frames)
        self._keep = info.height * info.width * 3 * len(self.indices) <= config.keep_frames_mb * (1 << 20)

    def __enter__(self) -> ClipFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the decoder and the kept frames."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._kept = None

    @property
    def num_frames(self) -> int:
        return len(self.indices)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(position of the chunk's first frame among the selected ones, (n, H, W, 3) uint8)."""
        chunk = self.config.chunk_frames
        if self._kept is not None:
            position = 0
            for block in self._kept:
                for start in range(0, block.shape[0], chunk):
                    yield position, block[start : start + chunk]
                    position += min(chunk, block.shape[0] - start)
            return
        if not self.indices or self._reader is None:
            return
        wanted = set(self.indices)
        last = self.indices[-1]
        kept: list[np.ndarray] = []
        buffer: list[np.ndarray] = []
        position = 0

        def emit() -> np.ndarray:
            block = np.stack(buffer)
            if self._keep:
                kept.append(block)
            return block

        for index, frame in enumerate(self._reader):
            if index in wanted:
                buffer.append(frame)
                if len(buffer) == chunk:
                    block = emit()
                    yield position, block
                    position += len(buffer)
                    buffer = []
            if index >= last:
                break
        if buffer:
            block = emit()
            yield position, block
            position += len(buffer)
        if position < len(self.indices):
            raise VideoError(f"{self.source.path}: decoded only {position} of {len(self.indices)} selected frames")
        if self._keep:
            self._kept = kept


# --------------------------------------------------------------------------- cache specs
def _field_specs(kind: str, config: PreprocessConfig, layout_size: int, with_truth: bool) -> dict[str, FieldSpec]:
    s, t, m = config.crop_size, config.texture_size, config.mouth_crop_size
    eight = (CropTransform.TENSOR_FIELDS,)
    if kind == FRAMES_KIND:
        fields = {"crop": FieldSpec("uint8", (3, s, s)), "landmarks": FieldSpec("float32", (68, 2)),
                  "transform": FieldSpec("float32", eight)}
    elif kind == COEFFS_KIND:
        fields = {"coeffs": FieldSpec("float32", (layout_size,)), "landmarks": FieldSpec("float32", (68, 2)),
                  "landmarks_detected": FieldSpec("float32", (68, 2)), "transform": FieldSpec("float32", eight)}
    elif kind == TEXTURES_KIND:
        return {"uv_texture": FieldSpec("uint8", (3, t, t)), "visibility": FieldSpec("bool", (1, t, t)),
                "coeffs": FieldSpec("float32", (layout_size,))}
    elif kind == MOUTHS_KIND:
        return {"crop": FieldSpec("uint8", (3, m, m)), "crop_removed": FieldSpec("uint8", (3, m, m)),
                "mask": FieldSpec("bool", (1, m, m)), "landmarks": FieldSpec("float32", (20, 2)),
                "transform": FieldSpec("float32", eight)}
    else:
        raise ValueError(f"unknown cache kind {kind!r}")
    if with_truth:
        fields["coeffs_true"] = FieldSpec("float32", (layout_size,))
    return fields


def stage_kinds(config: PreprocessConfig) -> tuple[str, ...]:
    """The cache kinds the configured stage writes."""
    kinds: list[str] = []
    if config.does_align:
        kinds.append(FRAMES_KIND)
    if config.does_reconstruct:
        kinds.extend([COEFFS_KIND, TEXTURES_KIND, MOUTHS_KIND])
    return tuple(kinds)


@dataclass(frozen=True)
class RunPlan:
    """Everything resolved once in the parent process and shared by the ranks."""

    config: PreprocessConfig
    clips: tuple[ClipSource, ...]  # the selected clips, sorted by id
    world: Path | None  # synthetic world folder
    detector_name: str  # "dlib-hog", "dlib-cnn" or "truth"
    min_face_size: float  # pixels
    specs: Mapping[str, CacheSpec]  # kind -> spec of the cache written
    cache_dirs: Mapping[str, Path]  # kind -> folder
    reuse_frames: bool  # stage reconstruct reads landmarks from an existing frames cache
    filter_on: bool  # the quality filter runs (image inputs)


def reconstructor_identity(config: PreprocessConfig) -> dict[str, Any]:
    """Reconstructor name + checkpoint path and SHA-256, or the fitter's settings."""
    identity: dict[str, Any] = {"kind": config.reconstructor}
    if config.reconstructor in ("checkpoint", "deep3d"):
        path = Path(config.reconstructor_path or "")
        if not path.is_file():
            raise PreprocessError(f"reconstructor checkpoint {path} not found")
        identity.update(path=str(path.resolve()), sha256=sha256_file(path), refine=config.refine)
    if config.reconstructor == "fitter" or config.refine:
        from emoedit.reconstruction.fitter import FitterConfig

        try:
            fitter = FitterConfig(**dict(config.fitter))
        except TypeError as error:
            raise PreprocessError(f"fitter settings {dict(config.fitter)}: {error}") from None
        identity["fitter"] = dataclasses.asdict(fitter)
        identity["fitter_chunk_frames"] = config.fitter_chunk_frames
    return identity


def _attributes(
    kind: str, config: PreprocessConfig, model: MorphableModel, template: AlignmentTemplate, detector_name: str,
    min_face_size: float, world: Path | None, filter_on: bool, with_truth: bool,
) -> dict[str, Any]:
    """Everything a consumer of ``kind`` must check: see the module docstring."""
    attributes: dict[str, Any] = {
        "producer": PRODUCER,
        "emoedit_version": emoedit.__version__,
        "face_model": model.name,
        "face_model_info": face_model_identity(model),
        "crop_size": config.crop_size,
        "crop_camera": dataclasses.asdict(PerspectiveCamera().scaled(config.crop_size)),
        "alignment": {"template": template.name, "points5": template.points5.tolist(), "rescale_factor": "deep3d"},
        "detector": {"name": detector_name, "upsample": config.detect_upsample, "max_side": config.detect_max_side},
        "tracking": {"min_face_size": min_face_size, "max_gap": config.max_gap},
        "frames": {"max_frames": config.max_frames, "frame_stride": config.frame_stride},
        "input_kind": config.input_kind,
        "synthetic_world": world is not None,
        "preprocess_config": config.content_settings(kind),
        "coeffs_true": (
            "truth id/exp/tex/gamma; angle/trans re-fitted for the crop camera (see emoedit.data.preprocess)"
            if with_truth else None
        ),
    }
    if kind != FRAMES_KIND:
        attributes["reconstructor"] = reconstructor_identity(config)
        attributes["texture"] = {"texture_size": config.texture_size, "texture_crop_size": config.resolved_texture_crop_size,
                                 "sampling": config.texture_sampling}
        if config.texture_region_min_cos is not None:  # absent in caches written before the option
            attributes["texture"]["region_min_cos"] = config.texture_region_min_cos
            attributes["texture"]["region_margin"] = config.texture_region_margin
        attributes["mouth"] = {"crop_size": config.mouth_crop_size, "mouth_width": config.mouth_width,
                               "template": "default", "teeth_dilate_px": config.teeth_dilate_px,
                               "teeth_fill": config.teeth_fill, "inner_lip_ids": list(range(60, 68))}
        attributes["quality_filter"] = config.filter.to_json() if filter_on else None
    return attributes


def plan_run(config: PreprocessConfig) -> tuple[RunPlan, MorphableModel]:
    """Read the inputs, resolve choices and build every cache spec (no clip is processed)."""
    if not config.output_dir:
        raise PreprocessError("PreprocessConfig.output_dir is required")
    if not config.inputs:
        raise PreprocessError("PreprocessConfig.inputs is empty: give a MEAD/FFHQ root or video files / lists")
    clips = read_inputs(
        config.input_kind, config.inputs, root=config.input_root, subjects=config.subjects,
        emotions=config.emotions, views=config.views, levels=config.levels,
    )
    if config.max_clips is not None:
        clips = clips[: config.max_clips]
    world = synthetic_world_dir(config)
    detector_name = resolve_detector_name(config, world)
    if config.reconstructor == "truth" and world is None:
        raise PreprocessError("reconstructor 'truth' needs a synthetic world input (a folder with truth/world.json)")
    model = load_face_model(config.face_model, world)
    template = (AlignmentTemplate.from_deep3d_mat(config.alignment_template) if config.alignment_template
                else AlignmentTemplate.from_face_model(model))
    min_face = config.min_face_size
    if min_face is None:
        min_face = 0.0 if detector_name == "truth" else DEFAULT_MIN_FACE_SIZE_PX
    truth_layout_ok = world is not None and _world_layout_matches(world, model)
    if config.reconstructor == "truth" and not truth_layout_ok:
        raise PreprocessError("reconstructor 'truth' needs the synthetic world's own face model (face_model='auto')")
    filter_on = config.quality_filter if config.quality_filter is not None else config.input_kind == "ffhq"
    output = Path(config.output_dir)
    specs: dict[str, CacheSpec] = {}
    dirs: dict[str, Path] = {}
    for kind in stage_kinds(config):
        with_truth = truth_layout_ok and kind in (FRAMES_KIND, COEFFS_KIND)
        specs[kind] = CacheSpec(
            kind=kind, version=CACHE_VERSION,
            fields=_field_specs(kind, config, model.layout.size, with_truth),
            meta=dict(META_TYPES),
            attributes=_attributes(kind, config, model, template, detector_name, min_face, world, filter_on, with_truth),
        )
        dirs[kind] = output / kind
    reuse = False
    if config.stage == "reconstruct":
        reuse = _frames_cache_reusable(output / FRAMES_KIND, detector_name, min_face, config, model, template)
    plan = RunPlan(
        config=config, clips=tuple(clips), world=world, detector_name=detector_name, min_face_size=float(min_face),
        specs=specs, cache_dirs=dirs, reuse_frames=reuse, filter_on=filter_on,
    )
    return plan, model


def _world_layout_matches(world: Path, model: MorphableModel) -> bool:
    path = world / "truth" / "face_model.pt"
    if not path.is_file():
        return False
    try:
        truth_model = MorphableModel.load(path)
    except ValueError:
        return False
    return (truth_model.layout == model.layout and truth_model.num_vertices == model.num_vertices
            and bool(torch.equal(truth_model.mean_shape, model.mean_shape)))


def _frames_cache_reusable(
    folder: Path, detector_name: str, min_face: float, config: PreprocessConfig, model: MorphableModel,
    template: AlignmentTemplate,
) -> bool:
    """A finished frames cache of the same detector, tracking, frame selection and template."""
    if not (folder / MANIFEST_FILE).is_file():
        return False
    from emoedit.data.cache_reader import CacheReader

    try:
        spec = CacheReader.open(folder).spec
    except CacheError as error:
        log.warning("not reusing landmarks of %s: %s", folder, error)
        return False
    a = spec.attributes
    same = (
        spec.kind == FRAMES_KIND
        and a.get("producer") == PRODUCER
        and a.get("detector") == {"name": detector_name, "upsample": config.detect_upsample, "max_side": config.detect_max_side}
        and a.get("tracking") == {"min_face_size": min_face, "max_gap": config.max_gap}
        and a.get("frames") == {"max_frames": config.max_frames, "frame_stride": config.frame_stride}
        and a.get("alignment", {}).get("points5") == template.points5.tolist()
    )
    if not same:
        log.info("frames cache %s was made with other settings: detecting again", folder)
    return bool(same)


# --------------------------------------------------------------------------- the per-clip work
@dataclass
class _Aligned:
    """Aligned faces of the valid frames of one clip (Tv frames)."""

    positions: list[int]  # positions (among the selected frames) of the valid frames
    frames: list[int]  # their frame indices in the video
    crops: Tensor  # (Tv, 3, S, S) uint8
    landmarks: Tensor  # (Tv, 68, 2) float32 crop px (detected)
    landmarks_frame: Tensor  # (Tv, 68, 2) float32 frame px (detected)
    transform: CropTransform  # batch (Tv,)
    scores: Tensor  # (Tv,) float32 detector scores (NaN: interpolated)


class ClipProcessor:
    """Runs the configured stage on one clip at a time and writes its records (one rank)."""

    def __init__(self, plan: RunPlan, model: MorphableModel, *, rank: int, world_size: int, device: torch.device) -> None:
        self.plan = plan
        self.config = plan.config
        self.device = device
        self.model = model.to(device)
        self.template = (AlignmentTemplate.from_deep3d_mat(self.config.alignment_template)
                         if self.config.alignment_template else AlignmentTemplate.from_face_model(model))
        self.camera = PerspectiveCamera().scaled(self.config.crop_size)
        self.writers = {kind: CacheWriter.open(plan.cache_dirs[kind], spec, rank=rank, world_size=world_size)
                        for kind, spec in plan.specs.items()}
        self.detector = build_detector(plan.detector_name, self.config)
        self.truth = open_truth(plan.world)
        self.with_truth = {kind: "coeffs_true" in spec.fields for kind, spec in plan.specs.items()}
        # Clips with a report from an earlier run (e.g. "failed"): a successful rewrite replaces it.
        self._reported = {kind: set(merge_entries(plan.cache_dirs[kind], *read_all_entries(plan.cache_dirs[kind])).reports)
                          for kind in plan.specs}
        self.stats = RankStats()
        self._pending: dict[str, list[tuple[str, dict[str, Tensor], dict[str, Any]]]] = defaultdict(list)
        self._frames_reader = None
        if plan.reuse_frames:
            from emoedit.data.cache_reader import CacheReader

            self._frames_reader = CacheReader.open(plan.cache_dirs.get(FRAMES_KIND, Path(self.config.output_dir) / FRAMES_KIND))
            self._frames_done = set(self._frames_reader.clips) | set(
                c for c, r in self._frames_reader.reports.items() if r.skipped)
        self.reconstructor = None
        if self.config.does_reconstruct:
            self._build_reconstruction()

    # ---------------------------------------------------------------- setup
    def _build_reconstruction(self) -> None:
        from emoedit.texture.extraction import TextureExtractor
        from emoedit.texture.face_region import face_region
        from emoedit.texture.uv_layout import UVLayout

        config = self.config
        if config.reconstructor != "truth":
            self.reconstructor = build_reconstructor(config, self.model)
        self.layout = UVLayout.from_model(self.model, config.texture_size).to(self.device)
        self.extractor = TextureExtractor(layout=self.layout, sampling=config.texture_sampling)
        self.texture_region = (None if config.texture_region_min_cos is None else
                               face_region(self.model, self.layout, config.texture_region_min_cos,
                                           config.texture_region_margin))
        self.mouth_template = MouthTemplate.default()
        self.texture_camera = PerspectiveCamera().scaled(config.resolved_texture_crop_size)
        self.skin_uv = None
        if self.plan.filter_on:
            region = self.model.skin_mask if self.model.skin_mask is not None else self.model.front_mask
            if region is not None:
                self.skin_uv = self.layout.interpolate(region.to(torch.float32)[:, None]) > 0.5

    def _timed(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.stats.stage_seconds[name] += now - start
        return now

    # ---------------------------------------------------------------- resume
    def is_done(self, clip_id: str) -> bool:
        """Every cache of the stage holds the clip (records or a skipped report)."""
        return all(writer.is_done(clip_id) for writer in self.writers.values())

    # ---------------------------------------------------------------- main entry
    def process(self, source: ClipSource) -> str:
        """Process one clip; returns "done", "written", "skipped" or "failed" (never raises for bad media)."""
        if self.is_done(source.clip_id):
            self.stats.clips_already_done += 1
            return "done"
        try:
            outcome = self._process(source)
        except (VideoError, MediaError) as error:
            return self._fail(source, str(error))
        except Exception as error:  # noqa: BLE001 - one bad clip must not end a long run
            if self.config.fail_fast:
                raise
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            log.error("clip %s failed:\n%s", source.clip_id, traceback.format_exc())
            return self._fail(source, f"{type(error).__name__}: {detail}")
        return outcome

    def _fail(self, source: ClipSource, message: str) -> str:
        self.stats.failed.append((source.clip_id, message))
        for writer in self.writers.values():
            if not writer.is_done(source.clip_id):
                writer.write_report(source.clip_id, {"status": "failed", "error": message, "path": str(source.path)})
        return "failed"

    def flush(self) -> None:
        """Write buffered image records (image inputs are grouped into shards)."""
        start = time.perf_counter()
        for kind, items in list(self._pending.items()):
            if items:
                writer = self.writers[kind]
                overwrite = any(writer.is_done(clip_id) for clip_id, _, _ in items)
                writer.write_clips(items, overwrite=overwrite)
            self._pending[kind] = []
        self._timed("write", start)

    # ---------------------------------------------------------------- pipeline
    def _process(self, source: ClipSource) -> str:
        config = self.config
        start = time.perf_counter()
        with ClipFrames(source, config) as clip_frames:
            self._timed("decode", start)
            return self._process_frames(source, clip_frames)

    def _process_frames(self, source: ClipSource, clip_frames: ClipFrames) -> str:
        config = self.config
        truth = self.truth(source, clip_frames.indices) if self.truth is not None else None
        track = self._landmarks(source, clip_frames, truth)
        self.stats.frames_used += clip_frames.num_frames
        report: dict[str, Any] = {"status": "ok", "num_frames": clip_frames.num_frames, "tracking": track.report}
        valid = track.valid & torch.isfinite(track.landmarks).flatten(1).all(dim=1)
        positions = [int(p) for p in torch.nonzero(valid).flatten()]
        self.stats.frames_without_face += clip_frames.num_frames - len(positions)
        self.stats.frames_interpolated += int((track.status == int(FrameStatus.INTERPOLATED)).sum())
        if not positions:
            report["status"] = "no_face"
            self._skip(source, report)
            return "skipped"
        aligned = self._align(clip_frames, track, positions)
        records: dict[str, dict[str, Tensor]] = {}
        coeffs_true = None
        if truth is not None and truth.coeffs is not None and any(self.with_truth.values()):
            start = time.perf_counter()
            coeffs_true, residual = truth_to_crop_camera(
                self.model, truth.coeffs[positions].to(self.device), truth.camera, aligned.transform.to(self.device),
                self.camera,
            )
            coeffs_true = coeffs_true.cpu()
            report["coeffs_true_residual_px"] = {"mean": float(residual.mean()), "max": float(residual.max())}
            self._timed("truth", start)
        if config.does_align:
            records[FRAMES_KIND] = {"crop": aligned.crops, "landmarks": aligned.landmarks,
                                    "transform": aligned.transform.as_tensor()}
            if self.with_truth.get(FRAMES_KIND):
                records[FRAMES_KIND]["coeffs_true"] = coeffs_true
        if len(positions) < clip_frames.num_frames:
            report["status"] = "partial"
        if config.does_reconstruct:
            outcome = self._reconstruct(source, clip_frames, aligned, coeffs_true, report)
            if outcome is None:  # rejected by the quality filter: skipped in the reconstruction caches
                self._skip(source, report, kinds=(COEFFS_KIND, TEXTURES_KIND, MOUTHS_KIND))
                if not records:
                    return "skipped"
                self.stats.clips_skipped -= 1  # the frames cache still gets the face (reconstruction training)
            else:
                records.update(outcome)
        meta = {**source.meta(), "frame": aligned.frames}
        self._write(source, records, meta, report)
        self.stats.clips_written += 1
        self.stats.records_written += len(positions)
        return "written"

    def _landmarks(self, source: ClipSource, clip_frames: ClipFrames, truth: ClipTruth | None) -> TrackResult:
        """Per-frame tracked landmarks (frame pixels) of the selected frames."""
        start = time.perf_counter()
        if self._frames_reader is not None and source.clip_id in self._frames_done:
            track = self._landmarks_from_frames_cache(source, clip_frames)
            if track is not None:
                self._timed("detect", start)
                return track
        if self.plan.detector_name == "truth":
            if truth is None:
                raise PreprocessError(f"{source.path}: no truth landmarks for clip {source.clip_id!r}")
            detector: FaceDetector = GivenLandmarksDetector(truth.landmarks)
        else:
            assert self.detector is not None
            detector = self.detector
        detections: list[list[FaceDetection]] = []
        decode_time = 0.0
        last = time.perf_counter()
        for position, chunk in clip_frames.chunks():
            now = time.perf_counter()
            decode_time += now - last
            detections.extend(detector.detect_batch(chunk, start_index=position))
            last = time.perf_counter()
        self.stats.stage_seconds["decode"] += decode_time
        self.stats.stage_seconds["detect"] += time.perf_counter() - start - decode_time
        return track_faces(detections, clip_frames.frame_size, min_face_size=self.plan.min_face_size,
                           max_gap=self.config.max_gap)

    def _landmarks_from_frames_cache(self, source: ClipSource, clip_frames: ClipFrames) -> TrackResult | None:
        reader = self._frames_reader
        assert reader is not None
        if source.clip_id not in reader.clips:
            detections: list[list[FaceDetection]] = [[] for _ in clip_frames.indices]
        else:
            data = reader.load_clip(source.clip_id, fields=("landmarks", "transform"))
            transform = CropTransform.from_tensor(data["transform"])
            if transform.frame_size != clip_frames.frame_size:
                return None
            frame_points = transform.crop_to_frame(data["landmarks"])
            where = {index: i for i, index in enumerate(clip_frames.indices)}
            detections = [[] for _ in clip_frames.indices]
            for row, frame in enumerate(data["frame"]):
                if frame in where:
                    detections[where[frame]] = [FaceDetection.from_landmarks(frame_points[row])]
        # re-tracking with max_gap 0 keeps the cache's frames exactly (its gaps were filled already)
        return track_faces(detections, clip_frames.frame_size, min_face_size=0.0, max_gap=0)

    def _align(self, clip_frames: ClipFrames, track: TrackResult, positions: list[int]) -> _Aligned:
        start = time.perf_counter()
        size = self.config.crop_size
        wanted = set(positions)
        crops, transforms = [], []
        points_frame = track.landmarks[positions]
        transform = face_crop_transform(points_frame, self.template, frame_size=clip_frames.frame_size, crop_size=size)
        row = 0
        for position, chunk in clip_frames.chunks():
            local = [i for i in range(chunk.shape[0]) if position + i in wanted]
            if not local:
                continue
            t = transform[row : row + len(local)]
            frames = torch.from_numpy(np.ascontiguousarray(chunk[local])).permute(0, 3, 1, 2).float().div_(255.0)
            crop = warp_to_crop(frames, t).clamp_(0.0, 1.0)
            crops.append(crop.mul_(255.0).round_().to(torch.uint8))
            transforms.append(t)
            row += len(local)
        self._timed("align", start)
        return _Aligned(
            positions=positions,
            frames=[clip_frames.indices[p] for p in positions],
            crops=torch.cat(crops),
            landmarks=transform.frame_to_crop(points_frame).float(),
            landmarks_frame=points_frame.float(),
            transform=transform,
            scores=track.scores[positions].float(),
        )

    def _reconstruct(
        self, source: ClipSource, clip_frames: ClipFrames, aligned: _Aligned, coeffs_true: Tensor | None,
        report: dict[str, Any],
    ) -> dict[str, dict[str, Tensor]] | None:
        """Records of the coeffs, textures and mouths caches; None when the quality filter rejects the image."""
        config = self.config
        start = time.perf_counter()
        crops = aligned.crops.to(self.device, torch.float32).div_(255.0)
        landmarks = aligned.landmarks.to(self.device)
        albedo_scale = None
        if config.reconstructor == "truth":
            assert coeffs_true is not None, "reconstructor 'truth' needs the world's coefficients"
            coeffs = coeffs_true.to(self.device)
        else:
            assert self.reconstructor is not None
            coeffs = self.reconstructor.reconstruct_clip(crops, landmarks).detach().float()
            results = getattr(self.reconstructor, "last_results", None)
            if results:
                albedo_scale = getattr(results[0], "albedo_scale", None)
        with torch.no_grad():
            face = self.model(coeffs, self.camera)
        projected = face.landmarks.float()
        start = self._timed("reconstruct", start)
        transform_dev = aligned.transform.to(self.device)
        projected_frame = transform_dev.crop_to_frame(projected)
        tex_transform = face_crop_transform(aligned.landmarks_frame.to(self.device), self.template,
                                            frame_size=clip_frames.frame_size, crop_size=config.resolved_texture_crop_size)
        from emoedit.texture.face_region import fill_outside_region

        uv_list, vis_list, occl_list = [], [], []
        mouth_parts: dict[str, list[Tensor]] = defaultdict(list)
        wanted = set(aligned.positions)
        row = 0
        for position, chunk in clip_frames.chunks():
            local = [i for i in range(chunk.shape[0]) if position + i in wanted]
            if not local:
                continue
            rows = slice(row, row + len(local))
            row += len(local)
            t0 = time.perf_counter()
            frames = torch.from_numpy(np.ascontiguousarray(chunk[local])).to(self.device).permute(0, 3, 1, 2)
            frames = frames.float().div_(255.0)
            tex_crop = warp_to_crop(frames, tex_transform[rows]).clamp_(0.0, 1.0)
            with torch.no_grad():
                screen = self.model(coeffs[rows], self.texture_camera).vertices_screen
                extraction = self.extractor(tex_crop, screen)
            uv_u8 = extraction.uv_texture.mul(255.0).round_().to(torch.uint8)
            if self.texture_region is not None:
                uv_u8 = fill_outside_region(uv_u8, self.texture_region)
            uv_list.append(uv_u8.cpu())
            vis_list.append((extraction.visibility > 0.5).cpu())
            if self.plan.filter_on:
                colors = face.vertex_colors[rows]
                if albedo_scale is not None:
                    colors = colors * albedo_scale.to(colors)
                model_uv = self.layout.interpolate(colors.float())
                occl_list.append(uv_photometric_outliers(extraction.uv_texture, extraction.visibility, model_uv,
                                                         self.skin_uv, threshold=config.filter.residual_threshold).cpu())
            t1 = self._timed("texture", t0)
            mouths = extract_mouths(frames, projected_frame[rows], crop_size=config.mouth_crop_size,
                                    mouth_width=config.mouth_width, template=self.mouth_template,
                                    dilate_px=config.teeth_dilate_px, fill=config.teeth_fill)
            mouth_parts["crop"].append(_to_uint8(mouths.crop))
            mouth_parts["crop_removed"].append(_to_uint8(mouths.crop_removed))
            mouth_parts["mask"].append(mouths.mask.cpu())
            mouth_parts["landmarks"].append(mouths.landmarks.cpu())
            mouth_parts["transform"].append(mouths.transform.as_tensor().cpu())
            self._timed("mouth", t1)
        coeffs_cpu = coeffs.cpu().float()
        if self.plan.filter_on:
            quality = assess_faces(
                crops.cpu(), projected.cpu(), self.model.mean_shape[self.model.landmark_ids].cpu(),
                angle=self.model.layout.split(coeffs_cpu).angle, occluded_fraction=torch.cat(occl_list),
                detection_scores=None if self.plan.detector_name == "truth" else aligned.scores,
            )
            reasons = sorted({r for q in quality for r in reject_reasons(q, config.filter)})
            self.stats.filter_decisions.append(reasons)
            self.stats.filter_measures[source.clip_id] = {"reasons": reasons, "quality": [q.to_json() for q in quality]}
            if reasons:
                report.update(status="rejected", reasons=reasons, quality=[q.to_json() for q in quality])
                return None
        out: dict[str, dict[str, Tensor]] = {
            COEFFS_KIND: {"coeffs": coeffs_cpu, "landmarks": projected.cpu(), "landmarks_detected": aligned.landmarks,
                          "transform": aligned.transform.as_tensor()},
            TEXTURES_KIND: {"uv_texture": torch.cat(uv_list), "visibility": torch.cat(vis_list), "coeffs": coeffs_cpu},
            MOUTHS_KIND: {name: torch.cat(parts) for name, parts in mouth_parts.items()},
        }
        if self.with_truth.get(COEFFS_KIND):
            out[COEFFS_KIND]["coeffs_true"] = coeffs_true
        report["visible_texel_fraction"] = float(out[TEXTURES_KIND]["visibility"].float().mean())
        return out

    # ---------------------------------------------------------------- writing
    def _skip(self, source: ClipSource, report: dict[str, Any], kinds: Sequence[str] | None = None) -> None:
        for kind in kinds or tuple(self.writers):
            self.writers[kind].write_report(source.clip_id, report, skipped=True)
        self.stats.clips_skipped += 1

    def _write(self, source: ClipSource, records: Mapping[str, Mapping[str, Tensor]], meta: Mapping[str, Any],
               report: dict[str, Any]) -> None:
        start = time.perf_counter()
        needs_report = report.get("status") != "ok" or bool(report["tracking"].get("interpolated_ranges"))
        for kind, fields in records.items():
            writer = self.writers[kind]
            if source.media == "image":
                self._pending[kind].append((source.clip_id, dict(fields), dict(meta)))
            else:
                writer.write_clip(source.clip_id, fields, meta, overwrite=writer.is_done(source.clip_id))
            if needs_report or source.clip_id in self._reported[kind]:
                writer.write_report(source.clip_id, report)
        self._timed("write", start)
        if source.media == "image" and len(self._pending[next(iter(records))]) >= self.config.images_per_shard:
            self.flush()


def _to_uint8(images: Tensor) -> Tensor:
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu()


# --------------------------------------------------------------------------- reconstruction
def build_reconstructor(config: PreprocessConfig, model: MorphableModel) -> Any:
    """The :class:`~emoedit.reconstruction.Reconstructor` named by the config (model on its device)."""
    from emoedit.reconstruction import FitterConfig, FittingReconstructor, RegressorReconstructor

    fitter = FitterConfig(**dict(config.fitter))
    if config.reconstructor == "fitter":
        return FittingReconstructor(face_model=model, crop_size=config.crop_size, config=fitter,
                                    chunk_size=config.fitter_chunk_frames)
    refine = fitter if config.refine else None
    if config.reconstructor == "checkpoint":
        recon = RegressorReconstructor.from_checkpoint(config.reconstructor_path, model, refine=refine)
    elif config.reconstructor == "deep3d":
        recon = RegressorReconstructor.from_deep3d(config.reconstructor_path, model, refine=refine)
    else:
        raise PreprocessError(f"no reconstructor object for {config.reconstructor!r}")
    recon.regressor.to(model.mean_shape.device)
    return recon


def truth_to_crop_camera(
    model: MorphableModel,  # the world's face model
    coeffs: Tensor,  # (T, L) truth coefficients for ``frame_camera``
    frame_camera: PerspectiveCamera | None,  # the camera the truth projects with (None: Deep3D's scaled to the frame)
    transform: CropTransform,  # batch (T,): frame → crop
    crop_camera: PerspectiveCamera,  # the crop camera
    *,
    iterations: int = 8,  # Gauss-Newton iterations
    max_points: int = 600,  # vertices used in the fit (the 68 landmarks + an even subsample)
) -> tuple[Tensor, Tensor]:
    """Truth coefficients for the crop camera: angle and trans re-fitted, the rest kept.

    Returns ``(coeffs (T, L), residual (T,))``: the residual is the RMS distance in crop
    pixels between the re-fitted projection and the truth's projection mapped into the crop.
    """
    dims = assert_shape(coeffs, ("T", model.layout.size), "coeffs")
    if frame_camera is None:
        height, width = transform.frame_size
        frame_camera = PerspectiveCamera().scaled(int(width))
    layout = model.layout
    parts = layout.split(coeffs.float())
    with torch.no_grad():
        shape = model.shape(parts.id_coeff, parts.exp_coeff)  # (T, V, 3)
        count = shape.shape[1]
        step = max(1, count // max_points)
        ids = torch.unique(torch.cat([model.landmark_ids, torch.arange(0, count, step, device=shape.device)]))
        points = shape[:, ids]
        from emoedit.face_model.rotation import euler_to_rotation

        world = points @ euler_to_rotation(parts.angle) + parts.trans[:, None]
        target = transform.frame_to_crop(frame_camera.project(world)[..., :2])  # (T, N, 2)

        def residual(params: Tensor) -> Tensor:  # params (T, 6) = angle, trans -> (T, 2N)
            posed = points @ euler_to_rotation(params[:, :3]) + params[:, None, 3:]
            return (crop_camera.project(posed)[..., :2] - target).flatten(1)

        params = torch.cat([parts.angle, parts.trans], dim=1).double()
        points = points.double()
        target = target.double()
        # Initial depth from the scale change: crop px per world unit must match.
        ratio = crop_camera.focal / (frame_camera.focal * transform.scale.double().to(params.device))
        depth = frame_camera.camera_distance - params[:, 5]
        params[:, 5] = crop_camera.camera_distance - depth * ratio
        eps = 1e-6
        for _ in range(iterations):
            r = residual(params)
            jac = torch.stack([(residual(params + eps * e) - residual(params - eps * e)) / (2 * eps)
                               for e in torch.eye(6, dtype=params.dtype, device=params.device)], dim=-1)
            jtj = jac.transpose(1, 2) @ jac + 1e-9 * torch.eye(6, dtype=params.dtype, device=params.device)
            delta = torch.linalg.solve(jtj, -(jac.transpose(1, 2) @ r[..., None]))[..., 0]
            params = params + delta
            if float(delta.abs().max()) < 1e-7:  # converged (radians / decimetres)
                break
        final = residual(params).view(dims["T"], -1, 2)
        rms = final.pow(2).sum(-1).mean(-1).sqrt()
    refit = dataclasses.replace(parts, angle=params[:, :3].float(), trans=params[:, 3:].float())
    return layout.join(refit), rms.float()


# --------------------------------------------------------------------------- entry
def _write_filter_file(path: Path, thresholds: FaceFilterConfig, measures: Mapping[str, Any]) -> None:
    """Merge this run's measurements into the quality-filter file (earlier runs' images are kept)."""
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = dict(json.loads(path.read_text(encoding="utf-8")).get("images", {}))
        except (OSError, ValueError, AttributeError):
            previous = {}
    images = {**previous, **measures}
    body = {
        "thresholds": thresholds.to_json(),
        "counts": count_reasons([entry["reasons"] for entry in images.values()]),
        "images": dict(sorted(images.items())),
    }
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")


def default_device(rank: int, devices: Sequence[str]) -> torch.device:
    """Rank ``rank``'s device: ``devices[rank % len]``, else ``cuda:(rank % n_gpu)`` when CUDA is present, else CPU."""
    if devices:
        return torch.device(devices[rank % len(devices)])
    if torch.cuda.is_available():
        return torch.device(f"cuda:{rank % torch.cuda.device_count()}")
    return torch.device("cpu")


def run_preprocess(config: PreprocessConfig) -> PreprocessSummary:
    """Run ``config.stage`` over every selected clip; resumable; returns what this run did.

    Raises :class:`PreprocessError` (or a dataset layout error) for a configuration or
    input that cannot work; problems of single clips are reported, never raised.
    """
    from emoedit.data.parallel import run_ranks

    started = time.perf_counter()
    plan, model = plan_run(config)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stats, world_size = run_ranks(plan, model)
    for kind, folder in plan.cache_dirs.items():  # rank 0 finalises after every rank has joined
        CacheWriter.open(folder, plan.specs[kind], rank=0, world_size=world_size).finalize(
            verify_checksums=config.verify_checksums)
    merged = RankStats()
    stage_seconds: dict[str, float] = defaultdict(float)
    for s in stats:
        for name in ("clips_already_done", "clips_written", "clips_skipped", "frames_used", "records_written",
                     "frames_without_face", "frames_interpolated"):
            setattr(merged, name, getattr(merged, name) + getattr(s, name))
        merged.failed.extend(s.failed)
        merged.filter_decisions.extend(s.filter_decisions)
        merged.filter_measures.update(s.filter_measures)
        for key, value in s.stage_seconds.items():
            stage_seconds[key] += value
    summary = PreprocessSummary(
        stage=config.stage,
        output_dir=output,
        caches=dict(plan.cache_dirs),
        num_clips=len(plan.clips),
        clips_already_done=merged.clips_already_done,
        clips_written=merged.clips_written,
        clips_skipped=merged.clips_skipped,
        clips_failed=len(merged.failed),
        failed=tuple(sorted((str(a), str(b)) for a, b in merged.failed)),
        frames_used=merged.frames_used,
        records_written=merged.records_written,
        frames_without_face=merged.frames_without_face,
        frames_interpolated=merged.frames_interpolated,
        filter_counts=count_reasons(merged.filter_decisions) if plan.filter_on and config.does_reconstruct else {},
        seconds=time.perf_counter() - started,
        stage_seconds=dict(stage_seconds),
        workers=config.workers,
    )
    body = {"summary": summary.to_json(), "config": config.to_json(), "emoedit_version": emoedit.__version__}
    atomic_write_text(output / f"preprocess-{config.stage}-summary.json", json.dumps(body, indent=2) + "\n")
    if summary.filter_counts:
        _write_filter_file(output / QUALITY_FILTER_FILE, config.filter, merged.filter_measures)
    return summary
