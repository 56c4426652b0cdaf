"""Face and mouth alignment: landmarks → similarity transform → crop, and back (METHOD.md §3.1, §3.7).

Face (Deep3DFaceRecon ``align_img``): the 5 alignment points are fitted to a 3D template
of 5 points with an affine camera (:func:`solve_pos`, Deep3D's ``POS``): a least-squares
``p ≈ M·X + t``, scale ``s`` = mean of the two row norms of ``M``. The frame is then scaled
by ``s' = rescale_factor / s`` (no rotation) and cropped so that the template origin's image
position ``t`` lands at the crop's camera centre ``(W/2, H − 1 − H/2)`` = (112, 111) for 224²,
i.e. exactly where :class:`~emoedit.face_model.camera.PerspectiveCamera` projects the
model-space origin. An exactly frontal, orthographic view of the template is therefore
mapped onto :meth:`AlignmentTemplate.target_points`.

Deep3D flips landmark y (``y_up = H − 1 − y``) before ``POS``; here the fit runs on y-down
points against the template with y negated, which gives the same scale and the same
(un-flipped) translation. Deep3D resizes and crops with integer sizes and offsets (PIL);
here the warp is the exact continuous transform of its landmark formula, so image and
landmarks agree to sub-pixel accuracy (Deep3D's own crop deviates from its landmarks by
up to ~1 px). Warps use ``grid_sample`` (bilinear, ``align_corners=True``, zeros outside
the frame); when the warp shrinks the source, the source is first resized with an
antialiasing filter (``antialias=True``), as PIL's resize in Deep3D does.

Mouth (teeth completion): a similarity transform with rotation fitted (least squares) to
the 20 mouth landmarks (iBUG 49-68) against a :class:`MouthTemplate`, so the mouth-corner
line is horizontal in the crop.

Both crops share :class:`CropTransform`, a batched 2-D similarity ``crop = s·R(θ)·frame + o``.
Crops are float in [0, 1], channels first.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emoedit.data.detection import (
    LEFT_MOUTH_CORNER_ID,
    MOUTH_IDS,
    NUM_LANDMARKS5,
    NUM_LANDMARKS68,
    RIGHT_MOUTH_CORNER_ID,
    landmarks68_to_5,
)
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

DEEP3D_CROP_SIZE = 224  # Deep3DFaceRecon's crop size, pixels
DEEP3D_RESCALE_FACTOR = 102.0  # Deep3DFaceRecon's face scale in the 224² crop, crop pixels per model unit (dm)
NUM_MOUTH_LANDMARKS = len(MOUTH_IDS)  # 20
# Index of the mouth corners inside the 20 mouth landmarks.
_MOUTH_LEFT_CORNER = MOUTH_IDS.index(LEFT_MOUTH_CORNER_ID)
_MOUTH_RIGHT_CORNER = MOUTH_IDS.index(RIGHT_MOUTH_CORNER_ID)
# Crop-size ratio above which a batch is antialiased frame by frame instead of with one shared filter.
_SHARED_FILTER_MAX_RATIO = 1.25


def _size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name}: expected a positive int or an (H, W) pair, got {size!r}")
    return pair  # type: ignore[return-value]


def _as_float_tensor(value: Tensor | np.ndarray | Sequence[Any], name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value if value.is_floating_point() else value.float()
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


def default_rescale_factor(crop_size: int) -> float:
    """Deep3D's 102 crop pixels per model unit, scaled to a ``crop_size`` crop (``102 · crop_size / 224``)."""
    return DEEP3D_RESCALE_FACTOR * crop_size / DEEP3D_CROP_SIZE


def crop_camera_center(crop_size: tuple[int, int]) -> tuple[float, float]:
    """Pixel (x, y) where the face crop puts the template origin: (W/2, H − 1 − H/2)."""
    height, width = crop_size
    return (width / 2.0, height - 1.0 - height / 2.0)


# ---------------------------------------------------------------- transform
def _apply_affine(matrix: Tensor, points: Tensor) -> Tensor:
    """``points @ A[:, :2]ᵀ + A[:, 2]`` with broadcasting: matrix (..., 2, 3), points (..., N, 2)."""
    matrix = matrix.to(points)
    return points @ matrix[..., :2].transpose(-1, -2) + matrix[..., None, :, 2]


@dataclass(frozen=True, eq=False)
class CropTransform:
    """A (batched) 2-D similarity from frame pixels to crop pixels.

    ``crop = scale · R(rotation) · frame + offset`` with ``R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]``
    acting on column vectors (x right, y down, pixel centres at integers in both images).
    Face crops have ``rotation = 0``. Fields are tensors with a common batch shape ``(*B)``
    (``()`` for one face): ``scale`` (*B) crop pixels per frame pixel, ``rotation`` (*B)
    radians, ``offset`` (*B, 2) crop pixels; ``crop_size`` and ``frame_size`` are (H, W).
    """

    scale: Tensor  # (*B,) crop pixels per frame pixel, > 0
    rotation: Tensor  # (*B,) radians
    offset: Tensor  # (*B, 2) crop pixels
    crop_size: tuple[int, int]  # (H, W) of the crop, pixels
    frame_size: tuple[int, int]  # (H, W) of the frame, pixels

    TENSOR_FIELDS = 8  # as_tensor() layout: scale, rotation, offset x, offset y, crop H, crop W, frame H, frame W

    def __post_init__(self) -> None:
        scale = _as_float_tensor(self.scale, "scale")
        rotation = _as_float_tensor(self.rotation, "rotation").to(scale)
        offset = _as_float_tensor(self.offset, "offset").to(scale)
        if rotation.shape != scale.shape or offset.shape != (*scale.shape, 2):
            raise ValueError(
                f"CropTransform: scale {tuple(scale.shape)}, rotation {tuple(rotation.shape)} and offset "
                f"{tuple(offset.shape)} must have shapes (*B,), (*B,), (*B, 2)"
            )
        assert_finite(scale, "CropTransform.scale")
        assert_finite(rotation, "CropTransform.rotation")
        assert_finite(offset, "CropTransform.offset")
        if scale.numel() and float(scale.min()) <= 0:
            raise ValueError(f"CropTransform.scale must be > 0, got min {float(scale.min())}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "rotation", rotation)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "crop_size", _size_pair(self.crop_size, "crop_size"))
        object.__setattr__(self, "frame_size", _size_pair(self.frame_size, "frame_size"))

    # ---- structure
    @property
    def batch_shape(self) -> torch.Size:
        """Batch shape ``(*B)``; ``()`` for a single transform."""
        return self.scale.shape

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("len() of an unbatched CropTransform")
        return int(self.batch_shape[0])

    def __getitem__(self, index: Any) -> CropTransform:
        """Index the batch (like a tensor)."""
        return CropTransform(self.scale[index], self.rotation[index], self.offset[index], self.crop_size, self.frame_size)

    @staticmethod
    def stack(transforms: Sequence[CropTransform]) -> CropTransform:
        """Stack transforms with equal crop and frame sizes along a new batch dim 0."""
        if not transforms:
            raise ValueError("CropTransform.stack: no transforms")
        first = transforms[0]
        for i, t in enumerate(transforms):
            if t.crop_size != first.crop_size or t.frame_size != first.frame_size:
                raise ValueError(f"CropTransform.stack: transform {i} has different crop/frame sizes")
        return CropTransform(
            torch.stack([t.scale for t in transforms]),
            torch.stack([t.rotation for t in transforms]),
            torch.stack([t.offset for t in transforms]),
            first.crop_size,
            first.frame_size,
        )

    def to(self, *args: Any, **kwargs: Any) -> CropTransform:
        """Move/cast the tensors (``Tensor.to`` arguments)."""
        return CropTransform(
            self.scale.to(*args, **kwargs), self.rotation.to(*args, **kwargs), self.offset.to(*args, **kwargs),
            self.crop_size, self.frame_size,
        )

    # ---- matrices and points
    def to_affine(self) -> Tensor:
        """(*B, 2, 3) matrix mapping frame pixels to crop pixels (column vectors, ``[x, y, 1]``)."""
        cos, sin = torch.cos(self.rotation) * self.scale, torch.sin(self.rotation) * self.scale
        row0 = torch.stack([cos, -sin, self.offset[..., 0]], dim=-1)
        row1 = torch.stack([sin, cos, self.offset[..., 1]], dim=-1)
        return torch.stack([row0, row1], dim=-2)

    def inverse_affine(self) -> Tensor:
        """(*B, 2, 3) matrix mapping crop pixels back to frame pixels."""
        cos, sin = torch.cos(self.rotation) / self.scale, torch.sin(self.rotation) / self.scale
        ox, oy = self.offset[..., 0], self.offset[..., 1]
        row0 = torch.stack([cos, sin, -(cos * ox + sin * oy)], dim=-1)
        row1 = torch.stack([-sin, cos, sin * ox - cos * oy], dim=-1)
        return torch.stack([row0, row1], dim=-2)

    def frame_to_crop(self, points: Tensor) -> Tensor:
        """Frame pixel points (*B, N, 2) (or broadcastable) → crop pixel points, same shape."""
        return _apply_affine(self.to_affine(), _as_float_tensor(points, "points"))

    def crop_to_frame(self, points: Tensor) -> Tensor:
        """Crop pixel points (*B, N, 2) (or broadcastable) → frame pixel points, same shape."""
        return _apply_affine(self.inverse_affine(), _as_float_tensor(points, "points"))

    @classmethod
    def from_affine(
        cls,
        matrix: Tensor,  # (*B, 2, 3) frame → crop similarity [[a, −b, tx], [b, a, ty]]
        *,
        crop_size: int | tuple[int, int],  # (H, W) of the crop
        frame_size: tuple[int, int],  # (H, W) of the frame
        atol: float = 1e-4,  # tolerance of the similarity check, relative to the scale
    ) -> CropTransform:
        """Build from a 2×3 matrix, which must be a similarity (no shear, no reflection)."""
        matrix = _as_float_tensor(matrix, "matrix")
        if matrix.shape[-2:] != (2, 3):
            raise ValueError(f"matrix: expected shape (*B, 2, 3), got {tuple(matrix.shape)}")
        a, b = (matrix[..., 0, 0] + matrix[..., 1, 1]) / 2, (matrix[..., 1, 0] - matrix[..., 0, 1]) / 2
        scale = torch.sqrt(a * a + b * b)
        residual = (matrix[..., 0, 0] - matrix[..., 1, 1]).abs() + (matrix[..., 1, 0] + matrix[..., 0, 1]).abs()
        if residual.numel() and bool((residual > atol * scale.clamp(min=1e-12)).any()):
            raise ValueError("matrix is not a similarity transform (shear or reflection)")
        return cls(scale, torch.atan2(b, a), matrix[..., 2], crop_size, frame_size)

    # ---- serialisation
    def as_tensor(self) -> Tensor:
        """(*B, 8) float: scale, rotation, offset x, offset y, crop H, crop W, frame H, frame W (for caches)."""
        sizes = torch.tensor([*self.crop_size, *self.frame_size], dtype=self.scale.dtype, device=self.scale.device)
        sizes = sizes.expand(*self.batch_shape, 4)
        return torch.cat([self.scale[..., None], self.rotation[..., None], self.offset, sizes], dim=-1)

    @classmethod
    def from_tensor(cls, tensor: Tensor) -> CropTransform:
        """Inverse of :meth:`as_tensor`; all rows must carry the same crop and frame sizes."""
        tensor = _as_float_tensor(tensor, "tensor")
        if tensor.ndim < 1 or tensor.shape[-1] != cls.TENSOR_FIELDS:
            raise ValueError(f"CropTransform.from_tensor: expected shape (*B, {cls.TENSOR_FIELDS}), got {tuple(tensor.shape)}")
        sizes = tensor[..., 4:].reshape(-1, 4)
        if sizes.numel() == 0:
            raise ValueError("CropTransform.from_tensor: empty tensor")
        if not bool((sizes == sizes[:1]).all()):
            raise ValueError("CropTransform.from_tensor: rows carry different crop/frame sizes")
        crop_h, crop_w, frame_h, frame_w = (int(round(float(v))) for v in sizes[0])
        return cls(tensor[..., 0], tensor[..., 1], tensor[..., 2:4], (crop_h, crop_w), (frame_h, frame_w))


# ---------------------------------------------------------------- templates
@dataclass(frozen=True, eq=False)
class AlignmentTemplate:
    """The 5-point 3D template faces are aligned to.

    ``points5`` is (5, 3) float32 in face-model space (decimetres; x right, y up, z toward
    the viewer) in :data:`~emoedit.data.detection.LANDMARKS5_NAMES` order: left eye centre
    (mean of iBUG p37, p40), right eye centre (p43, p46), nose tip (p31), mouth corners
    (p49, p55), 1-based ids.
    """

    points5: Tensor  # (5, 3) float32, decimetres
    name: str = "custom"  # where the template came from

    def __post_init__(self) -> None:
        points = _as_float_tensor(self.points5, "points5").detach().to("cpu", torch.float32)
        assert_shape(points, (NUM_LANDMARKS5, 3), "AlignmentTemplate.points5")
        assert_finite(points, "AlignmentTemplate.points5")
        object.__setattr__(self, "points5", points)

    @classmethod
    def from_landmarks68(cls, landmarks3d: Tensor | np.ndarray, *, name: str = "landmarks68") -> AlignmentTemplate:
        """From 68 iBUG 3D landmarks (68, 3) in model space, with Deep3D's 5-point reduction."""
        points = _as_float_tensor(landmarks3d, "landmarks3d").detach().cpu()
        assert_shape(points, (NUM_LANDMARKS68, 3), "landmarks3d")
        return cls(landmarks68_to_5(points.to(torch.float64)).float(), name=name)

    @classmethod
    def from_deep3d_mat(cls, path: str | os.PathLike[str]) -> AlignmentTemplate:
        """Deep3DFaceRecon's template: ``similarity_Lm3D_all.mat`` ('lm', 68×3 standard landmarks)."""
        from scipy.io import loadmat

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: Deep3D template file not found (similarity_Lm3D_all.mat)")
        try:
            contents = loadmat(str(path))
        except Exception as error:  # scipy raises several types for corrupt files
            raise ValueError(f"{path}: not a readable .mat file ({error})") from error
        if "lm" not in contents:
            keys = sorted(k for k in contents if not k.startswith("__"))
            raise ValueError(f"{path}: expected key 'lm' (68×3 landmarks), found keys {keys}")
        landmarks = np.asarray(contents["lm"], dtype=np.float64)
        if landmarks.shape != (NUM_LANDMARKS68, 3):
            raise ValueError(f"{path}: 'lm' must be 68×3, got {landmarks.shape}")
        return cls.from_landmarks68(landmarks, name=f"deep3d:{path.name}")

    @classmethod
    def from_face_model(cls, model: Any) -> AlignmentTemplate:
        """The mean face's own landmarks: ``model.mean_shape[model.landmark_ids]`` (any MorphableModel).

        This is the project default: it needs no BFM-licensed file.
        """
        landmarks = model.mean_shape[model.landmark_ids].detach().cpu()
        return cls.from_landmarks68(landmarks, name=f"face_model:{getattr(model, 'name', 'custom')}")

    def target_points(self, *, crop_size: int = DEEP3D_CROP_SIZE, rescale_factor: float | None = None) -> Tensor:
        """(5, 2) crop pixels where an exactly frontal orthographic view of the template lands.

        ``x = W/2 + r·X``, ``y = (H − 1 − H/2) − r·Y`` with ``r = rescale_factor``.
        """
        rescale = default_rescale_factor(crop_size) if rescale_factor is None else float(rescale_factor)
        cx, cy = crop_camera_center((crop_size, crop_size))
        return torch.stack([cx + rescale * self.points5[:, 0], cy - rescale * self.points5[:, 1]], dim=-1)


# Hand-made mean mouth (iBUG 49-68): x right, y down, mouth corners at (∓0.5, 0), closed lips.
_DEFAULT_MOUTH_POINTS = (
    (-0.50, 0.00), (-0.32, -0.10), (-0.13, -0.17), (0.00, -0.14), (0.13, -0.17), (0.32, -0.10),  # outer upper 49-54
    (0.50, 0.00), (0.33, 0.14), (0.16, 0.21), (0.00, 0.22), (-0.16, 0.21), (-0.33, 0.14),  # outer lower 55-60
    (-0.42, 0.00), (-0.17, -0.02), (0.00, -0.02), (0.17, -0.02),  # inner upper 61-64
    (0.42, 0.00), (0.17, 0.02), (0.00, 0.02), (-0.17, 0.02),  # inner lower 65-68
)


def _normalise_mouth(points: Tensor) -> Tensor:
    """(20, 2) y-down mouth points → centroid 0, corner line horizontal (left corner at −x), corner distance 1."""
    points = points.to(torch.float64)
    corners = points[_MOUTH_RIGHT_CORNER] - points[_MOUTH_LEFT_CORNER]
    width = float(torch.linalg.norm(corners))
    if not width > 0:
        raise ValueError("mouth landmarks: the two mouth corners coincide")
    angle = math.atan2(float(corners[1]), float(corners[0]))
    cos, sin = math.cos(-angle), math.sin(-angle)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    centred = points - points.mean(dim=0)
    return (centred @ rotation.T / width).float()


@dataclass(frozen=True, eq=False)
class MouthTemplate:
    """The 20 mouth landmarks (iBUG 49-68) in normalised units, the target of mouth alignment.

    ``points`` (20, 2) float32: x right, y down, centroid at 0, mouth-corner line
    horizontal with the corners 1 unit apart (left corner at negative x).
    """

    points: Tensor  # (20, 2) float32, normalised units
    name: str = "custom"

    def __post_init__(self) -> None:
        points = _as_float_tensor(self.points, "points").detach().to("cpu", torch.float32)
        assert_shape(points, (NUM_MOUTH_LANDMARKS, 2), "MouthTemplate.points")
        assert_finite(points, "MouthTemplate.points")
        object.__setattr__(self, "points", points)

    @classmethod
    def default(cls) -> MouthTemplate:
        """A hand-made closed mean mouth (needs no data file)."""
        return cls(_normalise_mouth(torch.tensor(_DEFAULT_MOUTH_POINTS)), name="default")

    @classmethod
    def from_landmarks68(cls, landmarks: Tensor | np.ndarray, *, name: str = "landmarks68") -> MouthTemplate:
        """From 68 landmarks: (68, 2) image points (y down) or (68, 3) model points (y up, orthographic view)."""
        points = _as_float_tensor(landmarks, "landmarks").detach().cpu()
        if points.shape == (NUM_LANDMARKS68, 3):
            points = points[:, :2] * torch.tensor([1.0, -1.0], dtype=points.dtype)
        assert_shape(points, (NUM_LANDMARKS68, 2), "landmarks")
        return cls(_normalise_mouth(points[list(MOUTH_IDS)]), name=name)

    @classmethod
    def from_face_model(cls, model: Any) -> MouthTemplate:
        """The mean face's mouth landmarks, seen from the front (any MorphableModel)."""
        landmarks = model.mean_shape[model.landmark_ids].detach().cpu()
        return cls.from_landmarks68(landmarks, name=f"face_model:{getattr(model, 'name', 'custom')}")


# ---------------------------------------------------------------- fitting
def solve_pos(points5: Tensor, template_points: Tensor) -> tuple[Tensor, Tensor]:
    """Deep3D's ``POS``: fit an affine camera ``p ≈ M·X + t`` to 5 image points.

    Args:
        points5: (B, 5, 2) image points, pixels, y down.
        template_points: (5, 3) model points (y up).

    Returns:
        ``(translation, scale)``: (B, 2) image position (x, y down) of the model origin,
        pixels; (B,) mean of the two row norms of ``M``, pixels per model unit. Computed in
        float64, returned in ``points5``'s dtype.
    """
    dims = assert_shape(points5, (None, "N", 2), "points5")
    assert_shape(template_points, ("N", 3), "template_points", dims)
    if dims["N"] < 4:
        raise ValueError(f"solve_pos needs ≥ 4 points, got {dims['N']}")
    model = template_points.to(device=points5.device, dtype=torch.float64) * torch.tensor(
        [1.0, -1.0, 1.0], dtype=torch.float64, device=points5.device
    )  # y down, so the fit runs on un-flipped image points
    design = torch.cat([model, torch.ones_like(model[:, :1])], dim=1)  # (N, 4)
    coefficients = torch.linalg.pinv(design) @ points5.to(torch.float64)  # (B, 4, 2): column k = row k of [M | t]
    scale = (torch.linalg.norm(coefficients[:, :3, 0], dim=-1) + torch.linalg.norm(coefficients[:, :3, 1], dim=-1)) / 2
    return coefficients[:, 3, :].to(points5.dtype), scale.to(points5.dtype)


def _landmarks_batch(landmarks: Tensor | np.ndarray, counts: tuple[int, ...], name: str) -> Tensor:
    points = _as_float_tensor(landmarks, name)
    if points.ndim != 3 or points.shape[1] not in counts or points.shape[2] != 2:
        raise ValueError(f"{name}: expected shape (B, {' or '.join(map(str, counts))}, 2), got {tuple(points.shape)}")
    if not bool(torch.isfinite(points).all()):
        bad = (~torch.isfinite(points)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{name}: NaN/inf landmarks in batch items {bad} (drop frames without a face first)")
    return points


def face_crop_transform(
    landmarks: Tensor | np.ndarray,  # (B, 5, 2) or (B, 68, 2) frame pixels, y down
    template: AlignmentTemplate,  # 5-point 3D template
    *,
    frame_size: tuple[int, int],  # (H, W) of the frames, pixels
    crop_size: int = DEEP3D_CROP_SIZE,  # side of the square crop, pixels
    rescale_factor: float | None = None,  # crop pixels per model unit; None: 102 · crop_size / 224
) -> CropTransform:
    """Deep3D's ``align_img`` transform (no rotation) for a batch of faces; see the module doc."""
    points = _landmarks_batch(landmarks, (NUM_LANDMARKS5, NUM_LANDMARKS68), "landmarks")
    if points.shape[1] == NUM_LANDMARKS68:
        points = landmarks68_to_5(points)
    rescale = default_rescale_factor(crop_size) if rescale_factor is None else float(rescale_factor)
    translation, fitted_scale = solve_pos(points.to(torch.float64), template.points5)
    if not bool((fitted_scale > 0).all()):
        raise ValueError("face_crop_transform: degenerate landmarks (zero fitted scale)")
    scale = rescale / fitted_scale
    center = torch.tensor(crop_camera_center((crop_size, crop_size)), dtype=torch.float64, device=points.device)
    offset = center - scale[:, None] * translation
    return CropTransform(
        scale.float(), torch.zeros_like(scale, dtype=torch.float32), offset.float(), (crop_size, crop_size), frame_size
    )


def mouth_crop_transform(
    landmarks68: Tensor | np.ndarray,  # (B, 68, 2) frame pixels, y down
    template: MouthTemplate | None = None,  # None: MouthTemplate.default()
    *,
    frame_size: tuple[int, int],  # (H, W) of the frames, pixels
    crop_size: int = 128,  # side of the square mouth crop, pixels
    mouth_width: float = 0.5,  # template corner-to-corner distance as a fraction of crop_size
) -> CropTransform:
    """Least-squares similarity (scale, rotation, translation) taking the 20 mouth landmarks
    onto ``centre + mouth_width · crop_size · template`` (centre = ((W−1)/2, (H−1)/2))."""
    points = _landmarks_batch(landmarks68, (NUM_LANDMARKS68,), "landmarks68")[:, list(MOUTH_IDS)].to(torch.float64)
    template = MouthTemplate.default() if template is None else template
    if not 0 < mouth_width <= 1:
        raise ValueError(f"mouth_width must lie in (0, 1], got {mouth_width}")
    centre = (crop_size - 1) / 2.0
    target = centre + mouth_width * crop_size * template.points.to(device=points.device, dtype=torch.float64)
    source = torch.complex(points[..., 0], points[..., 1])  # (B, 20)
    goal = torch.complex(target[:, 0], target[:, 1])[None]  # (1, 20)
    source_mean, goal_mean = source.mean(dim=1, keepdim=True), goal.mean(dim=1, keepdim=True)
    centred = source - source_mean
    spread = (centred.abs() ** 2).sum(dim=1)
    if not bool((spread > 0).all()):
        raise ValueError("mouth_crop_transform: degenerate mouth landmarks (all points equal)")
    factor = (centred.conj() * (goal - goal_mean)).sum(dim=1) / spread  # s·e^{iθ}
    shift = goal_mean[:, 0] - factor * source_mean[:, 0]
    return CropTransform(
        factor.abs().float(),
        torch.angle(factor).float(),
        torch.stack([shift.real, shift.imag], dim=-1).float(),
        (crop_size, crop_size),
        frame_size,
    )


# ---------------------------------------------------------------- warping
def _image_batch(images: Tensor | np.ndarray, name: str) -> Tensor:
    """(B, H, W, 3) uint8 (array or tensor) or (B, 3, H, W) float [0, 1] tensor → (B, 3, H, W) float."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"{name}: numpy images must be uint8 (B, H, W, 3), got {images.dtype}")
        if not (images.flags.writeable and images.flags.c_contiguous):
            images = np.array(images, order="C")  # torch needs a writable, contiguous buffer
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a tensor or numpy array, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        assert_shape(images, (None, None, None, 3), name)
        return images.permute(0, 3, 1, 2).float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected uint8 (B, H, W, 3) or float (B, 3, H, W), got {images.dtype}")
    assert_shape(images, (None, 3, None, None), name)
    assert_range(images, 0.0, 1.0, name)
    return images


def _sample(
    source: Tensor,  # (B, C, Hs, Ws) float
    points: Tensor,  # (B, Ho, Wo, 2) source pixel coordinates (x, y)
    shrink: Tensor,  # (B,) output pixels per source pixel; < 1 means the source is minified
    antialias: bool,  # prefilter the source where it is minified
) -> Tensor:
    """Bilinear samples of ``source`` at ``points`` (zeros outside) → (B, C, Ho, Wo)."""
    batch = source.shape[0]
    if antialias:
        factors = shrink.detach().clamp(max=1.0)
        low, high = float(factors.min()), float(factors.max())
        if low < 1.0:
            if high / low <= _SHARED_FILTER_MAX_RATIO:
                return _sample_resized(source, points, high)
            return torch.cat([_sample_resized(source[i : i + 1], points[i : i + 1], float(factors[i])) for i in range(batch)])
    return _grid_sample_pixels(source, points)


def _sample_resized(source: Tensor, points: Tensor, factor: float) -> Tensor:
    """Resize ``source`` by ``factor`` (≤ 1) with an antialiasing filter, then sample at ``points``."""
    height, width = source.shape[-2:]
    if factor >= 1.0:
        return _grid_sample_pixels(source, points)
    out_h, out_w = max(1, round(height * factor)), max(1, round(width * factor))
    resized = F.interpolate(source, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)
    # interpolate(align_corners=False): source pixel p lands at (p + 0.5) · out/in − 0.5.
    ratio = torch.tensor([out_w / width, out_h / height], dtype=points.dtype, device=points.device)
    return _grid_sample_pixels(resized, (points + 0.5) * ratio - 0.5)


def _grid_sample_pixels(source: Tensor, points: Tensor) -> Tensor:
    height, width = source.shape[-2:]
    size = torch.tensor([max(width - 1, 1), max(height - 1, 1)], dtype=points.dtype, device=points.device)
    grid = (2.0 * points / size - 1.0).to(source.dtype)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _pixel_grid(height: int, width: int, *, x0: int = 0, y0: int = 0, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(height, width, 2) pixel-centre coordinates (x, y) starting at (x0, y0)."""
    ys = torch.arange(y0, y0 + height, device=device, dtype=dtype)
    xs = torch.arange(x0, x0 + width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def warp_to_crop(
    images: Tensor,  # (B, C, H, W) float frames
    transform: CropTransform,  # batch (B,), frame_size (H, W)
    *,
    antialias: bool = True,  # prefilter frames that the crop minifies
) -> Tensor:
    """Resample frames into their crops → (B, C, crop H, crop W), zeros outside the frame."""
    dims = assert_shape(images, ("B", None, None, None), "images")
    if tuple(transform.batch_shape) != (dims["B"],):
        raise ValueError(f"transform: batch shape {tuple(transform.batch_shape)} does not match {dims['B']} images")
    if tuple(images.shape[-2:]) != transform.frame_size:
        raise ValueError(f"images: frame size {tuple(images.shape[-2:])} != transform.frame_size {transform.frame_size}")
    crop_h, crop_w = transform.crop_size
    transform = transform.to(images.device)
    crop_pixels = _pixel_grid(crop_h, crop_w, device=images.device, dtype=torch.float32).reshape(1, -1, 2)
    frame_points = _apply_affine(transform.inverse_affine()[:, None], crop_pixels[:, None]).reshape(-1, crop_h, crop_w, 2)
    return _sample(images, frame_points, transform.scale, antialias)


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """An aligned crop of a face region (whole face or mouth), with its transform.

    Batched (from :func:`align_faces` / :func:`align_mouths`): ``crop`` (B, 3, S, S) float
    in [0, 1], ``transform`` batch (B,), ``landmarks`` (B, N, 2) crop pixels. Single (from
    :func:`align_face` / :func:`align_mouth`): the same without the batch dim.
    ``landmarks`` are the input landmarks (5 or 68) mapped into the crop.
    """

    crop: Tensor  # ([B,] 3, S, S) float RGB in [0, 1]
    transform: CropTransform  # frame pixels → crop pixels
    landmarks: Tensor  # ([B,] N, 2) crop pixels


def align_faces(
    images: Tensor | np.ndarray,  # (B, H, W, 3) uint8 or (B, 3, H, W) float in [0, 1]
    landmarks: Tensor | np.ndarray,  # (B, 5, 2) or (B, 68, 2) frame pixels, y down
    template: AlignmentTemplate,  # 5-point 3D template (e.g. AlignmentTemplate.from_face_model(model))
    *,
    crop_size: int = DEEP3D_CROP_SIZE,  # side of the square crop, pixels
    rescale_factor: float | None = None,  # crop pixels per model unit; None: 102 · crop_size / 224 (Deep3D)
    antialias: bool = True,  # prefilter frames that the crop minifies
) -> AlignedFace:
    """Deep3D-style 5-point face alignment of a batch (on the images' device)."""
    frames = _image_batch(images, "images")
    points = _landmarks_batch(landmarks, (NUM_LANDMARKS5, NUM_LANDMARKS68), "landmarks").to(frames.device)
    if points.shape[0] != frames.shape[0]:
        raise ValueError(f"landmarks: batch {points.shape[0]} != images batch {frames.shape[0]}")
    transform = face_crop_transform(
        points, template, frame_size=tuple(frames.shape[-2:]), crop_size=crop_size, rescale_factor=rescale_factor
    )
    crop = warp_to_crop(frames, transform, antialias=antialias).clamp_(0.0, 1.0)  # float rounding only
    return AlignedFace(crop=crop, transform=transform, landmarks=transform.frame_to_crop(points))


def _single(image: Tensor | np.ndarray, landmarks: Tensor | np.ndarray) -> tuple[Tensor | np.ndarray, Tensor]:
    if isinstance(image, np.ndarray) or (isinstance(image, Tensor) and image.dtype == torch.uint8):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image: expected uint8 (H, W, 3), got shape {tuple(image.shape)}")
    elif isinstance(image, Tensor) and (image.ndim != 3 or image.shape[0] != 3):
        raise ValueError(f"image: expected float (3, H, W), got shape {tuple(image.shape)}")
    points = _as_float_tensor(landmarks, "landmarks")
    if points.ndim != 2:
        raise ValueError(f"landmarks: expected shape (N, 2), got {tuple(points.shape)}")
    return image[None], points[None]


def _unbatch(aligned: AlignedFace) -> AlignedFace:
    return AlignedFace(crop=aligned.crop[0], transform=aligned.transform[0], landmarks=aligned.landmarks[0])


def align_face(
    image: Tensor | np.ndarray,  # (H, W, 3) uint8 or (3, H, W) float in [0, 1]
    landmarks: Tensor | np.ndarray,  # (5, 2) or (68, 2) frame pixels, y down
    template: AlignmentTemplate,  # 5-point 3D template
    *,
    crop_size: int = DEEP3D_CROP_SIZE,  # side of the square crop, pixels
    rescale_factor: float | None = None,  # crop pixels per model unit; None: 102 · crop_size / 224
    antialias: bool = True,  # prefilter frames that the crop minifies
) -> AlignedFace:
    """:func:`align_faces` for one image → crop (3, S, S) float [0, 1], unbatched transform."""
    batch_image, batch_points = _single(image, landmarks)
    return _unbatch(align_faces(batch_image, batch_points, template, crop_size=crop_size,
                                rescale_factor=rescale_factor, antialias=antialias))


def align_mouths(
    images: Tensor | np.ndarray,  # (B, H, W, 3) uint8 or (B, 3, H, W) float in [0, 1]
    landmarks68: Tensor | np.ndarray,  # (B, 68, 2) frame pixels, y down
    template: MouthTemplate | None = None,  # None: MouthTemplate.default()
    *,
    crop_size: int = 128,  # side of the square mouth crop, pixels (64 or 128 in the project)
    mouth_width: float = 0.5,  # template corner-to-corner distance as a fraction of crop_size
    antialias: bool = True,  # prefilter frames that the crop minifies
) -> AlignedFace:
    """Mouth crops aligned from the 20 mouth landmarks (METHOD.md §3.7); landmarks: all 68 in crop pixels."""
    frames = _image_batch(images, "images")
    points = _landmarks_batch(landmarks68, (NUM_LANDMARKS68,), "landmarks68").to(frames.device)
    if points.shape[0] != frames.shape[0]:
        raise ValueError(f"landmarks68: batch {points.shape[0]} != images batch {frames.shape[0]}")
    transform = mouth_crop_transform(
        points, template, frame_size=tuple(frames.shape[-2:]), crop_size=crop_size, mouth_width=mouth_width
    )
    crop = warp_to_crop(frames, transform, antialias=antialias).clamp_(0.0, 1.0)  # float rounding only
    return AlignedFace(crop=crop, transform=transform, landmarks=transform.frame_to_crop(points))


def align_mouth(
    image: Tensor | np.ndarray,  # (H, W, 3) uint8 or (3, H, W) float in [0, 1]
    landmarks68: Tensor | np.ndarray,  # (68, 2) frame pixels, y down
    template: MouthTemplate | None = None,  # None: MouthTemplate.default()
    *,
    crop_size: int = 128,  # side of the square mouth crop, pixels
    mouth_width: float = 0.5,  # template corner-to-corner distance as a fraction of crop_size
    antialias: bool = True,  # prefilter frames that the crop minifies
) -> AlignedFace:
    """:func:`align_mouths` for one image → crop (3, S, S) float [0, 1], unbatched transform."""
    batch_image, batch_points = _single(image, landmarks68)
    return _unbatch(align_mouths(batch_image, batch_points, template, crop_size=crop_size,
                                 mouth_width=mouth_width, antialias=antialias))


# ---------------------------------------------------------------- paste back
def paste_crop_into_frame(
    crop: Tensor,  # ([B,] C, S_h, S_w) float crop content
    transform: CropTransform,  # batch (B,) or (): frame → crop
    frame: Tensor,  # ([B,] C, H, W) float frame
    mask: Tensor | None = None,  # ([B,] 1, S_h, S_w) float in [0, 1] blend weight in crop pixels; None: whole crop
    *,
    antialias: bool = True,  # prefilter crops that the paste minifies
) -> Tensor:
    """Warp ``crop`` back into ``frame`` and blend: ``frame·(1 − m) + crop·m`` (m = warped mask).

    The crop is premultiplied by the mask before resampling, so feathered masks blend
    without dark fringes; outside the crop the frame is unchanged. Returns a new tensor of
    ``frame``'s shape; inputs are not modified. Only the crop's bounding box in the frame is
    resampled.
    """
    single = frame.ndim == 3
    crops, frames = (crop[None], frame[None]) if single else (crop, frame)
    if single and transform.batch_shape == ():
        transform = CropTransform.stack([transform])
    dims = assert_shape(frames, ("B", "C", None, None), "frame")
    assert_shape(crops, ("B", "C", transform.crop_size[0], transform.crop_size[1]), "crop", dims)
    if tuple(frames.shape[-2:]) != transform.frame_size:
        raise ValueError(f"frame: size {tuple(frames.shape[-2:])} != transform.frame_size {transform.frame_size}")
    if tuple(transform.batch_shape) != (dims["B"],):
        raise ValueError(f"transform: batch shape {tuple(transform.batch_shape)} does not match {dims['B']} frames")
    if mask is None:
        masks = crops.new_ones(crops.shape[0], 1, *crops.shape[-2:])
    else:
        masks = mask[None] if single else mask
        assert_shape(masks, ("B", 1, transform.crop_size[0], transform.crop_size[1]), "mask", dims)
        assert_range(masks, 0.0, 1.0, "mask")
    transform = transform.to(frames.device)
    crop_h, crop_w = transform.crop_size
    frame_h, frame_w = transform.frame_size

    # Bounding box (union over the batch) of the crop's area in the frame, in whole pixels.
    corners = torch.tensor(
        [[-0.5, -0.5], [crop_w - 0.5, -0.5], [-0.5, crop_h - 0.5], [crop_w - 0.5, crop_h - 0.5]],
        dtype=torch.float32, device=frames.device,
    )
    in_frame = transform.crop_to_frame(corners.expand(dims["B"], 4, 2)).reshape(-1, 2)
    x0 = max(0, math.floor(float(in_frame[:, 0].min())))
    y0 = max(0, math.floor(float(in_frame[:, 1].min())))
    x1 = min(frame_w - 1, math.ceil(float(in_frame[:, 0].max())))
    y1 = min(frame_h - 1, math.ceil(float(in_frame[:, 1].max())))
    result = frames.clone()
    if x1 < x0 or y1 < y0:
        return result[0] if single else result

    region = _pixel_grid(y1 - y0 + 1, x1 - x0 + 1, x0=x0, y0=y0, device=frames.device, dtype=torch.float32)
    crop_points = _apply_affine(transform.to_affine()[:, None], region.reshape(1, 1, -1, 2)).reshape(
        dims["B"], y1 - y0 + 1, x1 - x0 + 1, 2
    )
    masks = masks.to(crops)
    premultiplied = torch.cat([crops * masks, masks], dim=1)
    warped = _sample(premultiplied, crop_points, 1.0 / transform.scale, antialias)
    colour, weight = warped[:, :-1], warped[:, -1:].clamp(0.0, 1.0)
    window = result[..., y0 : y1 + 1, x0 : x1 + 1]
    result[..., y0 : y1 + 1, x0 : x1 + 1] = window * (1.0 - weight) + colour
    return result[0] if single else result
