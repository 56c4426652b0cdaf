"""Tests of emoedit.texture: UV layout tables, image → UV extraction, round trips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emoedit.texture import (
    TextureExtractor,
    UVExtraction,
    UVLayout,
    extract_uv_texture,
    pad_invisible,
    inverse_depth_gradient,
    screen_facing,
)

IMAGE_SIZE = 128  # render size of the round-trip tests (the acceptance size)
TEXTURE_SIZE = 128  # UV texture side of the procedural-model tests


# ---------------------------------------------------------------------------- helpers
def square_mesh(depth: float = 10.0, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two front-facing triangles covering the whole image, UV = image position.

    Returns (triangles (2,3), uv_coords (4,2), vertices_screen (1,4,3)). Vertex k sits at
    image (u·(S−1), v·(S−1)) with constant depth, so the UV mapping is the identity.
    """
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # Negative screen area (y down) = front-facing per the preamble's winding convention.
    triangles = torch.tensor([[0, 3, 2], [0, 2, 1]])
    screen = torch.cat([uv * (image_size - 1), torch.full((4, 1), depth)], dim=1)[None]
    return triangles, uv, screen


def grid_mesh(cells: int, image_size: int, depth: float = 10.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cells×cells quad grid covering the image, front-facing, UV = image position.

    Returns (triangles (2·cells²,3), uv_coords ((cells+1)²,2), vertices_screen (1,(cells+1)²,3)).
    """
    ticks = torch.linspace(0, 1, cells + 1)
    v, u = torch.meshgrid(ticks, ticks, indexing="ij")
    uv = torch.stack([u, v], dim=-1).reshape(-1, 2)
    ids = torch.arange((cells + 1) ** 2).reshape(cells + 1, cells + 1)
    top_left, top_right = ids[:-1, :-1].reshape(-1), ids[:-1, 1:].reshape(-1)
    bottom_left, bottom_right = ids[1:, :-1].reshape(-1), ids[1:, 1:].reshape(-1)
    triangles = torch.cat(
        [
            torch.stack([top_left, bottom_left, bottom_right], dim=1),  # same winding as square_mesh
            torch.stack([top_left, bottom_right, top_right], dim=1),
        ]
    )
    screen = torch.cat([uv * (image_size - 1), torch.full((uv.shape[0], 1), depth)], dim=1)[None]
    return triangles, uv, screen


def uv_function(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A colour that is linear in (u, v): (3, *u.shape) in [0, 1] (bilinear sampling is exact)."""
    return torch.stack([0.1 + 0.8 * u, 0.9 - 0.7 * v, 0.2 + 0.3 * u + 0.4 * v])


def smooth_texture(size: int, seed: int = 0) -> torch.Tensor:
    """(1,3,T,T) in [0,1]: low-frequency noise plus four hard-edged discs (sharp features)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 6, generator=gen)
    texture = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1) * 0.6 + 0.2
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    for _ in range(4):
        cx, cy, r = torch.rand(3, generator=gen).tolist()
        colour = torch.rand(3, 1, 1, generator=gen)
        disc = (xx - (0.2 + 0.6 * cx)) ** 2 + (yy - (0.2 + 0.6 * cy)) ** 2 < (0.04 + 0.06 * r) ** 2
        texture[0] = torch.where(disc, colour, texture[0])
    return texture


def high_frequency_texture(size: int, period: float = 8.0) -> torch.Tensor:
    """(1,3,T,T) in [0.1,0.9]: a checker-like sinusoid of ``period`` texels (finer than the mesh)."""
    ticks = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(ticks, ticks, indexing="ij")
    pattern = 0.5 + 0.4 * torch.sin(2 * math.pi * xx / period) * torch.sin(2 * math.pi * yy / period)
    return pattern.expand(1, 3, size, size).clone()


def masked_psnr(image: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB over the pixels where mask (B,1,H,W) is 1 (images in [0,1])."""
    mse = ((image - reference) ** 2 * mask).sum() / (mask.sum() * image.shape[1])
    return float(10.0 * torch.log10(1.0 / mse))


def pose_screen(model, yaw: float = 0.0, pitch: float = 0.0, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """(1,V,3) vertices_screen of the model's mean face under the given pose."""
    from emoedit.face_model import PerspectiveCamera

    coeffs = torch.zeros(1, model.layout.size)
    coeffs[0, model.layout.slices["angle"]] = torch.tensor([pitch, yaw, 0.0])
    return model(coeffs, PerspectiveCamera().scaled(image_size)).vertices_screen


def uv_triangle_area(triangles: torch.Tensor, uv: torch.Tensor) -> float:
    """Total UV area of the triangles, in [0,1]² units."""
    a = uv[triangles[:, 1]] - uv[triangles[:, 0]]
    b = uv[triangles[:, 2]] - uv[triangles[:, 0]]
    return float(0.5 * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).abs().sum())


@pytest.fixture(scope="module")
def model():
    from emoedit.face_model import MorphableModel

    return MorphableModel.procedural()


@pytest.fixture(scope="module")
def layout(model) -> UVLayout:
    return UVLayout.from_model(model, TEXTURE_SIZE)


@pytest.fixture(scope="module")
def renderer():
    from emoedit.render import MeshRenderer

    return MeshRenderer(image_size=IMAGE_SIZE)


# ---------------------------------------------------------------------------- layout
def test_layout_tables_shapes_and_barycentrics(layout: UVLayout) -> None:
    size = TEXTURE_SIZE
    assert layout.texture_size == size
    assert layout.face_index.shape == (size, size) and layout.face_index.dtype == torch.int64
    assert layout.bary_coords.shape == (size, size, 3)
    assert layout.coverage_mask.shape == (size, size) and layout.coverage_mask.dtype == torch.bool
    filled = layout.filled_mask
    assert bool((layout.coverage_mask <= filled).all()), "covered texels must be filled"
    assert bool((layout.bary_coords >= 0).all())
    sums = layout.bary_coords.sum(-1)
    torch.testing.assert_close(sums[filled], torch.ones_like(sums[filled]), atol=1e-5, rtol=0)
    assert bool((layout.bary_coords[~filled] == 0).all())
    assert int(layout.face_index.max()) < layout.triangles.shape[0]
    assert bool((layout.face_index[~filled] == -1).all())


def test_layout_covers_uv_area(model, layout: UVLayout) -> None:
    """≥ 95% of the UV triangles' area is covered by texels (and no more than it, +5%)."""
    area_texels = uv_triangle_area(model.triangles, model.uv_coords) * (TEXTURE_SIZE - 1) ** 2
    ratio = float(layout.coverage_mask.sum()) / area_texels
    assert 0.95 <= ratio <= 1.05, ratio


def test_layout_barycentrics_locate_texel_centres(layout: UVLayout) -> None:
    """Known answer: on covered texels Σ b_k · uv_k · (T−1) is the texel centre (x=j, y=i)."""
    size = TEXTURE_SIZE
    uv = layout.interpolate(layout.uv_coords)[0] * (size - 1)  # (2,T,T)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    covered = layout.coverage_mask
    torch.testing.assert_close(uv[0][covered], cols[covered].float(), atol=2e-3, rtol=0)
    torch.testing.assert_close(uv[1][covered], rows[covered].float(), atol=2e-3, rtol=0)


def test_layout_gutter_is_dilation_of_coverage() -> None:
    """One triangle in the middle of the UV square: the gutter is exactly `dilation` texels wide
    (Chebyshev), and gutter texels repeat a nearby point of the triangle (no black)."""
    size, dilation = 32, 2
    triangles = torch.tensor([[0, 1, 2]])
    uv = torch.tensor([[0.25, 0.3], [0.75, 0.35], [0.4, 0.8]])
    layout = UVLayout.build(triangles, uv, size, dilation=dilation)
    covered = layout.coverage_mask.float()[None, None]
    grown = covered
    for _ in range(dilation):
        grown = F.max_pool2d(grown, 3, stride=1, padding=1)
    assert torch.equal(layout.filled_mask, grown[0, 0] > 0)
    assert int(layout.coverage_mask.sum()) > 0 and int((layout.filled_mask & ~layout.coverage_mask).sum()) > 0
    # Gutter texels sample a point of the triangle within `dilation` texels of themselves.
    gutter = layout.filled_mask & ~layout.coverage_mask
    pos = layout.interpolate(uv)[0] * (size - 1)  # (2,T,T)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cheb = torch.maximum((pos[0] - cols).abs(), (pos[1] - rows).abs())
    assert float(cheb[gutter].max()) <= dilation + 1e-4
    # No gutter when dilation = 0, same coverage.
    bare = UVLayout.build(triangles, uv, size, dilation=0)
    assert torch.equal(bare.filled_mask, bare.coverage_mask)
    assert torch.equal(bare.coverage_mask, layout.coverage_mask)


def test_layout_interpolate_shapes_and_buffers(layout: UVLayout) -> None:
    values = torch.rand(2, layout.num_vertices, 5)
    out = layout.interpolate(values)
    assert out.shape == (2, 5, TEXTURE_SIZE, TEXTURE_SIZE)
    assert bool((out[:, :, ~layout.filled_mask] == 0).all())
    assert set(layout.state_dict()) == {"triangles", "uv_coords", "face_index", "bary_coords", "coverage_mask"}
    assert layout.to(torch.float64).bary_coords.dtype == torch.float64  # buffers follow .to()
    layout.to(torch.float32)


def test_layout_validation() -> None:
    triangles, uv, _ = square_mesh()
    with pytest.raises(ValueError, match="texture_size"):
        UVLayout.build(triangles, uv, 1)
    with pytest.raises(ValueError, match="dilation"):
        UVLayout.build(triangles, uv, 8, dilation=-1)
    with pytest.raises(ValueError, match="uv_coords"):
        UVLayout.build(triangles, uv * 2.0, 8)
    with pytest.raises(TypeError, match="int64"):
        UVLayout.build(triangles.float(), uv, 8)
    with pytest.raises(TypeError, match="floating"):
        UVLayout.build(triangles, uv.long(), 8)
    with pytest.raises(ValueError, match="outside"):
        UVLayout.build(triangles + 3, uv, 8)
    with pytest.raises(ValueError, match="uv_coords"):
        UVLayout.build(triangles, uv[:, :1], 8)
    with pytest.raises(ValueError, match="triangles"):
        UVLayout.from_model(torch.nn.Linear(2, 2), 8)


# ---------------------------------------------------------------------------- extraction: known answers
@pytest.mark.parametrize("sampling", ["image_coords", "vertex_colors"])
def test_square_linear_function_recovered_exactly(sampling: str) -> None:
    """A texture that is a linear function of (u, v), rendered frontally as the same function of
    image position at another resolution, is recovered exactly by both samplings."""
    size, image_size = 24, 37
    triangles, uv, screen = square_mesh(image_size=image_size)
    layout = UVLayout.build(triangles, uv, size)
    grid = torch.linspace(0, 1, image_size)
    image = uv_function(grid[None, :].expand(image_size, -1), grid[:, None].expand(-1, image_size))[None]
    result = TextureExtractor(layout=layout, sampling=sampling)(image, screen)
    assert isinstance(result, UVExtraction)
    assert bool((result.visibility == 1).all())
    texel = torch.linspace(0, 1, size)
    expected = uv_function(texel[None, :].expand(size, -1), texel[:, None].expand(-1, size))[None]
    torch.testing.assert_close(result.uv_texture, expected, atol=1e-5, rtol=0)


def test_square_arbitrary_image_recovered_exactly_at_same_size() -> None:
    """Known answer: with T = image size and the identity UV mapping, every texel is a pixel."""
    size = 32
    triangles, uv, screen = square_mesh(image_size=size)
    image = torch.rand(2, 3, size, size)
    layout = UVLayout.build(triangles, uv, size)
    result = TextureExtractor(layout=layout)(image, screen.expand(2, -1, -1))
    torch.testing.assert_close(result.uv_texture, image, atol=1e-5, rtol=0)
    assert bool((result.visibility == 1).all())
    # Every texel centre lies on the square, including those on its border edges.
    assert bool(layout.coverage_mask.all())
    assert bool(UVLayout.build(triangles, uv, size, dilation=0).coverage_mask.all())


def test_square_back_facing_and_outside_are_masked() -> None:
    size = 16
    triangles, uv, screen = square_mesh(image_size=size)
    image = torch.rand(1, 3, size, size)
    flipped = UVLayout.build(triangles[:, [0, 2, 1]], uv, size)  # wound away from the camera
    result = TextureExtractor(layout=flipped)(image, screen)
    assert float(result.visibility.max()) == 0.0 and float(result.uv_texture.abs().max()) == 0.0
    # Shift the square half out of the image: the texels that land outside are masked.
    layout = UVLayout.build(triangles, uv, size)
    shifted = screen.clone()
    shifted[..., 0] += size / 2
    result = TextureExtractor(layout=layout)(image, shifted)
    u_img = torch.arange(size).float() + size / 2  # column j of the texture lands at x = j + S/2
    expected_visible = (u_img <= size - 1).float().expand(size, -1)
    torch.testing.assert_close(result.visibility[0, 0], expected_visible)


def test_square_occluded_texels_are_masked() -> None:
    """A second, nearer square covering the left half of the image hides the far square there."""
    size = 16
    triangles, uv, screen = square_mesh(image_size=size)
    near = screen.clone()
    near[..., 2] = 5.0
    near[..., 0] = near[..., 0] * 0.5 - 0.25  # spans x ∈ [−0.25, 7.25]
    vertices = torch.cat([screen, near], dim=1)  # (1,8,3)
    all_triangles = torch.cat([triangles, triangles + 4])
    all_uv = torch.cat([uv * torch.tensor([0.5, 1.0]), uv * torch.tensor([0.5, 1.0]) + torch.tensor([0.5, 0.0])])
    layout = UVLayout.build(all_triangles, all_uv, 2 * size - 1)
    result = TextureExtractor(layout=layout)(torch.rand(1, 3, size, size), vertices)
    # Texture column j of the far chart lands at image x = j; row i at y = i/2. Row 0 lies
    # exactly on the squares' top edge, whose pixel centres the rasteriser leaves to the
    # triangle above (none): with no surface seen there it is not occluded, so skip it.
    visibility = result.visibility[0, 0, 1:]
    far_part = visibility[:, :size]
    assert float(far_part[:, :7].max()) == 0.0  # hidden behind the near square (x ≤ 7.25)
    assert float(far_part[:, 8:15].min()) == 1.0  # column 15 is the seam shared with the near chart
    assert float(visibility[:, size + 1 :].min()) == 1.0  # the near square itself is visible


def test_steep_surface_is_not_its_own_occluder() -> None:
    """A finely triangulated planar sheet tilted so depth grows 0.12–0.18 per pixel: a texel's
    bilinear taps see neighbouring triangles of the same surface nearer than its point by
    more than the tolerance; the slope-scaled bias keeps it visible, a plain depth test
    (max_slope_bias=0) masks many texels."""
    size, cells = 16, 10
    triangles, uv, screen = grid_mesh(cells, image_size=size)
    screen[..., 2] = 1.0 / (0.1 - 0.0012 * screen[..., 0])  # planar in 3D: 1/depth affine in x_img
    layout = UVLayout.build(triangles, uv, 2 * size - 1)  # texels between pixel centres
    image = torch.rand(1, 3, size, size)
    biased = TextureExtractor(layout=layout)(image, screen).visibility
    assert float(biased.min()) == 1.0
    plain = TextureExtractor(layout=layout, max_slope_bias=0.0)(image, screen).visibility
    assert float(plain.mean()) < 0.8


def test_inverse_depth_gradient_known_answer() -> None:
    triangles, _, screen = square_mesh(image_size=9)
    screen[..., 2] = 1.0 / (0.1 + 0.001 * screen[..., 0] - 0.002 * screen[..., 1])
    grad = inverse_depth_gradient(screen, triangles)
    torch.testing.assert_close(grad, torch.tensor([0.001, -0.002]).expand(1, 2, 2))
    facing = screen_facing(screen, triangles)
    assert bool(facing.all()) and not bool(screen_facing(screen, triangles[:, [0, 2, 1]]).any())


def test_pad_invisible_grows_visible_colours() -> None:
    visibility = torch.zeros(1, 1, 9, 9)
    visibility[..., 4, 4] = 1.0
    texture = torch.rand(1, 3, 9, 9)
    padded = pad_invisible(texture, visibility, 2)
    ring = torch.zeros(9, 9, dtype=torch.bool)
    ring[2:7, 2:7] = True
    torch.testing.assert_close(padded[..., ring], texture[..., 4:5, 4:5].expand(-1, -1, 5, 5).reshape(1, 3, -1))
    assert bool((padded[..., ~ring] == 0).all())
    torch.testing.assert_close(pad_invisible(texture, visibility, 0), texture * visibility)


# ---------------------------------------------------------------------------- procedural model
@pytest.mark.parametrize("yaw", [0.0, 0.35, -0.7])
def test_round_trip_psnr(model, layout: UVLayout, renderer, yaw: float) -> None:
    """Issue acceptance: render a textured face, extract its UV texture, re-render it:
    PSNR over the face pixels ≥ 30 dB."""
    screen = pose_screen(model, yaw=yaw)
    texture = smooth_texture(TEXTURE_SIZE)
    rendered = renderer(screen, model.triangles, uv_coords=model.uv_coords, uv_texture=texture)
    extraction = TextureExtractor(layout=layout)(rendered.image, screen)
    again = renderer(screen, model.triangles, uv_coords=layout.uv_coords, uv_texture=extraction.uv_texture)
    psnr = masked_psnr(again.image, rendered.image, rendered.mask)
    assert psnr >= 30.0, f"round-trip PSNR {psnr:.2f} dB at yaw {yaw}"
    # The render's own fragments can be reused for the occlusion test: same answer here.
    reused = TextureExtractor(layout=layout)(rendered.image, screen, fragments=rendered.fragments)
    agree = float((reused.visibility == extraction.visibility).float().mean())
    assert agree > 0.99


def test_image_coords_beat_vertex_colors_on_high_frequencies(model, layout: UVLayout, renderer) -> None:
    """METHOD §3.2 project choice: sampling at interpolated image coordinates keeps detail
    finer than the mesh that per-vertex colours lose."""
    screen = pose_screen(model)
    texture = high_frequency_texture(TEXTURE_SIZE, period=8.0)
    rendered = renderer(screen, model.triangles, uv_coords=model.uv_coords, uv_texture=texture)
    psnr = {}
    for sampling in ("image_coords", "vertex_colors"):
        uv_texture = TextureExtractor(layout=layout, sampling=sampling)(rendered.image, screen).uv_texture
        again = renderer(screen, model.triangles, uv_coords=model.uv_coords, uv_texture=uv_texture)
        psnr[sampling] = masked_psnr(again.image, rendered.image, rendered.mask)
    assert psnr["image_coords"] >= psnr["vertex_colors"] + 5.0, psnr


def _texel_model_positions(model, layout: UVLayout) -> torch.Tensor:
    """(3,T,T) model-space (mean shape) position of every texel's surface point."""
    return layout.interpolate(model.mean_shape)[0]


def test_visibility_masks_far_cheek_when_turned(model, layout: UVLayout) -> None:
    """Turned 60° in yaw, the far cheek's texels are masked and the near cheek's are kept."""
    screen = pose_screen(model, yaw=math.radians(60.0))
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    visibility = TextureExtractor(layout=layout)(image, screen).visibility[0, 0]
    x, y, _ = _texel_model_positions(model, layout)
    # Which side turned away: the one whose vertices moved farther from the camera.
    depth = screen[0, :, 2]
    far_sign = 1.0 if float(((model.mean_shape[:, 0]) * (depth - depth.mean())).sum()) > 0 else -1.0
    cheek_height = (y > -0.5) & (y < 0.1) & layout.coverage_mask
    far_cheek = cheek_height & (x * far_sign > 0.45)
    near_cheek = cheek_height & (x * far_sign < -0.45)
    assert int(far_cheek.sum()) > 100 and int(near_cheek.sum()) > 100
    assert float(visibility[far_cheek].mean()) < 0.02
    assert float(visibility[near_cheek].mean()) > 0.98
    # Every texel of a back-facing triangle is masked.
    facing = screen_facing(screen, model.triangles)[0][layout.face_index.clamp(min=0)]
    assert float(visibility[~facing].max()) == 0.0
    frontal = TextureExtractor(layout=layout)(image, pose_screen(model)).visibility[0, 0]
    assert float(frontal[far_cheek].mean()) > 0.98


def test_visibility_masks_texels_hidden_by_nose(model, layout: UVLayout, renderer) -> None:
    """Turned 60°, front-facing texels just beside the nose on the far side are hidden by it."""
    screen = pose_screen(model, yaw=math.radians(60.0))
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    extractor = TextureExtractor(layout=layout)
    visibility = extractor(image, screen).visibility[0, 0] > 0
    x, y, z = _texel_model_positions(model, layout)
    depth = screen[0, :, 2]
    far_sign = 1.0 if float(((model.mean_shape[:, 0]) * (depth - depth.mean())).sum()) > 0 else -1.0
    facing = screen_facing(screen, model.triangles)[0][layout.face_index.clamp(min=0)]
    beside_nose = (x * far_sign > 0.15) & (x * far_sign < 0.4) & (y > -0.45) & (y < 0.05) & layout.coverage_mask
    hidden = beside_nose & facing & ~visibility
    assert int(hidden.sum()) >= 50
    assert float(hidden.sum()) >= 0.7 * float((beside_nose & facing).sum())
    # Independent check: a pixel the hidden texel's bilinear sample reads shows the nose
    # (a triangle near the midline that sticks out farther than the texel's point).
    corners = layout.gather_corners(screen)[0]  # (T,T,3,3)
    bary = layout.bary_coords
    point_depth = (bary * corners[..., 2]).sum(-1)
    weights = bary * corners[..., 2] / point_depth[..., None]
    xy = (weights[..., None] * corners[..., :2]).sum(-2)[hidden]  # (N,2)
    texel_z = z[hidden]
    plain = renderer(screen, model.triangles, vertex_colors=torch.ones(model.num_vertices, 3))
    pix_to_face = plain.fragments.pix_to_face[0]
    centroids = model.mean_shape[model.triangles].mean(1)  # (F,3)
    shows_nose = torch.zeros_like(texel_z, dtype=torch.bool)
    for d_col in (0, 1):
        for d_row in (0, 1):
            row = (xy[:, 1].floor().long() + d_row).clamp(0, IMAGE_SIZE - 1)
            col = (xy[:, 0].floor().long() + d_col).clamp(0, IMAGE_SIZE - 1)
            seen = pix_to_face[row, col]
            c = centroids[seen.clamp(min=0)]
            shows_nose |= (seen >= 0) & (c[:, 0].abs() < 0.2) & (c[:, 2] > texel_z)
    assert float(shows_nose.float().mean()) > 0.9
    # Frontal, the same region is seen.
    frontal = extractor(image, pose_screen(model)).visibility[0, 0]
    assert float(frontal[beside_nose].mean()) > 0.98


# ---------------------------------------------------------------------------- batching, gradients, validation
def test_batched_equals_single(model, layout: UVLayout) -> None:
    screens = torch.cat([pose_screen(model, yaw=0.3), pose_screen(model, yaw=-0.5, pitch=0.2)])
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    extractor = TextureExtractor(layout=layout)
    both = extractor(images, screens)
    assert both.uv_texture.shape == (2, 3, TEXTURE_SIZE, TEXTURE_SIZE)
    assert both.visibility.shape == (2, 1, TEXTURE_SIZE, TEXTURE_SIZE)
    for k in range(2):
        single = extractor(images[k : k + 1], screens[k : k + 1])
        torch.testing.assert_close(both.uv_texture[k : k + 1], single.uv_texture)
        torch.testing.assert_close(both.visibility[k : k + 1], single.visibility)
    assert float(both.uv_texture.min()) >= 0.0 and float(both.uv_texture.max()) <= 1.0
    unpadded = TextureExtractor(layout=layout, pad_texels=0)(images, screens)
    torch.testing.assert_close(unpadded.visibility, both.visibility)
    assert bool((unpadded.uv_texture * (1 - unpadded.visibility) == 0).all())
    torch.testing.assert_close(unpadded.uv_texture * unpadded.visibility, both.uv_texture * both.visibility)
    functional = extract_uv_texture(images, screens, layout)
    torch.testing.assert_close(functional.uv_texture, both.uv_texture)


@pytest.mark.parametrize("sampling", ["image_coords", "vertex_colors"])
def test_gradients_flow_to_image(model, layout: UVLayout, sampling: str) -> None:
    screen = pose_screen(model, yaw=0.2)
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, requires_grad=True)
    result = TextureExtractor(layout=layout, sampling=sampling)(image, screen)
    (result.uv_texture * torch.rand_like(result.uv_texture)).sum().backward()
    assert image.grad is not None and bool(torch.isfinite(image.grad).all())
    assert int((image.grad.abs() > 0).sum()) > 1000


def test_gradcheck_wrt_image() -> None:
    from emoedit.render import make_rasterizer

    triangles, uv, screen = square_mesh(image_size=6)
    screen = screen.double()
    layout = UVLayout.build(triangles, uv, 4).to(torch.float64)
    extractor = TextureExtractor(layout=layout)
    fragments = make_rasterizer("torch")(screen, triangles, (6, 6))
    image = (torch.rand(1, 3, 6, 6, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda img: extractor(img, screen, fragments=fragments).uv_texture,
        (image,),
        eps=1e-6,
        atol=1e-6,
        fast_mode=True,
    )


def test_extraction_validation(model, layout: UVLayout) -> None:
    screen = pose_screen(model)
    image = torch.rand(1, 3, 32, 32)
    extractor = TextureExtractor(layout=layout)
    with pytest.raises(ValueError, match="image"):
        extractor(torch.rand(1, 4, 32, 32), screen)
    with pytest.raises(ValueError, match="vertices_screen"):
        extractor(image, screen[:, :-1])
    with pytest.raises(ValueError, match="vertices_screen"):
        extractor(image.expand(2, -1, -1, -1), screen)  # batch mismatch
    with pytest.raises(ValueError, match="must lie in"):
        extractor(image * 2.0 - 1.0, screen)
    with pytest.raises(TypeError, match="float"):
        extractor((image * 255).to(torch.uint8), screen)
    behind = screen.clone()
    behind[..., 2] = -1.0
    with pytest.raises(ValueError, match="depth"):
        extractor(image, behind)
    from emoedit.render import make_rasterizer

    wrong_size = make_rasterizer("torch")(screen, model.triangles, (16, 16))
    with pytest.raises(ValueError, match="zbuf"):
        extractor(image, screen, fragments=wrong_size)
    with pytest.raises(ValueError, match="sampling"):
        TextureExtractor(layout=layout, sampling="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth_tolerance"):
        TextureExtractor(layout=layout, depth_tolerance=-1.0)
    with pytest.raises(ValueError, match="max_slope_bias"):
        TextureExtractor(layout=layout, max_slope_bias=-1.0)
    with pytest.raises(ValueError, match="pad_texels"):
        TextureExtractor(layout=layout, pad_texels=-1)
    with pytest.raises(TypeError, match="UVLayout"):
        TextureExtractor(layout=model)  # type: ignore[arg-type]
