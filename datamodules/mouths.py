"""DataModule of teeth-completion pairs from a ``mouths`` cache (METHOD.md §3.7): the teeth encoder's data.

Reads the cache written by :mod:`emoedit.data.preprocess` (kind ``mouths``): per record the
aligned mouth crop ``crop`` uint8 (3, M, M), the same crop with the teeth region removed
``crop_removed`` uint8 (3, M, M) and the teeth region ``mask`` bool (1, M, M). Samples are
dicts::

    {"crop_removed": uint8 (3, R, R),   # the encoder's input
     "crop":         uint8 (3, R, R),   # the target (the complete mouth)
     "mask":         float32 (1, R, R)} # the teeth region in [0, 1]

``R = data.resolution`` (0: the cache's ``M``; the teeth encoder sets it to the teeth
t-GAN's resolution). When ``R != M`` the crops are resized like the teeth t-GAN's data
(:func:`~datamodules.textures.resize_image`, ``data.resize_mode``) and the mask by area
averaging, so it holds the fraction of each served pixel that lies in the teeth region.
With ``data.hflip`` the three fields are flipped together (an aligned mouth flipped
left-right is still a mouth; on by default in ``configs/teeth_encoder.yaml``).

This is :class:`~datamodules.textures.TextureDataModule` (filters, excludes, shard-local
shuffling, validation pick, batching) with a dataset of triples instead of single images.
:attr:`MouthDataModule.mouth_settings` exposes the cache's ``mouth`` attributes (crop size,
mouth width, template, teeth dilation and fill) so the teeth encoder can store them in its
checkpoint for inference (:mod:`emoedit.editing.teeth_completion`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.textures import (
    RESIZE_MODES,
    TextureDataConfig,
    TextureDataModule,
    check_image_field,
    resize_image,
)
from emoedit.data.cache import CacheDataset, CacheError, CacheReader, RecordIndex

MOUTHS_KIND = "mouths"
CROP_KEY = "crop"  # the complete mouth (target)
REMOVED_KEY = "crop_removed"  # the teeth-removed mouth (encoder input)
MASK_KEY = "mask"  # the teeth region


@dataclass
class MouthDataConfig(TextureDataConfig):
    cache_dir: str = "data/cache/mouths"  # the mouths cache (preprocess output_dir/mouths)
    cache_kind: Optional[str] = MOUTHS_KIND  # expected cache kind
    image_field: str = CROP_KEY  # target field: uint8 (3, M, M) complete mouth crops
    input_field: str = REMOVED_KEY  # encoder input field: uint8 (3, M, M) teeth-removed crops
    mask_field: str = MASK_KEY  # teeth-region field: bool (1, M, M)


def resize_mask(mask: Tensor, size: int) -> Tensor:
    """``(1, S, S)`` bool/float mask → ``(1, size, size)`` float32 in [0, 1] (area average; exact when size == S)."""
    out = mask.float()
    if out.shape[-1] == size and out.shape[-2] == size:
        return out
    return F.interpolate(out.unsqueeze(0), size=(size, size), mode="area").squeeze(0).clamp(0.0, 1.0)


def check_mask_field(reader: CacheReader, name: str, size: int) -> None:
    """Raise :class:`CacheError` unless ``name`` is a bool ``(1, size, size)`` field."""
    spec = reader.spec.fields.get(name)
    if spec is None:
        raise CacheError(f"{reader.root}: no field {name!r} (fields: {sorted(reader.spec.fields)}); "
                         "set data.mask_field")
    if spec.dtype != "bool" or tuple(spec.shape) != (1, size, size):
        raise CacheError(f"{reader.root}: field {name!r} is {spec.dtype} {tuple(spec.shape)}; expected bool "
                         f"(1, {size}, {size}) like the crops")


class MouthPairDataset(Dataset):
    """Records of a mouths cache as ``{"crop_removed", "crop", "mask"}`` (see the module docstring)."""

    def __init__(
        self,
        reader: CacheReader,  # the opened mouths cache
        *,
        index: RecordIndex,  # records to serve
        image_field: str = CROP_KEY,  # uint8 (3, M, M) target crops
        input_field: str = REMOVED_KEY,  # uint8 (3, M, M) teeth-removed crops
        mask_field: str = MASK_KEY,  # bool (1, M, M) teeth region
        resolution: int = 0,  # served side R (0: the cache's M)
        resize_mode: str = "area",  # crops: area | bilinear | bicubic (the mask is always area-averaged)
        hflip: bool = False,  # random horizontal flips of the three fields together
        max_cached_shards: int = 8,  # LRU size per process, in shards
    ) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"data.resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        channels, size = check_image_field(reader, image_field)
        if check_image_field(reader, input_field) != (channels, size):
            raise CacheError(f"{reader.root}: fields {image_field!r} and {input_field!r} differ in shape")
        check_mask_field(reader, mask_field, size)
        self.channels, self.source_size = channels, size
        self.image_field, self.input_field, self.mask_field = image_field, input_field, mask_field
        self.resolution = resolution or size
        self.resize_mode = resize_mode
        self.hflip = hflip
        self.records = CacheDataset(reader, fields=(image_field, input_field, mask_field), index=index,
                                    max_cached_shards=max_cached_shards, with_meta=False)

    @property
    def index(self) -> RecordIndex:
        return self.records.index

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, position: int) -> dict[str, Tensor]:
        record = self.records[position]
        sample = {
            REMOVED_KEY: resize_image(record[self.input_field], self.resolution, self.resize_mode),
            CROP_KEY: resize_image(record[self.image_field], self.resolution, self.resize_mode),
            MASK_KEY: resize_mask(record[self.mask_field], self.resolution),
        }
        if self.hflip and bool(torch.rand(()) < 0.5):
            sample = {name: value.flip(-1) for name, value in sample.items()}
        return {name: value.contiguous() for name, value in sample.items()}


class MouthDataModule(TextureDataModule):
    """Loaders of (crop_removed, crop, mask) triples over a mouths cache (see the module docstring)."""

    CONFIG_CLS = MouthDataConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.mouth_settings: dict[str, Any] | None = None  # the cache's "mouth" attributes, after setup()

    def setup(self, stage: str | None = None) -> None:
        if self.reader is not None:
            return
        super().setup(stage)
        cfg = self.config
        assert self.reader is not None and self.source_size is not None
        size = check_image_field(self.reader, cfg.input_field)[1]
        if size != self.source_size:
            raise CacheError(f"{self.reader.root}: {cfg.input_field!r} is {size} px but {cfg.image_field!r} is "
                             f"{self.source_size} px")
        check_mask_field(self.reader, cfg.mask_field, self.source_size)
        settings = self.reader.attributes.get("mouth")
        self.mouth_settings = dict(settings) if isinstance(settings, Mapping) else None

    def _dataset(self, index: RecordIndex, *, hflip: bool) -> MouthPairDataset:  # type: ignore[override]
        assert self.reader is not None, "call setup() first"
        cfg = self.config
        return MouthPairDataset(self.reader, index=index, image_field=cfg.image_field, input_field=cfg.input_field,
                                mask_field=cfg.mask_field, resolution=cfg.resolution, resize_mode=cfg.resize_mode,
                                hflip=hflip, max_cached_shards=cfg.max_cached_shards)


__all__ = ["MouthDataConfig", "MouthDataModule", "MouthPairDataset", "resize_mask"]
