"""Tests of the embedded procedural morphable face (emoedit/face_model/procedural.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emoedit.face_model.camera import PerspectiveCamera
from emoedit.face_model.procedural import (
    DEEP3D_STANDARD_FIVE,
    EXPRESSION_NAMES,
    ProceduralFaceArrays,
    build_procedural_face,
)

# The keyword arguments of MorphableModel.__init__ (docs/agent/preamble.md).
MORPHABLE_MODEL_KWARGS = {
    "mean_shape",
    "id_basis",
    "exp_basis",
    "mean_albedo",
    "albedo_basis",
    "triangles",
    "landmark_ids",
    "uv_coords",
    "front_mask",
    "skin_mask",
    "expression_names",
    "name",
}

REQUIRED_AUS = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU12L", "AU14L",
    "AU15", "AU16", "AU17", "AU20", "AU23", "AU25", "AU26", "AU43",
)  # fmt: skip

# iBUG-68 left/right mirror partner of every landmark (0-based).
IBUG_MIRROR = np.array(
    [16 - k for k in range(17)]
    + [26, 25, 24, 23, 22, 21, 20, 19, 18, 17]
    + [27, 28, 29, 30, 35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
    + [64, 63, 62, 61, 60, 67, 66, 65]
)

BILATERAL_AUS = tuple(n for n in EXPRESSION_NAMES if not n.endswith("L"))


@pytest.fixture(scope="module")
def face() -> ProceduralFaceArrays:
    return build_procedural_face()


def _landmarks(face: ProceduralFaceArrays, exp: dict[str, float] | None = None) -> np.ndarray:
    """(68, 3) model-space landmarks of the mean identity with the given AU intensities."""
    return _shape(face, exp)[face.landmark_ids.numpy()]


def _shape(face: ProceduralFaceArrays, exp: dict[str, float] | None = None, id_coeff=None) -> np.ndarray:
    v = face.mean_shape.double().clone()
    for name, value in (exp or {}).items():
        v += value * face.exp_basis[:, :, face.expression_names.index(name)].double()
    if id_coeff is not None:
        v += torch.einsum("vck,k->vc", face.id_basis.double(), torch.as_tensor(id_coeff, dtype=torch.float64))
    return v.numpy()


def _face_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    p0, p1, p2 = (vertices[triangles[:, k]] for k in range(3))
    return np.cross(p1 - p0, p2 - p0)


def _project(vertices: np.ndarray) -> np.ndarray:
    """(N, 3) model space, identity pose -> (N, 2) pixels in the 224 crop."""
    cam = PerspectiveCamera()
    return cam.project(torch.as_tensor(vertices, dtype=torch.float32)[None])[0, :, :2].numpy()


def _mirror_map(face: ProceduralFaceArrays) -> np.ndarray:
    """Vertex id of the left/right mirror of each vertex, -1 for the mouth-cut duplicates
    (two vertices at one position, told apart only by their triangles)."""
    v = face.mean_shape.double().numpy()
    key = {tuple(np.round(p, 6)): i for i, p in enumerate(v)}
    counts: dict[tuple, int] = {}
    for p in v:
        counts[tuple(np.round(p, 6))] = counts.get(tuple(np.round(p, 6)), 0) + 1
    out = np.full(len(v), -1)
    for i, p in enumerate(v):
        m = (-p[0], p[1], p[2])
        k = tuple(np.round(m, 6))
        if counts.get(tuple(np.round(p, 6)), 0) == 1 and k in key and counts[k] == 1:
            out[i] = key[k]
    return out


# -- sizes, dtypes, determinism -------------------------------------------------------------


def test_sizes_dtypes_and_fields(face: ProceduralFaceArrays) -> None:
    assert {f for f in face.as_kwargs()} == MORPHABLE_MODEL_KWARGS
    v, f = face.num_vertices, face.num_faces
    assert 2000 <= v <= 6000 and 4000 <= f <= 12000, (v, f)
    assert face.mean_shape.shape == (v, 3) and face.mean_shape.dtype == torch.float32
    assert face.id_basis.shape == (v, 3, 40) and face.id_basis.dtype == torch.float32
    assert face.exp_basis.shape == (v, 3, len(EXPRESSION_NAMES)) and face.exp_basis.dtype == torch.float32
    assert face.mean_albedo.shape == (v, 3) and face.mean_albedo.dtype == torch.float32
    assert face.albedo_basis.shape == (v, 3, 40) and face.albedo_basis.dtype == torch.float32
    assert face.triangles.shape == (f, 3) and face.triangles.dtype == torch.int64
    assert face.landmark_ids.shape == (68,) and face.landmark_ids.dtype == torch.int64
    assert face.uv_coords.shape == (v, 2) and face.uv_coords.dtype == torch.float32
    assert face.front_mask.shape == (v,) and face.front_mask.dtype == torch.bool
    assert face.skin_mask.shape == (v,) and face.skin_mask.dtype == torch.bool
    assert face.name == "procedural"
    assert face.expression_names == EXPRESSION_NAMES
    assert set(REQUIRED_AUS) <= set(face.expression_names)
    assert len(set(face.expression_names)) == len(face.expression_names)
    for name in ("mean_shape", "id_basis", "exp_basis", "mean_albedo", "albedo_basis", "uv_coords"):
        assert torch.isfinite(getattr(face, name)).all(), name
    assert int(face.triangles.min()) == 0 and int(face.triangles.max()) == v - 1
    assert len(torch.unique(face.triangles)) == v  # no unused vertex
    ids = face.landmark_ids
    assert int(ids.min()) >= 0 and int(ids.max()) < v
    assert len(torch.unique(ids)) == 68  # inner-lip pairs are distinct vertices (the cut)
    assert float(face.mean_albedo.min()) >= 0.0 and float(face.mean_albedo.max()) <= 1.0


def test_build_is_fast_and_deterministic() -> None:
    start = time.perf_counter()
    a = build_procedural_face(seed=3)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"build took {elapsed:.2f} s"  # ~0.3 s on one free core
    b = build_procedural_face(seed=3)
    for name, value in a.as_kwargs().items():
        other = b.as_kwargs()[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), name
        else:
            assert value == other, name


def test_seed_changes_only_the_random_parts_of_the_bases() -> None:
    a, b = build_procedural_face(seed=0), build_procedural_face(seed=1)
    for name in ("mean_shape", "exp_basis", "mean_albedo", "triangles", "landmark_ids", "uv_coords", "front_mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.allclose(a.id_basis, b.id_basis, atol=1e-4)
    assert not torch.allclose(a.albedo_basis, b.albedo_basis, atol=1e-4)
    # ... yet the leading identity directions (hand-designed variations) are similar.
    top_a, top_b = a.id_basis[..., 0].flatten(), b.id_basis[..., 0].flatten()
    cos = float(top_a @ top_b / (top_a.norm() * top_b.norm()))
    assert abs(cos) > 0.8


def test_sizes_are_configurable() -> None:
    small = build_procedural_face(resolution=32, num_identity=12, num_albedo=5)
    assert small.num_vertices < build_procedural_face().num_vertices
    assert small.id_basis.shape[-1] == 12 and small.albedo_basis.shape[-1] == 5
    big = build_procedural_face(resolution=64, num_identity=80, num_albedo=80)
    assert big.id_basis.shape[-1] == 80 and big.albedo_basis.shape[-1] == 80
    assert big.num_vertices > 4000
    assert torch.linalg.norm(big.id_basis[..., -1]) > 1e-4
    with pytest.raises(ValueError, match="resolution"):
        build_procedural_face(resolution=10)
    with pytest.raises(ValueError, match="num_identity"):
        build_procedural_face(num_identity=0)
    with pytest.raises(ValueError, match="num_albedo"):
        build_procedural_face(num_albedo=-1)


# -- topology, normals, UVs -----------------------------------------------------------------


def test_triangles_are_outward_and_not_degenerate(face: ProceduralFaceArrays) -> None:
    v = face.mean_shape.double().numpy()
    tri = face.triangles.numpy()
    n = _face_normals(v, tri)
    area = 0.5 * np.linalg.norm(n, axis=1)
    assert area.min() > 1e-3 * np.median(area), (area.min(), np.median(area))
    unit = n / np.linalg.norm(n, axis=1, keepdims=True)
    front = face.front_mask.numpy()[tri].all(axis=1)
    assert front.sum() > 0.6 * len(tri)
    assert (unit[front, 2] > 0.0).all(), f"{(unit[front, 2] <= 0).sum()} front triangles face away"
    assert unit[front, 2].mean() > 0.7
    # Every edge is shared by at most two triangles, and consistently oriented ones
    # (a manifold, no flipped triangle): each directed edge appears once.
    directed = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)


def test_uv_is_a_valid_parametrisation(face: ProceduralFaceArrays) -> None:
    uv = face.uv_coords.double().numpy()
    v = face.mean_shape.double().numpy()
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    assert uv[:, 0].min() < 0.01 and uv[:, 0].max() > 0.99 and uv[:, 1].min() < 0.01 and uv[:, 1].max() > 0.99
    tri = face.triangles.numpy()
    a, b, c = uv[tri[:, 0]], uv[tri[:, 1]], uv[tri[:, 2]]
    signed = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    assert (np.abs(signed) > 1e-7).all()
    assert (np.sign(signed) == np.sign(signed[0])).all(), "some UV triangles are flipped"
    # u grows to the right (+x), v grows downward (-y); v = 0 at the top of the forehead.
    assert np.corrcoef(uv[:, 0], v[:, 0])[0, 1] > 0.95
    assert np.corrcoef(uv[:, 1], v[:, 1])[0, 1] < -0.9
    assert uv[np.argmax(v[:, 1]), 1] < 0.05


def test_mouth_is_cut_along_the_lip_line(face: ProceduralFaceArrays) -> None:
    lm_rest = _landmarks(face)
    for upper, lower in ((62, 66), (61, 67), (63, 65)):
        assert np.linalg.norm(lm_rest[upper] - lm_rest[lower]) < 1e-6, (upper, lower)
    # The cut is open in the topology: the coincident vertex pairs only ever meet in
    # boundary edges, and no triangle uses both copies.
    v = face.mean_shape.double().numpy()
    tri = face.triangles.numpy()
    _, inverse, counts = np.unique(np.round(v, 7), axis=0, return_inverse=True, return_counts=True)
    dup = counts[inverse.reshape(-1)] > 1
    assert dup.sum() >= 2 * 5  # at least five cut columns, two copies each
    same_position = inverse.reshape(-1)[tri]
    assert not (
        (same_position[:, 0] == same_position[:, 1])
        | (same_position[:, 1] == same_position[:, 2])
        | (same_position[:, 0] == same_position[:, 2])
    ).any()
    # Jaw drop opens a hole: the inner-lip pairs separate, and no triangle stretches across.
    open_ = _shape(face, {"AU26": 1.0})
    lm_open = open_[face.landmark_ids.numpy()]
    assert np.linalg.norm(lm_open[62] - lm_open[66]) > 0.12  # > 12 mm
    assert np.linalg.norm(lm_open[51] - lm_open[57]) > np.linalg.norm(lm_rest[51] - lm_rest[57]) + 0.1

    def edges(x: np.ndarray) -> np.ndarray:
        return np.stack([np.linalg.norm(x[tri[:, i]] - x[tri[:, (i + 1) % 3]], axis=1) for i in range(3)], 1)

    stretch = edges(open_) / edges(v)
    assert stretch.max() < 3.0, stretch.max()
    # Lips part separates the rows without moving the chin much.
    parted = _landmarks(face, {"AU25": 1.0})
    assert np.linalg.norm(parted[62] - parted[66]) > 0.04
    assert np.linalg.norm(parted[8] - lm_rest[8]) < 0.01


# -- landmarks --------------------------------------------------------------------------------


def test_landmarks_project_to_a_face_layout(face: ProceduralFaceArrays) -> None:
    px = _project(_landmarks(face))  # (68, 2) pixels, y down
    assert (px > 0).all() and (px < 223).all()
    eyes_y = px[36:48, 1].mean()
    nose_tip_y, mouth_y, chin_y = px[30, 1], px[[62, 66], 1].mean(), px[8, 1]
    brows_y = px[17:27, 1].mean()
    assert brows_y < eyes_y < nose_tip_y < mouth_y < chin_y
    assert px[36, 0] < px[39, 0] < px[42, 0] < px[45, 0]  # eye corners left to right
    assert px[48, 0] < px[62, 0] < px[54, 0]
    assert px[0, 0] < px[36, 0] and px[16, 0] > px[45, 0]
    for k in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert abs(px[k, 0] - 112.0) < 1e-3, k  # midline: the principal point's column
    # Left/right symmetric about the principal point.
    mirrored = px[IBUG_MIRROR]
    np.testing.assert_allclose(px[:, 0] + mirrored[:, 0], 224.0, atol=1e-3)
    np.testing.assert_allclose(px[:, 1], mirrored[:, 1], atol=1e-3)
    # Size: the jaw contour spans about 60% of the crop; the five alignment points sit
    # where Deep3D's template puts them.
    jaw_width = px[16, 0] - px[0, 0]
    assert 120 < jaw_width < 160, jaw_width
    lm = _landmarks(face)
    five = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    np.testing.assert_allclose(_project(five), _project(DEEP3D_STANDARD_FIVE), atol=4.0)


# -- expression basis -------------------------------------------------------------------------


def _au_landmarks(face: ProceduralFaceArrays, name: str) -> tuple[np.ndarray, np.ndarray]:
    return _landmarks(face), _landmarks(face, {name: 1.0})


def test_every_action_unit_is_a_plausible_local_field(face: ProceduralFaceArrays) -> None:
    for k, name in enumerate(face.expression_names):
        d = face.exp_basis[..., k].double().numpy()
        mag = np.linalg.norm(d, axis=1)
        assert 0.01 < mag.max() < 0.5, (name, mag.max())  # 1 mm .. 5 cm
        assert (mag > 0.1 * mag.max()).mean() < 0.35, name  # localised
    upper_face = ("AU1", "AU2", "AU4", "AU5", "AU7", "AU43")
    mouth = [n for n in face.expression_names if n not in upper_face + ("AU6", "AU9")]
    ids = face.landmark_ids.numpy()
    for name in upper_face:
        d = face.exp_basis[ids, :, face.expression_names.index(name)].double().numpy()
        assert np.abs(d[48:68]).max() < 1e-3, name
    for name in mouth:
        d = face.exp_basis[ids, :, face.expression_names.index(name)].double().numpy()
        assert np.abs(d[17:27]).max() < 1e-3 and np.abs(d[36:48]).max() < 2e-3, name


def test_bilateral_action_units_are_symmetric(face: ProceduralFaceArrays) -> None:
    mirror = _mirror_map(face)
    valid = mirror >= 0
    assert valid.mean() > 0.95
    flip = np.array([-1.0, 1.0, 1.0])
    ids = face.landmark_ids.numpy()
    for name in BILATERAL_AUS:
        d = face.exp_basis[..., face.expression_names.index(name)].double().numpy()
        np.testing.assert_allclose(d[valid], d[mirror[valid]] * flip, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(d[ids], d[ids[IBUG_MIRROR]] * flip, atol=1e-5, err_msg=name)


def test_brow_action_units(face: ProceduralFaceArrays) -> None:
    rest, au1 = _au_landmarks(face, "AU1")
    _, au2 = _au_landmarks(face, "AU2")
    _, au4 = _au_landmarks(face, "AU4")
    inner, outer = [21, 22], [17, 26]
    assert (au1[inner, 1] - rest[inner, 1]).min() > 0.04
    assert (au2[outer, 1] - rest[outer, 1]).min() > 0.03
    assert (au1[inner, 1] - rest[inner, 1]).min() > (au1[outer, 1] - rest[outer, 1]).max()
    assert (au2[outer, 1] - rest[outer, 1]).min() > (au2[inner, 1] - rest[inner, 1]).max()
    _, both = _landmarks(face), _landmarks(face, {"AU1": 1.0, "AU2": 1.0})
    assert (both[17:27, 1] - rest[17:27, 1]).min() > 0.02
    assert (au4[inner, 1] - rest[inner, 1]).max() < -0.03
    assert abs(au4[22, 0] - au4[21, 0]) < abs(rest[22, 0] - rest[21, 0]) - 0.03
    # None of them moves the lid margins.
    for moved in (au1, au2, au4):
        assert np.abs(moved[36:48] - rest[36:48]).max() < 2e-3


def _eye_openings(lm: np.ndarray) -> np.ndarray:
    return np.linalg.norm(lm[[37, 38, 43, 44]] - lm[[41, 40, 47, 46]], axis=1)


def test_eye_action_units(face: ProceduralFaceArrays) -> None:
    rest = _landmarks(face)
    open_rest = _eye_openings(rest)
    assert (open_rest > 0.07).all()
    closed = _landmarks(face, {"AU43": 1.0})
    assert (_eye_openings(closed) < 0.25 * open_rest).all(), _eye_openings(closed)
    half = _landmarks(face, {"AU43": 0.5})
    assert (_eye_openings(half) < 0.75 * open_rest).all() and (_eye_openings(half) > 0.3 * open_rest).all()
    wide = _landmarks(face, {"AU5": 1.0})
    assert (_eye_openings(wide) > open_rest + 0.025).all()
    assert (wide[[37, 38, 43, 44], 1] > rest[[37, 38, 43, 44], 1]).all()
    for name in ("AU6", "AU7"):
        moved = _landmarks(face, {name: 1.0})
        assert (moved[[40, 41, 46, 47], 1] - rest[[40, 41, 46, 47], 1]).min() > 0.01, name
        assert (_eye_openings(moved) < open_rest - 0.01).all(), name


def test_lip_corner_action_units(face: ProceduralFaceArrays) -> None:
    rest = _landmarks(face)
    smile = _landmarks(face, {"AU12": 1.0})
    d = smile - rest
    assert d[48, 1] > 0.03 and d[54, 1] > 0.03  # corners up
    assert d[48, 0] < -0.02 and d[54, 0] > 0.02  # and outward
    assert np.linalg.norm(smile[62] - smile[66]) < 1e-6  # the mouth stays closed
    one = _landmarks(face, {"AU12L": 1.0}) - rest
    assert one[54, 1] > 0.03 and np.abs(one[48]).max() < 0.1 * np.abs(one[54]).max()
    dimple = face.exp_basis[..., face.expression_names.index("AU14L")].double().numpy()
    x = face.mean_shape.double().numpy()[:, 0]
    assert np.abs(dimple[x < -0.05]).max() < 1e-3 * np.abs(dimple).max() + 1e-6
    assert np.abs(dimple[x > 0.05]).max() > 0.01
    d = _landmarks(face, {"AU15": 1.0}) - rest
    assert d[48, 1] < -0.03 and d[54, 1] < -0.03
    d = _landmarks(face, {"AU20": 1.0}) - rest
    assert d[48, 0] < -0.03 and d[54, 0] > 0.03
    d = _landmarks(face, {"AU18": 1.0}) - rest
    assert d[48, 0] > 0.03 and d[54, 0] < -0.03 and d[51, 2] > 0.02


def test_lip_and_jaw_action_units(face: ProceduralFaceArrays) -> None:
    rest = _landmarks(face)

    def gap(lm: np.ndarray) -> float:
        return float(np.linalg.norm(lm[62] - lm[66]))

    raised = _landmarks(face, {"AU10": 1.0})
    assert raised[51, 1] - rest[51, 1] > 0.03 and gap(raised) > 0.03 and abs(raised[57, 1] - rest[57, 1]) < 0.005
    lowered = _landmarks(face, {"AU16": 1.0})
    assert lowered[57, 1] - rest[57, 1] < -0.03 and gap(lowered) > 0.03 and abs(lowered[51, 1] - rest[51, 1]) < 0.005
    jaw = _landmarks(face, {"AU26": 1.0})
    assert jaw[8, 1] - rest[8, 1] < -0.12  # chin down
    assert np.abs(jaw[[51, 62]] - rest[[51, 62]]).max() < 0.01  # upper lip stays
    assert gap(_landmarks(face, {"AU27": 1.0})) > gap(jaw) + 0.05
    chin = _landmarks(face, {"AU17": 1.0})
    assert chin[8, 1] - rest[8, 1] > 0.02 and gap(chin) < 1e-6
    for name in ("AU23", "AU24"):
        tight = _landmarks(face, {name: 1.0})
        lip_height = np.linalg.norm(tight[51] - tight[57])
        assert lip_height < np.linalg.norm(rest[51] - rest[57]) - 0.02, name
        assert gap(tight) < 1e-6, name
    nose = _landmarks(face, {"AU9": 1.0})
    assert (nose[[31, 35], 1] - rest[[31, 35], 1]).min() > 0.01
    assert (nose[[21, 22], 1] - rest[[21, 22], 1]).max() < -0.01


# -- identity and albedo ---------------------------------------------------------------------


def test_identity_basis_is_orthogonal_smooth_and_plausible(face: ProceduralFaceArrays) -> None:
    basis = face.id_basis.double().numpy()
    flat = basis.reshape(-1, basis.shape[-1])
    norms = np.linalg.norm(flat, axis=0)
    assert (norms > 0.05).all()
    assert (np.diff(norms) <= 1e-9).all()  # sorted by variance
    gram = flat.T @ flat / np.outer(norms, norms)
    np.testing.assert_allclose(gram, np.eye(len(norms)), atol=1e-6)
    # Smooth: over every mesh edge a column changes little compared to the edge length.
    v = face.mean_shape.double().numpy()
    tri = face.triangles.numpy()
    edges = np.unique(np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1), axis=0)
    length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
    for k in range(basis.shape[-1]):
        grad = np.linalg.norm(basis[edges[:, 0], :, k] - basis[edges[:, 1], :, k], axis=1) / length
        assert grad.max() < 0.3, (k, grad.max())
    # A random person: millimetres to a centimetre of change, still a valid closed-mouth face.
    rng = np.random.default_rng(0)
    front = face.front_mask.numpy()
    for _ in range(5):
        person = _shape(face, id_coeff=rng.normal(size=basis.shape[-1]))
        change = np.linalg.norm(person - v, axis=1)
        assert 0.01 < np.sqrt((change[front] ** 2).mean()) < 0.1
        assert change.max() < 0.35
        lm = person[face.landmark_ids.numpy()]
        assert np.linalg.norm(lm[62] - lm[66]) < 1e-6
        n = _face_normals(person, tri)
        on_front = front[tri].all(axis=1)
        assert (n[on_front, 2] > 0).mean() > 0.995


def _near(face: ProceduralFaceArrays, landmarks: list[int], radius: float) -> np.ndarray:
    """Ids of the vertices within ``radius`` (face plane) of the given landmarks."""
    v = face.mean_shape.double().numpy()
    lm = v[face.landmark_ids.numpy()[landmarks]]
    d = np.linalg.norm(v[:, None, :2] - lm[None, :, :2], axis=-1).min(axis=1)
    return np.nonzero(d < radius)[0]


def test_albedo_has_readable_features(face: ProceduralFaceArrays) -> None:
    alb = face.mean_albedo.double().numpy()
    skin = alb[face.skin_mask.numpy()]
    skin_mean = skin.mean(0)
    assert skin_mean[0] > skin_mean[1] > skin_mean[2]  # warm skin tone
    assert 0.4 < skin_mean.mean() < 0.8
    lips = alb[_near(face, [61, 62, 63, 65, 66, 67], 0.03)].mean(0)
    assert lips[0] / lips[1] > 1.25 * skin_mean[0] / skin_mean[1]  # redder
    assert lips.mean() < skin_mean.mean()
    brows = alb[_near(face, list(range(18, 26)), 0.015)].mean(0)
    assert brows.mean() < skin_mean.mean() - 0.2
    eye = alb[_near(face, list(range(36, 48)), 0.05)]
    assert eye.mean(1).max() > 0.8  # white of the eye
    assert eye.mean(1).min() < 0.15  # pupil
    # The albedo basis: non-zero columns; random people stay (mostly) in range.
    basis = face.albedo_basis.double().numpy()
    assert (np.linalg.norm(basis.reshape(-1, basis.shape[-1]), axis=0) > 1e-3).all()
    rng = np.random.default_rng(0)
    people = alb[None] + np.einsum("vck,nk->nvc", basis, rng.normal(size=(8, basis.shape[-1])))
    assert ((people >= 0) & (people <= 1)).mean() > 0.99
    assert people.std(axis=0)[face.skin_mask.numpy()].mean() > 0.03  # people do differ


def test_masks(face: ProceduralFaceArrays) -> None:
    front, skin = face.front_mask.numpy(), face.skin_mask.numpy()
    assert not (skin & ~front).any()
    assert 0.5 < front.mean() < 0.95 and skin.sum() > 0.6 * front.sum()
    ids = face.landmark_ids.numpy()
    assert front[ids[17:]].all()  # every inner landmark lies on the front
    assert not skin[ids[36:48]].any() and not skin[ids[60:68]].any()  # eyes and lips are not skin
    cheeks = _near(face, [3, 13], 0.12)
    assert skin[cheeks].mean() > 0.5


# -- through MorphableModel (engineer A's module, when present) -------------------------------

_MORPHABLE = Path(__file__).resolve().parents[1] / "emoedit" / "face_model" / "morphable_model.py"


@pytest.mark.skipif(not _MORPHABLE.exists(), reason="emoedit/face_model/morphable_model.py not written yet")
def test_through_morphable_model() -> None:
    from emoedit.face_model.morphable_model import MorphableModel

    model = MorphableModel.procedural(resolution=32, num_identity=10, num_albedo=6)
    arrays = build_procedural_face(resolution=32, num_identity=10, num_albedo=6)
    assert model.num_vertices == arrays.num_vertices and model.num_faces == arrays.num_faces
    layout = model.layout
    assert (layout.id, layout.exp, layout.tex) == (10, len(EXPRESSION_NAMES), 6)
    coeffs = torch.zeros(2, layout.size)
    exp = layout.slices["exp"]
    coeffs[1, exp.start + EXPRESSION_NAMES.index("AU26")] = 1.0
    out = model(coeffs, PerspectiveCamera())
    assert out.landmarks.shape == (2, 68, 2)
    rest_px = _project(arrays.mean_shape[arrays.landmark_ids].double().numpy())
    np.testing.assert_allclose(out.landmarks[0].detach().numpy(), rest_px, atol=1e-3)
    gap = (out.landmarks[:, 66] - out.landmarks[:, 62]).norm(dim=-1)
    assert float(gap[0]) < 1e-3 and float(gap[1]) > 10.0  # pixels
