"""Built-in rasteriser in vectorised PyTorch (CPU or CUDA).

Algorithm (no Python loop over triangles or pixels):

1. Gather the screen-space corners of every triangle of every mesh in the batch. A
   triangle is drawable (same rule as :func:`rasterizable_triangles`) when its corners
   are finite with positive depth, its screen area is non-zero (negative, i.e. facing the
   camera, with ``cull_backfaces``), and its bounding box holds a pixel centre of the
   image. Invalid vertices are folded into NaN x-coordinates so every test on them fails.
2. Give every triangle the same orientation (negative screen area): the edge functions
   of positive-area triangles are negated, which is exact and equivalent to swapping two
   corners (in y-down screen coordinates that orientation runs counter-clockwise on
   screen). Pixel centres lying exactly on an edge follow a "left-bottom" rule (the
   top-left rule mirrored vertically, i.e. top-left in a y-up frame): they belong to the
   triangle when the edge, in that orientation, points down (``d.y > 0``: a left edge) or
   is horizontal and points right (a bottom edge). Two triangles sharing an edge traverse
   it in opposite directions, so exactly one of them owns it: shared edges and vertices
   are neither drawn twice nor left as holes.
3. Enumerate every pixel centre of every bounding box as a candidate (a segmented
   ``arange`` over the box sizes: the work is proportional to the boxes' area, not to
   pixels × faces) and test it with the edge functions ``cross(a − p, b − p)``. The
   corner-minus-pixel differences are computed identically for every triangle sharing a
   corner, so an edge shared by two triangles gives exactly opposite edge-function values
   (same rounded products, subtracted in the opposite order): watertight coverage.
4. Interpolate the depth of each covered (pixel, triangle) pair, pack it into an int64 key
   (float32 depth bits in the high 32 bits — positive floats order like their bit
   patterns — and the triangle's index in the batch, ``b·F + f``, in the low 32 bits) and
   keep the minimum per pixel with ``scatter_reduce(..., "amin")``; ties in depth go to the
   lower triangle index. Candidates outside their triangle go to a spare slot per image.

Candidates are processed in chunks of at most ``max_candidates`` to bound memory; one
triangle is never split, so a single huge triangle may exceed that bound.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emoedit.render.barycentric import MAX_ABS_COORDINATE
from emoedit.render.rasterizer import Rasterizer

_EMPTY_KEY = torch.iinfo(torch.int64).max
_LOW_32_BITS = 0xFFFFFFFF
_MAX_PIXELS = 2**22  # H·W above this breaks the exact float32 in-box offsets

# Rows of the per-triangle table (float32), gathered once per candidate.
_ROW_START = 0  # first candidate of the triangle within its chunk (float, < 2**22)
_ROW_WIDTH = 1  # bounding-box width in pixels
_ROW_LEFT = 2  # bounding-box left column
_ROW_TOP = 3  # bounding-box top row
_ROWS_X = slice(4, 7)  # corner x
_ROWS_Y = slice(7, 10)  # corner y
_ROWS_DEPTH = slice(10, 13)  # corner depth, or 1/depth when perspective-correct
_ROW_SIGN = 13  # +1 for negative screen area, −1 for positive (only without culling)
_NUM_ROWS = 14


class TorchRasterizer(Rasterizer):
    """Pure-PyTorch z-buffer rasteriser; see the module docstring for the algorithm."""

    name = "torch"

    def __init__(
        self,
        *,
        cull_backfaces: bool = False,  # drop triangles facing away from the camera
        perspective_correct: bool = True,  # perspective-correct barycentrics and depth
        max_candidates: int = 1 << 20,  # (pixel, triangle) candidates tested per chunk (≤ 2**22)
    ) -> None:
        super().__init__(cull_backfaces=cull_backfaces, perspective_correct=perspective_correct)
        if not 1 <= max_candidates <= 2**22:
            raise ValueError(f"TorchRasterizer: max_candidates must be in [1, 2**22], got {max_candidates}")
        self.max_candidates = int(max_candidates)

    def visible_faces(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``(B, H, W)`` int64 nearest triangle per pixel centre, -1 = background."""
        height, width = image_size
        batch, num_vertices = vertices.shape[0], vertices.shape[1]
        num_faces = triangles.shape[0]
        num_triangles = batch * num_faces
        device = vertices.device
        if height * width > _MAX_PIXELS:
            raise ValueError(f"TorchRasterizer: at most {_MAX_PIXELS} pixels per image, got {height}x{width}")
        if num_triangles >= 2**31:
            raise ValueError(f"TorchRasterizer: batch × faces must be < 2**31, got {batch} × {num_faces}")
        if num_triangles == 0:
            return torch.full((batch, height, width), -1, dtype=torch.int64, device=device)

        # Vertex table (3, B·V): x, y, depth (or 1/depth). Invalid vertices get x = NaN,
        # which makes every later test of their triangles fail.
        coords = torch.empty((3, batch * num_vertices), dtype=torch.float32, device=device)
        coords.view(3, batch, num_vertices).copy_(vertices.permute(2, 0, 1))
        x, y, z = coords[0], coords[1], coords[2]
        valid = (x.abs() < MAX_ABS_COORDINATE) & (y.abs() < MAX_ABS_COORDINATE) & (z > 0) & (z < float("inf"))
        x.masked_fill_(~valid, float("nan"))
        if self.perspective_correct:
            z.reciprocal_()

        # Per-triangle table (rows _ROW_*, one column per triangle g = b·F + f); the
        # corners are gathered straight into it.
        table = torch.empty((_NUM_ROWS, num_triangles), dtype=torch.float32, device=device)
        corner_rows = table[_ROWS_X.start : _ROWS_DEPTH.stop]
        torch.index_select(
            coords, 1, self._corner_ids(triangles, batch, num_vertices), out=corner_rows.view(3, 3 * num_triangles)
        )
        xs, ys = table[_ROWS_X], table[_ROWS_Y]
        area = (xs[1] - xs[0]).mul_(ys[2] - ys[0]).sub_((ys[1] - ys[0]).mul_(xs[2] - xs[0]))
        if self.cull_backfaces:
            facing = area < 0
        else:
            facing = (area * area) > 0  # NaN → False
            # Orientation sign: edge functions of positive-area triangles are negated
            # (exactly), which is the same as swapping two of their corners.
            torch.gt(area, 0, out=table[_ROW_SIGN]).mul_(-2.0).add_(1.0)

        x_lo = torch.minimum(xs[0], xs[1], out=table[_ROW_LEFT])
        torch.minimum(x_lo, xs[2], out=x_lo).ceil_().clamp_(min=0)
        y_lo = torch.minimum(ys[0], ys[1], out=table[_ROW_TOP])
        torch.minimum(y_lo, ys[2], out=y_lo).ceil_().clamp_(min=0)
        box_w = torch.maximum(xs[0], xs[1], out=table[_ROW_WIDTH])
        torch.maximum(box_w, xs[2], out=box_w).floor_().clamp_(max=width - 1).sub_(x_lo).add_(1)
        box_h = torch.maximum(ys[0], ys[1], out=area)  # area no longer needed
        torch.maximum(box_h, ys[2], out=box_h).floor_().clamp_(max=height - 1).sub_(y_lo).add_(1)
        counts = box_h.clamp_(min=0).mul_(box_w.clamp(min=0)).mul_(facing).nan_to_num_(0.0).to(torch.int64)

        # One spare key slot per image (index H·W) takes the candidates outside their triangle.
        slots = height * width + 1
        keys = torch.full((batch * slots,), _EMPTY_KEY, dtype=torch.int64, device=device)
        image_base = (
            torch.arange(batch, device=device).mul_(slots).repeat_interleave(num_faces) if batch > 1 else None
        )
        ends = torch.cumsum(counts, 0)
        for lo, hi in _chunks(ends, self.max_candidates):
            first = int(ends[lo - 1]) if lo > 0 else 0
            total = int(ends[hi - 1]) - first
            if total == 0:
                continue
            starts = (ends[lo:hi] - counts[lo:hi]).sub_(first)  # first candidate of each triangle
            table[_ROW_START, lo:hi] = starts
            tri = _segment_ids(starts, total)
            if lo:
                tri += lo
            self._test_candidates(keys, tri, table, image_base, width=width, height=height)

        keys = keys.view(batch, slots)[:, : height * width]
        covered = keys != _EMPTY_KEY
        first_face = torch.arange(batch, device=device).mul_(num_faces).view(batch, 1)
        faces = ((keys & _LOW_32_BITS) - first_face + 1).mul_(covered).sub_(1)
        return faces.view(batch, height, width)

    def _corner_ids(self, triangles: Tensor, batch: int, num_vertices: int) -> Tensor:
        """``(3·B·F,)`` int64 ids into the ``(B·V)`` vertex table, corner-major then image.

        The last result is kept (keyed on the triangle tensor's identity and version).
        """
        signature = (triangles._version, batch, num_vertices)
        cached = getattr(self, "_corner_cache", None)
        if cached is not None and cached[0] is triangles and cached[1] == signature:
            return cached[2]
        offsets = torch.arange(batch, device=triangles.device).mul_(num_vertices).view(1, batch, 1)
        ids = (triangles.t().unsqueeze(1) + offsets).reshape(-1)
        self._corner_cache = (triangles, signature, ids)
        return ids

    def _test_candidates(
        self,
        keys: Tensor,  # (B·(H·W + 1),) int64 running minimum keys, updated in place
        tri: Tensor,  # (M,) int64 triangle (global id b·F + f) of each candidate
        table: Tensor,  # (_NUM_ROWS, B·F) float32 per-triangle rows, see _ROW_*
        image_base: Tensor | None,  # (B·F,) int64 first key slot of each triangle's image (B > 1)
        *,
        width: int,  # image width W
        height: int,  # image height H
    ) -> None:
        used = table if not self.cull_backfaces else table[:_ROW_SIGN]  # no sign row when culling
        rows = used.index_select(1, tri)  # (_NUM_ROWS or _ROW_SIGN, M)
        within = torch.arange(tri.numel(), device=tri.device, dtype=torch.float32).sub_(rows[_ROW_START])
        box_w = rows[_ROW_WIDTH]
        dy = (within + 0.5).div_(box_w).floor_()  # exact: integers < 2**22
        px = within.sub_(dy * box_w).add_(rows[_ROW_LEFT])  # pixel-centre column
        py = dy.add_(rows[_ROW_TOP])  # pixel-centre row
        # Corner minus pixel centre, computed the same way for every triangle sharing the
        # corner: the edge functions of a shared edge are then exact negations.
        rel_x = rows[_ROWS_X] - px  # (3, M)
        rel_y = rows[_ROWS_Y] - py
        if not self.cull_backfaces:
            rel_x.mul_(rows[_ROW_SIGN])  # ±1: canonical (negative-area) orientation
        # Edge function of the edge opposite corner k: cross(v[k+1] − p, v[k+2] − p).
        w0 = (rel_x[1] * rel_y[2]).sub_(rel_y[1] * rel_x[2])
        w1 = (rel_x[2] * rel_y[0]).sub_(rel_y[2] * rel_x[0])
        w2 = (rel_x[0] * rel_y[1]).sub_(rel_y[0] * rel_x[1])
        w_max = torch.maximum(w0, w1)
        torch.maximum(w_max, w2, out=w_max)
        inside = w_max <= 0  # canonical orientation: < 0 inside, = 0 on an edge
        if bool((w_max == 0).any()):
            inside &= ~_disowned(w_max == 0, torch.stack([w0, w1, w2]), rows, self.cull_backfaces)

        depth_terms = rows[_ROWS_DEPTH]  # depth, or 1/depth when perspective-correct
        w_sum = (w0 + w1).add_(w2)
        weighted = (w0 * depth_terms[0]).add_(w1.mul_(depth_terms[1])).add_(w2.mul_(depth_terms[2]))
        depth = w_sum.div_(weighted) if self.perspective_correct else weighted.div_(w_sum)
        # Flat key slot: the pixel inside the image, or the image's spare slot (index H·W).
        spare = float(height * width)
        slot = py.mul_(width).add_(px).sub_(spare).mul_(inside).add_(spare).to(torch.int64)
        if image_base is not None:
            slot += image_base.index_select(0, tri)
        key = depth.view(torch.int32).to(torch.int64).mul_(2**32).add_(tri)
        keys.scatter_reduce_(0, slot, key, reduce="amin", include_self=True)


def _disowned(on_edge: Tensor, edge: Tensor, rows: Tensor, culled: bool) -> Tensor:
    """``(M,)`` bool: candidates exactly on an edge that their triangle does not own.

    Args:
        on_edge: ``(M,)`` bool, inside-or-on with some edge function exactly 0.
        edge: ``(3, M)`` the (orientation-normalised) edge functions, edge k opposite corner k.
        rows: ``(_NUM_ROWS, M)`` the candidates' triangle rows.
        culled: all triangles already have the canonical orientation (no sign row).
    """
    hits = torch.nonzero(on_edge).squeeze(1)
    hit_rows = rows.index_select(1, hits)
    start, end = [1, 2, 0], [2, 0, 1]
    corner_x, corner_y = hit_rows[_ROWS_X], hit_rows[_ROWS_Y]
    dir_x = corner_x[end] - corner_x[start]  # (3 edges, n), in the triangle's own corner order
    dir_y = corner_y[end] - corner_y[start]
    if not culled:
        sign = hit_rows[_ROW_SIGN]  # −1: canonical order reverses every edge
        dir_x, dir_y = dir_x * sign, dir_y * sign
    owns = (dir_y > 0) | ((dir_y == 0) & (dir_x > 0))  # left edges and bottom edges
    bad = ((edge.index_select(1, hits) == 0) & ~owns).any(0)
    result = torch.zeros_like(on_edge)
    result[hits] = bad
    return result


def _segment_ids(starts: Tensor, total: int) -> Tensor:
    """Segment id of each of ``total`` slots given non-decreasing int64 segment ``starts``.

    Equivalent to ``repeat_interleave(arange(n), counts)`` with ``starts = cumsum(counts) −
    counts`` (empty segments are skipped), but cheaper.
    """
    marks = torch.zeros(total + 1, dtype=torch.int64, device=starts.device)
    marks.scatter_add_(0, starts, torch.ones_like(starts))
    return marks[:total].cumsum_(0).sub_(1)


def _chunks(ends: Tensor, max_candidates: int) -> list[tuple[int, int]]:
    """Split triangles (cumulative candidate counts ``ends``) into runs of ≤ max_candidates.

    A run holds one triangle more than that bound only when that triangle alone exceeds it.
    """
    num = ends.numel()
    total = int(ends[-1])
    if total <= max_candidates:
        return [(0, num)]
    runs: list[tuple[int, int]] = []
    lo, done = 0, 0
    while lo < num:
        hi = int(torch.searchsorted(ends, done + max_candidates, right=True))
        hi = max(hi, lo + 1)
        runs.append((lo, hi))
        done = int(ends[hi - 1])
        lo = hi
    return runs
