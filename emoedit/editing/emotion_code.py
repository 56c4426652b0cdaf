"""Emotion codes (METHOD §3.3, eq. 2), mixtures, and time schedules of codes.

An emotion code is a vector ``e`` of ``NUM_EMOTIONS`` (E_t = 7) non-negative floats, one
per MEAD emotion in the order of ``EMOTIONS``. Eq. 2: for emotion index ``i`` and intensity
*level* ``j`` (MEAD levels 1, 2, 3; continuous, values between and beyond are allowed),
``e_k = j / E_m`` for ``k = i`` and 0 otherwise, with ``E_m = MAX_LEVEL = 3``. Neutral is
the zero vector. We call ``alpha = j / E_m`` the *strength*: 1.0 is MEAD's strongest level.

Three ways to build a code:

- ``emotion_code(emotion, intensity)`` / ``emotion_code_from_level``: eq. 2 as written
  (``intensity`` is the level ``j``);
- ``emotion_code_from_alpha(emotion, alpha)``: the strength ``alpha = j / E_m`` directly;
- ``mix_emotion_codes({"sad": 0.5, "angry": 0.5})``: one strength per emotion (a mixture;
  the paper only trains one-hot codes, so mixtures are an extrapolation).

Text syntax (for the command line), parsed by ``parse_emotion``:

    expression := term ("+" term)*
    term       := NAME | NAME NUMBER | NUMBER NAME      (NUMBER = alpha, default 1.0)

e.g. ``"neutral"``, ``"happy"`` (alpha 1), ``"happy 0.3"``, ``"0.5 sad + 0.5 angry"``.

A schedule (``parse_emotion_schedule``) is keyframes separated by ``;``, each a time in
seconds with an ``s`` suffix followed by an expression:
``"0s neutral; 1.5s happy 0.3; 4s happy 1.0; 6s 0.5 sad + 0.5 angry"``. Codes are linearly
interpolated between keyframes and held constant before the first and after the last. A
single expression without a time is a constant schedule.

Names are case-insensitive. Accepted aliases (each maps to exactly one emotion, so none is
ambiguous): ``happiness`` → happy, ``anger`` → angry, ``sadness`` → sad, ``surprise`` →
surprised, ``fearful`` → fear, ``disgust`` → disgusted, ``contemptuous`` → contempt.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Sequence

import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape

EMOTIONS: tuple[str, ...] = ("happy", "angry", "sad", "surprised", "fear", "disgusted", "contempt")
"""MEAD emotions (neutral excluded) in code order: index ``i`` of eq. 2."""

NUM_EMOTIONS: int = len(EMOTIONS)
"""E_t: length of an emotion code."""

MAX_LEVEL: int = 3
"""E_m: MEAD's strongest intensity level; level ``j`` gives strength ``j / E_m``."""

NEUTRAL: str = "neutral"
"""The neutral emotion: the zero code."""

EMOTION_ALIASES: dict[str, str] = {
    "happiness": "happy",
    "anger": "angry",
    "sadness": "sad",
    "surprise": "surprised",
    "fearful": "fear",
    "disgust": "disgusted",
    "contemptuous": "contempt",
}
"""Convenience spellings accepted by every function here (lower case)."""

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_TIME = re.compile(r"^([+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)s$")


def _valid_names() -> str:
    return ", ".join((NEUTRAL,) + EMOTIONS)


def canonical_emotion(emotion: str | int) -> str:
    """The canonical name of ``emotion`` (a name, alias or index into ``EMOTIONS``).

    Returns one of ``EMOTIONS`` or ``"neutral"``. Raises ``ValueError`` naming the valid
    names for an unknown name or an index outside ``[0, NUM_EMOTIONS)``.
    """
    if isinstance(emotion, bool):  # bool is an int subclass; never an emotion index
        raise ValueError(f"emotion must be a name or an index, got {emotion!r}")
    if isinstance(emotion, int):
        if not 0 <= emotion < NUM_EMOTIONS:
            raise ValueError(
                f"emotion index {emotion} out of range [0, {NUM_EMOTIONS}); order: {', '.join(EMOTIONS)}"
            )
        return EMOTIONS[emotion]
    if not isinstance(emotion, str):
        raise ValueError(f"emotion must be a name or an index, got {type(emotion).__name__}")
    name = emotion.strip().lower()
    name = EMOTION_ALIASES.get(name, name)
    if name != NEUTRAL and name not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; valid names: {_valid_names()}")
    return name


def emotion_index(emotion: str | int) -> int | None:
    """Index of ``emotion`` in ``EMOTIONS`` (its position in the code); ``None`` for neutral."""
    name = canonical_emotion(emotion)
    return None if name == NEUTRAL else EMOTIONS.index(name)


def _check_strength(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def emotion_code_from_alpha(
    emotion: str | int,  # emotion name, alias or index into EMOTIONS; "neutral" gives zeros
    alpha: float,  # strength j / E_m, >= 0 (1.0 = MEAD level 3); ignored for neutral
    *,
    dtype: torch.dtype = torch.float32,  # dtype of the returned code
    device: torch.device | str | None = None,  # device of the returned code
) -> Tensor:
    """One-hot emotion code scaled by ``alpha``: (NUM_EMOTIONS,) float, ``e_i = alpha``."""
    alpha = _check_strength(alpha, "emotion strength alpha")
    code = torch.zeros(NUM_EMOTIONS, dtype=dtype, device=device)
    index = emotion_index(emotion)
    if index is not None:
        code[index] = alpha
    return code


def emotion_code_from_level(
    emotion: str | int,  # emotion name, alias or index into EMOTIONS; "neutral" gives zeros
    level: float,  # intensity level j >= 0 (MEAD: 1, 2, 3; continuous; may exceed E_m)
    *,
    dtype: torch.dtype = torch.float32,  # dtype of the returned code
    device: torch.device | str | None = None,  # device of the returned code
) -> Tensor:
    """Eq. 2: (NUM_EMOTIONS,) float code with ``e_i = level / MAX_LEVEL``, 0 elsewhere."""
    level = _check_strength(level, "emotion intensity level")
    return emotion_code_from_alpha(emotion, level / MAX_LEVEL, dtype=dtype, device=device)


def emotion_code(
    emotion: str | int,  # emotion name, alias or index into EMOTIONS; "neutral" gives zeros
    intensity: float,  # intensity level j >= 0 of eq. 2 (MEAD: 1, 2, 3; continuous)
    *,
    dtype: torch.dtype = torch.float32,  # dtype of the returned code
    device: torch.device | str | None = None,  # device of the returned code
) -> Tensor:
    """Eq. 2 with the paper's names: same as ``emotion_code_from_level``. (NUM_EMOTIONS,) float."""
    return emotion_code_from_level(emotion, intensity, dtype=dtype, device=device)


def emotion_codes_from_labels(
    emotion_ids: Tensor,  # (B,) int64 index into EMOTIONS; -1 = neutral
    level: Tensor,  # (B,) float intensity level j >= 0 (ignored where neutral)
) -> Tensor:
    """Batched eq. 2 for dataset labels: (B, NUM_EMOTIONS) float, ``level / MAX_LEVEL`` one-hot.

    The result has ``level``'s dtype (float32 if ``level`` is an integer tensor) and device.
    """
    dims = assert_shape(emotion_ids, ("B",), "emotion_ids")
    assert_shape(level, ("B",), "level", dims)
    if emotion_ids.dtype.is_floating_point or emotion_ids.dtype == torch.bool:
        raise ValueError(f"emotion_ids: expected an integer tensor, got {emotion_ids.dtype}")
    if emotion_ids.numel() and (int(emotion_ids.min()) < -1 or int(emotion_ids.max()) >= NUM_EMOTIONS):
        raise ValueError(f"emotion_ids: values must lie in [-1, {NUM_EMOTIONS}), -1 = neutral")
    if not level.dtype.is_floating_point:
        level = level.to(torch.float32)
    if level.numel() and (not torch.isfinite(level).all() or float(level.min()) < 0):
        raise ValueError("level: intensity levels must be finite and >= 0")
    is_emotion = emotion_ids >= 0
    one_hot = torch.nn.functional.one_hot(emotion_ids.clamp(min=0), NUM_EMOTIONS).to(level.dtype)
    return one_hot * (level * is_emotion / MAX_LEVEL).unsqueeze(-1)


def mix_emotion_codes(
    alphas: Mapping[str | int, float],  # emotion -> strength alpha >= 0; neutral entries add nothing
    *,
    dtype: torch.dtype = torch.float32,  # dtype of the returned code
    device: torch.device | str | None = None,  # device of the returned code
) -> Tensor:
    """A mixture code: (NUM_EMOTIONS,) float with ``e_k = alphas[k]`` for each named emotion.

    Strengths are taken as given (not renormalised; their sum may exceed 1). Naming the same
    emotion twice (e.g. via an alias) raises ``ValueError``.
    """
    code = torch.zeros(NUM_EMOTIONS, dtype=dtype, device=device)
    seen: set[str] = set()
    for emotion, alpha in alphas.items():
        name = canonical_emotion(emotion)
        if name in seen:
            raise ValueError(f"emotion {name!r} appears more than once in the mixture {dict(alphas)!r}")
        seen.add(name)
        value = _check_strength(alpha, f"strength of {name!r}")
        if name != NEUTRAL:
            code[EMOTIONS.index(name)] = value
    return code


def _parse_term(term: str, text: str) -> tuple[str, float]:
    tokens = term.split()
    numbers = [t for t in tokens if _NUMBER.match(t)]
    names = [t for t in tokens if not _NUMBER.match(t)]
    if len(names) != 1 or len(numbers) > 1 or len(tokens) > 2:
        raise ValueError(
            f"cannot parse emotion term {term.strip()!r} in {text!r}: expected 'NAME', 'NAME ALPHA' "
            f"or 'ALPHA NAME' (e.g. 'happy 0.3', '0.5 sad + 0.5 angry')"
        )
    alpha = float(numbers[0]) if numbers else 1.0
    if alpha < 0:
        raise ValueError(f"negative emotion strength {alpha} in {text!r}")
    return names[0], alpha


def parse_emotion_alphas(text: str) -> dict[str, float]:
    """Parse an expression like ``"0.5 sad + 0.5 angry"`` into ``{canonical name: alpha}``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty emotion expression {text!r}; e.g. 'happy 0.3' or '0.5 sad + 0.5 angry'")
    alphas: dict[str, float] = {}
    for term in text.split("+"):
        if not term.strip():
            raise ValueError(f"empty term in emotion expression {text!r}")
        name, alpha = _parse_term(term, text)
        canonical = canonical_emotion(name)
        if canonical in alphas:
            raise ValueError(f"emotion {canonical!r} appears more than once in {text!r}")
        alphas[canonical] = alpha
    return alphas


def parse_emotion(
    text: str,  # e.g. "neutral", "happy", "happy 0.3", "0.5 sad + 0.5 angry"
    *,
    dtype: torch.dtype = torch.float32,  # dtype of the returned code
    device: torch.device | str | None = None,  # device of the returned code
) -> Tensor:
    """Parse the command-line emotion syntax into a (NUM_EMOTIONS,) code (numbers are alphas)."""
    return mix_emotion_codes(parse_emotion_alphas(text), dtype=dtype, device=device)


def format_emotion_code(code: Tensor | Sequence[float], *, precision: int = 3) -> str:
    """Inverse of ``parse_emotion``: ``"0.5 sad + 0.5 angry"``, ``"neutral"`` for zeros."""
    values = [float(v) for v in (code.detach().cpu().reshape(-1).tolist() if isinstance(code, Tensor) else code)]
    if len(values) != NUM_EMOTIONS:
        raise ValueError(f"emotion code must have {NUM_EMOTIONS} entries, got {len(values)}")
    terms = [f"{round(v, precision):g} {name}" for name, v in zip(EMOTIONS, values) if round(v, precision) != 0]
    return " + ".join(terms) if terms else NEUTRAL


@dataclass(frozen=True)
class EmotionKeyframe:
    """One keyframe of a schedule: the code (strengths, code order) reached at ``time_s``."""

    time_s: float  # seconds from the first video frame
    code: tuple[float, ...]  # (NUM_EMOTIONS,) strengths alpha >= 0 in EMOTIONS order

    def __post_init__(self) -> None:
        if not math.isfinite(self.time_s):
            raise ValueError(f"keyframe time must be finite, got {self.time_s}")
        if len(self.code) != NUM_EMOTIONS:
            raise ValueError(f"keyframe code must have {NUM_EMOTIONS} entries, got {len(self.code)}")
        for value in self.code:
            _check_strength(value, "keyframe emotion strength")


@dataclass(frozen=True)
class EmotionSchedule:
    """Emotion code as a function of time: piecewise linear through ``keyframes``.

    Keyframe times strictly increase. Before the first keyframe the first code holds, after
    the last the last code holds.
    """

    keyframes: tuple[EmotionKeyframe, ...]

    def __post_init__(self) -> None:
        if not self.keyframes:
            raise ValueError("an emotion schedule needs at least one keyframe")
        times = [k.time_s for k in self.keyframes]
        for earlier, later in zip(times, times[1:]):
            if not later > earlier:
                raise ValueError(f"keyframe times must strictly increase, got {times}")

    @classmethod
    def constant(cls, code: Tensor) -> EmotionSchedule:
        """The same (NUM_EMOTIONS,) code at every time."""
        return cls.from_keyframes([(0.0, code)])

    @classmethod
    def from_keyframes(cls, keyframes: Sequence[tuple[float, Tensor | Sequence[float]]]) -> EmotionSchedule:
        """Build from ``(time_s, code (NUM_EMOTIONS,))`` pairs in increasing time order."""
        frames = []
        for time_s, code in keyframes:
            if isinstance(code, Tensor):
                assert_shape(code, (NUM_EMOTIONS,), "keyframe code")
                values = tuple(float(v) for v in code.detach().cpu().tolist())
            else:
                values = tuple(float(v) for v in code)
            frames.append(EmotionKeyframe(time_s=float(time_s), code=values))
        return cls(keyframes=tuple(frames))

    @classmethod
    def parse(cls, text: str) -> EmotionSchedule:
        """Same as ``parse_emotion_schedule``."""
        return parse_emotion_schedule(text)

    @property
    def times_s(self) -> Tensor:
        """(K,) float64 keyframe times in seconds."""
        return torch.tensor([k.time_s for k in self.keyframes], dtype=torch.float64)

    @property
    def codes(self) -> Tensor:
        """(K, NUM_EMOTIONS) float64 keyframe codes."""
        return torch.tensor([k.code for k in self.keyframes], dtype=torch.float64)

    def codes_at(
        self,
        times: Tensor,  # (N,) float seconds (any order)
        *,
        dtype: torch.dtype = torch.float32,  # dtype of the result
    ) -> Tensor:
        """(N, NUM_EMOTIONS) codes at ``times``, on ``times``' device."""
        assert_shape(times, (None,), "times")
        t = times.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(t).all():
            raise ValueError("times: contains NaN or inf")
        key_t, key_c = self.times_s, self.codes
        if len(self.keyframes) == 1:
            out = key_c.expand(t.shape[0], NUM_EMOTIONS)
        else:
            # right segment end index in [1, K-1]; clamp t so outside the range we hold the ends
            t_clamped = t.clamp(min=float(key_t[0]), max=float(key_t[-1]))
            hi = torch.searchsorted(key_t, t_clamped, right=True).clamp(1, len(key_t) - 1)
            lo = hi - 1
            frac = ((t_clamped - key_t[lo]) / (key_t[hi] - key_t[lo])).unsqueeze(-1)
            out = key_c[lo] + frac * (key_c[hi] - key_c[lo])
        return out.to(device=times.device, dtype=dtype)

    def codes_for_frames(
        self,
        num_frames: int,  # number of video frames N
        fps: float | Fraction,  # frames per second; frame n is at time n / fps
        *,
        dtype: torch.dtype = torch.float32,  # dtype of the result
        device: torch.device | str | None = None,  # device of the result
    ) -> Tensor:
        """(num_frames, NUM_EMOTIONS) codes at the frame times ``n / fps``."""
        if num_frames < 0:
            raise ValueError(f"num_frames must be >= 0, got {num_frames}")
        if not float(fps) > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        times = torch.arange(num_frames, dtype=torch.float64) / float(fps)
        return self.codes_at(times, dtype=dtype).to(device)

    def __str__(self) -> str:
        return "; ".join(f"{k.time_s:g}s {format_emotion_code(k.code)}" for k in self.keyframes)


def parse_emotion_schedule(text: str) -> EmotionSchedule:
    """Parse ``"0s neutral; 1.5s happy 0.3; 6s 0.5 sad + 0.5 angry"`` into an ``EmotionSchedule``.

    Each ``;``-separated keyframe is ``TIMEs EXPRESSION`` (time in seconds, ``s`` suffix
    required). A lone expression without a time (``"happy 0.5"``) is a constant schedule.
    Raises ``ValueError`` for unknown names, negative strengths, missing or non-increasing times.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty emotion schedule {text!r}; e.g. '0s neutral; 2s happy 1.0'")
    parts = [p.strip() for p in text.split(";") if p.strip()]
    keyframes: list[tuple[float, Tensor]] = []
    for part in parts:
        head, _, rest = part.partition(" ")
        match = _TIME.match(head)
        if match is None:
            if len(parts) == 1:
                return EmotionSchedule.constant(parse_emotion(part, dtype=torch.float64))
            raise ValueError(
                f"keyframe {part!r} in schedule {text!r} needs a leading time in seconds, e.g. '1.5s happy 0.3'"
            )
        time_s = float(match.group(1))
        if not rest.strip():
            raise ValueError(f"keyframe {part!r} in schedule {text!r} has a time but no emotion")
        keyframes.append((time_s, parse_emotion(rest, dtype=torch.float64)))
    times = [t for t, _ in keyframes]
    if any(not b > a for a, b in zip(times, times[1:])):
        raise ValueError(f"keyframe times must strictly increase in schedule {text!r}, got {times}")
    return EmotionSchedule.from_keyframes(keyframes)
