"""Speech-like audio and the mouth motion it drives, from one syllable sequence.

A :class:`SpeechTrack` is a list of syllables (onset, duration, loudness, vowel, whether a
bilabial closure or a fricative precedes it). One continuous-time envelope drives both

- the **mouth** at frame times: jaw drop (AU26) with the vowel's openness, lips part
  (AU25) while voicing, rounding (AU22 funneler, AU18 pucker) for o/u, a short lip press
  (AU24) at bilabial onsets — see :meth:`SpeechTrack.mouth_activations`;
- the **audio** at 16 kHz: a voiced source (harmonics of a gliding fundamental) shaped by
  three formant resonances that follow the vowel, times the same envelope, plus short
  fricative noise bursts — see :meth:`SpeechTrack.audio`.

So the audio and the lips are in sync by construction, and the mouth is closed in the
silences between phrases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: Vowels: (openness 0..1, rounding 0..1, F1 Hz, F2 Hz).
VOWELS: dict[str, tuple[float, float, float, float]] = {
    "a": (1.0, 0.0, 750.0, 1250.0),
    "e": (0.6, 0.0, 480.0, 1900.0),
    "i": (0.32, 0.0, 300.0, 2300.0),
    "o": (0.72, 0.75, 500.0, 900.0),
    "u": (0.38, 1.0, 330.0, 800.0),
}
_VOWEL_NAMES = tuple(VOWELS)
_VOWEL_PROBS = np.array([0.3, 0.25, 0.15, 0.15, 0.15])
_NEUTRAL_FORMANTS = (500.0, 1500.0)
_F3 = 2500.0
_FORMANT_GAINS = (1.0, 0.55, 0.25)
_FORMANT_BANDWIDTHS = (90.0, 120.0, 170.0)
_CLOSURE_WIDTH_S = 0.035  # half-width of a bilabial lip press
_FRICATIVE_WIDTH_S = 0.035  # half-width of a fricative noise burst

# Mouth AU gains per unit of the speech signals.
JAW_PER_OPENNESS = 0.65  # AU26 per unit openness·loudness
LIPS_PART_PER_ENVELOPE = 1.4  # AU25 per unit envelope (clipped to 1)
FUNNEL_PER_ROUNDING = 0.55  # AU22
PUCKER_PER_ROUNDING = 0.25  # AU18
PRESS_PER_CLOSURE = 0.6  # AU24


@dataclass(frozen=True)
class Syllable:
    """One syllable of the speech track."""

    start: float  # onset, seconds
    duration: float  # seconds
    loudness: float  # peak envelope, 0..1
    vowel: str  # key of VOWELS
    bilabial: bool  # the lips close just before the onset (m, b, p)
    fricative: bool  # a noise burst precedes the onset (s, f, sh)


@dataclass(frozen=True)
class SpeechTrack:
    """A syllable sequence and the signals derived from it (see the module docstring)."""

    syllables: tuple[Syllable, ...]  # in onset order
    duration_s: float  # length of the clip, seconds

    def _bumps(self, t: np.ndarray) -> np.ndarray:
        """``(S, n)`` raised-sine bump of each syllable at times ``t`` (peak = loudness)."""
        if not self.syllables:
            return np.zeros((0, t.size))
        start = np.array([s.start for s in self.syllables])[:, None]
        duration = np.array([s.duration for s in self.syllables])[:, None]
        loud = np.array([s.loudness for s in self.syllables])[:, None]
        u = (t[None, :] - start) / duration
        inside = (u > 0.0) & (u < 1.0)
        return np.where(inside, loud * np.sin(np.pi * np.clip(u, 0.0, 1.0)) ** 2, 0.0)

    def envelope(self, t: np.ndarray) -> np.ndarray:
        """``(n,)`` loudness envelope in [0, 1] at times ``t`` (seconds)."""
        return np.clip(self._bumps(t).sum(axis=0), 0.0, 1.0)

    def _vowel_mix(self, t: np.ndarray, column: int) -> np.ndarray:
        """``(n,)`` envelope-weighted vowel property (``column`` of VOWELS)."""
        if not self.syllables:
            return np.zeros(t.size)
        values = np.array([VOWELS[s.vowel][column] for s in self.syllables])[:, None]
        return np.clip((self._bumps(t) * values).sum(axis=0), 0.0, 1.0)

    def closure(self, t: np.ndarray) -> np.ndarray:
        """``(n,)`` bilabial lip press in [0, 1] (peaks at the onsets of m/b/p syllables)."""
        out = np.zeros(t.size)
        for s in self.syllables:
            if s.bilabial:
                out = np.maximum(out, np.exp(-(((t - s.start) / _CLOSURE_WIDTH_S) ** 2)))
        return out

    def mouth_activations(self, t: np.ndarray, expression_names: tuple[str, ...]) -> Tensor:
        """``(n, K)`` float32 speech-driven AU activations at frame times ``t``."""
        envelope = self.envelope(t)
        openness = self._vowel_mix(t, 0)
        rounding = self._vowel_mix(t, 1)
        closure = self.closure(t)
        values = {
            "AU26": JAW_PER_OPENNESS * openness * (1.0 - 0.7 * closure),
            "AU25": np.clip(LIPS_PART_PER_ENVELOPE * envelope, 0.0, 1.0) * (1.0 - closure),
            "AU22": FUNNEL_PER_ROUNDING * rounding,
            "AU18": PUCKER_PER_ROUNDING * rounding,
            "AU24": PRESS_PER_CLOSURE * closure,
        }
        out = np.zeros((t.size, len(expression_names)))
        for name, value in values.items():
            out[:, expression_names.index(name)] = value
        return torch.from_numpy(out).float()

    def audio(
        self,
        rate: int,  # sample rate, Hz
        f0: float,  # mean voice pitch, Hz
        rng: np.random.Generator,  # stream for intonation and noise
    ) -> np.ndarray:
        """``(n,)`` float32 mono audio in [−1, 1], ``n = round(duration_s · rate)``."""
        n = int(round(self.duration_s * rate))
        t = np.arange(n) / rate
        envelope = self.envelope(t)
        # Intonation: slow drift, declination over the clip, accents on loud syllables.
        pitch = 1.0 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 1.2) * t + rng.uniform(0, 2 * np.pi))
        pitch -= 0.08 * t / max(self.duration_s, 1e-6)
        pitch += 0.06 * envelope * rng.uniform(0.5, 1.0)
        f0_t = f0 * pitch
        phase = 2 * np.pi * np.cumsum(f0_t) / rate
        # Formant tracks at a control rate, interpolated to samples.
        control_t = np.arange(0.0, self.duration_s + 0.01, 0.005)
        bumps = self._bumps(control_t)
        weight = bumps.sum(axis=0)
        formants = []
        for column, neutral in ((2, _NEUTRAL_FORMANTS[0]), (3, _NEUTRAL_FORMANTS[1])):
            if self.syllables:
                values = np.array([VOWELS[s.vowel][column] for s in self.syllables])[:, None]
                mixed = ((bumps * values).sum(axis=0) + 0.05 * neutral) / (weight + 0.05)
            else:
                mixed = np.full(control_t.size, neutral)
            formants.append(np.interp(t, control_t, mixed))
        formants.append(np.full(n, _F3))
        voiced = np.zeros(n)
        max_harmonic = max(1, int(3800.0 / (f0 * 0.9)))
        for h in range(1, max_harmonic + 1):
            freq = h * f0_t
            gain = np.zeros(n)
            for formant, g, bandwidth in zip(formants, _FORMANT_GAINS, _FORMANT_BANDWIDTHS):
                gain += g / (1.0 + ((freq - formant) / bandwidth) ** 2)
            voiced += gain * np.sin(h * phase) / np.sqrt(h)
        signal = voiced * envelope
        # Fricative noise bursts before some onsets, and a faint noise floor.
        noise = np.diff(rng.normal(size=n + 1))
        burst = np.zeros(n)
        for s in self.syllables:
            if s.fricative:
                burst = np.maximum(burst, s.loudness * np.exp(-(((t - s.start + 0.03) / _FRICATIVE_WIDTH_S) ** 2)))
        peak = np.abs(signal).max() if signal.size and np.abs(signal).max() > 0 else 1.0
        signal = signal / peak + 0.25 * burst * noise + 0.003 * rng.normal(size=n)
        signal = 0.6 * signal / max(float(np.abs(signal).max()), 1e-6)
        return signal.astype(np.float32)


def draw_speech(
    rng: np.random.Generator,  # the clip's stream
    *,
    duration_s: float,  # clip length, seconds
    syllable_rate: float,  # mean syllables per second
) -> SpeechTrack:
    """A random syllable sequence covering ``duration_s`` (with an occasional pause)."""
    if syllable_rate <= 0:
        raise ValueError(f"syllable_rate must be > 0, got {syllable_rate}")
    syllables: list[Syllable] = []
    t = float(rng.uniform(-0.1, 0.15))
    while t < duration_s:
        if syllables and rng.random() < 0.1:
            t += float(rng.uniform(0.15, 0.35))  # a pause between phrases
        duration = 0.9 / syllable_rate * float(rng.uniform(0.8, 1.25))
        syllables.append(
            Syllable(
                start=t,
                duration=duration,
                loudness=float(rng.uniform(0.55, 1.0)),
                vowel=str(_VOWEL_NAMES[int(rng.choice(len(_VOWEL_NAMES), p=_VOWEL_PROBS))]),
                bilabial=bool(rng.random() < 0.25),
                fricative=bool(rng.random() < 0.35),
            )
        )
        t += 1.0 / syllable_rate * float(rng.uniform(0.75, 1.3))
    return SpeechTrack(syllables=tuple(syllables), duration_s=float(duration_s))
