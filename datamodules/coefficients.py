"""DataModule over a ``coeffs`` cache: the geometry editor's unpaired training data (METHOD.md §3.6).

The cache is written by ``emoedit preprocess`` (stage ``reconstruct``, kind ``coeffs``;
see :mod:`emoedit.data.preprocess`): per frame ``coeffs`` float32 (L,) (the
reconstruction) and, on synthetic worlds, ``coeffs_true`` float32 (L,); metadata
``subject``, ``emotion``, ``level``, ``view``, ``frame`` and the clip id. ``data.coeff_field``
picks the field trained on (``coeffs_true`` = the synthetic-world ablation "train on truth").

Every sample (one frame) is a dict:

- ``coeffs`` (L,) float32 — the frame's full coefficients s_t (the system takes id/exp);
- ``emotion_code`` (E_t,) — its clip's true code e_o (eq. 2: ``level / 3`` at its emotion,
  zero for neutral), the cycle's way back;
- ``target_code`` (E_t,) — a random target ê: with probability ``neutral_target_prob`` the
  zero code, else one emotion (uniform over ``target_emotions``) at a level drawn, with
  probability ``continuous_level_prob``, uniformly from ``(0, max_target_level]``
  (intermediate intensities), else uniformly from MEAD's levels 1, 2, 3;
- ``reference`` and ``reference_fake`` (L,) — two independent random neutral frames of the
  same subject (each the mean of ``reference_average`` random neutral frames): the
  condition s_rt of the real input and s_rf of the fake one in the discriminator step;
- ``subject`` and ``clip`` (lists of str in a batch; a single sample has all metadata).

Batches are built whole (:meth:`CoefficientDataset.__getitems__`: one indexing and one
vectorised draw per batch, no per-sample Python work); with ``preload`` (default) the
coefficient field of the selected records is held in memory (``4·L`` bytes per frame:
~1 kB for BFM, so ~1 GB per million frames; ``preload=false`` streams shards instead).

Neutral references come from a *reference bank* built once in :meth:`setup`: up to
``max_references_per_subject`` (seeded random) neutral frames of every training subject,
read from the training records only (held-out clips never serve as references). A subject
without neutral training frames cannot be conditioned: ``missing_reference=drop`` removes
its records with a warning, ``error`` raises naming the subjects.

Records are kept by ``filter`` (e.g. ``{view: front}``) and dropped by ``exclude``
(e.g. ``{subject: [unseen...], clip: [held-out clips...]}``), as in the texture
DataModules. Validation (optional): ``val_fraction`` of every subject's clips, or the
explicit ``val_keys`` (clip ids), held out of training (see
:func:`datamodules.subject_textures.split_within_subjects`); validation targets and
references are drawn once (seeded), so every validation pass sees the same edits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.base import EmoeditDataModule
from datamodules.subject_textures import split_within_subjects
from datamodules.textures import select_records
from emoedit.data.cache import CacheDataset, CacheError, CacheReader, RecordIndex, ShardLocalSampler
from emoedit.editing.emotion_code import (
    EMOTIONS,
    MAX_LEVEL,
    NEUTRAL,
    NUM_EMOTIONS,
    canonical_emotion,
    emotion_codes_from_labels,
)
from emoedit.shape_checks import assert_shape

log = logging.getLogger(__name__)

COEFFS_KIND = "coeffs"
COEFFS_VERSION = 1
COEFF_FIELDS = ("coeffs", "coeffs_true")  # fields a coeffs cache may hold the coefficients in
REQUIRED_META = ("subject", "emotion", "level")
MISSING_REFERENCE = ("drop", "error")

COEFFS_KEY = "coeffs"  # (B, L) s_t
EMOTION_KEY = "emotion_code"  # (B, E_t) e_o
TARGET_KEY = "target_code"  # (B, E_t) ê
REFERENCE_KEY = "reference"  # (B, L) s_rt
REFERENCE_FAKE_KEY = "reference_fake"  # (B, L) s_rf


@dataclass
class CoefficientDataConfig:
    cache_dir: str = "data/cache/coeffs"  # folder of the coeffs cache (preprocess output_dir/coeffs)
    cache_kind: Optional[str] = COEFFS_KIND  # expected cache kind; None = any
    cache_version: Optional[int] = COEFFS_VERSION  # expected content version; None = any
    coeff_field: str = "coeffs"  # "coeffs" (reconstruction) or "coeffs_true" (synthetic truth ablation)
    filter: dict[str, Any] = field(default_factory=dict)  # keep records whose metadata match, e.g. {view: front}
    exclude: dict[str, Any] = field(default_factory=dict)  # drop records, e.g. {subject: [...], clip: [...]}
    missing_reference: str = "drop"  # subject without neutral training frames: "drop" (warn) or "error"
    preload: bool = True  # hold the selected records' coefficients in memory (4·L bytes each); false: stream
    max_references_per_subject: int = 1024  # neutral frames kept per subject in the reference bank
    reference_average: int = 1  # each reference = mean of this many random neutral frames (paper: 1)
    neutral_target_prob: float = 0.1  # probability of the neutral (zero) target code
    continuous_level_prob: float = 0.5  # probability of a continuous target level (else 1, 2 or 3)
    max_target_level: float = 3.0  # continuous target levels ~ U(0, max_target_level]
    target_emotions: list[str] = field(default_factory=list)  # emotions drawn as targets; empty = all 7
    val_fraction: float = 0.0  # fraction of every subject's clips held out for validation
    val_keys: list[str] = field(default_factory=list)  # explicit validation clip ids (over val_fraction)
    batch_size: int = 64  # training batch size per process
    val_batch_size: Optional[int] = None  # validation batch size; None = batch_size
    num_workers: int = 0  # DataLoader worker processes
    pin_memory: bool = False  # pin host memory (GPU training)
    seed: int = 0  # seed of the split, the reference bank, the shuffling and the validation targets
    max_cached_shards: int = 8  # shards kept in memory per worker
    shards_per_block: int = 8  # shards mixed together by the shuffling sampler
    verify_checksums: bool = True  # verify each shard's SHA-256 on first load


# --------------------------------------------------------------------------- labels and targets


def record_emotions(index: RecordIndex, *, source: str) -> tuple[Tensor, Tensor]:
    """``(emotion_ids (R,) int64, levels (R,) float32)`` of every record; emotion id −1 = neutral.

    Raises :class:`CacheError` for an unknown emotion name or an emotional record whose
    level is below 1 (eq. 2 would make it neutral).
    """
    for name in REQUIRED_META:
        if name not in index.names:
            raise CacheError(f"{source}: records lack {name!r} metadata (have {list(index.names)})")
    if "level" in index.vocab:
        raise CacheError(f"{source}: metadata 'level' must be an int (MEAD level), the cache stores str")
    vocab = index.vocab["emotion"]
    codes = index.columns["emotion"]
    lookup = torch.full((max(len(vocab), 1),), -1, dtype=torch.int64)
    for code in torch.unique(codes).tolist():  # only the emotions these records have
        name = vocab[code]
        try:
            canonical = canonical_emotion(name)
        except ValueError:
            raise CacheError(f"{source}: unknown emotion {name!r} in the cache; expected neutral or one of "
                             f"{', '.join(EMOTIONS)} (drop such records with data.exclude)") from None
        lookup[code] = -1 if canonical == NEUTRAL else EMOTIONS.index(canonical)
    emotion_ids = lookup[codes] if len(codes) else torch.zeros(0, dtype=torch.int64)
    levels = index.columns["level"].to(torch.float32)
    bad = (emotion_ids >= 0) & (levels < 1)
    if bool(bad.any()):
        position = int(torch.nonzero(bad)[0])
        raise CacheError(f"{source}: emotional record of clip {index.value('clip', position)!r} has level "
                         f"{int(levels[position])}; emotional records need a level >= 1 (MEAD 1..3)")
    return emotion_ids, levels


def sample_target_codes(
    count: int,  # number of codes N
    *,
    neutral_prob: float,  # probability of the zero code
    continuous_prob: float,  # probability of a continuous level (else a MEAD level 1..3)
    max_level: float,  # continuous levels ~ U(0, max_level]
    emotions: tuple[int, ...],  # indices into EMOTIONS to draw from (non-empty)
    generator: torch.Generator | None = None,  # random source (None: torch's global one)
) -> Tensor:
    """``(N, E_t)`` float32 random target codes (eq. 2): each one emotion at ``level / 3``, or zeros."""
    if not emotions:
        raise ValueError("sample_target_codes: emotions is empty")
    draws = torch.rand(count, 3, generator=generator)
    choice = torch.tensor(emotions, dtype=torch.int64)[torch.randint(len(emotions), (count,), generator=generator)]
    discrete = torch.randint(1, MAX_LEVEL + 1, (count,), generator=generator).float()
    continuous = max_level * (1.0 - draws[:, 2])  # (0, max_level]
    level = torch.where(draws[:, 1] < continuous_prob, continuous, discrete)
    level = torch.where(draws[:, 0] < neutral_prob, torch.zeros_like(level), level)
    codes = torch.zeros(count, NUM_EMOTIONS)
    codes[torch.arange(count), choice] = level / MAX_LEVEL
    return codes


def load_field(reader: CacheReader, index: RecordIndex, field_name: str) -> Tensor:
    """``(R, *shape)`` float32: one field of every record of ``index``, in index order (one read per shard)."""
    shape = tuple(reader.spec.fields[field_name].shape)
    out = torch.empty(len(index), *shape)
    for shard in torch.unique(index.shard).tolist():
        where = torch.nonzero(index.shard == shard).flatten()
        values = reader.load_shard(int(shard), (field_name,))[field_name]
        out[where] = values[index.row[where]].float()
    return out


# --------------------------------------------------------------------------- reference bank


@dataclass(frozen=True)
class ReferenceBank:
    """Neutral coefficients of every subject, in one tensor (subject ``i`` owns rows
    ``start[i] : start[i] + count[i]``)."""

    subjects: tuple[str, ...]  # subject names, sorted
    coeffs: Tensor  # (N, L) float32 neutral frames, grouped by subject
    start: Tensor  # (num_subjects,) int64 first row of each subject
    count: Tensor  # (num_subjects,) int64 rows of each subject (>= 1)

    def __post_init__(self) -> None:
        assert_shape(self.coeffs, (None, None), "ReferenceBank.coeffs")
        dims = assert_shape(self.start, ("S",), "ReferenceBank.start")
        assert_shape(self.count, ("S",), "ReferenceBank.count", dims)
        if len(self.subjects) != dims["S"]:
            raise ValueError(f"ReferenceBank: {len(self.subjects)} subjects but {dims['S']} ranges")

    def subject_index(self, name: str) -> int:
        """Row of ``name`` in :attr:`subjects`, or −1 when the bank has no neutral frame of it."""
        try:
            return self.subjects.index(name)
        except ValueError:
            return -1

    def rows_of(self, subject: int) -> Tensor:
        """``(count, L)`` the neutral frames of subject number ``subject``."""
        start = int(self.start[subject])
        return self.coeffs[start : start + int(self.count[subject])]

    def sample(
        self,
        subjects: Tensor,  # (N,) int64 indices into subjects
        *,
        average: int = 1,  # frames averaged per reference (drawn with replacement)
        generator: torch.Generator | None = None,  # random source
    ) -> Tensor:
        """``(N, L)`` float32: for each entry, the mean of ``average`` random neutral frames of its subject."""
        assert_shape(subjects, (None,), "subjects")
        draws = torch.rand(subjects.shape[0], average, generator=generator)
        offsets = (draws * self.count[subjects].unsqueeze(1)).long()
        offsets = torch.minimum(offsets, self.count[subjects].unsqueeze(1) - 1)
        return self.coeffs[self.start[subjects].unsqueeze(1) + offsets].mean(dim=1)


def build_reference_bank(
    reader: CacheReader,  # the opened cache
    index: RecordIndex,  # records allowed as references (the training records)
    *,
    coeff_field: str,  # field holding the coefficients
    max_per_subject: int,  # cap on the neutral frames kept per subject (seeded random subset)
    seed: int,  # seed of the subset
) -> ReferenceBank:
    """Read the neutral frames of every subject in ``index`` (one pass over their shards)."""
    emotion_ids, _ = record_emotions(index, source=str(reader.root))
    neutral = index.select(emotion_ids < 0)
    generator = torch.Generator().manual_seed(seed)
    subject_codes = neutral.columns["subject"]
    chosen: list[Tensor] = []
    names: list[str] = []
    for name in neutral.unique("subject"):
        code = neutral.vocab["subject"].index(name)
        positions = torch.nonzero(subject_codes == code).flatten()
        if len(positions) > max_per_subject:
            positions = positions[torch.randperm(len(positions), generator=generator)[:max_per_subject]].sort().values
        chosen.append(positions)
        names.append(str(name))
    width = int(reader.spec.fields[coeff_field].shape[0])
    if not chosen:
        return ReferenceBank(subjects=(), coeffs=torch.zeros(0, width), start=torch.zeros(0, dtype=torch.int64),
                             count=torch.zeros(0, dtype=torch.int64))
    count = torch.tensor([len(p) for p in chosen], dtype=torch.int64)
    coeffs = load_field(reader, neutral.select(torch.cat(chosen)), coeff_field)
    return ReferenceBank(subjects=tuple(names), coeffs=coeffs, start=torch.cumsum(count, 0) - count, count=count)


# --------------------------------------------------------------------------- dataset


def collate_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for :meth:`CoefficientDataset.__getitems__`, which already returns a batch."""
    return batch


class CoefficientDataset(Dataset):
    """Frames of a coeffs cache as geometry-editor samples (see the module docstring).

    Batched: the DataLoader calls :meth:`__getitems__` with a batch of positions and gets
    the whole batch (vectorised draws), to be used with :func:`collate_batch`;
    :meth:`__getitem__` gives one sample (with its metadata).
    """

    def __init__(
        self,
        reader: CacheReader,  # the opened cache
        *,
        index: RecordIndex,  # records to serve (every subject must be in the bank)
        bank: ReferenceBank,  # neutral references
        coeff_field: str = "coeffs",  # field holding the coefficients
        preload: bool = True,  # hold the field of every record in memory (else read shards through an LRU)
        reference_average: int = 1,  # neutral frames averaged per reference
        neutral_target_prob: float = 0.1,  # probability of a neutral target
        continuous_level_prob: float = 0.5,  # probability of a continuous target level
        max_target_level: float = 3.0,  # continuous levels ~ U(0, max)
        target_emotions: tuple[int, ...] = tuple(range(NUM_EMOTIONS)),  # indices into EMOTIONS
        seed: Optional[int] = None,  # None: fresh draws from the global RNG (training); int: fixed draws (validation)
        max_cached_shards: int = 8,  # LRU size per process, in shards (preload=False)
    ) -> None:
        source = str(reader.root)
        self._index = index
        self.coeff_field = coeff_field
        if preload:
            self.coeffs: Tensor | None = load_field(reader, index, coeff_field)
            self.records: CacheDataset | None = None
        else:
            self.coeffs = None
            self.records = CacheDataset(reader, fields=(coeff_field,), index=index, max_cached_shards=max_cached_shards,
                                        with_meta=False)
        emotion_ids, levels = record_emotions(index, source=source)
        self.emotion_codes = emotion_codes_from_labels(emotion_ids, levels)  # (R, E_t)
        lookup = torch.tensor([bank.subject_index(str(s)) for s in index.vocab["subject"]] or [-1], dtype=torch.int64)
        self.bank_rows = lookup[index.columns["subject"]] if len(index) else torch.zeros(0, dtype=torch.int64)
        if bool((self.bank_rows < 0).any()):
            missing = sorted({str(index.value("subject", int(p))) for p in torch.nonzero(self.bank_rows < 0).flatten()})
            raise CacheError(f"{source}: no neutral reference frames for subjects {missing[:10]}")
        self.bank = bank
        self.reference_average = int(reference_average)
        self.target_options = dict(neutral_prob=float(neutral_target_prob), continuous_prob=float(continuous_level_prob),
                                   max_level=float(max_target_level), emotions=tuple(int(e) for e in target_emotions))
        self.fixed: dict[str, Tensor] | None = None
        if seed is not None:  # every record's draws made once: each pass sees the same edits
            generator = torch.Generator().manual_seed(seed)
            self.fixed = self._draw(torch.arange(len(index)), generator)

    @property
    def index(self) -> RecordIndex:
        return self._index

    def __len__(self) -> int:
        return len(self._index)

    def _draw(self, positions: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        subjects = self.bank_rows[positions]
        return {
            REFERENCE_KEY: self.bank.sample(subjects, average=self.reference_average, generator=generator),
            REFERENCE_FAKE_KEY: self.bank.sample(subjects, average=self.reference_average, generator=generator),
            TARGET_KEY: sample_target_codes(len(positions), generator=generator, **self.target_options),
        }

    def __getitems__(self, positions: list[int]) -> dict[str, Any]:
        """A batch: ``coeffs``, ``reference``, ``reference_fake`` (N, L), ``emotion_code``,
        ``target_code`` (N, E_t), and ``subject`` / ``clip`` lists."""
        where = torch.as_tensor(positions, dtype=torch.int64)
        if self.coeffs is not None:
            coeffs = self.coeffs[where]
        else:
            assert self.records is not None
            coeffs = torch.stack([self.records[p][self.coeff_field].float() for p in positions])
        batch: dict[str, Any] = {COEFFS_KEY: coeffs, EMOTION_KEY: self.emotion_codes[where]}
        if self.fixed is not None:
            batch.update({key: value[where] for key, value in self.fixed.items()})
        else:
            batch.update(self._draw(where, None))
        for name in ("subject", "clip"):
            vocab = self._index.vocab[name]
            batch[name] = [vocab[c] for c in self._index.columns[name][where].tolist()]
        return batch

    def __getitem__(self, position: int) -> dict[str, Any]:
        """One sample (tensors without the batch axis) and all its metadata."""
        if not -len(self) <= position < len(self):
            raise IndexError(f"record {position} out of range for {len(self)} records")
        position = position % len(self)
        batch = self.__getitems__([position])
        sample = {key: value[0] for key, value in batch.items()}
        sample.update(self._index.meta(position))
        return sample


# --------------------------------------------------------------------------- datamodule


class CoefficientDataModule(EmoeditDataModule[CoefficientDataConfig]):
    """Train / validation loaders over a coeffs cache (see the module docstring)."""

    CONFIG_CLS = CoefficientDataConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        problems = []
        if cfg.coeff_field not in COEFF_FIELDS:
            problems.append(f"data.coeff_field must be one of {COEFF_FIELDS}, got {cfg.coeff_field!r}")
        if cfg.missing_reference not in MISSING_REFERENCE:
            problems.append(f"data.missing_reference must be one of {MISSING_REFERENCE}, got {cfg.missing_reference!r}")
        if cfg.max_references_per_subject < 1 or cfg.reference_average < 1 or cfg.batch_size < 1:
            problems.append("data.max_references_per_subject, data.reference_average and data.batch_size must be >= 1")
        for name in ("neutral_target_prob", "continuous_level_prob"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                problems.append(f"data.{name} must lie in [0, 1], got {getattr(cfg, name)}")
        if not cfg.max_target_level > 0:
            problems.append(f"data.max_target_level must be > 0, got {cfg.max_target_level}")
        try:
            self.target_emotions = self._target_emotions(list(cfg.target_emotions))
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise CacheError("coefficient data config: " + "; ".join(problems))
        self.reader: CacheReader | None = None
        self.train_index: RecordIndex | None = None
        self.val_index: RecordIndex | None = None
        self.bank: ReferenceBank | None = None
        self.coeff_size: int | None = None  # L, known after setup()
        self.dropped_subjects: tuple[str, ...] = ()  # subjects removed for lack of neutral frames

    @staticmethod
    def _target_emotions(names: list[str]) -> tuple[int, ...]:
        if not names:
            return tuple(range(NUM_EMOTIONS))
        ids = []
        for name in names:
            canonical = canonical_emotion(name)
            if canonical == NEUTRAL:
                raise ValueError("data.target_emotions lists 'neutral'; use data.neutral_target_prob for neutral targets")
            ids.append(EMOTIONS.index(canonical))
        return tuple(sorted(set(ids)))

    def setup(self, stage: str | None = None) -> None:
        if self.reader is not None:
            return
        cfg = self.config
        reader = CacheReader.open(cfg.cache_dir, kind=cfg.cache_kind, version=cfg.cache_version,
                                  verify_checksums=cfg.verify_checksums)
        source = str(reader.root)
        spec = reader.spec.fields.get(cfg.coeff_field)
        if spec is None:
            hint = " (coeffs_true exists only in caches of a synthetic world)" if cfg.coeff_field == "coeffs_true" else ""
            raise CacheError(f"{source}: no field {cfg.coeff_field!r}{hint}; fields: {sorted(reader.spec.fields)}")
        if spec.dtype != "float32" or len(spec.shape) != 1:
            raise CacheError(f"{source}: field {cfg.coeff_field!r} is {spec.dtype} {spec.shape}, expected float32 (L,)")
        index = select_records(reader.records(), keep=dict(cfg.filter), drop=dict(cfg.exclude), source=source)
        if len(index) == 0:
            raise CacheError(f"{source}: no records after filtering (filter {dict(cfg.filter)}, "
                             f"exclude {dict(cfg.exclude)})")
        record_emotions(index, source=source)  # validates emotions and levels early
        if cfg.val_fraction > 0 or cfg.val_keys:
            val = split_within_subjects(index, split_by="clip", val_fraction=cfg.val_fraction,
                                        val_keys=list(cfg.val_keys), seed=cfg.seed)
        else:
            val = torch.zeros(len(index), dtype=torch.bool)
        train_index, val_index = index.select(~val), index.select(val)
        bank = build_reference_bank(reader, train_index, coeff_field=cfg.coeff_field,
                                    max_per_subject=cfg.max_references_per_subject, seed=cfg.seed)
        subjects = {str(s) for s in index.unique("subject")}
        missing = sorted(subjects - set(bank.subjects))
        if missing:
            message = (f"{source}: subjects {missing[:10]}{' ...' if len(missing) > 10 else ''} have no neutral "
                       f"training frames to condition the geometry editor on (METHOD §3.6 needs a neutral "
                       f"reference of the same person)")
            if cfg.missing_reference == "error":
                raise CacheError(message + "; exclude them with data.exclude={subject: [...]}")
            log.warning("%s; their records are dropped (data.missing_reference=drop)", message)
            train_index = train_index.select(~train_index.mask("subject", missing))
            val_index = val_index.select(~val_index.mask("subject", missing))
        if len(train_index) < cfg.batch_size:
            raise CacheError(f"{source}: {len(train_index)} training records after filtering and the split, "
                             f"fewer than one batch of {cfg.batch_size}")
        self.train_index, self.val_index, self.bank = train_index, val_index, bank
        self.coeff_size = int(spec.shape[0])
        self.dropped_subjects = tuple(missing)
        self.reader = reader

    def _dataset(self, index: RecordIndex, *, seed: Optional[int]) -> CoefficientDataset:
        assert self.reader is not None and self.bank is not None, "call setup() first"
        cfg = self.config
        return CoefficientDataset(
            self.reader, index=index, bank=self.bank, coeff_field=cfg.coeff_field, preload=cfg.preload,
            reference_average=cfg.reference_average, neutral_target_prob=cfg.neutral_target_prob,
            continuous_level_prob=cfg.continuous_level_prob, max_target_level=cfg.max_target_level,
            target_emotions=self.target_emotions, seed=seed, max_cached_shards=cfg.max_cached_shards,
        )

    def train_dataset(self) -> CoefficientDataset:
        """The training samples (random targets and references from the global RNG)."""
        assert self.train_index is not None, "call setup() first"
        return self._dataset(self.train_index, seed=None)

    def train_dataloader(self) -> DataLoader:
        cfg = self.config
        dataset = self.train_dataset()
        sampler = ShardLocalSampler(dataset.index, shards_per_block=cfg.shards_per_block, seed=cfg.seed)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                          collate_fn=collate_batch, drop_last=True, pin_memory=cfg.pin_memory,
                          persistent_workers=cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        assert self.val_index is not None, "call setup() first"
        if len(self.val_index) == 0:
            return []
        cfg = self.config
        return DataLoader(self._dataset(self.val_index, seed=cfg.seed), batch_size=cfg.val_batch_size or cfg.batch_size,
                          shuffle=False, num_workers=cfg.num_workers, collate_fn=collate_batch,
                          pin_memory=cfg.pin_memory, persistent_workers=cfg.num_workers > 0)
