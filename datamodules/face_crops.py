"""DataModule of aligned face crops with emotion labels and targets: the image-level baselines (METHOD.md §6).

Reads the ``crop`` field of a ``frames`` cache (preprocess stage ``align``,
``<output_dir>/frames``: uint8 (3, S, S) aligned crops; metadata ``subject``, ``emotion``,
``level``, ``view``, ``frame`` and the clip id) for StarGAN (:mod:`lightning_modules.stargan`)
and ExprGAN (:mod:`lightning_modules.exprgan`). Records are kept by ``data.filter`` and
dropped by ``data.exclude`` (e.g. ``{view: front}``, ``{subject: [unseen...]}``) exactly as
the texture DataModules do; validation (optional) holds out ``val_fraction`` of every
subject's clips or the explicit ``val_keys``
(:func:`datamodules.subject_textures.split_within_subjects`).

Every sample is a dict:

- ``image`` uint8 (C, R, R) — the crop, resized to ``data.resolution`` (``area``, or
  antialiased ``bilinear`` / ``bicubic``; 0 = the cache's side), flipped with ``hflip``;
- ``emotion_code`` (E_t,) float32 — its true code e_o (eq. 2: ``level / 3`` at its emotion,
  zeros for neutral);
- ``target_code`` (E_t,) float32 — a target ê. **Unpaired** (``paired=false``, StarGAN):
  drawn at random as the geometry editor's targets
  (:func:`datamodules.coefficients.sample_target_codes`: neutral with probability
  ``neutral_target_prob``, else one emotion of ``target_emotions`` at a continuous level in
  ``(0, max_target_level]`` with probability ``continuous_level_prob``, else at MEAD level 1,
  2 or 3). **Paired** (``paired=true``, ExprGAN): the code of a real frame, see below;
- ``target_image`` uint8 (C, R, R) — paired only: a frame **of the same subject** (and view)
  showing the target emotion and level: with probability ``self_target_prob`` the sample
  itself (ExprGAN's own reconstruction); else neutral with probability
  ``neutral_target_prob``, else an (emotion, level) drawn uniformly among those the
  subject has (emotions limited to ``target_emotions``). Among that subject's clips of the
  target, one with the same clip name (MEAD: same sentence number) is preferred, and in
  it the frame with the same ``frame`` index when it exists, else a random frame of it.
  The same flip is applied to both images;
- the record's metadata (``subject``, ``emotion``, ``level``, ``view``, ``frame``, ``clip``).

Targets of training samples are drawn afresh every time (torch's global RNG, seeded per
worker by Lightning); validation targets are drawn once from ``data.seed`` so every
validation pass sees the same edits. Training targets come from training records only;
validation targets may come from any kept record of the same subject.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.base import EmoeditDataModule
from datamodules.coefficients import record_emotions, sample_target_codes
from datamodules.subject_textures import split_within_subjects
from datamodules.textures import RESIZE_MODES, check_image_field, resize_image, select_records
from emoedit.data.cache import CacheDataset, CacheError, CacheReader, RecordIndex, ShardLocalSampler
from emoedit.editing.emotion_code import (
    EMOTIONS,
    MAX_LEVEL,
    NEUTRAL,
    NUM_EMOTIONS,
    canonical_emotion,
    emotion_codes_from_labels,
)

FRAMES_KIND = "frames"
FRAMES_VERSION = 1
IMAGE_KEY = "image"  # uint8 (C, R, R)
EMOTION_KEY = "emotion_code"  # (E_t,) e_o
TARGET_KEY = "target_code"  # (E_t,) ê
TARGET_IMAGE_KEY = "target_image"  # uint8 (C, R, R), paired only
NEUTRAL_ID = -1  # emotion id of neutral records (record_emotions)


@dataclass
class FaceCropDataConfig:
    cache_dir: str = "data/cache/frames"  # folder of the frames cache (preprocess output_dir/frames)
    cache_kind: Optional[str] = FRAMES_KIND  # expected cache kind; None = any
    cache_version: Optional[int] = FRAMES_VERSION  # expected content version; None = any
    image_field: str = "crop"  # the uint8 (C, S, S) crop field
    filter: dict[str, Any] = field(default_factory=dict)  # keep records whose metadata match, e.g. {view: front}
    exclude: dict[str, Any] = field(default_factory=dict)  # drop records, e.g. {subject: [unseen ids]}
    resolution: int = 0  # side R of the served crops; 0 = the cache's (the run configs use ${model.resolution})
    resize_mode: str = "area"  # when the cache's size differs: area | bilinear | bicubic (antialiased)
    hflip: bool = False  # random horizontal flips (image and paired target together)
    paired: bool = False  # serve a real target frame of the same subject (ExprGAN); false: random codes (StarGAN)
    self_target_prob: float = 0.0  # paired: probability the target is the sample itself
    neutral_target_prob: float = 0.1  # probability of a neutral target
    continuous_level_prob: float = 0.5  # unpaired: probability of a continuous target level (else 1, 2 or 3)
    max_target_level: float = 3.0  # unpaired: continuous target levels ~ U(0, max_target_level]
    target_emotions: list[str] = field(default_factory=list)  # emotions drawn as targets; empty = all 7
    val_fraction: float = 0.0  # fraction of every subject's clips held out for validation
    val_keys: list[str] = field(default_factory=list)  # explicit validation clip ids (over val_fraction)
    batch_size: int = 16  # training batch size per process
    val_batch_size: Optional[int] = None  # validation batch size; None = batch_size
    num_workers: int = 0  # DataLoader worker processes
    pin_memory: bool = False  # pin host memory (GPU training)
    seed: int = 0  # seed of the split, the shuffling and the validation targets
    max_cached_shards: int = 8  # shards kept in memory per worker
    shards_per_block: int = 8  # shards mixed together by the shuffling sampler
    verify_checksums: bool = True  # verify each shard's SHA-256 on first load


# --------------------------------------------------------------------------- pairing


def _codes(emotion_id: int, level: int) -> Tensor:
    """(E_t,) float32 eq. 2 code of one label (emotion id −1 = neutral → zeros)."""
    code = torch.zeros(NUM_EMOTIONS)
    if emotion_id >= 0:
        code[emotion_id] = level / MAX_LEVEL
    return code


class TargetPairs:
    """For a record, a frame of the same subject and view at another (emotion, level) (module docstring).

    Built over the *pool* of records targets may come from; per clip (not per record) tables
    in Python, per record columns as tensors. ``draw`` returns ``(pool position, code)``.
    """

    def __init__(
        self,
        pool: RecordIndex,  # records targets are drawn from (same reader as the queries)
        *,
        source: str,  # the cache folder, for messages
        target_emotions: tuple[int, ...],  # indices into EMOTIONS allowed as emotional targets
    ) -> None:
        emotion_ids, levels = record_emotions(pool, source=source)
        self.target_emotions = frozenset(target_emotions)
        clip_codes = pool.columns["clip"]
        self.frames = pool.columns["frame"] if "frame" in pool.names else torch.zeros(len(pool), dtype=torch.int64)
        unique_clips, inverse = torch.unique(clip_codes, return_inverse=True)
        order = torch.argsort(inverse, stable=True)
        counts = torch.bincount(inverse, minlength=len(unique_clips))
        self.clip_order = order  # pool positions grouped by clip
        self.clip_start = torch.cumsum(counts, 0) - counts
        self.clip_count = counts
        first = order[self.clip_start]  # one record per clip
        views = pool.columns["view"] if "view" in pool.names else torch.zeros(len(pool), dtype=torch.int64)
        clip_vocab = pool.vocab["clip"]
        self.combos: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)  # (subject, view) → combos
        self.clips_of: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)  # (s, v, emo, lvl) → clips
        self.named: dict[tuple[int, int, int, int, str], list[int]] = defaultdict(list)  # ... + clip name → clips
        for clip, position in enumerate(first.tolist()):
            subject, view = int(pool.columns["subject"][position]), int(views[position])
            emotion = int(emotion_ids[position])
            level = 0 if emotion == NEUTRAL_ID else int(levels[position])
            key = (subject, view, emotion, level)
            if not self.clips_of[key]:
                self.combos[(subject, view)].append((emotion, level))
            self.clips_of[key].append(clip)
            name = str(clip_vocab[int(unique_clips[clip])]).rsplit("/", 1)[-1]
            self.named[key + (name,)].append(clip)
        self.clip_index = {int(code): i for i, code in enumerate(unique_clips.tolist())}

    def _pick(self, items: list[Any], generator: torch.Generator | None) -> Any:
        return items[int(torch.randint(len(items), (1,), generator=generator))]

    def draw(
        self,
        *,
        subject: int,  # subject vocab code of the query
        view: int,  # view vocab code (0 without view metadata)
        clip_name: str,  # the query clip's own name (last part of its id)
        frame: int,  # the query's frame index
        neutral_prob: float,  # probability of a neutral target
        generator: torch.Generator | None = None,  # random source
    ) -> tuple[int, Tensor] | None:
        """A target ``(pool position, (E_t,) code)``, or None when the subject has no frame in the pool."""
        combos = self.combos.get((subject, view))
        if not combos:
            return None
        neutral = [c for c in combos if c[0] == NEUTRAL_ID]
        emotional = [c for c in combos if c[0] != NEUTRAL_ID and c[0] in self.target_emotions]
        wants_neutral = float(torch.rand((), generator=generator)) < neutral_prob
        options = neutral if (wants_neutral and neutral) or not emotional else emotional
        options = options or combos
        emotion, level = self._pick(options, generator)
        key = (subject, view, emotion, level)
        clip = self._pick(self.named.get(key + (clip_name,)) or self.clips_of[key], generator)
        start, count = int(self.clip_start[clip]), int(self.clip_count[clip])
        positions = self.clip_order[start : start + count]
        same = torch.nonzero(self.frames[positions] == frame).flatten()
        if len(same):
            position = int(positions[same[0]])
        else:
            position = int(positions[int(torch.randint(count, (1,), generator=generator))])
        return position, _codes(emotion, level)


# --------------------------------------------------------------------------- dataset


def positions_in(
    index: RecordIndex,  # records to look up
    pool: RecordIndex,  # records of the same reader that contain them
) -> Tensor:
    """``(len(index),)`` int64: the position in ``pool`` of every record of ``index`` (same shard and row)."""
    width = int(max(int(index.row.max()) if len(index) else 0, int(pool.row.max()) if len(pool) else 0)) + 1
    pool_keys = pool.shard * width + pool.row
    keys = index.shard * width + index.row
    order = torch.argsort(pool_keys)
    found = torch.searchsorted(pool_keys[order], keys).clamp(max=max(len(pool) - 1, 0))
    positions = order[found] if len(pool) else found
    if len(index) and (not len(pool) or not torch.equal(pool_keys[positions], keys)):
        raise CacheError("positions_in: some records are not in the pool")
    return positions


class FaceCropDataset(Dataset):
    """Face crops with their code and a target (see the module docstring)."""

    def __init__(
        self,
        reader: CacheReader,  # the opened cache
        *,
        index: RecordIndex,  # records served
        pool: RecordIndex | None = None,  # paired: records targets come from (default: index)
        image_field: str = "crop",  # the uint8 (C, S, S) field
        resolution: int = 0,  # served side R (0: the cache's)
        resize_mode: str = "area",  # area | bilinear | bicubic
        hflip: bool = False,  # random horizontal flips
        paired: bool = False,  # serve target frames (ExprGAN)
        self_target_prob: float = 0.0,  # paired: probability the target is the sample itself
        neutral_target_prob: float = 0.1,  # probability of a neutral target
        continuous_level_prob: float = 0.5,  # unpaired: probability of a continuous level
        max_target_level: float = 3.0,  # unpaired: continuous levels ~ U(0, max)
        target_emotions: tuple[int, ...] = tuple(range(NUM_EMOTIONS)),  # indices into EMOTIONS
        seed: Optional[int] = None,  # None: fresh draws (training); int: fixed draws (validation)
        max_cached_shards: int = 8,  # LRU size per process, in shards
    ) -> None:
        source = str(reader.root)
        self.channels, self.source_size = check_image_field(reader, image_field)
        self.image_field = image_field
        self.resolution = resolution or self.source_size
        self.resize_mode, self.hflip, self.paired = resize_mode, bool(hflip), bool(paired)
        self._index = index
        self.pool = index if pool is None or not paired else pool
        # one reader of the pool (served records are part of it): one LRU for samples and targets
        self.records = CacheDataset(reader, fields=(image_field,), index=self.pool, max_cached_shards=max_cached_shards,
                                    with_meta=False)
        self.in_pool = positions_in(index, self.pool) if self.pool is not index else torch.arange(len(index))
        emotion_ids, levels = record_emotions(index, source=source)
        self.emotion_ids = emotion_ids
        self.emotion_codes = emotion_codes_from_labels(emotion_ids, levels).float()  # (R, E_t)
        self.self_target_prob, self.neutral_target_prob = float(self_target_prob), float(neutral_target_prob)
        self.target_options = dict(neutral_prob=float(neutral_target_prob), continuous_prob=float(continuous_level_prob),
                                   max_level=float(max_target_level), emotions=tuple(int(e) for e in target_emotions))
        self.pairs: TargetPairs | None = None
        if self.paired:
            self.pairs = TargetPairs(self.pool, source=source, target_emotions=tuple(target_emotions))
        self.fixed: list[tuple[int | None, Tensor]] | None = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            self.fixed = [self._draw(p, generator) for p in range(len(index))]

    @property
    def index(self) -> RecordIndex:
        return self._index

    def __len__(self) -> int:
        return len(self._index)

    def _draw(self, position: int, generator: torch.Generator | None) -> tuple[int | None, Tensor]:
        """``(pool position of the target or None for the sample itself / unpaired, target code)``."""
        if not self.paired:
            return None, sample_target_codes(1, generator=generator, **self.target_options)[0]
        if float(torch.rand((), generator=generator)) < self.self_target_prob:
            return None, self.emotion_codes[position]
        index, pairs = self._index, self.pairs
        assert pairs is not None
        view = int(index.columns["view"][position]) if "view" in index.names else 0
        frame = int(index.columns["frame"][position]) if "frame" in index.names else 0
        name = str(index.value("clip", position)).rsplit("/", 1)[-1]
        drawn = pairs.draw(subject=int(index.columns["subject"][position]), view=view, clip_name=name, frame=frame,
                           neutral_prob=self.neutral_target_prob, generator=generator)
        if drawn is None:  # the subject has no frame in the pool: reconstruct itself
            return None, self.emotion_codes[position]
        return drawn

    def _image(self, pool_position: int) -> Tensor:
        image = self.records[pool_position][self.image_field]
        return resize_image(image, self.resolution, self.resize_mode)

    def __getitem__(self, position: int) -> dict[str, Any]:
        if not -len(self) <= position < len(self):
            raise IndexError(f"record {position} out of range for {len(self)} records")
        position %= len(self)
        target_position, target_code = self.fixed[position] if self.fixed is not None else self._draw(position, None)
        image = self._image(int(self.in_pool[position]))
        sample: dict[str, Any] = {IMAGE_KEY: image, EMOTION_KEY: self.emotion_codes[position].clone(),
                                  TARGET_KEY: target_code.clone()}
        if self.paired:
            sample[TARGET_IMAGE_KEY] = image if target_position is None else self._image(target_position)
        if self.hflip and bool(torch.rand(()) < 0.5):
            for key in (IMAGE_KEY, TARGET_IMAGE_KEY):
                if key in sample:
                    sample[key] = sample[key].flip(-1)
        for key in (IMAGE_KEY, TARGET_IMAGE_KEY):
            if key in sample:
                sample[key] = sample[key].contiguous()
        sample.update(self._index.meta(position))
        return sample


# --------------------------------------------------------------------------- datamodule


def target_emotion_ids(names: list[str]) -> tuple[int, ...]:
    """Indices into EMOTIONS of ``data.target_emotions`` (empty = all); neutral is refused."""
    if not names:
        return tuple(range(NUM_EMOTIONS))
    ids = []
    for name in names:
        canonical = canonical_emotion(name)
        if canonical == NEUTRAL:
            raise ValueError("data.target_emotions lists 'neutral'; use data.neutral_target_prob for neutral targets")
        ids.append(EMOTIONS.index(canonical))
    return tuple(sorted(set(ids)))


class FaceCropDataModule(EmoeditDataModule[FaceCropDataConfig]):
    """Train / validation loaders of labelled face crops with targets (see the module docstring)."""

    CONFIG_CLS = FaceCropDataConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        problems = []
        if cfg.resize_mode not in RESIZE_MODES:
            problems.append(f"data.resize_mode must be one of {RESIZE_MODES}, got {cfg.resize_mode!r}")
        if cfg.resolution < 0 or cfg.batch_size < 1:
            problems.append("data.resolution must be >= 0 and data.batch_size >= 1")
        for name in ("self_target_prob", "neutral_target_prob", "continuous_level_prob"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                problems.append(f"data.{name} must lie in [0, 1], got {getattr(cfg, name)}")
        if not cfg.max_target_level > 0:
            problems.append(f"data.max_target_level must be > 0, got {cfg.max_target_level}")
        try:
            self.target_emotions = target_emotion_ids(list(cfg.target_emotions))
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise CacheError("face crop data config: " + "; ".join(problems))
        self.reader: CacheReader | None = None
        self.index: RecordIndex | None = None  # every kept record (train + validation)
        self.train_index: RecordIndex | None = None
        self.val_index: RecordIndex | None = None
        self.channels: int | None = None  # C, known after setup()
        self.source_size: int | None = None  # the cache's crop side S, known after setup()

    def setup(self, stage: str | None = None) -> None:
        if self.reader is not None:
            return
        cfg = self.config
        reader = CacheReader.open(cfg.cache_dir, kind=cfg.cache_kind, version=cfg.cache_version,
                                  verify_checksums=cfg.verify_checksums)
        source = str(reader.root)
        self.channels, self.source_size = check_image_field(reader, cfg.image_field)
        index = select_records(reader.records(), keep=dict(cfg.filter), drop=dict(cfg.exclude), source=source)
        if len(index) == 0:
            raise CacheError(f"{source}: no records after filtering (filter {dict(cfg.filter)}, "
                             f"exclude {dict(cfg.exclude)})")
        record_emotions(index, source=source)  # subject / emotion / level metadata present and valid
        if cfg.val_fraction > 0 or cfg.val_keys:
            val = split_within_subjects(index, split_by="clip", val_fraction=cfg.val_fraction,
                                        val_keys=list(cfg.val_keys), seed=cfg.seed)
        else:
            val = torch.zeros(len(index), dtype=torch.bool)
        train_index, val_index = index.select(~val), index.select(val)
        if len(train_index) < cfg.batch_size:
            raise CacheError(f"{source}: {len(train_index)} training records after filtering and the split, "
                             f"fewer than one batch of {cfg.batch_size}")
        self.index, self.train_index, self.val_index = index, train_index, val_index
        self.reader = reader

    def _dataset(self, index: RecordIndex, *, pool: RecordIndex, hflip: bool, seed: Optional[int]) -> FaceCropDataset:
        assert self.reader is not None, "call setup() first"
        cfg = self.config
        return FaceCropDataset(
            self.reader, index=index, pool=pool, image_field=cfg.image_field, resolution=cfg.resolution,
            resize_mode=cfg.resize_mode, hflip=hflip, paired=cfg.paired, self_target_prob=cfg.self_target_prob,
            neutral_target_prob=cfg.neutral_target_prob, continuous_level_prob=cfg.continuous_level_prob,
            max_target_level=cfg.max_target_level, target_emotions=self.target_emotions, seed=seed,
            max_cached_shards=cfg.max_cached_shards,
        )

    def train_dataset(self) -> FaceCropDataset:
        """Training samples (targets drawn afresh from the training records)."""
        assert self.train_index is not None, "call setup() first"
        return self._dataset(self.train_index, pool=self.train_index, hflip=self.config.hflip, seed=None)

    def val_dataset(self) -> FaceCropDataset:
        """Validation samples (targets drawn once from ``data.seed``, from any kept record)."""
        assert self.val_index is not None and self.index is not None, "call setup() first"
        return self._dataset(self.val_index, pool=self.index, hflip=False, seed=self.config.seed)

    def train_dataloader(self) -> DataLoader:
        cfg = self.config
        dataset = self.train_dataset()
        sampler = ShardLocalSampler(dataset.index, shards_per_block=cfg.shards_per_block, seed=cfg.seed)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                          drop_last=True, pin_memory=cfg.pin_memory, persistent_workers=cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        assert self.val_index is not None, "call setup() first"
        if len(self.val_index) == 0:
            return []
        cfg = self.config
        return DataLoader(self.val_dataset(), batch_size=cfg.val_batch_size or cfg.batch_size, shuffle=False,
                          num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
                          persistent_workers=cfg.num_workers > 0)


__all__ = [
    "EMOTION_KEY",
    "IMAGE_KEY",
    "TARGET_IMAGE_KEY",
    "TARGET_KEY",
    "FaceCropDataConfig",
    "FaceCropDataModule",
    "FaceCropDataset",
    "TargetPairs",
    "positions_in",
    "target_emotion_ids",
]
