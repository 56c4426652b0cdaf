"""Reading a generated synthetic world: :class:`SyntheticWorld`.

```
world = SyntheticWorld.open("worlds/demo")
world.train_subjects, world.unseen_subjects, world.split.held_out_neutral_clips
for clip in world.clips(subject="M003", emotion="happy"):      # ClipRecord
    truth = world.load_truth(clip)                              # ClipTruth (coeffs, landmarks, ...)
    clip.video_path
for source in world.eval_clips():                               # neutral evaluation clips
    world.edited_video_path(source, "angry", 3)                 # ground-truth edit
world.subject(s).albedo, world.true_texture("M003", truth.effects)   # true UV albedo per frame
world.face_model(), world.camera, world.ffhq()
world.render_edit(source, "happy", 1.5)                         # any continuous level, on demand
```

Every path comes from the world's own index files and is confined to the world folder
(:func:`~emoedit.data.synthetic.layout.confined`): a tampered index cannot make the reader
open files elsewhere. Tensors are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from emoedit.data.synthetic.clip_renderer import RenderedClip, WorldRenderer
from emoedit.data.synthetic.ffhq import FFHQ_FORMAT, FFHQ_FORMAT_VERSION
from emoedit.data.synthetic.layout import (
    FACE_MODEL_FILE,
    FFHQ_TRUTH_FILE,
    SPLIT_FILE,
    WORLD_FILE,
    ClipKey,
    EditKey,
    confined,
    subject_truth_file,
)
from emoedit.data.synthetic.presets import NEUTRAL, WorldPreset
from emoedit.data.synthetic.subjects import SUBJECT_FORMAT, SUBJECT_FORMAT_VERSION
from emoedit.data.synthetic.texture_effects import apply_effects
from emoedit.data.synthetic.truth_format import ClipTruth, load_clip_truth
from emoedit.data.synthetic.world import INDEX_FILE, WORLD_FORMAT, WORLD_FORMAT_VERSION
from emoedit.face_model import CoeffLayout, MorphableModel, PerspectiveCamera
from emoedit.shape_checks import assert_shape


@dataclass(frozen=True)
class ClipRecord:
    """A MEAD clip of the world and where its files are."""

    key: ClipKey  # subject, view, emotion, level, clip
    role: str  # "train" or "eval"
    video_path: Path  # the .mp4 (inside the world folder)
    truth_path: Path  # its per-frame truth .pt

    @property
    def subject(self) -> str:
        """Subject name."""
        return self.key.subject


@dataclass(frozen=True)
class EditRecord:
    """A ground-truth edit of a neutral evaluation clip."""

    key: EditKey  # source clip, target emotion, target level
    video_path: Path  # the edited .mp4
    truth_path: Path  # its per-frame truth .pt
    source_video_path: Path  # the neutral source .mp4


@dataclass(frozen=True)
class WorldSplit:
    """Who and what is for training, and what is held out."""

    train_subjects: tuple[str, ...]  # subjects seen in training
    unseen_subjects: tuple[str, ...]  # subjects never seen in training
    train_neutral_clips: dict[str, tuple[str, ...]]  # training subject -> frontal neutral clips for training
    held_out_neutral_clips: dict[str, tuple[str, ...]]  # training subject -> frontal neutral clips held out
    eval_clips: tuple[ClipKey, ...]  # every neutral evaluation clip (all views), sources of the edits


@dataclass(frozen=True)
class SubjectTruth:
    """The truth of one subject (``truth/subjects/<name>.pt``)."""

    name: str
    split: str  # "train" or "unseen"
    sex: str
    id_coeff: Tensor  # (K_id,)
    tex_coeff: Tensor  # (K_tex,) closest model albedo coefficients
    au_gains: Tensor  # (K_exp,) per-AU expression amplitude
    effect_gains: Tensor  # (E,) wrinkle / flush response gains
    albedo: Tensor  # (3, T, T) float32 true UV albedo of the neutral face, [0, 1]
    effect_maps: Tensor  # (E, 3, T, T) float32 additive change per unit effect activation
    teeth_colour: Tensor  # (3,)
    expression_names: tuple[str, ...]
    effect_names: tuple[str, ...]
    family: int | None = None  # look-alike family ("families" worlds), None for independently drawn subjects


@dataclass(frozen=True)
class FFHQTruth:
    """Truth of the FFHQ-like stills (N images)."""

    image_paths: tuple[Path, ...]  # (N,) PNG files
    texture_paths: tuple[Path, ...]  # (N,) true UV albedo PNGs (expression effects included)
    bad: Tensor  # (N,) bool, deliberately bad
    bad_reason: tuple[str, ...]  # (N,) "", "large_pose", "dark" or "occluded"
    emotion: tuple[str, ...]  # (N,) emotion shown
    level: Tensor  # (N,) float32 continuous level shown
    coeffs: Tensor  # (N, L) full coefficient vectors
    landmarks: Tensor  # (N, 68, 2) true landmarks, pixels
    occluder_box: Tensor  # (N, 4) x0, y0, x1, y1 pixels; -1 without occluder
    camera: PerspectiveCamera  # the stills' camera


class SyntheticWorld:
    """Read access to a generated world (see the module docstring). Use :meth:`open`."""

    def __init__(
        self,
        *,
        root: Path,  # the world folder
        description: dict[str, Any],  # parsed truth/world.json
        split: WorldSplit,  # parsed truth/split.json
        clips: tuple[ClipRecord, ...],  # every MEAD clip
        edits: tuple[EditRecord, ...],  # every ground-truth edit
    ) -> None:
        self.root = root
        self.description = description
        self.split = split
        self._clips = clips
        self._edits = edits
        self._edits_by_key = {e.key: e for e in edits}
        self._face_model: MorphableModel | None = None
        self._subjects: dict[str, SubjectTruth] = {}
        self._renderer: WorldRenderer | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | os.PathLike[str], *, require_complete: bool = True) -> SyntheticWorld:
        """Open the world in ``root``; ``ValueError`` naming the file on anything wrong.

        ``require_complete=False`` also opens a world whose generation has not finished.
        """
        root = Path(root).resolve()
        description = _read_json(root, WORLD_FILE)
        if description.get("format") != WORLD_FORMAT:
            raise ValueError(f"{root / WORLD_FILE}: not a synthetic world description")
        if description.get("format_version") != WORLD_FORMAT_VERSION:
            raise ValueError(
                f"{root / WORLD_FILE}: world format version {description.get('format_version')!r} "
                f"not supported (want {WORLD_FORMAT_VERSION})"
            )
        if require_complete and not description.get("complete", False):
            raise ValueError(f"{root}: the world's generation has not finished (run `emoedit synth` again to resume)")
        split_data = _read_json(root, SPLIT_FILE)
        index = _read_json(root, INDEX_FILE)
        try:
            split = WorldSplit(
                train_subjects=tuple(split_data["train_subjects"]),
                unseen_subjects=tuple(split_data["unseen_subjects"]),
                train_neutral_clips={k: tuple(v) for k, v in split_data["train_neutral_clips"].items()},
                held_out_neutral_clips={k: tuple(v) for k, v in split_data["held_out_neutral_clips"].items()},
                eval_clips=tuple(ClipKey.from_json(c) for c in split_data["eval_clips"]),
            )
            clips = []
            for entry in index["clips"]:
                key = ClipKey.from_json(entry)
                clips.append(ClipRecord(key, str(entry["role"]), confined(root, key.video), confined(root, key.truth)))
            edits = []
            for entry in index["edits"]:
                source = ClipKey.from_json(entry["source"])
                key = EditKey(source=source, emotion=str(entry["emotion"]), level=int(entry["level"]))
                edits.append(EditRecord(key, confined(root, key.video), confined(root, key.truth), confined(root, source.video)))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{root}: malformed split or index file ({error})") from error
        return cls(root=root, description=description, split=split, clips=tuple(clips), edits=tuple(edits))

    # ------------------------------------------------------------------ description
    @property
    def preset(self) -> WorldPreset:
        """The preset the world was generated with."""
        return WorldPreset.from_json(self.description["preset"])

    @property
    def seed(self) -> int:
        """The world seed."""
        return int(self.description["seed"])

    @property
    def fps(self) -> int:
        """Frames per second of every clip."""
        return int(self.description["fps"])

    @property
    def image_size(self) -> int:
        """Video frame side, pixels."""
        return int(self.description["image_size"])

    @property
    def texture_size(self) -> int:
        """UV texture side, texels."""
        return int(self.description["texture_size"])

    @property
    def audio_rate(self) -> int:
        """Audio sample rate, Hz."""
        return int(self.description["audio_rate"])

    @property
    def camera(self) -> PerspectiveCamera:
        """The video camera (same for every clip; the head pose carries the view)."""
        return _camera(self.description["camera"])

    @property
    def coeff_layout(self) -> CoeffLayout:
        """Layout of every ``coeffs`` vector in the truth."""
        return CoeffLayout(**{k: int(v) for k, v in self.description["coeff_layout"].items()})

    @property
    def expression_names(self) -> tuple[str, ...]:
        """AU names of the expression coefficients."""
        return tuple(self.description["expression_names"])

    @property
    def effect_names(self) -> tuple[str, ...]:
        """Texture effect names (order of ``ClipTruth.effects``)."""
        return tuple(self.description["effect_names"])

    @property
    def subjects(self) -> tuple[str, ...]:
        """All subject names (training first)."""
        return self.split.train_subjects + self.split.unseen_subjects

    @property
    def train_subjects(self) -> tuple[str, ...]:
        """Subjects seen in training."""
        return self.split.train_subjects

    @property
    def unseen_subjects(self) -> tuple[str, ...]:
        """Subjects never seen in training."""
        return self.split.unseen_subjects

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """``root / relative``, confined to the world folder."""
        return confined(self.root, relative)

    # ------------------------------------------------------------------ clips
    def clips(
        self,
        *,
        subject: str | None = None,  # only this subject
        view: str | None = None,  # only this view
        emotion: str | None = None,  # only this emotion ("neutral" included)
        level: int | None = None,  # only this level
        role: str | None = None,  # "train" or "eval"
    ) -> list[ClipRecord]:
        """The MEAD clips matching every given filter, in index order."""
        out = []
        for record in self._clips:
            k = record.key
            if subject is not None and k.subject != subject:
                continue
            if view is not None and k.view != view:
                continue
            if emotion is not None and k.emotion != emotion:
                continue
            if level is not None and k.level != level:
                continue
            if role is not None and record.role != role:
                continue
            out.append(record)
        return out

    def training_clips(self) -> list[ClipRecord]:
        """Clips for training: training subjects, frontal, not held out."""
        return self.clips(role="train")

    def eval_clips(self, *, view: str | None = None, subject: str | None = None) -> list[ClipRecord]:
        """Neutral evaluation clips (sources of the ground-truth edits)."""
        return self.clips(role="eval", emotion=NEUTRAL, view=view, subject=subject)

    def iter_clips_with_truth(self, **filters: Any) -> Iterator[tuple[ClipRecord, ClipTruth]]:
        """``(record, truth)`` for every clip matching :meth:`clips` filters."""
        for record in self.clips(**filters):
            yield record, self.load_truth(record)

    def load_truth(self, record: ClipRecord | EditRecord) -> ClipTruth:
        """The per-frame truth of a clip or edit."""
        return load_clip_truth(record.truth_path)

    # ------------------------------------------------------------------ edits
    def edits(
        self,
        *,
        source: ClipRecord | ClipKey | None = None,  # only edits of this neutral clip
        emotion: str | None = None,  # only this target emotion
        level: int | None = None,  # only this target level
    ) -> list[EditRecord]:
        """Ground-truth edits matching every given filter."""
        source_key = source.key if isinstance(source, ClipRecord) else source
        return [
            e
            for e in self._edits
            if (source_key is None or e.key.source == source_key)
            and (emotion is None or e.key.emotion == emotion)
            and (level is None or e.key.level == level)
        ]

    def edited_video_path(self, source: ClipRecord | ClipKey, emotion: str, level: int) -> Path:
        """The ground-truth edit of neutral clip ``source`` into ``emotion`` at ``level``.

        Level 0 is the source clip itself. ``KeyError`` if the world has no such edit.
        """
        key = source.key if isinstance(source, ClipRecord) else source
        if level == 0:
            return confined(self.root, key.video)
        edit = self._edits_by_key.get(EditKey(source=key, emotion=emotion, level=int(level)))
        if edit is None:
            raise KeyError(f"no ground-truth edit of {key} into {emotion} level {level} in {self.root}")
        return edit.video_path

    def edit(self, source: ClipRecord | ClipKey, emotion: str, level: int) -> EditRecord:
        """The :class:`EditRecord` of one edit (``KeyError`` if absent)."""
        key = source.key if isinstance(source, ClipRecord) else source
        edit = self._edits_by_key.get(EditKey(source=key, emotion=emotion, level=int(level)))
        if edit is None:
            raise KeyError(f"no ground-truth edit of {key} into {emotion} level {level} in {self.root}")
        return edit

    # ------------------------------------------------------------------ subjects and model
    def subject(self, name: str) -> SubjectTruth:
        """The truth of subject ``name`` (read once, then cached)."""
        if name not in self._subjects:
            if name not in self.subjects:
                raise KeyError(f"no subject {name!r} in {self.root}")
            path = confined(self.root, subject_truth_file(name))
            payload = _load_pt(path)
            if payload.get("format") != SUBJECT_FORMAT or payload.get("format_version") != SUBJECT_FORMAT_VERSION:
                raise ValueError(f"{path}: not a synthetic subject truth file of version {SUBJECT_FORMAT_VERSION}")
            try:
                truth = SubjectTruth(
                    name=str(payload["name"]),
                    split=str(payload["split"]),
                    sex=str(payload["sex"]),
                    id_coeff=payload["id_coeff"],
                    tex_coeff=payload["tex_coeff"],
                    au_gains=payload["au_gains"],
                    effect_gains=payload["effect_gains"],
                    albedo=payload["albedo"].float(),
                    effect_maps=payload["effect_maps"].float(),
                    teeth_colour=payload["teeth_colour"],
                    expression_names=tuple(payload["expression_names"]),
                    effect_names=tuple(payload["effect_names"]),
                    family=None if payload.get("family") is None else int(payload["family"]),
                )
            except KeyError as error:
                raise ValueError(f"{path}: subject truth lacks {error}") from None
            assert_shape(truth.albedo, (3, "T", "T"), f"{path}: albedo")
            assert_shape(truth.effect_maps, (len(truth.effect_names), 3, None, None), f"{path}: effect_maps")
            self._subjects[name] = truth
        return self._subjects[name]

    def true_texture(self, subject: str, effects: Tensor | None = None) -> Tensor:
        """The true UV albedo of ``subject``: ``(B, 3, T, T)`` for ``(B, E)`` effect
        activations (e.g. ``ClipTruth.effects``), ``(1, 3, T, T)`` neutral for ``None``."""
        truth = self.subject(subject)
        if effects is None:
            effects = torch.zeros(1, len(truth.effect_names))
        return apply_effects(truth.albedo, truth.effect_maps, effects.float())

    def face_model(self) -> MorphableModel:
        """The face model the world was rendered with (read once, then cached)."""
        if self._face_model is None:
            self._face_model = MorphableModel.load(confined(self.root, FACE_MODEL_FILE))
        return self._face_model

    # ------------------------------------------------------------------ rendering on demand
    def renderer(self) -> WorldRenderer:
        """A :class:`WorldRenderer` of this world's preset and seed (created once), to
        render any clip or any edit — e.g. at continuous levels never written to disk."""
        if self._renderer is None:
            self._renderer = WorldRenderer(self.preset, self.seed, model=self.face_model())
        return self._renderer

    def render_edit(self, source: ClipRecord | ClipKey, emotion: str, level: float) -> RenderedClip:
        """The ground-truth edit of neutral clip ``source`` into ``emotion`` at any
        continuous ``level`` ≥ 0 (frames, audio and truth; nothing is written)."""
        key = source.key if isinstance(source, ClipRecord) else source
        return self.renderer().render_edit(key, emotion, level)

    # ------------------------------------------------------------------ ffhq
    def ffhq(self) -> FFHQTruth:
        """Truth of the FFHQ-like stills."""
        path = confined(self.root, FFHQ_TRUTH_FILE)
        payload = _load_pt(path)
        if payload.get("format") != FFHQ_FORMAT or payload.get("format_version") != FFHQ_FORMAT_VERSION:
            raise ValueError(f"{path}: not a synthetic FFHQ truth file of version {FFHQ_FORMAT_VERSION}")
        try:
            focal, center, distance, size = (float(v) for v in payload["camera"].tolist())
            return FFHQTruth(
                image_paths=tuple(confined(self.root, p) for p in payload["images"]),
                texture_paths=tuple(confined(self.root, p) for p in payload["textures"]),
                bad=payload["bad"],
                bad_reason=tuple(payload["bad_reason"]),
                emotion=tuple(payload["emotion"]),
                level=payload["level"],
                coeffs=payload["coeffs"],
                landmarks=payload["landmarks"],
                occluder_box=payload["occluder_box"],
                camera=PerspectiveCamera(focal=focal, center=center, camera_distance=distance, image_size=int(size)),
            )
        except KeyError as error:
            raise ValueError(f"{path}: FFHQ truth lacks {error}") from None

    def __repr__(self) -> str:
        return (
            f"SyntheticWorld(root={str(self.root)!r}, preset={self.description.get('preset_name')!r}, seed={self.seed}, "
            f"subjects={len(self.subjects)}, clips={len(self._clips)}, edits={len(self._edits)})"
        )


def _read_json(root: Path, relative: str) -> dict[str, Any]:
    path = confined(root, relative)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is {root} a synthetic world folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _load_pt(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise ValueError(f"{path}: unreadable ({error})") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a dict")
    return payload


def _camera(data: dict[str, Any]) -> PerspectiveCamera:
    return PerspectiveCamera(
        focal=float(data["focal"]),
        center=float(data["center"]),
        camera_distance=float(data["camera_distance"]),
        image_size=int(data["image_size"]),
    )
