"""An embedded, licence-free morphable face model built entirely in code.

:func:`build_procedural_face` returns the arrays of a small morphable model (the
keyword arguments of :class:`~emoedit.face_model.morphable_model.MorphableModel`) without
reading any file: it is the default face model of the synthetic world and of the tests.

Conventions (those of the whole project, see ``docs/agent/preamble.md``):

- Units are Deep3DFaceRecon's "decimetres" (BFM09 × 1e-5): the face is about 1.6 wide
  cheek to cheek, 2 tall forehead to chin. x right, y up, z out of the face. The mean
  shape is translated so that its eye centres, nose tip and mouth corners match
  Deep3DFaceRecon's standard five-point template of the BFM09 mean face
  (:data:`DEEP3D_STANDARD_FIVE`), so with the identity pose, camera distance 10 and focal
  1015 it sits in the 224-pixel crop where Deep3D's alignment puts a face (jaw contour
  about 140 px wide).
- Left/right: ``L`` in an action-unit name is the *subject's own* left side, which is +x,
  the image right of a frontal view (the side of iBUG landmarks 16, 26, 45, 54).
- Triangles are wound so ``(v1 − v0) × (v2 − v0)`` points out of the face.
- UV: ``u`` runs across the face (left to right in the image), ``v`` runs down
  (``v = 0`` is the top of the forehead), both in [0, 1].

Construction
------------
The surface is a deformed parametric sheet: a grid of ``rows × cols`` nodes over the
parameter rectangle ``(s, t) ∈ [−1, 1] × [0, 1]``. Each row is an elliptic arc around the
head (``x = A sin φ``, ``z = z_mid − C (1 − cos φ)``, ``φ = Φ s``) at a nominal height
``Y(t)``; the bottom rows wrap under the chin. Nodes are denser around the eyes, nose and
mouth. Facial features (eye sockets, eyeballs, lids, brow ridge, nose bridge / tip / alae
/ nostrils, lips, cheeks, chin) are smooth height fields added along the sheet normal.
The UV of a node is its parameter ``((s + 1) / 2, t)``; the sheet is a tensor-product grid
monotone in both directions, so no UV triangle flips.

The mesh is cut along the lip line: between the two mouth corners every node of the
stomion row exists twice, an *upper* copy (used only by the triangles of the upper lip)
and a *lower* copy (used only by the lower lip). At rest both copies coincide, so the
mouth looks closed; displacement fields that treat the two sides differently (jaw drop,
lips part, upper lip raiser, lower lip depressor) open a hole there, which the synthetic
world fills with teeth / mouth interior. The eyes are not cut (an open slit would show
the background): the eyeball region is part of the sheet, painted white / iris / pupil in
the albedo, and closing the eyes (AU43) squeezes it to a thin band between the lids.

Bases
-----
- ``id_basis``: a PCA of hand-designed person-to-person variations (face width / length,
  forehead, jaw, chin, nose length / width / height, eye spacing / size, brow ridge,
  cheeks, lips, mouth width, face depth) plus random smooth bump fields drawn from
  ``seed``; columns are orthogonal, sorted by variance and scaled by their standard
  deviation, so ``id_coeff ~ N(0, I)`` gives plausible faces.
- ``exp_basis``: one column per FACS-like action unit (:data:`EXPRESSION_NAMES`); column
  ``k`` is the displacement of intensity 1.0, a strong expression.
- ``albedo_basis``: a PCA of skin tone, redness, lip / brow / iris colour and random
  smooth colour fields drawn from ``seed`` (same scaling as ``id_basis``).

Only the random parts of the identity and albedo bases depend on ``seed``; the mean
shape, mean albedo, topology, landmarks and expression basis do not.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from emoedit.shape_checks import assert_range, assert_shape

__all__ = [
    "ACTION_UNITS",
    "DEEP3D_STANDARD_FIVE",
    "EXPRESSION_NAMES",
    "FaceAnatomy",
    "ProceduralFaceArrays",
    "build_procedural_face",
]

#: Action units of the expression basis, in basis order, with a one-line meaning each.
#: ``L`` = the subject's own left side (+x, image right).
ACTION_UNITS: tuple[tuple[str, str], ...] = (
    ("AU1", "inner brow raiser"),
    ("AU2", "outer brow raiser"),
    ("AU4", "brow lowerer: brows down and together"),
    ("AU5", "upper lid raiser"),
    ("AU6", "cheek raiser: cheeks and lower lids up"),
    ("AU7", "lid tightener: lower lids up, eyes narrowed"),
    ("AU9", "nose wrinkler: nose sides and upper lip up, inner brows down"),
    ("AU10", "upper lip raiser (opens the mouth above)"),
    ("AU12", "lip corner puller, both sides (smile)"),
    ("AU12L", "lip corner puller, subject's left side only"),
    ("AU14L", "dimpler, subject's left side only"),
    ("AU15", "lip corner depressor"),
    ("AU16", "lower lip depressor (opens the mouth below)"),
    ("AU17", "chin raiser: chin boss and lower lip up"),
    ("AU18", "lip pucker: corners together, lips forward"),
    ("AU20", "lip stretcher: corners out"),
    ("AU22", "lip funneler: lips forward and parted"),
    ("AU23", "lip tightener: red of the lips narrowed"),
    ("AU24", "lip pressor: lips pressed together"),
    ("AU25", "lips part"),
    ("AU26", "jaw drop: the lower face rotates about the jaw hinge"),
    ("AU27", "mouth stretch: wide jaw opening, corners in"),
    ("AU43", "eyes closed"),
)

#: ``expression_names`` of the procedural model, in basis order.
EXPRESSION_NAMES: tuple[str, ...] = tuple(name for name, _ in ACTION_UNITS)

NUM_LANDMARKS = 68
# iBUG-68 groups used here (0-based): the subject's right eye (image left) and left eye.
_IBUG_RIGHT_EYE = slice(36, 42)
_IBUG_LEFT_EYE = slice(42, 48)
_IBUG_NOSE_TIP = 30
_IBUG_MOUTH_CORNERS = (48, 54)


@dataclass(frozen=True)
class FaceAnatomy:
    """Where the features of the mean face sit, in the face plane (decimetres).

    ``x`` values are distances from the midline (the features are mirrored), ``y`` values
    are nominal heights before centring (``y = 0`` about the nose-tip level). They follow
    adult anthropometry: inter-canthal 34 mm, eye fissure 28 × 9 mm, mouth 50 mm wide,
    nose 36 mm wide, nasion to subnasale 52 mm, subnasale to menton 70 mm.
    """

    top_y: float = 1.0  # top of the forehead (first grid row)
    bottom_y: float = -1.14  # last grid row, under the chin (nominal height)
    wrap_y: float = -0.86  # below this nominal height the sheet turns under the chin
    wrap_radius: float = 0.12  # radius of the turn under the chin
    brow_y: float = 0.45  # eyebrow centre line at mid-brow
    brow_inner_x: float = 0.12  # medial end of a brow
    brow_outer_x: float = 0.50  # lateral end of a brow
    eye_y: float = 0.25  # canthal line (eye corners)
    eye_x: float = 0.31  # eye centre
    eye_half_width: float = 0.145  # half the eye fissure length (corners at eye_x ± this)
    upper_lid_height: float = 0.06  # upper lid margin above the canthal line at the eye centre
    lower_lid_height: float = 0.04  # lower lid margin below the canthal line at the eye centre
    iris_radius: float = 0.058  # visible iris radius
    pupil_radius: float = 0.022  # pupil radius
    nasion_y: float = 0.31  # root of the nose
    nose_tip_y: float = -0.11  # pronasale
    subnasale_y: float = -0.235  # base of the columella
    alar_x: float = 0.135  # centre of an ala (nose wing)
    alar_y: float = -0.18
    mouth_y: float = -0.43  # stomion: the lip line and the mouth cut
    mouth_corner_x: float = 0.23  # cheilion: mouth corner (end of the cut)
    upper_lip_height: float = 0.075  # upper vermilion height at the centre
    lower_lip_height: float = 0.095  # lower vermilion height at the centre
    chin_y: float = -0.80  # pogonion (chin boss)
    menton_y: float = -0.97  # lowest point of the chin, after the wrap
    cheek_x: float = 0.40  # cheek fat pad centre
    cheek_y: float = -0.05
    jaw_hinge_y: float = 0.0  # temporomandibular joint height (nominal)
    jaw_hinge_depth: float = 0.95  # how far the hinge lies behind the lips


ANATOMY = FaceAnatomy()

# Extent of the sheet around the head: phi = _SHEET_ANGLE * s, s in [-1, 1].
_SHEET_ANGLE = 1.35  # radians (~77 degrees each side)


@dataclass(frozen=True)
class ProceduralFaceArrays:
    """The arrays of the procedural face; the fields are exactly the keyword arguments of
    :class:`~emoedit.face_model.morphable_model.MorphableModel`.

    ``V`` vertices, ``F`` triangles, ``K_id`` / ``K_exp`` / ``K_tex`` basis sizes. All
    float tensors are ``float32``, all index tensors ``int64``; positions in decimetres.
    """

    mean_shape: Tensor  # (V, 3) float32, decimetres, in Deep3D's BFM frame (see module doc)
    id_basis: Tensor  # (V, 3, K_id) float32, displacement per unit identity coefficient
    exp_basis: Tensor  # (V, 3, K_exp) float32, displacement per unit AU intensity
    mean_albedo: Tensor  # (V, 3) float32 RGB in [0, 1]
    albedo_basis: Tensor  # (V, 3, K_tex) float32, RGB change per unit albedo coefficient
    triangles: Tensor  # (F, 3) int64, wound outward
    landmark_ids: Tensor  # (68,) int64 vertex ids in iBUG order
    uv_coords: Tensor  # (V, 2) float32 in [0, 1], u right, v down
    front_mask: Tensor  # (V,) bool, the front of the face (inside the face outline)
    skin_mask: Tensor  # (V,) bool, front skin (no eyes, brows, lips, nostrils)
    expression_names: tuple[str, ...]  # (K_exp,) action-unit names, basis order
    name: str = "procedural"  # model name

    def as_kwargs(self) -> dict[str, object]:
        """The fields as a dict, ready for ``MorphableModel(**arrays.as_kwargs())``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def num_vertices(self) -> int:
        """V."""
        return int(self.mean_shape.shape[0])

    @property
    def num_faces(self) -> int:
        """F."""
        return int(self.triangles.shape[0])


def build_procedural_face(
    *,
    resolution: int = 48,  # grid columns (rounded up to odd); rows = 1.25 × resolution
    num_identity: int = 40,  # K_id, identity basis size
    num_albedo: int = 40,  # K_tex, albedo basis size
    seed: int = 0,  # seeds the random smooth parts of the identity and albedo bases
) -> ProceduralFaceArrays:
    """Build the procedural morphable face (pure numpy / torch, no file I/O, ~0.3 s).

    Args:
        resolution: number of grid columns (an even value gets one more so a column lies
            on the midline); rows are ``round(1.25 · resolution)``. ``48`` gives about
            2,960 vertices and 5,660 triangles. At least 24.
        num_identity: ``K_id`` ≥ 1, number of identity basis columns.
        num_albedo: ``K_tex`` ≥ 1, number of albedo basis columns.
        seed: seeds the random smooth fields of the identity and albedo bases; the mean
            face, topology, landmarks and expression basis do not depend on it.

    Returns:
        :class:`ProceduralFaceArrays` (shapes in its field comments).
    """
    if int(resolution) != resolution or resolution < 24:
        raise ValueError(f"build_procedural_face: resolution must be an integer >= 24, got {resolution}")
    if int(num_identity) != num_identity or num_identity < 1:
        raise ValueError(f"build_procedural_face: num_identity must be an integer >= 1, got {num_identity}")
    if int(num_albedo) != num_albedo or num_albedo < 1:
        raise ValueError(f"build_procedural_face: num_albedo must be an integer >= 1, got {num_albedo}")
    anatomy = ANATOMY
    grid = _build_grid(int(resolution), anatomy)
    mesh = _build_mesh(grid, anatomy)
    landmark_ids = _landmark_ids(grid, mesh, anatomy)
    mesh = _centred(mesh, landmark_ids)
    exp_basis = _expression_basis(mesh, anatomy)
    rng = np.random.default_rng(int(seed))
    id_basis = _pca_basis(_identity_fields(mesh, anatomy, rng, int(num_identity)), int(num_identity))
    albedo_raw = _albedo_fields(mesh, anatomy, rng, int(num_albedo))
    albedo_basis = _pca_basis(albedo_raw, int(num_albedo))
    mean_albedo = _mean_albedo(mesh, anatomy)
    front_mask, skin_mask = _masks(mesh, anatomy)

    def f32(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    arrays = ProceduralFaceArrays(
        mean_shape=f32(mesh.positions),
        id_basis=f32(id_basis),
        exp_basis=f32(exp_basis),
        mean_albedo=f32(np.clip(mean_albedo, 0.0, 1.0)),
        albedo_basis=f32(albedo_basis),
        triangles=torch.from_numpy(mesh.triangles.astype(np.int64)),
        landmark_ids=torch.from_numpy(landmark_ids.astype(np.int64)),
        uv_coords=f32(mesh.uv),
        front_mask=torch.from_numpy(front_mask),
        skin_mask=torch.from_numpy(skin_mask),
        expression_names=EXPRESSION_NAMES,
    )
    _check_arrays(arrays)
    return arrays


def _check_arrays(a: ProceduralFaceArrays) -> None:
    dims = assert_shape(a.mean_shape, ("V", 3), "mean_shape")
    assert_shape(a.id_basis, ("V", 3, None), "id_basis", dims)
    assert_shape(a.exp_basis, ("V", 3, len(a.expression_names)), "exp_basis", dims)
    assert_shape(a.mean_albedo, ("V", 3), "mean_albedo", dims)
    assert_shape(a.albedo_basis, ("V", 3, None), "albedo_basis", dims)
    assert_shape(a.triangles, (None, 3), "triangles")
    assert_shape(a.landmark_ids, (NUM_LANDMARKS,), "landmark_ids")
    assert_shape(a.uv_coords, ("V", 2), "uv_coords", dims)
    assert_range(a.uv_coords, 0.0, 1.0, "uv_coords")
    assert_range(a.mean_albedo, 0.0, 1.0, "mean_albedo")


# --------------------------------------------------------------------------------------
# Small numeric helpers (all numpy, float64)
# --------------------------------------------------------------------------------------


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, C1 cubic in between (works for edge0 > edge1)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    """Axis-aligned Gaussian bump of peak 1 centred at ``(cx, cy)`` with widths ``sx, sy``."""
    return np.exp(-(((x - cx) / sx) ** 2) - ((y - cy) / sy) ** 2)


def _pair(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    """A mirrored pair of Gaussian bumps at ``(±cx, cy)`` (bilateral features)."""
    return _gauss(x, y, cx, cy, sx, sy) + _gauss(x, y, -cx, cy, sx, sy)


def _soft_sign(x: np.ndarray, width: float = 0.04) -> np.ndarray:
    """A smooth sign: −1 on the subject's right (−x), +1 on the left, 0 on the midline."""
    return np.tanh(x / width)


def _pchip(knots_x: list[float], knots_y: list[float], x: np.ndarray) -> np.ndarray:
    """Shape-preserving piecewise cubic through the knots (Fritsch–Carlson); constant outside."""
    kx = np.asarray(knots_x, dtype=np.float64)
    ky = np.asarray(knots_y, dtype=np.float64)
    order = np.argsort(kx)
    kx, ky = kx[order], ky[order]
    h = np.diff(kx)
    delta = np.diff(ky) / h
    m = np.zeros_like(ky)
    for k in range(1, len(kx) - 1):
        if delta[k - 1] * delta[k] > 0:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            m[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    xc = np.clip(x, kx[0], kx[-1])
    idx = np.clip(np.searchsorted(kx, xc) - 1, 0, len(kx) - 2)
    t = (xc - kx[idx]) / h[idx]
    h00 = 2 * t**3 - 3 * t**2 + 1
    h10 = t**3 - 2 * t**2 + t
    h01 = -2 * t**3 + 3 * t**2
    h11 = t**3 - t**2
    return h00 * ky[idx] + h10 * h[idx] * m[idx] + h01 * ky[idx + 1] + h11 * h[idx] * m[idx + 1]


def _samples_from_density(density: np.ndarray, domain: np.ndarray, count: int) -> np.ndarray:
    """``count`` points of ``domain`` spaced so their local density follows ``density``."""
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(domain))])
    cdf /= cdf[-1]
    return np.interp(np.linspace(0.0, 1.0, count), cdf, domain)


def _snap(samples: np.ndarray, value: float) -> tuple[np.ndarray, int]:
    """Warp monotone ``samples`` smoothly so the one nearest to ``value`` lands on it.

    The shift (at most half a spacing) fades out over a few neighbours, so the spacing
    stays even and the samples stay monotone. Returns the new samples and that index.
    """
    k = int(np.argmin(np.abs(samples - value)))
    if 0 < k < len(samples) - 1:
        spacing = 0.5 * abs(float(samples[k + 1] - samples[k - 1]))
    else:
        spacing = float(np.abs(np.diff(samples)).mean())
    weight = np.exp(-(((samples - samples[k]) / (3.0 * spacing)) ** 2))
    warped = samples + (value - samples[k]) * weight
    warped[k] = value
    return warped, k


# --------------------------------------------------------------------------------------
# The parametric sheet
# --------------------------------------------------------------------------------------


def _half_width(y: np.ndarray) -> np.ndarray:
    """Half width ``A`` of the sheet's elliptic rows as a function of nominal height."""
    return _pchip([1.0, 0.7, 0.35, 0.05, -0.3, -0.6, -0.85, -1.14], [0.60, 0.70, 0.76, 0.78, 0.74, 0.62, 0.48, 0.42], y)


def _side_depth(y: np.ndarray) -> np.ndarray:
    """How far (``C``) the rows curve back toward the ears."""
    return _pchip([1.0, 0.6, 0.2, -0.3, -0.7, -1.14], [0.50, 0.58, 0.62, 0.62, 0.55, 0.45], y)


def _side_lift(y: np.ndarray) -> np.ndarray:
    """How much the lower rows rise toward the sides (a U-shaped jaw line), ``J``."""
    return _pchip([-0.2, -0.6, -0.9, -1.14], [0.0, 0.05, 0.14, 0.2], y)


def _midline_depth(y: np.ndarray) -> np.ndarray:
    """z of the bare sheet on the midline (forehead slopes back, chin recedes slightly)."""
    return _pchip(
        [1.0, 0.8, 0.6, 0.45, 0.3, 0.1, -0.2, -0.43, -0.62, -0.78, -0.86],
        [-0.32, -0.13, -0.03, 0.0, -0.02, 0.0, 0.03, 0.02, -0.035, -0.02, -0.03],
        y,
    )


def _phi_of_x(x: float, y: float) -> float:
    """Sheet parameter ``s`` of a point at face-plane ``x`` on the row of height ``y``."""
    a = float(_half_width(np.array(y)))
    return math.asin(x / a) / _SHEET_ANGLE


@dataclass(frozen=True)
class _Grid:
    s: np.ndarray  # (cols,) sheet parameter across, in [-1, 1], symmetric
    y: np.ndarray  # (rows,) nominal heights, decreasing
    mouth_row: int  # row index of the stomion (the cut)
    corner_cols: tuple[int, int]  # columns of the two mouth corners (−x, +x)

    @property
    def rows(self) -> int:
        return len(self.y)

    @property
    def cols(self) -> int:
        return len(self.s)

    def node(self, row: int, col: int) -> int:
        return row * self.cols + col


def _build_grid(resolution: int, anatomy: FaceAnatomy) -> _Grid:
    cols = resolution + 1 - resolution % 2
    rows = int(round(1.25 * resolution))
    # Across: dense over the central face (|s| < ~0.6), sparse toward the ears.
    s_domain = np.linspace(-1.0, 1.0, 4001)
    s = _samples_from_density(0.25 + np.exp(-((s_domain / 0.58) ** 6)), s_domain, cols)
    s = 0.5 * (s - s[::-1])  # exactly symmetric, s[mid] = 0
    corner = _phi_of_x(anatomy.mouth_corner_x, anatomy.mouth_y)
    s, right = _snap(s, corner)
    s, _ = _snap(s, -corner)
    s = 0.5 * (s - s[::-1])  # exactly symmetric again (both warps mirror each other)
    # Down: dense at brows/eyes and lips, medium on the nose, sparse forehead and under chin.
    y_domain = np.linspace(anatomy.top_y, anatomy.bottom_y, 4001)

    def band(lo: float, hi: float, soft: float = 0.06) -> np.ndarray:
        return _smoothstep(lo - soft, lo + soft, y_domain) * (1.0 - _smoothstep(hi - soft, hi + soft, y_domain))

    density = 0.45 + 1.0 * band(0.14, 0.52) + 0.45 * band(-0.26, 0.14) + 1.1 * band(-0.64, -0.28)
    y = _samples_from_density(density, y_domain, rows)
    y, mouth_row = _snap(y, anatomy.mouth_y)
    if not (np.all(np.diff(s) > 0) and np.all(np.diff(y) < 0)):
        raise ValueError(f"build_procedural_face: resolution {resolution} gives a degenerate grid")
    mouth_cols = (cols - 1 - right, right) if right > cols // 2 else (right, cols - 1 - right)
    if mouth_cols[1] - mouth_cols[0] < 4:
        raise ValueError(f"build_procedural_face: resolution {resolution} is too low for the mouth")
    return _Grid(s=s, y=y, mouth_row=mouth_row, corner_cols=mouth_cols)


def _sheet(s: np.ndarray, y_nom: np.ndarray, anatomy: FaceAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """Bare sheet positions (N, 3) and face-plane x (N,) for parameters ``s``, nominal ``y``."""
    phi = _SHEET_ANGLE * s
    a, c, lift = _half_width(y_nom), _side_depth(y_nom), _side_lift(y_nom)
    # The midline profile: vertical down to wrap_y, then an arc turning back under the chin.
    over = np.maximum(anatomy.wrap_y - y_nom, 0.0)
    r = anatomy.wrap_radius
    arc = np.minimum(over / r, 0.5 * np.pi)
    beyond = np.maximum(over - 0.5 * np.pi * r, 0.0)
    y_mid = np.where(over > 0, anatomy.wrap_y - r * np.sin(arc), y_nom)
    z_wrap = float(_midline_depth(np.array(anatomy.wrap_y)))
    z_mid = np.where(over > 0, z_wrap - r * (1.0 - np.cos(arc)) - beyond, _midline_depth(y_nom))
    x = a * np.sin(phi)
    pos = np.stack([x, y_mid + lift * (1.0 - np.cos(phi)), z_mid - c * (1.0 - np.cos(phi))], axis=-1)
    return pos, x


# --------------------------------------------------------------------------------------
# Feature geometry: a height field over the face plane, added along the sheet normal
# --------------------------------------------------------------------------------------


def _eye_frame(x: np.ndarray, y: np.ndarray, anatomy: FaceAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """Eye-local coordinates: ``ex`` in [−1, 1] across the fissure (±1 at the corners,
    +1 lateral), ``ey`` height above the canthal line (decimetres)."""
    ex = (np.abs(x) - anatomy.eye_x) / anatomy.eye_half_width
    return ex, y - anatomy.eye_y


def _lid_curves(ex: np.ndarray, anatomy: FaceAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """Heights of the upper and lower lid margins above the canthal line at ``ex``.

    The upper lid peaks slightly medially, the lower lid slightly laterally; both are 0
    at and beyond the corners.
    """
    inside = np.clip(1.0 - ex**2, 0.0, None)
    upper = anatomy.upper_lid_height * inside * (1.0 - 0.12 * ex)
    lower = -anatomy.lower_lid_height * inside * (1.0 + 0.15 * ex)
    return upper, lower


def _lip_borders(x: np.ndarray, anatomy: FaceAnatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vermilion borders: heights of the upper and lower borders above the lip line at
    ``x`` (Cupid's bow on the upper lip), and the lateral taper (1 mid-mouth, 0 at corners)."""
    q = np.clip(np.abs(x) / anatomy.mouth_corner_x, 0.0, 1.0)
    taper = np.sqrt(np.clip(1.0 - q**2, 0.0, None))
    bow = 1.0 - 0.16 * np.exp(-((x / 0.03) ** 2)) + 0.06 * np.exp(-(((_smooth_abs(x, 0.01) - 0.06) / 0.03) ** 2))
    upper = anatomy.upper_lip_height * taper**0.8 * bow
    lower = -anatomy.lower_lip_height * taper**0.7
    return upper, lower, taper


def _soft_max(values: list[np.ndarray], power: float = 6.0) -> np.ndarray:
    """Smooth maximum of non-negative fields (a ``power``-norm): 0 where all are 0."""
    stack = np.clip(np.stack(values), 0.0, None)
    return (stack**power).sum(axis=0) ** (1.0 / power)


def _smooth_abs(x: np.ndarray, eps: float = 0.02) -> np.ndarray:
    """``|x|`` rounded over ``±eps`` so fields built on it have no crease on the midline."""
    return np.sqrt(x * x + eps * eps) - eps


def _feature_height(x: np.ndarray, y: np.ndarray, anatomy: FaceAnatomy) -> np.ndarray:
    """Height (decimetres, along the sheet normal) of all facial features at face-plane
    ``(x, y)``; continuous across the lip line, so both copies of a cut node agree."""
    a = anatomy
    ax = _smooth_abs(x)
    h = np.zeros_like(x)
    # Forehead: frontal bosses, brow ridge, glabella; temples recede.
    h += 0.025 * _pair(x, y, 0.28, 0.72, 0.2, 0.2)
    brow_band = np.exp(-(((y - (a.brow_y - 0.01 + 0.03 * (1.0 - ((ax - 0.3) / 0.25) ** 2))) / 0.07) ** 2))
    h += 0.045 * brow_band * _smoothstep(0.62, 0.4, ax)
    h -= 0.045 * _pair(x, y, 0.66, 0.45, 0.12, 0.2)
    # Eye sockets, eyeballs and lids.
    ex, ey = _eye_frame(x, y, a)
    h -= 0.12 * _pair(x, y, a.eye_x + 0.005, a.eye_y + 0.01, 0.17, 0.115)
    h += 0.075 * np.exp(-((ex * a.eye_half_width) ** 2 + ey**2) / 0.085**2)
    upper, lower = _lid_curves(ex, a)
    lid_span = np.clip(1.15 - ex**2, 0.0, None)
    h += 0.018 * lid_span * np.exp(-(((ey - upper - 0.012) / 0.018) ** 2))  # upper lid margin
    h += 0.010 * lid_span * np.exp(-(((ey - lower + 0.008) / 0.014) ** 2))  # lower lid margin
    h -= 0.012 * lid_span * np.exp(-(((ey - upper - 0.045) / 0.014) ** 2))  # lid crease
    # Nose: bridge ridge, tip, alae; everything ends at the subnasale (steep underside).
    ramp = _smoothstep(a.nasion_y + 0.04, a.nose_tip_y, y)
    bridge_w = 0.05 + 0.045 * ramp
    root = _smoothstep(a.nasion_y + 0.12, a.nasion_y - 0.02, y)  # the bridge starts at the glabella
    bridge = (0.045 * root + 0.19 * ramp**1.2) * np.exp(-((x / bridge_w) ** 2))
    tip = 0.29 * np.exp(-((x / 0.075) ** 2) - ((y - a.nose_tip_y) / 0.075) ** 2)
    alae = 0.15 * _pair(x, y, a.alar_x, a.alar_y, 0.05, 0.045)
    nose_side = 0.06 * np.exp(-((x / 0.15) ** 2)) * _smoothstep(0.2, 0.0, y)
    nose = _soft_max([bridge, tip, alae, nose_side])
    nose_window = _smoothstep(a.subnasale_y - 0.005, a.subnasale_y + 0.07, y)
    h += nose * np.where(y < a.nose_tip_y, nose_window, 1.0)
    h -= 0.03 * _pair(x, y, 0.058, a.subnasale_y + 0.02, 0.028, 0.02)  # nostrils
    h -= 0.012 * _pair(x, y, 0.19, -0.14, 0.025, 0.07)  # alar crease
    # Philtrum: a groove between two ridges.
    philtrum = _smoothstep(a.subnasale_y, a.subnasale_y - 0.04, y) * _smoothstep(a.mouth_y + 0.04, a.mouth_y + 0.09, y)
    h += philtrum * (0.008 * _pair(x, y, 0.045, a.mouth_y + 0.14, 0.018, 0.2) - 0.006 * np.exp(-((x / 0.025) ** 2)))
    # Lips: each lip bulges between the cut (where both lips meet at one height) and its
    # vermilion border; the whole mouth sits on the convex dental arch.
    up_border, low_border, taper = _lip_borders(x, a)
    dy = y - a.mouth_y
    q_up = np.clip(dy / np.maximum(up_border, 1e-3), 0.0, None)
    q_low = np.clip(dy / np.minimum(low_border, -1e-3), 0.0, None)

    def lip_profile(q: np.ndarray, fullness: float) -> np.ndarray:
        # q = 0 on the lip line, 1 on the vermilion border; fades out over the skin beyond.
        beyond = np.exp(-0.5 * (np.maximum(q - 1.0, 0.0) / 0.5) ** 2)
        return (0.012 + fullness * q * np.exp(1.0 - q)) * beyond

    lip_up = taper * lip_profile(q_up, 0.055)
    lip_low = taper * lip_profile(q_low, 0.065)
    h += np.where(dy >= 0, lip_up, lip_low)
    h += 0.045 * np.exp(-((x / 0.3) ** 2) - ((y - a.mouth_y) / 0.2) ** 2)  # dental arch
    h -= 0.008 * _pair(x, y, a.mouth_corner_x + 0.01, a.mouth_y, 0.02, 0.02)  # modiolus dent
    # Nasolabial fold: a shallow crease from the ala toward the mouth corner.
    t_fold = np.clip((a.alar_y - 0.02 - y) / 0.3, 0.0, 1.0)
    fold_x = 0.2 + 0.13 * t_fold
    fold_span = _smoothstep(a.mouth_y - 0.09, a.mouth_y + 0.01, y) * _smoothstep(a.alar_y + 0.07, a.alar_y - 0.01, y)
    h -= 0.01 * np.exp(-(((ax - fold_x) / 0.03) ** 2)) * fold_span
    # Cheeks and cheekbones.
    h += 0.055 * _pair(x, y, a.cheek_x, a.cheek_y, 0.16, 0.16)
    h += 0.035 * _pair(x, y, 0.52, 0.12, 0.12, 0.1)
    # Chin boss and the labiomental groove.
    h += 0.05 * _gauss(x, y, 0.0, a.chin_y, 0.15, 0.1)
    h -= 0.022 * _gauss(x, y, 0.0, -0.62, 0.16, 0.035)
    return h


# --------------------------------------------------------------------------------------
# The mesh: nodes, the lip cut, triangles, UVs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mesh:
    positions: np.ndarray  # (V, 3) rest positions (centred once ``offset`` is set)
    face_x: np.ndarray  # (V,) face-plane x (mirror-symmetric parameter)
    face_y: np.ndarray  # (V,) nominal height (before centring)
    normals: np.ndarray  # (V, 3) unit sheet normals (bare sheet)
    lip_side: np.ndarray  # (V,) +1 upper copy of a cut node, −1 lower copy, 0 elsewhere
    half_row_gap: np.ndarray  # (V,) distance to the next row (for the lip-side field)
    node_of_vertex: np.ndarray  # (V,) grid node of each vertex
    lower_ids: np.ndarray  # (cols,) vertex id used below the cut for each column (= node id off the cut)
    triangles: np.ndarray  # (F, 3) int64
    uv: np.ndarray  # (V, 2)
    offset: np.ndarray  # (3,) subtracted from the raw sheet positions (centring)


def _build_mesh(grid: _Grid, anatomy: FaceAnatomy) -> _Mesh:
    rows, cols = grid.rows, grid.cols
    s2, y2 = np.meshgrid(grid.s, grid.y)  # (rows, cols)
    base, fx = _sheet(s2, y2, anatomy)
    # Sheet normal from the parameter derivatives: d/dt (down) × d/ds (right) points out.
    d_s = np.gradient(base, grid.s, axis=1)
    d_t = -np.gradient(base, grid.y, axis=0)
    normal = np.cross(d_t, d_s)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    height = _feature_height(fx, y2, anatomy)
    nodes = (base + height[..., None] * normal).reshape(-1, 3)
    num_nodes = rows * cols
    # The lip cut: nodes strictly between the corners on the mouth row get a lower copy.
    c0, c1 = grid.corner_cols
    cut_cols = np.arange(c0 + 1, c1)
    cut_nodes = grid.mouth_row * cols + cut_cols
    node_of_vertex = np.concatenate([np.arange(num_nodes), cut_nodes])
    lip_side = np.zeros(len(node_of_vertex), dtype=np.int64)
    lip_side[cut_nodes] = 1
    lip_side[num_nodes:] = -1
    lower_ids = grid.mouth_row * cols + np.arange(cols)
    lower_ids[cut_cols] = num_nodes + np.arange(len(cut_cols))
    # Triangles: one quad per grid cell, split along mirrored diagonals so the mesh is
    # left/right symmetric. (v00, v10, v01) is counter-clockwise seen from +z.
    ids = np.arange(num_nodes).reshape(rows, cols)
    top_rows = ids[:-1].copy()
    top_rows[grid.mouth_row] = lower_ids  # the cells below the cut hang from the lower copies
    v00, v01 = top_rows[:, :-1], top_rows[:, 1:]
    v10, v11 = ids[1:, :-1], ids[1:, 1:]
    left = (np.arange(cols - 1) < cols // 2)[None, :, None]
    first = np.where(left, np.stack([v00, v10, v11], -1), np.stack([v00, v10, v01], -1))
    second = np.where(left, np.stack([v00, v11, v01], -1), np.stack([v01, v10, v11], -1))
    triangles = np.stack([first, second], axis=2).reshape(-1, 3).astype(np.int64)
    positions = nodes[node_of_vertex]
    u = (s2 + 1.0) / 2.0
    v = np.broadcast_to(((grid.y[0] - grid.y) / (grid.y[0] - grid.y[-1]))[:, None], (rows, cols))
    uv = np.stack([u, v], axis=-1).reshape(-1, 2)[node_of_vertex]
    gap = np.abs(np.gradient(grid.y))[:, None] * np.ones((1, cols))
    return _Mesh(
        positions=positions,
        face_x=fx.reshape(-1)[node_of_vertex],
        face_y=y2.reshape(-1)[node_of_vertex],
        normals=normal.reshape(-1, 3)[node_of_vertex],
        lip_side=lip_side,
        half_row_gap=0.5 * gap.reshape(-1)[node_of_vertex],
        node_of_vertex=node_of_vertex,
        lower_ids=lower_ids,
        triangles=triangles,
        uv=np.clip(uv, 0.0, 1.0),
        offset=np.zeros(3),
    )


#: Deep3DFaceRecon's standard five landmarks of the BFM09 mean face (eye centres, nose
#: tip, mouth corners; decimetres), the template its 224-px alignment maps faces onto.
DEEP3D_STANDARD_FIVE = np.array(
    [
        [-0.31148657, 0.29036078, 0.13377953],
        [0.30979887, 0.28972036, 0.13179526],
        [0.0032535, -0.04617932, 0.55244243],
        [-0.25216928, -0.38133916, 0.22405732],
        [0.2484662, -0.38128236, 0.22235769],
    ]
)


def _five_points(positions: np.ndarray, landmark_ids: np.ndarray) -> np.ndarray:
    """(5, 3) eye centres (means of the six eye landmarks), nose tip, mouth corners."""
    lm = positions[landmark_ids]
    right, left = _IBUG_MOUTH_CORNERS
    return np.stack([lm[_IBUG_RIGHT_EYE].mean(0), lm[_IBUG_LEFT_EYE].mean(0), lm[_IBUG_NOSE_TIP], lm[right], lm[left]])


def _centred(mesh: _Mesh, landmark_ids: np.ndarray) -> _Mesh:
    """The mesh translated so its five alignment points best match Deep3D's standard
    template (least squares; x stays 0 on the midline), so the procedural face sits in the
    crop exactly where Deep3DFaceRecon puts the BFM face."""
    offset = (_five_points(mesh.positions, landmark_ids) - DEEP3D_STANDARD_FIVE).mean(axis=0)
    offset[0] = 0.0
    return dataclasses.replace(mesh, positions=mesh.positions - offset, offset=offset)


# --------------------------------------------------------------------------------------
# Landmarks (iBUG 68)
# --------------------------------------------------------------------------------------


def _jaw_targets() -> np.ndarray:
    """Face-plane targets of landmarks 0..8 (subject's right half of the jaw contour)."""
    theta = np.linspace(0.0, 0.5 * np.pi, 9)
    x = -0.70 * np.cos(theta) ** 0.75 * (1.0 - 0.02 * np.sin(theta))
    y = 0.24 - 1.19 * np.sin(theta) ** 1.25
    return np.stack([x, y], axis=-1)


def _landmark_ids(grid: _Grid, mesh: _Mesh, anatomy: FaceAnatomy) -> np.ndarray:
    """Vertex ids of the 68 iBUG landmarks, mirror-symmetric by construction."""
    a = anatomy
    cols = grid.cols
    node_x = mesh.face_x[: grid.rows * cols]
    node_y = mesh.face_y[: grid.rows * cols]

    def nearest(x: float, y: float, rows: slice | None = None, allowed: np.ndarray | None = None) -> int:
        d = (node_x - x) ** 2 + (node_y - y) ** 2
        if rows is not None:
            mask = np.zeros(grid.rows, dtype=bool)
            mask[rows] = True
            d = np.where(np.repeat(mask, cols), d, np.inf)
        if allowed is not None:
            d = np.where(allowed, d, np.inf)
        return int(np.argmin(d))

    def mirror(node: int) -> int:
        r, c = divmod(node, cols)
        return r * cols + (cols - 1 - c)

    def mouth_col(x: float) -> int:
        return int(np.argmin(np.abs(node_x[grid.mouth_row * cols : (grid.mouth_row + 1) * cols] - x)))

    ids = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    jaw = _jaw_targets()
    for k in range(9):
        ids[k] = nearest(*jaw[k])
    for k in range(8):
        ids[16 - k] = mirror(ids[k])
    # Brows 17..21 (subject's right, lateral to medial) along the brow arch.
    bx = np.linspace(-a.brow_outer_x + 0.03, -a.brow_inner_x - 0.01, 5)
    for k, x in enumerate(bx):
        ids[17 + k] = nearest(x, _brow_centre_y(np.array(x), a))
        ids[26 - k] = mirror(ids[17 + k])
    # Nose bridge 27..30 down the midline, nose base 31..35.
    for k, y in enumerate(np.linspace(a.nasion_y - 0.03, a.nose_tip_y, 4)):
        ids[27 + k] = nearest(0.0, y)
    for k, (x, y) in enumerate([(-0.105, a.subnasale_y + 0.035), (-0.055, a.subnasale_y + 0.01)]):
        ids[31 + k] = nearest(x, y)
        ids[35 - k] = mirror(ids[31 + k])
    ids[33] = nearest(0.0, a.subnasale_y)
    # Eyes: 36 outer corner, 37/38 upper lid, 39 inner corner, 40/41 lower lid (subject's right).
    hw = a.eye_half_width
    # Lid landmarks sit on the margin or just inside the fissure (never on the lid skin
    # beyond it), so that closing the eye brings them together.
    node_ex, node_ey = _eye_frame(node_x, node_y, a)
    node_up, node_low = _lid_curves(node_ex, a)
    for k, ex in {36: 1.0, 39: -1.0}.items():
        ids[k] = nearest(-(a.eye_x + ex * hw), a.eye_y)
    # Each upper-lid landmark shares its grid column with the lower-lid one below it.
    eye_row = int(np.argmin(np.abs(grid.y - a.eye_y)))
    for (k_up, k_low), ex in {(37, 41): 0.38, (38, 40): -0.38}.items():
        col = int(np.argmin(np.abs(node_x[eye_row * cols : (eye_row + 1) * cols] + (a.eye_x + ex * hw))))
        in_col = np.arange(grid.rows * cols) % cols == col
        up, low = _lid_curves(np.array(ex), a)
        ids[k_up] = nearest(-(a.eye_x + ex * hw), a.eye_y + float(up), allowed=in_col & (node_ey <= node_up + 0.002))
        ids[k_low] = nearest(-(a.eye_x + ex * hw), a.eye_y + float(low), allowed=in_col & (node_ey >= node_low - 0.002))
    for right, left in {36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46}.items():
        ids[left] = mirror(ids[right])
    # Mouth. Inner lip: 60/64 the cut ends (corners); 61-63 on the upper copies, 65-67 on
    # the lower copies of the cut row, so 62/66 (and 61/67, 63/65) coincide at rest.
    c0, c1 = grid.corner_cols
    row0 = grid.mouth_row * cols
    ids[60], ids[64] = row0 + c0, row0 + c1
    inner_x = 0.45 * a.mouth_corner_x
    ids[61] = row0 + mouth_col(-inner_x)
    ids[62] = row0 + mouth_col(0.0)
    ids[63] = row0 + mouth_col(inner_x)
    ids[65] = mesh.lower_ids[mouth_col(inner_x)]
    ids[66] = mesh.lower_ids[mouth_col(0.0)]
    ids[67] = mesh.lower_ids[mouth_col(-inner_x)]
    # Outer lip: 48/54 just lateral of the cut ends on the lip line; 49-53 upper vermilion
    # border, 55-59 lower vermilion border.
    ids[48], ids[54] = row0 + c0 - 1, row0 + c1 + 1
    above = slice(0, grid.mouth_row)
    below = slice(grid.mouth_row + 1, grid.rows)
    for k, x in {49: -0.62, 50: -0.25, 51: 0.0}.items():
        xx = x * a.mouth_corner_x
        up, _, _ = _lip_borders(np.array(xx), a)
        ids[k] = nearest(xx, a.mouth_y + float(up), above)
    ids[52], ids[53] = mirror(ids[50]), mirror(ids[49])
    for k, x in {59: -0.62, 58: -0.25, 57: 0.0}.items():
        xx = x * a.mouth_corner_x
        _, low, _ = _lip_borders(np.array(xx), a)
        ids[k] = nearest(xx, a.mouth_y + float(low), below)
    ids[55], ids[56] = mirror(ids[59]), mirror(ids[58])
    if (ids < 0).any() or len(set(ids[:60].tolist())) != 60:
        raise RuntimeError("procedural face: landmark assignment failed (duplicate or missing ids)")
    return ids


def _brow_centre_y(x: np.ndarray, anatomy: FaceAnatomy) -> np.ndarray:
    """Height of the eyebrow's centre line at face-plane ``x`` (an arch peaking laterally)."""
    q = (np.abs(x) - anatomy.brow_inner_x) / (anatomy.brow_outer_x - anatomy.brow_inner_x)
    arch = 0.045 * np.sin(np.pi * np.clip(q, 0.0, 1.0) ** 0.8) - 0.03 * np.clip(q - 0.7, 0, None)
    return anatomy.brow_y - 0.01 + arch


# --------------------------------------------------------------------------------------
# Expression basis (action units)
# --------------------------------------------------------------------------------------


def _lower_face_weight(mesh: _Mesh, anatomy: FaceAnatomy) -> np.ndarray:
    """(V,) how much a vertex follows the jaw / lower lip, in [0, 1].

    0 on the upper lip and above, 1 on the lower lip and below:
    ``W = ½ − ½ tanh(Δy / width(x))`` with ``Δy`` the height above the lip line. Between
    the mouth corners the transition is as narrow as the rows there, so ``W`` jumps
    across the lip line (the cut makes that possible: the upper copy of a cut node counts
    as half a row above the line, the lower copy half a row below). The width grows
    toward the corners so that the jump across the cut, and hence the mouth opening of
    any field scaled by ``W``, follows an ellipse ``√(1 − (x / x_corner)²)``; beyond the
    corners the transition spreads smoothly over the cheeks.
    """
    a = anatomy
    x, y = mesh.face_x, mesh.face_y
    q = np.abs(x) / a.mouth_corner_x
    half_gap = float(np.median(mesh.half_row_gap[mesh.lip_side != 0]))
    opening = np.clip(np.sqrt(np.clip(1.0 - q**2, 0.0, None)), 1e-6, 0.999)
    cheek_width = 0.12
    width = np.clip(half_gap / np.arctanh(opening), 0.003, cheek_width)
    dy = y - a.mouth_y + mesh.lip_side * half_gap
    return 0.5 - 0.5 * np.tanh(dy / width)


def _lip_region(mesh: _Mesh, anatomy: FaceAnatomy, sx: float = 0.2, sy: float = 0.09) -> np.ndarray:
    """(V,) a soft region around the lips (1 on the lips, fading over the skin around)."""
    a = anatomy
    x, y = mesh.face_x, mesh.face_y
    ax = np.maximum(np.abs(x) - 0.6 * a.mouth_corner_x, 0.0)
    return np.exp(-((ax / sx) ** 2) - ((y - a.mouth_y) / sy) ** 2)


def _rotation_about_x(points: np.ndarray, pivot: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (N, 3) points about the x-parallel axis through ``pivot`` by ``angle``
    (positive moves the front of the chin down)."""
    c, s = math.cos(angle), math.sin(angle)
    p = points - pivot
    y = p[:, 1] * c - p[:, 2] * s
    z = p[:, 1] * s + p[:, 2] * c
    return np.stack([p[:, 0], y, z], axis=-1) + pivot


def _expression_basis(mesh: _Mesh, anatomy: FaceAnatomy) -> np.ndarray:
    """(V, 3, K_exp) displacement of each action unit at intensity 1 (decimetres)."""
    a = anatomy
    x, y, pos = mesh.face_x, mesh.face_y, mesh.positions
    ax = np.abs(x)
    sgn = _soft_sign(x)
    zero = np.zeros_like(x)
    lower = _lower_face_weight(mesh, a)
    upper = 1.0 - lower
    lips = _lip_region(mesh, a)
    ex, ey = _eye_frame(x, y, a)
    lid_up, lid_low = _lid_curves(ex, a)
    closure = lid_low + 0.25 * (lid_up - lid_low)  # where the lids meet when closed
    eye_zone = _smoothstep(1.6, 1.0, np.abs(ex))  # keeps eye fields near the eyes
    brow_rise = _smoothstep(a.eye_y + a.upper_lid_height + 0.015, a.brow_y - 0.01, y)
    forehead = brow_rise * (1.0 - 0.55 * _smoothstep(a.brow_y + 0.05, a.top_y, y))
    corners_y = a.mouth_y

    def vec(dx: np.ndarray | float, dy: np.ndarray | float, dz: np.ndarray | float) -> np.ndarray:
        return np.stack([dx + zero, dy + zero, dz + zero], axis=-1)

    def upper_lid_motion(amount: np.ndarray, reach: float) -> np.ndarray:
        """Move the upper lid margin by ``amount`` (per ex), the lid below it and the skin
        above (fading over ``reach``) following, the closure line fixed."""
        frac = np.clip((ey - closure) / np.maximum(lid_up - closure, 1e-4), 0.0, 1.0)
        above = np.exp(-((np.maximum(ey - lid_up, 0.0) / reach) ** 2))
        return amount * np.where(ey > lid_up, above, frac) * (ey > closure) * eye_zone

    def lower_lid_motion(amount: np.ndarray, reach: float) -> np.ndarray:
        frac = np.clip((closure - ey) / np.maximum(closure - lid_low, 1e-4), 0.0, 1.0)
        below = np.exp(-((np.maximum(lid_low - ey, 0.0) / reach) ** 2))
        return amount * np.where(ey < lid_low, below, frac) * (ey <= closure) * eye_zone

    opening_up = lid_up - closure
    opening_low = closure - lid_low
    fields: dict[str, np.ndarray] = {}
    inner_brow = np.exp(-(((ax - 0.13) / 0.13) ** 2))
    outer_brow = np.exp(-(((ax - 0.42) / 0.13) ** 2))
    # Brow and forehead skin slides over the skull: its motion is kept tangent to the
    # (feature-free) sheet, so raising the brows on the sloping forehead adds no ridges.
    sheet_normal = mesh.normals

    def sliding(d: np.ndarray) -> np.ndarray:
        return d - (d * sheet_normal).sum(axis=1, keepdims=True) * sheet_normal

    fields["AU1"] = sliding(vec(-0.008 * sgn * inner_brow * forehead, 0.07 * inner_brow * forehead, 0.0))
    fields["AU2"] = sliding(vec(0.006 * sgn * outer_brow * forehead, 0.065 * outer_brow * forehead, 0.0))
    lowerer = np.exp(-(((ax - 0.18) / 0.17) ** 2)) * brow_rise * _smoothstep(0.75, 0.5, y)
    fields["AU4"] = sliding(vec(-0.035 * sgn * lowerer, -0.05 * lowerer, 0.0)) + vec(
        0.0, 0.0, 0.012 * np.exp(-((x / 0.12) ** 2)) * lowerer
    )
    lid_lift = upper_lid_motion(0.045 * np.clip(1.0 - ex**2, 0, None), 0.06)
    fields["AU5"] = vec(0.0, lid_lift, 0.004 * (ey > closure) * eye_zone)
    cheek = _pair(x, y, 0.36, -0.02, 0.15, 0.13)
    lid_bulge = np.clip(1.0 - ex**2, 0, None)
    fields["AU6"] = vec(
        0.005 * sgn * cheek,
        0.04 * cheek + lower_lid_motion(0.022 * lid_bulge, 0.08) - 0.012 * outer_brow * forehead,
        0.018 * cheek,
    )
    fields["AU7"] = vec(
        0.0,
        lower_lid_motion(0.03 * lid_bulge, 0.06) + upper_lid_motion(-0.012 * lid_bulge, 0.03),
        0.006 * lower_lid_motion(lid_bulge, 0.05),
    )
    nose_side = _pair(x, y, 0.1, a.alar_y + 0.06, 0.08, 0.09)
    nose_root = _gauss(x, y, 0.0, a.nasion_y, 0.12, 0.08)
    fields["AU9"] = vec(
        -0.006 * sgn * nose_side - 0.02 * sgn * lowerer,
        0.03 * nose_side + 0.022 * upper * _pair(x, y, 0.1, -0.37, 0.12, 0.1) - 0.03 * lowerer - 0.015 * nose_root,
        0.01 * nose_root,
    )
    raiser = upper * _pair(x, y, 0.1, -0.38, 0.13, 0.09)
    fields["AU10"] = vec(0.0, 0.05 * raiser + 0.015 * nose_side, 0.012 * raiser)
    corner_field = _pair(x, y, a.mouth_corner_x, corners_y, 0.1, 0.09)
    cheek_push = _pair(x, y, 0.33, -0.18, 0.12, 0.12)
    left = _smoothstep(-0.05, 0.05, x)  # 0 on the subject's right, 1 on the left
    smile = vec(
        0.045 * sgn * corner_field,
        0.055 * corner_field + 0.02 * cheek_push,
        -0.02 * corner_field + 0.02 * cheek_push,
    )
    fields["AU12"] = smile
    fields["AU12L"] = smile * left[:, None]
    dimple_corner = _gauss(x, y, a.mouth_corner_x, corners_y, 0.07, 0.07)
    dimple = _gauss(x, y, a.mouth_corner_x + 0.065, corners_y - 0.03, 0.03, 0.035)
    fields["AU14L"] = vec(0.015 * dimple_corner, 0.012 * dimple_corner, -0.03 * dimple_corner - 0.018 * dimple)
    depress = _pair(x, y, a.mouth_corner_x, corners_y - 0.02, 0.1, 0.1)
    chin_sides = _pair(x, y, 0.22, -0.62, 0.1, 0.1)
    fields["AU15"] = vec(0.008 * sgn * depress, -0.05 * depress - 0.015 * chin_sides, -0.005 * depress)
    lower_lip = lower * _pair(x, y, 0.08, -0.5, 0.12, 0.09)
    fields["AU16"] = vec(0.0, -0.045 * lower_lip, 0.015 * lower_lip)
    chin_boss = _gauss(x, y, 0.0, a.chin_y - 0.03, 0.17, 0.16)
    pout = _gauss(x, y, 0.0, a.mouth_y - 0.03, 0.17, 0.09)
    fields["AU17"] = vec(0.0, 0.04 * chin_boss + 0.015 * pout, 0.02 * chin_boss + 0.025 * pout)
    lips_forward = _gauss(x, y, 0.0, a.mouth_y, 0.22, 0.1)
    fields["AU18"] = vec(-0.06 * sgn * corner_field, 0.0, 0.045 * lips_forward)
    fields["AU20"] = vec(0.05 * sgn * corner_field, -0.015 * corner_field, -0.015 * corner_field)
    fields["AU22"] = vec(
        -0.03 * sgn * corner_field,
        (0.025 * upper - 0.03 * lower) * lips * _smoothstep(1.2, 0.6, ax / a.mouth_corner_x),
        0.045 * lips_forward,
    )
    squeeze = lips * _smoothstep(1.3, 0.8, ax / a.mouth_corner_x)
    fields["AU23"] = vec(-0.012 * sgn * corner_field, -0.4 * (y - a.mouth_y) * squeeze, -0.02 * squeeze)
    fields["AU24"] = vec(0.0, -0.5 * (y - a.mouth_y) * squeeze + 0.01 * chin_boss, -0.008 * squeeze)
    part = lips * _smoothstep(1.15, 0.5, ax / a.mouth_corner_x)
    fields["AU25"] = vec(0.0, (0.028 * upper - 0.038 * lower) * part, 0.0)
    # Jaw: rotate the lower face about the temporomandibular hinge; the condyle slides
    # forward a little as the jaw opens.
    lips_z = float(np.max(pos[np.abs(mesh.face_y - a.mouth_y) < 0.01, 2]))
    hinge_y = a.jaw_hinge_y - mesh.offset[1]
    pivot = np.array([0.0, hinge_y, lips_z - a.jaw_hinge_depth])
    jaw_reach = 1.0 - _smoothstep(0.62, 0.85, ax)  # fades out toward the ears

    def jaw(angle: float, slide: float) -> np.ndarray:
        moved = _rotation_about_x(pos, pivot, angle) + np.array([0.0, -0.1 * slide, slide])
        return (moved - pos) * (lower * jaw_reach)[:, None]

    fields["AU26"] = jaw(0.2, 0.03)
    fields["AU27"] = jaw(0.36, 0.05) + vec(-0.03 * sgn * corner_field, 0.0, 0.0)
    fields["AU43"] = vec(
        0.0,
        upper_lid_motion(-0.94 * opening_up, 0.07) + lower_lid_motion(0.9 * opening_low, 0.04),
        0.008 * (upper_lid_motion(np.ones_like(x), 0.05) > 0.5),
    )
    missing = set(EXPRESSION_NAMES) - set(fields)
    if missing:
        raise RuntimeError(f"procedural face: no displacement field for {sorted(missing)}")
    return np.stack([fields[name] for name in EXPRESSION_NAMES], axis=-1)


# --------------------------------------------------------------------------------------
# Identity basis
# --------------------------------------------------------------------------------------


def _identity_fields(mesh: _Mesh, anatomy: FaceAnatomy, rng: np.random.Generator, num: int) -> np.ndarray:
    """(V, 3, R) raw identity variations, each scaled to one population standard
    deviation; ``R`` exceeds ``num`` so the PCA can keep ``num`` columns."""
    a = anatomy
    x, y, pos, n = mesh.face_x, mesh.face_y, mesh.positions, mesh.normals
    zero = np.zeros_like(x)
    sgn = _soft_sign(x, 0.08)

    def vec(dx: np.ndarray | float, dy: np.ndarray | float, dz: np.ndarray | float) -> np.ndarray:
        return np.stack([dx + zero, dy + zero, dz + zero], axis=-1)

    def along_normal(h: np.ndarray) -> np.ndarray:
        return n * h[:, None]

    nose = _gauss(x, y, 0.0, -0.02, 0.16, 0.22)
    eyes = _pair(x, y, a.eye_x, a.eye_y, 0.16, 0.11)
    mouth = _gauss(x, y, 0.0, a.mouth_y, 0.32, 0.1)
    lower_face = _smoothstep(-0.2, -0.75, y)
    front_z = pos[:, 2] - float(np.median(pos[:, 2]))
    chin = _gauss(x, y, 0.0, a.chin_y, 0.19, 0.15)
    lip_h = np.clip(1.0 - (x / (1.2 * a.mouth_corner_x)) ** 2, 0, None) * np.exp(-(((y - a.mouth_y) / 0.11) ** 2))
    nose_tip = _gauss(x, y, 0.0, a.nose_tip_y, 0.09, 0.09)
    designed = [
        vec(0.04 * x, 0.0, 0.0),  # face width
        vec(0.0, 0.035 * (y - a.nose_tip_y), 0.0),  # face length
        vec(0.0, 0.07 * np.minimum(y - a.subnasale_y, 0.0), 0.0),  # lower-face height
        vec(0.0, 0.07 * np.maximum(y - a.brow_y, 0.0), -0.03 * _smoothstep(0.5, 1.0, y)),  # forehead height
        vec(0.07 * x * lower_face, 0.0, 0.0),  # jaw width
        vec(0.0, -0.015 * chin, 0.035 * chin),  # chin height and protrusion
        vec(0.0, -0.03 * nose * _smoothstep(a.nasion_y, a.nose_tip_y, y), 0.0),  # nose length
        along_normal(0.03 * nose_tip + 0.015 * _gauss(x, y, 0.0, 0.12, 0.06, 0.15)),  # nose height
        vec(0.18 * x * _gauss(x, y, 0.0, -0.13, 0.2, 0.09), 0.0, 0.0),  # nose width
        along_normal(0.02 * _gauss(x, y, 0.0, 0.2, 0.07, 0.12)),  # nose bridge
        vec(0.022 * sgn * eyes, 0.0, 0.0),  # eye spacing
        vec(0.12 * (x - sgn * a.eye_x) * eyes, 0.12 * (y - a.eye_y) * eyes, 0.0),  # eye size
        vec(0.0, 0.025 * _pair(x, y, a.eye_x, 0.33, 0.25, 0.2), 0.0),  # eye / brow height
        along_normal(0.028 * _gauss(x, y, 0.0, a.brow_y, 0.4, 0.08)),  # brow ridge
        along_normal(0.035 * _pair(x, y, a.cheek_x, a.cheek_y - 0.1, 0.18, 0.2)),  # cheek fullness
        along_normal(0.025 * _pair(x, y, 0.52, 0.1, 0.14, 0.12)),  # cheekbones
        vec(0.0, 0.22 * (y - a.mouth_y) * lip_h, 0.012 * lip_h),  # lip thickness
        vec(0.12 * x * mouth, 0.0, 0.0),  # mouth width
        vec(0.0, 0.0, 0.07 * front_z),  # face depth
        vec(0.0, 0.02 * mouth, 0.0),  # mouth height
        along_normal(-0.022 * eyes),  # eye depth
        vec(0.025 * pos[:, 0], 0.025 * pos[:, 1], 0.025 * pos[:, 2]),  # overall size
    ]
    num_random = max(24, num - len(designed) + 16)
    randoms = []
    for _ in range(num_random):
        field = np.zeros_like(pos)
        symmetric = rng.random() < 0.8
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = rng.uniform(-0.6, 0.6), rng.uniform(-0.9, 0.9)
            sigma = rng.uniform(0.12, 0.35)
            direction = rng.normal(size=3) * np.array([0.5, 0.5, 1.0])
            direction *= 0.012 / np.linalg.norm(direction)
            bump = _gauss(x, y, cx, cy, sigma, sigma)
            if symmetric:
                mirrored = _gauss(x, y, -cx, cy, sigma, sigma)
                field += bump[:, None] * direction + mirrored[:, None] * (direction * np.array([-1.0, 1.0, 1.0]))
            else:
                field += bump[:, None] * direction
        randoms.append(field)
    return np.stack(designed + randoms, axis=-1)


def _pca_basis(raw: np.ndarray, num: int) -> np.ndarray:
    """(V, C, num) orthogonal basis of the span of the raw fields, ordered by variance and
    scaled by the standard deviation along each axis (so unit-normal coefficients have
    the same distribution as unit-normal weights of the raw fields, truncated).
    Column signs are fixed (largest entry positive) for determinism."""
    v, c, r = raw.shape
    if num > r:
        raise ValueError(f"procedural face: cannot build {num} basis columns from {r} fields")
    flat = raw.reshape(v * c, r)
    # Eigen-decomposition of the small R × R Gram matrix: D = U S Wᵀ, so U S = D W.
    eigval, eigvec = np.linalg.eigh(flat.T @ flat)
    order = np.argsort(eigval)[::-1][:num]
    basis = flat @ eigvec[:, order]
    big = np.argmax(np.abs(basis), axis=0)
    basis *= np.sign(basis[big, np.arange(num)])
    return basis.reshape(v, c, num)


# --------------------------------------------------------------------------------------
# Albedo
# --------------------------------------------------------------------------------------

_SKIN = np.array([0.74, 0.56, 0.46])
_LIPS = np.array([0.66, 0.35, 0.34])
_BROW = np.array([0.24, 0.17, 0.13])
_SCLERA = np.array([0.90, 0.88, 0.85])
_IRIS = np.array([0.33, 0.21, 0.12])
_PUPIL = np.array([0.04, 0.03, 0.03])
_LASH = np.array([0.12, 0.09, 0.08])
_NOSTRIL = np.array([0.30, 0.18, 0.15])


# Physiological directions of skin colour change (rows, unit-ish RGB): melanin darkens
# all channels (more blue/green), blood reddens, carotene yellows. Random albedo fields
# mix these only, so they never paint green or purple patches.
_SKIN_COLOUR_AXES = np.array([[-0.62, -0.55, -0.5], [0.75, -0.45, -0.35], [0.35, 0.25, -0.6]])


def _region_weights(mesh: _Mesh, anatomy: FaceAnatomy) -> dict[str, np.ndarray]:
    """(V,) soft weights in [0, 1] of the coloured regions of the face."""
    a = anatomy
    x, y = mesh.face_x, mesh.face_y
    ax = np.abs(x)
    ex, ey = _eye_frame(x, y, a)
    lid_up, lid_low = _lid_curves(ex, a)
    soft = 0.006
    opening = _smoothstep(-soft, soft, lid_up - ey) * _smoothstep(-soft, soft, ey - lid_low) * (np.abs(ex) < 1.0)
    r_eye = np.hypot(ax - a.eye_x, ey - 0.2 * a.upper_lid_height)
    iris = _smoothstep(a.iris_radius + 0.006, a.iris_radius - 0.006, r_eye)
    pupil = _smoothstep(a.pupil_radius + 0.005, a.pupil_radius - 0.005, r_eye)
    lash = np.exp(-(((ey - lid_up - 0.004) / 0.01) ** 2)) * _smoothstep(1.15, 0.8, np.abs(ex))
    q = (ax - a.brow_inner_x) / (a.brow_outer_x - a.brow_inner_x)
    thickness = 0.032 - 0.014 * np.clip(q, 0, 1)
    brow = (
        np.exp(-(((y - _brow_centre_y(x, a)) / thickness) ** 4))
        * _smoothstep(-0.06, 0.05, q)
        * _smoothstep(1.08, 0.92, q)
    )
    up_border, low_border, _ = _lip_borders(x, a)
    dy = y - a.mouth_y
    lips = np.where(
        dy >= 0,
        _smoothstep(0.006, -0.006, dy - up_border),
        _smoothstep(0.006, -0.006, low_border - dy),
    ) * _smoothstep(1.04, 0.96, ax / a.mouth_corner_x)
    nostril = _pair(x, y, 0.058, a.subnasale_y + 0.018, 0.026, 0.02)
    cheeks = _pair(x, y, 0.38, -0.08, 0.14, 0.12)
    return {
        "opening": opening,
        "iris": iris * opening,
        "pupil": pupil * opening,
        "lash": lash,
        "brow": brow,
        "lips": lips,
        "nostril": np.clip(nostril, 0, 1),
        "cheeks": cheeks,
    }


def _mean_albedo(mesh: _Mesh, anatomy: FaceAnatomy) -> np.ndarray:
    """(V, 3) RGB in [0, 1]: skin with darker lips, brows, lashes, nostrils, and eyes with
    white sclera, brown iris and black pupil."""
    w = _region_weights(mesh, anatomy)
    col = np.broadcast_to(_SKIN, mesh.positions.shape).copy()
    col += 0.05 * w["cheeks"][:, None] * np.array([0.5, -0.4, -0.3])
    nose_tip = _gauss(mesh.face_x, mesh.face_y, 0.0, anatomy.nose_tip_y, 0.06, 0.06)
    col += 0.04 * nose_tip[:, None] * np.array([0.6, -0.3, -0.3])

    def paint(colour: np.ndarray, weight: np.ndarray) -> None:
        nonlocal col
        col = col * (1.0 - weight[:, None]) + colour * weight[:, None]

    paint(_LIPS, w["lips"])
    paint(_NOSTRIL, 0.8 * w["nostril"])
    paint(_BROW, 0.85 * w["brow"])
    paint(_SCLERA, w["opening"])
    paint(_IRIS, w["iris"])
    paint(_PUPIL, w["pupil"])
    paint(_LASH, 0.8 * w["lash"] * (1.0 - w["opening"]))
    return col


def _albedo_fields(mesh: _Mesh, anatomy: FaceAnatomy, rng: np.random.Generator, num: int) -> np.ndarray:
    """(V, 3, R) raw albedo variations (RGB), each one population standard deviation."""
    w = _region_weights(mesh, anatomy)
    x, y = mesh.face_x, mesh.face_y
    skin = np.clip(1.0 - w["opening"] - w["brow"] - w["lips"], 0.0, 1.0)
    mean = _mean_albedo(mesh, anatomy)

    def rgb(weight: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
        return weight[:, None] * np.asarray(colour)

    designed = [
        mean * (0.14 * (1.0 - w["opening"] + w["iris"]))[:, None],  # overall skin tone (light/dark)
        rgb(skin, (0.02, 0.0, -0.035)),  # warm / cool (yellow vs pink)
        rgb(w["cheeks"], (0.04, -0.015, -0.01)),  # cheek redness
        rgb(w["lips"], (0.05, -0.03, -0.01)),  # lip redness
        rgb(w["lips"], (-0.05, -0.04, -0.035)),  # lip darkness
        rgb(w["brow"], (-0.06, -0.05, -0.04)),  # brow darkness
        rgb(w["iris"], (-0.08, 0.02, 0.14)),  # iris brown vs blue
        rgb(_pair(x, y, 0.3, 0.12, 0.12, 0.06) * skin, (-0.03, -0.035, -0.02)),  # under-eye shadow
        rgb(_gauss(x, y, 0.0, -0.7, 0.3, 0.25) * skin, (-0.03, -0.025, -0.02)),  # beard shadow
        rgb(_gauss(x, y, 0.0, 0.1, 0.1, 0.3) * skin, (0.03, 0.02, 0.02)),  # shine on the nose
    ]
    num_random = max(24, num - len(designed) + 16)
    randoms = []
    for _ in range(num_random):
        field = np.zeros_like(mean)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(-0.65, 0.65), rng.uniform(-0.95, 0.95)
            sigma = rng.uniform(0.08, 0.3)
            colour = (rng.normal(size=3) * np.array([1.0, 0.6, 0.5])) @ _SKIN_COLOUR_AXES * 0.01
            bump = _gauss(x, y, cx, cy, sigma, sigma)
            if rng.random() < 0.7:
                bump = bump + _gauss(x, y, -cx, cy, sigma, sigma)
            field += (bump * skin)[:, None] * colour
        randoms.append(field)
    return np.stack(designed + randoms, axis=-1)


def _masks(mesh: _Mesh, anatomy: FaceAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """``front_mask``: inside the face outline (jaw contour, forehead, cheeks);
    ``skin_mask``: front skin without eyes, brows, lips and nostrils."""
    x, y = mesh.face_x, mesh.face_y
    jaw = _jaw_targets()
    outline = np.interp(-y, -jaw[:, 1], -jaw[:, 0])  # half width of the face at height y
    outline = np.where(y > jaw[0, 1], 0.72, outline + 0.03)
    front = (np.abs(x) <= outline) & (y < 0.95) & (y > anatomy.menton_y - 0.02) & (mesh.normals[:, 2] > 0.25)
    w = _region_weights(mesh, anatomy)
    feature = np.maximum.reduce([w["opening"], w["brow"], w["lips"], w["nostril"], w["lash"]])
    ex, ey = _eye_frame(x, y, anatomy)
    near_eye = (np.abs(ex) < 1.1) & (np.abs(ey) < 0.07)
    skin = front & (feature < 0.2) & ~near_eye
    return front, skin
