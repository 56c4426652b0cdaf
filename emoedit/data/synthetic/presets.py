"""Sizes of a synthetic world: :class:`WorldPreset` and the built-in ``tiny``/``demo``/``full``.

A preset fixes *how much* is generated (subjects, clips, emotions, levels, views, frames,
resolutions); the seed fixes *what* (identities, performances, lighting, ...). The same
``(preset, seed)`` always gives the same world.

Built-in presets:

- ``tiny``: seconds on a laptop CPU; for tests. 3 training + 2 unseen subjects, 2 emotions
  at levels 1 and 3, front view plus ``left_30`` for the unseen subjects, 8 frames at
  64 px, 64-texel textures.
- ``demo``: the default of ``make demo`` (a few minutes on a 2-core CPU). 12 training + 4
  unseen subjects, all 7 emotions at levels 1-3, frontal training clips, ``left_30`` and
  ``right_30`` neutral clips of the unseen subjects (unseen-pose test), 25 frames (1 s at
  25 fps) at 128 px, 128-texel textures.
- ``full``: paper scale (39 training + 8 unseen subjects, 2 clips per emotion and level,
  2 s clips at 256 px, 256-texel textures); hours on a CPU.
- ``demo_families``: ``demo``'s sizes, but the subjects come in 4 look-alike families
  (``subject_model="families"``, spread 0.3; :mod:`~emoedit.data.synthetic.families`), so a
  new face's appearance predicts its wrinkles and flush (the premise of METHOD eq. 4), and
  one SH light per subject.

How subjects are drawn (``subject_model``): ``"independent"`` (the default, every world
before families existed): each subject on its own random stream, so appearance says nothing
about a subject's texture effects; ``"families"``: ``num_families`` prototypes, every
subject its family's prototype blended toward its own draw by ``family_spread`` (0 = clones,
1 = exactly the independent world's subjects).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from emoedit.data.synthetic.families import SUBJECT_MODELS
from emoedit.editing.emotion_code import EMOTIONS

#: MEAD's camera views used by the synthetic world, with their yaw (radians added to the
#: head's Euler y angle). ``left_30``: the camera stands 30° to the subject's left, so the
#: subject's left cheek (+x) turns toward the camera and the nose points to the image left.
VIEW_YAW_DEGREES: dict[str, float] = {"front": 0.0, "left_30": -30.0, "right_30": 30.0}

#: How the SH light of a recording is drawn (WorldPreset.lighting). Per recording, each
#: clip of a subject has its own light, so emotional and neutral clips differ by lighting
#: as well as by emotion (a confound for directions solved as differences of clip means,
#: METHOD eq. 5). Per subject, every recording of a subject shares one light, as MEAD's
#: studio recordings do.
LIGHTING_MODES: tuple[str, ...] = ("per_recording", "per_subject")

#: MEAD's folder name of the neutral emotion (it has ``level_1`` only).
NEUTRAL = "neutral"


@dataclass(frozen=True)
class WorldPreset:
    """How much a synthetic world holds (all counts per subject unless said otherwise)."""

    name: str  # preset name, written into truth/world.json
    num_train_subjects: int  # subjects seen in training
    num_unseen_subjects: int  # subjects held out entirely (evaluation only)
    emotions: tuple[str, ...]  # non-neutral MEAD emotions generated (subset of EMOTIONS, code order)
    levels: tuple[int, ...]  # MEAD intensity levels generated for every emotion (subset of 1, 2, 3)
    train_neutral_clips: int  # frontal neutral clips of a training subject used for training
    eval_neutral_clips: int  # frontal neutral clips of a training subject held out for evaluation
    clips_per_level: int  # clips per (emotion, level) of a training subject
    unseen_neutral_clips: int  # frontal neutral clips of an unseen subject (all evaluation)
    side_views: tuple[str, ...]  # extra views of every unseen subject's neutral clips (unseen-pose test)
    side_views_for_train_eval: bool  # also film the held-out neutral clips of training subjects from side_views
    unseen_emotional_clips: bool  # unseen subjects also get frontal emotional clips (evaluation only)
    num_frames: int  # frames per clip
    fps: int  # frames per second of every clip
    image_size: int  # video frame side, pixels (even)
    texture_size: int  # UV texture side, texels
    num_ffhq: int  # FFHQ-like still images, including the bad ones
    num_ffhq_bad_each: int  # bad stills of each kind (large pose, dark, occluded)
    ffhq_size: int  # FFHQ-like image side, pixels
    audio_rate: int = 16_000  # audio sample rate, Hz
    mesh_resolution: int = 48  # grid columns of the procedural face model (build_procedural_face)
    render_batch: int = 32  # frames rendered per batch
    crf: float = 16.0  # x264 constant rate factor of the written videos
    x264_preset: str = "veryfast"  # x264 speed/size trade-off of the written videos
    lighting: str = "per_recording"  # "per_recording": every recording its own SH light; "per_subject": one
    #                                  light per subject for all its recordings (MEAD's fixed studio light)
    subject_model: str = "independent"  # "independent": every subject on its own; "families": look-alike
    #                                     families (emoedit.data.synthetic.families)
    num_families: int = 1  # family prototypes ("families" only); 1 <= num_families <= num_train_subjects
    family_spread: float = 1.0  # in [0, 1]: how far a member departs from its family's prototype
    #                             (0 = clones, 1 = as independent as the "independent" model)

    def __post_init__(self) -> None:
        problems: list[str] = []
        unknown = [e for e in self.emotions if e not in EMOTIONS]
        if unknown or not self.emotions:
            problems.append(f"emotions must be a non-empty subset of {EMOTIONS}, got {self.emotions}")
        if len(set(self.emotions)) != len(self.emotions):
            problems.append(f"emotions repeat: {self.emotions}")
        if not self.levels or any(level not in (1, 2, 3) for level in self.levels) or len(set(self.levels)) != len(self.levels):
            problems.append(f"levels must be distinct values of 1, 2, 3, got {self.levels}")
        bad_views = [v for v in self.side_views if v not in VIEW_YAW_DEGREES or v == "front"]
        if bad_views:
            problems.append(f"side_views must be among {sorted(set(VIEW_YAW_DEGREES) - {'front'})}, got {bad_views}")
        positive = ("num_train_subjects", "train_neutral_clips", "eval_neutral_clips", "clips_per_level", "num_frames", "fps")
        for field in positive:
            if getattr(self, field) < 1:
                problems.append(f"{field} must be >= 1, got {getattr(self, field)}")
        for field in ("num_unseen_subjects", "unseen_neutral_clips", "num_ffhq", "num_ffhq_bad_each"):
            if getattr(self, field) < 0:
                problems.append(f"{field} must be >= 0, got {getattr(self, field)}")
        if self.num_unseen_subjects > 0 and self.unseen_neutral_clips < 1:
            problems.append("unseen subjects need unseen_neutral_clips >= 1")
        if self.image_size < 16 or self.image_size % 2:
            problems.append(f"image_size must be even and >= 16, got {self.image_size}")
        if self.ffhq_size < 16 or self.ffhq_size % 2:
            problems.append(f"ffhq_size must be even and >= 16, got {self.ffhq_size}")
        if self.texture_size < 16:
            problems.append(f"texture_size must be >= 16, got {self.texture_size}")
        if 3 * self.num_ffhq_bad_each > self.num_ffhq:
            problems.append(f"3 * num_ffhq_bad_each ({3 * self.num_ffhq_bad_each}) exceeds num_ffhq ({self.num_ffhq})")
        if self.audio_rate < 8000:
            problems.append(f"audio_rate must be >= 8000 Hz, got {self.audio_rate}")
        if self.render_batch < 1:
            problems.append(f"render_batch must be >= 1, got {self.render_batch}")
        if self.lighting not in LIGHTING_MODES:
            problems.append(f"lighting must be one of {LIGHTING_MODES}, got {self.lighting!r}")
        if self.subject_model not in SUBJECT_MODELS:
            problems.append(f"subject_model must be one of {SUBJECT_MODELS}, got {self.subject_model!r}")
        if isinstance(self.num_families, bool) or not isinstance(self.num_families, int):
            problems.append(f"num_families must be an integer, got {self.num_families!r}")
        elif not 1 <= self.num_families <= max(self.num_train_subjects, 1):
            problems.append(f"num_families must be in [1, num_train_subjects={self.num_train_subjects}], got {self.num_families}")
        if isinstance(self.family_spread, bool) or not isinstance(self.family_spread, (int, float)):
            problems.append(f"family_spread must be a number, got {self.family_spread!r}")
        elif not 0.0 <= self.family_spread <= 1.0:  # also rejects NaN
            problems.append(f"family_spread must be in [0, 1], got {self.family_spread}")
        if problems:
            raise ValueError(f"WorldPreset {self.name!r}: " + "; ".join(problems))

    @property
    def num_subjects(self) -> int:
        """Training plus unseen subjects."""
        return self.num_train_subjects + self.num_unseen_subjects

    @property
    def duration_s(self) -> float:
        """Clip length in seconds."""
        return self.num_frames / self.fps

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists).

        The family fields (:data:`FAMILY_FIELDS`) are left out while all three have their
        defaults, so an independent world's description is exactly what it was before the
        fields existed (``truth/world.json`` compares equal and old worlds resume).
        """
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in FAMILY_FIELDS}
        if all(data[name] == value for name, value in defaults.items()):
            for name in FAMILY_FIELDS:
                del data[name]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorldPreset:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on unknown or missing fields.

        Fields with defaults may be missing (older worlds' descriptions lack them).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"WorldPreset: unknown fields {sorted(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as error:
            raise ValueError(f"WorldPreset: {error}") from error


#: Fields of the subject model, written by :meth:`WorldPreset.to_json` only when not all default.
FAMILY_FIELDS: tuple[str, ...] = ("subject_model", "num_families", "family_spread")


PRESETS: dict[str, WorldPreset] = {
    "tiny": WorldPreset(
        name="tiny",
        num_train_subjects=3,
        num_unseen_subjects=2,
        emotions=("happy", "angry"),
        levels=(1, 3),
        train_neutral_clips=1,
        eval_neutral_clips=1,
        clips_per_level=1,
        unseen_neutral_clips=1,
        side_views=("left_30",),
        side_views_for_train_eval=False,
        unseen_emotional_clips=False,
        num_frames=8,
        fps=25,
        image_size=64,
        texture_size=64,
        num_ffhq=12,
        num_ffhq_bad_each=1,
        ffhq_size=64,
    ),
    "demo": WorldPreset(
        name="demo",
        num_train_subjects=12,
        num_unseen_subjects=4,
        emotions=EMOTIONS,
        levels=(1, 2, 3),
        train_neutral_clips=2,
        eval_neutral_clips=1,
        clips_per_level=1,
        unseen_neutral_clips=1,
        side_views=("left_30", "right_30"),
        side_views_for_train_eval=False,
        unseen_emotional_clips=False,
        num_frames=25,
        fps=25,
        image_size=128,
        texture_size=128,
        num_ffhq=300,
        num_ffhq_bad_each=8,
        ffhq_size=128,
    ),
    "full": WorldPreset(
        name="full",
        num_train_subjects=39,
        num_unseen_subjects=8,
        emotions=EMOTIONS,
        levels=(1, 2, 3),
        train_neutral_clips=4,
        eval_neutral_clips=2,
        clips_per_level=2,
        unseen_neutral_clips=2,
        side_views=("left_30", "right_30"),
        side_views_for_train_eval=True,
        unseen_emotional_clips=True,
        num_frames=50,
        fps=25,
        image_size=256,
        texture_size=256,
        num_ffhq=5000,
        num_ffhq_bad_each=150,
        ffhq_size=256,
        render_batch=25,
        x264_preset="medium",
    ),
}
PRESETS["demo_families"] = dataclasses.replace(
    PRESETS["demo"],
    name="demo_families",
    subject_model="families",
    num_families=4,
    family_spread=0.3,
    lighting="per_subject",
)


def get_preset(preset: str | WorldPreset) -> WorldPreset:
    """A built-in preset by name (``tiny``, ``demo``, ``full``, ``demo_families``), or ``preset`` itself."""
    if isinstance(preset, WorldPreset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown synthetic world preset {preset!r}; choose one of {sorted(PRESETS)}") from None
