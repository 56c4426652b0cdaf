"""Textures with subject labels and a held-out split within the seen subjects.

The classifier's data (METHOD.md §3.5): :class:`~datamodules.textures.TextureDataModule`
(same cache, filtering and resizing) plus the subject label of every record and a
validation split **within the seen subjects**: ``split_by=clip`` keeps a seeded
``val_fraction`` of every subject's clips (or the explicit ``val_keys``) for validation;
``split_by=frame`` keeps the last ``val_fraction`` of every clip's frames.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from datamodules.textures import TextureDataConfig, TextureDataModule, TextureDataset
from emoedit.data.cache import CacheError, RecordIndex

SPLITS = ("clip", "frame")
LABEL_KEY = "subject"


@dataclass
class SubjectTextureDataConfig(TextureDataConfig):
    split_by: str = "clip"  # "clip": held-out clips of every subject; "frame": held-out last frames of every clip
    val_fraction: float = 0.2  # fraction of each subject's clips (clip) or of each clip's frames (frame) held out
    val_keys: list[str] = field(default_factory=list)  # split_by=clip: explicit validation clips (over val_fraction)
    label: str = LABEL_KEY  # metadata holding the class (subject name)


class LabelledTextureDataset(TextureDataset):
    """K's texture samples ``{"image": uint8 (C, R, R)}`` plus ``{"subject": str}`` (the ``label`` metadata)."""

    def __init__(self, *args: Any, label: str = LABEL_KEY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label = label

    def __getitem__(self, position: int) -> dict[str, Any]:
        sample: dict[str, Any] = dict(super().__getitem__(position))
        sample[LABEL_KEY] = str(self.index.value(self.label, position))
        return sample


def split_within_subjects(
    index: RecordIndex,  # records of the seen subjects
    *,
    split_by: str,  # "clip" or "frame"
    val_fraction: float,  # held-out fraction per subject (clip) or per clip (frame)
    val_keys: list[str],  # explicit validation clips (clip split)
    seed: int,  # seed of the clip choice
    label: str = LABEL_KEY,  # metadata of the class
) -> torch.Tensor:
    """(R,) bool: the validation records. Every subject keeps training data (see the module docstring)."""
    if split_by not in SPLITS:
        raise CacheError(f"data.split_by must be one of {SPLITS}, got {split_by!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise CacheError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
    clips = index.column("clip")
    if split_by == "clip":
        if val_keys:
            missing = sorted(set(val_keys) - set(clips))
            if missing:
                raise CacheError(f"data.val_keys: clips {missing[:5]} are not in the (filtered) cache")
            return index.mask("clip", list(val_keys))
        by_subject: dict[str, set[str]] = defaultdict(set)
        for clip, subject in zip(clips, index.column(label)):
            by_subject[str(subject)].add(str(clip))
        generator = torch.Generator().manual_seed(seed)
        chosen: list[str] = []
        for subject in sorted(by_subject):
            names = sorted(by_subject[subject])
            count = min(len(names) - 1, max(1, round(val_fraction * len(names)))) if val_fraction > 0 else 0
            order = torch.randperm(len(names), generator=generator).tolist()
            chosen += [names[i] for i in order[:count]]
        return index.mask("clip", chosen) if chosen else torch.zeros(len(index), dtype=torch.bool)
    frames = index.column("frame") if "frame" in index.names else list(range(len(index)))
    positions: dict[str, list[int]] = defaultdict(list)
    for position, clip in enumerate(clips):
        positions[str(clip)].append(position)
    val = torch.zeros(len(index), dtype=torch.bool)
    for members in positions.values():
        ordered = sorted(members, key=lambda p: frames[p])
        count = min(len(ordered) - 1, max(1, math.ceil(val_fraction * len(ordered)))) if val_fraction > 0 else 0
        if count > 0:
            val[ordered[len(ordered) - count:]] = True
    return val


class SubjectTextureDataModule(TextureDataModule):
    """Textures with subject labels and a held-out split within the seen subjects (module docstring)."""

    CONFIG_CLS = SubjectTextureDataConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._split_done = False
        self.subjects: tuple[str, ...] = ()  # subjects of the training records, sorted (after setup)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self._split_done:
            return
        cfg: SubjectTextureDataConfig = self.config  # type: ignore[assignment]
        assert self.train_index is not None and self.reader is not None
        index = self.train_index
        if cfg.label not in index.names:
            raise CacheError(f"{self.reader.root}: no {cfg.label!r} metadata to label the textures with")
        val = split_within_subjects(index, split_by=cfg.split_by, val_fraction=cfg.val_fraction,
                                    val_keys=list(cfg.val_keys), seed=cfg.seed, label=cfg.label)
        self.train_index, self.val_index = index.select(~val), index.select(val)
        if len(self.train_index) < cfg.batch_size:
            raise CacheError(f"{self.reader.root}: {len(self.train_index)} training records after the split, "
                             f"fewer than one batch of {cfg.batch_size}")
        self.subjects = tuple(str(s) for s in self.train_index.unique(cfg.label))
        self._split_done = True

    def _dataset(self, index: RecordIndex, *, hflip: bool) -> LabelledTextureDataset:
        assert self.reader is not None, "call setup() first"
        cfg: SubjectTextureDataConfig = self.config  # type: ignore[assignment]
        return LabelledTextureDataset(self.reader, index=index, image_field=cfg.image_field,
                                      resolution=cfg.resolution, resize_mode=cfg.resize_mode, hflip=hflip,
                                      max_cached_shards=cfg.max_cached_shards, label=cfg.label)


