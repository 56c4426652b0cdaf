"""Pass 1 of an edit (METHOD.md §2): find, align, reconstruct and encode the face in every frame.

The video is decoded in chunks, never held whole. Two decodes:

1. **detect** every frame (``FaceDetector.detect_batch``) and :func:`track_faces` over the
   whole video: tracking chooses one face per frame and fills short gaps by interpolation,
   which looks ahead, so it needs every frame's detections first;
2. **analyse** the frames with a face, chunk by chunk, exactly as ``emoedit preprocess``
   built the caches the parts were trained on (:mod:`emoedit.data.preprocess`): Deep3D
   5-point alignment to the face model's template (``face_crop_transform`` +
   ``warp_to_crop``, crops rounded to uint8 like the frames cache), reconstruction of the
   crop-camera coefficients, UV texture extraction from a second, larger crop of the same
   alignment (``settings.texture_crop_size``, the crop camera scaled to it;
   ``settings.texture_size`` and ``settings.texture_sampling``; textures rounded to uint8
   like the textures cache, and the rim outside ``settings.texture_region_min_cos``'s face
   region filled as there), the texture encoder's W+ and the subject classifier's softmax.

What is kept for every frame is small (:class:`VideoAnalysis`: landmarks, coefficients,
W+, subject weights, crop transforms). Textures are not kept: pass 2 decodes the frames
again and re-extracts a frame's texture when it needs it (deterministic, so identical).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from emoedit.data.alignment import AlignmentTemplate, CropTransform, face_crop_transform, warp_to_crop
from emoedit.data.detection import FaceDetection, FaceDetector
from emoedit.data.face_tracking import TrackResult, track_faces
from emoedit.editing.directions import texture_to_network
from emoedit.face_model.camera import PerspectiveCamera
from emoedit.pipeline.parts import EditParts
from emoedit.pipeline.stage_timer import StageTimer
from emoedit.reconstruction.reconstructor import RegressorReconstructor
from emoedit.shape_checks import assert_shape
from emoedit.texture.extraction import TextureExtractor
from emoedit.texture.face_region import face_region, fill_outside_region
from emoedit.texture.uv_layout import UVLayout
from emoedit.video import VideoReader


def network_autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` of ``dtype`` on ``device``'s type around a network call; a no-op for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


DECODE_AHEAD_CHUNKS = 2  # chunks a background thread decodes ahead of their use (0: decode in the caller's thread)


def timed_chunks(
    reader: VideoReader,  # an entered reader; every call decodes from the first frame
    chunk_size: int,  # frames per chunk
    timer: StageTimer,  # the time spent waiting for a chunk is charged to "decode"
    *,
    ahead: int = DECODE_AHEAD_CHUNKS,  # chunks decoded ahead in a background thread (0: none)
) -> Iterator[tuple[int, np.ndarray]]:
    """``(index of the chunk's first frame, (n, H, W, 3) uint8 RGB)`` over the whole video.

    With ``ahead > 0`` a background thread decodes up to ``ahead`` chunks ahead of the
    caller (PyAV releases the GIL while it decodes), so decoding overlaps the caller's
    work; "decode" is then the time the caller waited for a chunk. Memory stays bounded
    (``ahead + 1`` chunks), and the thread has stopped when the iterator is finished or
    closed, so the reader can start its next pass.
    """
    chunks = reader.iter_chunks(chunk_size)
    source: Iterator[np.ndarray] = chunks if ahead <= 0 else _DecodeAhead(chunks, depth=ahead)
    start = 0
    try:
        while True:
            began = time.perf_counter()
            chunk = next(source, None)
            timer.add("decode", time.perf_counter() - began)
            if chunk is None:
                return
            yield start, chunk
            start += int(chunk.shape[0])
    finally:
        if isinstance(source, _DecodeAhead):
            source.close()


class _DecodeAhead:
    """Iterates ``chunks`` in a daemon thread through a bounded queue (exceptions re-raised in the caller)."""

    _END = object()

    def __init__(self, chunks: Iterator[np.ndarray], *, depth: int) -> None:
        self._queue: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(chunks,), name="emoedit-decode", daemon=True)
        self._thread.start()

    def _offer(self, item: tuple[Any, BaseException | None]) -> bool:
        """Put ``item`` unless asked to stop; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, chunks: Iterator[np.ndarray]) -> None:
        try:
            for chunk in chunks:
                if not self._offer((chunk, None)):
                    return
            self._offer((self._END, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consuming thread
            self._offer((None, error))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> _DecodeAhead:
        return self

    def __next__(self) -> np.ndarray:
        if self._done:
            raise StopIteration
        item, error = self._queue.get()
        if error is not None:
            self._done = True
            raise error
        if item is self._END:
            self._done = True
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes the chunk it is decoding)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def frames_to_tensor(chunk: np.ndarray, rows: list[int], device: torch.device) -> Tensor:
    """Frames ``chunk[rows]`` ((n, H, W, 3) uint8) → ``(len(rows), 3, H, W)`` float32 in [0, 1] on ``device``."""
    picked = torch.from_numpy(np.ascontiguousarray(chunk[rows])).to(device)
    return picked.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] → uint8 (round half up, clamped), same shape and device."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def detect_and_track(
    reader: VideoReader,  # an entered reader of the input video
    detector: FaceDetector,  # any detector (dlib, given landmarks, ...)
    *,
    chunk_size: int,  # frames decoded and detected at once
    min_face_size: float,  # faces smaller than this (pixels, sqrt of the box area) are not tracked
    max_gap: int,  # longest run of faceless frames filled by interpolation
    timer: StageTimer,  # charges "decode" and "detect"
    progress: bool = False,  # tqdm bar
) -> TrackResult:
    """Decode every frame, detect faces and track one face through the whole video."""
    info = reader.info
    detections: list[list[FaceDetection]] = []
    with tqdm(total=info.num_frames, desc="edit: detect", unit="frame", disable=not progress) as bar:
        for start, chunk in timed_chunks(reader, chunk_size, timer):
            with timer("detect"):
                detections.extend(detector.detect_batch(chunk, start_index=start))
            bar.update(int(chunk.shape[0]))
    with timer("detect"):
        return track_faces(detections, info.frame_size, min_face_size=min_face_size, max_gap=max_gap)


@dataclass(frozen=True, eq=False)
class VideoAnalysis:
    """What pass 1 found in the ``Tv`` frames with a face (all tensors on the CPU, float32)."""

    frame_indices: Tensor  # (Tv,) int64 video frame index of each row, strictly increasing
    landmarks: Tensor  # (Tv, 68, 2) tracked landmarks (detected or interpolated), frame pixels
    crop_transform: CropTransform  # batch (Tv,): frame pixels → aligned crop (settings.crop_size)
    texture_transform: CropTransform  # batch (Tv,): frame pixels → texture crop (settings.texture_crop_size)
    coeffs: Tensor  # (Tv, L) reconstructed coefficients (crop camera; independent of the crop side)
    visible_fraction: Tensor  # (Tv,) fraction of the UV texels seen in the frame
    wplus: Tensor | None  # (Tv, num_ws, w_dim) the texture encoder's W+ x0; None when not computed
    subject_weights: Tensor | None  # (Tv, N) softmax(f(I)) over the training subjects; None when not computed
    track: TrackResult  # the whole video's tracking (every frame, with its report)

    @property
    def num_faces(self) -> int:
        """Tv, the number of frames with a face."""
        return int(self.frame_indices.shape[0])

    def runs(self) -> list[tuple[int, int]]:
        """Row ranges ``[start, stop)`` of consecutive video frames (smoothing never crosses a faceless gap)."""
        indices = self.frame_indices.tolist()
        runs: list[tuple[int, int]] = []
        begin = 0
        for row in range(1, len(indices) + 1):
            if row == len(indices) or indices[row] != indices[row - 1] + 1:
                runs.append((begin, row))
                begin = row
        return runs


class FaceAnalyzer:
    """The preprocessing of one frame batch, as the caches were made (see the module docstring).

    Holds the face model, the reconstructor, the alignment template, the UV layout and the
    texture extractor of ``parts``; everything runs on the face model's device.
    """

    def __init__(
        self,
        *,
        parts: EditParts,  # the frozen parts (face model, reconstructor, encoder, classifier, settings)
        template: AlignmentTemplate | None = None,  # 5-point template; None: the face model's mean landmarks
    ) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.face_model = parts.face_model
        self.device = parts.face_model.mean_shape.device
        self.template = template or AlignmentTemplate.from_face_model(parts.face_model)
        self.texture_camera = PerspectiveCamera().scaled(self.settings.texture_crop_size)
        layout = UVLayout.from_model(parts.face_model, self.settings.texture_size).to(self.device)
        sampling = self.settings.texture_sampling
        self.extractor = TextureExtractor(layout=layout, sampling=sampling)  # type: ignore[arg-type]
        # The face region the texture networks were trained on (the cache's rim fill); None: every texel.
        min_cos = self.settings.texture_region_min_cos
        self.texture_region = (None if min_cos is None else
                               face_region(parts.face_model, layout, min_cos, self.settings.texture_region_margin))

    # ---------------------------------------------------------------- per batch
    def transforms(self, landmarks: Tensor, frame_size: tuple[int, int]) -> tuple[CropTransform, CropTransform]:
        """Frame → aligned crop and frame → texture crop transforms of ``(B, 68, 2)`` frame-pixel landmarks."""
        assert_shape(landmarks, (None, 68, 2), "landmarks")
        crop = face_crop_transform(landmarks, self.template, frame_size=frame_size, crop_size=self.settings.crop_size)
        texture = face_crop_transform(landmarks, self.template, frame_size=frame_size,
                                      crop_size=self.settings.texture_crop_size)
        return crop, texture

    def aligned_crops(self, frames: Tensor, transform: CropTransform) -> Tensor:
        """``(B, 3, S, S)`` float crops in [0, 1], rounded to uint8 steps like the frames cache."""
        crops = warp_to_crop(frames, transform).clamp_(0.0, 1.0)
        return to_uint8(crops).float().div_(255.0)

    def extract_textures(self, frames: Tensor, coeffs: Tensor, transform: CropTransform) -> tuple[Tensor, Tensor]:
        """The frames' UV textures as the textures cache holds them.

        Args:
            frames: ``(B, 3, H, W)`` float in [0, 1].
            coeffs: ``(B, L)`` the frames' (unedited) coefficients.
            transform: batch ``(B,)`` frame → texture crop.

        Returns:
            ``(uv_texture (B, 3, T, T) uint8, visibility (B, 1, T, T) bool)`` on the device.
        """
        with torch.no_grad():
            texture_crop = warp_to_crop(frames, transform).clamp_(0.0, 1.0)
            coeffs = coeffs.to(self.device, torch.float32)
            screen = self.face_model.geometry(coeffs, self.texture_camera).vertices_screen
            extraction = self.extractor(texture_crop, screen)
        return to_uint8(extraction.uv_texture), extraction.visibility > 0.5

    def cache_view(self, uv_texture: Tensor) -> Tensor:
        """``(B, 3, T, T)`` uint8 textures as the textures cache holds them (the rim outside the face
        region filled, :func:`~emoedit.texture.face_region.fill_outside_region`): the networks' input."""
        return uv_texture if self.texture_region is None else fill_outside_region(uv_texture, self.texture_region)

    def _pure_regression(self) -> bool:
        """Whether the reconstructor is a network alone (no fitting, so autocast may run it)."""
        reconstructor = self.parts.reconstructor
        return isinstance(reconstructor, RegressorReconstructor) and reconstructor.refine is None

    # ---------------------------------------------------------------- whole video
    def analyse(
        self,
        reader: VideoReader,  # an entered reader of the input video
        track: TrackResult,  # detect_and_track's result for the same video
        *,
        chunk_size: int,  # frames decoded and processed at once
        need_wplus: bool,  # run the texture encoder
        need_subject_weights: bool,  # run the subject classifier
        timer: StageTimer,  # charges decode, align, recon, uv, encoder, classifier
        progress: bool = False,  # tqdm bar
        autocast_dtype: torch.dtype | None = None,  # e.g. torch.bfloat16: the networks under autocast; None: float32
    ) -> VideoAnalysis:
        """Pass 1 over the frames ``track`` found a face in (the second decode)."""
        info = reader.info
        valid = track.valid & torch.isfinite(track.landmarks).flatten(1).all(dim=1)
        frame_indices = torch.nonzero(valid).flatten()
        landmarks = track.landmarks[frame_indices].float()
        with timer("align"):
            crop_tf, texture_tf = self.transforms(landmarks, info.frame_size)
            crop_landmarks = crop_tf.frame_to_crop(landmarks).float()
        row_of = torch.full((info.num_frames,), -1, dtype=torch.int64)
        row_of[frame_indices] = torch.arange(frame_indices.shape[0])
        # Per-frame results go straight into whole-video tensors (allocated at the first chunk):
        # no list of small per-chunk tensors left between the chunks' large temporaries, which
        # fragments the heap and makes the resident memory creep up with the video's length.
        kept = _RowStore(num_rows=int(frame_indices.shape[0]))
        parts = self.parts
        recon_dtype = autocast_dtype if self._pure_regression() else None  # never autocast a fitter's optimisation
        with tqdm(total=info.num_frames, desc="edit: analyse", unit="frame", disable=not progress) as bar:
            for start, chunk in timed_chunks(reader, chunk_size, timer):
                bar.update(int(chunk.shape[0]))
                rows_all = row_of[start : start + chunk.shape[0]]
                local = torch.nonzero(rows_all >= 0).flatten().tolist()
                if not local:
                    continue
                rows = rows_all[local]
                with timer("align"):
                    frames = frames_to_tensor(chunk, local, self.device)
                    crops = self.aligned_crops(frames, crop_tf[rows])
                with timer("recon"), network_autocast(self.device, recon_dtype):  # no no_grad: a fitter needs gradients
                    chunk_coeffs = parts.reconstructor.reconstruct_clip(crops, crop_landmarks[rows].to(self.device))
                chunk_coeffs = chunk_coeffs.detach().float()
                with timer("uv"):
                    uv_texture, visibility = self.extract_textures(frames, chunk_coeffs, texture_tf[rows])
                kept.put("coeffs", rows, chunk_coeffs)
                kept.put("visible", rows, visibility.float().mean(dim=(1, 2, 3)))
                if need_wplus or need_subject_weights:
                    network_input = texture_to_network(self.cache_view(uv_texture))
                if need_wplus:
                    with timer("encoder"), torch.no_grad(), network_autocast(self.device, autocast_dtype):
                        kept.put("wplus", rows, parts.encoder(network_input).wplus)
                if need_subject_weights:
                    with timer("classifier"), torch.no_grad(), network_autocast(self.device, autocast_dtype):
                        kept.put("weights", rows, parts.classifier(network_input).subject_weights)
        return VideoAnalysis(
            frame_indices=frame_indices,
            landmarks=landmarks,
            crop_transform=crop_tf,
            texture_transform=texture_tf,
            coeffs=kept.get_or_empty("coeffs", (self.face_model.layout.size,)),
            visible_fraction=kept.get_or_empty("visible", ()),
            wplus=kept.get("wplus") if need_wplus else None,
            subject_weights=kept.get("weights") if need_subject_weights else None,
            track=track,
        )


class _RowStore:
    """Whole-video CPU float32 tensors filled row by row (the first ``put`` of a name allocates it)."""

    def __init__(self, *, num_rows: int) -> None:
        self.num_rows = num_rows
        self.tensors: dict[str, Tensor] = {}

    def put(self, name: str, rows: Tensor, values: Tensor) -> None:
        """``tensors[name][rows] = values`` (``values`` (len(rows), ...) on any device)."""
        values = values.detach()
        if name not in self.tensors:
            self.tensors[name] = torch.empty((self.num_rows, *values.shape[1:]), dtype=torch.float32)
        self.tensors[name][rows] = values.to("cpu", torch.float32)

    def get(self, name: str) -> Tensor | None:
        """The tensor ``name`` (None when nothing was put: no rows)."""
        return self.tensors.get(name)

    def get_or_empty(self, name: str, row_shape: tuple[int, ...]) -> Tensor:
        """The tensor ``name``, or ``(num_rows, *row_shape)`` zeros when nothing was put (no rows)."""
        found = self.tensors.get(name)
        return torch.zeros((self.num_rows, *row_shape)) if found is None else found


__all__ = [
    "DECODE_AHEAD_CHUNKS", "FaceAnalyzer", "VideoAnalysis", "detect_and_track", "frames_to_tensor", "network_autocast",
    "timed_chunks", "to_uint8",
]
