"""One face per frame through a clip, with every detection problem recorded (METHOD.md §2).

:func:`track_faces` turns per-frame detections into per-frame landmarks of one person:
the largest usable face where tracking starts, then in every frame the face nearest (box
centre) to the last chosen one. Frames with no detection, with only tiny faces, or with
several faces are marked; gaps of at most ``max_gap`` frames between two tracked frames
are filled by linear interpolation (landmarks and boxes); longer gaps and gaps at either
end of the clip stay unfilled (NaN) and are reported. It never raises on a bad frame: a
clip without any face gives a result whose report says so, and the caller decides.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from emoedit.data.detection import NUM_LANDMARKS5, NUM_LANDMARKS68, FaceDetection


class FrameStatus(enum.IntEnum):
    """What happened in one frame (stored as int64 codes in :attr:`TrackResult.status`)."""

    OK = 0  # exactly one usable face, tracked
    INTERPOLATED = 1  # no usable face; filled by interpolation between tracked frames
    MISSING = 2  # no face detected; not filled (gap too long or at a clip end)
    MULTIPLE_RESOLVED = 3  # several usable faces; the tracked one was chosen
    TINY = 4  # only faces smaller than min_face_size; not filled

    @property
    def label(self) -> str:
        """Name used in reports."""
        return _LABELS[self]


_LABELS = {
    FrameStatus.OK: "ok",
    FrameStatus.INTERPOLATED: "interpolated",
    FrameStatus.MISSING: "missing",
    FrameStatus.MULTIPLE_RESOLVED: "multiple_faces_resolved",
    FrameStatus.TINY: "tiny",
}
VALID_STATUSES = (FrameStatus.OK, FrameStatus.INTERPOLATED, FrameStatus.MULTIPLE_RESOLVED)


@dataclass(frozen=True, eq=False)
class TrackResult:
    """Per-frame landmarks of the tracked face of one clip (T frames; pixels, x right, y down).

    Rows of frames without a usable face (status MISSING or TINY) are NaN. ``landmarks`` is
    also NaN where the detector gave only 5 points.
    """

    landmarks: Tensor  # (T, 68, 2) float32 pixels, iBUG order
    landmarks5: Tensor  # (T, 5, 2) float32 pixels, LANDMARKS5_NAMES order
    boxes: Tensor  # (T, 4) float32 (x0, y0, x1, y1) pixels
    scores: Tensor  # (T,) float32 detector score; NaN where interpolated or unfilled
    status: Tensor  # (T,) int64 FrameStatus codes
    frame_size: tuple[int, int]  # (H, W) pixels
    report: dict[str, Any]  # JSON-able summary, see track_faces

    @property
    def num_frames(self) -> int:
        """T."""
        return int(self.status.shape[0])

    @property
    def valid(self) -> Tensor:
        """(T,) bool: frames with usable landmarks (OK, INTERPOLATED or MULTIPLE_RESOLVED)."""
        return torch.isin(self.status, torch.tensor([int(s) for s in VALID_STATUSES]))

    @property
    def has_face(self) -> bool:
        """Whether any frame has a usable face."""
        return bool(self.valid.any())

    def statuses(self) -> list[FrameStatus]:
        """Per-frame statuses as enum members."""
        return [FrameStatus(int(code)) for code in self.status]

    def report_json(self) -> str:
        """The report as a JSON string."""
        return json.dumps(self.report, indent=2, sort_keys=True)


def _ranges(flags: Sequence[bool]) -> list[list[int]]:
    """Inclusive [start, end] index ranges of consecutive True flags."""
    ranges: list[list[int]] = []
    for index, flag in enumerate(flags):
        if flag and ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        elif flag:
            ranges.append([index, index])
    return ranges


def _usable(detection: Any, frame_size: tuple[int, int]) -> bool:
    """A well-formed detection with finite 5 points whose box overlaps the frame."""
    if not isinstance(detection, FaceDetection) or not np.isfinite(detection.landmarks5).all():
        return False
    height, width = frame_size
    x0, y0, x1, y1 = detection.box
    return x1 > -0.5 and y1 > -0.5 and x0 < width - 0.5 and y0 < height - 0.5


def _center_distance(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    return math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)


def track_faces(
    detections_per_frame: Sequence[Sequence[FaceDetection]],  # T lists of detections (any order)
    frame_size: tuple[int, int],  # (H, W) of the frames, pixels
    *,
    min_face_size: float = 48.0,  # faces smaller than this (FaceDetection.size, pixels) are "tiny" and not used
    max_gap: int = 5,  # longest run of frames without a usable face that is interpolated
) -> TrackResult:
    """Choose one face per frame, fill short gaps, report the rest.

    The report (``TrackResult.report``) holds: ``num_frames``, ``frame_size`` [H, W],
    ``has_face``, ``num_valid``, ``counts`` per status label, ``frames_without_detection``,
    ``frames_with_only_tiny_faces``, ``frames_with_multiple_faces`` (raw causes, before
    filling), ``unfilled_ranges`` and ``interpolated_ranges`` (inclusive [start, end]
    frame ranges), ``multiple_faces_ranges``, ``settings`` and a one-line ``message``.
    Malformed entries (non-FaceDetection, non-finite points, boxes outside the frame) are
    ignored like missing detections.
    """
    height, width = (int(v) for v in frame_size)
    if height < 1 or width < 1:
        raise ValueError(f"frame_size must be a positive (H, W), got {frame_size!r}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be ≥ 0, got {max_gap}")
    num_frames = len(detections_per_frame)
    landmarks = np.full((num_frames, NUM_LANDMARKS68, 2), np.nan, np.float32)
    landmarks5 = np.full((num_frames, NUM_LANDMARKS5, 2), np.nan, np.float32)
    boxes = np.full((num_frames, 4), np.nan, np.float32)
    scores = np.full((num_frames,), np.nan, np.float32)
    status = np.full((num_frames,), int(FrameStatus.MISSING), np.int64)
    tracked = np.zeros(num_frames, bool)
    no_detection = np.zeros(num_frames, bool)
    only_tiny = np.zeros(num_frames, bool)
    multiple = np.zeros(num_frames, bool)

    previous_box: tuple[float, float, float, float] | None = None
    for t, frame_detections in enumerate(detections_per_frame):
        try:
            candidates = [d for d in (frame_detections or ()) if _usable(d, (height, width))]
        except TypeError:  # not iterable: a bad frame entry
            candidates = []
        big = [d for d in candidates if d.size >= min_face_size]
        if not candidates:
            no_detection[t] = True
            continue
        if not big:
            only_tiny[t] = True
            status[t] = int(FrameStatus.TINY)
            continue
        if previous_box is None:
            chosen = max(big, key=lambda d: d.size)
        else:
            reference = previous_box
            chosen = min(big, key=lambda d: _center_distance(d.box, reference))
        multiple[t] = len(big) > 1
        status[t] = int(FrameStatus.MULTIPLE_RESOLVED if multiple[t] else FrameStatus.OK)
        tracked[t] = True
        previous_box = chosen.box
        boxes[t] = chosen.box
        scores[t] = chosen.score
        landmarks5[t] = chosen.landmarks5
        if chosen.landmarks68 is not None:
            landmarks[t] = chosen.landmarks68

    interpolated = np.zeros(num_frames, bool)
    for start, end in _ranges(list(~tracked)):
        if start == 0 or end == num_frames - 1 or end - start + 1 > max_gap:
            continue
        before, after = start - 1, end + 1
        weights = (np.arange(start, end + 1, dtype=np.float64) - before) / (after - before)
        for array in (landmarks, landmarks5, boxes):
            w = weights.reshape(-1, *([1] * (array.ndim - 1)))
            array[start : end + 1] = ((1 - w) * array[before] + w * array[after]).astype(np.float32)
        status[start : end + 1] = int(FrameStatus.INTERPOLATED)
        interpolated[start : end + 1] = True

    valid = tracked | interpolated
    counts = {label: int((status == int(code)).sum()) for code, label in _LABELS.items()}
    if num_frames == 0:
        message = "empty clip: no frames"
    elif not valid.any():
        message = "no usable face in any frame"
    elif valid.all():
        message = "face found in every frame" + (f" ({int(interpolated.sum())} interpolated)" if interpolated.any() else "")
    else:
        message = f"{int((~valid).sum())} of {num_frames} frames without a usable face"
    report: dict[str, Any] = {
        "num_frames": num_frames,
        "frame_size": [height, width],
        "has_face": bool(valid.any()),
        "num_valid": int(valid.sum()),
        "counts": counts,
        "frames_without_detection": int(no_detection.sum()),
        "frames_with_only_tiny_faces": int(only_tiny.sum()),
        "frames_with_multiple_faces": int(multiple.sum()),
        "unfilled_ranges": _ranges(list(~valid)),
        "interpolated_ranges": _ranges(list(interpolated)),
        "multiple_faces_ranges": _ranges(list(multiple)),
        "settings": {"min_face_size": float(min_face_size), "max_gap": int(max_gap)},
        "message": message,
    }
    return TrackResult(
        landmarks=torch.from_numpy(landmarks),
        landmarks5=torch.from_numpy(landmarks5),
        boxes=torch.from_numpy(boxes),
        scores=torch.from_numpy(scores),
        status=torch.from_numpy(status),
        frame_size=(height, width),
        report=report,
    )
