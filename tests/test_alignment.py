"""Face and mouth alignment: templates, POS, CropTransform, warps, paste-back, real photos."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emoedit.data.alignment import (
    AlignedFace,
    AlignmentTemplate,
    CropTransform,
    MouthTemplate,
    align_face,
    align_faces,
    align_mouth,
    align_mouths,
    face_crop_transform,
    mouth_crop_transform,
    paste_crop_into_frame,
    solve_pos,
    warp_to_crop,
)
from emoedit.data.detection import MOUTH_IDS, landmarks68_to_5, read_pts
from emoedit.face_model.morphable_model import MorphableModel

MAT_RELATIVE = Path("facemodels") / "deep3d_bfm_aux" / "similarity_Lm3D_all.mat"


def _template() -> AlignmentTemplate:
    """A fixed synthetic template (dm, y up), roughly a face."""
    return AlignmentTemplate(
        torch.tensor([[-0.31, 0.29, 0.13], [0.31, 0.29, 0.13], [0.0, -0.05, 0.55], [-0.25, -0.38, 0.22], [0.25, -0.38, 0.22]])
    )


def _rotation(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    cy, sy, cp, sp, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rx = torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]], dtype=torch.float64)
    rz = torch.tensor([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx


def _project(points3d: torch.Tensor, rotation: torch.Tensor, scale: float, translation: tuple[float, float]) -> torch.Tensor:
    """Scaled orthographic projection to y-down image pixels."""
    rotated = points3d.to(torch.float64) @ rotation.T
    return torch.stack([scale * rotated[:, 0] + translation[0], -scale * rotated[:, 1] + translation[1]], dim=-1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _deep3d_reference_landmarks(points5: np.ndarray, template5: np.ndarray, height: int, crop: int = 224, rescale: float = 102.0):
    """Deep3D's align_img landmark arithmetic (POS on y-up points, 2n×8 system), written out independently."""
    lm = points5.astype(np.float64).copy()
    lm[:, 1] = height - 1 - lm[:, 1]
    n = lm.shape[0]
    system = np.zeros((2 * n, 8))
    system[0::2, 0:3] = template5
    system[0::2, 3] = 1
    system[1::2, 4:7] = template5
    system[1::2, 7] = 1
    k = np.linalg.lstsq(system, lm.reshape(-1), rcond=None)[0]
    s = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    t = np.array([k[3], k[7]])
    s_prime = rescale / s
    # With w = w0·s', h = h0·s' (no integer rounding): lm_new = (lm − t)·s' + crop/2.
    new = (lm - t) * s_prime + crop / 2
    new[:, 1] = crop - 1 - new[:, 1]  # back to y down
    return new, s, t


# ---------------------------------------------------------------- templates
def test_template_from_deep3d_mat(fixtures_dir: Path) -> None:
    from scipy.io import loadmat

    path = fixtures_dir / MAT_RELATIVE
    template = AlignmentTemplate.from_deep3d_mat(path)
    lm = loadmat(str(path))["lm"].astype(np.float64)
    expected = np.stack([lm[[36, 39]].mean(0), lm[[42, 45]].mean(0), lm[30], lm[48], lm[54]])
    np.testing.assert_allclose(template.points5.numpy(), expected, atol=1e-6)
    assert template.points5.dtype == torch.float32 and template.points5.shape == (5, 3)


def test_template_from_deep3d_mat_errors(tmp_path: Path) -> None:
    from scipy.io import savemat

    with pytest.raises(FileNotFoundError, match="nothing.mat"):
        AlignmentTemplate.from_deep3d_mat(tmp_path / "nothing.mat")
    wrong_key = tmp_path / "wrong.mat"
    savemat(str(wrong_key), {"landmarks": np.zeros((68, 3))})
    with pytest.raises(ValueError, match="'lm'"):
        AlignmentTemplate.from_deep3d_mat(wrong_key)
    wrong_shape = tmp_path / "shape.mat"
    savemat(str(wrong_shape), {"lm": np.zeros((5, 3))})
    with pytest.raises(ValueError, match="68"):
        AlignmentTemplate.from_deep3d_mat(wrong_shape)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="garbage.mat"):
        AlignmentTemplate.from_deep3d_mat(garbage)


def _landmark_only_model(landmarks3d: torch.Tensor) -> MorphableModel:
    vertices = torch.cat([torch.zeros(2, 3), landmarks3d.float()])  # landmarks are not the first vertices
    count = vertices.shape[0]
    return MorphableModel(
        mean_shape=vertices,
        id_basis=torch.zeros(count, 3, 1),
        exp_basis=torch.zeros(count, 3, 1),
        mean_albedo=torch.full((count, 3), 0.5),
        albedo_basis=torch.zeros(count, 3, 0),
        triangles=torch.tensor([[0, 1, 2]]),
        landmark_ids=torch.arange(2, count),
        uv_coords=torch.full((count, 2), 0.5),
    )


def test_template_from_face_model_and_landmarks68() -> None:
    landmarks = torch.randn(68, 3, generator=torch.Generator().manual_seed(3))
    model = _landmark_only_model(landmarks)
    from_model = AlignmentTemplate.from_face_model(model)
    from_points = AlignmentTemplate.from_landmarks68(landmarks)
    torch.testing.assert_close(from_model.points5, from_points.points5)
    torch.testing.assert_close(from_points.points5, landmarks68_to_5(landmarks))
    mouth = MouthTemplate.from_face_model(model)
    torch.testing.assert_close(mouth.points, MouthTemplate.from_landmarks68(landmarks).points)
    with pytest.raises(ValueError):
        AlignmentTemplate.from_landmarks68(torch.zeros(67, 3))


def test_mouth_template_normalisation() -> None:
    template = MouthTemplate.default()
    points = template.points
    left, right = points[MOUTH_IDS.index(48)], points[MOUTH_IDS.index(54)]
    torch.testing.assert_close(points.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    assert float(left[1] - right[1]) == pytest.approx(0.0, abs=1e-6)
    assert float(right[0] - left[0]) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- POS and the face transform
def test_solve_pos_recovers_exact_affine_camera() -> None:
    template = _template()
    rotation = _rotation(0.3, -0.2, 0.1)
    points = _project(template.points5, rotation, 250.0, (321.5, 207.25))[None]
    translation, scale = solve_pos(points, template.points5)
    torch.testing.assert_close(translation, torch.tensor([[321.5, 207.25]], dtype=torch.float64))
    torch.testing.assert_close(scale, torch.tensor([250.0], dtype=torch.float64))


def test_exact_frontal_template_lands_on_target_points() -> None:
    template = _template()
    points = _project(template.points5, torch.eye(3, dtype=torch.float64), 180.0, (150.0, 170.0)).float()
    for crop_size in (224, 128):
        transform = face_crop_transform(points[None], template, frame_size=(300, 320), crop_size=crop_size)
        landmarks = transform.frame_to_crop(points[None])[0]
        torch.testing.assert_close(landmarks, template.target_points(crop_size=crop_size), atol=1e-3, rtol=0)
        assert float(transform.rotation) == 0.0
    # The template origin (image position t) lands at the crop camera centre (112, 111).
    transform = face_crop_transform(points[None], template, frame_size=(300, 320))
    origin = transform.frame_to_crop(torch.tensor([[[150.0, 170.0]]]))
    torch.testing.assert_close(origin, torch.tensor([[[112.0, 111.0]]]), atol=1e-3, rtol=0)
    assert float(transform.scale) == pytest.approx(102.0 / 180.0, rel=1e-6)


def test_face_transform_matches_deep3d_arithmetic(fixtures_dir: Path) -> None:
    folder = fixtures_dir / "faces" / "deep3d_examples"
    template = AlignmentTemplate.from_deep3d_mat(fixtures_dir / MAT_RELATIVE)
    for name in ("000002", "015316", "vd006"):
        path = next(folder.glob(f"{name}.*g"))
        height = _load_rgb(path).shape[0]
        points = np.loadtxt(folder / "detections" / f"{name}.txt", dtype=np.float32).reshape(5, 2)
        expected, _, _ = _deep3d_reference_landmarks(points, template.points5.double().numpy(), height)
        transform = face_crop_transform(torch.from_numpy(points)[None], template, frame_size=(height, 999))
        got = transform.frame_to_crop(torch.from_numpy(points)[None])[0]
        np.testing.assert_allclose(got.numpy(), expected, atol=2e-3)


def test_real_photos_align_near_template_targets(fixtures_dir: Path) -> None:
    folder = fixtures_dir / "faces" / "deep3d_examples"
    template = AlignmentTemplate.from_deep3d_mat(fixtures_dir / MAT_RELATIVE)
    targets = template.target_points()
    iod = float((targets[1] - targets[0]).norm())
    errors = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:8]:
        points = np.loadtxt(folder / "detections" / f"{path.stem}.txt", dtype=np.float32).reshape(5, 2)
        aligned = align_face(_load_rgb(path), points, template)
        assert aligned.crop.shape == (3, 224, 224) and aligned.crop.dtype == torch.float32
        assert 0.0 <= float(aligned.crop.min()) and float(aligned.crop.max()) <= 1.0
        errors.append(float((aligned.landmarks - targets).norm(dim=-1).mean()) / iod)
        # The eye centres straddle the crop centre, above it; the mouth below.
        assert aligned.landmarks[0, 0] < 112 < aligned.landmarks[1, 0]
        assert aligned.landmarks[:2, 1].max() < 112 < aligned.landmarks[3:, 1].min()
    print(f"aligned 5 points vs template targets, mean error / IOD: {np.round(errors, 3).tolist()}")
    assert max(errors) < 0.3  # pose (no rotation in Deep3D's crop) and depth make it inexact


# ---------------------------------------------------------------- CropTransform
def _random_transform(batch: int = 3) -> CropTransform:
    generator = torch.Generator().manual_seed(1)
    return CropTransform(
        scale=torch.rand(batch, generator=generator) + 0.5,
        rotation=torch.rand(batch, generator=generator) - 0.5,
        offset=torch.randn(batch, 2, generator=generator) * 30,
        crop_size=(64, 48),
        frame_size=(120, 160),
    )


def test_crop_transform_round_trips() -> None:
    transform = _random_transform()
    points = torch.rand(3, 10, 2) * 100
    back = transform.crop_to_frame(transform.frame_to_crop(points))
    torch.testing.assert_close(back, points, atol=1e-4, rtol=0)
    forward, inverse = transform.to_affine(), transform.inverse_affine()
    assert forward.shape == (3, 2, 3)
    square = lambda m: torch.cat([m, torch.tensor([[0.0, 0.0, 1.0]]).expand(m.shape[0], 1, 3)], dim=1)  # noqa: E731
    torch.testing.assert_close(square(forward) @ square(inverse), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)
    restored = CropTransform.from_tensor(transform.as_tensor())
    assert restored.crop_size == (64, 48) and restored.frame_size == (120, 160)
    torch.testing.assert_close(restored.to_affine(), forward)
    assert transform.as_tensor().shape == (3, 8)
    from_matrix = CropTransform.from_affine(forward, crop_size=(64, 48), frame_size=(120, 160))
    torch.testing.assert_close(from_matrix.rotation, transform.rotation, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_matrix.scale, transform.scale, atol=1e-5, rtol=0)
    single = transform[1]
    assert single.batch_shape == () and len(transform) == 3
    torch.testing.assert_close(single.frame_to_crop(points[1]), transform.frame_to_crop(points)[1])
    stacked = CropTransform.stack([transform[0], transform[2]])
    torch.testing.assert_close(stacked.offset, transform.offset[[0, 2]])


def test_crop_transform_validation() -> None:
    with pytest.raises(ValueError, match="> 0"):
        CropTransform(torch.tensor(-1.0), torch.tensor(0.0), torch.zeros(2), 8, (10, 10))
    with pytest.raises(ValueError, match="shapes"):
        CropTransform(torch.ones(2), torch.zeros(3), torch.zeros(2, 2), 8, (10, 10))
    with pytest.raises(ValueError, match="similarity"):
        CropTransform.from_affine(torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]]), crop_size=8, frame_size=(10, 10))
    with pytest.raises(ValueError, match="different"):
        CropTransform.from_tensor(torch.tensor([[1, 0, 0, 0, 8, 8, 10, 10], [1, 0, 0, 0, 8, 8, 12, 10]], dtype=torch.float32))


# ---------------------------------------------------------------- warps
def test_warp_integer_shift_is_an_exact_slice() -> None:
    frame = torch.rand(1, 3, 40, 50)
    transform = CropTransform(torch.ones(1), torch.zeros(1), torch.tensor([[-7.0, -5.0]]), (16, 20), (40, 50))
    crop = warp_to_crop(frame, transform)
    torch.testing.assert_close(crop, frame[:, :, 5:21, 7:27], atol=1e-5, rtol=0)
    # Outside the frame the crop is zero.
    outside = CropTransform(torch.ones(1), torch.zeros(1), torch.tensor([[100.0, 0.0]]), (8, 8), (40, 50))
    assert float(warp_to_crop(frame, outside).abs().max()) == 0.0


def test_warp_rotation_by_90_degrees_is_exact() -> None:
    frame = torch.rand(1, 1, 9, 9)
    # crop = R(90°)·frame + (8, 0): crop(x, y) = (−y_f + 8, x_f) → frame = (y_c, 8 − x_c).
    transform = CropTransform(torch.ones(1), torch.tensor([math.pi / 2]), torch.tensor([[8.0, 0.0]]), (9, 9), (9, 9))
    crop = warp_to_crop(frame, transform)
    torch.testing.assert_close(crop[0, 0], torch.rot90(frame[0, 0], k=-1, dims=(0, 1)), atol=1e-5, rtol=0)


def test_align_uint8_and_float_inputs_agree_and_batch_matches_single() -> None:
    generator = torch.Generator().manual_seed(2)
    images = (torch.rand(2, 96, 80, 3, generator=generator) * 255).to(torch.uint8)
    template = _template()
    points = torch.stack([
        _project(template.points5, _rotation(0.1, 0.0, 0.05), 60.0, (40.0, 50.0)),
        _project(template.points5, _rotation(-0.2, 0.1, 0.0), 45.0, (38.0, 45.0)),
    ]).float()
    batch = align_faces(images, points, template, crop_size=64)
    assert isinstance(batch, AlignedFace) and batch.crop.shape == (2, 3, 64, 64)
    single = align_face(images[1].numpy(), points[1], template, crop_size=64)
    torch.testing.assert_close(single.crop, batch.crop[1], atol=1e-5, rtol=0)
    as_float = align_face(images[1].permute(2, 0, 1).float() / 255, points[1], template, crop_size=64)
    torch.testing.assert_close(as_float.crop, single.crop, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="NaN"):
        align_faces(images, torch.full((2, 5, 2), float("nan")), template)
    with pytest.raises(ValueError, match="batch"):
        align_faces(images, points[:1], template)


def test_align_then_paste_back_reproduces_frame(fixtures_dir: Path) -> None:
    template = AlignmentTemplate.from_deep3d_mat(fixtures_dir / MAT_RELATIVE)
    folder = fixtures_dir / "faces" / "deep3d_examples"
    for name, min_psnr in (("000033", 30.0), ("vd006", 38.0), ("000002", 30.0)):  # scale 1.6, 1.0, 0.73
        image = _load_rgb(next(folder.glob(f"{name}.*g")))
        frame = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
        points = np.loadtxt(folder / "detections" / f"{name}.txt", dtype=np.float32).reshape(5, 2)
        aligned = align_face(frame, points, template)
        canvas = torch.zeros_like(frame)
        pasted = paste_crop_into_frame(aligned.crop, aligned.transform, canvas)
        assert float(canvas.abs().max()) == 0.0  # input untouched
        # Compare inside the crop's footprint, away from its border.
        inner = torch.tensor([[4.0, 4.0], [219.0, 4.0], [4.0, 219.0], [219.0, 219.0]])
        corners = aligned.transform.crop_to_frame(inner)
        x0, y0 = (int(math.ceil(float(v))) for v in corners.min(dim=0).values.clamp(min=0))
        x1 = int(min(float(corners[:, 0].max()), frame.shape[2] - 1))
        y1 = int(min(float(corners[:, 1].max()), frame.shape[1] - 1))
        psnr = _psnr(pasted[:, y0:y1, x0:x1], frame[:, y0:y1, x0:x1])
        print(f"{name}: scale {float(aligned.transform.scale):.2f}, align→paste PSNR {psnr:.1f} dB")
        assert psnr > min_psnr
        # Outside the crop's footprint the frame is unchanged (zeros here).
        far = aligned.transform.crop_to_frame(torch.tensor([[-20.0, -20.0]]))[0]
        if far[0] >= 0 and far[1] >= 0:
            assert float(pasted[:, : int(far[1]), : int(far[0])].abs().max()) == 0.0


def test_paste_mask_blend() -> None:
    frame = torch.full((2, 3, 30, 30), 0.2)
    crop = torch.full((2, 3, 10, 10), 0.8)
    transform = CropTransform(torch.ones(2), torch.zeros(2), torch.tensor([[-5.0, -5.0], [-10.0, -12.0]]), 10, (30, 30))
    mask = torch.zeros(2, 1, 10, 10)
    mask[:, :, 2:8, 2:8] = 0.5
    out = paste_crop_into_frame(crop, transform, frame, mask)
    assert out.shape == frame.shape and float(frame.max()) == pytest.approx(0.2)
    torch.testing.assert_close(out[0, :, 7:13, 7:13], torch.full((3, 6, 6), 0.5))  # 0.2·0.5 + 0.8·0.5
    torch.testing.assert_close(out[1, :, 14:20, 12:18], torch.full((3, 6, 6), 0.5))
    assert float(out[0, :, :5].sub(0.2).abs().max()) < 1e-6
    zero = paste_crop_into_frame(crop[0], transform[0], frame[0], torch.zeros(1, 10, 10))
    torch.testing.assert_close(zero, frame[0])
    away = CropTransform(torch.ones(()), torch.zeros(()), torch.tensor([500.0, 500.0]), 10, (30, 30))
    torch.testing.assert_close(paste_crop_into_frame(crop[0], away, frame[0]), frame[0])


# ---------------------------------------------------------------- mouth
def test_mouth_transform_recovers_known_similarity() -> None:
    template = MouthTemplate.default()
    crop_size, mouth_width = 64, 0.5
    target = (crop_size - 1) / 2 + mouth_width * crop_size * template.points  # (20, 2) crop pixels
    truth = CropTransform(torch.tensor(0.4), torch.tensor(0.3), torch.tensor([5.0, -7.0]), crop_size, (200, 220))
    landmarks68 = torch.rand(68, 2) * 200
    landmarks68[list(MOUTH_IDS)] = truth.crop_to_frame(target)
    fitted = mouth_crop_transform(landmarks68[None], template, frame_size=(200, 220), crop_size=crop_size)
    torch.testing.assert_close(fitted.to_affine()[0], truth.to_affine(), atol=1e-4, rtol=0)
    aligned = align_mouth(torch.rand(3, 200, 220), landmarks68, template, crop_size=crop_size)
    assert aligned.crop.shape == (3, 64, 64) and aligned.landmarks.shape == (68, 2)
    torch.testing.assert_close(aligned.landmarks[list(MOUTH_IDS)], target, atol=1e-3, rtol=0)


def test_mouth_alignment_on_real_photo(fixtures_dir: Path) -> None:
    image = _load_rgb(fixtures_dir / "faces" / "image_0010.png")
    truth = torch.from_numpy(read_pts(fixtures_dir / "faces" / "image_0010.pts"))
    aligned = align_mouths(image[None], truth[None], crop_size=128)
    assert aligned.crop.shape == (1, 3, 128, 128) and torch.isfinite(aligned.crop).all()
    mouth = aligned.landmarks[0, list(MOUTH_IDS)]
    left, right = mouth[MOUTH_IDS.index(48)], mouth[MOUTH_IDS.index(54)]
    # Corner line close to horizontal, mouth centred, width near mouth_width · crop.
    assert abs(float(right[1] - left[1])) < 0.15 * float(right[0] - left[0])
    torch.testing.assert_close(mouth.mean(0), torch.tensor([63.5, 63.5]), atol=2.0, rtol=0)
    assert 40 < float(right[0] - left[0]) < 90
    # The crop actually contains the mouth: lips are redder than the frame average.
    lips = aligned.crop[0, :, 50:78, 34:94]
    assert float(lips[0].mean() - lips[1].mean()) > 0.0
    with pytest.raises(ValueError, match="68"):
        align_mouths(image[None], truth[None, :20], crop_size=64)
    five = landmarks68_to_5(truth)
    assert five.shape == (5, 2)
