"""Teeth completion training (METHOD.md §3.7, step 5 of §4): the teeth t-GAN and the teeth encoder.

**Teeth t-GAN** (``train.py teeth_tgan``): the t-GAN's StyleGAN2 training
(:class:`~lightning_modules.tgan.TGANSystem`, unchanged) on aligned mouth crops — the
``crop`` field of a ``mouths`` cache, served by
:class:`~datamodules.textures.TextureDataModule` (``data.cache_kind=mouths``,
``data.image_field=crop``). Only the part name (checkpoints, logged keys
``teeth_tgan/...``) and the data defaults differ.

**Teeth encoder** (``train.py teeth_encoder``): the texture encoder's pSp network and
training (:class:`~lightning_modules.texture_encoder.TextureEncoderSystem`) on
(``crop_removed``, ``crop``, ``mask``) triples (:class:`~datamodules.mouths.MouthDataModule`):
the teeth-removed crop ``x`` is encoded into the frozen EMA teeth generator's W+ so that
the decoded image ``G(E(x))`` is the complete mouth ``y``::

    L = λ_l2 · mean (G − y)²                          (whole crop)
      + λ_mask · Σ m (G − y)² / (C · Σ m)              (teeth region m, pooled over the batch)
      + λ_lpips · LPIPS(G, y) + λ_latent · mean Δ²

(images in [−1, 1]; ``λ_mask`` = ``model.loss.mask_weight``; the masked term is a mean
over the batch's teeth-region pixels, 0 for a batch of closed mouths; a pixel inside the
region thus weighs ``1 + λ_mask / (λ_l2 · f)`` times one outside, ``f`` = the region's share
of the batch's pixels). The generator comes from a ``teeth_tgan`` checkpoint
(``model.tgan_checkpoint``), rebuilt from its own config and loaded strictly; frozen by
default, or fine-tuned jointly (``model.finetune_generator``) as in the texture encoder.

Logged: ``teeth_encoder/train/{l2,l2_mask,lpips,latent,loss}``;
``teeth_encoder/val/{l2,l2_mask,lpips,latent,loss,psnr,psnr_mask,psnr_mask_hole}`` (PSNR in
dB of the [0, 1] images over the whole crop, and inside the teeth region for the
reconstruction and for the teeth-removed input — the "leave the hole" reference).
Media: input | completion | target triples.

The checkpoint holds what :class:`~emoedit.editing.teeth_completion.TeethCompleter` loads
without Lightning: the encoder and its constructor arguments, the generator, the teeth
t-GAN config and SHA-256 (as the texture encoder's), and the training cache's ``mouth``
attributes (``mouth_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.media_logger import MediaImages, MediaItem
from datamodules.mouths import CROP_KEY, MASK_KEY, REMOVED_KEY, MouthDataConfig
from datamodules.textures import TextureDataConfig
from emoedit.checkpoint_io import CheckpointError
from emoedit.config import RunConfig
from emoedit.editing.teeth_completion import MOUTH_SETTINGS_KEY, TEETH_ENCODER_PART, TEETH_TGAN_PART
from emoedit.losses.perceptual import LPIPSLoss
from emoedit.networks.psp_encoder import PSPEncoder
from emoedit.networks.stylegan2 import StyleGAN2Generator
from emoedit.networks.stylegan2.checkpoint import load_generator_checkpoint
from emoedit.shape_checks import assert_range, assert_shape
from lightning_modules.base import EmoeditSystem
from lightning_modules.texture_encoder import (
    TextureEncoderLossConfig,
    TextureEncoderModelConfig,
    TextureEncoderSystem,
)
from lightning_modules.tgan import TGANModelConfig, TGANRunConfig, TGANSystem

# --------------------------------------------------------------------------- teeth t-GAN


@dataclass
class TeethTGANRunConfig(TGANRunConfig):
    model: TGANModelConfig = field(default_factory=lambda: TGANModelConfig(resolution=128))
    data: TextureDataConfig = field(default_factory=lambda: TextureDataConfig(
        resolution="${model.resolution}", cache_dir="data/cache/mouths", cache_kind="mouths",  # type: ignore[arg-type]
        image_field="crop"))


class TeethTGANSystem(TGANSystem):
    """StyleGAN2 on aligned mouth crops: :class:`TGANSystem` under the part name ``teeth_tgan``."""

    PART = TEETH_TGAN_PART


# --------------------------------------------------------------------------- teeth encoder


@dataclass
class TeethEncoderLossConfig(TextureEncoderLossConfig):
    mask_weight: float = 1.0  # λ_mask: extra mean squared error inside the teeth region ([-1, 1] images)


@dataclass
class TeethEncoderModelConfig(TextureEncoderModelConfig):
    tgan_checkpoint: Optional[str] = None  # teeth_tgan .ckpt (train.py teeth_tgan); its G_ema is the decoder (required)
    input_size: int = 128  # crops are resized to this side before the trunk (128 = the mouths cache's crops)
    loss: TeethEncoderLossConfig = field(default_factory=TeethEncoderLossConfig)


@dataclass
class TeethEncoderRunConfig(RunConfig):
    model: TeethEncoderModelConfig = field(default_factory=TeethEncoderModelConfig)
    data: MouthDataConfig = field(default_factory=lambda: MouthDataConfig(val_images=64, hflip=True))


def masked_mse(
    prediction: Tensor,  # (B, C, H, W) float
    target: Tensor,  # (B, C, H, W) float
    mask: Tensor,  # (B, 1, H, W) float weights in [0, 1] (or bool)
) -> Tensor:
    """``Σ m (p − t)² / (C · Σ m)`` over the whole batch: the mean squared error inside the mask.

    0 (still differentiable) when the mask is empty.
    """
    dims = assert_shape(prediction, ("B", "C", "H", "W"), "prediction")
    assert_shape(target, ("B", "C", "H", "W"), "target", dims)
    assert_shape(mask, ("B", 1, "H", "W"), "mask", dims)
    weights = mask.to(prediction.dtype)
    total = (weights * (prediction - target).square()).sum()
    return total / (weights.sum() * dims["C"]).clamp_min(1.0)


def psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR in dB of images in [0, 1] from their mean squared error."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def load_teeth_tgan_generator(path: str | Path) -> tuple[StyleGAN2Generator, dict[str, Any], str]:
    """The EMA generator of a ``teeth_tgan`` checkpoint: ``(G_ema in eval mode, its model config, sha256)``.

    As :func:`lightning_modules.texture_encoder.load_tgan_generator` (which accepts only part
    ``tgan``), Lightning-free: ``G_ema`` is rebuilt from the checkpoint's own config and its
    ``G_ema.*`` tensors are loaded strictly.
    """
    try:
        return load_generator_checkpoint(path, part=TEETH_TGAN_PART, num_bf16_res=None, channels_last=None)
    except CheckpointError as err:
        if f"expected {TEETH_TGAN_PART!r}" in str(err):
            raise CheckpointError(f"{err} (model.tgan_checkpoint must be a teeth t-GAN checkpoint)") from None
        raise


class TeethEncoderSystem(TextureEncoderSystem):
    """pSp teeth encoder + frozen (or fine-tuned) teeth generator + L2 / masked L2 / LPIPS / latent losses."""

    PART = TEETH_ENCODER_PART
    CONFIG_CLS = TeethEncoderModelConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        # TextureEncoderSystem.__init__ loads its generator with load_tgan_generator, which
        # accepts only part "tgan"; the same construction with the teeth t-GAN's loader:
        EmoeditSystem.__init__(self, config)
        cfg: TeethEncoderModelConfig = self.config  # type: ignore[assignment]
        self._validate(cfg)
        generator, tgan_config, tgan_sha = load_teeth_tgan_generator(cfg.tgan_checkpoint)  # type: ignore[arg-type]
        self.generator: StyleGAN2Generator = generator
        self.tgan_config = tgan_config
        self.tgan_sha256 = tgan_sha
        self.encoder = PSPEncoder(
            num_ws=generator.num_ws, w_dim=generator.w_dim, input_size=cfg.input_size, depth=cfg.depth,
            use_se=cfg.use_se, widths=tuple(cfg.widths), in_channels=generator.img_channels,  # type: ignore[arg-type]
            coarse_end=cfg.coarse_end, medium_end=cfg.medium_end,
        )
        if cfg.backbone_weights:
            self.encoder.encoder.backbone.load_insightface_weights(cfg.backbone_weights)
        self.encoder.set_average_latent(generator.mapping.w_avg)
        self.generator.requires_grad_(False)
        if cfg.finetune_generator:
            self.generator.synthesis.requires_grad_(True)
        lpips: LPIPSLoss | None = None
        if cfg.loss.lpips > 0:
            if cfg.lpips_backbone:
                lpips = LPIPSLoss.from_files(net=cfg.lpips_net, backbone_path=cfg.lpips_backbone,
                                             linear_path=cfg.lpips_linear)
            else:
                lpips = LPIPSLoss.with_random_backbone(net=cfg.lpips_net, linear_path=cfg.lpips_linear)
        self.set_lpips(lpips)
        self._last_pairs: Tensor | None = None
        self._mouth_settings: dict[str, Any] | None = None

    @staticmethod
    def _validate(cfg: TextureEncoderModelConfig) -> None:
        if not cfg.tgan_checkpoint:
            raise ValueError("teeth_encoder model config: model.tgan_checkpoint must name a teeth_tgan checkpoint "
                             "(train.py teeth_tgan)")
        mask_weight = getattr(cfg.loss, "mask_weight", 0.0)
        if mask_weight < 0:
            raise ValueError(f"teeth_encoder model config: model.loss.mask_weight must be >= 0, got {mask_weight}")
        try:
            TextureEncoderSystem._validate(cfg)
        except ValueError as err:  # the shared checks name the texture encoder
            raise ValueError(str(err).replace("texture_encoder model config", "teeth_encoder model config")) from None

    # ------------------------------------------------------------------ losses
    def _crops(self, batch: dict[str, Any], key: str) -> Tensor:
        """``batch[key]`` uint8 (B, C, R, R) → float in [-1, 1], checked against the generator."""
        images = batch[key]
        resolution = self.generator.img_resolution
        assert_shape(images, (None, self.generator.img_channels, None, None), f"batch[{key!r}]")
        if images.dtype != torch.uint8:
            raise TypeError(f"batch[{key!r}] must be uint8 (the mouths DataModule's output), got {images.dtype}")
        if images.shape[-1] != resolution or images.shape[-2] != resolution:
            raise ValueError(f"mouth crops are {tuple(images.shape[-2:])} but the teeth t-GAN makes {resolution}²: "
                             f"set data.resolution={resolution}")
        return images.float().div(127.5).sub(1.0)

    def _mask(self, batch: dict[str, Any], like: Tensor) -> Tensor:
        mask = batch[MASK_KEY]
        assert_shape(mask, (like.shape[0], 1, like.shape[2], like.shape[3]), f"batch[{MASK_KEY!r}]")
        mask = mask.to(like.dtype)
        assert_range(mask, 0.0, 1.0, f"batch[{MASK_KEY!r}]")
        return mask

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted loss terms (weight > 0 only) and the raw values ``(terms, extras)`` (see the module docstring)."""
        weights: TeethEncoderLossConfig = self.config.loss  # type: ignore[assignment]
        source = self._crops(batch, REMOVED_KEY)
        target = self._crops(batch, CROP_KEY)
        mask = self._mask(batch, target)
        recon, wplus, offsets = self(source)
        raw: dict[str, Tensor] = {"l2": F.mse_loss(recon, target), "l2_mask": masked_mse(recon, target, mask),
                                  "latent": offsets.square().mean()}
        lpips = self._lpips_loss()
        if lpips is not None:
            raw["lpips"] = lpips(recon, target).mean()
        scale = {"l2": weights.l2, "l2_mask": weights.mask_weight, "latent": weights.latent, "lpips": weights.lpips}
        terms = {name: scale[name] * value for name, value in raw.items() if scale[name] > 0}
        extras = {"source": source, "target": target, "mask": mask, "recon": recon, "wplus": wplus,
                  **{f"raw_{k}": v for k, v in raw.items()}}
        return terms, extras

    # ------------------------------------------------------------------ Lightning hooks
    LOGGED = ("l2", "l2_mask", "lpips", "latent")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms, extras = self.compute_losses(batch)
        total = torch.stack(list(terms.values())).sum()
        size = extras["target"].shape[0]
        for name in self.LOGGED:
            if f"raw_{name}" in extras:
                self.log(f"{self.PART}/train/{name}", extras[f"raw_{name}"].detach(), batch_size=size)
        self.log(f"{self.PART}/train/loss", total.detach(), batch_size=size, prog_bar=True)
        self._keep_pairs(extras)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms, extras = self.compute_losses(batch)
        size = extras["target"].shape[0]
        log = dict(batch_size=size, sync_dist=True, on_epoch=True, on_step=False)
        for name in self.LOGGED:
            if f"raw_{name}" in extras:
                self.log(f"{self.PART}/val/{name}", extras[f"raw_{name}"], **log)
        self.log(f"{self.PART}/val/loss", torch.stack(list(terms.values())).sum(), **log)
        recon01 = extras["recon"].clamp(-1, 1).add(1).div(2)
        target01, source01 = extras["target"].add(1).div(2), extras["source"].add(1).div(2)
        self.log(f"{self.PART}/val/psnr", psnr_from_mse(F.mse_loss(recon01, target01)), **log)
        self.log(f"{self.PART}/val/psnr_mask", psnr_from_mse(masked_mse(recon01, target01, extras["mask"])), **log)
        self.log(f"{self.PART}/val/psnr_mask_hole", psnr_from_mse(masked_mse(source01, target01, extras["mask"])),
                 **log)
        if batch_idx == 0:
            self._keep_pairs(extras)

    def _keep_pairs(self, extras: dict[str, Tensor]) -> None:
        count = min(self.config.log_images, extras["target"].shape[0])
        if count > 0:
            triples = torch.cat([extras["source"][:count], extras["recon"][:count].clamp(-1, 1),
                                 extras["target"][:count]], dim=3)
            self._last_pairs = triples.detach().add(1).div(2).cpu()

    def media(self) -> list[MediaItem]:
        """Input | completion | target triples of the latest batch."""
        if self._last_pairs is None:
            return []
        return [MediaImages(key=f"{self.PART}/completion", images=self._last_pairs, nrow=1,
                            caption="teeth removed | G(E(teeth removed)) | mouth")]

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        settings = getattr(datamodule, "mouth_settings", None)
        if isinstance(settings, dict):
            self._mouth_settings = dict(settings)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The texture encoder's plain data + the training cache's mouth settings (for inference)."""
        super().on_save_checkpoint(checkpoint)
        if self._mouth_settings is not None:
            checkpoint[MOUTH_SETTINGS_KEY] = dict(self._mouth_settings)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        settings = checkpoint.get(MOUTH_SETTINGS_KEY)
        if isinstance(settings, dict) and self._mouth_settings is None:
            self._mouth_settings = dict(settings)


__all__ = [
    "TeethEncoderLossConfig",
    "TeethEncoderModelConfig",
    "TeethEncoderRunConfig",
    "TeethEncoderSystem",
    "TeethTGANRunConfig",
    "TeethTGANSystem",
    "load_teeth_tgan_generator",
    "masked_mse",
    "psnr_from_mse",
]
