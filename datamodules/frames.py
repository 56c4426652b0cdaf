"""DataModule over a ``frames`` cache: aligned face crops + landmarks (+ true coefficients).

The cache is written by the preprocessing through :class:`emoedit.data.cache.CacheWriter`
with kind :data:`FRAMES_KIND`, version :data:`FRAMES_VERSION` and fields

- ``crop``        uint8   (3, S, S)  aligned RGB crop;
- ``landmarks``   float32 (68, 2)    iBUG landmarks in crop pixels;
- ``transform``   float32 (8,)       :meth:`emoedit.data.alignment.CropTransform.as_tensor`;
- ``coeffs_true`` float32 (L,)       optional: true coefficients (synthetic world);

and metadata such as ``subject``, ``emotion``, ``level``, ``view``, ``frame`` (each record's
clip id is the reserved ``clip`` column). Samples are dicts: ``crop`` float (3, S, S) in
[0, 1] (after the optional colour jitter), ``landmarks``, ``transform``, ``coeffs_true``
when present, and the metadata values.

Train / validation split: by ``clip`` or by ``subject`` (every record of a clip / subject
on the same side), either the explicit ``val_keys`` or a seeded random ``val_fraction``
of the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.base import EmoeditDataModule
from emoedit.data.cache import CacheDataset, CacheError, CacheReader, RecordIndex, ShardLocalSampler

FRAMES_KIND = "frames"
FRAMES_VERSION = 1
# Required fields: name -> (dtype, per-record shape with None for the crop size S).
FRAMES_FIELDS: dict[str, tuple[str, tuple[Optional[int], ...]]] = {
    "crop": ("uint8", (3, None, None)),
    "landmarks": ("float32", (68, 2)),
    "transform": ("float32", (8,)),
}
TRUTH_FIELD = "coeffs_true"
SPLIT_KEYS = ("clip", "subject")


@dataclass
class FrameDataConfig:
    cache_dir: str = "data/cache/frames"  # folder of the "frames" cache
    split_by: str = "clip"  # "clip" or "subject": the unit kept whole on one side of the split
    val_fraction: float = 0.1  # fraction of clips/subjects for validation (when val_keys is empty)
    val_keys: list[str] = field(default_factory=list)  # explicit validation clips/subjects
    views: list[str] = field(default_factory=list)  # keep only these views (metadata "view"); empty = all
    batch_size: int = 16  # training batch size per process
    val_batch_size: Optional[int] = None  # validation batch size; None = batch_size
    num_workers: int = 0  # DataLoader worker processes
    color_jitter: float = 0.0  # max relative brightness / contrast / saturation change (training only); 0 = off
    seed: int = 0  # seed of the split and of the shard-local shuffling
    max_cached_shards: int = 8  # shards kept in memory per worker
    shards_per_block: int = 8  # shards mixed together by the shuffling sampler
    verify_checksums: bool = True  # verify each shard's SHA-256 on first load


def color_jitter(
    image: Tensor,  # (3, H, W) float in [0, 1]
    strength: float,  # maximum relative change of brightness, contrast and saturation
    generator: torch.Generator | None = None,  # random source (None: torch's global one)
) -> Tensor:
    """Random brightness, contrast and saturation factors in ``[1 − s, 1 + s]``; result clamped to [0, 1]."""
    if strength <= 0:
        return image
    factors = 1.0 + strength * (2.0 * torch.rand(3, generator=generator) - 1.0)
    out = image * factors[0]
    mean = out.mean()
    out = (out - mean) * factors[1] + mean
    gray = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]).unsqueeze(0)
    out = (out - gray) * factors[2] + gray
    return out.clamp(0.0, 1.0)


class FrameDataset(Dataset):
    """Records of a frames cache as training samples (see the module docstring)."""

    def __init__(
        self,
        reader: CacheReader,  # the opened frames cache
        *,
        index: RecordIndex,  # the records to serve
        jitter: float = 0.0,  # colour-jitter strength (0: off)
        max_cached_shards: int = 8,  # LRU size per process, in shards
    ) -> None:
        fields = [*FRAMES_FIELDS, *([TRUTH_FIELD] if TRUTH_FIELD in reader.spec.fields else [])]
        self.records = CacheDataset(reader, fields=fields, index=index, max_cached_shards=max_cached_shards)
        self.jitter = float(jitter)

    @property
    def index(self) -> RecordIndex:
        return self.records.index

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, position: int) -> dict[str, Any]:
        sample = self.records[position]
        crop = sample["crop"].float() / 255.0
        sample["crop"] = color_jitter(crop, self.jitter) if self.jitter > 0 else crop
        return sample


def check_frames_spec(reader: CacheReader) -> int:
    """Raise :class:`CacheError` unless the cache has the frames fields; return the crop size S."""
    spec = reader.spec
    for name, (dtype, shape) in FRAMES_FIELDS.items():
        found = spec.fields.get(name)
        if found is None:
            raise CacheError(f"{reader.root}: frames cache lacks field {name!r} (has {sorted(spec.fields)})")
        ok = found.dtype == dtype and len(found.shape) == len(shape)
        ok = ok and all(want is None or want == got for want, got in zip(shape, found.shape))
        if not ok:
            raise CacheError(f"{reader.root}: field {name!r} is {found.dtype} {found.shape}, expected {dtype} {shape}")
    crop_shape = spec.fields["crop"].shape
    if crop_shape[1] != crop_shape[2]:
        raise CacheError(f"{reader.root}: crops must be square, got {crop_shape}")
    truth = spec.fields.get(TRUTH_FIELD)
    if truth is not None and (truth.dtype != "float32" or len(truth.shape) != 1):
        raise CacheError(f"{reader.root}: field {TRUTH_FIELD!r} must be float32 (L,), got {truth.dtype} {truth.shape}")
    return int(crop_shape[1])


def split_keys(keys: list[str], *, val_fraction: float, val_keys: list[str], seed: int) -> set[str]:
    """The validation keys: ``val_keys`` if given (each must exist), else a seeded random
    ``round(val_fraction · n)`` of ``keys`` (at least one when the fraction is > 0 and n > 1)."""
    if val_keys:
        missing = sorted(set(val_keys) - set(keys))
        if missing:
            raise CacheError(f"val_keys not in the cache: {missing[:5]} (have {keys[:5]}...)")
        return set(val_keys)
    if not 0.0 <= val_fraction < 1.0:
        raise CacheError(f"val_fraction must be in [0, 1), got {val_fraction}")
    count = round(val_fraction * len(keys))
    if val_fraction > 0 and len(keys) > 1:
        count = max(1, count)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed)).tolist()
    return {sorted(keys)[i] for i in order[:count]}


class FrameDataModule(EmoeditDataModule[FrameDataConfig]):
    """Train / validation loaders over a frames cache (see the module docstring)."""

    CONFIG_CLS = FrameDataConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        if self.config.split_by not in SPLIT_KEYS:
            raise CacheError(f"data.split_by must be one of {SPLIT_KEYS}, got {self.config.split_by!r}")
        self.reader: CacheReader | None = None
        self.train_index: RecordIndex | None = None
        self.val_index: RecordIndex | None = None
        self.crop_size: int | None = None  # S, known after setup()
        self.coeff_size: int | None = None  # L of coeffs_true, None without truth

    def setup(self, stage: str | None = None) -> None:
        if self.reader is not None:
            return
        cfg = self.config
        reader = CacheReader.open(cfg.cache_dir, kind=FRAMES_KIND, version=FRAMES_VERSION,
                                  verify_checksums=cfg.verify_checksums)
        self.crop_size = check_frames_spec(reader)
        truth = reader.spec.fields.get(TRUTH_FIELD)
        self.coeff_size = None if truth is None else int(truth.shape[0])
        index = reader.records()
        if cfg.views:
            if "view" not in index.names:
                raise CacheError(f"{reader.root}: data.views is set but the cache has no 'view' metadata")
            index = index.where(view=list(cfg.views))
        if len(index) == 0:
            raise CacheError(f"{reader.root}: no records (after the view filter {list(cfg.views)})")
        if cfg.split_by not in index.names:
            raise CacheError(f"{reader.root}: cannot split by {cfg.split_by!r}: no such metadata ({list(index.names)})")
        keys = [str(k) for k in index.unique(cfg.split_by)]
        val = split_keys(keys, val_fraction=cfg.val_fraction, val_keys=list(cfg.val_keys), seed=cfg.seed)
        in_val = index.mask(cfg.split_by, sorted(val)) if val else torch.zeros(len(index), dtype=torch.bool)
        self.train_index = index.select(~in_val)
        self.val_index = index.select(in_val)
        if len(self.train_index) == 0:
            raise CacheError(f"{reader.root}: the split leaves no training records")
        self.reader = reader

    def _dataset(self, index: RecordIndex, jitter: float) -> FrameDataset:
        assert self.reader is not None, "call setup() first"
        return FrameDataset(self.reader, index=index, jitter=jitter, max_cached_shards=self.config.max_cached_shards)

    def train_dataloader(self) -> DataLoader:
        assert self.train_index is not None, "call setup() first"
        cfg = self.config
        dataset = self._dataset(self.train_index, cfg.color_jitter)
        sampler = ShardLocalSampler(dataset.index, shards_per_block=cfg.shards_per_block, seed=cfg.seed)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                          persistent_workers=cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        assert self.val_index is not None, "call setup() first"
        if len(self.val_index) == 0:
            return []
        cfg = self.config
        return DataLoader(self._dataset(self.val_index, 0.0), batch_size=cfg.val_batch_size or cfg.batch_size,
                          shuffle=False, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
