"""Training the pSp texture encoder (METHOD.md §3.4, step 4 of §4).

The encoder (:class:`~emoedit.networks.psp_encoder.PSPEncoder`: GradualStyleEncoder over a
ResNet-IR-SE trunk, W+ offsets from the t-GAN's average latent) maps a UV texture ``I``
to ``wplus = w_avg + Δ``; the t-GAN's EMA generator ``G`` decodes it (``noise_mode``
``const`` by default, so encoding is deterministic, as at inference). Losses (pSp's, the
project choice of §3.4; a weight of 0 switches a term off)::

    L = λ_l2 · mean (G(wplus) − I)²  +  λ_lpips · LPIPS(G(wplus), I)  +  λ_latent · mean Δ²

(``mean Δ²`` = the squared norm ‖Δ‖² divided by num_ws·w_dim, so the weight does not
depend on the latent size). The generator comes from a ``tgan`` checkpoint
(``model.tgan_checkpoint``): its ``G_ema`` is rebuilt from the checkpoint's own config and
loaded strictly (:func:`emoedit.networks.stylegan2.checkpoint.load_generator_checkpoint`).
By default ``G`` is frozen (eval mode, ``requires_grad=False``); with
``model.finetune_generator=true`` its synthesis network trains jointly with its own
learning rate (the paper fine-tunes both on MEAD; the mapping network is unused by W+
inputs and stays frozen).

LPIPS (:class:`~emoedit.losses.perceptual.LPIPSLoss`) never downloads: the trunk weights
come from ``model.lpips_backbone`` (a torchvision AlexNet/VGG16 state dict); with no file
``loss.lpips`` must be 0, or ``model.lpips_random_backbone=true`` (tests: random trunk).
The trunk can start from InsightFace IR-SE50 weights (``model.backbone_weights``, pSp's
``model_ir_se50.pth``).

The checkpoint holds the encoder (``encoder.*``), the generator it was trained with
(``generator.*``, fine-tuned or not), ``psp_encoder_kwargs`` (what
:meth:`PSPEncoder.from_checkpoint` rebuilds from), ``tgan_config`` (the t-GAN's model
config, to rebuild ``G``) and ``tgan_checkpoint_sha256``.

Logged: ``texture_encoder/train/{l2,lpips,latent,loss}`` per step,
``texture_encoder/val/{l2,lpips,latent,loss,psnr}`` per validation (PSNR in dB of the
[0, 1] images); media: input | reconstruction pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.media_logger import MediaImages, MediaItem, MediaLogger
from datamodules.textures import IMAGE_KEY, TextureDataConfig
from emoedit.checkpoint_io import CheckpointError
from emoedit.config import RunConfig
from emoedit.losses.perceptual import NETS as LPIPS_NETS
from emoedit.losses.perceptual import LPIPSLoss
from emoedit.networks.psp_encoder import ENCODER_KWARGS_KEY, TEXTURE_ENCODER_PART, PSPEncoder
from emoedit.networks.stylegan2 import StyleGAN2Generator
from emoedit.networks.stylegan2.checkpoint import ENCODER_TGAN_CONFIG_KEY, load_generator_checkpoint
from emoedit.shape_checks import assert_shape
from lightning_modules.base import EmoeditSystem

TGAN_PART = "tgan"
TGAN_CONFIG_KEY = ENCODER_TGAN_CONFIG_KEY  # the generator's model config, saved in the encoder's checkpoint
TGAN_SHA_KEY = "tgan_checkpoint_sha256"
NOISE_MODES = ("const", "random", "none")


@dataclass
class TextureEncoderLossConfig:
    l2: float = 1.0  # λ_l2 (pSp: 1.0): mean squared error of the [-1, 1] textures
    lpips: float = 0.8  # λ_lpips (pSp: 0.8); needs model.lpips_backbone or model.lpips_random_backbone
    latent: float = 0.01  # λ_latent: mean squared W+ offset from the average latent (project choice)


@dataclass
class TextureEncoderModelConfig:
    tgan_checkpoint: Optional[str] = None  # tgan .ckpt (train.py tgan); its G_ema is the decoder (required)
    # --- encoder architecture (PSPEncoder kwargs; num_ws / w_dim come from the generator)
    input_size: int = 256  # textures are resized to this side before the trunk (pSp: 256)
    depth: int = 50  # ResNet-IR depth: 50 (IR-SE50, pSp), 100, 152; 10/18/34 for CPU configs
    use_se: bool = True  # IR-SE (True) or IR (False)
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # trunk stage widths
    coarse_end: int = 3  # W+ entries [0, coarse_end) from the coarsest pyramid level (pSp: 3)
    medium_end: int = 7  # entries [coarse_end, medium_end) from the medium level, the rest fine (pSp: 7)
    backbone_weights: Optional[str] = None  # InsightFace IR-SE state dict for the trunk (pSp: model_ir_se50.pth)
    # --- losses
    loss: TextureEncoderLossConfig = field(default_factory=TextureEncoderLossConfig)
    lpips_net: str = "alex"  # LPIPS trunk: alex (pSp) or vgg
    lpips_backbone: Optional[str] = None  # torchvision alexnet/vgg16 state dict for the LPIPS trunk (never downloaded)
    lpips_linear: Optional[str] = None  # LPIPS calibration layers; None = the file shipped in the lpips package
    lpips_random_backbone: bool = False  # tests only: LPIPS with a random trunk (pnet_rand=True)
    noise_mode: str = "const"  # generator noise while training: const (deterministic, as at inference), random, none
    # --- optimisation
    lr: float = 1.0e-4  # encoder learning rate (pSp: 1e-4)
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0  # weight decay (adamw: decoupled)
    finetune_generator: bool = False  # also train G's synthesis network (joint fine-tuning on MEAD)
    generator_lr: float = 1.0e-5  # learning rate of G when fine-tuned
    log_images: int = 4  # input | reconstruction pairs in the media (0: none)


@dataclass
class TextureEncoderRunConfig(RunConfig):
    model: TextureEncoderModelConfig = field(default_factory=TextureEncoderModelConfig)
    data: TextureDataConfig = field(default_factory=lambda: TextureDataConfig(val_images=64))


def load_tgan_generator(path: str | Path) -> tuple[StyleGAN2Generator, dict[str, Any], str]:
    """The EMA generator of a ``tgan`` checkpoint: ``(G_ema in eval mode, the tgan model config, sha256)``.

    Lightning-free (:func:`emoedit.networks.stylegan2.checkpoint.load_generator_checkpoint`):
    ``G_ema`` is rebuilt from the checkpoint's own ``hyper_parameters["config"]`` (with its
    precision and layout settings) and its ``G_ema.*`` tensors are loaded strictly.
    """
    try:
        return load_generator_checkpoint(path, part=TGAN_PART, num_bf16_res=None, channels_last=None)
    except CheckpointError as err:
        if f"expected {TGAN_PART!r}" in str(err):
            raise CheckpointError(f"{err} (model.tgan_checkpoint must be a t-GAN checkpoint)") from None
        raise


class TextureEncoderSystem(EmoeditSystem[TextureEncoderModelConfig]):
    """pSp encoder + frozen (or fine-tuned) t-GAN generator + L2 / LPIPS / latent losses."""

    PART = TEXTURE_ENCODER_PART
    CONFIG_CLS = TextureEncoderModelConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self._validate(cfg)
        generator, tgan_config, tgan_sha = load_tgan_generator(cfg.tgan_checkpoint)  # type: ignore[arg-type]
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

    @staticmethod
    def _validate(cfg: TextureEncoderModelConfig) -> None:
        problems = []
        if not cfg.tgan_checkpoint:
            problems.append("model.tgan_checkpoint must name a tgan checkpoint (train.py tgan)")
        if cfg.loss.lpips > 0 and not cfg.lpips_backbone and not cfg.lpips_random_backbone:
            problems.append("model.loss.lpips > 0 needs model.lpips_backbone (a torchvision alexnet/vgg16 state dict; "
                            "weights are never downloaded) or model.lpips_random_backbone=true (tests only); "
                            "or set model.loss.lpips=0")
        if cfg.lpips_net not in LPIPS_NETS:
            problems.append(f"model.lpips_net must be one of {LPIPS_NETS}, got {cfg.lpips_net!r}")
        if cfg.noise_mode not in NOISE_MODES:
            problems.append(f"model.noise_mode must be one of {NOISE_MODES}, got {cfg.noise_mode!r}")
        if cfg.optimizer not in ("adam", "adamw"):
            problems.append(f"model.optimizer must be adam or adamw, got {cfg.optimizer!r}")
        if len(cfg.widths) != 4:
            problems.append(f"model.widths must hold 4 stage widths, got {list(cfg.widths)}")
        weights = cfg.loss
        if min(weights.l2, weights.lpips, weights.latent) < 0 or weights.l2 + weights.lpips <= 0:
            problems.append("model.loss weights must be >= 0 with l2 or lpips > 0")
        if problems:
            raise ValueError("texture_encoder model config: " + "; ".join(problems))

    # ------------------------------------------------------------------ pieces
    def set_lpips(self, loss: LPIPSLoss | None) -> None:
        """Use ``loss`` for the LPIPS term (weight from the config); kept outside the module tree
        (never in checkpoints, so strict loading does not depend on it)."""
        object.__setattr__(self, "_lpips", loss)

    def _lpips_loss(self) -> LPIPSLoss | None:
        if self._lpips is not None:
            self._lpips.to(self.device)
        return self._lpips

    def train(self, mode: bool = True) -> TextureEncoderSystem:
        """Lightning's train/eval switch; a frozen generator always stays in eval mode."""
        super().train(mode)
        if not self.config.finetune_generator:
            self.generator.eval()
        return self

    def forward(self, uv_texture: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, C, T, T)`` [-1, 1] textures → ``(reconstruction (B, C, R, R), wplus, offsets)``."""
        encoded = self.encoder(uv_texture)
        image = self.generator.synthesis(encoded.wplus, noise_mode=self.config.noise_mode)
        return image, encoded.wplus, encoded.offsets

    def _textures(self, batch: dict[str, Any]) -> Tensor:
        images = batch[IMAGE_KEY]
        resolution = self.generator.img_resolution
        assert_shape(images, (None, self.generator.img_channels, None, None), f"batch[{IMAGE_KEY!r}]")
        if images.dtype != torch.uint8:
            raise TypeError(f"batch[{IMAGE_KEY!r}] must be uint8 (the texture DataModule's output), got {images.dtype}")
        if images.shape[-1] != resolution or images.shape[-2] != resolution:
            raise ValueError(f"textures are {tuple(images.shape[-2:])} but the t-GAN makes {resolution}²: "
                             f"set data.resolution={resolution}")
        return images.float().div(127.5).sub(1.0)

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted loss terms (weight > 0 only) and the raw values ``(terms, extras)``."""
        weights = self.config.loss
        target = self._textures(batch)
        recon, wplus, offsets = self(target)
        raw: dict[str, Tensor] = {"l2": F.mse_loss(recon, target), "latent": offsets.square().mean()}
        lpips = self._lpips_loss()
        if lpips is not None:
            raw["lpips"] = lpips(recon, target).mean()
        terms = {name: getattr(weights, name) * value for name, value in raw.items() if getattr(weights, name) > 0}
        extras = {"target": target, "recon": recon, "wplus": wplus, **{f"raw_{k}": v for k, v in raw.items()}}
        return terms, extras

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms, extras = self.compute_losses(batch)
        total = torch.stack(list(terms.values())).sum()
        size = extras["target"].shape[0]
        for name in ("l2", "lpips", "latent"):
            if f"raw_{name}" in extras:
                self.log(f"texture_encoder/train/{name}", extras[f"raw_{name}"].detach(), batch_size=size)
        self.log("texture_encoder/train/loss", total.detach(), batch_size=size, prog_bar=True)
        self._keep_pairs(extras)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms, extras = self.compute_losses(batch)
        size = extras["target"].shape[0]
        log = dict(batch_size=size, sync_dist=True, on_epoch=True, on_step=False)
        for name in ("l2", "lpips", "latent"):
            if f"raw_{name}" in extras:
                self.log(f"texture_encoder/val/{name}", extras[f"raw_{name}"], **log)
        self.log("texture_encoder/val/loss", torch.stack(list(terms.values())).sum(), **log)
        mse01 = F.mse_loss(extras["recon"].clamp(-1, 1), extras["target"]) / 4.0  # in [0, 1] units
        self.log("texture_encoder/val/psnr", -10.0 * torch.log10(mse01.clamp_min(1e-10)), **log)
        if batch_idx == 0:
            self._keep_pairs(extras)

    def _keep_pairs(self, extras: dict[str, Tensor]) -> None:
        count = min(self.config.log_images, extras["target"].shape[0])
        if count > 0:
            pairs = torch.cat([extras["target"][:count], extras["recon"][:count].clamp(-1, 1)], dim=3)
            self._last_pairs = pairs.detach().add(1).div(2).cpu()

    def media(self) -> list[MediaItem]:
        """Input | reconstruction pairs of the latest batch."""
        if self._last_pairs is None:
            return []
        return [MediaImages(key="texture_encoder/reconstruction", images=self._last_pairs, nrow=1,
                            caption="texture | G(E(texture))")]

    def extra_callbacks(self) -> list:
        """Callbacks train.py adds for this part: the media logger (no-op without W&B)."""
        return [MediaLogger(every_n_steps=1000)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.config
        groups: list[dict[str, Any]] = [{"params": list(self.encoder.parameters()), "lr": cfg.lr}]
        if cfg.finetune_generator:
            groups.append({"params": [p for p in self.generator.synthesis.parameters() if p.requires_grad],
                           "lr": cfg.generator_lr})
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Plain data that lets the pipeline rebuild the encoder and the generator without Lightning."""
        checkpoint[ENCODER_KWARGS_KEY] = dict(self.encoder.init_kwargs)
        checkpoint[TGAN_CONFIG_KEY] = dict(self.tgan_config)
        checkpoint[TGAN_SHA_KEY] = self.tgan_sha256


__all__ = [
    "TextureEncoderLossConfig",
    "TextureEncoderModelConfig",
    "TextureEncoderRunConfig",
    "TextureEncoderSystem",
    "load_tgan_generator",
]
