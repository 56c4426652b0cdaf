"""Face detection: 5-point reduction, detections, known-landmark detector, dlib on real photos."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emoedit.data import detection
from emoedit.data.detection import (
    DlibFaceDetector,
    FaceDetection,
    GivenLandmarksDetector,
    box_from_landmarks,
    interocular_distance,
    landmarks68_to_5,
    read_pts,
)


def _synthetic_landmarks(center: tuple[float, float] = (100.0, 120.0), size: float = 80.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.uniform(-0.5, 0.5, size=(68, 2)) * size
    return (points + np.asarray(center)).astype(np.float32)


# ---------------------------------------------------------------- 5-point reduction
def test_landmarks68_to_5_matches_deep3d_extract_5p() -> None:
    lm = np.arange(68 * 2, dtype=np.float32).reshape(68, 2)
    five = landmarks68_to_5(lm)
    one_based = lambda i: lm[i - 1]  # noqa: E731
    expected = np.stack([
        (one_based(37) + one_based(40)) / 2,
        (one_based(43) + one_based(46)) / 2,
        one_based(31),
        one_based(49),
        one_based(55),
    ])
    np.testing.assert_array_equal(five, expected)
    batched = torch.from_numpy(np.stack([lm, lm + 1]))
    five_t = landmarks68_to_5(batched)
    assert five_t.shape == (2, 5, 2)
    np.testing.assert_allclose(five_t[1].numpy(), expected + 1)
    lm3 = np.concatenate([lm, lm[:, :1]], axis=1)
    assert landmarks68_to_5(lm3).shape == (5, 3)
    with pytest.raises(ValueError, match="68"):
        landmarks68_to_5(np.zeros((67, 2)))


# ---------------------------------------------------------------- detections
def test_face_detection_fields_and_validation() -> None:
    lm = _synthetic_landmarks()
    det = FaceDetection.from_landmarks(lm, score=0.7)
    assert det.landmarks68 is not None and det.landmarks68.dtype == np.float32
    np.testing.assert_allclose(det.landmarks5, landmarks68_to_5(lm))
    assert det.box == pytest.approx(box_from_landmarks(lm))
    assert det.size == pytest.approx(np.sqrt(det.width * det.height))
    assert det.interocular_distance == pytest.approx(interocular_distance(det.landmarks5))
    with pytest.raises(ValueError):
        det.landmarks5[0, 0] = 1.0  # read-only
    five_only = FaceDetection.from_landmarks(landmarks68_to_5(lm))
    assert five_only.landmarks68 is None and five_only.size > 0
    with pytest.raises(ValueError, match="landmarks5"):
        FaceDetection(box=(0, 0, 1, 1), score=1.0, landmarks5=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="box"):
        FaceDetection(box=(5, 0, 1, 1), score=1.0, landmarks5=np.zeros((5, 2)))


def test_given_landmarks_detector_per_frame() -> None:
    a, b = _synthetic_landmarks((60, 60), 80), _synthetic_landmarks((200, 150), 30, seed=1)
    image = np.zeros((240, 320, 3), np.uint8)
    frames = [
        a,  # one face
        np.stack([b, a]),  # two faces
        None,  # no face
        np.full((68, 2), np.nan, np.float32),  # invisible face
        a + 1000.0,  # entirely outside the frame
    ]
    detector = GivenLandmarksDetector(frames, min_face_size=40.0)
    assert detector.num_frames == 5
    out = detector.detect_batch([image] * 5)
    assert [len(d) for d in out] == [1, 1, 0, 0, 0]  # b is smaller than min_face_size
    np.testing.assert_allclose(out[1][0].landmarks68, a)
    everything = GivenLandmarksDetector(frames).detect(image, frame_index=1)
    assert len(everything) == 2 and everything[0].size > everything[1].size  # largest first
    with pytest.raises(ValueError, match="frame_index"):
        detector.detect(image)
    with pytest.raises(IndexError):
        detector.detect(image, frame_index=5)
    tensor_detector = GivenLandmarksDetector(torch.from_numpy(a)[None])
    assert len(tensor_detector.detect(image)) == 1
    with pytest.raises(ValueError, match="landmarks\\[0\\]"):
        GivenLandmarksDetector([np.zeros((10, 2))])
    with pytest.raises(TypeError, match="uint8"):
        tensor_detector.detect(image.astype(np.float32))


def test_read_pts(fixtures_dir: Path) -> None:
    points = read_pts(fixtures_dir / "faces" / "image_0010.pts")
    assert points.shape == (68, 2) and points.dtype == np.float32 and np.isfinite(points).all()


def test_read_pts_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pts"):
        read_pts(tmp_path / "nope.pts")
    bad = tmp_path / "bad.pts"
    bad.write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(ValueError, match="3 points"):
        read_pts(bad)


# ---------------------------------------------------------------- dlib
def test_dlib_missing_package_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ImportError, match="dlib-bin"):
        detection._import_dlib()
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(ImportError, match="face-recognition-models"):
        detection._default_weight_path("predictor68")


def test_dlib_missing_weight_file(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    detector = DlibFaceDetector(predictor_path=tmp_path / "missing.dat")
    with pytest.raises(FileNotFoundError, match="missing.dat"):
        detector.detect(np.zeros((64, 64, 3), np.uint8))


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def dlib_detector() -> DlibFaceDetector:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    return DlibFaceDetector(upsample=1)


def test_dlib_on_300w_photo(fixtures_dir: Path, dlib_detector: DlibFaceDetector) -> None:
    image = _load_rgb(fixtures_dir / "faces" / "image_0010.png")
    truth = read_pts(fixtures_dir / "faces" / "image_0010.pts")
    faces = dlib_detector.detect(image)
    assert len(faces) == 1
    face = faces[0]
    assert face.landmarks68 is not None and face.score > 0
    iod = interocular_distance(landmarks68_to_5(truth))
    error = np.linalg.norm(face.landmarks68 - truth, axis=1).mean() / iod
    assert error < 0.1, f"mean landmark error {error:.3f} IOD"
    # The box covers the landmarks' centre.
    cx, cy = truth.mean(axis=0)
    assert face.box[0] < cx < face.box[2] and face.box[1] < cy < face.box[3]


def test_dlib_five_points_agree_with_deep3d_detections(fixtures_dir: Path, dlib_detector: DlibFaceDetector) -> None:
    folder = fixtures_dir / "faces" / "deep3d_examples"
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    assert images, f"no images in {folder}"
    errors = {}
    for path in images:
        reference = np.loadtxt(folder / "detections" / f"{path.stem}.txt", dtype=np.float32).reshape(5, 2)
        faces = dlib_detector.detect(_load_rgb(path))
        if not faces:
            errors[path.stem] = float("inf")
            continue
        errors[path.stem] = float(np.linalg.norm(faces[0].landmarks5 - reference, axis=1).mean() / interocular_distance(reference))
    agreeing = sum(e < 0.15 for e in errors.values())
    print(f"dlib 5 points vs Deep3D detections: {agreeing}/{len(errors)} within 0.15 IOD; errors {errors}")
    assert agreeing >= 0.8 * len(errors)


def test_dlib_blank_and_tiny_images_give_no_detection(dlib_detector: DlibFaceDetector) -> None:
    assert dlib_detector.detect(np.zeros((128, 128, 3), np.uint8)) == []
    assert dlib_detector.detect(np.full((1, 1, 3), 255, np.uint8)) == []
    assert dlib_detector.detect_batch(np.zeros((2, 64, 64, 3), np.uint8)) == [[], []]


def test_dlib_min_face_size(fixtures_dir: Path, dlib_detector: DlibFaceDetector) -> None:
    image = _load_rgb(fixtures_dir / "faces" / "image_0010.png")
    face = dlib_detector.detect(image)[0]
    strict = DlibFaceDetector(upsample=1, min_face_size=face.size + 1)
    assert strict.detect(image) == []


@pytest.mark.slow
def test_dlib_cnn_detector(fixtures_dir: Path) -> None:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    image = _load_rgb(fixtures_dir / "faces" / "happy.png")
    detector = DlibFaceDetector(detector="cnn", upsample=0)
    faces = detector.detect(image)
    assert len(faces) == 1 and faces[0].landmarks68 is not None
    batch = detector.detect_batch([image, image])
    assert [len(f) for f in batch] == [1, 1]
    np.testing.assert_allclose(batch[0][0].landmarks68, faces[0].landmarks68)
