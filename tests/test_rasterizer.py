"""Rasterisers: known answers, tie rule, occlusion, culling, gradients, backend parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emoedit.render import Fragments, interpolate_vertex_attributes, make_rasterizer
from emoedit.render import pytorch3d_rasterizer as p3d_module
from emoedit.render.barycentric import fragments_from_pix_to_face, pixel_barycentrics
from emoedit.render.pytorch3d_rasterizer import screen_to_pytorch3d_ndc
from emoedit.render.rasterizer import AutoRasterizer, resolve_backend
from emoedit.render.torch_rasterizer import TorchRasterizer

needs_pytorch3d = pytest.mark.skipif(
    p3d_module.pytorch3d_import_error() is not None,
    reason=f"pytorch3d not importable: {p3d_module.pytorch3d_import_error()}",
)

# Right triangle A=(0.5,0.5), B=(6.7,0.5), C=(0.5,6.7) (positive screen area: a back face by
# the project's winding), depths 2, 4, 8. Pixel centres (x=j, y=i) inside: i, j ≥ 1 and
# i + j ≤ 7 (the hypotenuse is x + y = 7.2, so no centre lies on an edge).
TRI_VERTS = torch.tensor([[[0.5, 0.5, 2.0], [6.7, 0.5, 4.0], [0.5, 6.7, 8.0]]])
TRI_FACES = torch.tensor([[0, 1, 2]])
FLIPPED_FACES = torch.tensor([[0, 2, 1]])


def _expected_triangle_coverage(size: int = 8) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (rows >= 1) & (cols >= 1) & (rows + cols <= 7)


def _coverage_counts(rasterizer, vertices: torch.Tensor, faces: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """How many triangles cover each pixel centre, rasterising each triangle on its own."""
    counts = torch.zeros(size, dtype=torch.int64)
    for face in faces:
        counts += rasterizer(vertices, face[None], size).mask[0].to(torch.int64)
    return counts


def _grid_mesh(cells: int, cell_size: float, origin: float, jitter: float, seed: int = 0):
    """A (cells+1)² grid of vertices at constant depth, two triangles per cell, front-facing."""
    gen = torch.Generator().manual_seed(seed)
    ticks = origin + cell_size * torch.arange(cells + 1, dtype=torch.float32)
    ys, xs = torch.meshgrid(ticks, ticks, indexing="ij")
    xy = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    interior = ((xs > ticks[0]) & (xs < ticks[-1]) & (ys > ticks[0]) & (ys < ticks[-1])).reshape(-1)
    xy[interior] += jitter * (torch.rand(int(interior.sum()), 2, generator=gen) - 0.5)
    verts = torch.cat([xy, torch.full((xy.shape[0], 1), 5.0)], dim=-1)[None]
    faces = []
    n = cells + 1
    for r in range(cells):
        for c in range(cells):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            # Negative screen area (front-facing): a → d → b in a y-down image.
            faces += [[a, d, b], [b, d, e]]
    return verts, torch.tensor(faces)


# ---------------------------------------------------------------- known answers
@pytest.mark.parametrize("perspective_correct", [False, True])
def test_single_triangle_known_coverage_barycentrics_depth(perspective_correct: bool) -> None:
    rasterizer = TorchRasterizer(perspective_correct=perspective_correct)
    frags = rasterizer(TRI_VERTS, TRI_FACES, (8, 8))
    assert isinstance(frags, Fragments)
    assert frags.pix_to_face.shape == (1, 8, 8) and frags.pix_to_face.dtype == torch.int64
    assert frags.bary_coords.shape == (1, 8, 8, 3)
    assert frags.zbuf.shape == (1, 8, 8)
    expected = _expected_triangle_coverage()
    assert torch.equal(frags.mask[0], expected)
    assert int(expected.sum()) == 21

    rows, cols = torch.nonzero(expected, as_tuple=True)
    x, y = cols.float(), rows.float()
    b1 = (x - 0.5) / 6.2
    b2 = (y - 0.5) / 6.2
    screen = torch.stack([1 - b1 - b2, b1, b2], dim=-1)
    depth = torch.tensor([2.0, 4.0, 8.0])
    if perspective_correct:
        weights = screen / depth
        bary = weights / weights.sum(-1, keepdim=True)
        z = 1.0 / (screen / depth).sum(-1)
    else:
        bary = screen
        z = (screen * depth).sum(-1)
    torch.testing.assert_close(frags.bary_coords[0, rows, cols], bary, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(frags.zbuf[0, rows, cols], z, atol=1e-5, rtol=1e-5)


def test_background_values() -> None:
    frags = TorchRasterizer()(TRI_VERTS, TRI_FACES, (8, 8))
    background = ~frags.mask[0]
    assert bool((frags.pix_to_face[0][background] == -1).all())
    assert bool(torch.isinf(frags.zbuf[0][background]).all()) and bool((frags.zbuf[0][background] > 0).all())
    assert bool((frags.bary_coords[0][background] == 0).all())
    torch.testing.assert_close(frags.bary_coords[0][~background].sum(-1), torch.ones(21))


def test_interpolation_reproduces_pixel_centres() -> None:
    """Screen-space barycentrics interpolating (x_img, y_img) give back the pixel centres."""
    frags = TorchRasterizer(perspective_correct=False)(TRI_VERTS, TRI_FACES, (8, 8))
    xy = interpolate_vertex_attributes(frags, TRI_FACES, TRI_VERTS[0, :, :2])  # shared (V,C)
    assert xy.shape == (1, 8, 8, 2)
    rows, cols = torch.nonzero(frags.mask[0], as_tuple=True)
    torch.testing.assert_close(xy[0, rows, cols], torch.stack([cols, rows], -1).float(), atol=1e-5, rtol=0)
    assert bool((xy[0][~frags.mask[0]] == 0).all())
    batched = interpolate_vertex_attributes(frags, TRI_FACES, TRI_VERTS[:, :, :2])  # (B,V,C)
    torch.testing.assert_close(batched, xy)


def test_occlusion_nearer_triangle_wins_regardless_of_order() -> None:
    near = [[1.0, 1.0, 3.0], [7.0, 1.0, 3.0], [1.0, 7.0, 3.0]]
    far = [[0.5, 0.5, 6.0], [7.5, 0.5, 6.0], [0.5, 7.5, 6.0]]
    verts = torch.tensor([near + far])
    for faces, near_id in [([[0, 1, 2], [3, 4, 5]], 0), ([[3, 4, 5], [0, 1, 2]], 1)]:
        frags = TorchRasterizer()(verts, torch.tensor(faces), (9, 9))
        both = frags.pix_to_face[0] >= 0
        near_cover = TorchRasterizer()(verts, torch.tensor([faces[near_id]]), (9, 9)).mask[0]
        assert bool((frags.pix_to_face[0][near_cover] == near_id).all())
        assert bool((frags.pix_to_face[0][both & ~near_cover] == 1 - near_id).all())
        torch.testing.assert_close(frags.zbuf[0][near_cover], torch.full((int(near_cover.sum()),), 3.0))


def test_cull_backfaces_keeps_only_negative_screen_area() -> None:
    culling = TorchRasterizer(cull_backfaces=True)
    assert not bool(culling(TRI_VERTS, TRI_FACES, (8, 8)).mask.any())  # back face
    kept = culling(TRI_VERTS, FLIPPED_FACES, (8, 8))
    assert torch.equal(kept.mask[0], _expected_triangle_coverage())
    both = TorchRasterizer(cull_backfaces=False)
    assert torch.equal(both(TRI_VERTS, TRI_FACES, (8, 8)).mask, kept.mask)


def test_invalid_triangles_are_not_drawn() -> None:
    verts = TRI_VERTS.clone().repeat(1, 4, 1)  # 4 copies of the triangle's corners
    verts[0, 3, 2] = -1.0  # behind the camera
    verts[0, 7, 0] = float("nan")
    verts[0, 11, 1] = float("inf")
    faces = torch.tensor([[3, 4, 5], [6, 7, 8], [9, 10, 11], [0, 0, 1]])  # last: degenerate
    for backend in _backends():
        frags = make_rasterizer(backend)(verts, faces, (8, 8))
        assert not bool(frags.mask.any()), backend


def test_rejects_bad_inputs() -> None:
    rasterizer = TorchRasterizer()
    with pytest.raises(ValueError, match="outside"):
        rasterizer(TRI_VERTS, torch.tensor([[0, 1, 3]]), (8, 8))
    with pytest.raises(TypeError, match="int64"):
        rasterizer(TRI_VERTS, TRI_FACES.to(torch.int32), (8, 8))
    with pytest.raises(ValueError, match="vertices"):
        rasterizer(TRI_VERTS[0], TRI_FACES, (8, 8))
    with pytest.raises(ValueError, match="image_size"):
        rasterizer(TRI_VERTS, TRI_FACES, 8)  # type: ignore[arg-type]


# ---------------------------------------------------------------- tie rule / watertightness
@pytest.mark.parametrize("faces", [[[0, 1, 2]], [[0, 2, 1]]])
def test_left_bottom_tie_rule_on_pixel_centres(faces: list[list[int]]) -> None:
    """Corners on pixel centres: left and bottom edges own their centres, others do not."""
    # Top edge y = 1, left edge x = 1, hypotenuse x + y = 7 (up-right side).
    top_left = torch.tensor([[[1.0, 1.0, 2.0], [6.0, 1.0, 2.0], [1.0, 6.0, 2.0]]])
    frags = TorchRasterizer()(top_left, torch.tensor(faces), (8, 8))
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(frags.mask[0], (rows >= 2) & (cols >= 1) & (rows + cols <= 6))
    # Bottom edge y = 6, left edge x = 1, hypotenuse y = x (up-right side).
    bottom_left = torch.tensor([[[1.0, 1.0, 2.0], [1.0, 6.0, 2.0], [6.0, 6.0, 2.0]]])
    frags = TorchRasterizer()(bottom_left, torch.tensor(faces), (8, 8))
    assert torch.equal(frags.mask[0], (rows <= 6) & (cols >= 1) & (cols < rows))


@pytest.mark.parametrize("reverse_winding", [False, True])
def test_shared_diagonal_through_pixel_centres_is_covered_exactly_once(reverse_winding: bool) -> None:
    verts = torch.tensor([[[1.0, 1.0, 2.0], [6.0, 1.0, 2.0], [6.0, 6.0, 2.0], [1.0, 6.0, 2.0]]])
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])  # split along the diagonal x = y
    if reverse_winding:  # positive screen area: exercises the orientation sign
        faces = faces[:, [0, 2, 1]]
    counts = _coverage_counts(TorchRasterizer(), verts, faces, (8, 8))
    assert int(counts.max()) == 1
    assert bool((counts[2:6, 2:6] == 1).all())  # strictly inside the square
    assert int(counts[0].sum() + counts[:, 0].sum() + counts[7].sum() + counts[:, 7].sum()) == 0


@pytest.mark.parametrize("jitter", [0.0, 0.9])
@pytest.mark.parametrize("reverse_winding", [False, True])
def test_grid_mesh_is_watertight(jitter: float, reverse_winding: bool) -> None:
    """Integer grid (every vertex and edge on pixel centres) and a jittered one."""
    verts, faces = _grid_mesh(cells=5, cell_size=3.0, origin=1.0, jitter=jitter)
    if reverse_winding:
        faces = faces[:, [0, 2, 1]]
    rasterizer = TorchRasterizer(cull_backfaces=not reverse_winding)
    counts = _coverage_counts(rasterizer, verts, faces, (18, 18))
    assert int(counts.max()) == 1
    assert bool((counts[2:16, 2:16] == 1).all())
    together = rasterizer(verts, faces, (18, 18))
    assert torch.equal(together.mask[0], counts == 1)


@pytest.mark.parametrize("reverse_winding", [False, True])
def test_vertex_fan_centre_pixel_owned_once(reverse_winding: bool) -> None:
    angles = torch.arange(7) * (2 * torch.pi / 7)
    rim = torch.stack([5 + 4 * torch.cos(angles), 5 + 4 * torch.sin(angles)], -1)
    xy = torch.cat([torch.tensor([[5.0, 5.0]]), rim])  # centre exactly on pixel (5, 5)
    verts = torch.cat([xy, torch.full((8, 1), 3.0)], -1)[None]
    faces = torch.tensor([[0, 1 + (k + 1) % 7, 1 + k] for k in range(7)])
    if reverse_winding:
        faces = faces[:, [0, 2, 1]]
    counts = _coverage_counts(TorchRasterizer(), verts, faces, (11, 11))
    assert int(counts[5, 5]) == 1
    assert int(counts.max()) == 1


def test_chunking_matches_single_pass() -> None:
    verts, faces = _grid_mesh(cells=6, cell_size=5.0, origin=0.3, jitter=1.5, seed=3)
    big = TorchRasterizer()(verts, faces, (32, 32))
    small = TorchRasterizer(max_candidates=7)(verts, faces, (32, 32))
    assert torch.equal(big.pix_to_face, small.pix_to_face)


def test_batch_matches_separate_calls() -> None:
    verts, faces = _grid_mesh(cells=4, cell_size=4.0, origin=0.5, jitter=1.0, seed=1)
    other = verts.clone()
    other[..., :2] = 17.0 - other[..., :2].flip(-1)  # a mirrored, rotated copy
    other[..., 2] += torch.linspace(0, 1, verts.shape[1])
    batch = torch.cat([verts, other])
    rasterizer = TorchRasterizer(cull_backfaces=False)
    together = rasterizer(batch, faces, (18, 20))
    for b in range(2):
        alone = rasterizer(batch[b : b + 1], faces, (18, 20))
        assert torch.equal(together.pix_to_face[b], alone.pix_to_face[0])
        torch.testing.assert_close(together.bary_coords[b], alone.bary_coords[0])
        torch.testing.assert_close(together.zbuf[b], alone.zbuf[0])


# ---------------------------------------------------------------- gradients
def test_gradcheck_pixel_barycentrics_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    # Coordinate (x, y, depth) × corner, repeated for 4 pixels with small perturbations.
    corners = torch.tensor([[0.2, 5.1, 0.7], [0.4, 1.3, 6.2], [2.0, 3.0, 5.0]], dtype=torch.float64)
    corners = corners[:, :, None] + 0.1 * torch.rand(3, 3, 4, generator=gen, dtype=torch.float64)
    corners.requires_grad_(True)
    px = torch.tensor([1.0, 2.0, 1.0, 2.0], dtype=torch.float64)
    py = torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64)
    for perspective in (False, True):
        def fn(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return pixel_barycentrics(c[0], c[1], c[2], px, py, perspective_correct=perspective)

        assert torch.autograd.gradcheck(fn, (corners,), eps=1e-6, atol=1e-7)


def test_gradients_flow_to_vertices_through_fragments() -> None:
    verts, faces = _grid_mesh(cells=3, cell_size=4.0, origin=1.0, jitter=1.0)
    verts = verts.clone()
    verts[..., 2] += torch.rand(verts.shape[1])
    verts.requires_grad_(True)
    frags = TorchRasterizer(cull_backfaces=True)(verts, faces, (14, 14))
    colour = interpolate_vertex_attributes(frags, faces, torch.rand(verts.shape[1], 3))
    loss = (colour * torch.rand_like(colour)).sum() + frags.zbuf[frags.mask].sum()
    loss.backward()
    assert verts.grad is not None
    assert bool(torch.isfinite(verts.grad).all())
    assert float(verts.grad[..., :2].abs().sum()) > 0 and float(verts.grad[..., 2].abs().sum()) > 0


def test_fragments_from_pix_to_face_float64_gradcheck() -> None:
    verts = TRI_VERTS.to(torch.float64).clone().requires_grad_(True)
    pix_to_face = TorchRasterizer()(TRI_VERTS, TRI_FACES, (8, 8)).pix_to_face

    def fn(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frags = fragments_from_pix_to_face(v, TRI_FACES, pix_to_face, perspective_correct=True)
        return frags.bary_coords, torch.where(frags.mask, frags.zbuf, 0.0)

    assert torch.autograd.gradcheck(fn, (verts,), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- factory
def test_make_rasterizer_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    rasterizer = make_rasterizer("torch", cull_backfaces=True, perspective_correct=False)
    assert isinstance(rasterizer, TorchRasterizer)
    assert rasterizer.cull_backfaces and not rasterizer.perspective_correct
    assert resolve_backend("auto", "cpu") == "torch"
    auto = make_rasterizer("auto")
    assert isinstance(auto, (TorchRasterizer, AutoRasterizer))
    if not torch.cuda.is_available():
        assert isinstance(auto, TorchRasterizer)
    with pytest.raises(ValueError, match="unknown rasteriser backend"):
        make_rasterizer("opengl")
    monkeypatch.setattr(p3d_module, "pytorch3d_import_error", lambda: "ImportError: no module named pytorch3d")
    with pytest.raises(ImportError, match="pytorch3d"):
        make_rasterizer("pytorch3d")


def test_pytorch3d_ndc_mapping() -> None:
    """Pixel centres map to pytorch3d's sample points (+X left, +Y up, short side ±1)."""
    height, width = 4, 6
    cols = torch.arange(width, dtype=torch.float32)
    rows = torch.arange(height, dtype=torch.float32)
    screen = torch.stack([cols, torch.zeros(width), torch.ones(width)], -1)
    ndc = screen_to_pytorch3d_ndc(screen, (height, width))
    # pytorch3d samples column c at x = (W − 1 − 2c) / min(H, W).
    torch.testing.assert_close(ndc[:, 0], (width - 1 - 2 * cols) / height)
    screen = torch.stack([torch.zeros(height), rows, torch.ones(height)], -1)
    ndc = screen_to_pytorch3d_ndc(screen, (height, width))
    torch.testing.assert_close(ndc[:, 1], (height - 1 - 2 * rows) / height)
    assert float(ndc[0, 1]) == pytest.approx(1 - 1 / height)  # top row: +Y up


def _backends() -> list[str]:
    return ["torch"] + (["pytorch3d"] if p3d_module.pytorch3d_import_error() is None else [])


# ---------------------------------------------------------------- parity with pytorch3d
@pytest.fixture(scope="module")
def bfm_mesh(fixtures_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3DDFA's BFM09 mean face: (V,3) model-space vertices (×1e-5, centred), (F,3) outward faces, (V,2) uv."""
    scipy_io = pytest.importorskip("scipy.io")
    folder = fixtures_dir / "facemodels" / "bfm_3ddfa"
    if not folder.is_dir():
        pytest.skip(f"BFM fixture folder missing: {folder}")
    shape = np.load(folder / "u_shp.npy") + np.load(folder / "u_exp.npy")
    verts = shape.reshape(-1, 3).astype(np.float64) * 1e-5
    verts -= verts.mean(0)
    tri = scipy_io.loadmat(folder / "tri.mat")["tri"].T.astype(np.int64) - 1
    uv = scipy_io.loadmat(folder / "BFM_UV.mat")["UV"].astype(np.float32)
    verts_t = torch.from_numpy(verts).float()
    tri_t = torch.from_numpy(tri)
    # 3DDFA winds its faces inward (normals toward −z on the face): flip to the
    # project's outward winding, checked on the area-weighted normal.
    v0, v1, v2 = verts_t[tri_t[:, 0]], verts_t[tri_t[:, 1]], verts_t[tri_t[:, 2]]
    if float(torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)[:, 2].sum()) < 0:
        tri_t = tri_t[:, [0, 2, 1]]
    return verts_t, tri_t, torch.from_numpy(uv)


def _project(verts: torch.Tensor, size: int, angle_y: float = 0.0) -> torch.Tensor:
    """Deep3D camera (focal 1015, centre 112 at 224 px, distance 10), yaw by angle_y."""
    c, s = float(np.cos(angle_y)), float(np.sin(angle_y))
    rot = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    world = verts @ rot
    scale = size / 224
    depth = 10.0 - world[:, 2]
    x = 112 * scale + 1015 * scale * world[:, 0] / depth
    y = (size - 1) - (112 * scale + 1015 * scale * world[:, 1] / depth)
    return torch.stack([x, y, depth], -1)[None]


def _assert_backends_agree(verts: torch.Tensor, faces: torch.Tensor, size: int, cull: bool) -> None:
    torch_frags = make_rasterizer("torch", cull_backfaces=cull)(verts, faces, (size, size))
    p3d_frags = make_rasterizer("pytorch3d", cull_backfaces=cull)(verts, faces, (size, size))
    a, b = torch_frags.pix_to_face, p3d_frags.pix_to_face
    either = (a >= 0) | (b >= 0)
    assert int(either.sum()) > 0.1 * size * size
    agree = float(((a == b) & either).sum()) / float(either.sum())
    assert agree >= 0.99, f"face index agrees on {agree:.4f} of covered pixels"
    both = (a >= 0) & (b >= 0) & (a == b)
    torch.testing.assert_close(torch_frags.bary_coords[both], p3d_frags.bary_coords[both])


@needs_pytorch3d
def test_parity_procedural_model() -> None:
    from emoedit.face_model import MorphableModel, PerspectiveCamera

    model = MorphableModel.procedural()
    size = 96
    coeffs = torch.zeros(2, model.layout.size)
    coeffs[1, model.layout.slices["angle"]] = torch.tensor([0.1, 0.4, -0.05])
    verts = model(coeffs, PerspectiveCamera().scaled(size)).vertices_screen
    for cull in (True, False):
        _assert_backends_agree(verts, model.triangles, size, cull)


@needs_pytorch3d
def test_parity_bfm_fixture(bfm_mesh: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    verts, faces, _ = bfm_mesh
    _assert_backends_agree(_project(verts, 64, angle_y=0.3), faces, 64, cull=True)


@pytest.mark.slow
@needs_pytorch3d
def test_parity_bfm_fixture_224(bfm_mesh: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    verts, faces, _ = bfm_mesh
    _assert_backends_agree(_project(verts, 224), faces, 224, cull=True)


@needs_pytorch3d
def test_parity_non_square_random_triangles() -> None:
    gen = torch.Generator().manual_seed(0)
    for height, width in [(9, 14), (14, 9)]:
        verts = torch.rand(1, 40, 3, generator=gen)
        verts[..., 0] = verts[..., 0] * (width + 4) - 2
        verts[..., 1] = verts[..., 1] * (height + 4) - 2
        verts[..., 2] += 1
        faces = torch.stack([torch.randperm(40, generator=gen)[:3] for _ in range(30)])
        a = make_rasterizer("torch")(verts, faces, (height, width)).pix_to_face
        b = make_rasterizer("pytorch3d")(verts, faces, (height, width)).pix_to_face
        assert torch.equal(a, b)


def test_bfm_culling_keeps_front_faces(bfm_mesh: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """With the outward winding, culling keeps the visible face; reversed, it loses it."""
    verts, faces, _ = bfm_mesh
    screen = _project(verts, 96)
    all_faces = make_rasterizer("torch", cull_backfaces=False)(screen, faces, (96, 96)).mask.sum()
    culled = make_rasterizer("torch", cull_backfaces=True)
    front = culled(screen, faces, (96, 96)).mask.sum()
    reversed_winding = culled(screen, faces[:, [0, 2, 1]], (96, 96)).mask.sum()
    assert int(all_faces) > 0.3 * 96 * 96
    assert int(front) >= 0.99 * int(all_faces)
    assert int(reversed_winding) < 0.5 * int(all_faces)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    verts, faces = _grid_mesh(cells=8, cell_size=6.0, origin=0.5, jitter=2.0, seed=2)
    verts = verts.clone()
    verts[..., 2] += torch.rand(verts.shape[1])
    cpu = TorchRasterizer(cull_backfaces=True)(verts, faces, (50, 50))
    for backend in _backends():
        gpu = make_rasterizer(backend, cull_backfaces=True)(verts.cuda(), faces.cuda(), (50, 50))
        assert torch.equal(gpu.pix_to_face.cpu(), cpu.pix_to_face), backend
        torch.testing.assert_close(gpu.bary_coords.cpu(), cpu.bary_coords, atol=1e-5, rtol=1e-5)
