"""Readers of the input layouts preprocessing accepts (METHOD.md §5).

Every reader returns a sorted list of :class:`ClipSource`: one video clip, or one image
(an image is a clip of one frame), with a clip id unique in the dataset and the ids
(subject, emotion, level, view) parsed from the layout.

Layouts:

- **MEAD** (:func:`read_mead`): ``<root>/<subject>/video/<view>/<emotion>/level_<n>/<clip>.mp4``
  (real MEAD, or the synthetic world's ``DIR/mead``). Clip id
  ``<subject>/<view>/<emotion>/level_<n>/<clip>``. Every video file under
  ``<subject>/video/`` must match the layout (known view, known emotion, ``level_<n>``);
  anything else raises :class:`DatasetLayoutError` naming the file. Files outside
  ``<subject>/video/`` (MEAD's ``audio/`` folders, archives, notes) are ignored, as is a
  synthetic world's ``truth/`` folder beside ``mead/``.
- **FFHQ** (:func:`read_ffhq`): PNG/JPG images in ``<root>`` or one level of sub-folders
  (FFHQ's ``00000/00000.png``). Clip id = the relative path without its suffix;
  subject = the file stem (every FFHQ image is another person).
- **Video list** (:func:`read_video_list`): video files given directly, and/or text files
  listing one video path per line (blank lines and lines starting with ``#`` ignored).
  Paths read from a list are relative to the list's dataset root (``root=``, default the
  list file's folder) and must resolve inside it (no ``..`` escapes, no absolute paths
  elsewhere, no symbolic links out): a list is data, not a licence to read any file.
  A listed path that matches the MEAD layout below its root gets MEAD ids; other videos
  get ``unknown`` ids and the clip id = their path relative to the root without suffix
  (or, for a video given directly outside any root, its file stem).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Literal, Sequence

MEAD_EMOTIONS: tuple[str, ...] = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
MEAD_VIEWS: tuple[str, ...] = ("front", "left_30", "left_60", "right_30", "right_60", "top", "down")
MEAD_VIDEO_DIR = "video"  # the folder under <subject>/ that holds the videos
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
LIST_SUFFIXES: tuple[str, ...] = (".txt", ".lst", ".list")
UNKNOWN = "unknown"  # id value of a layout part the input does not have
NO_LEVEL = 0  # level of inputs without MEAD intensity levels (MEAD levels are 1, 2, 3)

_LEVEL_RE = re.compile(r"^level_(\d+)$")
_SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Media = Literal["video", "image"]
InputKind = Literal["mead", "ffhq", "videos"]
INPUT_KINDS: tuple[str, ...] = ("mead", "ffhq", "videos")


class DatasetLayoutError(ValueError):
    """An input file or folder that does not follow the expected layout (names the path)."""


@dataclass(frozen=True)
class ClipSource:
    """One unit of preprocessing input: a video clip or an image, with its ids.

    ``clip_id`` is unique within the dataset and is the cache's clip id. ``subject``,
    ``emotion``, ``view`` are :data:`UNKNOWN` and ``level`` is :data:`NO_LEVEL` (0) where
    the layout does not say.
    """

    clip_id: str  # unique id, e.g. "M003/front/angry/level_3/001" or "00000/00017"
    path: Path  # the video or image file
    media: Media  # "video" (many frames) or "image" (one frame)
    subject: str = UNKNOWN  # person id, e.g. "M003"
    emotion: str = UNKNOWN  # one of MEAD_EMOTIONS, or UNKNOWN
    level: int = NO_LEVEL  # MEAD intensity level 1..3; 0 = none
    view: str = UNKNOWN  # one of MEAD_VIEWS, or UNKNOWN
    name: str = ""  # the clip's own name within its folder (MEAD "001", the file stem)

    def __post_init__(self) -> None:
        if not isinstance(self.clip_id, str) or not self.clip_id:
            raise ValueError(f"ClipSource: clip_id must be a non-empty str, got {self.clip_id!r}")
        if self.media not in ("video", "image"):
            raise ValueError(f"ClipSource {self.clip_id!r}: media must be 'video' or 'image', got {self.media!r}")
        object.__setattr__(self, "path", Path(self.path))
        if not self.name:
            object.__setattr__(self, "name", self.path.stem)

    @property
    def size_bytes(self) -> int:
        """File size (a cheap proxy of the work a clip needs; 0 if the file is unreadable)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def meta(self) -> dict[str, str | int]:
        """The per-record metadata this clip gives a cache (frame index excluded)."""
        return {"subject": self.subject, "emotion": self.emotion, "level": self.level, "view": self.view}


# ---------------------------------------------------------------- path confinement
def confine_path(root: Path, entry: str | os.PathLike[str], *, source: str) -> Path:
    """``root / entry`` resolved, or :class:`DatasetLayoutError` when it leaves ``root``.

    Absolute entries are allowed only when they resolve inside ``root``; symbolic links
    are followed, so a link pointing out of the root is refused too.
    """
    text = os.fspath(entry)
    if not text or "\x00" in text:
        raise DatasetLayoutError(f"{source}: empty or invalid path {text!r}")
    candidate = Path(text) if os.path.isabs(text) else root / text
    resolved_root = os.path.realpath(root)
    resolved = os.path.realpath(candidate)
    if resolved != resolved_root and not resolved.startswith(resolved_root.rstrip(os.sep) + os.sep):
        raise DatasetLayoutError(
            f"{source}: path {text!r} resolves to {resolved}, outside the dataset root {resolved_root}"
        )
    return Path(resolved)


def _is_hidden(relative: PurePosixPath) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _walk_files(root: Path) -> Iterable[tuple[Path, PurePosixPath]]:
    """(path, path relative to root) of every non-hidden file under root, sorted, links not followed out."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = base / name
            yield path, PurePosixPath(path.relative_to(root).as_posix())


# ---------------------------------------------------------------- MEAD
def parse_mead_relative(relative: PurePosixPath | str, *, source: str) -> dict[str, str | int]:
    """Ids of a MEAD video from its path relative to the MEAD root.

    ``<subject>/video/<view>/<emotion>/level_<n>/<clip>.<ext>`` →
    ``{"subject", "view", "emotion", "level", "name", "clip_id"}``; anything else raises
    :class:`DatasetLayoutError` naming ``source`` and what is wrong.
    """
    rel = PurePosixPath(relative)
    parts = rel.parts
    expected = f"<subject>/{MEAD_VIDEO_DIR}/<view>/<emotion>/level_<n>/<clip>.mp4"
    if len(parts) != 6 or parts[1] != MEAD_VIDEO_DIR:
        raise DatasetLayoutError(f"{source}: not in the MEAD layout {expected} (got {rel})")
    subject, _, view, emotion, level_dir, filename = parts
    if not _SUBJECT_RE.match(subject):
        raise DatasetLayoutError(f"{source}: subject folder {subject!r} is not a valid subject id")
    if view not in MEAD_VIEWS:
        raise DatasetLayoutError(f"{source}: unknown view {view!r}; MEAD views are {', '.join(MEAD_VIEWS)}")
    if emotion not in MEAD_EMOTIONS:
        raise DatasetLayoutError(
            f"{source}: unknown emotion {emotion!r}; MEAD emotions are {', '.join(MEAD_EMOTIONS)}"
        )
    match = _LEVEL_RE.match(level_dir)
    if not match or int(match.group(1)) < 1:
        raise DatasetLayoutError(f"{source}: intensity folder {level_dir!r} is not 'level_<n>' with n >= 1")
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise DatasetLayoutError(f"{source}: {filename!r} is not a video file ({', '.join(VIDEO_SUFFIXES)})")
    name = PurePosixPath(filename).stem
    if not name:
        raise DatasetLayoutError(f"{source}: empty clip name")
    level = int(match.group(1))
    return {
        "subject": subject,
        "view": view,
        "emotion": emotion,
        "level": level,
        "name": name,
        "clip_id": mead_clip_id(subject, view, emotion, level, name),
    }


def mead_clip_id(subject: str, view: str, emotion: str, level: int, name: str) -> str:
    """The clip id preprocessing gives a MEAD clip (the caches' ``clip`` metadata):
    ``<subject>/<view>/<emotion>/level_<level>/<clip name>``."""
    return f"{subject}/{view}/{emotion}/level_{level}/{name}"


def mead_root_of(path: str | os.PathLike[str]) -> Path:
    """The MEAD root for ``path``: ``path`` itself, or ``path/mead`` for a synthetic world folder."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: MEAD root folder not found")
    if (path / "mead").is_dir() and not any((p / MEAD_VIDEO_DIR).is_dir() for p in path.iterdir() if p.is_dir()):
        return path / "mead"
    return path


def read_mead(
    root: str | os.PathLike[str],  # MEAD root (or a synthetic world folder holding mead/)
    *,
    subjects: Sequence[str] | None = None,  # keep only these subjects; None = all
    emotions: Sequence[str] | None = None,  # keep only these emotions; None = all
    views: Sequence[str] | None = None,  # keep only these views; None = all
    levels: Sequence[int] | None = None,  # keep only these intensity levels; None = all
) -> list[ClipSource]:
    """Every video of a MEAD-layout folder, sorted by clip id (see the module docstring)."""
    root = mead_root_of(root)
    for name, values, known in (("emotions", emotions, MEAD_EMOTIONS), ("views", views, MEAD_VIEWS)):
        unknown = sorted(set(values or ()) - set(known))
        if unknown:
            raise ValueError(f"read_mead: unknown {name} {unknown}; known: {', '.join(known)}")
    clips: list[ClipSource] = []
    seen_subject_dirs = 0
    for path, relative in _walk_files(root):
        parts = relative.parts
        if len(parts) < 2 or parts[1] != MEAD_VIDEO_DIR:
            if len(parts) == 1 and path.suffix.lower() in VIDEO_SUFFIXES:
                raise DatasetLayoutError(f"{path}: a video at the MEAD root; expected <subject>/video/... below {root}")
            continue  # audio/, archives, notes: not ours
        seen_subject_dirs += 1
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise DatasetLayoutError(f"{path}: unexpected non-video file in the MEAD video tree of {root}")
        ids = parse_mead_relative(relative, source=str(path))
        if subjects is not None and ids["subject"] not in subjects:
            continue
        if emotions is not None and ids["emotion"] not in emotions:
            continue
        if views is not None and ids["view"] not in views:
            continue
        if levels is not None and ids["level"] not in levels:
            continue
        clips.append(
            ClipSource(
                clip_id=str(ids["clip_id"]), path=path, media="video", subject=str(ids["subject"]),
                emotion=str(ids["emotion"]), level=int(ids["level"]), view=str(ids["view"]), name=str(ids["name"]),
            )
        )
    if seen_subject_dirs == 0:
        raise DatasetLayoutError(
            f"{root}: no videos in the MEAD layout <subject>/{MEAD_VIDEO_DIR}/<view>/<emotion>/level_<n>/<clip>.mp4"
        )
    return _sorted_unique(clips, source=str(root))


# ---------------------------------------------------------------- FFHQ
_FFHQ_IMAGES_DIR_RE = re.compile(r"^images\d+x\d+$")


def ffhq_root_of(path: str | os.PathLike[str]) -> Path:
    """The image folder for ``path``: ``path`` itself, or (for FFHQ's own or a synthetic world's
    folder) its single ``images<S>x<S>`` sub-folder, found in ``path`` or ``path/ffhq``."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: FFHQ image folder not found")
    for base in (path, path / "ffhq"):
        if not base.is_dir():
            continue
        candidates = sorted(p for p in base.iterdir() if p.is_dir() and _FFHQ_IMAGES_DIR_RE.match(p.name))
        if not candidates or any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in base.iterdir()):
            continue
        if len(candidates) > 1:
            raise DatasetLayoutError(f"{base}: several image folders {[c.name for c in candidates]}; pass the one to use")
        return candidates[0]
    return path


def read_ffhq(
    root: str | os.PathLike[str],  # folder of PNG/JPG images, possibly in one level of sub-folders
) -> list[ClipSource]:
    """Every image of an FFHQ-layout folder, sorted by clip id (see the module docstring).

    ``root`` may also be FFHQ's own folder or a synthetic world folder: a single
    ``images<S>x<S>`` sub-folder (of ``root`` or ``root/ffhq``) is used then.
    """
    root = ffhq_root_of(root)
    clips: list[ClipSource] = []
    for path, relative in _walk_files(root):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # LICENSE.txt, JSON metadata, ...
        if len(relative.parts) > 2:
            raise DatasetLayoutError(
                f"{path}: image nested {len(relative.parts) - 1} folders deep; the FFHQ layout allows "
                f"images in {root} or in one level of sub-folders (e.g. 00000/00000.png)"
            )
        clip_id = relative.with_suffix("").as_posix()
        clips.append(ClipSource(clip_id=clip_id, path=path, media="image", subject=path.stem, name=path.stem))
    if not clips:
        raise DatasetLayoutError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return _sorted_unique(clips, source=str(root))


# ---------------------------------------------------------------- video lists
def _video_clip(path: Path, root: Path | None) -> ClipSource:
    """A ClipSource for one video, with MEAD ids when its path below ``root`` matches the layout."""
    relative: PurePosixPath | None = None
    if root is not None:
        try:
            relative = PurePosixPath(path.resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            relative = None
    if relative is not None:
        try:
            ids = parse_mead_relative(relative, source=str(path))
        except DatasetLayoutError:
            ids = None
        if ids is not None:
            return ClipSource(
                clip_id=str(ids["clip_id"]), path=path, media="video", subject=str(ids["subject"]),
                emotion=str(ids["emotion"]), level=int(ids["level"]), view=str(ids["view"]), name=str(ids["name"]),
            )
        return ClipSource(clip_id=relative.with_suffix("").as_posix(), path=path, media="video")
    return ClipSource(clip_id=path.stem, path=path, media="video")


def read_list_file(
    list_file: str | os.PathLike[str],  # text file: one video path per line
    *,
    root: str | os.PathLike[str] | None = None,  # dataset root the entries are relative to and confined to; None = the list's folder
) -> list[ClipSource]:
    """The videos a list file names, confined to ``root`` (see the module docstring)."""
    list_file = Path(list_file)
    try:
        text = list_file.read_text(encoding="utf-8")
    except OSError as error:
        raise DatasetLayoutError(f"{list_file}: cannot read the video list ({error})") from None
    except UnicodeDecodeError as error:
        raise DatasetLayoutError(f"{list_file}: the video list is not UTF-8 text ({error})") from None
    base = Path(root) if root is not None else list_file.parent
    if not base.is_dir():
        raise DatasetLayoutError(f"{list_file}: dataset root {base} is not a folder")
    clips = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"{list_file}:{number}"
        path = confine_path(base, entry, source=where)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise DatasetLayoutError(f"{where}: {entry!r} is not a video file ({', '.join(VIDEO_SUFFIXES)})")
        clips.append(_video_clip(path, base))
    return clips


def read_video_list(
    items: Sequence[str | os.PathLike[str]],  # video files and/or list files (.txt/.lst/.list)
    *,
    root: str | os.PathLike[str] | None = None,  # dataset root: list entries are confined to it; direct videos get ids relative to it
) -> list[ClipSource]:
    """Videos given directly or through list files, sorted by clip id; duplicate ids are an error."""
    if not items:
        raise DatasetLayoutError("read_video_list: no videos or list files given")
    base = None if root is None else Path(root)
    clips: list[ClipSource] = []
    for item in items:
        path = Path(item)
        suffix = path.suffix.lower()
        if suffix in LIST_SUFFIXES:
            clips.extend(read_list_file(path, root=base))
        elif suffix in VIDEO_SUFFIXES:
            if base is not None:
                path = confine_path(base, path, source="video list")
            clips.append(_video_clip(path, base))
        else:
            raise DatasetLayoutError(
                f"{path}: neither a video ({', '.join(VIDEO_SUFFIXES)}) nor a list file ({', '.join(LIST_SUFFIXES)})"
            )
    return _sorted_unique(clips, source="video list")


def _sorted_unique(clips: list[ClipSource], *, source: str) -> list[ClipSource]:
    by_id: dict[str, ClipSource] = {}
    for clip in clips:
        other = by_id.get(clip.clip_id)
        if other is not None and other.path.resolve() != clip.path.resolve():
            raise DatasetLayoutError(
                f"{source}: clip id {clip.clip_id!r} is given by two files, {other.path} and {clip.path}; "
                "pass a dataset root (root=) so ids come from relative paths"
            )
        by_id[clip.clip_id] = clip
    return [by_id[key] for key in sorted(by_id)]


# ---------------------------------------------------------------- dispatch
def read_inputs(
    kind: str,  # "mead", "ffhq" or "videos"
    paths: Sequence[str | os.PathLike[str]],  # mead/ffhq: one root folder; videos: files and list files
    *,
    root: str | os.PathLike[str] | None = None,  # videos: the dataset root lists are confined to
    subjects: Sequence[str] | None = None,  # mead: subjects to keep
    emotions: Sequence[str] | None = None,  # mead: emotions to keep
    views: Sequence[str] | None = None,  # mead: views to keep
    levels: Sequence[int] | None = None,  # mead: levels to keep
) -> list[ClipSource]:
    """Dispatch to :func:`read_mead`, :func:`read_ffhq` or :func:`read_video_list`."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"input kind must be one of {INPUT_KINDS}, got {kind!r}")
    if kind == "videos":
        return read_video_list(paths, root=root)
    if len(paths) != 1:
        raise ValueError(f"input kind {kind!r} takes exactly one root folder, got {len(paths)} paths")
    if kind == "mead":
        return read_mead(paths[0], subjects=subjects, emotions=emotions, views=views, levels=levels)
    return read_ffhq(paths[0])
