"""Expression-dependent texture: wrinkles and flush that geometry alone cannot produce.

Each effect ``e`` is a subject-specific additive UV map ``D[s, e]`` (3, T, T) and an
activation ``a_e = clamp(Σ_k W[e, k] · AU_k, 0, EFFECT_LIMIT)`` computed from the frame's
action units with the fixed matrix ``W`` (:data:`EFFECT_AU_WEIGHTS`). A frame's true UV
albedo is ``clamp(albedo[s] + Σ_e a_e · D[s, e], 0, 1)`` — linear in the activations, so
the true texture "edit direction" of an emotion is exact and differs between subjects:

- wrinkle maps darken the subject's own albedo (``D = −albedo ⊙ depth · lines``), with
  lines whose number, position, length, angle and depth are drawn per subject;
- the flush map reddens cheeks, nose and forehead by a per-subject amount.

Per-subject response: an overall wrinkliness (log-normal), a per-effect gain
(log-normal) and a flush gain (log-normal) multiply the maps, so some subjects wrinkle or
flush much more than others, and a mean direction over subjects is not the direction of
anyone in particular (METHOD eq. 4 is measured against this).

In an independent world (the default) every subject's maps and gains are drawn on its own
stream, unrelated to its appearance; in a ``"families"`` world the painters draw from a
family blend (:mod:`~emoedit.data.synthetic.families`): a member's lines are its family's
lines moved toward its own by ``family_spread``, its gains the family's blended in log space.
The :func:`~emoedit.data.synthetic.families.sync_point` calls below mark where a member's
family stream re-aligns with the prototype's (no-ops on a numpy generator).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from emoedit.data.synthetic.families import RandomSource, sync_point
from emoedit.data.synthetic.uv_painting import UVFaceFrame, gaussian, polyline_band, soft_disc, wavy_line
from emoedit.shape_checks import assert_shape

#: Effect names, in the order of every effect axis.
EFFECT_NAMES: tuple[str, ...] = (
    "crows_feet",
    "forehead_lines",
    "glabella_lines",
    "nose_wrinkles",
    "nasolabial_right",
    "nasolabial_left",
    "dimple_left",
    "flush",
)

#: ``W``: activation of each effect per unit of each action unit.
EFFECT_AU_WEIGHTS: dict[str, dict[str, float]] = {
    "crows_feet": {"AU6": 1.0, "AU7": 0.25},
    "forehead_lines": {"AU1": 0.5, "AU2": 0.5},
    "glabella_lines": {"AU4": 1.0},
    "nose_wrinkles": {"AU9": 1.0},
    "nasolabial_right": {"AU12": 1.0, "AU10": 0.5, "AU9": 0.3},
    "nasolabial_left": {"AU12": 1.0, "AU12L": 1.0, "AU10": 0.5, "AU9": 0.3},
    "dimple_left": {"AU14L": 1.0},
    # Anger (AU23 is anger's own AU) and a little for any strong, muscle-heavy expression.
    "flush": {
        "AU23": 0.9,
        "AU4": 0.12,
        "AU7": 0.1,
        "AU9": 0.1,
        "AU5": 0.05,
        "AU1": 0.04,
        "AU2": 0.04,
        "AU15": 0.04,
        "AU20": 0.05,
        "AU6": 0.04,
        "AU12": 0.04,
    },
}
assert tuple(EFFECT_AU_WEIGHTS) == EFFECT_NAMES

#: Upper bound of an effect activation.
EFFECT_LIMIT = 1.5

# Darkening depth (fraction of the albedo) of each wrinkle effect at activation 1, gain 1.
_WRINKLE_DEPTH: dict[str, float] = {
    "crows_feet": 0.45,
    "forehead_lines": 0.32,
    "glabella_lines": 0.5,
    "nose_wrinkles": 0.42,
    "nasolabial_right": 0.32,
    "nasolabial_left": 0.32,
    "dimple_left": 0.3,
}
# RGB shift of full flush (activation 1, gain 1).
_FLUSH_RGB = np.array([0.1, -0.03, -0.025])


def effect_weight_matrix(expression_names: tuple[str, ...]) -> Tensor:
    """``(E, K)`` float32 ``W`` for a model's expression basis (unknown AUs are ignored)."""
    w = torch.zeros(len(EFFECT_NAMES), len(expression_names), dtype=torch.float32)
    for e, name in enumerate(EFFECT_NAMES):
        for au, value in EFFECT_AU_WEIGHTS[name].items():
            if au in expression_names:
                w[e, expression_names.index(au)] = value
    return w


def effect_activations(exp_coeff: Tensor, weights: Tensor) -> Tensor:
    """``(N, E)`` activations ``clamp(exp_coeff @ Wᵀ, 0, EFFECT_LIMIT)`` from ``(N, K)`` AUs."""
    assert_shape(weights, (len(EFFECT_NAMES), None), "weights")
    assert_shape(exp_coeff, (None, weights.shape[1]), "exp_coeff")
    return (exp_coeff @ weights.t()).clamp(0.0, EFFECT_LIMIT)


def apply_effects(albedo: Tensor, effect_maps: Tensor, activations: Tensor) -> Tensor:
    """A frame's true UV albedo.

    Args:
        albedo: ``(3, T, T)`` or ``(B, 3, T, T)`` float in [0, 1], the subject's albedo.
        effect_maps: ``(E, 3, T, T)`` or ``(B, E, 3, T, T)`` float, additive maps ``D``.
        activations: ``(B, E)`` float effect activations.

    Returns:
        ``(B, 3, T, T)`` float in [0, 1]: ``clamp(albedo + Σ_e a_e D_e, 0, 1)``.
    """
    assert_shape(activations, ("B", len(EFFECT_NAMES)), "activations")
    if effect_maps.ndim == 4:
        change = torch.einsum("be,echw->bchw", activations, effect_maps)
    else:
        change = torch.einsum("be,bechw->bchw", activations, effect_maps)
    base = albedo if albedo.ndim == 4 else albedo.unsqueeze(0)
    return (base + change).clamp(0.0, 1.0)


def draw_effect_gains(rng: RandomSource) -> np.ndarray:
    """``(E,)`` per-subject response gains: wrinkliness × per-effect gain; flush gain."""
    wrinkliness = float(np.exp(rng.normal(0.0, 0.35)))
    gains = np.exp(rng.normal(0.0, 0.45, size=len(EFFECT_NAMES))) * wrinkliness
    gains = np.clip(gains, 0.2, 2.5)
    gains[EFFECT_NAMES.index("flush")] = float(np.clip(np.exp(rng.normal(0.0, 0.4)), 0.3, 2.0))
    return gains


def paint_effect_maps(
    frame: UVFaceFrame,  # texel positions of the UV template
    albedo: np.ndarray,  # (3, T, T) float64 subject albedo in [0, 1]
    gains: np.ndarray,  # (E,) response gains (draw_effect_gains)
    rng: RandomSource,  # the subject's stream for wrinkle geometry
) -> np.ndarray:
    """``(E, 3, T, T)`` float32 additive effect maps ``D`` of one subject."""
    size = frame.texture_size
    width = max(0.011, 0.8 * frame.texel_dm)  # wrinkle half-width: ≥ about a texel
    masks: dict[str, np.ndarray] = {}
    sync_point(rng, "crows_feet")
    masks["crows_feet"] = _crows_feet(frame, rng, width)
    sync_point(rng, "forehead_lines")
    masks["forehead_lines"] = _forehead_lines(frame, rng, width)
    sync_point(rng, "glabella_lines")
    masks["glabella_lines"] = _glabella_lines(frame, rng, width)
    sync_point(rng, "nose_wrinkles")
    masks["nose_wrinkles"] = _nose_wrinkles(frame, rng, width)
    sync_point(rng, "nasolabial_right")
    masks["nasolabial_right"] = _nasolabial(frame, rng, width, side=-1)
    sync_point(rng, "nasolabial_left")
    masks["nasolabial_left"] = _nasolabial(frame, rng, width, side=+1)
    sync_point(rng, "dimple_left")
    masks["dimple_left"] = _dimple(frame, rng)
    sync_point(rng, "flush")
    skin = np.clip(frame.skin * 1.1, 0.0, 1.0)
    maps = np.zeros((len(EFFECT_NAMES), 3, size, size), dtype=np.float64)
    for e, name in enumerate(EFFECT_NAMES):
        if name == "flush":
            maps[e] = _flush(frame, rng)[None] * skin[None] * _FLUSH_RGB[:, None, None] * gains[e]
        else:
            depth = _WRINKLE_DEPTH[name] * gains[e]
            maps[e] = -albedo * np.clip(depth * masks[name] * skin, 0.0, 0.65)[None]
    maps *= frame.filled[None, None]
    return maps.astype(np.float32)


# ---------------------------------------------------------------------------- wrinkles


def _crows_feet(frame: UVFaceFrame, rng: RandomSource, width: float) -> np.ndarray:
    """Lines fanning out from the outer eye corners (iBUG 37 and 46, 0-based 36 and 45)."""
    out = np.zeros_like(frame.x)
    for corner, side in ((36, -1.0), (45, 1.0)):
        sync_point(rng, f"crows_feet_{corner}")
        p = frame.landmark(corner) + np.array([side * rng.uniform(0.03, 0.05), rng.uniform(-0.01, 0.01)])
        count = int(rng.integers(3, 6))
        angles = np.linspace(-0.7, 0.55, count) + rng.normal(0.0, 0.08, size=count)
        for angle in angles:
            length = rng.uniform(0.07, 0.13)
            start = p + np.array([side * 0.01, 0.0])
            end = start + length * np.array([side * np.cos(angle), np.sin(angle)])
            line = wavy_line(rng, start, end, wiggle=0.004, bend=rng.uniform(-0.01, 0.01), points=6)
            out = np.maximum(out, rng.uniform(0.6, 1.0) * polyline_band(frame, line, width))
    return out


def _forehead_lines(frame: UVFaceFrame, rng: RandomSource, width: float) -> np.ndarray:
    """Horizontal lines across the forehead, above the brows (iBUG 18-27)."""
    brow_top = float(frame.landmarks[17:27, 1].max())
    out = np.zeros_like(frame.x)
    count = int(rng.integers(3, 6))
    spacing = rng.uniform(0.055, 0.08)
    first = brow_top + rng.uniform(0.06, 0.09)
    for k in range(count):
        y0 = first + k * spacing + rng.normal(0.0, 0.008)
        half = rng.uniform(0.28, 0.45) * (1.0 - 0.1 * k)
        shift = rng.normal(0.0, 0.04)
        line = wavy_line(
            rng, np.array([shift - half, y0]), np.array([shift + half, y0 + rng.normal(0.0, 0.01)]),
            wiggle=0.008, bend=-rng.uniform(0.0, 0.03), points=13,
        )
        out = np.maximum(out, rng.uniform(0.6, 1.0) * polyline_band(frame, line, width * 1.1))
    return out


def _glabella_lines(frame: UVFaceFrame, rng: RandomSource, width: float) -> np.ndarray:
    """Vertical lines between the inner brow ends (iBUG 22 and 23, 0-based 21 and 22)."""
    inner = 0.5 * (frame.landmark(21) + frame.landmark(22))
    out = np.zeros_like(frame.x)
    count = int(rng.choice([1, 2, 2, 2, 3]))
    xs = {1: [0.0], 2: [-1.0, 1.0], 3: [-1.2, 0.0, 1.2]}[count]
    spread = rng.uniform(0.025, 0.05)
    for x in xs:
        base = inner + np.array([x * spread, rng.uniform(-0.06, -0.03)])
        top = base + np.array([x * rng.uniform(0.0, 0.015) + rng.normal(0, 0.004), rng.uniform(0.1, 0.15)])
        line = wavy_line(rng, base, top, wiggle=0.003, bend=rng.uniform(-0.008, 0.008), points=6)
        out = np.maximum(out, rng.uniform(0.7, 1.0) * polyline_band(frame, line, width))
    return out


def _nose_wrinkles(frame: UVFaceFrame, rng: RandomSource, width: float) -> np.ndarray:
    """Oblique "bunny lines" on both sides of the upper nose (iBUG 28-29)."""
    root = 0.5 * (frame.landmark(27) + frame.landmark(28))
    out = np.zeros_like(frame.x)
    count = int(rng.integers(2, 5))
    for side in (-1.0, 1.0):
        sync_point(rng, f"nose_wrinkles_{side:+.0f}")
        for k in range(count):
            start = root + np.array([side * rng.uniform(0.02, 0.04), 0.03 - k * rng.uniform(0.03, 0.045)])
            angle = rng.uniform(0.25, 0.7)
            end = start + rng.uniform(0.06, 0.1) * np.array([side * np.cos(angle), -np.sin(angle)])
            line = wavy_line(rng, start, end, wiggle=0.002, points=5)
            out = np.maximum(out, rng.uniform(0.6, 1.0) * polyline_band(frame, line, width))
    return out


def _nasolabial(frame: UVFaceFrame, rng: RandomSource, width: float, *, side: int) -> np.ndarray:
    """The fold from beside the nose wing (iBUG 32 / 36) to beside the mouth corner (49 / 55)."""
    ala = frame.landmark(35 if side > 0 else 31)
    corner = frame.landmark(54 if side > 0 else 48)
    start = ala + np.array([side * rng.uniform(0.05, 0.08), rng.uniform(0.0, 0.04)])
    end = corner + np.array([side * rng.uniform(0.04, 0.08), -rng.uniform(0.04, 0.12)])
    line = wavy_line(rng, start, end, wiggle=0.004, bend=-side * rng.uniform(0.01, 0.04), points=9)
    return rng.uniform(0.75, 1.0) * polyline_band(frame, line, width * rng.uniform(1.4, 2.2))


def _dimple(frame: UVFaceFrame, rng: RandomSource) -> np.ndarray:
    """A dimple beside the subject's left mouth corner (iBUG 55, 0-based 54)."""
    corner = frame.landmark(54)
    centre = corner + np.array([rng.uniform(0.03, 0.06), rng.uniform(-0.03, 0.0)])
    return 0.9 * soft_disc(frame, centre, rng.uniform(0.015, 0.025), sharpness=2.0)


def _flush(frame: UVFaceFrame, rng: RandomSource) -> np.ndarray:
    """Where anger reddens: cheeks, nose, forehead (per-subject proportions)."""
    nose = frame.landmark(30)
    cheek_y = 0.5 * (frame.landmark(30)[1] + frame.landmark(40)[1])
    cheek_x = 0.5 * (frame.landmark(36)[0] - frame.landmark(45)[0]) * 0.95
    brow_top = float(frame.landmarks[17:27, 1].max())
    weights = rng.uniform(0.5, 1.0, size=4)
    field = (
        weights[0] * gaussian(frame, np.array([cheek_x, cheek_y]), 0.16, 0.14)
        + weights[0] * gaussian(frame, np.array([-cheek_x, cheek_y]), 0.16, 0.14)
        + weights[1] * gaussian(frame, nose, 0.08, 0.1)
        + weights[2] * 0.7 * gaussian(frame, np.array([0.0, brow_top + 0.2]), 0.35, 0.16)
        + weights[3] * 0.4 * gaussian(frame, np.array([0.0, nose[1] - 0.5]), 0.25, 0.15)
    )
    return np.clip(field, 0.0, 1.0)
