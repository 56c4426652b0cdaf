"""The evaluation sets of the synthetic world: (input clip, target emotion code, truth video) items.

METHOD.md §6 scores every method on the **seen** subjects' held-out neutral clips, each
edited to every emotion at the maximum intensity (the paper: 39 subjects × 7 emotions = 273
videos per method). The synthetic world knows the ground-truth edit of each such clip
(``truth/edited/<subject>/<view>/<emotion>/level_<k>/<clip>.mp4`` with per-frame truth), so
every item carries its truth video. Three sets, from the world's own split
(:class:`~emoedit.data.synthetic.reader.WorldSplit`, ``truth/split.json``):

- ``seen`` (Table 1): the training subjects' held-out **front** neutral clips;
- ``unseen_subjects``: the unseen subjects' front neutral clips (never seen in training);
- ``unseen_views``: every neutral evaluation clip filmed from a side view (``left_30`` /
  ``right_30``; the training parts only see front clips).

Each × every emotion of the world at its highest level (``max(preset.levels)``: MEAD's 3 =
α 1.0). :func:`evaluation_items` orders a set so that its first items cover different
emotions *and* subjects (``max_items`` keeps a spread, not the first subject's seven clips).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from emoedit.data.synthetic.presets import NEUTRAL
from emoedit.editing.emotion_code import EMOTIONS, MAX_LEVEL, emotion_code_from_alpha

#: The evaluation sets, in table order.
EVALUATION_SETS: tuple[str, ...] = ("seen", "unseen_subjects", "unseen_views")
#: One line per set, for the tables.
SET_TITLES: dict[str, str] = {
    "seen": "seen subjects, held-out neutral front clips (Table 1)",
    "unseen_subjects": "unseen subjects, neutral front clips",
    "unseen_views": "unseen views (side cameras), neutral clips",
}
FRONT_VIEW = "front"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class EvaluationItem:
    """One edit to score: a neutral input clip, the target emotion and its ground-truth edit."""

    set_name: str  # one of EVALUATION_SETS
    item_id: str  # unique within the set, file-name safe: <subject>_<view>_<clip>_<emotion>_l<level>
    subject: str  # who
    view: str  # camera view of the input (front, left_30, right_30)
    clip: str  # the neutral clip's name
    emotion: str  # target emotion (one of EMOTIONS)
    level: int  # target MEAD level of the truth (1..3)
    input_video: Path  # the neutral input .mp4
    input_truth: Path  # its per-frame truth .pt (coefficients, landmarks)
    truth_video: Path  # the ground-truth edited .mp4
    truth_truth: Path  # its per-frame truth .pt

    @property
    def alpha(self) -> float:
        """Target strength α = level / 3 (1.0 = MEAD's strongest level)."""
        return self.level / MAX_LEVEL

    @property
    def emotion_code(self) -> Tensor:
        """``(7,)`` float32 target code (eq. 2): ``α`` at the emotion, 0 elsewhere."""
        return emotion_code_from_alpha(self.emotion, self.alpha)

    @property
    def key(self) -> str:
        """``<set>/<item_id>``: the item's key in rows and file names."""
        return f"{self.set_name}/{self.item_id}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (paths as strings)."""
        return {"set": self.set_name, "item": self.item_id, "subject": self.subject, "view": self.view,
                "clip": self.clip, "emotion": self.emotion, "level": self.level, "alpha": self.alpha,
                "input_video": str(self.input_video), "truth_video": str(self.truth_video)}


def safe_name(text: str) -> str:
    """``text`` with every run of characters other than ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    cleaned = _SAFE.sub("_", text).strip("_")
    if not cleaned:
        raise ValueError(f"cannot make a file name from {text!r}")
    return cleaned


def _source_clips(world: Any, set_name: str) -> list[Any]:
    """The neutral evaluation clips (ClipRecords) of one set, in the world's index order."""
    split = world.split
    if set_name == "seen":
        out = []
        for subject in split.train_subjects:
            held_out = set(split.held_out_neutral_clips.get(subject, ()))
            out += [r for r in world.eval_clips(view=FRONT_VIEW, subject=subject) if r.key.clip in held_out]
        return out
    if set_name == "unseen_subjects":
        unseen = set(split.unseen_subjects)
        return [r for r in world.eval_clips(view=FRONT_VIEW) if r.key.subject in unseen]
    if set_name == "unseen_views":
        return [r for r in world.eval_clips() if r.key.view != FRONT_VIEW]
    raise ValueError(f"unknown evaluation set {set_name!r}; sets: {', '.join(EVALUATION_SETS)}")


def _spread_order(items: list[EvaluationItem], num_clips: int) -> list[EvaluationItem]:
    """Reorder so every prefix covers emotions and clips evenly (a diagonal walk of the clip × emotion grid)."""
    clip_order: dict[tuple[str, str, str], int] = {}
    for item in items:
        clip_order.setdefault((item.subject, item.view, item.clip), len(clip_order))

    def rank(item: EvaluationItem) -> tuple[int, int, int]:
        c = clip_order[(item.subject, item.view, item.clip)]
        e = EMOTIONS.index(item.emotion)
        return ((c - e) % max(num_clips, 1), e, c)

    return sorted(items, key=rank)


def evaluation_items(
    world: Any,  # a SyntheticWorld
    set_name: str,  # one of EVALUATION_SETS
    *,
    emotions: Sequence[str] | None = None,  # target emotions (default: every emotion of the world)
    level: int | None = None,  # target level (default: the world's highest level)
    max_items: int | None = None,  # keep this many (a spread over emotions and clips); None: all
) -> list[EvaluationItem]:
    """The items of one evaluation set (see the module docstring); ``ValueError`` on unknown names."""
    preset = world.preset
    chosen = list(preset.emotions if emotions is None else emotions)
    unknown = [e for e in chosen if e not in preset.emotions]
    if unknown:
        raise ValueError(f"{world.root}: the world has no emotions {unknown} (it has {list(preset.emotions)})")
    level = max(preset.levels) if level is None else int(level)
    if level not in preset.levels:
        raise ValueError(f"{world.root}: the world has no level {level} (levels {list(preset.levels)})")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
    sources = _source_clips(world, set_name)
    items = []
    for source in sources:
        key = source.key
        if key.emotion != NEUTRAL:
            raise ValueError(f"{source.video_path}: evaluation source clips must be neutral, got {key.emotion}")
        for emotion in chosen:
            edit = world.edit(source, emotion, level)  # KeyError when the world lacks the truth
            items.append(EvaluationItem(
                set_name=set_name, item_id=safe_name(f"{key.subject}_{key.view}_{key.clip}_{emotion}_l{level}"),
                subject=key.subject, view=key.view, clip=key.clip, emotion=emotion, level=level,
                input_video=source.video_path, input_truth=source.truth_path, truth_video=edit.video_path,
                truth_truth=edit.truth_path,
            ))
    items = _spread_order(items, len(sources))
    return items if max_items is None else items[:max_items]


def evaluation_sets(
    world: Any,  # a SyntheticWorld
    sets: Sequence[str] = EVALUATION_SETS,  # which sets
    *,
    max_items: int | None = None,  # per set
) -> dict[str, list[EvaluationItem]]:
    """``{set name: items}`` for every requested set (an empty set — e.g. no side views — stays empty)."""
    unknown = [s for s in sets if s not in EVALUATION_SETS]
    if unknown:
        raise ValueError(f"unknown evaluation sets {unknown}; sets: {', '.join(EVALUATION_SETS)}")
    return {s: evaluation_items(world, s, max_items=max_items) for s in sets}


__all__ = [
    "EVALUATION_SETS",
    "EvaluationItem",
    "SET_TITLES",
    "evaluation_items",
    "evaluation_sets",
    "safe_name",
]
