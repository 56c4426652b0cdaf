"""Fast tests of emoedit.face_model on a tiny hand-made mesh (no data files)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from emoedit.face_model import (
    CoeffLayout,
    Coeffs,
    FaceModelOutput,
    MorphableModel,
    PerspectiveCamera,
    euler_to_rotation,
    sh_irradiance,
)
from emoedit.face_model.loaders import orient_triangles_outward
from emoedit.face_model.uv_unwrap import cylindrical_uv

K_ID, K_EXP, K_TEX = 4, 3, 2


def _grid_face(n: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An n×n height-field bump facing +z (decimetres), outward-wound triangles, grid UV."""
    ys, xs = torch.meshgrid(torch.linspace(0.8, -0.8, n), torch.linspace(-0.8, 0.8, n), indexing="ij")
    zs = 0.5 * torch.exp(-(xs**2 + ys**2) / 0.5)
    vertices = torch.stack([xs, ys, zs], dim=-1).reshape(-1, 3)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            # row i is above row i+1 (y decreases), so a→c→b is counter-clockwise seen from +z
            faces.append((a, c, b))
            faces.append((b, c, d))
    uv = torch.stack([(xs + 0.8) / 1.6, (0.8 - ys) / 1.6], dim=-1).reshape(-1, 2)
    return vertices, torch.tensor(faces, dtype=torch.int64), uv


def _tiny_model(*, tex: int = K_TEX, masks: bool = True) -> MorphableModel:
    g = torch.Generator().manual_seed(1)
    vertices, triangles, uv = _grid_face()
    num_v = vertices.shape[0]
    return MorphableModel(
        mean_shape=vertices,
        id_basis=0.01 * torch.randn(num_v, 3, K_ID, generator=g),
        exp_basis=0.01 * torch.randn(num_v, 3, K_EXP, generator=g),
        mean_albedo=torch.full((num_v, 3), 0.6),
        albedo_basis=0.05 * torch.randn(num_v, 3, tex, generator=g),
        triangles=triangles,
        landmark_ids=torch.arange(68) % num_v,
        uv_coords=uv,
        front_mask=(torch.arange(num_v) % 2 == 0) if masks else None,
        skin_mask=(torch.arange(num_v) % 3 == 0) if masks else None,
        expression_names=("smile", "brow", "jaw"),
        name="tiny",
    )


def _random_coeffs(model: MorphableModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coeffs = 0.3 * torch.randn(batch, model.layout.size, generator=g)
    return coeffs


# ---------------------------------------------------------------- layout
def test_layout_deep3d_sizes_and_slices() -> None:
    layout = CoeffLayout.deep3d()
    assert layout.size == 257
    assert layout.slices == {
        "id": slice(0, 80),
        "exp": slice(80, 144),
        "tex": slice(144, 224),
        "angle": slice(224, 227),
        "gamma": slice(227, 254),
        "trans": slice(254, 257),
    }


def test_layout_split_join_round_trip() -> None:
    layout = CoeffLayout(id=5, exp=4, tex=0)
    flat = torch.randn(3, layout.size)
    parts = layout.split(flat)
    assert isinstance(parts, Coeffs)
    assert parts.id_coeff.shape == (3, 5) and parts.tex_coeff.shape == (3, 0) and parts.gamma.shape == (3, 27)
    assert parts.batch_size == 3
    assert torch.equal(layout.join(parts), flat)
    assert torch.equal(parts.trans, flat[:, -3:])


def test_layout_shape_errors() -> None:
    layout = CoeffLayout(id=5, exp=4, tex=2)
    with pytest.raises(ValueError, match="coeffs"):
        layout.split(torch.zeros(2, layout.size + 1))
    with pytest.raises(ValueError, match="coeffs"):
        layout.split(torch.zeros(layout.size))
    parts = layout.split(torch.zeros(2, layout.size))
    bad = Coeffs(**{**parts.__dict__, "exp_coeff": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="exp_coeff"):
        layout.join(bad)
    with pytest.raises(ValueError):
        CoeffLayout(id=-1, exp=4, tex=2)


def test_model_layout_from_bases() -> None:
    model = _tiny_model()
    assert model.layout == CoeffLayout(id=K_ID, exp=K_EXP, tex=K_TEX)
    assert model.layout.size == K_ID + K_EXP + K_TEX + 33


# ---------------------------------------------------------------- rotation
def _rx(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rz(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_rotation_orthonormal_det_one() -> None:
    angle = torch.randn(16, 3)
    rot = euler_to_rotation(angle)
    eye = torch.eye(3).expand(16, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(16), atol=1e-5, rtol=0)


def test_rotation_single_axes_match_hand_matrices() -> None:
    a = 0.37
    for axis, hand in ((0, _rx), (1, _ry), (2, _rz)):
        angle = torch.zeros(1, 3)
        angle[0, axis] = a
        torch.testing.assert_close(euler_to_rotation(angle)[0], hand(a).T, atol=1e-6, rtol=0)
    # composition order: R = (Rz Ry Rx)^T, x applied first to column vectors
    x, y, z = 0.2, -0.5, 0.9
    rot = euler_to_rotation(torch.tensor([[x, y, z]]))[0]
    torch.testing.assert_close(rot, (_rz(z) @ _ry(y) @ _rx(x)).T, atol=1e-6, rtol=0)
    # a +90° x rotation turns the up vector (0,1,0) toward the viewer (0,0,1)
    up = torch.tensor([[0.0, 1.0, 0.0]])
    torch.testing.assert_close(up @ euler_to_rotation(torch.tensor([[math.pi / 2, 0, 0]]))[0],
                               torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- camera
def test_projection_known_answers() -> None:
    cam = PerspectiveCamera()
    points = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.2, 0.0], [0.0, 0.0, 1.0]]])
    screen = cam.project(points)
    assert screen.shape == (1, 3, 3)
    torch.testing.assert_close(screen[0, 0], torch.tensor([112.0, 111.0, 10.0]))
    torch.testing.assert_close(screen[0, 1], torch.tensor([112.0 + 10.15, 223.0 - (112.0 + 20.3), 10.0]))
    torch.testing.assert_close(screen[0, 2, 2], torch.tensor(9.0))
    big = cam.scaled(448)
    assert big == PerspectiveCamera(focal=2030.0, center=224.0, camera_distance=10.0, image_size=448)
    screen_big = big.project(points)
    torch.testing.assert_close(screen_big[0, 0, :2], torch.tensor([224.0, 223.0]))
    # offsets from the principal point double with the image size
    torch.testing.assert_close(screen_big[0, 1, 0] - 224.0, 2 * (screen[0, 1, 0] - 112.0))
    torch.testing.assert_close(screen_big[0, 1, 1] - 223.0, 2 * (screen[0, 1, 1] - 111.0))
    with pytest.raises(ValueError):
        cam.project(torch.zeros(4, 3))


# ---------------------------------------------------------------- lighting
def test_sh_known_answer() -> None:
    normals = torch.tensor([[[0.0, 0.0, 1.0]]])
    factor = sh_irradiance(normals, torch.zeros(1, 27))
    dc = 0.8 * math.pi / math.sqrt(4 * math.pi)  # init_lit · a0 · c0
    torch.testing.assert_close(factor, torch.full((1, 1, 3), dc))
    # red channel band 2 (z) = 1 adds a1·c1·n_z = 2π/√3 · √3/√(4π) = √π
    gamma = torch.zeros(1, 27)
    gamma[0, 2] = 1.0
    factor = sh_irradiance(normals, gamma)
    torch.testing.assert_close(factor[0, 0], torch.tensor([dc + math.sqrt(math.pi), dc, dc]))
    # band 1 carries −n_y: a normal pointing up darkens when gamma[1] > 0
    gamma = torch.zeros(1, 27)
    gamma[0, 9 + 1] = 1.0  # green channel, band 1
    factor = sh_irradiance(torch.tensor([[[0.0, 1.0, 0.0]]]), gamma)
    torch.testing.assert_close(factor[0, 0, 1], torch.tensor(dc - math.sqrt(math.pi)))


# ---------------------------------------------------------------- model
def test_shape_is_linear_eq1() -> None:
    model = _tiny_model()
    a1, a2 = torch.randn(1, K_ID), torch.randn(1, K_ID)
    b1, b2 = torch.randn(1, K_EXP), torch.randn(1, K_EXP)
    mean = model.mean_shape
    s = model.shape(a1 + a2, b1 + b2) - mean
    torch.testing.assert_close(s, (model.shape(a1, b1) - mean) + (model.shape(a2, b2) - mean), atol=1e-6, rtol=0)
    expected = mean + (model.id_basis @ a1[0]) + (model.exp_basis @ b1[0])
    torch.testing.assert_close(model.shape(a1, b1)[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.shape(torch.zeros(1, K_ID), torch.zeros(1, K_EXP))[0], mean)
    with pytest.raises(ValueError):
        model.shape(torch.zeros(2, K_ID), torch.zeros(3, K_EXP))


def test_normals_unit_and_outward() -> None:
    model = _tiny_model()
    verts = model.mean_shape.unsqueeze(0)
    normals = model.vertex_normals(verts)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(1, model.num_vertices), atol=1e-5, rtol=0)
    assert (normals[..., 2] > 0).all()
    centre = model.num_vertices // 2  # tip of the bump: straight toward the viewer
    torch.testing.assert_close(normals[0, centre], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    # orientation helper agrees (no flip) and flips a reversed mesh
    tri, flipped = orient_triangles_outward(model.mean_shape.numpy(), model.triangles.numpy())
    assert not flipped
    _, flipped = orient_triangles_outward(model.mean_shape.numpy(), model.triangles.numpy()[:, [0, 2, 1]])
    assert flipped


def test_forward_shapes_finite_and_consistent() -> None:
    model = _tiny_model()
    coeffs = _random_coeffs(model, batch=3)
    out = model(coeffs, PerspectiveCamera())
    assert isinstance(out, FaceModelOutput)
    num_v = model.num_vertices
    for name in ("vertices", "vertices_world", "vertices_screen", "albedo", "normals", "vertex_colors"):
        tensor = getattr(out, name)
        assert tensor.shape == (3, num_v, 3), name
        assert torch.isfinite(tensor).all(), name
    assert out.landmarks.shape == (3, 68, 2)
    assert out.rotation.shape == (3, 3, 3)
    torch.testing.assert_close(out.landmarks, out.vertices_screen[:, model.landmark_ids, :2])
    parts = model.layout.split(coeffs)
    torch.testing.assert_close(out.vertices_world, out.vertices @ out.rotation + parts.trans[:, None])
    torch.testing.assert_close(out.vertex_colors, out.albedo * sh_irradiance(out.normals, parts.gamma))
    torch.testing.assert_close(out.normals.norm(dim=-1), torch.ones(3, num_v), atol=1e-5, rtol=0)
    # Coeffs input gives the same result; inputs are not modified
    before = coeffs.clone()
    out2 = model(parts, PerspectiveCamera())
    torch.testing.assert_close(out2.vertex_colors, out.vertex_colors)
    assert torch.equal(coeffs, before)
    with pytest.raises(ValueError):
        model(torch.zeros(2, model.layout.size + 1), PerspectiveCamera())


def test_forward_zero_pose_landmarks_and_gradients() -> None:
    model = _tiny_model()
    coeffs = model.layout.zeros(1).requires_grad_(True)
    out = model(coeffs, PerspectiveCamera())
    centre = model.num_vertices // 2  # (0, 0, 0.5) -> x = 112, y = 111, depth 9.5
    torch.testing.assert_close(out.vertices_screen[0, centre], torch.tensor([112.0, 111.0, 9.5]))
    out.vertex_colors.sum().backward()
    assert coeffs.grad is not None and torch.isfinite(coeffs.grad).all()
    assert coeffs.grad.abs().sum() > 0


def test_zero_size_albedo_basis() -> None:
    model = _tiny_model(tex=0, masks=False)
    assert model.layout.tex == 0
    assert model.front_mask is None and model.skin_mask is None
    out = model(model.layout.zeros(2), PerspectiveCamera())
    torch.testing.assert_close(out.albedo, model.mean_albedo.expand(2, -1, -1))


def test_constructor_validation() -> None:
    good = _tiny_model()
    kwargs = {
        "mean_shape": good.mean_shape,
        "id_basis": good.id_basis,
        "exp_basis": good.exp_basis,
        "mean_albedo": good.mean_albedo,
        "albedo_basis": good.albedo_basis,
        "triangles": good.triangles,
        "landmark_ids": good.landmark_ids,
        "uv_coords": good.uv_coords,
    }
    with pytest.raises(ValueError, match="id_basis"):
        MorphableModel(**{**kwargs, "id_basis": good.id_basis[:-1]})
    with pytest.raises(ValueError, match="triangles"):
        MorphableModel(**{**kwargs, "triangles": good.triangles + good.num_vertices})
    with pytest.raises(TypeError, match="triangles"):
        MorphableModel(**{**kwargs, "triangles": good.triangles.float()})
    with pytest.raises(ValueError, match="landmark_ids"):
        MorphableModel(**{**kwargs, "landmark_ids": good.landmark_ids[:5]})
    with pytest.raises(ValueError, match="uv_coords"):
        MorphableModel(**{**kwargs, "uv_coords": good.uv_coords * 3})
    with pytest.raises(ValueError, match="expression_names"):
        MorphableModel(**kwargs, expression_names=("a",))
    with pytest.raises(TypeError, match="front_mask"):
        MorphableModel(**kwargs, front_mask=torch.zeros(good.num_vertices))


def test_save_load_round_trip(tmp_path: Path) -> None:
    for model in (_tiny_model(), _tiny_model(tex=0, masks=False)):
        path = model.save(tmp_path / "sub" / "face.pt")
        assert path.is_file()
        assert not [p for p in path.parent.iterdir() if p.name != "face.pt"]  # no temp files left
        loaded = MorphableModel.load(path)
        assert loaded.name == model.name and loaded.expression_names == model.expression_names
        own = dict(model.named_buffers())
        other = dict(loaded.named_buffers())
        assert own.keys() == other.keys()
        for key, value in own.items():
            assert other[key].dtype == value.dtype, key
            assert torch.equal(other[key], value), key
        assert (loaded.front_mask is None) == (model.front_mask is None)
        coeffs = _random_coeffs(model)
        a, b = model(coeffs, PerspectiveCamera()), loaded(coeffs, PerspectiveCamera())
        torch.testing.assert_close(a.vertex_colors, b.vertex_colors, atol=0, rtol=0)
        torch.testing.assert_close(a.landmarks, b.landmarks, atol=0, rtol=0)


def test_load_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        MorphableModel.load(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a face model")
    with pytest.raises(ValueError, match="garbage.pt"):
        MorphableModel.load(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an emoedit face model"):
        MorphableModel.load(other)
    broken = tmp_path / "broken.pt"
    torch.save({"format": "emoedit.face_model", "format_version": 1, "tensors": {"mean_shape": torch.zeros(3, 3)}}, broken)
    with pytest.raises(ValueError, match="lacks arrays"):
        MorphableModel.load(broken)


def test_to_moves_all_buffers() -> None:
    model = _tiny_model().to(torch.float64)
    for name in ("mean_shape", "id_basis", "exp_basis", "mean_albedo", "albedo_basis", "uv_coords"):
        assert getattr(model, name).dtype == torch.float64, name
    assert model.triangles.dtype == torch.int64 and model.landmark_ids.dtype == torch.int64
    assert model.front_mask is not None and model.front_mask.dtype == torch.bool
    out = model(model.layout.zeros(1, dtype=torch.float64), PerspectiveCamera())
    assert out.vertex_colors.dtype == torch.float64
    assert set(dict(model.named_buffers())) >= {"mean_shape", "triangles", "front_mask", "skin_mask"}
    if torch.cuda.is_available():
        model = model.to("cuda")
        assert all(buf.is_cuda for buf in model.buffers())


def test_cylindrical_uv_range_and_orientation() -> None:
    vertices, triangles, _ = _grid_face()
    uv = cylindrical_uv(vertices)
    assert uv.shape == (vertices.shape[0], 2)
    assert float(uv.min()) >= 0.02 - 1e-6 and float(uv.max()) <= 0.98 + 1e-6
    top_left, bottom_right = 0, vertices.shape[0] - 1
    assert uv[top_left, 0] < uv[bottom_right, 0]  # u grows to the right
    assert uv[top_left, 1] < uv[bottom_right, 1]  # v grows downward
    square = cylindrical_uv(vertices, keep_aspect=True)
    assert float(square.min()) >= 0.0 and float(square.max()) <= 1.0


def test_procedural_model_if_available() -> None:
    pytest.importorskip("emoedit.face_model.procedural")
    model = MorphableModel.procedural()
    out = model(model.layout.zeros(1), PerspectiveCamera())
    assert out.landmarks.shape == (1, 68, 2)
    assert torch.isfinite(out.vertex_colors).all()
    v, tri = model.mean_shape, model.triangles
    cross = torch.linalg.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]], dim=-1)
    assert float(cross[:, 2].sum()) > 0  # wound outward (shared convention)
