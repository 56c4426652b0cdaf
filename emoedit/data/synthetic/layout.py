"""Where every file of a synthetic world lives (shared by the generator and the reader).

```
DIR/
  mead/<subject>/video/<view>/<emotion>/level_<n>/<clip>.mp4      MEAD's layout (H.264 + AAC)
  ffhq/images<S>x<S>/<block>/<index>.png                           FFHQ's layout (blocks of 1000)
  truth/
    world.json                 preset, seed, subjects, layout, camera, fps, sizes, format version
    split.json                 training / unseen subjects, held-out neutral clips
    face_model.pt              the procedural MorphableModel used (MorphableModel.load)
    subjects/<subject>.pt      identity, albedo coefficients, true UV albedo, emotion responses
    subjects/<subject>.json    the same subject's small metadata
    subjects/<subject>_albedo.png   the true UV albedo (uint8, for viewing)
    mead/<subject>/<view>/<emotion>/level_<n>/<clip>.pt            per-frame truth of a MEAD clip
    edited/<subject>/<view>/<emotion>/level_<n>/<clip>.mp4 / .pt   ground-truth edit of the
                               neutral clip mead/<subject>/video/<view>/neutral/level_1/<clip>.mp4
    ffhq.pt / ffhq.json        per-image truth of the FFHQ-like stills (incl. "bad" flags)
    ffhq_textures/<index>.png  the true UV albedo of each still
```

Every path handed out is checked to lie inside the world folder (:func:`confined`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from emoedit.data.datasets import mead_clip_id
from emoedit.data.synthetic.presets import NEUTRAL

MEAD_DIR = "mead"
FFHQ_DIR = "ffhq"
TRUTH_DIR = "truth"
WORLD_FILE = f"{TRUTH_DIR}/world.json"
SPLIT_FILE = f"{TRUTH_DIR}/split.json"
FACE_MODEL_FILE = f"{TRUTH_DIR}/face_model.pt"
FFHQ_TRUTH_FILE = f"{TRUTH_DIR}/ffhq.pt"
FFHQ_JSON_FILE = f"{TRUTH_DIR}/ffhq.json"


def clip_name(index: int) -> str:
    """MEAD-style clip name of the ``index``-th clip (0-based): ``"001"``, ``"002"``, ..."""
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    return f"{index + 1:03d}"


def level_folder(level: int) -> str:
    """``level_<n>``."""
    return f"level_{int(level)}"


@dataclass(frozen=True, order=True)
class ClipKey:
    """Identifies one MEAD clip: ``<subject>/video/<view>/<emotion>/level_<level>/<clip>.mp4``."""

    subject: str  # subject name, e.g. "M003"
    view: str  # camera view: front, left_30, right_30
    emotion: str  # MEAD emotion folder name (neutral, happy, ...)
    level: int  # intensity level 1..3 (neutral: 1)
    clip: str  # clip name, e.g. "001"

    def __post_init__(self) -> None:
        for part in (self.subject, self.view, self.emotion, self.clip):
            _check_part(part)
        if self.emotion == NEUTRAL and self.level != 1:
            raise ValueError(f"ClipKey: neutral clips have level 1 only, got level {self.level}")

    @property
    def video(self) -> PurePosixPath:
        """Relative path of the clip's video."""
        return PurePosixPath(MEAD_DIR, self.subject, "video", self.view, self.emotion, level_folder(self.level), f"{self.clip}.mp4")

    @property
    def clip_id(self) -> str:
        """The clip id preprocessing gives this clip (the caches' ``clip`` metadata;
        :func:`emoedit.data.datasets.mead_clip_id`)."""
        return mead_clip_id(self.subject, self.view, self.emotion, self.level, self.clip)

    @property
    def truth(self) -> PurePosixPath:
        """Relative path of the clip's per-frame truth (``.pt``)."""
        return PurePosixPath(TRUTH_DIR, MEAD_DIR, self.subject, self.view, self.emotion, level_folder(self.level), f"{self.clip}.pt")

    def as_json(self) -> dict[str, object]:
        """``{"subject", "view", "emotion", "level", "clip"}``."""
        return {"subject": self.subject, "view": self.view, "emotion": self.emotion, "level": self.level, "clip": self.clip}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ClipKey:
        """Inverse of :meth:`as_json`."""
        try:
            return cls(
                subject=str(data["subject"]),
                view=str(data["view"]),
                emotion=str(data["emotion"]),
                level=int(data["level"]),  # type: ignore[arg-type]
                clip=str(data["clip"]),
            )
        except KeyError as error:
            raise ValueError(f"clip entry lacks {error}: {data}") from None


@dataclass(frozen=True, order=True)
class EditKey:
    """The ground-truth edit of a neutral clip ``source`` into ``emotion`` at ``level``."""

    source: ClipKey  # a neutral evaluation clip
    emotion: str  # target emotion (non-neutral)
    level: int  # target level 1..3

    def __post_init__(self) -> None:
        if self.source.emotion != NEUTRAL:
            raise ValueError(f"EditKey: the source must be a neutral clip, got {self.source}")
        _check_part(self.emotion)
        if self.emotion == NEUTRAL:
            raise ValueError("EditKey: the target emotion must not be neutral (level 0 is the source itself)")

    def _base(self) -> PurePosixPath:
        s = self.source
        return PurePosixPath(TRUTH_DIR, "edited", s.subject, s.view, self.emotion, level_folder(self.level))

    @property
    def video(self) -> PurePosixPath:
        """Relative path of the ground-truth edited video."""
        return self._base() / f"{self.source.clip}.mp4"

    @property
    def truth(self) -> PurePosixPath:
        """Relative path of its per-frame truth."""
        return self._base() / f"{self.source.clip}.pt"


def subject_truth_file(subject: str) -> PurePosixPath:
    """``truth/subjects/<subject>.pt``."""
    _check_part(subject)
    return PurePosixPath(TRUTH_DIR, "subjects", f"{subject}.pt")


def subject_json_file(subject: str) -> PurePosixPath:
    """``truth/subjects/<subject>.json``."""
    _check_part(subject)
    return PurePosixPath(TRUTH_DIR, "subjects", f"{subject}.json")


def subject_albedo_png(subject: str) -> PurePosixPath:
    """``truth/subjects/<subject>_albedo.png``."""
    _check_part(subject)
    return PurePosixPath(TRUTH_DIR, "subjects", f"{subject}_albedo.png")


def ffhq_image_file(index: int, size: int) -> PurePosixPath:
    """FFHQ's layout: ``ffhq/images<S>x<S>/<block of 1000>/<index>.png``."""
    return PurePosixPath(FFHQ_DIR, f"images{size}x{size}", f"{index // 1000 * 1000:05d}", f"{index:05d}.png")


def ffhq_texture_file(index: int) -> PurePosixPath:
    """``truth/ffhq_textures/<index>.png``: the true UV albedo of still ``index``."""
    return PurePosixPath(TRUTH_DIR, "ffhq_textures", f"{index:05d}.png")


def _check_part(part: str) -> None:
    if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
        raise ValueError(f"invalid path component {part!r}")


def confined(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> Path:
    """``root / relative``, refusing anything that leaves ``root``.

    Raises ``ValueError`` for absolute paths, ``..`` components, or paths that resolve
    (through symbolic links) outside ``root``.
    """
    root_path = Path(root).resolve()
    rel = PurePosixPath(str(relative).replace("\\", "/"))
    if rel.is_absolute() or any(part == ".." for part in rel.parts) or not rel.parts:
        raise ValueError(f"{root_path}: refusing path {str(relative)!r} (must be relative, without '..')")
    candidate = root_path.joinpath(*rel.parts)
    resolved = candidate.resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise ValueError(f"{root_path}: path {str(relative)!r} resolves to {resolved}, outside the world folder")
    return candidate
