"""Painting in UV space by face position: the frame every texture detail is drawn in.

:class:`UVFaceFrame` gives each texel of the face model's UV template the model-space
position (decimetres, x right, y up, z out) of the mean face at that texel, plus the
landmarks of the mean face. Texture details (moles, stubble, wrinkles, flush) are drawn as
functions of that position, so their size is physical (millimetres) and they sit at the
right anatomical place for any UV template. The primitives here return ``(T, T)`` float64
weight maps in [0, 1] (numpy; painting runs once per subject).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from emoedit.face_model import MorphableModel
from emoedit.texture import UVLayout


@dataclass(frozen=True)
class UVFaceFrame:
    """Mean-face position of every texel of a T×T UV texture."""

    x: np.ndarray  # (T, T) float64 model-space x of the texel on the mean face, decimetres
    y: np.ndarray  # (T, T) float64 model-space y
    z: np.ndarray  # (T, T) float64 model-space z
    filled: np.ndarray  # (T, T) bool, the texel belongs to the layout
    skin: np.ndarray  # (T, T) float64 in [0, 1], the model's skin mask (no eyes, brows, lips)
    front: np.ndarray  # (T, T) float64 in [0, 1], the model's front-of-face mask
    landmarks: np.ndarray  # (68, 3) float64 mean-face landmark positions, decimetres
    texel_dm: float  # typical texel spacing on the face centre, decimetres

    @property
    def texture_size(self) -> int:
        """T."""
        return int(self.x.shape[0])

    @classmethod
    def from_model(cls, model: MorphableModel, layout: UVLayout) -> UVFaceFrame:
        """Interpolate the model's mean shape and masks into the layout's texels."""
        ones = torch.ones(model.num_vertices, 1)
        skin = model.skin_mask.to(torch.float32)[:, None] if model.skin_mask is not None else ones
        front = model.front_mask.to(torch.float32)[:, None] if model.front_mask is not None else ones
        attributes = torch.cat([model.mean_shape, skin, front], dim=1)  # (V, 5)
        with torch.no_grad():
            maps = layout.interpolate(attributes)[0].double().numpy()  # (5, T, T)
        filled = layout.filled_mask.numpy().copy()
        x, y, z = maps[0], maps[1], maps[2]
        size = x.shape[0]
        centre = size // 2
        dx = np.abs(np.diff(x[centre - 2 : centre + 3, :], axis=1))
        dy = np.abs(np.diff(y[:, centre - 2 : centre + 3], axis=0))
        texel = float(np.median(np.concatenate([dx[dx > 0], dy[dy > 0]]))) if (dx > 0).any() else 2.0 / size
        landmarks = model.mean_shape[model.landmark_ids].double().numpy()
        return cls(
            x=x,
            y=y,
            z=z,
            filled=filled,
            skin=np.clip(maps[3], 0.0, 1.0),
            front=np.clip(maps[4], 0.0, 1.0),
            landmarks=landmarks,
            texel_dm=texel,
        )

    def landmark(self, index: int) -> np.ndarray:
        """``(2,)`` x, y of a 0-based iBUG landmark on the mean face."""
        return self.landmarks[index, :2].copy()


def _window(frame: UVFaceFrame, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Flat indices of the texels whose (x, y) lies in the box ``lo``..``hi``."""
    x, y = frame.x.reshape(-1), frame.y.reshape(-1)
    return np.flatnonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]))


def _segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    length2 = float(ab @ ab)
    qx, qy = px - a[0], py - a[1]
    t = np.clip((qx * ab[0] + qy * ab[1]) / max(length2, 1e-12), 0.0, 1.0)
    return np.hypot(qx - t * ab[0], qy - t * ab[1])


def segment_distance(frame: UVFaceFrame, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(T, T)`` face-plane distance (dm) of every texel to the segment ``a``-``b`` (x, y)."""
    return _segment_distance(frame.x, frame.y, a, b)


def polyline_band(frame: UVFaceFrame, points: np.ndarray, width: float, *, taper: bool = True) -> np.ndarray:
    """``(T, T)`` in [0, 1]: a soft line of half-width ``width`` (dm) along ``points`` (n, 2).

    With ``taper`` the line fades toward both ends (wrinkles are deepest mid-way). Only
    texels within ``4 · width`` of the line's bounding box are evaluated (beyond, the
    line's weight is below 1e-7).
    """
    out = np.zeros(frame.x.size)
    ids = _window(frame, points.min(axis=0) - 4.0 * width, points.max(axis=0) + 4.0 * width)
    if ids.size == 0:
        return out.reshape(frame.x.shape)
    px, py = frame.x.reshape(-1)[ids], frame.y.reshape(-1)[ids]
    best = np.zeros(ids.size)
    n = len(points)
    for k in range(n - 1):
        line = np.exp(-((_segment_distance(px, py, points[k], points[k + 1]) / width) ** 2))
        if taper:
            mid = (k + 0.5) / (n - 1)
            line = line * (0.35 + 0.65 * np.sin(np.pi * mid))
        best = np.maximum(best, line)
    out[ids] = best
    return out.reshape(frame.x.shape)


def soft_disc(frame: UVFaceFrame, centre: np.ndarray, radius: float, *, sharpness: float = 4.0) -> np.ndarray:
    """``(T, T)`` in [0, 1]: a disc of ``radius`` dm at ``centre`` (x, y) with a soft edge
    (evaluated within ``4 · radius``; beyond, the weight is below 1e-7 for sharpness ≥ 2)."""
    radius = max(radius, 1e-6)
    out = np.zeros(frame.x.size)
    ids = _window(frame, centre - 4.0 * radius, centre + 4.0 * radius)
    if ids.size:
        r = np.hypot(frame.x.reshape(-1)[ids] - centre[0], frame.y.reshape(-1)[ids] - centre[1])
        out[ids] = np.exp(-((r / radius) ** sharpness))
    return out.reshape(frame.x.shape)


def gaussian(frame: UVFaceFrame, centre: np.ndarray, sigma_x: float, sigma_y: float) -> np.ndarray:
    """``(T, T)`` axis-aligned Gaussian bump of peak 1 at ``centre`` (x, y), widths in dm."""
    return np.exp(-(((frame.x - centre[0]) / sigma_x) ** 2) - ((frame.y - centre[1]) / sigma_y) ** 2)


def inside_polygon(frame: UVFaceFrame, polygon: np.ndarray, *, soften_texels: float = 0.7) -> np.ndarray:
    """``(T, T)`` in [0, 1]: texels inside the closed ``polygon`` (n, 2), edge blurred."""
    x, y = frame.x, frame.y
    inside = np.zeros(x.shape, dtype=bool)
    n = len(polygon)
    for k in range(n):
        (x0, y0), (x1, y1) = polygon[k], polygon[(k + 1) % n]
        crosses = (y0 > y) != (y1 > y)
        x_cross = x0 + (y - y0) * (x1 - x0) / ((y1 - y0) if y1 != y0 else 1e-12)
        inside ^= crosses & (x < x_cross)
    soft = inside.astype(np.float64)
    if soften_texels > 0:
        soft = ndimage.gaussian_filter(soft, soften_texels)
    return soft


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """``(size, size)`` smooth random field, zero mean and unit std, ``cells`` blobs across
    (bicubic interpolation of a ``(cells + 1)²`` grid of normal samples)."""
    coarse = torch.from_numpy(rng.normal(size=(1, 1, cells + 1, cells + 1)))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0, 0].numpy()
    return (field - field.mean()) / (field.std() + 1e-12)


def wavy_line(
    rng: np.random.Generator,
    start: np.ndarray,  # (2,) first point (x, y), dm
    end: np.ndarray,  # (2,) last point
    *,
    wiggle: float,  # amplitude of the sideways wiggle, dm
    bend: float = 0.0,  # sideways bow at the middle, dm (positive: to the left of start→end)
    points: int = 9,  # polyline vertices
) -> np.ndarray:
    """``(points, 2)`` a gently curved, slightly wavy polyline from ``start`` to ``end``."""
    t = np.linspace(0.0, 1.0, points)
    direction = end - start
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-12)
    phase = rng.uniform(0, 2 * np.pi)
    offset = bend * np.sin(np.pi * t) + wiggle * np.sin(2 * np.pi * rng.uniform(1.0, 2.5) * t + phase) * np.sin(np.pi * t)
    return start[None] + t[:, None] * direction[None] + offset[:, None] * normal[None]
