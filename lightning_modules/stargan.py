"""Training the StarGAN baseline (Choi et al., CVPR 2018) on aligned face crops (METHOD.md §6).

The paper's strongest baseline, trained on the same data through the same framework:
:class:`~emoedit.networks.stargan.StarGANGenerator` ``G(x, c)`` and the PatchGAN
:class:`~emoedit.networks.stargan.StarGANDiscriminator` ``D(x) → (D_src, D_cls)`` on the
crops of a ``frames`` cache (:class:`~datamodules.face_crops.FaceCropDataModule`,
unpaired): a crop ``x`` with its true code ``c_o`` and a random target code ``c``
(neutral, one emotion at MEAD level 1–3, or at a continuous level).

Discriminator step ``_d_step`` (every iteration; the counted optimiser step)::

    x_f   = G(x, c)                                          (no gradient into G)
    L_D   = L_adv + λ_cls·L_cls^r + λ_gp·L_gp
    L_adv = mean D_src(x_f) − mean D_src(x)                  (WGAN, means over batch and patches)
    L_cls^r = cls(D_cls(x), c_o)                             (real crops only)
    L_gp  = mean_b (‖∇_x̂ Σ D_src(x̂)‖₂ − 1)²,  x̂ = a·x + (1−a)·x_f,  a ~ U(0, 1) per sample

Generator step ``_g_step`` (every ``n_critic``-th iteration)::

    L_G   = −mean D_src(G(x, c)) + λ_cls·cls(D_cls(G(x, c)), c) + λ_rec·mean |x − G(G(x, c), c_o)|

``cls`` is StarGAN's CelebA-style multi-label loss, binary cross-entropy with logits
summed over the ``E_t`` emotions and averaged over the batch: the code's strengths (in
[0, 1] for MEAD levels; neutral = all zeros) are the soft labels, so continuous strengths
need no change of the loss (``loss.classification_kind=mse``: squared error of the raw
logits instead, a regression head like the geometry editor's ``D_e``). Paper values:
λ_cls = 1, λ_rec = 10, λ_gp = 10, n_critic = 5, Adam lr 1e-4 with β = (0.5, 0.999) for G
and D, batch 16, 200k iterations with both learning rates decaying linearly to 0 over the
last 100k (``model.lr_decay_start=100000`` with ``trainer.max_steps=200000``). A loss weight
of 0 switches its term off (not computed, not logged).

``global_step`` counts iterations (discriminator steps), so ``trainer.max_steps`` is the
number of iterations and G gets ``max_steps / n_critic`` updates. Logged under
``stargan/train/``: ``d_loss``, ``d_adv``, ``d_cls``, ``d_gp``, ``critic_real``,
``critic_fake``, ``wasserstein`` each iteration; ``g_loss``, ``g_adv``, ``g_cls``, ``g_rec``
at generator steps (term values are unweighted). With validation data, the generator terms
of held-out clips under ``stargan/val/`` (seeded targets) plus ``self_l1`` = mean
``|G(x, c_o) − x|`` (editing a crop to its own emotion should change nothing). Media:
input | edit | cycle triples. The checkpoint carries ``stargan_generator_kwargs``, so
:class:`emoedit.baselines.crop_editor.StarGANEditor` loads the generator without Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.media_logger import MediaImages, MediaItem, MediaLogger
from datamodules.face_crops import EMOTION_KEY, IMAGE_KEY, TARGET_KEY, FaceCropDataConfig
from emoedit.config import RunConfig
from emoedit.editing.emotion_code import NUM_EMOTIONS
from emoedit.losses.adversarial import gradient_penalty, wgan_critic_loss, wgan_generator_loss
from emoedit.networks.stargan import (
    STARGAN_GENERATOR_KWARGS_KEY,
    STARGAN_PART,
    StarGANDiscriminator,
    StarGANGenerator,
)
from emoedit.shape_checks import assert_shape
from lightning_modules.base import EmoeditSystem

CLASSIFICATION_KINDS = ("bce", "mse")


@dataclass
class StarGANGeneratorConfig:
    conv_dim: int = 64  # channels of the first convolution (paper 64)
    num_down: int = 2  # down-/up-sampling stages (paper 2)
    num_res_blocks: int = 6  # bottleneck residual blocks (paper 6)


@dataclass
class StarGANDiscriminatorConfig:
    conv_dim: int = 64  # channels of the first convolution (paper 64)
    num_layers: int = 6  # stride-2 convolutions (paper 6 at 128²); resolution must divide by 2^num_layers
    max_channels: int = 2048  # cap on the channels of any layer (paper: none, 2048 at 128²)


@dataclass
class StarGANLossConfig:
    adversarial: float = 1.0  # weight of the WGAN terms (paper 1)
    classification: float = 1.0  # λ_cls (paper 1)
    reconstruction: float = 10.0  # λ_rec, cycle L1 on [-1, 1] images (paper 10)
    gradient_penalty: float = 10.0  # λ_gp (paper 10)
    classification_kind: str = "bce"  # bce (soft multi-label, StarGAN's CelebA loss) | mse (regression of the code)


@dataclass
class StarGANModelConfig:
    resolution: int = 128  # crop side R the networks work at (paper 128); data.resolution follows it
    image_channels: int = 3  # image channels
    generator: StarGANGeneratorConfig = field(default_factory=StarGANGeneratorConfig)
    discriminator: StarGANDiscriminatorConfig = field(default_factory=StarGANDiscriminatorConfig)
    loss: StarGANLossConfig = field(default_factory=StarGANLossConfig)
    g_lr: float = 1.0e-4  # generator learning rate (paper 1e-4)
    d_lr: float = 1.0e-4  # discriminator learning rate (paper 1e-4)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam betas (paper)
    adam_eps: float = 1.0e-8  # Adam epsilon
    n_critic: int = 5  # discriminator steps per generator step (paper 5)
    lr_decay_start: Optional[int] = None  # iteration after which both lrs decay linearly to 0 at trainer.max_steps
    log_images: int = 4  # input | edit | cycle triples in the media (0: none)
    media_every_n_steps: int = 1000  # media every N iterations (W&B only)


@dataclass
class StarGANRunConfig(RunConfig):
    model: StarGANModelConfig = field(default_factory=StarGANModelConfig)
    data: FaceCropDataConfig = field(default_factory=lambda: FaceCropDataConfig(resolution="${model.resolution}"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class StarGANBatch:
    """One batch in network units."""

    images: Tensor  # (B, C, R, R) float in [-1, 1]: x
    emotion_code: Tensor  # (B, E_t) float: c_o, the crops' own codes
    target_code: Tensor  # (B, E_t) float: c, the targets


def emotion_classification_loss(
    logits: Tensor,  # (B, E) float classifier outputs
    code: Tensor,  # (B, E) float target strengths (soft labels in [0, 1] for MEAD levels)
    kind: str = "bce",  # "bce" or "mse"
) -> Tensor:
    """StarGAN's domain classification loss: summed over the emotions, averaged over the batch.

    ``bce``: binary cross-entropy with logits (soft labels); ``mse``: squared error of the logits.
    """
    dims = assert_shape(logits, ("B", "E"), "logits")
    assert_shape(code, ("B", "E"), "code", dims)
    target = code.to(logits.dtype)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="sum") / max(dims["B"], 1)
    if kind == "mse":
        return (logits.float() - target.float()).square().sum() / max(dims["B"], 1)
    raise ValueError(f"classification kind must be one of {CLASSIFICATION_KINDS}, got {kind!r}")


def linear_decay_factor(iteration: int, *, start: Optional[int], total: int) -> float:
    """StarGAN's schedule: 1 until ``start``, then linearly down to 0 at ``total`` iterations."""
    if start is None or total <= 0 or iteration < start:
        return 1.0
    span = max(total - start, 1)
    return max(0.0, 1.0 - (iteration - start) / span)


def _no_closure() -> None:
    return None


class StarGANSystem(EmoeditSystem[StarGANModelConfig]):
    """StarGAN's G and D with WGAN-GP, domain classification and cycle losses (module docstring)."""

    PART: ClassVar[str] = STARGAN_PART
    CONFIG_CLS: ClassVar[type] = StarGANModelConfig
    #: model keys that do not change the weights (may differ with ``init_from``)
    TRAINING_KEYS: ClassVar[frozenset[str]] = frozenset({"loss", "g_lr", "d_lr", "betas", "adam_eps", "n_critic",
                                                        "lr_decay_start", "log_images", "media_every_n_steps"})

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self._validate(cfg)
        self.automatic_optimization = False
        g, d = cfg.generator, cfg.discriminator
        self.generator = StarGANGenerator(image_channels=cfg.image_channels, emotion_dim=NUM_EMOTIONS,
                                          conv_dim=g.conv_dim, num_down=g.num_down, num_res_blocks=g.num_res_blocks)
        self.discriminator = StarGANDiscriminator(image_size=cfg.resolution, image_channels=cfg.image_channels,
                                                  emotion_dim=NUM_EMOTIONS, conv_dim=d.conv_dim,
                                                  num_layers=d.num_layers, max_channels=d.max_channels)
        self._last_triples: Tensor | None = None

    @staticmethod
    def _validate(cfg: StarGANModelConfig) -> None:
        problems = []
        w = cfg.loss
        for name in ("adversarial", "classification", "reconstruction", "gradient_penalty"):
            value = getattr(w, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"model.loss.{name} must be a finite number >= 0, got {value}")
        if w.classification_kind not in CLASSIFICATION_KINDS:
            problems.append(f"model.loss.classification_kind must be one of {CLASSIFICATION_KINDS}, "
                            f"got {w.classification_kind!r}")
        if cfg.resolution % (2 ** cfg.generator.num_down):
            problems.append(f"model.resolution {cfg.resolution} must be divisible by 2^generator.num_down")
        if cfg.resolution % (2 ** cfg.discriminator.num_layers) or cfg.resolution < 2 ** cfg.discriminator.num_layers:
            problems.append(f"model.resolution {cfg.resolution} must be a multiple of 2^discriminator.num_layers "
                            f"= {2 ** cfg.discriminator.num_layers}")
        if cfg.n_critic < 1:
            problems.append(f"model.n_critic must be >= 1, got {cfg.n_critic}")
        if len(cfg.betas) != 2:
            problems.append(f"model.betas must hold two numbers, got {list(cfg.betas)}")
        if cfg.g_lr <= 0 or cfg.d_lr <= 0:
            problems.append("model.g_lr and model.d_lr must be > 0")
        if problems:
            raise ValueError("stargan model config: " + "; ".join(problems))

    # ------------------------------------------------------------------ lightning plumbing
    def on_fit_start(self) -> None:
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise ValueError(f"trainer.precision={precision} is not supported by stargan (the gradient penalty is "
                             "not loss-scaled); use 32 or bf16-mixed")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.config
        betas = (float(cfg.betas[0]), float(cfg.betas[1]))
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.g_lr, betas=betas, eps=cfg.adam_eps)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.d_lr, betas=betas, eps=cfg.adam_eps)
        return [opt_g, opt_d]

    def extra_callbacks(self) -> list:
        """Callbacks train.py adds for this part: the media logger (no-op without W&B)."""
        return [MediaLogger(every_n_steps=self.config.media_every_n_steps)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The generator's constructor arguments, for loading without Lightning."""
        checkpoint[STARGAN_GENERATOR_KWARGS_KEY] = dict(self.generator.init_kwargs)

    def _optimizer_step(self, optimizer: Any, *, count: bool) -> None:
        """Step ``optimizer``; only counted steps advance ``global_step`` (one per iteration)."""
        if count:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, _no_closure, model=self)

    def _apply_lr_schedule(self, optimizers: tuple[Any, Any]) -> float:
        cfg = self.config
        total = int(self.trainer.max_steps or 0) if self._trainer is not None else 0
        factor = linear_decay_factor(self.global_step, start=cfg.lr_decay_start, total=total)
        for optimizer, base in zip(optimizers, (cfg.g_lr, cfg.d_lr)):
            for group in optimizer.optimizer.param_groups:
                group["lr"] = base * factor
        return factor

    # ------------------------------------------------------------------ batches
    def split_batch(self, batch: dict[str, Any]) -> StarGANBatch:
        """Check a DataModule batch and convert the uint8 crops to [-1, 1]."""
        cfg = self.config
        images = batch[IMAGE_KEY]
        dims = assert_shape(images, ("B", cfg.image_channels, cfg.resolution, cfg.resolution), f"batch[{IMAGE_KEY!r}]")
        if images.dtype != torch.uint8:
            raise TypeError(f"batch[{IMAGE_KEY!r}] must be uint8 (the face crop DataModule's output), got {images.dtype}")
        for key in (EMOTION_KEY, TARGET_KEY):
            assert_shape(batch[key], ("B", NUM_EMOTIONS), f"batch[{key!r}]", dims)
        return StarGANBatch(images=images.float().div(127.5).sub(1.0), emotion_code=batch[EMOTION_KEY].float(),
                            target_code=batch[TARGET_KEY].float())

    # ------------------------------------------------------------------ losses
    def discriminator_terms(self, b: StarGANBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_D`` and its unweighted terms (terms of weight 0 are not computed)."""
        w = self.config.loss
        with torch.no_grad():
            fake = self.generator(b.images, b.target_code)
        real_out = self.discriminator(b.images)
        fake_out = self.discriminator(fake)
        loss = real_out.source.new_zeros(())
        logs = {"critic_real": real_out.critic.detach().mean(), "critic_fake": fake_out.critic.detach().mean()}
        logs["wasserstein"] = logs["critic_real"] - logs["critic_fake"]
        if w.adversarial > 0:
            d_adv = wgan_critic_loss(real_out.source, fake_out.source)
            loss = loss + w.adversarial * d_adv
            logs["d_adv"] = d_adv.detach()
        if w.classification > 0:
            d_cls = emotion_classification_loss(real_out.emotion_logits, b.emotion_code, w.classification_kind)
            loss = loss + w.classification * d_cls
            logs["d_cls"] = d_cls.detach()
        if w.gradient_penalty > 0:
            d_gp = gradient_penalty(lambda x: self.discriminator(x).source, b.images, fake)
            loss = loss + w.gradient_penalty * d_gp
            logs["d_gp"] = d_gp.detach()
        logs["d_loss"] = loss.detach()
        return loss, logs

    def generator_terms(self, b: StarGANBatch) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """``L_G``, its unweighted terms and the images ``{"edit", "cycle"}`` (cycle only when computed)."""
        w = self.config.loss
        edited = self.generator(b.images, b.target_code)
        loss = edited.new_zeros(())
        logs: dict[str, Tensor] = {}
        images = {"edit": edited}
        if w.adversarial > 0 or w.classification > 0:
            out = self.discriminator(edited)
            if w.adversarial > 0:
                g_adv = wgan_generator_loss(out.source)
                loss = loss + w.adversarial * g_adv
                logs["g_adv"] = g_adv.detach()
            if w.classification > 0:
                g_cls = emotion_classification_loss(out.emotion_logits, b.target_code, w.classification_kind)
                loss = loss + w.classification * g_cls
                logs["g_cls"] = g_cls.detach()
        if w.reconstruction > 0:
            cycled = self.generator(edited, b.emotion_code)
            g_rec = (cycled - b.images).abs().mean()
            loss = loss + w.reconstruction * g_rec
            logs["g_rec"] = g_rec.detach()
            images["cycle"] = cycled
        logs["g_loss"] = loss.detach()
        return loss, logs, images

    # ------------------------------------------------------------------ steps
    def _d_step(self, opt_d: Any, b: StarGANBatch) -> dict[str, Tensor]:
        """Discriminator step: the counted optimiser step of every iteration."""
        with self.toggled_optimizer(opt_d):
            loss, logs = self.discriminator_terms(b)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_d, count=True)
        return logs

    def _g_step(self, opt_g: Any, b: StarGANBatch) -> dict[str, Tensor]:
        """Generator step, every ``n_critic``-th iteration."""
        with self.toggled_optimizer(opt_g):
            loss, logs, images = self.generator_terms(b)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_g, count=False)
        self._keep_triples(b, images)
        return logs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = self.split_batch(batch)
        iteration = self.global_step
        opt_g, opt_d = self.optimizers()
        factor = self._apply_lr_schedule((opt_g, opt_d))
        logs = self._d_step(opt_d, b)
        if (iteration + 1) % self.config.n_critic == 0:
            logs.update(self._g_step(opt_g, b))
        size = b.images.shape[0]
        for name, value in logs.items():
            self.log(f"{self.PART}/train/{name}", value, on_step=True, on_epoch=False, batch_size=size,
                     prog_bar=name in ("d_loss", "g_loss"))
        if self.config.lr_decay_start is not None:
            self.log(f"{self.PART}/train/lr_factor", factor, on_step=True, on_epoch=False, batch_size=size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = self.split_batch(batch)
        _, logs, _ = self.generator_terms(b)
        logs["self_l1"] = (self.generator(b.images, b.emotion_code) - b.images).abs().mean()
        for name, value in logs.items():
            self.log(f"{self.PART}/val/{name}", value, on_step=False, on_epoch=True, batch_size=b.images.shape[0],
                     sync_dist=True)

    # ------------------------------------------------------------------ media and inference
    def _keep_triples(self, b: StarGANBatch, images: dict[str, Tensor]) -> None:
        count = min(self.config.log_images, b.images.shape[0])
        if count <= 0:
            return
        row = [b.images[:count], images["edit"][:count]] + ([images["cycle"][:count]] if "cycle" in images else [])
        self._last_triples = torch.cat(row, dim=3).detach().clamp(-1, 1).add(1).div(2).cpu()

    def media(self) -> list[MediaItem]:
        """Input | edit | cycle triples of the latest generator step."""
        if self._last_triples is None:
            return []
        return [MediaImages(key=f"{self.PART}/edits", images=self._last_triples, nrow=1,
                            caption="input | G(x, target) | G(G(x, target), own)")]

    def forward(self, images: Tensor, emotion_code: Tensor) -> Tensor:
        """``G(x, c)``: ``(B, C, R, R)`` in [-1, 1], ``(B, E_t)`` → ``(B, C, R, R)`` in [-1, 1]."""
        return self.generator(images, emotion_code)


__all__ = [
    "StarGANBatch",
    "StarGANDiscriminatorConfig",
    "StarGANGeneratorConfig",
    "StarGANLossConfig",
    "StarGANModelConfig",
    "StarGANRunConfig",
    "StarGANSystem",
    "emotion_classification_loss",
    "linear_decay_factor",
]
