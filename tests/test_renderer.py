"""MeshRenderer: texture and vertex-colour known answers, shading, mask, gradients, parity."""

from __future__ import annotations

import math

import pytest
import torch

from emoedit.render import MeshRenderer, RenderOutput
from emoedit.render import pytorch3d_rasterizer as p3d_module

needs_pytorch3d = pytest.mark.skipif(
    p3d_module.pytorch3d_import_error() is not None,
    reason=f"pytorch3d not importable: {p3d_module.pytorch3d_import_error()}",
)


def _square(size: int, depth: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A front-facing quad whose corners sit on the image's corner pixel centres, uv = x, y / (size−1)."""
    last = float(size - 1)
    xy = torch.tensor([[0.0, 0.0], [last, 0.0], [last, last], [0.0, last]])
    verts = torch.cat([xy, torch.full((4, 1), depth)], -1)[None]
    faces = torch.tensor([[0, 3, 2], [0, 2, 1]])  # negative screen area: front-facing
    uv = xy / last
    return verts, faces, uv


def test_uv_texture_known_answer() -> None:
    """uv·(T−1) equals the pixel centre, so every covered pixel reads its own texel."""
    size = 12
    verts, faces, uv = _square(size)
    texture = torch.rand(1, 3, size, size)
    renderer = MeshRenderer(image_size=size, backend="torch", background=0.0)
    out = renderer(verts, faces, uv_coords=uv, uv_texture=texture)
    assert isinstance(out, RenderOutput)
    assert out.image.shape == (1, 3, size, size) and out.mask.shape == (1, 1, size, size)
    mask = out.mask[0, 0] > 0
    assert bool(mask[1:-1, 1:-1].all())  # the interior; border centres lie on the edges
    torch.testing.assert_close(out.image[0][:, mask], texture[0][:, mask], atol=1e-5, rtol=0)
    assert bool((out.image[0][:, ~mask] == 0).all())
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}


def test_texture_v_points_down() -> None:
    """A texture whose top half is red renders red at the top of the image."""
    size = 10
    verts, faces, uv = _square(size)
    texture = torch.zeros(1, 3, size, size)
    texture[:, 0, : size // 2] = 1.0
    out = MeshRenderer(image_size=size, backend="torch")(verts, faces, uv_coords=uv, uv_texture=texture)
    assert float(out.image[0, 0, 2, 2:-2].min()) == 1.0
    assert float(out.image[0, 0, -3, 2:-2].max()) == 0.0


def test_vertex_colours_and_background() -> None:
    size = 16
    verts, faces, _ = _square(size)
    verts[..., :2] = verts[..., :2] * 0.5 + 3.0  # a smaller quad in the middle
    colours = torch.tensor([0.2, 0.5, 0.9]).expand(4, 3)
    out = MeshRenderer(image_size=size, backend="torch", background=0.25)(verts, faces, vertex_colors=colours)
    mask = out.mask[0, 0] > 0
    assert 0 < int(mask.sum()) < size * size
    torch.testing.assert_close(out.image[0][:, mask], torch.tensor([0.2, 0.5, 0.9])[:, None].expand(3, int(mask.sum())))
    assert bool((out.image[0][:, ~mask] == 0.25).all())


def test_sh_shading_ambient_known_answer() -> None:
    """Zero gamma is Deep3D's ambient light: colour = albedo × 0.8·π·(1/√(4π))."""
    pytest.importorskip("emoedit.face_model.lighting")
    size = 8
    verts, faces, _ = _square(size)
    colours = torch.full((1, 4, 3), 0.5)
    normals = torch.tensor([0.0, 0.0, 1.0]).expand(1, 4, 3)
    out = MeshRenderer(image_size=size, backend="torch")(
        verts, faces, vertex_colors=colours, vertex_normals=normals, gamma=torch.zeros(1, 27)
    )
    mask = out.mask[0, 0] > 0
    ambient = 0.8 * math.pi / math.sqrt(4 * math.pi)
    torch.testing.assert_close(out.image[0][:, mask], torch.full((3, int(mask.sum())), 0.5 * ambient))


def test_sh_shading_depends_on_normals() -> None:
    pytest.importorskip("emoedit.face_model.lighting")
    size = 8
    verts, faces, _ = _square(size)
    gamma = torch.zeros(1, 27)
    gamma[0, [2, 11, 20]] = 0.5  # the z-band of each channel: light from the viewer
    colours = torch.full((1, 4, 3), 0.5)
    facing = MeshRenderer(image_size=size, backend="torch")(
        verts, faces, vertex_colors=colours, vertex_normals=torch.tensor([0.0, 0.0, 1.0]).expand(1, 4, 3), gamma=gamma
    )
    sideways = MeshRenderer(image_size=size, backend="torch")(
        verts, faces, vertex_colors=colours, vertex_normals=torch.tensor([1.0, 0.0, 0.0]).expand(1, 4, 3), gamma=gamma
    )
    mask = facing.mask[0, 0] > 0
    assert float(facing.image[0][:, mask].mean()) > float(sideways.image[0][:, mask].mean()) + 0.05


def test_batched_render_matches_single() -> None:
    size = 12
    verts, faces, uv = _square(size)
    verts2 = verts.clone()
    verts2[..., :2] = verts2[..., :2] * 0.6 + 2.0
    batch = torch.cat([verts, verts2])
    textures = torch.rand(2, 3, 16, 16)
    renderer = MeshRenderer(image_size=size, backend="torch")
    together = renderer(batch, faces, uv_coords=uv, uv_texture=textures)
    for b in range(2):
        alone = renderer(batch[b : b + 1], faces, uv_coords=uv, uv_texture=textures[b : b + 1])
        torch.testing.assert_close(together.image[b], alone.image[0])
        torch.testing.assert_close(together.mask[b], alone.mask[0])
    shared = renderer(batch, faces, uv_coords=uv, uv_texture=textures[:1])  # (1,3,T,T) broadcast
    torch.testing.assert_close(shared.image[0], together.image[0])


def test_gradients_reach_vertices_and_texture() -> None:
    from emoedit.face_model import MorphableModel, PerspectiveCamera

    model = MorphableModel.procedural()
    size = 48
    coeffs = torch.zeros(1, model.layout.size)
    verts = model(coeffs, PerspectiveCamera().scaled(size)).vertices_screen.detach().requires_grad_(True)
    texture = torch.rand(1, 3, 32, 32, requires_grad=True)
    out = MeshRenderer(image_size=size, backend="torch")(
        verts, model.triangles, uv_coords=model.uv_coords, uv_texture=texture
    )
    target = torch.rand_like(out.image)
    ((out.image - target) ** 2).mean().backward()
    for name, grad in [("vertices", verts.grad), ("texture", texture.grad)]:
        assert grad is not None, name
        assert bool(torch.isfinite(grad).all()), name
        assert float(grad.abs().sum()) > 0, name


def test_procedural_face_render() -> None:
    from emoedit.face_model import MorphableModel, PerspectiveCamera

    model = MorphableModel.procedural()
    size = 64
    coeffs = torch.zeros(2, model.layout.size)
    coeffs[1, model.layout.slices["angle"]] = torch.tensor([0.0, 0.5, 0.0])
    face = model(coeffs, PerspectiveCamera().scaled(size))
    renderer = MeshRenderer(image_size=size, backend="torch", cull_backfaces=True)
    out = renderer(face.vertices_screen, model.triangles, vertex_colors=face.vertex_colors)
    assert out.image.shape == (2, 3, size, size)
    assert bool(torch.isfinite(out.image).all())
    assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0
    coverage = out.mask.mean(dim=(1, 2, 3))
    assert bool((coverage > 0.2).all()) and bool((coverage < 0.9).all())
    no_cull = MeshRenderer(image_size=size, backend="torch", cull_backfaces=False)
    assert float(no_cull(face.vertices_screen, model.triangles, vertex_colors=face.vertex_colors).mask[0].sum()) == (
        pytest.approx(float(out.mask[0].sum()), rel=0.01)
    )


def test_rejects_bad_arguments() -> None:
    verts, faces, uv = _square(8)
    renderer = MeshRenderer(image_size=8, backend="torch")
    texture = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        renderer(verts, faces)
    with pytest.raises(ValueError, match="exactly one"):
        renderer(verts, faces, uv_coords=uv, uv_texture=texture, vertex_colors=torch.rand(4, 3))
    with pytest.raises(ValueError, match="uv_coords"):
        renderer(verts, faces, uv_texture=texture)
    with pytest.raises(ValueError, match="vertex_normals"):
        renderer(verts, faces, vertex_colors=torch.rand(4, 3), gamma=torch.zeros(1, 27))
    with pytest.raises(ValueError, match="uv_texture"):
        renderer(verts, faces, uv_coords=uv, uv_texture=torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="background"):
        MeshRenderer(image_size=8, background=2.0)


@needs_pytorch3d
def test_backends_render_the_same_image() -> None:
    from emoedit.face_model import MorphableModel, PerspectiveCamera

    model = MorphableModel.procedural()
    size = 64
    coeffs = torch.zeros(1, model.layout.size)
    coeffs[0, model.layout.slices["angle"]] = torch.tensor([0.1, -0.3, 0.05])
    verts = model(coeffs, PerspectiveCamera().scaled(size)).vertices_screen
    texture = torch.rand(1, 3, 64, 64)
    images = {}
    for backend in ("torch", "pytorch3d"):
        renderer = MeshRenderer(image_size=size, backend=backend)
        images[backend] = renderer(verts, model.triangles, uv_coords=model.uv_coords, uv_texture=texture).image
    diff = (images["torch"] - images["pytorch3d"]).abs().amax(dim=1)
    assert float((diff > 1e-4).float().mean()) <= 0.01
