"""Emotions as action units (EMFACS) and how they combine with speech and blinks.

The procedural face model's expression basis *is* a set of FACS action units
(``MorphableModel.expression_names``), so an emotion is a vector of AU activations:

==========  =============================================  ============================
emotion     EMFACS action units                             notes
==========  =============================================  ============================
happy       6 + 12                                          cheek raiser, lip corner puller
sad         1 + 4 + 15                                      inner brow raiser, brow lowerer, corner depressor
surprised   1 + 2 + 5 + 26                                  brows up, lids up, jaw drop
fear        1 + 2 + 4 + 5 + 7 + 20 + 26                     brows up and together, lids, lip stretch, jaw
angry       4 + 5 + 7 + 23                                  brow lowerer, lids, lip tightener
disgusted   9 + 15 + 16                                     nose wrinkler, corner and lower-lip depressors
contempt    12L + 14L                                       one-sided (subject's left) smirk and dimpler
==========  =============================================  ============================

Activation of AU ``k`` for emotion ``e`` at MEAD level ``j`` (continuous; 0 = neutral):
``a_k = recipe[e][k] · (j / 3) · gain[s, k]`` with a per-subject, per-AU gain ``gain[s, k]``
(log-normal, see :mod:`~emoedit.data.synthetic.subjects`), so each subject has its own
version of every emotion. A frame's expression coefficients are
``clamp(speech + emotion + blink, 0, AU_LIMITS)`` (mouth-opening AUs of the emotion add
to those of speech).
"""

from __future__ import annotations

import torch
from torch import Tensor

from emoedit.editing.emotion_code import EMOTIONS, MAX_LEVEL
from emoedit.shape_checks import assert_shape

#: AU activations of each emotion at MEAD's strongest level (3), before subject gains.
EMFACS_RECIPES: dict[str, dict[str, float]] = {
    "happy": {"AU6": 1.0, "AU12": 1.2},
    "angry": {"AU4": 1.2, "AU5": 0.6, "AU7": 0.9, "AU23": 1.1},
    "sad": {"AU1": 1.1, "AU4": 0.7, "AU15": 1.1},
    "surprised": {"AU1": 1.2, "AU2": 1.2, "AU5": 1.0, "AU26": 0.55},
    "fear": {"AU1": 1.0, "AU2": 0.7, "AU4": 0.6, "AU5": 1.0, "AU7": 0.5, "AU20": 1.0, "AU26": 0.35},
    "disgusted": {"AU9": 1.2, "AU15": 0.7, "AU16": 0.7},
    "contempt": {"AU12L": 1.0, "AU14L": 1.0},
}
assert tuple(sorted(EMFACS_RECIPES)) == tuple(sorted(EMOTIONS))

#: Action units driven by speech (jaw, lips part, rounding, bilabial closure).
SPEECH_AUS: tuple[str, ...] = ("AU25", "AU26", "AU22", "AU18", "AU24")
#: The blink action unit.
BLINK_AU = "AU43"
#: Upper bound of a combined activation; mouth opening is limited to a sane jaw drop.
DEFAULT_AU_LIMIT = 1.4
AU_LIMITS: dict[str, float] = {"AU25": 1.0, "AU26": 1.0, "AU27": 0.6, "AU43": 1.0}

#: Per-emotion speech-rate factor of the *recordings* (MEAD frames are unpaired: sad
#: speech is slower, angry and surprised speech faster) and head-motion scale.
SPEECH_RATE_FACTOR: dict[str, float] = {
    "neutral": 1.0,
    "happy": 1.08,
    "angry": 1.22,
    "sad": 0.72,
    "surprised": 1.18,
    "fear": 1.12,
    "disgusted": 0.92,
    "contempt": 0.9,
}
HEAD_MOTION_SCALE: dict[str, float] = {
    "neutral": 1.0,
    "happy": 1.15,
    "angry": 1.3,
    "sad": 0.7,
    "surprised": 1.2,
    "fear": 1.1,
    "disgusted": 1.0,
    "contempt": 0.9,
}


def required_action_units() -> tuple[str, ...]:
    """Every AU the world drives (recipes, speech, blink), sorted."""
    names = {au for recipe in EMFACS_RECIPES.values() for au in recipe}
    return tuple(sorted(names | set(SPEECH_AUS) | {BLINK_AU}))


def check_expression_names(expression_names: tuple[str, ...] | None) -> tuple[str, ...]:
    """Raise unless the face model's expression basis has every AU the world needs."""
    if expression_names is None:
        raise ValueError("the synthetic world needs a face model whose expression basis is named action units")
    missing = [au for au in required_action_units() if au not in expression_names]
    if missing:
        raise ValueError(f"the face model's expression basis lacks action units {missing}")
    return tuple(expression_names)


def au_vector(activations: dict[str, float], expression_names: tuple[str, ...]) -> Tensor:
    """``(K,)`` float32 expression vector with the named activations, zeros elsewhere."""
    out = torch.zeros(len(expression_names), dtype=torch.float32)
    for name, value in activations.items():
        out[expression_names.index(name)] = float(value)
    return out


def au_limits(expression_names: tuple[str, ...]) -> Tensor:
    """``(K,)`` float32 upper bounds of combined activations."""
    return torch.tensor([AU_LIMITS.get(n, DEFAULT_AU_LIMIT) for n in expression_names], dtype=torch.float32)


def emotion_activation(
    emotion: str,  # MEAD emotion name; "neutral" gives zeros
    level: float,  # MEAD level j (continuous, >= 0); strength j / 3
    gains: Tensor,  # (K,) per-AU subject gains (1 = the recipe as written)
    expression_names: tuple[str, ...],  # the model's AU names, basis order
) -> Tensor:
    """``(K,)`` float32 AU activations of ``emotion`` at ``level`` for a subject.

    ``recipe · (level / MAX_LEVEL) · gains`` (not clamped; see :func:`combine_activations`).
    """
    assert_shape(gains, (len(expression_names),), "gains")
    if level < 0:
        raise ValueError(f"emotion level must be >= 0, got {level}")
    if emotion == "neutral":
        return torch.zeros(len(expression_names), dtype=torch.float32)
    if emotion not in EMFACS_RECIPES:
        raise ValueError(f"unknown emotion {emotion!r}; known: neutral, {', '.join(EMFACS_RECIPES)}")
    recipe = au_vector(EMFACS_RECIPES[emotion], expression_names)
    return recipe * (float(level) / MAX_LEVEL) * gains.to(torch.float32)


def combine_activations(
    speech: Tensor,  # (N, K) speech-driven activations
    emotion: Tensor,  # (K,) or (N, K) emotion activations
    blink: Tensor,  # (N, K) blink activations
    expression_names: tuple[str, ...],  # AU names, basis order
) -> Tensor:
    """``(N, K)`` float32 ``clamp(speech + emotion + blink, 0, AU_LIMITS)``."""
    dims = assert_shape(speech, ("N", len(expression_names)), "speech")
    assert_shape(blink, ("N", len(expression_names)), "blink", dims)
    total = speech + emotion + blink
    return torch.minimum(total.clamp(min=0.0), au_limits(expression_names))
