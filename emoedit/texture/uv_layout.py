"""Per-texel lookup tables of a UV layout: which triangle owns each texel, and where in it.

A face model's ``uv_coords`` (V,2) put every vertex at a fixed place of the texture image
(METHOD §3.2: one template shared by every face). ``UVLayout.build`` rasterises that UV
mesh once into a T×T image and stores, for every texel, the owning triangle and the
texel's barycentric coordinates in it. Image → UV extraction and vertex → UV
interpolation are then gathers over these tables.

Conventions (docs/agent/preamble.md): ``uv_coords`` in [0,1], u to the right, v downward,
texel (row i, col j) sits at (u, v) = (j/(T−1), i/(T−1)).

Texels just outside the layout's triangles (the *gutter*, ``dilation`` texels wide) copy
the triangle and barycentrics of their nearest covered texel, so bilinear sampling of the
texture near seams and chart borders never pulls in black; ``coverage_mask`` keeps the
texels that really lie inside a triangle, ``filled_mask`` those that hold a value.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emoedit.render import make_rasterizer
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

# Neighbour offsets (d_row, d_col) tried in order when growing the gutter: the four edge
# neighbours first, so a texel copies an edge neighbour before a diagonal one.
_NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (0, -1), (0, 1), (-1, 0), (1, 0),
    (-1, -1), (-1, 1), (1, -1), (1, 1),
)

# A gutter texel whose own barycentrics w.r.t. the copied triangle are all >= -this lies on
# that triangle (on an edge the rasteriser's tie rule left out): it counts as covered.
_ON_TRIANGLE_EPS = 1e-6

# Constant depth given to the flat UV mesh when rasterising it (any positive value works).
_UV_MESH_DEPTH = 1.0


def _shift(image: Tensor, d_row: int, d_col: int, fill: float | int) -> Tensor:
    """``out[i, j] = image[i + d_row, j + d_col]`` (``fill`` where that is outside).

    image: (T, T, ...) any dtype. Returns the same shape and dtype.
    """
    rows, cols = image.shape[0], image.shape[1]
    out = torch.full_like(image, fill)
    src_r = slice(max(d_row, 0), rows + min(d_row, 0))
    dst_r = slice(max(-d_row, 0), rows + min(-d_row, 0))
    src_c = slice(max(d_col, 0), cols + min(d_col, 0))
    dst_c = slice(max(-d_col, 0), cols + min(-d_col, 0))
    out[dst_r, dst_c] = image[src_r, src_c]
    return out


def _texel_barycentrics(face_index: Tensor, uv_pixels: Tensor, triangles: Tensor) -> tuple[Tensor, Tensor]:
    """Exact barycentrics of every texel centre w.r.t. its assigned triangle, in float64.

    face_index: (T,T) int64, −1 = none. uv_pixels: (V,2) float64 texel-space (x, y) of the
    vertices. triangles: (F,3) int64.
    Returns ``bary`` (T,T,3) float64 (unclamped; zeros where no triangle or degenerate) and
    ``valid`` (T,T) bool (a triangle is assigned and it is not degenerate in UV).
    """
    size = face_index.shape[0]
    rows, cols = torch.meshgrid(
        torch.arange(size, dtype=torch.float64, device=face_index.device),
        torch.arange(size, dtype=torch.float64, device=face_index.device),
        indexing="ij",
    )
    point = torch.stack([cols, rows], dim=-1)  # (T,T,2) texel centre (x, y)
    corners = uv_pixels[triangles[face_index.clamp(min=0)]]  # (T,T,3,2)
    a, b, c = corners.unbind(dim=-2)
    v0, v1, v2 = b - a, c - a, point - a
    d00 = (v0 * v0).sum(-1)
    d01 = (v0 * v1).sum(-1)
    d11 = (v1 * v1).sum(-1)
    d20 = (v2 * v0).sum(-1)
    d21 = (v2 * v1).sum(-1)
    denom = d00 * d11 - d01 * d01
    valid = (face_index >= 0) & (denom.abs() > 1e-12)
    safe = torch.where(valid, denom, torch.ones_like(denom))
    beta = (d11 * d20 - d01 * d21) / safe
    gamma = (d00 * d21 - d01 * d20) / safe
    bary = torch.stack([1.0 - beta - gamma, beta, gamma], dim=-1)
    bary = torch.where(valid[..., None], bary, torch.zeros_like(bary))
    return bary, valid


def _normalise_barycentrics(bary: Tensor) -> Tensor:
    """Clamp (…,3) barycentrics to ≥ 0 and rescale them to sum to 1 (rows of zeros stay 0)."""
    bary = bary.clamp(min=0.0)
    total = bary.sum(-1, keepdim=True)
    return torch.where(total > 0, bary / total.clamp(min=1e-12), bary)


class UVLayout(nn.Module):
    """Texel → (triangle, barycentrics) tables of one UV layout. Buffers only.

    Build with :meth:`build` (or :meth:`from_model`); ``__init__`` only stores tables.

    Buffers:
        triangles: (F,3) int64 vertex ids (shared topology of the face model).
        uv_coords: (V,2) float in [0,1], u right, v down.
        face_index: (T,T) int64 owning triangle of each texel; −1 outside the layout
            (gutter texels hold the triangle of their nearest covered texel).
        bary_coords: (T,T,3) float barycentrics in that triangle, each ≥ 0, summing to 1
            on filled texels; zeros elsewhere.
        coverage_mask: (T,T) bool, texel centre lies inside a UV triangle.
    """

    triangles: Tensor
    uv_coords: Tensor
    face_index: Tensor
    bary_coords: Tensor
    coverage_mask: Tensor

    def __init__(
        self,
        *,
        triangles: Tensor,  # (F,3) int64 vertex ids
        uv_coords: Tensor,  # (V,2) float in [0,1], u right, v down
        face_index: Tensor,  # (T,T) int64 owning triangle per texel, -1 = empty
        bary_coords: Tensor,  # (T,T,3) float barycentrics per texel
        coverage_mask: Tensor,  # (T,T) bool texel centre inside a triangle
    ) -> None:
        super().__init__()
        dims = assert_shape(triangles, (None, 3), "triangles")
        assert_shape(uv_coords, ("V", 2), "uv_coords", dims)
        dims = assert_shape(face_index, ("T", "T"), "face_index", dims)
        assert_shape(bary_coords, ("T", "T", 3), "bary_coords", dims)
        assert_shape(coverage_mask, ("T", "T"), "coverage_mask", dims)
        if triangles.dtype != torch.int64 or face_index.dtype != torch.int64:
            raise TypeError("UVLayout: triangles and face_index must be int64")
        if coverage_mask.dtype != torch.bool:
            raise TypeError("UVLayout: coverage_mask must be bool")
        self.register_buffer("triangles", triangles)
        self.register_buffer("uv_coords", uv_coords)
        self.register_buffer("face_index", face_index)
        self.register_buffer("bary_coords", bary_coords)
        self.register_buffer("coverage_mask", coverage_mask)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def build(
        cls,
        triangles: Tensor,  # (F,3) int64 vertex ids
        uv_coords: Tensor,  # (V,2) float in [0,1], u right, v down
        texture_size: int,  # T, side of the square texture in texels
        *,
        dilation: int = 2,  # gutter width in texels grown around the covered texels
        backend: str = "torch",  # rasteriser backend (emoedit.render.make_rasterizer)
    ) -> UVLayout:
        """Rasterise the UV mesh once into T×T lookup tables.

        The UV mesh has vertices (u·(T−1), v·(T−1), const depth) and is rasterised with no
        back-face culling (UV triangles may have either orientation). The rasteriser picks
        the owning triangle; barycentrics are then recomputed in closed form (float64) at
        each texel centre, so they are exact and sum to 1.
        """
        if not isinstance(texture_size, int) or texture_size < 2:
            raise ValueError(f"UVLayout.build: texture_size must be an int >= 2, got {texture_size!r}")
        if dilation < 0:
            raise ValueError(f"UVLayout.build: dilation must be >= 0, got {dilation}")
        dims = assert_shape(triangles, (None, 3), "triangles")
        assert_shape(uv_coords, ("V", 2), "uv_coords", dims)
        if triangles.dtype != torch.int64:
            raise TypeError(f"UVLayout.build: triangles must be int64, got {triangles.dtype}")
        if not uv_coords.is_floating_point():
            raise TypeError(f"UVLayout.build: uv_coords must be floating point, got {uv_coords.dtype}")
        assert_finite(uv_coords, "uv_coords")
        assert_range(uv_coords, 0.0, 1.0, "uv_coords", atol=1e-6)
        if triangles.numel() and (int(triangles.min()) < 0 or int(triangles.max()) >= uv_coords.shape[0]):
            raise ValueError(
                f"UVLayout.build: triangles index vertices outside [0, {uv_coords.shape[0]})"
            )

        size = texture_size
        device = uv_coords.device
        uv_pixels = uv_coords.detach().to(torch.float64).clamp(0.0, 1.0) * (size - 1)  # (V,2)
        depth = torch.full((uv_pixels.shape[0], 1), _UV_MESH_DEPTH, dtype=torch.float64, device=device)
        uv_mesh = torch.cat([uv_pixels, depth], dim=-1).to(torch.float32)[None]  # (1,V,3)

        rasterizer = make_rasterizer(backend, cull_backfaces=False, perspective_correct=False)
        fragments = rasterizer(uv_mesh, triangles, (size, size))
        face_index = fragments.pix_to_face[0].to(torch.int64).clone()  # (T,T)

        bary, valid = _texel_barycentrics(face_index, uv_pixels, triangles)
        fallback = fragments.bary_coords[0].detach().to(torch.float64)
        bary = torch.where(valid[..., None], bary, fallback)  # degenerate UV triangles
        bary = _normalise_barycentrics(bary)
        coverage = face_index >= 0

        # Grow ring by ring. A texel copies the triangle and barycentrics of a filled
        # neighbour (gutter); if its own centre lies on that triangle (an edge pixel centre
        # the rasteriser's tie rule gave to no triangle of this chart), it gets its own exact
        # barycentrics and counts as covered. One ring runs even with dilation = 0, keeping
        # only those covered texels.
        filled = coverage.clone()
        for ring in range(max(dilation, 1)):
            grown_face = face_index.clone()
            grown_bary = bary.clone()
            taken = torch.zeros_like(filled)
            for d_row, d_col in _NEIGHBOUR_OFFSETS:
                nb_face = _shift(face_index, d_row, d_col, -1)
                nb_bary = _shift(bary, d_row, d_col, 0.0)
                take = ~filled & ~taken & (nb_face >= 0)
                grown_face[take] = nb_face[take]
                grown_bary[take] = nb_bary[take]
                taken |= take
            own_bary, own_valid = _texel_barycentrics(grown_face, uv_pixels, triangles)
            on_triangle = taken & own_valid & (own_bary.min(dim=-1).values >= -_ON_TRIANGLE_EPS)
            grown_bary = torch.where(on_triangle[..., None], _normalise_barycentrics(own_bary), grown_bary)
            keep = taken if ring < dilation else on_triangle
            face_index = torch.where(keep, grown_face, face_index)
            bary = torch.where(keep[..., None], grown_bary, bary)
            coverage |= on_triangle
            filled |= keep

        return cls(
            triangles=triangles.clone(),
            uv_coords=uv_coords.detach().clone(),
            face_index=face_index,
            bary_coords=bary.to(uv_coords.dtype),
            coverage_mask=coverage,
        )

    @classmethod
    def from_model(
        cls,
        model: nn.Module,  # a MorphableModel (buffers ``triangles`` (F,3), ``uv_coords`` (V,2))
        texture_size: int,  # T, side of the square texture in texels
        *,
        dilation: int = 2,  # gutter width in texels
        backend: str = "torch",  # rasteriser backend
    ) -> UVLayout:
        """Build the layout of a face model's UV template (METHOD §3.2)."""
        triangles = getattr(model, "triangles", None)
        uv_coords = getattr(model, "uv_coords", None)
        if not isinstance(triangles, Tensor) or not isinstance(uv_coords, Tensor):
            raise ValueError(
                f"UVLayout.from_model: {type(model).__name__} has no tensor attributes "
                "'triangles' (F,3) and 'uv_coords' (V,2)"
            )
        return cls.build(triangles, uv_coords, texture_size, dilation=dilation, backend=backend)

    # ------------------------------------------------------------------ properties
    @property
    def texture_size(self) -> int:
        """T, side of the square texture in texels."""
        return int(self.face_index.shape[0])

    @property
    def num_vertices(self) -> int:
        """V, vertices of the mesh the layout belongs to."""
        return int(self.uv_coords.shape[0])

    @property
    def filled_mask(self) -> Tensor:
        """(T,T) bool: texels that hold a value (covered texels plus the gutter)."""
        return self.face_index >= 0

    def texel_vertex_ids(self) -> Tensor:
        """(T,T,3) int64 vertex ids of each texel's triangle (triangle 0 on empty texels)."""
        return self.triangles[self.face_index.clamp(min=0)]

    # ------------------------------------------------------------------ operations
    def gather_corners(self, vertex_attributes: Tensor) -> Tensor:
        """Per-texel attributes of the three corners of its triangle.

        vertex_attributes: (B,V,C) any float. Returns (B,T,T,3,C) (corner axis third from
        last; values of triangle 0 on empty texels — mask with ``filled_mask``).
        """
        assert_shape(vertex_attributes, (None, self.num_vertices, None), "vertex_attributes")
        batch, _, channels = vertex_attributes.shape
        size = self.texture_size
        ids = self.texel_vertex_ids().reshape(-1)  # (T·T·3,)
        corners = vertex_attributes.index_select(1, ids)  # (B, T·T·3, C)
        return corners.reshape(batch, size, size, 3, channels)

    def interpolate(self, vertex_attributes: Tensor) -> Tensor:
        """Interpolate per-vertex attributes over the UV triangles into a texture.

        vertex_attributes: (B,V,C) or (V,C) float (e.g. albedo in [0,1], colours).
        Returns (B,C,T,T) (B = 1 for unbatched input), barycentric (affine in UV) mix of
        the texel's triangle corners; zeros on texels outside ``filled_mask``.
        Differentiable w.r.t. ``vertex_attributes``.
        """
        if vertex_attributes.ndim == 2:
            vertex_attributes = vertex_attributes[None]
        assert_shape(vertex_attributes, (None, self.num_vertices, None), "vertex_attributes")
        corners = self.gather_corners(vertex_attributes)  # (B,T,T,3,C)
        bary = self.bary_coords.to(corners.dtype)
        texture = (corners * bary[None, ..., None]).sum(dim=-2)  # (B,T,T,C)
        texture = texture * self.filled_mask[None, ..., None].to(texture.dtype)
        return texture.permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (
            f"texture_size={self.texture_size}, faces={self.triangles.shape[0]}, "
            f"vertices={self.num_vertices}, covered={int(self.coverage_mask.sum())}, "
            f"filled={int(self.filled_mask.sum())}"
        )
