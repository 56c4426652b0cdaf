"""What a world contains: subjects, MEAD clips, ground-truth edits, FFHQ stills.

:func:`plan_world` expands a preset and seed into the full list of items, deterministically
and without rendering anything. Roles:

- a training subject has ``train_neutral_clips`` frontal neutral clips for training,
  ``eval_neutral_clips`` more held out for evaluation (filmed from ``side_views`` too when
  ``side_views_for_train_eval``), and ``clips_per_level`` frontal clips per emotion and
  level (training);
- an unseen subject has ``unseen_neutral_clips`` neutral clips, filmed from the front and
  from every side view (evaluation; the unseen-pose test), and frontal emotional clips when
  ``unseen_emotional_clips`` (evaluation only);
- every neutral evaluation clip (each view) gets a ground-truth edit per emotion and level.

Views of one clip name are one recording filmed by several cameras (as in MEAD): same
performance and light, different camera, framing and background.

With ``preset.subject_model == "families"`` every subject also gets a family
(:func:`~emoedit.data.synthetic.families.assign_families`, round-robin) and, with
probability ``1 − family_spread``, its family's sex instead of its own draw
(:func:`~emoedit.data.synthetic.families.member_sex`); the independent model's roster is
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from emoedit.data.synthetic.families import assign_families, member_sex
from emoedit.data.synthetic.layout import ClipKey, EditKey, clip_name
from emoedit.data.synthetic.presets import NEUTRAL, WorldPreset
from emoedit.data.synthetic.seeding import derive_rng

ROLES: tuple[str, ...] = ("train", "eval")
FFHQ_BAD_KINDS: tuple[str, ...] = ("large_pose", "dark", "occluded")


@dataclass(frozen=True)
class SubjectPlan:
    """A subject's name, split, sex and family."""

    name: str  # e.g. "W007"
    split: str  # "train" or "unseen"
    sex: str  # "M" or "W"
    family: int | None = None  # family index in [0, num_families) ("families" model), else None


@dataclass(frozen=True)
class ClipPlan:
    """One MEAD clip and its role."""

    key: ClipKey  # where it lives
    role: str  # "train" or "eval"


@dataclass(frozen=True)
class FFHQPlan:
    """One FFHQ-like still."""

    index: int  # image number
    bad: str  # "" for a good image, else one of FFHQ_BAD_KINDS


@dataclass(frozen=True)
class WorldPlan:
    """Everything a world holds (see the module docstring)."""

    subjects: tuple[SubjectPlan, ...]
    clips: tuple[ClipPlan, ...]
    edits: tuple[EditKey, ...]
    ffhq: tuple[FFHQPlan, ...]

    @property
    def train_subjects(self) -> tuple[str, ...]:
        """Names of the training subjects."""
        return tuple(s.name for s in self.subjects if s.split == "train")

    @property
    def unseen_subjects(self) -> tuple[str, ...]:
        """Names of the unseen subjects."""
        return tuple(s.name for s in self.subjects if s.split == "unseen")

    def family_of(self, name: str) -> int | None:
        """The family of subject ``name`` (None in an independent world)."""
        for subject in self.subjects:
            if subject.name == name:
                return subject.family
        raise KeyError(f"no subject {name!r} in this world")

    def eval_clips(self) -> tuple[ClipKey, ...]:
        """Neutral evaluation clips (every view) — the sources of the ground-truth edits."""
        return tuple(c.key for c in self.clips if c.role == "eval" and c.key.emotion == NEUTRAL)


def plan_world(preset: WorldPreset, seed: int) -> WorldPlan:
    """Expand ``preset`` and ``seed`` into a :class:`WorldPlan`."""
    rng = derive_rng(seed, "roster")
    families: tuple[int | None, ...] = (None,) * preset.num_subjects
    if preset.subject_model == "families":
        train, unseen = assign_families(preset.num_train_subjects, preset.num_unseen_subjects, preset.num_families)
        families = train + unseen
    subjects = []
    for index in range(preset.num_subjects):
        sex = "M" if rng.random() < 0.5 else "W"
        family = families[index]
        if family is not None:
            sex = member_sex(seed, index, sex, family, preset.family_spread)
        split = "train" if index < preset.num_train_subjects else "unseen"
        subjects.append(SubjectPlan(name=f"{sex}{index + 1:03d}", split=split, sex=sex, family=family))

    clips: list[ClipPlan] = []
    for subject in subjects:
        name = subject.name
        if subject.split == "train":
            total_neutral = preset.train_neutral_clips + preset.eval_neutral_clips
            for k in range(total_neutral):
                held_out = k >= preset.train_neutral_clips
                views = ("front",) + (preset.side_views if held_out and preset.side_views_for_train_eval else ())
                for view in views:
                    clips.append(ClipPlan(ClipKey(name, view, NEUTRAL, 1, clip_name(k)), "eval" if held_out else "train"))
            emotional_role = "train"
            emotional = True
        else:
            for k in range(preset.unseen_neutral_clips):
                for view in ("front",) + preset.side_views:
                    clips.append(ClipPlan(ClipKey(name, view, NEUTRAL, 1, clip_name(k)), "eval"))
            emotional_role = "eval"
            emotional = preset.unseen_emotional_clips
        if emotional:
            for emotion in preset.emotions:
                for level in preset.levels:
                    for k in range(preset.clips_per_level):
                        clips.append(ClipPlan(ClipKey(name, "front", emotion, level, clip_name(k)), emotional_role))

    edits = tuple(
        EditKey(source=c.key, emotion=emotion, level=level)
        for c in clips
        if c.role == "eval" and c.key.emotion == NEUTRAL
        for emotion in preset.emotions
        for level in preset.levels
    )

    ffhq_rng = derive_rng(seed, "ffhq", "bad")
    bad_kinds = [kind for kind in FFHQ_BAD_KINDS for _ in range(preset.num_ffhq_bad_each)]
    bad_indices = ffhq_rng.choice(preset.num_ffhq, size=len(bad_kinds), replace=False) if bad_kinds else []
    bad_of = {int(i): kind for i, kind in zip(bad_indices, bad_kinds)}
    ffhq = tuple(FFHQPlan(index=i, bad=bad_of.get(i, "")) for i in range(preset.num_ffhq))
    return WorldPlan(subjects=tuple(subjects), clips=tuple(clips), edits=edits, ffhq=ffhq)
