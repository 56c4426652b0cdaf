"""The per-clip truth format of the synthetic world (``.pt`` files, ``weights_only``-loadable).

A clip's truth file is a flat dict of tensors, strings, ints, floats and lists of
strings (no custom classes), written next to nothing but described here once:

=================  ===============  ===========================================================
key                type / shape     meaning
=================  ===============  ===========================================================
format             str              ``"emoedit.synthetic.clip"``
format_version     int              :data:`CLIP_FORMAT_VERSION`
kind               str              ``"mead"`` (a MEAD clip) or ``"edited"`` (a ground-truth edit)
subject, view      str              who, which camera
emotion            str              MEAD emotion shown (``neutral`` for neutral clips)
level              int              MEAD level folder (1..3; neutral: 1; on-demand edit at a non-integer level: 0)
strength           float            emotion strength ``alpha = level / 3`` (0 for neutral)
clip               str              clip name (an edit: the source clip's name)
role               str              ``"train"`` or ``"eval"``
source_video       str              an edit: relative path of the neutral source video; else ``""``
fps, audio_rate    int              frame rate, audio sample rate (Hz)
image_size         int              frame side, pixels
expression_names   list[str]        AU names of the expression block (basis order)
effect_names       list[str]        texture effects (order of ``effects``)
coeff_sizes        list[int]        CoeffLayout sizes id, exp, tex, angle, gamma, trans
coeffs             (N, L) float32   full coefficient vector per frame (CoeffLayout order)
landmarks          (N, 68, 2) f32   true iBUG-68 landmarks in video pixels (x right, y down)
exp_speech         (N, K) float32   speech-driven AU activations
exp_emotion        (K,) float32     the emotion's AU activations (constant over the clip)
exp_blink          (N, K) float32   blink activations (AU43)
effects            (N, E) float32   texture effect activations (true albedo = albedo + Σ a·D)
emotion_code       (7,) float32     METHOD eq. 2 code of the shown emotion (EMOTIONS order)
envelope           (N,) float32     speech loudness envelope at frame times (drives the mouth)
frame_times        (N,) float64     seconds
camera             (4,) float64     focal, center, camera_distance, image_size (PerspectiveCamera)
view_yaw           float            yaw of the camera view, radians (added to the head's yaw)
head_angle         (N, 3) float32   head motion (Euler x, y, z radians), without the view yaw
head_trans         (N, 3) float32   head motion translation, decimetres, without the framing
framing            (3,) float32     the clip's placement of the face (translation, decimetres)
face_pixels        (N,) int64       pixels showing the face surface
interior_pixels    (N,) int64       pixels showing the mouth interior (teeth, tongue, cavity)
blink_times        (B,) float64     blink onsets, seconds
=================  ===============  ===========================================================

``coeffs = join(id, exp_speech + exp_emotion + exp_blink clamped, tex, head_angle +
(0, view_yaw, 0), gamma, head_trans + framing)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from emoedit.face_model import CoeffLayout, Coeffs, PerspectiveCamera
from emoedit.shape_checks import assert_shape

CLIP_FORMAT = "emoedit.synthetic.clip"
CLIP_FORMAT_VERSION = 1
KINDS: tuple[str, ...] = ("mead", "edited")


@dataclass(frozen=True)
class ClipTruth:
    """Per-frame truth of one clip (see the module docstring for every field)."""

    kind: str
    subject: str
    view: str
    emotion: str
    level: int
    strength: float
    clip: str
    role: str
    source_video: str
    fps: int
    audio_rate: int
    image_size: int
    expression_names: tuple[str, ...]
    effect_names: tuple[str, ...]
    coeff_sizes: tuple[int, ...]
    coeffs: Tensor
    landmarks: Tensor
    exp_speech: Tensor
    exp_emotion: Tensor
    exp_blink: Tensor
    effects: Tensor
    emotion_code: Tensor
    envelope: Tensor
    frame_times: Tensor
    camera: Tensor
    view_yaw: float
    head_angle: Tensor
    head_trans: Tensor
    framing: Tensor
    face_pixels: Tensor
    interior_pixels: Tensor
    blink_times: Tensor

    @property
    def num_frames(self) -> int:
        """N."""
        return int(self.coeffs.shape[0])

    @property
    def layout(self) -> CoeffLayout:
        """The coefficient layout of ``coeffs``."""
        id_, exp, tex, angle, gamma, trans = self.coeff_sizes
        return CoeffLayout(id=id_, exp=exp, tex=tex, angle=angle, gamma=gamma, trans=trans)

    def split_coeffs(self) -> Coeffs:
        """``coeffs`` as named blocks."""
        return self.layout.split(self.coeffs)

    def perspective_camera(self) -> PerspectiveCamera:
        """The camera the clip was rendered with."""
        focal, center, distance, size = (float(v) for v in self.camera.tolist())
        return PerspectiveCamera(focal=focal, center=center, camera_distance=distance, image_size=int(round(size)))

    def to_dict(self) -> dict[str, Any]:
        """The ``.pt`` payload."""
        payload: dict[str, Any] = {"format": CLIP_FORMAT, "format_version": CLIP_FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            payload[f.name] = list(value) if isinstance(value, tuple) else value
        return payload

    @classmethod
    def from_dict(cls, payload: Any, source: str = "<clip truth>") -> ClipTruth:
        """Validate and wrap a loaded payload; ``ValueError`` naming ``source`` on problems."""
        if not isinstance(payload, dict) or payload.get("format") != CLIP_FORMAT:
            raise ValueError(f"{source}: not a synthetic clip truth file (format tag {CLIP_FORMAT!r} missing)")
        if payload.get("format_version") != CLIP_FORMAT_VERSION:
            raise ValueError(f"{source}: clip truth version {payload.get('format_version')!r} not supported (want {CLIP_FORMAT_VERSION})")
        missing = [f.name for f in fields(cls) if f.name not in payload]
        if missing:
            raise ValueError(f"{source}: clip truth lacks {missing}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = payload[f.name]
            if f.name in ("expression_names", "effect_names", "coeff_sizes"):
                value = tuple(value)
            values[f.name] = value
        truth = cls(**values)
        try:
            truth._check()
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error
        return truth

    def _check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        dims = {"K": len(self.expression_names), "E": len(self.effect_names)}
        dims = assert_shape(self.coeffs, ("N", sum(self.coeff_sizes)), "coeffs", dims)
        assert_shape(self.landmarks, ("N", 68, 2), "landmarks", dims)
        assert_shape(self.exp_speech, ("N", "K"), "exp_speech", dims)
        assert_shape(self.exp_emotion, ("K",), "exp_emotion", dims)
        assert_shape(self.exp_blink, ("N", "K"), "exp_blink", dims)
        assert_shape(self.effects, ("N", "E"), "effects", dims)
        assert_shape(self.envelope, ("N",), "envelope", dims)
        assert_shape(self.frame_times, ("N",), "frame_times", dims)
        assert_shape(self.camera, (4,), "camera")
        assert_shape(self.head_angle, ("N", 3), "head_angle", dims)
        assert_shape(self.interior_pixels, ("N",), "interior_pixels", dims)
        if self.coeff_sizes[1] != dims["K"]:
            raise ValueError(f"coeff_sizes exp {self.coeff_sizes[1]} != {dims['K']} expression names")


def save_clip_truth(truth: ClipTruth, path: str | os.PathLike[str]) -> Path:
    """Write ``truth`` atomically to ``path``."""
    from emoedit.atomic_io import atomic_torch_save

    return atomic_torch_save(truth.to_dict(), path)


def load_clip_truth(path: str | os.PathLike[str]) -> ClipTruth:
    """Read a clip truth file (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clip truth file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise ValueError(f"{path}: not a readable clip truth file ({error})") from error
    return ClipTruth.from_dict(payload, str(path))
