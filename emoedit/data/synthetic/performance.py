"""A recorded performance: what a subject does in one take, independent of the emotion shown.

:func:`perform` turns ``(subject, recording key)`` into per-frame speech-driven mouth AUs,
blinks (AU43), head motion (Euler angles and translation) and the audio track, all from
the recording's own random stream. The recording's emotion only changes the speech rate
and the amount of head motion (:data:`~emoedit.data.synthetic.emotions.SPEECH_RATE_FACTOR`),
so MEAD-like emotional clips are unpaired with the neutral ones; a ground-truth edit reuses
the neutral recording's performance unchanged and only adds the target emotion's AUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from emoedit.data.synthetic.emotions import BLINK_AU, HEAD_MOTION_SCALE, SPEECH_RATE_FACTOR
from emoedit.data.synthetic.seeding import derive_rng
from emoedit.data.synthetic.speech import SpeechTrack, draw_speech
from emoedit.data.synthetic.subjects import Subject

_BLINK_CLOSE_S = 0.07  # lid closing time
_BLINK_HOLD_S = 0.04  # fully closed
_BLINK_OPEN_S = 0.14  # lid opening time
_MIN_BLINK_GAP_S = 0.8


@dataclass(frozen=True)
class Performance:
    """Per-frame performance of one recording (N frames, K action units)."""

    times: Tensor  # (N,) float64 frame times, seconds (frame i at i / fps)
    speech: SpeechTrack  # the syllables
    speech_au: Tensor  # (N, K) float32 speech-driven AU activations
    blink_au: Tensor  # (N, K) float32 blink activations (AU43 column only)
    envelope: Tensor  # (N,) float32 speech loudness envelope in [0, 1]
    angle: Tensor  # (N, 3) float32 head motion, Euler x, y, z radians (without the camera view)
    trans: Tensor  # (N, 3) float32 head translation from motion, decimetres (without framing)
    audio: np.ndarray  # (num_samples,) float32 mono audio in [-1, 1]
    blink_times: tuple[float, ...]  # blink onsets, seconds


def blink_curve(t: np.ndarray, onsets: tuple[float, ...]) -> np.ndarray:
    """``(n,)`` AU43 in [0, 1]: close, hold, reopen after each onset."""
    out = np.zeros(t.size)
    for onset in onsets:
        u = t - onset
        closing = np.sin(0.5 * np.pi * np.clip(u / _BLINK_CLOSE_S, 0.0, 1.0)) ** 2
        reopen = np.clip((u - _BLINK_CLOSE_S - _BLINK_HOLD_S) / _BLINK_OPEN_S, 0.0, 1.0)
        value = np.where(u < 0, 0.0, closing * (1.0 - np.sin(0.5 * np.pi * reopen) ** 2))
        out = np.maximum(out, value)
    return out


def draw_blinks(rng: np.random.Generator, duration_s: float, rate: float) -> tuple[float, ...]:
    """Blink onsets: a Poisson process of ``rate`` per second with a refractory gap."""
    onsets: list[float] = []
    t = float(rng.uniform(-0.3, 0.0)) + float(rng.exponential(1.0 / rate))
    while t < duration_s:
        onsets.append(t)
        t += _MIN_BLINK_GAP_S + float(rng.exponential(1.0 / rate))
    return tuple(onsets)


def head_motion(
    rng: np.random.Generator,  # the recording's stream
    t: np.ndarray,  # (n,) frame times, seconds
    envelope: np.ndarray,  # (n,) speech envelope (nods with emphasis)
    scale: float,  # amplitude factor (subject × emotion)
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth small head motion: ``(angle (n,3) radians, trans (n,3) decimetres)``."""
    angle = np.zeros((t.size, 3))
    for axis, amplitude in enumerate((0.035, 0.045, 0.02)):  # pitch, yaw, roll
        for _ in range(2):
            freq = rng.uniform(0.15, 0.7)
            angle[:, axis] += scale * amplitude * rng.uniform(0.4, 1.0) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    angle[:, 0] += 0.02 * scale * (envelope - envelope.mean())
    trans = np.zeros((t.size, 3))
    for axis, amplitude in enumerate((0.02, 0.02, 0.04)):
        freq = rng.uniform(0.1, 0.5)
        trans[:, axis] = scale * amplitude * rng.uniform(0.4, 1.0) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return angle, trans


def perform(
    seed: int,  # world seed
    recording: tuple[object, ...],  # the recording's key, e.g. (subject, emotion, level, clip)
    *,
    subject: Subject,  # who performs
    emotion: str,  # the recording's emotion (speech rate, head-motion scale)
    num_frames: int,  # frames N
    fps: float,  # frames per second
    audio_rate: int,  # audio sample rate, Hz
    expression_names: tuple[str, ...],  # the model's AU names
) -> Performance:
    """The performance of one recording (deterministic in ``seed`` and ``recording``)."""
    rng = derive_rng(seed, "performance", *recording)
    duration = num_frames / fps
    times = np.arange(num_frames) / fps
    rate = subject.speech_rate * SPEECH_RATE_FACTOR.get(emotion, 1.0)
    speech = draw_speech(rng, duration_s=duration, syllable_rate=rate)
    envelope = speech.envelope(times)
    blinks = draw_blinks(rng, duration, subject.blink_rate)
    blink = np.zeros((num_frames, len(expression_names)))
    blink[:, expression_names.index(BLINK_AU)] = blink_curve(times, blinks)
    angle, trans = head_motion(rng, times, envelope, subject.motion_scale * HEAD_MOTION_SCALE.get(emotion, 1.0))
    audio = speech.audio(audio_rate, subject.f0, rng)
    return Performance(
        times=torch.from_numpy(times),
        speech=speech,
        speech_au=speech.mouth_activations(times, expression_names),
        blink_au=torch.from_numpy(blink).float(),
        envelope=torch.from_numpy(envelope).float(),
        angle=torch.from_numpy(angle).float(),
        trans=torch.from_numpy(trans).float(),
        audio=audio,
        blink_times=blinks,
    )
