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
   like the textures cache), the texture encoder's W+ and the subject classifier's softmax.

What is kept for every frame is small (:class:`VideoAnalysis`: landmarks, coefficients,
W+, subject weights, crop transforms). Textures are not kept: pass 2 decodes the frames
again and re-extracts a frame's texture when it needs it (deterministic, so identical).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

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
from emoedit.shape_checks import assert_shape
from emoedit.texture.extraction import TextureExtractor
from emoedit.texture.uv_layout import UVLayout
from emoedit.video import VideoReader


def timed_chunks(
    reader: VideoReader,  # an entered reader; every call decodes from the first frame
    chunk_size: int,  # frames per chunk
    timer: StageTimer,  # decoding time is charged to "decode"
) -> Iterator[tuple[int, np.ndarray]]:
    """``(index of the chunk's first frame, (n, H, W, 3) uint8 RGB)`` over the whole video."""
    chunks = reader.iter_chunks(chunk_size)
    start = 0
    while True:
        began = time.perf_counter()
        chunk = next(chunks, None)
        timer.add("decode", time.perf_counter() - began)
        if chunk is None:
            return
        yield start, chunk
        start += int(chunk.shape[0])


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
            screen = self.face_model(coeffs.to(self.device, torch.float32), self.texture_camera).vertices_screen
            extraction = self.extractor(texture_crop, screen)
        return to_uint8(extraction.uv_texture), extraction.visibility > 0.5

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
        coeffs, visible, wplus, weights = [], [], [], []
        parts = self.parts
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
                with timer("recon"):  # no torch.no_grad here: a fitting reconstructor needs gradients
                    chunk_coeffs = parts.reconstructor.reconstruct_clip(crops, crop_landmarks[rows].to(self.device))
                    chunk_coeffs = chunk_coeffs.detach().float()
                with timer("uv"):
                    uv_texture, visibility = self.extract_textures(frames, chunk_coeffs, texture_tf[rows])
                coeffs.append(chunk_coeffs.cpu())
                visible.append(visibility.float().mean(dim=(1, 2, 3)).cpu())
                if need_wplus or need_subject_weights:
                    network_input = texture_to_network(uv_texture)
                if need_wplus:
                    with timer("encoder"), torch.no_grad():
                        wplus.append(parts.encoder(network_input).wplus.float().cpu())
                if need_subject_weights:
                    with timer("classifier"), torch.no_grad():
                        weights.append(parts.classifier(network_input).subject_weights.float().cpu())
        return VideoAnalysis(
            frame_indices=frame_indices,
            landmarks=landmarks,
            crop_transform=crop_tf,
            texture_transform=texture_tf,
            coeffs=torch.cat(coeffs),
            visible_fraction=torch.cat(visible),
            wplus=torch.cat(wplus) if wplus else None,
            subject_weights=torch.cat(weights) if weights else None,
            track=track,
        )


__all__ = ["FaceAnalyzer", "VideoAnalysis", "detect_and_track", "frames_to_tensor", "timed_chunks", "to_uint8"]
