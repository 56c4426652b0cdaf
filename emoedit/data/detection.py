"""Face detection: find faces and their landmarks in RGB frames (METHOD.md §2, first stage).

Every detector implements :class:`FaceDetector` and returns :class:`FaceDetection` values:
a box, a score, the 5 alignment points and (where the backend has them) the 68 iBUG
landmarks. Coordinates follow the project convention: pixels, x right, y down, the centre
of pixel (row i, column j) at (x=j, y=i).

Backends:

- :class:`DlibFaceDetector` — dlib's HOG frontal detector (or its CNN "mmod" detector) and
  the 68-point shape predictor, with the weight files shipped by the
  ``face-recognition-models`` package. dlib is imported lazily.
- :class:`GivenLandmarksDetector` — known landmarks (e.g. the synthetic world's true
  landmarks) behind the same interface.

The 5 points are derived from the 68 exactly as Deep3DFaceRecon's ``extract_5p``:
left eye = mean(p37, p40), right eye = mean(p43, p46), nose tip = p31, mouth corners
p49, p55 (1-based iBUG numbers); "left" is the point with the smaller x in a frontal image.
"""

from __future__ import annotations

import abc
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor

NUM_LANDMARKS68 = 68
NUM_LANDMARKS5 = 5

# ---------------------------------------------------------------- landmark layouts
# iBUG-68 (0-based) landmark ids used by the 5-point reduction.
NOSE_TIP_ID = 30  # p31
LEFT_EYE_CORNER_IDS = (36, 39)  # p37, p40: outer and inner corner of the eye with smaller x
RIGHT_EYE_CORNER_IDS = (42, 45)  # p43, p46
LEFT_MOUTH_CORNER_ID = 48  # p49
RIGHT_MOUTH_CORNER_ID = 54  # p55
MOUTH_IDS = tuple(range(48, 68))  # 20 mouth landmarks: 12 outer lip (48-59), 8 inner lip (60-67)
# Order of the 5 alignment points (Deep3DFaceRecon).
LANDMARKS5_NAMES = ("left_eye", "right_eye", "nose_tip", "left_mouth_corner", "right_mouth_corner")

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


def landmarks68_to_5(landmarks68: ArrayT) -> ArrayT:
    """Reduce iBUG-68 landmarks to Deep3DFaceRecon's 5 alignment points.

    Args:
        landmarks68: (..., 68, D) numpy array or tensor (D = 2 image points or 3 model points).

    Returns:
        (..., 5, D), same type and dtype, in :data:`LANDMARKS5_NAMES` order: left eye centre
        (mean of p37, p40), right eye centre (mean of p43, p46), nose tip p31, left and right
        mouth corners p49, p55 (1-based ids).
    """
    if landmarks68.ndim < 2 or landmarks68.shape[-2] != NUM_LANDMARKS68:
        raise ValueError(f"landmarks68: expected shape (..., 68, D), got {tuple(landmarks68.shape)}")
    lm = landmarks68
    left_eye = (lm[..., LEFT_EYE_CORNER_IDS[0], :] + lm[..., LEFT_EYE_CORNER_IDS[1], :]) / 2
    right_eye = (lm[..., RIGHT_EYE_CORNER_IDS[0], :] + lm[..., RIGHT_EYE_CORNER_IDS[1], :]) / 2
    points = (
        left_eye,
        right_eye,
        lm[..., NOSE_TIP_ID, :],
        lm[..., LEFT_MOUTH_CORNER_ID, :],
        lm[..., RIGHT_MOUTH_CORNER_ID, :],
    )
    if isinstance(lm, Tensor):
        return torch.stack(points, dim=-2)
    return np.stack(points, axis=-2).astype(lm.dtype, copy=False)


def interocular_distance(landmarks5: np.ndarray) -> float:
    """Distance in pixels between the two eye centres of a (5, 2) point set."""
    return float(np.linalg.norm(np.asarray(landmarks5[1], np.float64) - np.asarray(landmarks5[0], np.float64)))


def read_pts(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 300-W / iBUG ``.pts`` landmark file into (N, 2) float32 0-based pixel coordinates.

    The format is a ``version:`` line, ``n_points: N`` and ``{`` ... ``}`` around one "x y"
    line per point. 300-W coordinates are 1-based (Matlab: the top-left pixel centre is
    (1, 1)); 1 is subtracted so the result follows the project convention (centre (0, 0)).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot read landmark file ({error})") from error
    if "{" not in text or "}" not in text:
        raise ValueError(f"{path}: not a .pts file (missing '{{' ... '}}' block)")
    header, body = text.split("{", 1)
    body = body.split("}", 1)[0]
    try:
        values = np.array(body.split(), dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{path}: non-numeric landmark values ({error})") from error
    if values.size % 2:
        raise ValueError(f"{path}: odd number of coordinates ({values.size})")
    points = values.reshape(-1, 2)
    for line in header.splitlines():
        if line.strip().lower().startswith("n_points"):
            declared = int(line.split(":", 1)[1])
            if declared != len(points):
                raise ValueError(f"{path}: header says {declared} points, found {len(points)}")
    return (points - 1.0).astype(np.float32)


# ---------------------------------------------------------------- detections
def _readonly_points(points: Any, count: int, name: str) -> np.ndarray:
    array = np.array(points.detach().cpu().numpy() if isinstance(points, Tensor) else points, dtype=np.float32)
    if array.shape != (count, 2):
        raise ValueError(f"{name}: expected shape ({count}, 2), got {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class FaceDetection:
    """One detected face in one frame (pixels, x right, y down, pixel centres at integers).

    ``box`` is (x0, y0, x1, y1): the continuous extent of the face box, so a box that covers
    pixel columns c0..c1 has x0 = c0 − 0.5 and x1 = c1 + 0.5. ``landmarks5`` is always
    present ((5, 2) float32, :data:`LANDMARKS5_NAMES` order); ``landmarks68`` is (68, 2)
    float32 iBUG order, or ``None`` when the source has only 5 points. Arrays are read-only.
    """

    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) pixels
    score: float  # detector confidence (backend-specific scale; larger = more confident)
    landmarks5: np.ndarray  # (5, 2) float32 pixels
    landmarks68: np.ndarray | None = None  # (68, 2) float32 pixels, iBUG order

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"FaceDetection.box: expected finite (x0, y0, x1, y1) with x1 ≥ x0, y1 ≥ y0, got {self.box}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "landmarks5", _readonly_points(self.landmarks5, NUM_LANDMARKS5, "landmarks5"))
        if self.landmarks68 is not None:
            object.__setattr__(self, "landmarks68", _readonly_points(self.landmarks68, NUM_LANDMARKS68, "landmarks68"))

    @classmethod
    def from_landmarks(
        cls,
        landmarks: np.ndarray | Tensor,  # (68, 2) or (5, 2) pixels
        *,
        score: float = 1.0,  # confidence to report
        box: tuple[float, float, float, float] | None = None,  # None: derived from the points
    ) -> FaceDetection:
        """A detection from known landmarks; the box defaults to :func:`box_from_landmarks`."""
        points = np.asarray(landmarks.detach().cpu().numpy() if isinstance(landmarks, Tensor) else landmarks, np.float32)
        if points.shape == (NUM_LANDMARKS68, 2):
            five, sixty_eight = landmarks68_to_5(points), points
        elif points.shape == (NUM_LANDMARKS5, 2):
            five, sixty_eight = points, None
        else:
            raise ValueError(f"landmarks: expected shape (68, 2) or (5, 2), got {points.shape}")
        return cls(box=box if box is not None else box_from_landmarks(points), score=score,
                   landmarks5=five, landmarks68=sixty_eight)

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return self.box[3] - self.box[1]

    @property
    def size(self) -> float:
        """Face size in pixels: sqrt(width · height) of the box."""
        return math.sqrt(self.width * self.height)

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y) in pixels."""
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def interocular_distance(self) -> float:
        """Distance between the two eye centres, pixels."""
        return interocular_distance(self.landmarks5)


def box_from_landmarks(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """A face box around known landmarks (pixels).

    68 points: their bounding box (brows to chin, contour to contour), which is close to
    what dlib's detectors return. 5 points: their bounding box grown by 50 % of its size on
    every side, so its size is comparable to a 68-point box.
    """
    points = np.asarray(landmarks, np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    if points.shape[0] == NUM_LANDMARKS5:
        margin = 0.5 * (high - low).max()
        low, high = low - margin, high + margin
    return (float(low[0]), float(low[1]), float(high[0]), float(high[1]))


def as_rgb_uint8(image: np.ndarray | Tensor, name: str = "image") -> np.ndarray:
    """Check and return an (H, W, 3) uint8 RGB image as a C-contiguous numpy array."""
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or tensor, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8 RGB (H, W, 3), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected an RGB image of shape (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------- interface
class FaceDetector(abc.ABC):
    """Finds faces in RGB frames.

    Subclasses implement :meth:`_detect`; :meth:`detect` validates the frame, drops faces
    smaller than ``min_face_size`` or scoring below ``min_score``, and sorts the rest by
    size, largest first. A frame with no face gives an empty list, never an exception.
    """

    def __init__(
        self,
        *,
        min_face_size: float = 0.0,  # smallest kept face, pixels (FaceDetection.size = sqrt(w·h) of the box)
        min_score: float = -math.inf,  # lowest kept detector score
    ) -> None:
        if min_face_size < 0:
            raise ValueError(f"min_face_size must be ≥ 0 pixels, got {min_face_size}")
        self.min_face_size = float(min_face_size)
        self.min_score = float(min_score)

    @abc.abstractmethod
    def _detect(self, image: np.ndarray, frame_index: int | None) -> list[FaceDetection]:
        """Raw detections in a checked (H, W, 3) uint8 RGB frame (no filtering needed)."""

    def detect(
        self,
        image: np.ndarray | Tensor,  # (H, W, 3) uint8 RGB
        *,
        frame_index: int | None = None,  # index of this frame in its clip; only detectors that hold per-frame data use it
    ) -> list[FaceDetection]:
        """Faces in one frame, largest first (empty list if none)."""
        image = as_rgb_uint8(image)
        return self._keep(self._detect(image, frame_index))

    def detect_batch(
        self,
        frames: Sequence[np.ndarray | Tensor] | np.ndarray | Tensor,  # T frames (H, W, 3) uint8, or (T, H, W, 3)
        *,
        start_index: int = 0,  # clip index of frames[0] (for per-frame detectors)
    ) -> list[list[FaceDetection]]:
        """:meth:`detect` on each frame; returns one list of detections per frame."""
        return [self.detect(frame, frame_index=start_index + i) for i, frame in enumerate(frames)]

    def _keep(self, detections: list[FaceDetection]) -> list[FaceDetection]:
        kept = [d for d in detections if d.size >= self.min_face_size and d.score >= self.min_score]
        return sorted(kept, key=lambda d: d.size, reverse=True)


# ---------------------------------------------------------------- dlib backend
def _import_dlib() -> Any:
    try:
        import dlib  # type: ignore[import-not-found]
    except ImportError as error:
        raise ImportError(
            "DlibFaceDetector needs the 'dlib' package: pip install dlib-bin (prebuilt wheels) or pip install dlib"
        ) from error
    return dlib


def _default_weight_path(kind: Literal["predictor68", "cnn"]) -> Path:
    try:
        import face_recognition_models  # type: ignore[import-not-found]
    except ImportError as error:
        raise ImportError(
            "DlibFaceDetector needs dlib's model files from the 'face_recognition_models' package: "
            "pip install face-recognition-models (or pass predictor_path= / cnn_model_path=)"
        ) from error
    if kind == "predictor68":
        return Path(face_recognition_models.pose_predictor_model_location())
    return Path(face_recognition_models.cnn_face_detector_model_location())


_HOG_LOWEST_THRESHOLD = -2.0  # lowest adjust_threshold handed to dlib's HOG detector


@functools.lru_cache(maxsize=8)
def _load_dlib_model(kind: str, path: str) -> Any:
    """Load (once per process) a dlib model: 'hog' (built in), 'cnn' or 'predictor68' from ``path``."""
    dlib = _import_dlib()
    if kind == "hog":
        return dlib.get_frontal_face_detector()
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: dlib model file not found")
    try:
        if kind == "cnn":
            return dlib.cnn_face_detection_model_v1(path)
        return dlib.shape_predictor(path)
    except RuntimeError as error:
        raise ValueError(f"{path}: not a valid dlib {kind} model file ({error})") from error


class DlibFaceDetector(FaceDetector):
    """dlib face detector (HOG or CNN) + 68-point shape predictor.

    Models load lazily on first use (or with :meth:`load`) and are shared across
    instances. Scores: HOG detection confidence (0 is dlib's default threshold; a lower
    ``min_score`` is passed to dlib as its ``adjust_threshold`` so weaker detections come
    back, down to −2), or the CNN's mmod confidence (dlib always applies its own threshold there).
    dlib's landmarks are integer pixel positions.
    """

    def __init__(
        self,
        *,
        detector: Literal["hog", "cnn"] = "hog",  # HOG (fast, frontal) or the CNN mmod detector (slower, more poses)
        upsample: int = 1,  # times the frame is upsampled ×2 before detection (finds faces down to ~40 px at 1, ~80 px at 0)
        min_face_size: float = 0.0,  # smallest kept face, pixels
        min_score: float = 0.0,  # lowest kept score (HOG: passed to dlib as adjust_threshold)
        predictor_path: str | os.PathLike[str] | None = None,  # shape_predictor_68_face_landmarks.dat; None: face_recognition_models'
        cnn_model_path: str | os.PathLike[str] | None = None,  # mmod_human_face_detector.dat; None: face_recognition_models'
        cnn_batch_size: int = 8,  # frames per CNN call in detect_batch
    ) -> None:
        super().__init__(min_face_size=min_face_size, min_score=min_score)
        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if upsample < 0:
            raise ValueError(f"upsample must be ≥ 0, got {upsample}")
        if cnn_batch_size < 1:
            raise ValueError(f"cnn_batch_size must be ≥ 1, got {cnn_batch_size}")
        self.detector = detector
        self.upsample = int(upsample)
        self.predictor_path = None if predictor_path is None else Path(predictor_path)
        self.cnn_model_path = None if cnn_model_path is None else Path(cnn_model_path)
        self.cnn_batch_size = int(cnn_batch_size)

    def load(self) -> tuple[Any, Any]:
        """Load (or fetch from the process cache) the detector and the shape predictor."""
        predictor_path = self.predictor_path or _default_weight_path("predictor68")
        if self.detector == "cnn":
            face_detector = _load_dlib_model("cnn", str(self.cnn_model_path or _default_weight_path("cnn")))
        else:
            face_detector = _load_dlib_model("hog", "")
        return face_detector, _load_dlib_model("predictor68", str(predictor_path))

    def _detect(self, image: np.ndarray, frame_index: int | None) -> list[FaceDetection]:
        face_detector, predictor = self.load()
        if self.detector == "cnn":
            found = [(d.rect, d.confidence) for d in face_detector(image, self.upsample)]
        else:
            threshold = max(min(self.min_score, 0.0), _HOG_LOWEST_THRESHOLD)
            rects, scores, _ = face_detector.run(image, self.upsample, threshold)
            found = list(zip(rects, scores))
        return [self._with_landmarks(image, rect, score, predictor) for rect, score in found]

    def detect_batch(
        self,
        frames: Sequence[np.ndarray | Tensor] | np.ndarray | Tensor,  # T frames (H, W, 3) uint8, or (T, H, W, 3)
        *,
        start_index: int = 0,  # unused by dlib (pixels only)
    ) -> list[list[FaceDetection]]:
        """Per-frame detections; the CNN detector runs ``cnn_batch_size`` same-sized frames per call."""
        if self.detector != "cnn":
            return super().detect_batch(frames, start_index=start_index)
        images = [as_rgb_uint8(frame, f"frames[{i}]") for i, frame in enumerate(frames)]
        face_detector, predictor = self.load()
        results: list[list[FaceDetection]] = []
        for begin in range(0, len(images), self.cnn_batch_size):
            chunk = images[begin : begin + self.cnn_batch_size]
            if len({im.shape for im in chunk}) > 1:
                found_per_frame = [face_detector(im, self.upsample) for im in chunk]
            else:
                found_per_frame = face_detector(chunk, self.upsample, batch_size=len(chunk))
            for image, found in zip(chunk, found_per_frame):
                detections = [self._with_landmarks(image, d.rect, d.confidence, predictor) for d in found]
                results.append(self._keep(detections))
        return results

    @staticmethod
    def _with_landmarks(image: np.ndarray, rect: Any, score: float, predictor: Any) -> FaceDetection:
        shape = predictor(image, rect)
        points = np.array([(shape.part(i).x, shape.part(i).y) for i in range(NUM_LANDMARKS68)], np.float32)
        # dlib rectangles are inclusive pixel ranges: extend by half a pixel to the box extent.
        box = (rect.left() - 0.5, rect.top() - 0.5, rect.right() + 0.5, rect.bottom() + 0.5)
        return FaceDetection(box=box, score=float(score), landmarks5=landmarks68_to_5(points), landmarks68=points)


# ---------------------------------------------------------------- known landmarks
@dataclass(frozen=True, eq=False)
class _FrameFaces:
    points: tuple[np.ndarray, ...] = field(default_factory=tuple)  # each (68, 2) or (5, 2) float32


class GivenLandmarksDetector(FaceDetector):
    """Known landmarks (e.g. the synthetic world's ground truth) behind the detector interface.

    ``landmarks`` holds one entry per clip frame: a (T, 68|5, 2) array or tensor, or a
    sequence of T items that are each ``None`` (no face), (68|5, 2) (one face) or
    (N, 68|5, 2) (N faces). A face whose points contain NaN/inf, or that lies entirely
    outside the frame, is not reported. :meth:`detect` needs ``frame_index`` unless the
    detector holds a single frame; :meth:`detect_batch` maps frames[i] to entry
    ``start_index + i``. Boxes come from :func:`box_from_landmarks`; every score is ``score``.
    """

    def __init__(
        self,
        landmarks: Sequence[np.ndarray | Tensor | None] | np.ndarray | Tensor,  # per frame, see class doc; pixels
        *,
        score: float = 1.0,  # score given to every face
        min_face_size: float = 0.0,  # smallest kept face, pixels
        min_score: float = -math.inf,  # lowest kept score
    ) -> None:
        super().__init__(min_face_size=min_face_size, min_score=min_score)
        self.score = float(score)
        self._frames = tuple(self._frame_faces(entry, i) for i, entry in enumerate(landmarks))

    @staticmethod
    def _frame_faces(entry: np.ndarray | Tensor | None, index: int) -> _FrameFaces:
        if entry is None:
            return _FrameFaces()
        array = np.asarray(entry.detach().cpu().numpy() if isinstance(entry, Tensor) else entry, np.float32)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[1] not in (NUM_LANDMARKS68, NUM_LANDMARKS5) or array.shape[2] != 2:
            raise ValueError(f"landmarks[{index}]: expected (68, 2), (5, 2) or (N, 68|5, 2), got {array.shape}")
        return _FrameFaces(tuple(face.copy() for face in array))

    @property
    def num_frames(self) -> int:
        """Number of frames whose landmarks this detector holds."""
        return len(self._frames)

    def _detect(self, image: np.ndarray, frame_index: int | None) -> list[FaceDetection]:
        if frame_index is None:
            if self.num_frames != 1:
                raise ValueError(
                    f"GivenLandmarksDetector holds {self.num_frames} frames: pass frame_index to detect()"
                )
            frame_index = 0
        if not 0 <= frame_index < self.num_frames:
            raise IndexError(f"frame_index {frame_index} out of range: detector holds {self.num_frames} frames")
        height, width = image.shape[:2]
        detections = []
        for points in self._frames[frame_index].points:
            if not np.isfinite(points).all():
                continue
            x0, y0, x1, y1 = box_from_landmarks(points)
            if x1 < -0.5 or y1 < -0.5 or x0 > width - 0.5 or y0 > height - 0.5:
                continue  # entirely outside the frame
            detections.append(FaceDetection.from_landmarks(points, score=self.score))
        return detections
