"""Face tracking: one face per frame, statuses, interpolation of short gaps, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emoedit.data.detection import FaceDetection, landmarks68_to_5
from emoedit.data.face_tracking import FrameStatus, TrackResult, track_faces

FRAME = (240, 320)  # (H, W)
_UNIT_FACE = np.random.default_rng(0).uniform(-0.5, 0.5, size=(68, 2)).astype(np.float32)


def _face(cx: float, cy: float, size: float = 80.0, score: float = 1.0) -> FaceDetection:
    return FaceDetection.from_landmarks(_UNIT_FACE * size + np.array([cx, cy], np.float32), score=score)


def _statuses(result: TrackResult) -> list[FrameStatus]:
    return result.statuses()


def test_short_gap_is_interpolated_linearly() -> None:
    frames = [[_face(100, 100)], [], [], [_face(130, 160)], [_face(130, 160)]]
    result = track_faces(frames, FRAME, max_gap=2)
    assert _statuses(result) == [FrameStatus.OK, FrameStatus.INTERPOLATED, FrameStatus.INTERPOLATED, FrameStatus.OK, FrameStatus.OK]
    first, last = frames[0][0].landmarks68, frames[3][0].landmarks68
    for t, w in ((1, 1 / 3), (2, 2 / 3)):
        np.testing.assert_allclose(result.landmarks[t].numpy(), (1 - w) * first + w * last, atol=1e-4)
        np.testing.assert_allclose(result.landmarks5[t].numpy(), landmarks68_to_5((1 - w) * first + w * last), atol=1e-4)
    # Known answer: the centre moves 30 px in x and 60 px in y over 3 frames.
    centre = result.boxes[:, :2].add(result.boxes[:, 2:]).div(2)
    torch.testing.assert_close(centre[1] - centre[0], torch.tensor([10.0, 20.0]), atol=1e-3, rtol=0)
    assert torch.isnan(result.scores[1:3]).all() and result.scores[0] == 1.0
    assert result.valid.all() and result.has_face
    assert result.report["interpolated_ranges"] == [[1, 2]] and result.report["unfilled_ranges"] == []


def test_long_gap_and_clip_ends_stay_missing() -> None:
    frames = [[], [_face(100, 100)], [], [], [], [_face(100, 100)], []]
    result = track_faces(frames, FRAME, max_gap=2)
    assert _statuses(result) == [FrameStatus.MISSING, FrameStatus.OK] + [FrameStatus.MISSING] * 3 + [FrameStatus.OK, FrameStatus.MISSING]
    assert torch.isnan(result.landmarks[2:5]).all() and torch.isnan(result.landmarks[0]).all()
    assert result.report["unfilled_ranges"] == [[0, 0], [2, 4], [6, 6]]
    assert result.report["counts"]["missing"] == 5 and result.report["num_valid"] == 2
    filled = track_faces(frames, FRAME, max_gap=3)
    assert _statuses(filled)[2:5] == [FrameStatus.INTERPOLATED] * 3
    np.testing.assert_allclose(filled.landmarks[3].numpy(), frames[1][0].landmarks68, atol=1e-4)  # same face both ends


def test_two_faces_track_the_first_largest_then_the_nearest() -> None:
    big, small = _face(80, 100, 90), _face(240, 120, 60)
    frames = [
        [small, big],  # largest chosen
        [_face(85, 100, 90), _face(240, 120, 60)],  # nearest to the previous (the big one)
        [_face(240, 120, 140), _face(90, 102, 90)],  # the other face grows bigger: still the nearest
        [_face(95, 104, 90)],
    ]
    result = track_faces(frames, FRAME)
    assert _statuses(result) == [FrameStatus.MULTIPLE_RESOLVED] * 3 + [FrameStatus.OK]
    centres = (result.boxes[:, 0] + result.boxes[:, 2]) / 2
    torch.testing.assert_close(centres, torch.tensor([80.0, 85.0, 90.0, 95.0]), atol=1.0, rtol=0)
    assert result.report["frames_with_multiple_faces"] == 3
    assert result.report["multiple_faces_ranges"] == [[0, 2]]


def test_tiny_faces_are_not_used() -> None:
    frames = [[_face(100, 100, 80)], [_face(100, 100, 20)], [_face(100, 100, 80)], [_face(100, 100, 20)], [_face(50, 50, 20)]]
    result = track_faces(frames, FRAME, min_face_size=40, max_gap=1)
    assert _statuses(result) == [FrameStatus.OK, FrameStatus.INTERPOLATED, FrameStatus.OK, FrameStatus.TINY, FrameStatus.TINY]
    assert result.report["frames_with_only_tiny_faces"] == 3
    assert result.report["counts"]["tiny"] == 2
    # A tiny face next to a big one is ignored, not "multiple".
    mixed = track_faces([[_face(100, 100, 80), _face(250, 50, 10)]], FRAME, min_face_size=40)
    assert _statuses(mixed) == [FrameStatus.OK]


def test_no_face_at_all_and_bad_frames_do_not_raise() -> None:
    nan_face = FaceDetection.from_landmarks(np.full((68, 2), np.nan, np.float32), box=(0, 0, 10, 10))
    outside = _face(2000, 2000)
    frames = [[], None, [nan_face], [outside], ["not a detection"], 7]  # type: ignore[list-item]
    result = track_faces(frames, FRAME)  # type: ignore[arg-type]
    assert not result.has_face and result.report["has_face"] is False
    assert result.report["message"] == "no usable face in any frame"
    assert all(s == FrameStatus.MISSING for s in _statuses(result))
    assert result.landmarks.shape == (6, 68, 2) and torch.isnan(result.landmarks).all()
    empty = track_faces([], FRAME)
    assert empty.num_frames == 0 and empty.landmarks.shape == (0, 68, 2) and not empty.has_face


def test_five_point_only_detections_and_report_is_json() -> None:
    five = FaceDetection.from_landmarks(landmarks68_to_5(_UNIT_FACE * 80 + 100))
    result = track_faces([[five], [], [five]], FRAME, max_gap=1)
    assert result.valid.all()
    assert torch.isnan(result.landmarks).all() and torch.isfinite(result.landmarks5).all()
    report = json.loads(result.report_json())
    assert report["num_frames"] == 3 and report["frame_size"] == [240, 320]
    assert report["counts"] == {"ok": 2, "interpolated": 1, "missing": 0, "multiple_faces_resolved": 0, "tiny": 0}
    assert result.status.dtype == torch.int64 and result.landmarks.dtype == torch.float32


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="frame_size"):
        track_faces([], (0, 10))
    with pytest.raises(ValueError, match="max_gap"):
        track_faces([], FRAME, max_gap=-1)
