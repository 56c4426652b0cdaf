"""Training the t-GAN (METHOD.md §3.4, steps 3–4 of §4) — and the teeth t-GAN (§3.7) with the same code.

A StyleGAN2 (:mod:`emoedit.networks.stylegan2`) trained as in stylegan2-ada-pytorch's
``StyleGAN2Loss`` without augmentation: non-saturating logistic loss, lazy R1 on reals
(every ``d_reg_interval`` iterations, ``γ/2·‖∇D‖²`` scaled by the interval), lazy
path-length regularisation (every ``g_reg_interval`` iterations, on a batch shrunk by
``pl_batch_shrink``, weight ``pl_weight``, running mean decay ``pl_decay``), style mixing
(probability ``style_mixing_prob``), and an EMA copy of the generator (``G_ema``, half-life
``ema_kimg`` thousand images, optional ramp-up) used for samples and FID. Adam learning
rates and betas are adjusted for lazy regularisation (``c = k / (k + 1)``: ``lr·c``,
``β^c``), as in StyleGAN2.

One training iteration (one Lightning step, one data batch) runs, in order,
``_g_step`` → ``_pl_step`` (when due) → ``_d_step`` → ``_r1_step`` (when due) →
``_update_ema``. Optimisation is manual; ``global_step`` counts iterations (only the
``_d_step`` update is counted by Lightning), so ``trainer.max_steps`` is the number of
iterations and ``kimg = global_step · batch · world_size / 1000``.

Pretrain on FFHQ textures, then fine-tune on MEAD textures with ``init_from=<ffhq ckpt>``
(strict load of G, D, G_ema and the path-length mean; fresh optimisers and step count;
``model.reset_ema=true`` restarts G_ema from G). Resume with ``ckpt_path=last``.

Logged per step under ``<PART>/train/`` (``tgan/train/``): ``g_loss``, ``d_loss``, ``d_loss_real``,
``d_loss_fake``, ``real_logit``, ``fake_logit`` (means), ``r1_penalty`` (mean squared
gradient norm), ``r1_loss``, ``pl_length``, ``pl_mean``, ``pl_penalty``, ``pl_loss`` (when
computed), ``ema_beta``, ``kimg``. With a FID feature network (``model.fid_network``; never
downloaded) and validation images (``data.val_images``): ``tgan/val/fid`` of ``G_ema``.
Media (through :class:`callbacks.media_logger.MediaLogger`): sample grids of ``G_ema`` at
fixed z for each truncation ψ, a grid of real images, an optional latent-walk video.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from callbacks.media_logger import MediaImages, MediaItem, MediaLogger, MediaVideo
from datamodules.textures import IMAGE_KEY, TextureDataConfig
from emoedit.config import RunConfig
from emoedit.losses.adversarial import (
    PathLengthPenalty,
    discriminator_logistic_loss,
    generator_logistic_loss,
    r1_penalty,
)
from emoedit.networks.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from emoedit.networks.stylegan2.mapping import MappingNetwork
from emoedit.shape_checks import assert_shape
from lightning_modules.base import EmoeditSystem

FID_KINDS = ("program", "inception_v3")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TGANModelConfig:
    # --- architecture (stylegan2-ada-pytorch names; the paper: 512², W+ 16×512)
    resolution: int = 512  # image side R (power of two >= 8); data is resized to it
    img_channels: int = 3  # image channels
    z_dim: int = 512  # input latent size
    w_dim: int = 512  # W latent size
    mapping_layers: int = 8  # mapping network depth
    mapping_lr_multiplier: float = 0.01  # mapping network learning-rate multiplier
    w_avg_beta: float = 0.995  # decay of the tracked mean of w (truncation centre)
    channel_base: int = 32768  # channels at resolution r: min(channel_base // r, channel_max), G and D
    channel_max: int = 512  # maximum channels per block, G and D
    mbstd_group_size: int = 4  # discriminator minibatch-std group size
    mbstd_num_channels: int = 1  # discriminator minibatch-std channels
    conv_clamp: Optional[float] = None  # clamp conv outputs to ±conv_clamp (ada uses 256 with reduced precision)
    # --- speed: precision and memory layout (numerics-neutral up to rounding)
    num_bf16_res: int = 0  # the N highest resolutions of G and D run their convolutions in bfloat16
    channels_last: bool = False  # channels-last activations in G and D
    fused_modconv: bool = False  # training: modulation as one grouped conv (True) or by scaling activations
    # --- optimisation (StyleGAN2 config F; Adam on G and D)
    g_lr: float = 0.002  # generator learning rate (before the lazy-regularisation adjustment)
    d_lr: float = 0.002  # discriminator learning rate (before the adjustment)
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])  # Adam betas (before the adjustment)
    adam_eps: float = 1e-8  # Adam epsilon
    r1_gamma: float = 10.0  # R1 weight γ (0: off)
    d_reg_interval: int = 16  # R1 every N iterations (lazy regularisation)
    pl_weight: float = 2.0  # path-length regularisation weight (0: off)
    g_reg_interval: int = 4  # path-length regularisation every N iterations
    pl_decay: float = 0.01  # decay of the path-length running mean
    pl_batch_shrink: int = 2  # path-length batch = batch // pl_batch_shrink
    style_mixing_prob: float = 0.9  # probability of mixing two latents at a random layer
    ema_kimg: float = 10.0  # half-life of the generator EMA, thousands of images (global batch)
    ema_rampup: Optional[float] = None  # ada's ramp-up: half-life <= ema_rampup · images seen (None: off)
    reset_ema: bool = False  # at the start of a fresh or init_from run (not a resume), copy G into G_ema
    # --- samples, media, FID
    sample_seed: int = 0  # seed of the fixed sample latents
    num_samples: int = 16  # images per sample grid
    sample_truncations: list[float] = field(default_factory=lambda: [1.0, 0.7])  # one grid per ψ
    media_every_n_steps: int = 1000  # media (grids, video) every N iterations (0: only at the end)
    media_video_frames: int = 0  # frames of the latent-walk video (0: no video)
    media_video_fps: float = 24.0  # its frame rate
    fid_network: Optional[str] = None  # feature network for FID (a file; never downloaded); None = no FID
    fid_network_kind: str = "program"  # "program": .pt2 (torch.export) or TorchScript file, [0,1] images -> (B, F);
    # "inception_v3": a torchvision Inception-v3 state dict (2048-d pool features, ImageNet normalisation)
    fid_input_size: int = 299  # images are resized to this side for the feature network
    fid_num_images: int = 1000  # generated images per FID evaluation (all ranks together)
    fid_batch_size: int = 32  # generation batch for FID


@dataclass
class TGANRunConfig(RunConfig):
    model: TGANModelConfig = field(default_factory=TGANModelConfig)
    data: TextureDataConfig = field(default_factory=lambda: TextureDataConfig(resolution="${model.resolution}"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pieces


def lazy_adam_hparams(lr: float, betas: Sequence[float], interval: int, active: bool) -> tuple[float, tuple[float, float]]:
    """StyleGAN2's lazy-regularisation adjustment: ``c = k/(k+1)``, ``lr·c``, ``β^c`` (unchanged when not active)."""
    if len(betas) != 2:
        raise ValueError(f"betas must be two numbers, got {list(betas)}")
    if not active:
        return lr, (float(betas[0]), float(betas[1]))
    ratio = interval / (interval + 1)
    return lr * ratio, (float(betas[0]) ** ratio, float(betas[1]) ** ratio)


def ema_beta(*, batch_size: int, ema_kimg: float, images_seen: int, ema_rampup: float | None) -> float:
    """EMA decay per iteration for a half-life of ``ema_kimg`` thousand images (``0.5^(batch/ema_nimg)``).

    With ``ema_rampup``, the half-life is at most ``ema_rampup · images_seen`` (so it
    starts at 0: G_ema = G at the first iteration).
    """
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, images_seen * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``p_ema ← lerp(p, p_ema, beta)`` for every parameter; every buffer copied (``w_avg``, noise)."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    ema_buffers, buffers = list(ema.buffers()), list(model.buffers())
    if len(ema_params) != len(params) or len(ema_buffers) != len(buffers):
        raise ValueError("update_ema: the EMA copy and the model have different structures")
    for p_ema, p in zip(ema_params, params):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema_buffers, buffers):
        b_ema.copy_(b)


def mixed_ws(
    mapping: MappingNetwork,  # the generator's mapping network
    z: Tensor,  # (B, z_dim) main latents
    *,
    mixing_prob: float,  # probability of mixing (one decision per batch, as in ada)
    update_w_avg: bool = False,  # update w_avg with the main latents (never with the mixing ones)
) -> Tensor:
    """W+ ``(B, num_ws, w_dim)`` with style mixing: rows ``cutoff:`` from a second random z.

    ``cutoff`` is uniform in ``[1, num_ws)``; the decision and the cutoff are drawn on the
    CPU (no device synchronisation).
    """
    ws = mapping(z, update_w_avg=update_w_avg)
    num_ws = ws.shape[1]
    if mixing_prob <= 0 or num_ws < 2 or float(torch.rand(())) >= mixing_prob:
        return ws
    cutoff = int(torch.randint(1, num_ws, ()))
    other = mapping(torch.randn_like(z))
    rows = (torch.arange(num_ws, device=ws.device) >= cutoff).reshape(1, num_ws, 1)
    return torch.where(rows, other, ws)


class FIDFeatureNetwork(nn.Module):
    """Images ``(B, 3, H, W)`` float in [0, 1] → features ``(B, F)`` for FID; resizes to ``input_size``.

    Build with :meth:`from_file` (a self-contained program: ``.pt2`` from ``torch.export``
    or TorchScript; or a torchvision Inception-v3 state dict) or directly around any
    module (tests inject a tiny one). ``num_features`` is what
    torchmetrics reads. Features from other weights than the TF-FID Inception are fine for
    tracking training but not comparable with published FID numbers.
    """

    def __init__(
        self,
        *,
        network: nn.Module,  # float images at input_size → (B, F)
        input_size: int,  # side the images are resized to (bilinear, antialiased)
        imagenet_normalize: bool = False,  # apply ImageNet mean/std after resizing
    ) -> None:
        super().__init__()
        self.network = network
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        self.input_size = input_size
        self.imagenet_normalize = imagenet_normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            probe = self(torch.full((2, 3, input_size, input_size), 0.5))
        self.num_features = int(probe.shape[1])

    @classmethod
    def from_file(cls, path: str | Path, *, kind: str = "program", input_size: int = 299) -> FIDFeatureNetwork:
        """Load a feature network (no Python pickle involved; nothing is downloaded).

        ``program``: ``.pt2`` (``torch.export.save`` of the module in eval mode, dynamic batch
        dimension) or else a TorchScript archive, taking float [0, 1] images of
        ``input_size``; ``inception_v3``: a torchvision ``inception_v3`` state dict
        (``weights_only`` load; the classifier is dropped for 2048-d pool features).
        """
        path = Path(path)
        if kind not in FID_KINDS:
            raise ValueError(f"model.fid_network_kind must be one of {FID_KINDS}, got {kind!r}")
        if not path.is_file():
            raise FileNotFoundError(f"model.fid_network: {path} does not exist (FID networks are never downloaded)")
        if kind == "program":
            try:
                if path.suffix == ".pt2":
                    network = torch.export.load(str(path)).module()
                else:
                    network = torch.jit.load(str(path), map_location="cpu")
            except Exception as err:
                what = "torch.export program" if path.suffix == ".pt2" else "TorchScript archive"
                raise ValueError(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from None
            return cls(network=network, input_size=input_size)
        from torchvision.models import inception_v3

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable state dict ({type(err).__name__}: {err})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        has_aux = any(str(k).startswith("AuxLogits.") for k in state)
        network = inception_v3(weights=None, aux_logits=has_aux, init_weights=False)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a torchvision inception_v3 state dict ({err})") from None
        network.fc = nn.Identity()  # 2048-d pool features
        network.eval()
        return cls(network=network, input_size=input_size, imagenet_normalize=True)

    def forward(self, images: Tensor) -> Tensor:
        assert_shape(images, (None, 3, None, None), "FIDFeatureNetwork images")
        x = images.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        if self.imagenet_normalize:
            x = (x - self.mean) / self.std
        features = self.network(x)
        return features.flatten(1).float()


def _no_closure() -> None:
    return None


# --------------------------------------------------------------------------- the system


class TGANSystem(EmoeditSystem[TGANModelConfig]):
    """StyleGAN2 t-GAN training (see the module docstring)."""

    PART = "tgan"  # also the prefix of logged keys; the teeth t-GAN subclasses with PART = "teeth_tgan"
    CONFIG_CLS = TGANModelConfig
    # Model-config keys that do not change the state dict (optimisation, regularisation,
    # EMA, media, FID, precision/layout): they may differ between an init_from checkpoint
    # (e.g. FFHQ pretraining) and the run that starts from it (MEAD fine-tuning).
    TRAINING_KEYS: ClassVar[frozenset[str]] = frozenset({
        "conv_clamp", "num_bf16_res", "channels_last", "fused_modconv", "g_lr", "d_lr", "betas", "adam_eps",
        "r1_gamma", "d_reg_interval", "pl_weight", "g_reg_interval", "pl_decay", "pl_batch_shrink",
        "style_mixing_prob", "ema_kimg", "ema_rampup", "reset_ema", "sample_seed", "num_samples",
        "sample_truncations", "media_every_n_steps", "media_video_frames", "media_video_fps", "fid_network",
        "fid_network_kind", "fid_input_size", "fid_num_images", "fid_batch_size",
    })

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self._validate(cfg)
        self.automatic_optimization = False
        common = dict(channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_bf16_res=cfg.num_bf16_res,
                      channels_last=cfg.channels_last, conv_clamp=cfg.conv_clamp)
        self.G = StyleGAN2Generator(z_dim=cfg.z_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution,
                                    img_channels=cfg.img_channels, mapping_layers=cfg.mapping_layers,
                                    mapping_lr_multiplier=cfg.mapping_lr_multiplier, w_avg_beta=cfg.w_avg_beta,
                                    **common)
        self.D = StyleGAN2Discriminator(img_resolution=cfg.resolution, img_channels=cfg.img_channels,
                                        mbstd_group_size=cfg.mbstd_group_size,
                                        mbstd_num_channels=cfg.mbstd_num_channels, **common)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        self.pl_reg = PathLengthPenalty(decay=cfg.pl_decay)
        sample_z = torch.randn(cfg.num_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.sample_seed))
        self.register_buffer("sample_z", sample_z, persistent=False)
        self._last_reals: Tensor | None = None
        feature = FIDFeatureNetwork.from_file(cfg.fid_network, kind=cfg.fid_network_kind,
                                              input_size=cfg.fid_input_size) if cfg.fid_network else None
        self.set_fid_feature_network(feature)

    @staticmethod
    def _validate(cfg: TGANModelConfig) -> None:
        problems = []
        if cfg.resolution < 8 or cfg.resolution & (cfg.resolution - 1):
            problems.append(f"model.resolution must be a power of two >= 8, got {cfg.resolution}")
        if cfg.d_reg_interval < 1 or cfg.g_reg_interval < 1:
            problems.append("model.d_reg_interval and model.g_reg_interval must be >= 1")
        if cfg.pl_batch_shrink < 1:
            problems.append(f"model.pl_batch_shrink must be >= 1, got {cfg.pl_batch_shrink}")
        if not 0.0 <= cfg.style_mixing_prob <= 1.0:
            problems.append(f"model.style_mixing_prob must lie in [0, 1], got {cfg.style_mixing_prob}")
        if cfg.r1_gamma < 0 or cfg.pl_weight < 0 or cfg.ema_kimg < 0:
            problems.append("model.r1_gamma, model.pl_weight and model.ema_kimg must be >= 0")
        if len(cfg.betas) != 2:
            problems.append(f"model.betas must hold two numbers, got {list(cfg.betas)}")
        if cfg.fid_network_kind not in FID_KINDS:
            problems.append(f"model.fid_network_kind must be one of {FID_KINDS}, got {cfg.fid_network_kind!r}")
        if cfg.num_samples < 1:
            problems.append(f"model.num_samples must be >= 1, got {cfg.num_samples}")
        if problems:
            raise ValueError("tgan model config: " + "; ".join(problems))

    # ------------------------------------------------------------------ FID plumbing
    def set_fid_feature_network(self, network: nn.Module | None) -> None:
        """Use ``network`` (float [0, 1] images → (B, F); e.g. a :class:`FIDFeatureNetwork`) for FID; None = off.

        Kept outside the module tree (``object.__setattr__``): never in checkpoints, so
        strict loading does not depend on it.
        """
        fid = None
        if network is not None:
            from torchmetrics.image.fid import FrechetInceptionDistance

            fid = FrechetInceptionDistance(feature=network, reset_real_features=False, normalize=True)
        object.__setattr__(self, "_fid", fid)
        object.__setattr__(self, "_fid_reals_done", False)

    @property
    def fid_metric(self) -> Any:
        """The torchmetrics FID object (None without a feature network)."""
        return self._fid

    # ------------------------------------------------------------------ generation
    def forward(self, z: Tensor, truncation_psi: float = 1.0, noise_mode: str = "const") -> Tensor:
        """``(B, z_dim)`` → ``G_ema`` images ``(B, C, R, R)`` float32, nominally in [−1, 1]."""
        return self.G_ema(z, truncation_psi=truncation_psi, noise_mode=noise_mode)

    @torch.no_grad()
    def sample(self, z: Tensor, *, truncation_psi: float = 1.0, noise_mode: str = "const",
               batch_size: int = 16) -> Tensor:
        """``G_ema`` images of ``z`` in chunks, as float in [0, 1] ``(N, C, R, R)`` (clamped)."""
        out = [self(chunk.to(self.device), truncation_psi=truncation_psi, noise_mode=noise_mode)
               for chunk in z.split(batch_size)]
        return torch.cat(out).float().add(1).div(2).clamp(0, 1)

    # ------------------------------------------------------------------ training
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.config
        g_lr, g_betas = lazy_adam_hparams(cfg.g_lr, cfg.betas, cfg.g_reg_interval, cfg.pl_weight > 0)
        d_lr, d_betas = lazy_adam_hparams(cfg.d_lr, cfg.betas, cfg.d_reg_interval, cfg.r1_gamma > 0)
        opt_g = torch.optim.Adam(self.G.parameters(), lr=g_lr, betas=g_betas, eps=cfg.adam_eps)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=cfg.adam_eps)
        return [opt_g, opt_d]

    def extra_callbacks(self) -> list:
        """Callbacks train.py adds for this part: the media logger (no-op without W&B)."""
        return [MediaLogger(every_n_steps=self.config.media_every_n_steps)]

    def on_fit_start(self) -> None:
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise ValueError(f"trainer.precision={precision} is not supported by tgan (R1/path-length gradients are "
                             "not loss-scaled); use 32 with model.num_bf16_res for reduced precision")

    def on_train_start(self) -> None:
        # A fresh run or an init_from run (whose step may be kept), never a resume.
        if self.config.reset_ema and (self.global_step == 0 or self.started_from_init):
            self.G_ema.load_state_dict(self.G.state_dict())

    def global_batch(self, batch_size: int) -> int:
        """Images per iteration over all processes."""
        world = self.trainer.world_size if self._trainer is not None else 1
        return batch_size * world

    def _real_images(self, batch: dict[str, Any]) -> Tensor:
        cfg = self.config
        images = batch[IMAGE_KEY]
        assert_shape(images, (None, cfg.img_channels, cfg.resolution, cfg.resolution), f"batch[{IMAGE_KEY!r}]")
        if images.dtype != torch.uint8:
            raise TypeError(f"batch[{IMAGE_KEY!r}] must be uint8 (the texture DataModule's output), got {images.dtype}")
        real = images.float().div(127.5).sub(1.0)
        if cfg.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    def _run_generator(self, z: Tensor, *, update_w_avg: bool) -> tuple[Tensor, Tensor]:
        ws = mixed_ws(self.G.mapping, z, mixing_prob=self.config.style_mixing_prob, update_w_avg=update_w_avg)
        img = self.G.synthesis(ws, noise_mode="random", fused_modconv=self.config.fused_modconv)
        return img, ws

    def _latents(self, count: int) -> Tensor:
        return torch.randn(count, self.config.z_dim, device=self.device)

    def _optimizer_step(self, optimizer: Any, *, count: bool) -> None:
        """Step ``optimizer``; only counted steps advance ``global_step`` (one per iteration)."""
        if count:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, _no_closure, model=self)

    def _g_step(self, opt_g: Any, batch_size: int) -> dict[str, Tensor]:
        """Generator main step: non-saturating logistic loss."""
        with self.toggled_optimizer(opt_g):
            fake, _ = self._run_generator(self._latents(batch_size), update_w_avg=True)
            fake_logits = self.D(fake)
            loss = generator_logistic_loss(fake_logits)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_g, count=False)
        return {"g_loss": loss.detach()}

    def _pl_step(self, opt_g: Any, batch_size: int) -> dict[str, Tensor]:
        """Generator regularisation step: path-length penalty on a shrunk batch, scaled by the interval."""
        cfg = self.config
        with self.toggled_optimizer(opt_g):
            count = max(batch_size // cfg.pl_batch_shrink, 1)
            fake, ws = self._run_generator(self._latents(count), update_w_avg=True)
            out = self.pl_reg(fake, ws)
            loss = (fake[:, 0, 0, 0] * 0 + out.penalty * cfg.pl_weight).mean() * cfg.g_reg_interval
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_g, count=False)
        return {"pl_penalty": out.penalty.detach().mean(), "pl_length": out.lengths.detach().mean(),
                "pl_mean": out.mean, "pl_loss": loss.detach()}

    def _d_step(self, opt_d: Any, real: Tensor) -> dict[str, Tensor]:
        """Discriminator main step: logistic loss on generated and real images (the counted step)."""
        with self.toggled_optimizer(opt_d):
            with torch.no_grad():
                fake, _ = self._run_generator(self._latents(real.shape[0]), update_w_avg=True)
            fake_logits = self.D(fake)
            real_logits = self.D(real)
            terms = discriminator_logistic_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(terms.total)
            self._optimizer_step(opt_d, count=True)
        return {"d_loss": terms.total.detach(), "d_loss_real": terms.real.detach(), "d_loss_fake": terms.fake.detach(),
                "real_logit": real_logits.detach().mean(), "fake_logit": fake_logits.detach().mean()}

    def _r1_step(self, opt_d: Any, real: Tensor) -> dict[str, Tensor]:
        """Discriminator regularisation step: R1 on reals, ``γ/2·‖∇D‖²`` scaled by the interval."""
        cfg = self.config
        with self.toggled_optimizer(opt_d):
            real = real.detach().requires_grad_(True)
            real_logits = self.D(real)
            penalty = r1_penalty(real_logits, real)
            loss = (real_logits.flatten() * 0 + penalty * (cfg.r1_gamma / 2)).mean() * cfg.d_reg_interval
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_d, count=False)
        return {"r1_penalty": penalty.detach().mean(), "r1_loss": loss.detach()}

    @torch.no_grad()
    def _update_ema(self, batch_size: int, iteration: int) -> float:
        """G_ema ← EMA of G (parameters lerped, buffers copied); returns the decay used."""
        cfg = self.config
        global_batch = self.global_batch(batch_size)
        beta = ema_beta(batch_size=global_batch, ema_kimg=cfg.ema_kimg, images_seen=iteration * global_batch,
                        ema_rampup=cfg.ema_rampup)
        update_ema(self.G_ema, self.G, beta)
        return beta

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        cfg = self.config
        real = self._real_images(batch)
        batch_size = real.shape[0]
        iteration = self.global_step
        opt_g, opt_d = self.optimizers()
        logs = self._g_step(opt_g, batch_size)
        if cfg.pl_weight > 0 and iteration % cfg.g_reg_interval == 0:
            logs.update(self._pl_step(opt_g, batch_size))
        logs.update(self._d_step(opt_d, real))
        if cfg.r1_gamma > 0 and iteration % cfg.d_reg_interval == 0:
            logs.update(self._r1_step(opt_d, real))
        beta = self._update_ema(batch_size, iteration)
        self._last_reals = batch[IMAGE_KEY][: cfg.num_samples].detach().clone()
        for name, value in logs.items():
            self.log(f"{self.PART}/train/{name}", value, on_step=True, on_epoch=False, batch_size=batch_size,
                     prog_bar=name in ("g_loss", "d_loss"))
        self.log(f"{self.PART}/train/ema_beta", beta, on_step=True, on_epoch=False, batch_size=batch_size)
        kimg = (iteration + 1) * self.global_batch(batch_size) / 1000.0
        self.log(f"{self.PART}/train/kimg", kimg, on_step=True, on_epoch=False, batch_size=batch_size)

    # ------------------------------------------------------------------ validation (FID)
    def on_validation_start(self) -> None:
        if self._fid is not None:
            self._fid.to(self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self._fid is None or self.trainer.sanity_checking or self._fid_reals_done:
            return
        real = self._real_images(batch)
        self._fid.update(real.float().add(1).div(2).clamp(0, 1), real=True)

    def on_validation_epoch_end(self) -> None:
        if self._fid is None or self.trainer.sanity_checking:
            return
        if int(self._fid.real_features_num_samples) == 0 and not self._fid_reals_done:
            return  # no validation images (data.val_images = 0)
        object.__setattr__(self, "_fid_reals_done", True)
        cfg = self.config
        world, rank = self.trainer.world_size, self.trainer.global_rank
        count = math.ceil(cfg.fid_num_images / world)
        generator = torch.Generator().manual_seed(cfg.sample_seed + 1 + rank)
        z = torch.randn(count, cfg.z_dim, generator=generator)
        for chunk in z.split(cfg.fid_batch_size):
            images = self.sample(chunk, truncation_psi=1.0, noise_mode="random", batch_size=cfg.fid_batch_size)
            self._fid.update(images, real=False)
        fid = self._fid.compute()
        self._fid.reset()  # keeps the real statistics
        self.log(f"{self.PART}/val/fid", fid.float(), on_step=False, on_epoch=True)  # same value on every rank

    # ------------------------------------------------------------------ media
    def media(self) -> list[MediaItem]:
        """Sample grids of ``G_ema`` (fixed z, one per ψ), the latest reals, an optional latent walk."""
        cfg = self.config
        nrow = max(1, int(math.sqrt(cfg.num_samples)))
        items: list[MediaItem] = []
        for psi in cfg.sample_truncations:
            images = self.sample(self.sample_z, truncation_psi=psi, noise_mode="const")
            items.append(MediaImages(key=f"{self.PART}/samples/psi_{psi:g}", images=images.cpu(), nrow=nrow,
                                     caption=f"G_ema, fixed z (seed {cfg.sample_seed}), truncation {psi:g}"))
        if self._last_reals is not None:
            reals = self._last_reals.float().div(255.0).cpu()
            items.append(MediaImages(key=f"{self.PART}/reals", images=reals, nrow=nrow, caption="latest training batch"))
        if cfg.media_video_frames > 1:
            items.append(MediaVideo(key=f"{self.PART}/latent_walk", frames=self.latent_walk(cfg.media_video_frames).cpu(),
                                    fps=cfg.media_video_fps, caption="G_ema, W-space walk through the sample latents"))
        return items

    @torch.no_grad()
    def latent_walk(self, frames: int, truncation_psi: float = 0.7) -> Tensor:
        """``(frames, C, R, R)`` float [0, 1]: linear W+ interpolation through the fixed sample latents (a loop)."""
        keys = self.sample_z[: max(2, min(len(self.sample_z), 4))]
        if len(keys) < 2:
            keys = torch.cat([keys, torch.randn_like(keys)])
        ws = self.G_ema.mapping(keys.to(self.device), truncation_psi=truncation_psi)
        ws = torch.cat([ws, ws[:1]])
        t = torch.linspace(0, len(keys), frames + 1, device=self.device)[:-1]
        index = t.floor().long().clamp(max=len(keys) - 1)
        frac = (t - index).reshape(-1, 1, 1)
        path = ws[index].lerp(ws[index + 1], frac)
        out = [self.G_ema.synthesis(chunk, noise_mode="const") for chunk in path.split(16)]
        return torch.cat(out).add(1).div(2).clamp(0, 1)
