"""Screen-space triangle geometry shared by every rasteriser backend.

Backends only decide *which* triangle is visible at each pixel (no autograd); the
barycentric weights and the depth of that triangle at the pixel centre are then recomputed
here in plain, differentiable PyTorch from the vertex tensor, so every backend has the
same gradients.

Edge functions are evaluated in the "relative" form ``cross(a - p, b - p)``: for an edge
shared by two triangles the two evaluations are exact negations of each other in floating
point (the same rounded differences and products, in the opposite order), which is what
makes the torch backend's coverage watertight.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from emoedit.render.fragments import Fragments
from emoedit.shape_checks import assert_shape

# Vertex order of the edge opposite vertex i is (NEXT[i], PREV[i]); its edge function is
# the barycentric weight of vertex i (times twice the triangle area).
EDGE_START: tuple[int, int, int] = (1, 2, 0)
EDGE_END: tuple[int, int, int] = (2, 0, 1)
# Screen coordinates beyond this magnitude (pixels) make a vertex invalid (not drawn).
MAX_ABS_COORDINATE = float(2**22)


_CORNER_TABLE: list = [None]  # [(weakref to triangles, version, (3,F) table)], one entry


def corner_table(triangles: Tensor) -> Tensor:
    """``(3, F)`` int32 contiguous transpose of ``triangles`` (corner-major), for fast gathers.

    Gathering int32 ids is ~1.7× faster than int64 on CPU; convert the gathered ids to
    int64 before using them as indices in autograd (int32 indices make backward slow).
    The last result is remembered (weakly keyed on the tensor's identity and version), as
    the same triangle list is rasterised and interpolated many times per frame.
    """
    cached = _CORNER_TABLE[0]
    if cached is not None and cached[0]() is triangles and cached[1] == triangles._version:
        return cached[2]
    if triangles.numel() and int(triangles.max()) >= 2**31:
        raise ValueError("corner_table: vertex ids must be < 2**31")
    table = triangles.t().to(torch.int32).contiguous()
    _CORNER_TABLE[0] = (weakref.ref(triangles), triangles._version, table)
    return table


def screen_double_area(face_vertices: Tensor) -> Tensor:
    """Signed doubled area ``cross(v1 - v0, v2 - v0)`` of screen-space triangles.

    Args:
        face_vertices: ``(..., 3, 3)`` float, vertex × (x_img, y_img, depth).

    Returns:
        ``(...)`` float, pixels². Screen y points down, so a triangle wound
        counter-clockwise when seen from the camera in model space (the project's
        "front-facing" winding, normal toward the viewer) has a NEGATIVE screen area.
    """
    x0, y0 = face_vertices[..., 0, 0], face_vertices[..., 0, 1]
    x1, y1 = face_vertices[..., 1, 0], face_vertices[..., 1, 1]
    x2, y2 = face_vertices[..., 2, 0], face_vertices[..., 2, 1]
    return (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)


def rasterizable_triangles(face_vertices: Tensor, *, cull_backfaces: bool) -> Tensor:
    """Which triangles a backend may draw.

    A triangle is drawn when its corners' x, y lie within ±``MAX_ABS_COORDINATE`` pixels
    (NaN fails), all three depths are positive and finite (no near-plane clipping is done:
    a triangle crossing the camera plane is dropped), its screen area is non-zero and,
    with ``cull_backfaces``, it faces the camera (negative screen area, see
    :func:`screen_double_area`).

    Args:
        face_vertices: ``(..., 3, 3)`` float screen-space triangles (x_img, y_img, depth).
        cull_backfaces: drop triangles facing away from the camera.

    Returns:
        ``(...)`` bool.
    """
    area = screen_double_area(face_vertices)
    xy_ok = (face_vertices[..., :2].abs() < MAX_ABS_COORDINATE).flatten(-2).all(-1)
    depth = face_vertices[..., 2]
    keep = xy_ok & ((depth > 0) & (depth < float("inf"))).all(-1)
    if cull_backfaces:
        keep &= area < 0
    else:
        keep &= area != 0
    return keep


def pixel_barycentrics(
    corner_x: Tensor,  # (3,N) x_img of corners 0,1,2
    corner_y: Tensor,  # (3,N) y_img of corners 0,1,2
    corner_depth: Tensor,  # (3,N) depth of corners 0,1,2
    pixel_x: Tensor,  # (N,) pixel-centre x (column index)
    pixel_y: Tensor,  # (N,) pixel-centre y (row index)
    *,
    perspective_correct: bool,  # correct for perspective using the corners' depth
) -> tuple[Tensor, Tensor]:
    """Barycentric weights and depth of N triangles at N pixel centres (differentiable).

    Corner-major layout (one contiguous row per corner) keeps every operation contiguous.

    Args:
        corner_x, corner_y, corner_depth: ``(3, N)`` float, non-degenerate triangles
            with positive depth.
        pixel_x, pixel_y: ``(N,)`` pixel-centre coordinates (any real dtype).
        perspective_correct: if True, the screen-space weights ``b_i`` become
            ``(b_i / z_i) / Σ_j (b_j / z_j)``, the weights of the 3D surface point seen at
            the pixel; otherwise screen-space (affine) weights are returned.

    Returns:
        ``bary`` ``(3, N)`` float summing to 1 over the first axis (all ≥ 0 for a pixel
        inside the triangle) and ``depth`` ``(N,)`` float, ``Σ bary_i z_i`` (the exact
        depth of the surface point when ``perspective_correct``).
    """
    rel_x = corner_x - pixel_x.to(corner_x.dtype)
    rel_y = corner_y - pixel_y.to(corner_y.dtype)
    # Weight of corner k: cross(v[k+1] − p, v[k+2] − p), twice the area of (p, v[k+1], v[k+2]).
    weights = torch.stack(
        [
            rel_x[1] * rel_y[2] - rel_y[1] * rel_x[2],
            rel_x[2] * rel_y[0] - rel_y[2] * rel_x[0],
            rel_x[0] * rel_y[1] - rel_y[0] * rel_x[1],
        ]
    )
    bary = weights / weights.sum(0)
    if perspective_correct:
        bary = bary / corner_depth
        bary = bary / bary.sum(0)
    depth = (bary * corner_depth).sum(0)
    return bary, depth


def fragments_from_pix_to_face(
    vertices: Tensor,  # (B,V,3) screen space (x_img, y_img, depth)
    triangles: Tensor,  # (F,3) int64 vertex ids
    pix_to_face: Tensor,  # (B,H,W) int64 visible triangle, -1 = background
    *,
    perspective_correct: bool,  # perspective-correct barycentrics
) -> Fragments:
    """Build :class:`Fragments` from a backend's visibility, recomputing barycentrics.

    Only covered pixels are evaluated, so background never produces NaN gradients.

    Args:
        vertices: ``(B, V, 3)`` float screen-space vertices; gradients flow to them
            through ``bary_coords`` and ``zbuf``.
        triangles: ``(F, 3)`` int64.
        pix_to_face: ``(B, H, W)`` int64, from a backend.
        perspective_correct: see :func:`pixel_barycentrics`.

    Returns:
        :class:`Fragments` with ``bary_coords`` ``(B, H, W, 3)`` (0 on background; stored
        as a view of a ``(3, B, H, W)`` tensor so each weight is contiguous) and ``zbuf``
        ``(B, H, W)`` (+inf on background), in ``vertices.dtype``.
    """
    dims = assert_shape(vertices, ("B", "V", 3), "vertices")
    assert_shape(pix_to_face, ("B", None, None), "pix_to_face", dims)
    batch, num_vertices = vertices.shape[0], vertices.shape[1]
    height, width = pix_to_face.shape[1], pix_to_face.shape[2]
    flat_faces = pix_to_face.reshape(-1)
    covered = torch.nonzero(flat_faces >= 0).squeeze(1)  # (N,) flat pixel ids
    corner_ids = corner_table(triangles).index_select(1, flat_faces.index_select(0, covered)).to(torch.int64)
    # Pixel coordinates of the flat ids, in float64 (exact below 2**52).
    flat = covered.to(torch.float64)
    if batch > 1:
        image = flat.add(0.5).div_(height * width).floor_()
        flat = flat - image * (height * width)
        corner_ids = corner_ids + image.to(torch.int64).mul_(num_vertices)
    pixel_y = flat.add(0.5).div_(width).floor_()
    pixel_x = flat - pixel_y * width
    table = vertices.reshape(-1, 3).t().contiguous()  # (3, B·V)
    corners = table.index_select(1, corner_ids.reshape(-1)).view(3, 3, -1)  # coordinate × corner × N
    bary, depth = pixel_barycentrics(
        corners[0], corners[1], corners[2], pixel_x, pixel_y, perspective_correct=perspective_correct
    )
    total = batch * height * width
    bary_full = vertices.new_zeros(3, total).index_put((torch.arange(3, device=covered.device)[:, None], covered), bary)
    zbuf_full = vertices.new_full((total,), float("inf")).index_put((covered,), depth)
    return Fragments(
        pix_to_face=pix_to_face,
        bary_coords=bary_full.view(3, batch, height, width).permute(1, 2, 3, 0),
        zbuf=zbuf_full.view(batch, height, width),
    )
