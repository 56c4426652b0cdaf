"""Face-model loaders on real data fixtures (3DDFA's reduced BFM, Deep3DFaceRecon's aux files).

The licensed BFM09 itself is not available: the conversion test builds a FAKE
``01_MorphableModel.mat`` (random bases, 80 components; the mean shape is real BFM geometry
taken from the 3DDFA fixture so that the converted face has a real topology and layout)
and a fake ``Exp_Pca.bin``, converts them with the real Deep3DFaceRecon aux files and checks
the result value by value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from emoedit.face_model import MorphableModel, PerspectiveCamera, convert_bfm09
from emoedit.face_model.bfm09_conversion import BFM09_VERTICES, EXP_VERTICES

NUM_PC = 80  # the converter needs >= 80 shape/texture components (the official file has 199)
EXP_DIM = 79


def _bfm_3ddfa_dir(fixtures_dir: Path) -> Path:
    directory = fixtures_dir / "facemodels" / "bfm_3ddfa"
    if not directory.is_dir():
        pytest.skip(f"3DDFA face model fixture not found at {directory}")
    return directory


def _aux_dir(fixtures_dir: Path) -> Path:
    directory = fixtures_dir / "facemodels" / "deep3d_bfm_aux"
    if not directory.is_dir():
        pytest.skip(f"Deep3DFaceRecon aux fixture not found at {directory}")
    return directory


def _check_face_layout(landmarks: torch.Tensor, image_size: int = 224, symmetry_px: float = 3.0) -> None:
    """Landmarks (68, 2) in pixels of an upright frontal face (mirror symmetric within ``symmetry_px``)."""
    lm = landmarks
    assert (lm >= 0).all() and (lm <= image_size - 1).all(), "landmarks outside the image"
    right_eye, left_eye = lm[36:42].mean(0), lm[42:48].mean(0)  # subject's right eye is image-left
    nose_tip, mouth, chin = lm[30], lm[48:68].mean(0), lm[8]
    assert right_eye[0] < nose_tip[0] < left_eye[0]
    eye_y = 0.5 * (right_eye[1] + left_eye[1])
    assert eye_y < nose_tip[1] < mouth[1] < chin[1]  # y grows downward
    assert abs((nose_tip[0] - right_eye[0]) - (left_eye[0] - nose_tip[0])) < symmetry_px
    assert abs(right_eye[1] - left_eye[1]) < symmetry_px
    assert (lm[0:17, 1] > eye_y - 10).all(), "jaw points must lie below the eyes"
    inter_ocular = float((left_eye - right_eye).norm())
    assert 55.0 < inter_ocular < 110.0, inter_ocular


# ---------------------------------------------------------------- 3DDFA
@pytest.fixture(scope="module")
def model_3ddfa(fixtures_dir: Path) -> MorphableModel:
    return MorphableModel.from_3ddfa(_bfm_3ddfa_dir(fixtures_dir))


def test_3ddfa_loads(model_3ddfa: MorphableModel) -> None:
    model = model_3ddfa
    assert model.num_vertices == 53215 and model.num_faces == 105840
    assert model.layout.id == 40 and model.layout.exp == 10 and model.layout.tex == 0
    assert model.layout.size == 40 + 10 + 0 + 33
    torch.testing.assert_close(model.mean_shape.mean(0), torch.zeros(3), atol=1e-5, rtol=0)  # re-centred
    extent = model.mean_shape.amax(0) - model.mean_shape.amin(0)
    assert 1.4 < float(extent[0]) < 2.2  # ~18 cm wide head: decimetre scale
    assert model.front_mask is None and model.skin_mask is None


def test_3ddfa_zero_pose_landmarks_and_normals(model_3ddfa: MorphableModel) -> None:
    model = model_3ddfa
    out = model(model.layout.zeros(1), PerspectiveCamera())
    _check_face_layout(out.landmarks[0])
    assert torch.isfinite(out.vertex_colors).all()
    # the nose-tip region faces the camera
    nose_tip = model.mean_shape[model.landmark_ids[30]]
    near = (model.mean_shape - nose_tip).norm(dim=-1) < 0.05  # within 5 mm
    assert int(near.sum()) >= 5
    assert (out.normals[0, near, 2] > 0.5).all()
    assert float(out.normals[0, near].mean(0)[2]) > 0.8
    # winding is outward overall: projected area toward the viewer is positive
    v = model.mean_shape
    tri = model.triangles
    cross = torch.linalg.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]], dim=-1)
    assert float(cross[:, 2].sum()) > 0


def test_3ddfa_uv_downward(model_3ddfa: MorphableModel) -> None:
    uv = model_3ddfa.uv_coords
    ids = model_3ddfa.landmark_ids
    assert float(uv.min()) >= 0 and float(uv.max()) <= 1
    assert uv[ids[36], 1] < uv[ids[30], 1] < uv[ids[8], 1]  # eye above nose above chin
    assert uv[ids[36], 0] < uv[ids[45], 0]


def test_3ddfa_coefficients_give_plausible_faces(model_3ddfa: MorphableModel) -> None:
    model = model_3ddfa
    g = torch.Generator().manual_seed(0)
    coeffs = model.layout.zeros(4)
    sl = model.layout.slices
    coeffs[:, sl["id"]] = torch.randn(4, model.layout.id, generator=g)
    coeffs[:, sl["exp"]] = torch.randn(4, model.layout.exp, generator=g)
    out = model(coeffs, PerspectiveCamera())
    rms_mm = float((out.vertices - model.mean_shape).norm(dim=-1).pow(2).mean().sqrt()) * 100
    assert 1.0 < rms_mm < 15.0, rms_mm
    for b in range(4):
        _check_face_layout(out.landmarks[b], symmetry_px=10.0)  # random identities are asymmetric


def test_3ddfa_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="u_shp.npy"):
        MorphableModel.from_3ddfa(tmp_path)


# ---------------------------------------------------------------- BFM09 -> Deep3D conversion
@pytest.fixture(scope="module")
def fake_bfm09(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    aux = _aux_dir(fixtures_dir)
    u_shp = np.load(_bfm_3ddfa_dir(fixtures_dir) / "u_shp.npy").reshape(-1, 3)
    folder = tmp_path_factory.mktemp("bfm09")
    rng = np.random.default_rng(0)
    trim = loadmat(str(aux / "BFM_exp_idx.mat"))["trimIndex"].astype(np.int64).ravel() - 1
    shape_mu = rng.normal(0.0, 1e4, size=(BFM09_VERTICES, 3)).astype(np.float32)
    shape_mu[trim] = u_shp  # real BFM geometry on the 53,215 vertices 3DDFA kept
    sources = {
        "shapeMU": shape_mu.reshape(-1, 1),
        "shapePC": rng.standard_normal((3 * BFM09_VERTICES, NUM_PC), dtype=np.float32) * 0.003,
        "shapeEV": (rng.random((NUM_PC, 1), dtype=np.float32) * 5e5).astype(np.float32),
        "texMU": (rng.random((3 * BFM09_VERTICES, 1), dtype=np.float32) * 255).astype(np.float32),
        "texPC": rng.standard_normal((3 * BFM09_VERTICES, NUM_PC), dtype=np.float32) * 0.003,
        "texEV": (rng.random((NUM_PC, 1), dtype=np.float32) * 1e3).astype(np.float32),
    }
    savemat(str(folder / "01_MorphableModel.mat"), sources)
    exp_pc = rng.standard_normal((EXP_DIM, 3 * EXP_VERTICES), dtype=np.float32) * 0.003
    with open(folder / "Exp_Pca.bin", "wb") as handle:
        np.array([EXP_DIM], dtype="<i4").tofile(handle)
        rng.standard_normal(3 * EXP_VERTICES, dtype=np.float32).tofile(handle)  # expMU (unused)
        exp_pc.tofile(handle)
    out = convert_bfm09(folder / "01_MorphableModel.mat", folder / "Exp_Pca.bin", aux, folder / "BFM_model_front.mat")
    index_exp = loadmat(str(aux / "BFM_front_idx.mat"))["idx"].astype(np.int64).ravel() - 1
    return {
        "path": out,
        "folder": folder,
        "aux": aux,
        "sources": sources,
        "exp_pc": exp_pc,
        "exp_ev": np.loadtxt(aux / "std_exp.txt"),
        "index_exp": index_exp,
        "index_shape": trim[index_exp],
        "model": MorphableModel.from_deep3d_mat(out),
    }


def test_bfm09_conversion_file_keys(fake_bfm09: dict) -> None:
    mat = loadmat(str(fake_bfm09["path"]))
    assert mat["meanshape"].shape == (1, 3 * 35709)
    assert mat["idBase"].shape == (3 * 35709, 80)
    assert mat["exBase"].shape == (3 * 35709, 64)
    assert mat["texBase"].shape == (3 * 35709, 80)
    for key in ("tri", "keypoints", "point_buf", "tri_mask2", "frontmask2_idx", "skinmask"):
        assert key in mat, key
    assert not [p for p in fake_bfm09["folder"].iterdir() if p.name.startswith(".")]  # no temp files


def test_bfm09_conversion_known_values(fake_bfm09: dict) -> None:
    model: MorphableModel = fake_bfm09["model"]
    src = fake_bfm09["sources"]
    index_shape, index_exp = fake_bfm09["index_shape"], fake_bfm09["index_exp"]
    assert model.num_vertices == 35709 and model.num_faces == 70789
    assert model.layout == model.layout.deep3d()
    assert model.landmark_ids.shape == (68,)
    mean = src["shapeMU"].reshape(-1, 3)[index_shape].astype(np.float64) / 1e5
    expected_mean = mean - mean.mean(0)
    np.testing.assert_allclose(model.mean_shape.numpy(), expected_mean, atol=2e-6)
    for v in (0, 1234, 35708):
        for c in range(3):
            for k in (0, 17, 79):
                row = 3 * index_shape[v] + c
                want_id = src["shapePC"][row, k] * np.float64(src["shapeEV"][k, 0]) / 1e5
                assert model.id_basis[v, c, k].item() == pytest.approx(want_id, rel=1e-5, abs=1e-9)
                want_tex = src["texPC"][row, k] * np.float64(src["texEV"][k, 0]) / 255.0
                assert model.albedo_basis[v, c, k].item() == pytest.approx(want_tex, rel=1e-5, abs=1e-9)
            for k in (0, 63):
                want_exp = fake_bfm09["exp_pc"][k, 3 * index_exp[v] + c] * fake_bfm09["exp_ev"][k] / 1e5
                assert model.exp_basis[v, c, k].item() == pytest.approx(want_exp, rel=1e-5, abs=1e-9)
            want_albedo = src["texMU"][3 * index_shape[v] + c, 0] / 255.0
            assert model.mean_albedo[v, c].item() == pytest.approx(want_albedo, rel=1e-5)


def test_deep3d_front_model_topology(fake_bfm09: dict) -> None:
    model: MorphableModel = fake_bfm09["model"]
    info = loadmat(str(fake_bfm09["aux"] / "facemodel_info.mat"))
    # Deep3D's triangles are already outward: kept as they are (0-based)
    np.testing.assert_array_equal(model.triangles.numpy(), info["tri"].astype(np.int64) - 1)
    np.testing.assert_array_equal(model.landmark_ids.numpy(), info["keypoints"].astype(np.int64).ravel() - 1)
    assert model.front_mask is not None and int(model.front_mask.sum()) == info["frontmask2_idx"].size
    assert model.skin_mask is not None and int(model.skin_mask.sum()) == int(info["skinmask"].sum())
    out = model(model.layout.zeros(1), PerspectiveCamera())
    _check_face_layout(out.landmarks[0])
    nose = model.landmark_ids[30]
    assert float(out.normals[0, nose, 2]) > 0.5
    uv = model.uv_coords
    assert float(uv.min()) >= 0 and float(uv.max()) <= 1
    ids = model.landmark_ids
    assert uv[ids[36], 0] < uv[ids[30], 0] < uv[ids[45], 0]
    assert uv[ids[36], 1] < uv[ids[30], 1] < uv[ids[8], 1]


def test_deep3d_save_load_round_trip(fake_bfm09: dict, tmp_path: Path) -> None:
    model: MorphableModel = fake_bfm09["model"]
    loaded = MorphableModel.load(model.save(tmp_path / "bfm.pt"))
    for key, value in model.named_buffers():
        assert torch.equal(getattr(loaded, key), value), key


def test_bfm09_conversion_missing_inputs(fixtures_dir: Path, tmp_path: Path) -> None:
    aux = _aux_dir(fixtures_dir)
    with pytest.raises(FileNotFoundError, match="01_MorphableModel.mat.*Basel"):
        convert_bfm09(tmp_path / "01_MorphableModel.mat", tmp_path / "Exp_Pca.bin", aux, tmp_path / "out.mat")
    (tmp_path / "01_MorphableModel.mat").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="Exp_Pca.bin"):
        convert_bfm09(tmp_path / "01_MorphableModel.mat", tmp_path / "Exp_Pca.bin", aux, tmp_path / "out.mat")
    (tmp_path / "Exp_Pca.bin").write_bytes(np.array([79], dtype="<i4").tobytes() + b"\0" * 16)
    with pytest.raises(FileNotFoundError, match="auxiliary file .BFM_front_idx.mat"):
        convert_bfm09(tmp_path / "01_MorphableModel.mat", tmp_path / "Exp_Pca.bin", tmp_path, tmp_path / "out.mat")
    assert not (tmp_path / "out.mat").exists()


def test_exp_pca_bad_size(tmp_path: Path) -> None:
    from emoedit.face_model.bfm09_conversion import read_exp_pca

    path = tmp_path / "Exp_Pca.bin"
    path.write_bytes(np.array([79], dtype="<i4").tobytes() + b"\0" * 16)
    with pytest.raises(ValueError, match="Exp_Pca.bin"):
        read_exp_pca(path)


def test_deep3d_mat_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "BFM_model_front.mat"
    savemat(str(path), {"meanshape": np.zeros((1, 9), dtype=np.float32)})
    with pytest.raises(KeyError, match="BFM_model_front.mat.*idBase"):
        MorphableModel.from_deep3d_mat(path)
    not_mat = tmp_path / "junk.mat"
    not_mat.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="junk.mat"):
        MorphableModel.from_deep3d_mat(not_mat)
