"""pSp-style editing of whole face images: the "pSp" baseline of METHOD.md §6.

The method's texture machinery, applied to aligned face crops instead of UV textures:

1. a StyleGAN2 on the crops — ``train.py psp_tgan`` (:class:`lightning_modules.tgan.TGANSystem`,
   ``configs/tgan.yaml`` with ``configs/baselines/psp_face_tgan.yaml`` merged over it);
2. a pSp encoder crop → W+ of that generator — ``train.py psp_encoder``
   (:class:`lightning_modules.texture_encoder.TextureEncoderSystem`, ``configs/texture_encoder.yaml``
   with ``configs/baselines/psp_face_encoder.yaml`` over it). Both read the ``crop`` field of the
   ``frames`` cache through :class:`datamodules.textures.TextureDataModule`
   (``data.cache_kind=frames data.image_field=crop``): no new training code;
3. **one global direction per emotion** (no subjects, no classifier)::

       d[j] = mean(W+ of every training crop of emotion j at level L)
            − mean(W+ of every neutral training crop)          (L = MAX_LEVEL by default)

   (:func:`run_psp_face_directions`; stored as an :class:`~emoedit.editing.directions.EditDirections`
   file with the single pseudo-subject :data:`GLOBAL_SUBJECT`);
4. the edit ``x = E(crop) + Σ_j α_j d[j]``, decoded by ``G`` (:class:`PSPFaceEditor`).

Running it (the baseline files hold ``run_name: psp_face``, the frames cache and the view
filter; add ``data.exclude.subject=[...]`` for the unseen subjects and any other override;
``experiment=`` files configure the two parts in ``psp_tgan:`` / ``psp_encoder:`` sections)::

    python train.py psp_tgan data.cache_dir=data/cache/mead/frames
    python train.py psp_encoder data.cache_dir=data/cache/mead/frames
    python -m emoedit.baselines.psp_face directions --cache data/cache/mead/frames \\
        --encoder runs/psp_encoder/psp_face/checkpoints/last.ckpt --out runs/psp_face_directions.pt

The encoder's crops are resized to the generator's resolution exactly as
the DataModule served them in training (``area``); so are the crops of the directions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from emoedit.atomic_io import sha256_file
from emoedit.baselines.crop_editor import CropEditor
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.editing.directions import (
    DirectionAccumulator,
    DirectionsError,
    EditDirections,
    EncodedBatch,
    texture_to_network,
    without_clips,
)
from emoedit.editing.emotion_code import MAX_LEVEL, NEUTRAL
from emoedit.editing.texture_editor import TextureEditor
from emoedit.networks.psp_encoder import PSPEncoder
from emoedit.networks.stylegan2.checkpoint import (
    ENCODER_TGAN_CONFIG_KEY,
    finetunes_generator,
    load_encoder_generator,
    load_generator_checkpoint,
)
from emoedit.networks.stylegan2.generator import StyleGAN2Generator

#: The one pseudo-subject of the global directions (every training frame belongs to it).
GLOBAL_SUBJECT = "all"
#: ``EditDirections.extra["kind"]`` of the files written here.
PSP_FACE_DIRECTIONS_KIND = "psp_face_global"
TGAN_PART = "tgan"
TGAN_CONFIG_KEY = ENCODER_TGAN_CONFIG_KEY
TGAN_SHA_KEY = "tgan_checkpoint_sha256"
NOISE_MODES = ("const", "none")


# --------------------------------------------------------------------------- encoding crops
def area_resize_uint8(
    images: Tensor,  # (B, C, S, S) uint8
    size: int,  # output side
) -> Tensor:
    """``(B, C, size, size)`` uint8, area-resampled and rounded: what the texture DataModule serves
    (``data.resize_mode=area``) when the cache's side differs from ``data.resolution``."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="area")
    return resized.round().clamp(0, 255).to(torch.uint8)


def encode_face_crops(
    reader: Any,  # an opened CacheReader holding the crops (a frames cache)
    encoder: PSPEncoder,  # the crop encoder (on ``device``; eval mode is set here)
    *,
    index: Any,  # RecordIndex of the records to encode
    resolution: int,  # side the crops are resized to first (the generator's; what training served)
    image_field: str = "crop",  # the uint8 (3, S, S) field
    batch_size: int = 32,  # crops per forward pass
    device: str | torch.device = "cpu",  # where the encoder runs
    max_cached_shards: int = 4,  # shards kept in memory
) -> Iterator[EncodedBatch]:
    """W+ of the crops in index order, ``batch_size`` at a time (no gradients), with their labels."""
    from torch.utils.data import DataLoader

    from emoedit.data.cache import CacheDataset, ShardLocalSampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for name in ("subject", "emotion", "level"):
        if name not in index.names:
            raise DirectionsError(f"{reader.root}: the cache has no {name!r} metadata (needed for the directions)")
    dataset = CacheDataset(reader, fields=(image_field,), index=index, max_cached_shards=max_cached_shards,
                           with_meta=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardLocalSampler(index, shuffle=False))
    encoder.eval()
    device = torch.device(device)
    start = 0
    with torch.no_grad():
        for batch in loader:
            images = texture_to_network(area_resize_uint8(batch[image_field], resolution)).to(device)
            wplus = encoder(images).wplus.float().cpu()
            rows = range(start, start + wplus.shape[0])
            start += wplus.shape[0]
            yield EncodedBatch(
                wplus=wplus,
                subjects=tuple(str(index.value("subject", r)) for r in rows),
                emotions=tuple(str(index.value("emotion", r)) for r in rows),
                levels=tuple(int(index.value("level", r)) for r in rows),
                clips=tuple(str(index.value("clip", r)) for r in rows),
            )


def solve_global_directions(
    batches: Iterator[EncodedBatch],  # encoded crops with labels (encode_face_crops)
    *,
    num_ws: int,  # W+ entries
    w_dim: int,  # width of one W entry
    level: int = MAX_LEVEL,  # level the emotional means are taken at
    emotions: Sequence[str] | None = None,  # emotions to solve; None = all of EMOTIONS
    encoder_sha256: str | None = None,  # recorded in the result
    extra: dict[str, Any] | None = None,  # free plain data recorded in the result
) -> EditDirections:
    """``d[j] = mean W+(emotion j, level) − mean W+(neutral)`` over every crop: one row, :data:`GLOBAL_SUBJECT`."""
    accumulator = DirectionAccumulator(num_ws=num_ws, w_dim=w_dim, level=level)
    for batch in batches:
        accumulator.add(batch.wplus, [GLOBAL_SUBJECT] * batch.wplus.shape[0], batch.emotions, batch.levels)
    return accumulator.solve(subjects=(GLOBAL_SUBJECT,), emotions=emotions, missing="error",
                             encoder_sha256=encoder_sha256,
                             extra={"kind": PSP_FACE_DIRECTIONS_KIND, **dict(extra or {})})


def _encoder_resolution(ckpt: dict[str, Any], path: Path) -> int:
    config = ckpt.get(TGAN_CONFIG_KEY)
    if not isinstance(config, dict) or not isinstance(config.get("resolution"), int):
        raise CheckpointError(f"{path}: texture_encoder checkpoint without '{TGAN_CONFIG_KEY}' (its generator's "
                              "resolution); written by an older train.py?")
    return int(config["resolution"])


def run_psp_face_directions(
    cache: str | os.PathLike,  # folder of the frames cache the encoder was trained on
    encoder_ckpt: str | os.PathLike,  # texture_encoder checkpoint trained on face crops
    out: str | os.PathLike,  # directions file to write (.pt)
    *,
    views: Sequence[str] | None = ("front",),  # keep only these views (None: all; ignored without 'view')
    subjects: Sequence[str] | None = None,  # training subjects to use; None = all in the cache
    exclude_subjects: Sequence[str] = (),  # subjects to leave out (e.g. the unseen ones)
    exclude_clips: Sequence[str] = (),  # clip ids (the cache's "clip" metadata) to leave out (held-out clips)
    level: int = MAX_LEVEL,  # level the emotional means are taken at
    emotions: Sequence[str] | None = None,  # emotions to solve; None = all of EMOTIONS
    image_field: str = "crop",  # the crop field
    batch_size: int = 32,  # crops per forward pass
    device: str | torch.device = "cpu",  # where the encoder runs
    verify_checksums: bool = True,  # verify each shard's SHA-256 on first load
) -> EditDirections:
    """Encode the neutral and level-``level`` training crops and write the global directions to ``out``."""
    from emoedit.data.cache import CacheReader

    encoder_ckpt = Path(encoder_ckpt)
    resolution = _encoder_resolution(load_checkpoint(encoder_ckpt), encoder_ckpt)
    encoder = PSPEncoder.from_checkpoint(encoder_ckpt).to(device)
    reader = CacheReader.open(cache, kind="frames", verify_checksums=verify_checksums)
    index = reader.records()
    for name in ("subject", "emotion", "level"):
        if name not in index.names:
            raise DirectionsError(f"{reader.root}: the cache has no {name!r} metadata (needed for the directions)")
    if views is not None and "view" in index.names:
        index = index.where(view=list(views))
    if subjects is not None:
        index = index.where(subject=list(subjects))
    if exclude_subjects:
        index = index.select(~index.mask("subject", list(exclude_subjects)))
    index = without_clips(reader, index, exclude_clips)
    index = index.select(index.mask("emotion", NEUTRAL) | index.mask("level", int(level)))
    if len(index) == 0:
        raise DirectionsError(f"{reader.root}: no neutral or level-{level} crops to encode (views {views})")
    batches = encode_face_crops(reader, encoder, index=index, resolution=resolution, image_field=image_field,
                                batch_size=batch_size, device=device)
    result = solve_global_directions(
        batches, num_ws=encoder.num_ws, w_dim=encoder.w_dim, level=level, emotions=emotions,
        encoder_sha256=sha256_file(encoder_ckpt),
        extra={"cache": str(Path(cache).resolve()), "views": None if views is None else list(views),
               "subjects": None if subjects is None else list(subjects), "exclude_subjects": list(exclude_subjects),
               "excluded_clips": sorted(str(c) for c in exclude_clips),
               "encoder_checkpoint": str(encoder_ckpt.resolve()), "resolution": resolution},
    )
    result.save(out)
    return result


# --------------------------------------------------------------------------- editor
class PSPFaceEditor(CropEditor):
    """pSp on face crops: ``G(E(x) + Σ_j α_j d[j])`` with one global direction per emotion."""

    name = "psp"

    def __init__(
        self,
        *,
        generator: StyleGAN2Generator,  # the face StyleGAN2 (G_ema, or the encoder's fine-tuned G)
        encoder: PSPEncoder,  # crop → W+ of ``generator``
        directions: EditDirections,  # global directions (subjects == (GLOBAL_SUBJECT,))
        noise_mode: str = "const",  # synthesis noise: const (deterministic, as the encoder trained) or none
    ) -> None:
        if generator.img_channels != 3:
            raise ValueError(f"PSPFaceEditor: the generator makes {generator.img_channels}-channel images, not RGB")
        if (encoder.num_ws, encoder.w_dim) != (generator.num_ws, generator.w_dim):
            raise ValueError(f"PSPFaceEditor: the encoder predicts W+ {encoder.num_ws}x{encoder.w_dim}, the generator "
                             f"takes {generator.num_ws}x{generator.w_dim}")
        if tuple(directions.subjects) != (GLOBAL_SUBJECT,):
            raise ValueError(f"PSPFaceEditor: expected global directions (one row, {GLOBAL_SUBJECT!r}), got subjects "
                             f"{list(directions.subjects)[:4]}")
        if (directions.num_ws, directions.w_dim) != (generator.num_ws, generator.w_dim):
            raise ValueError(f"PSPFaceEditor: directions are W+ {directions.num_ws}x{directions.w_dim}, the generator "
                             f"takes {generator.num_ws}x{generator.w_dim}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"PSPFaceEditor: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        texture_editor = TextureEditor.from_directions(directions)
        super().__init__(crop_size=generator.img_resolution, emotion_dim=len(texture_editor.emotions))
        self.generator = generator.eval().requires_grad_(False)
        self.encoder = encoder.eval().requires_grad_(False)
        self.directions = texture_editor
        self.noise_mode = noise_mode

    @classmethod
    def from_checkpoints(
        cls,
        tgan_ckpt: str | os.PathLike,  # tgan checkpoint trained on face crops (psp_face_tgan.yaml)
        encoder_ckpt: str | os.PathLike,  # texture_encoder checkpoint trained against it (psp_face_encoder.yaml)
        directions_path: str | os.PathLike,  # run_psp_face_directions output
        map_location: str | torch.device = "cpu",  # device of the loaded networks
    ) -> PSPFaceEditor:
        """Load the three parts (``weights_only``, strict) and check they belong together.

        The encoder must have been trained with this t-GAN file (its recorded SHA-256) and
        the directions solved with this encoder file. When the encoder fine-tuned the
        generator (``model.finetune_generator``), that generator is the decoder.
        """
        tgan_ckpt, encoder_ckpt, directions_path = Path(tgan_ckpt), Path(encoder_ckpt), Path(directions_path)
        generator, _, tgan_sha = load_generator_checkpoint(tgan_ckpt, part=TGAN_PART, map_location=map_location)
        encoder = PSPEncoder.from_checkpoint(encoder_ckpt, map_location=map_location)
        encoder_file = load_checkpoint(encoder_ckpt, map_location=map_location)
        recorded = encoder_file.get(TGAN_SHA_KEY)
        if recorded != tgan_sha:
            raise CheckpointError(f"{encoder_ckpt}: texture_encoder trained with the t-GAN of sha256 {recorded}, but "
                                  f"{tgan_ckpt} (tgan) has sha256 {tgan_sha}")
        if finetunes_generator(encoder_file):
            generator = load_encoder_generator(encoder_file, path=encoder_ckpt, map_location=map_location)
            generator.requires_grad_(False)
        try:
            directions = EditDirections.load(directions_path)
        except DirectionsError as err:
            raise CheckpointError(f"{directions_path}: directions file: {err}") from None
        if directions.encoder_sha256 != sha256_file(encoder_ckpt):
            raise CheckpointError(f"{directions_path}: directions solved with the encoder of sha256 "
                                  f"{directions.encoder_sha256}, not with {encoder_ckpt} (texture_encoder)")
        try:
            return cls(generator=generator, encoder=encoder, directions=directions).to(map_location)
        except ValueError as err:
            raise CheckpointError(f"{directions_path}: {err}") from None

    def translate(self, images: Tensor, emotion_codes: Tensor) -> Tensor:
        wplus = self.encoder(images).wplus
        edited = self.directions(wplus, emotion_codes, mode="mean").wplus
        return self.generator.synthesis(edited, noise_mode=self.noise_mode)


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``directions``: solve the global directions (the trained parts come from ``train.py psp_tgan|psp_encoder``)."""
    parser = argparse.ArgumentParser(prog="python -m emoedit.baselines.psp_face", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dirs = sub.add_parser("directions", help="solve one global W+ direction per emotion from a frames cache")
    dirs.add_argument("--cache", required=True, help="frames cache folder")
    dirs.add_argument("--encoder", required=True, help="texture_encoder checkpoint trained on face crops")
    dirs.add_argument("--out", required=True, help="directions file to write (.pt)")
    dirs.add_argument("--views", nargs="*", default=["front"], help="views to keep (none given: all)")
    dirs.add_argument("--subjects", nargs="*", default=None, help="training subjects (default: all)")
    dirs.add_argument("--exclude-subjects", nargs="*", default=[], help="subjects to leave out (the unseen ones)")
    dirs.add_argument("--level", type=int, default=MAX_LEVEL, help="intensity level of the emotional means")
    dirs.add_argument("--emotions", nargs="*", default=None, help="emotions to solve (default: all 7)")
    dirs.add_argument("--batch-size", type=int, default=32)
    dirs.add_argument("--device", default="cpu")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        result = run_psp_face_directions(args.cache, args.encoder, args.out, views=args.views or None,
                                         subjects=args.subjects, exclude_subjects=args.exclude_subjects,
                                         level=args.level, emotions=args.emotions or None,
                                         batch_size=args.batch_size, device=args.device)
    except (ValueError, OSError) as err:  # CacheError, CheckpointError, DirectionsError are ValueErrors
        print(f"psp_face: error: {err}", file=sys.stderr)
        return 2
    print(result.describe())
    return 0


__all__ = [
    "GLOBAL_SUBJECT",
    "area_resize_uint8",
    "PSP_FACE_DIRECTIONS_KIND",
    "PSPFaceEditor",
    "encode_face_crops",
    "main",
    "run_psp_face_directions",
    "solve_global_directions",
]

if __name__ == "__main__":
    sys.exit(main())
