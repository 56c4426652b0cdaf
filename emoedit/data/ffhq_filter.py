"""The FFHQ quality filter (METHOD.md §3.4, §5): drop large-pose, badly lit and occluded faces.

The paper keeps 49,612 of FFHQ's 70,000 faces after removing "images with occlusion,
abnormal lighting or large pose" without saying how. **Project choice**: measurable
criteria on the aligned face crop, each with a threshold (:class:`FaceFilterConfig`):

- ``large_pose`` — |yaw| or |pitch| above a threshold. Yaw/pitch (Deep3D Euler y/x) come
  from the reconstruction's ``angle`` when there is one, else from the 68 landmarks:
  a scaled-orthographic fit (:func:`estimate_head_pose`) of the 51 inner landmarks
  (brows, nose, eyes, mouth; the jaw contour slides with pose and is left out) to the
  face model's 3D landmarks.
- ``dark`` / ``bright`` — mean luminance (Rec. 709 luma of the sRGB values, in [0, 1])
  of the face region (polygon: jaw contour then brows, :data:`FACE_OUTLINE_IDS`) outside
  a range.
- ``low_contrast`` — dynamic range (95th − 5th luminance percentile) of the face region
  below a threshold (flat, washed-out or fogged faces).
- ``uneven_light`` — strong side lighting: |L_left − L_right| / (L_left + L_right) of the
  two halves of the face region (split at the nose line) above a threshold.
- ``occluded`` — with a reconstruction: the fraction of visible skin texels whose colour
  differs from the reconstructed face's shaded colour by more than ``residual_threshold``
  after a per-channel gain match (:func:`uv_photometric_outliers`; hands, hair, glasses,
  microphones do not fit the morphable model). Without one: the landmark-fit residual
  (RMS distance of the 51 landmarks from the fitted 3D template, in interocular
  distances) above ``max_landmark_residual`` (landmarks dragged off by an occluder).
- ``low_score`` — the face detector's score below ``min_detection_score`` (when set).

A face is kept when no criterion fires. Calibration of the defaults (the exact keep-rate on
FFHQ is a property of the thresholds, recorded in every cache's attributes; every image's
measurements are written to ``quality_filter.json`` so thresholds can be re-tuned on a
sample without reprocessing):

- synthetic world stills (true reconstruction): good faces have an occluded fraction
  ≤ 0.02, the occluded still 0.17; the dark still a luminance of 0.15 (good ≥ 0.33), the
  large-pose still |yaw| 68° (good ≤ 25°);
- 25 real photographs (Deep3DFaceRecon's examples) fitted with a short fitter run and the
  procedural model: occluded fractions 0.02-0.36 (hair over the forehead, a cap, a hand at
  the top), so 0.15 rejects 8 of 25 (32 %; the paper rejects 29 % of FFHQ). Luminance
  0.41-0.69, dynamic range ≥ 0.29, side imbalance ≤ 0.25, |yaw| ≤ 25°, |pitch| ≤ 17°:
  none of those criteria fires on them. A better reconstruction (a trained regressor)
  lowers the photometric residuals of unoccluded faces.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from emoedit.data.mouth import polygon_mask
from emoedit.shape_checks import assert_shape

# 0-based iBUG ids of the face outline: jaw contour 0..16, then the brows right to left 26..17.
FACE_OUTLINE_IDS: tuple[int, ...] = (*range(0, 17), *range(26, 16, -1))
INNER_LANDMARK_IDS: tuple[int, ...] = tuple(range(17, 68))  # brows, nose, eyes, mouth (no jaw contour)
NOSE_BRIDGE_IDS: tuple[int, ...] = (27, 28, 29, 30)  # nose line that splits the face into left/right halves
LEFT_EYE_IDS: tuple[int, ...] = tuple(range(36, 42))
RIGHT_EYE_IDS: tuple[int, ...] = tuple(range(42, 48))
REJECT_REASONS: tuple[str, ...] = ("large_pose", "dark", "bright", "low_contrast", "uneven_light", "occluded", "low_score")
_LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 luma weights


@dataclass(frozen=True)
class FaceFilterConfig:
    """Thresholds of the FFHQ filter (see the module docstring); angles in degrees, luminance in [0, 1]."""

    max_abs_yaw_deg: float = 30.0  # |yaw| above this: large_pose
    max_abs_pitch_deg: float = 25.0  # |pitch| above this: large_pose
    min_luminance: float = 0.15  # mean face luminance below this: dark
    max_luminance: float = 0.90  # mean face luminance above this: bright
    min_dynamic_range: float = 0.10  # 95th − 5th luminance percentile below this: low_contrast
    max_side_imbalance: float = 0.40  # |L_left − L_right| / (L_left + L_right) above this: uneven_light
    residual_threshold: float = 0.20  # gain-matched colour error (mean over RGB) of an outlier texel
    max_occluded_fraction: float = 0.15  # outlier fraction of the visible skin texels above this: occluded
    max_landmark_residual: float = 0.20  # landmark-fit RMS residual, interocular distances (no reconstruction)
    min_detection_score: float | None = None  # detector score below this: low_score; None: not used

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_luminance < self.max_luminance <= 1.0:
            raise ValueError(f"FaceFilterConfig: need 0 <= min_luminance < max_luminance <= 1, got {self}")
        for name in ("max_abs_yaw_deg", "max_abs_pitch_deg", "min_dynamic_range", "max_side_imbalance",
                     "residual_threshold", "max_occluded_fraction", "max_landmark_residual"):
            if getattr(self, name) < 0:
                raise ValueError(f"FaceFilterConfig.{name} must be >= 0, got {getattr(self, name)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HeadPose:
    """Head pose of B faces fitted from 2D landmarks (scaled orthographic camera)."""

    angle: Tensor  # (B, 3) Deep3D Euler (x = pitch, y = yaw, z = roll), radians
    scale: Tensor  # (B,) pixels per model unit
    residual: Tensor  # (B,) RMS landmark residual of the fit, pixels


@dataclass(frozen=True)
class FaceQuality:
    """The filter's measurements of one face (``None`` = not measured)."""

    yaw_deg: float  # Deep3D Euler y, degrees
    pitch_deg: float  # Deep3D Euler x, degrees
    pose_source: str  # "reconstruction" or "landmarks"
    luminance: float  # mean face-region luminance in [0, 1]
    dynamic_range: float  # 95th − 5th percentile of the face-region luminance
    side_imbalance: float  # |L_left − L_right| / (L_left + L_right)
    occluded_fraction: float | None  # photometric outlier fraction of visible skin texels (reconstruction)
    landmark_residual: float  # landmark-fit RMS residual in interocular distances
    detection_score: float | None  # the detector's score (None: unknown, e.g. given landmarks)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def rotation_to_euler(rotation_col: Tensor) -> Tensor:
    """(B, 3, 3) column-vector rotations ``Rz Ry Rx`` → (B, 3) Deep3D Euler (x, y, z) radians."""
    assert_shape(rotation_col, (None, 3, 3), "rotation_col")
    r = rotation_col
    x = torch.atan2(r[:, 2, 1], r[:, 2, 2])
    y = torch.asin((-r[:, 2, 0]).clamp(-1.0, 1.0))
    z = torch.atan2(r[:, 1, 0], r[:, 0, 0])
    return torch.stack([x, y, z], dim=-1)


def estimate_head_pose(
    landmarks: Tensor,  # (B, 68, 2) image pixels, y down
    landmarks3d: Tensor,  # (68, 3) model-space landmarks of a (mean) face, y up
    *,
    ids: Sequence[int] = INNER_LANDMARK_IDS,  # landmarks used in the fit
) -> HeadPose:
    """Scaled-orthographic head pose: least-squares affine camera, rows orthonormalised.

    Fits ``p ≈ s·[r1; r2]·X + t`` (image y flipped up), takes ``r1``, ``r2`` orthonormal
    (Gram-Schmidt) and ``r3 = r1 × r2``; the rotation ``[r1; r2; r3]`` maps model to
    camera coordinates like the face model's ``Rz Ry Rx``.
    """
    dims = assert_shape(landmarks, ("B", 68, 2), "landmarks")
    assert_shape(landmarks3d, (68, 3), "landmarks3d")
    index = list(ids)
    points = landmarks[:, index].to(torch.float64)
    points = torch.stack([points[..., 0], -points[..., 1]], dim=-1)  # y up
    model = landmarks3d[index].to(device=points.device, dtype=torch.float64)
    design = torch.cat([model - model.mean(0), torch.ones_like(model[:, :1])], dim=1)  # (N, 4)
    solution = torch.linalg.pinv(design) @ points  # (B, 4, 2): columns = rows of [A | t]
    a1, a2 = solution[:, :3, 0], solution[:, :3, 1]
    s1, s2 = a1.norm(dim=-1), a2.norm(dim=-1)
    r1 = a1 / s1.clamp(min=1e-12)[:, None]
    r2 = a2 - (a2 * r1).sum(-1, keepdim=True) * r1
    r2 = r2 / r2.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    r3 = torch.linalg.cross(r1, r2, dim=-1)
    rotation = torch.stack([r1, r2, r3], dim=1)
    fitted = design @ solution
    residual = ((fitted - points) ** 2).sum(-1).mean(-1).sqrt()
    return HeadPose(angle=rotation_to_euler(rotation).float(), scale=((s1 + s2) / 2).float(),
                    residual=residual.float().reshape(dims["B"]))


def luminance(images: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) Rec. 709 luma in [0, 1]."""
    assert_shape(images, (None, 3, None, None), "images")
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def lighting_stats(
    crops: Tensor,  # (B, 3, S, S) float in [0, 1] aligned face crops
    landmarks: Tensor,  # (B, 68, 2) crop pixels
) -> dict[str, Tensor]:
    """Face-region luminance statistics: ``luminance``, ``dynamic_range``, ``side_imbalance`` (each (B,))."""
    dims = assert_shape(crops, ("B", 3, "S", "S"), "crops")
    assert_shape(landmarks, ("B", 68, 2), "landmarks", dims)
    size = dims["S"]
    region = polygon_mask(landmarks[:, list(FACE_OUTLINE_IDS)].float(), (size, size))[:, 0]  # (B, S, S)
    luma = luminance(crops.float())[:, 0]
    xs = torch.arange(size, dtype=torch.float32, device=crops.device).view(1, 1, size)
    split = landmarks[:, list(NOSE_BRIDGE_IDS), 0].float().mean(dim=1).view(-1, 1, 1)
    left = region & (xs < split)
    right = region & (xs >= split)
    mean, spread, imbalance = [], [], []
    for b in range(dims["B"]):
        values = luma[b][region[b]]
        if values.numel() < 16:  # degenerate outline: use the whole crop
            values = luma[b].flatten()
        mean.append(values.mean())
        low, high = torch.quantile(values, torch.tensor([0.05, 0.95], device=values.device))
        spread.append(high - low)
        l_left = luma[b][left[b]].mean() if bool(left[b].any()) else values.mean()
        l_right = luma[b][right[b]].mean() if bool(right[b].any()) else values.mean()
        imbalance.append((l_left - l_right).abs() / (l_left + l_right).clamp(min=1e-6))
    return {"luminance": torch.stack(mean), "dynamic_range": torch.stack(spread), "side_imbalance": torch.stack(imbalance)}


def uv_photometric_outliers(
    uv_texture: Tensor,  # (B, 3, T, T) float in [0, 1], the extracted texture
    visibility: Tensor,  # (B, 1, T, T) {0, 1} visible texels
    model_uv: Tensor,  # (B, 3, T, T) the reconstructed face's shaded colour in UV
    region: Tensor | None,  # (1 or B, 1, T, T) bool skin texels; None = every texel
    *,
    threshold: float,  # colour error (mean over RGB, after the gain match) of an outlier texel
) -> Tensor:
    """(B,) fraction of visible (skin) texels whose gain-matched colour error exceeds ``threshold``.

    The reconstruction's colour is matched per channel to the texture's mean over the
    used texels first, so an albedo or exposure bias of the fit is not counted. 1.0 when
    no texel is usable.
    """
    dims = assert_shape(uv_texture, ("B", 3, "T", "T"), "uv_texture")
    assert_shape(visibility, ("B", 1, "T", "T"), "visibility", dims)
    assert_shape(model_uv, ("B", 3, "T", "T"), "model_uv", dims)
    used = visibility > 0.5
    if region is not None:
        used = used & region.to(torch.bool)
    weight = used.to(uv_texture.dtype)
    count = weight.sum(dim=(1, 2, 3))
    target_mean = (uv_texture * weight).sum(dim=(2, 3)) / count.clamp(min=1)[:, None]
    model_mean = (model_uv * weight).sum(dim=(2, 3)) / count.clamp(min=1)[:, None]
    gain = target_mean / model_mean.clamp(min=1e-3)
    error = (model_uv * gain[..., None, None] - uv_texture).abs().mean(dim=1, keepdim=True)
    outliers = ((error > threshold) & used).to(uv_texture.dtype).sum(dim=(1, 2, 3))
    return torch.where(count > 0, outliers / count.clamp(min=1), torch.ones_like(count))


def assess_faces(
    crops: Tensor,  # (B, 3, S, S) float in [0, 1] aligned face crops
    landmarks: Tensor,  # (B, 68, 2) crop pixels (detected, or the reconstruction's projection)
    landmarks3d: Tensor,  # (68, 3) the face model's mean-shape landmarks (for the landmark pose fit)
    *,
    angle: Tensor | None = None,  # (B, 3) reconstructed Euler angles, radians; None: pose from landmarks
    occluded_fraction: Tensor | None = None,  # (B,) from uv_photometric_outliers; None: not measured
    detection_scores: Tensor | None = None,  # (B,) detector scores (NaN = unknown)
) -> list[FaceQuality]:
    """Measure every criterion of the filter for B faces."""
    dims = assert_shape(crops, ("B", 3, None, None), "crops")
    assert_shape(landmarks, ("B", 68, 2), "landmarks", dims)
    fit = estimate_head_pose(landmarks, landmarks3d)
    source = "landmarks"
    pose = fit.angle
    if angle is not None:
        assert_shape(angle, ("B", 3), "angle", dims)
        pose, source = angle.detach().float().cpu(), "reconstruction"
    eyes = (landmarks[:, list(LEFT_EYE_IDS)].mean(1) - landmarks[:, list(RIGHT_EYE_IDS)].mean(1)).norm(dim=-1)
    relative_residual = fit.residual / eyes.clamp(min=1e-6)
    light = lighting_stats(crops, landmarks)
    out = []
    for b in range(dims["B"]):
        score = None
        if detection_scores is not None and math.isfinite(float(detection_scores[b])):
            score = float(detection_scores[b])
        out.append(
            FaceQuality(
                yaw_deg=math.degrees(float(pose[b, 1])),
                pitch_deg=math.degrees(float(pose[b, 0])),
                pose_source=source,
                luminance=float(light["luminance"][b]),
                dynamic_range=float(light["dynamic_range"][b]),
                side_imbalance=float(light["side_imbalance"][b]),
                occluded_fraction=None if occluded_fraction is None else float(occluded_fraction[b]),
                landmark_residual=float(relative_residual[b]),
                detection_score=score,
            )
        )
    return out


def reject_reasons(quality: FaceQuality, config: FaceFilterConfig) -> tuple[str, ...]:
    """The criteria a face fails, in :data:`REJECT_REASONS` order (empty = keep)."""
    reasons = []
    if abs(quality.yaw_deg) > config.max_abs_yaw_deg or abs(quality.pitch_deg) > config.max_abs_pitch_deg:
        reasons.append("large_pose")
    if quality.luminance < config.min_luminance:
        reasons.append("dark")
    if quality.luminance > config.max_luminance:
        reasons.append("bright")
    if quality.dynamic_range < config.min_dynamic_range:
        reasons.append("low_contrast")
    if quality.side_imbalance > config.max_side_imbalance:
        reasons.append("uneven_light")
    if quality.occluded_fraction is not None:
        if quality.occluded_fraction > config.max_occluded_fraction:
            reasons.append("occluded")
    elif quality.landmark_residual > config.max_landmark_residual:
        reasons.append("occluded")
    if (config.min_detection_score is not None and quality.detection_score is not None
            and quality.detection_score < config.min_detection_score):
        reasons.append("low_score")
    return tuple(reasons)


def count_reasons(decisions: Sequence[Sequence[str]]) -> dict[str, int]:
    """Per-reason counts (a face with several reasons counts under each) plus ``kept`` and ``rejected``."""
    counts = {reason: 0 for reason in REJECT_REASONS}
    for reasons in decisions:
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
    counts["rejected"] = sum(1 for r in decisions if r)
    counts["kept"] = sum(1 for r in decisions if not r)
    return counts
