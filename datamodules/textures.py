"""DataModule of square uint8 images from a cache: UV textures for the t-GAN, mouth crops for the teeth t-GAN.

Reads one image field of a cache written by :mod:`emoedit.data.preprocess`:

- t-GAN (default): cache kind ``textures``, field ``uv_texture`` uint8 (3, T, T);
- teeth t-GAN: cache kind ``mouths``, field ``crop`` uint8 (3, M, M)
  (``data.cache_kind=mouths data.image_field=crop``).

Records can be kept by metadata (``data.filter``, e.g. ``{view: front}`` or
``{subject: [M003, M005]}``) and dropped by metadata (``data.exclude``, e.g. the unseen
subjects); values are one value, a list of values (see :meth:`RecordIndex.where`).

Samples are ``{"image": uint8 (C, R, R)}``: resized to ``data.resolution`` when the cache
holds another size (``resize_mode``: ``area``, or ``bilinear`` / ``bicubic`` with
antialiasing; the t-GAN run config sets it to ``${model.resolution}``), optionally
flipped horizontally (off by default: a UV layout is not left-right symmetric in general).
Images stay uint8 up to the device; the system converts them to [−1, 1].

Training order: :class:`ShardLocalSampler` (random, a few shards at a time), full batches
only (``drop_last``). Validation (for FID): the first ``val_images`` records of a seeded
permutation of the same records (a FID reference set drawn from the training data, as
usual for GANs); none when ``val_images`` is 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.base import EmoeditDataModule
from emoedit.data.cache import CacheDataset, CacheError, CacheReader, RecordIndex, ShardLocalSampler

log = logging.getLogger(__name__)

RESIZE_MODES = ("area", "bilinear", "bicubic")
IMAGE_KEY = "image"


@dataclass
class TextureDataConfig:
    cache_dir: str = "data/cache/textures"  # cache folder (preprocess output_dir/textures, or .../mouths)
    cache_kind: Optional[str] = "textures"  # expected cache kind ("mouths" for the teeth t-GAN); None = any
    cache_version: Optional[int] = 1  # expected content version of that kind; None = any
    image_field: str = "uv_texture"  # uint8 (C, S, S) field to train on ("crop" in a mouths cache)
    filter: dict[str, Any] = field(default_factory=dict)  # keep records whose metadata match, e.g. {view: front}
    exclude: dict[str, Any] = field(default_factory=dict)  # drop records matching any of these, e.g. {subject: [M003]}
    resolution: int = 0  # side R of the served images; 0 = the cache's size (the tgan config uses model.resolution)
    resize_mode: str = "area"  # when the cache's size differs: area | bilinear | bicubic (antialiased)
    hflip: bool = False  # random horizontal flips (x2 augmentation); off for UV textures
    batch_size: int = 32  # training batch size per process
    val_images: int = 0  # real images served for validation (FID reference); 0 = no validation data
    val_batch_size: Optional[int] = None  # validation batch size; None = batch_size
    num_workers: int = 0  # DataLoader worker processes
    pin_memory: bool = False  # pin host memory (GPU training)
    seed: int = 0  # seed of the shard-local shuffling and of the validation pick
    max_cached_shards: int = 8  # shards kept in memory per worker
    shards_per_block: int = 8  # shards mixed together by the shuffling sampler
    verify_checksums: bool = True  # verify each shard's SHA-256 on first load


def check_image_field(reader: CacheReader, name: str) -> tuple[int, int]:
    """Raise :class:`CacheError` unless ``name`` is a square uint8 ``(C, S, S)`` field; return ``(C, S)``."""
    spec = reader.spec.fields.get(name)
    if spec is None:
        raise CacheError(f"{reader.root}: no field {name!r} (fields: {sorted(reader.spec.fields)}); "
                         "set data.image_field")
    shape = tuple(spec.shape)
    if spec.dtype != "uint8" or len(shape) != 3 or shape[1] != shape[2] or shape[0] not in (1, 3):
        raise CacheError(f"{reader.root}: field {name!r} is {spec.dtype} {shape}; expected uint8 (C, S, S) "
                         "with C = 1 or 3")
    return int(shape[0]), int(shape[1])


def resize_image(image: Tensor, size: int, mode: str) -> Tensor:
    """``(C, S, S)`` uint8 → ``(C, size, size)`` uint8 (``area``, or antialiased ``bilinear`` / ``bicubic``)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    x = image.unsqueeze(0).float()
    if mode == "area":
        x = F.interpolate(x, size=(size, size), mode="area")
    else:
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    return x.squeeze(0).round().clamp(0, 255).to(torch.uint8)


class TextureDataset(Dataset):
    """Records of one image field as ``{"image": uint8 (C, R, R)}`` (see the module docstring)."""

    def __init__(
        self,
        reader: CacheReader,  # the opened cache
        *,
        index: RecordIndex,  # records to serve
        image_field: str = "uv_texture",  # the uint8 (C, S, S) field
        resolution: int = 0,  # served side R (0: the cache's size)
        resize_mode: str = "area",  # area | bilinear | bicubic
        hflip: bool = False,  # random horizontal flips
        max_cached_shards: int = 8,  # LRU size per process, in shards
    ) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"data.resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.channels, self.source_size = check_image_field(reader, image_field)
        self.image_field = image_field
        self.resolution = resolution or self.source_size
        self.resize_mode = resize_mode
        self.hflip = hflip
        self.records = CacheDataset(reader, fields=(image_field,), index=index, max_cached_shards=max_cached_shards,
                                    with_meta=False)

    @property
    def index(self) -> RecordIndex:
        return self.records.index

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, position: int) -> dict[str, Tensor]:
        image = self.records[position][self.image_field]
        image = resize_image(image, self.resolution, self.resize_mode)
        if self.hflip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return {IMAGE_KEY: image.contiguous()}


def _conditions(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            value = list(value)
        elif not isinstance(value, (str, int)) or isinstance(value, bool):
            raise CacheError(f"{where}.{name}: expected a str/int value or a list of them, got {value!r}")
        out[str(name)] = value
    return out


def select_records(index: RecordIndex, *, keep: dict[str, Any], drop: dict[str, Any], source: str) -> RecordIndex:
    """Records matching every ``keep`` condition and none of the ``drop`` conditions."""
    for name in [*keep, *drop]:
        if name not in index.names:
            raise CacheError(f"{source}: no metadata {name!r} to filter on (metadata: {list(index.names)})")
    if keep:
        index = index.where(**_conditions(keep, "data.filter"))
    for name, value in _conditions(drop, "data.exclude").items():
        index = index.select(~index.mask(name, value))
    return index


class TextureDataModule(EmoeditDataModule[TextureDataConfig]):
    """Loaders over one image field of a cache (see the module docstring)."""

    CONFIG_CLS = TextureDataConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.resize_mode not in RESIZE_MODES:
            raise CacheError(f"data.resize_mode must be one of {RESIZE_MODES}, got {cfg.resize_mode!r}")
        if cfg.resolution < 0 or cfg.batch_size < 1 or cfg.val_images < 0:
            raise CacheError("data.resolution and data.val_images must be >= 0 and data.batch_size >= 1")
        self.reader: CacheReader | None = None
        self.train_index: RecordIndex | None = None
        self.val_index: RecordIndex | None = None
        self.channels: int | None = None  # C, known after setup()
        self.source_size: int | None = None  # the cache's image side S, known after setup()

    def setup(self, stage: str | None = None) -> None:
        if self.reader is not None:
            return
        cfg = self.config
        reader = CacheReader.open(cfg.cache_dir, kind=cfg.cache_kind, version=cfg.cache_version,
                                  verify_checksums=cfg.verify_checksums)
        self.channels, self.source_size = check_image_field(reader, cfg.image_field)
        index = select_records(reader.records(), keep=dict(cfg.filter), drop=dict(cfg.exclude), source=str(reader.root))
        if len(index) < cfg.batch_size:
            raise CacheError(f"{reader.root}: {len(index)} records after filtering (filter {dict(cfg.filter)}, "
                             f"exclude {dict(cfg.exclude)}), fewer than one batch of {cfg.batch_size}")
        if cfg.resolution and cfg.resolution > self.source_size:
            log.warning("%s: %s images are %d px; upsampling them to %d px adds no detail (make the cache at %d)",
                        reader.root, cfg.image_field, self.source_size, cfg.resolution, cfg.resolution)
        self.train_index = index
        count = min(cfg.val_images, len(index))
        order = torch.randperm(len(index), generator=torch.Generator().manual_seed(cfg.seed))
        self.val_index = index.select(order[:count])
        self.reader = reader

    def _dataset(self, index: RecordIndex, *, hflip: bool) -> TextureDataset:
        assert self.reader is not None, "call setup() first"
        cfg = self.config
        return TextureDataset(self.reader, index=index, image_field=cfg.image_field, resolution=cfg.resolution,
                              resize_mode=cfg.resize_mode, hflip=hflip, max_cached_shards=cfg.max_cached_shards)

    def train_dataloader(self) -> DataLoader:
        assert self.train_index is not None, "call setup() first"
        cfg = self.config
        dataset = self._dataset(self.train_index, hflip=cfg.hflip)
        sampler = ShardLocalSampler(dataset.index, shards_per_block=cfg.shards_per_block, seed=cfg.seed)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                          drop_last=True, pin_memory=cfg.pin_memory, persistent_workers=cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        assert self.val_index is not None, "call setup() first"
        if len(self.val_index) == 0:
            return []
        cfg = self.config
        return DataLoader(self._dataset(self.val_index, hflip=False), batch_size=cfg.val_batch_size or cfg.batch_size,
                          shuffle=False, num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
                          persistent_workers=cfg.num_workers > 0)
