"""Training the ExprGAN-style baseline (Ding et al., AAAI 2018) on aligned face crops (METHOD.md §6).

Networks (:mod:`emoedit.networks.exprgan`): the generator ``G(x, e) = G_dec(G_enc(x),
F_ctrl(e))`` (identity latent + expression-intensity code, the code of an emotion scaled by
its strength), the code-conditioned image discriminator ``D_img(x, e)`` and the expression
regressor ``Q(x) → e``. Data: :class:`~datamodules.face_crops.FaceCropDataModule` with
``paired=true``: a crop ``x`` with its code ``e_o``, and a target code ``ê`` with a real
frame ``y`` of the same subject showing it (the sample itself with probability
``data.self_target_prob`` — ExprGAN's own reconstruction — else another clip's frame of
that subject at the target emotion and level; see the DataModule).

Discriminator step ``_d_step`` (every iteration; the counted optimiser step), D_img and Q::

    L_D = λ_adv · [softplus(−D_img(y, ê)) + softplus(D_img(G(x, ê), ê))]      (logistic, batch means)
        + λ_q   · Σ_k (Q(x)_k − e_o,k)²                                      (Q on real crops, batch mean)

Generator step ``_g_step`` (every iteration), G_enc, F_ctrl and G_dec::

    x̂   = G(x, ê)
    L_G = λ_rec · mean |x̂ − y|                       (L1 against the paired frame, [-1, 1] images)
        + λ_adv · softplus(−D_img(x̂, ê))              (non-saturating)
        + λ_expr · Σ_k (Q(x̂)_k − ê_k)²                (the output shows the requested intensity)

A weight of 0 switches its term off (not computed, not logged). Readings of ExprGAN for a
small baseline trained on the project's data (deviations): the reconstruction target is
the paired frame of the requested emotion (ExprGAN reconstructs the input with its own
label; MEAD gives same-subject frames of every emotion and level, though not the same
speech); ``Q`` is trained on real crops with their true codes (ExprGAN's regulariser
follows InfoGAN on generated images; training it on labelled reals keeps G from encoding
the code invisibly); the identity-preserving VGG-Face loss, the adversarial prior on ``z``,
the total-variation term and the incremental three-stage schedule are not reproduced.
Defaults (DCGAN/CAAE-style Adam, lr 2e-4, β = (0.5, 0.999); λ_rec = 10, λ_adv = λ_expr =
λ_q = 1) are ours, not the paper's (which does not state its weights in the text).

Logged under ``exprgan/train/``: ``d_loss``, ``d_adv``, ``d_real``, ``d_fake``, ``real_logit``,
``fake_logit``, ``q_real``, ``g_loss``, ``g_rec``, ``g_adv``, ``g_expr``; with validation data,
``exprgan/val/{g_rec,g_expr,self_l1,psnr}`` (``self_l1`` = mean ``|G(x, e_o) − x|``, PSNR in dB
of the [0, 1] output against the paired frame). Media: input | target | output triples.
The checkpoint carries ``exprgan_generator_kwargs``, so
:class:`emoedit.baselines.crop_editor.ExprGANEditor` loads the generator without Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.media_logger import MediaImages, MediaItem, MediaLogger
from datamodules.face_crops import EMOTION_KEY, IMAGE_KEY, TARGET_IMAGE_KEY, TARGET_KEY, FaceCropDataConfig
from emoedit.config import RunConfig
from emoedit.editing.emotion_code import NUM_EMOTIONS
from emoedit.losses.adversarial import discriminator_logistic_loss, generator_logistic_loss
from emoedit.networks.exprgan import (
    DECODER_NORMS,
    EXPRGAN_GENERATOR_KWARGS_KEY,
    EXPRGAN_PART,
    ExprGANDiscriminator,
    ExprGANGenerator,
    ExpressionRegressor,
)
from emoedit.shape_checks import assert_shape
from lightning_modules.base import EmoeditSystem


@dataclass
class ExprGANLossConfig:
    reconstruction: float = 10.0  # λ_rec: L1 of the output against the paired frame ([-1, 1] images)
    adversarial: float = 1.0  # λ_adv: logistic D_img loss / non-saturating G loss
    expression: float = 1.0  # λ_expr: G's output must make Q read the target strengths
    regressor: float = 1.0  # λ_q: Q's regression loss on real crops (D step)


@dataclass
class ExprGANModelConfig:
    resolution: int = 128  # crop side R (power of two >= 8; ExprGAN: 128); data.resolution follows it
    image_channels: int = 3  # image channels
    base_channels: int = 64  # channels of the first encoder stage (doubled per stage, mirrored by the decoder)
    max_channels: int = 512  # cap on the channels of any stage
    latent_dim: int = 50  # identity latent length (ExprGAN: 50)
    code_dim: int = 5  # expression-code entries per emotion (ExprGAN: 5)
    decoder_norm: str = "batch"  # batch | instance | none
    discriminator_channels: int = 64  # channels of the first stage of D_img and Q
    loss: ExprGANLossConfig = field(default_factory=ExprGANLossConfig)
    g_lr: float = 2.0e-4  # generator learning rate
    d_lr: float = 2.0e-4  # discriminator + regressor learning rate
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam betas
    adam_eps: float = 1.0e-8  # Adam epsilon
    log_images: int = 4  # input | target | output triples in the media (0: none)
    media_every_n_steps: int = 1000  # media every N iterations (W&B only)


@dataclass
class ExprGANRunConfig(RunConfig):
    model: ExprGANModelConfig = field(default_factory=ExprGANModelConfig)
    data: FaceCropDataConfig = field(default_factory=lambda: FaceCropDataConfig(
        resolution="${model.resolution}", paired=True, self_target_prob=0.2))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ExprGANBatch:
    """One batch in network units."""

    images: Tensor  # (B, C, R, R) float in [-1, 1]: x
    targets: Tensor  # (B, C, R, R) float in [-1, 1]: y, a real frame of the same subject showing ê
    emotion_code: Tensor  # (B, E_t) float: e_o
    target_code: Tensor  # (B, E_t) float: ê


def code_regression_loss(
    prediction: Tensor,  # (B, E) float predicted strengths
    code: Tensor,  # (B, E) float true strengths
) -> Tensor:
    """``Σ_k (prediction_k − code_k)²`` averaged over the batch."""
    dims = assert_shape(prediction, ("B", "E"), "prediction")
    assert_shape(code, ("B", "E"), "code", dims)
    return (prediction.float() - code.float()).square().sum() / max(dims["B"], 1)


def _no_closure() -> None:
    return None


class ExprGANSystem(EmoeditSystem[ExprGANModelConfig]):
    """ExprGAN's G (encoder, controller, decoder), D_img and Q with the losses of the module docstring."""

    PART: ClassVar[str] = EXPRGAN_PART
    CONFIG_CLS: ClassVar[type] = ExprGANModelConfig
    #: model keys that do not change the weights (may differ with ``init_from``)
    TRAINING_KEYS: ClassVar[frozenset[str]] = frozenset({"loss", "g_lr", "d_lr", "betas", "adam_eps", "log_images",
                                                        "media_every_n_steps"})

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self._validate(cfg)
        self.automatic_optimization = False
        common = dict(image_size=cfg.resolution, image_channels=cfg.image_channels)
        self.generator = ExprGANGenerator(**common, emotion_dim=NUM_EMOTIONS, base_channels=cfg.base_channels,
                                          max_channels=cfg.max_channels, latent_dim=cfg.latent_dim,
                                          code_dim=cfg.code_dim, decoder_norm=cfg.decoder_norm)
        self.discriminator = ExprGANDiscriminator(**common, emotion_dim=NUM_EMOTIONS,
                                                  base_channels=cfg.discriminator_channels,
                                                  max_channels=cfg.max_channels)
        self.regressor = ExpressionRegressor(**common, emotion_dim=NUM_EMOTIONS,
                                             base_channels=cfg.discriminator_channels, max_channels=cfg.max_channels)
        self._last_triples: Tensor | None = None

    @staticmethod
    def _validate(cfg: ExprGANModelConfig) -> None:
        problems = []
        w = cfg.loss
        for name in ("reconstruction", "adversarial", "expression", "regressor"):
            value = getattr(w, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"model.loss.{name} must be a finite number >= 0, got {value}")
        if w.reconstruction + w.adversarial + w.expression <= 0:
            problems.append("model.loss: at least one generator term (reconstruction, adversarial, expression) must be > 0")
        if cfg.resolution < 8 or cfg.resolution & (cfg.resolution - 1):
            problems.append(f"model.resolution must be a power of two >= 8, got {cfg.resolution}")
        if cfg.decoder_norm not in DECODER_NORMS:
            problems.append(f"model.decoder_norm must be one of {DECODER_NORMS}, got {cfg.decoder_norm!r}")
        if len(cfg.betas) != 2:
            problems.append(f"model.betas must hold two numbers, got {list(cfg.betas)}")
        if cfg.g_lr <= 0 or cfg.d_lr <= 0:
            problems.append("model.g_lr and model.d_lr must be > 0")
        if problems:
            raise ValueError("exprgan model config: " + "; ".join(problems))

    # ------------------------------------------------------------------ lightning plumbing
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.config
        betas = (float(cfg.betas[0]), float(cfg.betas[1]))
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.g_lr, betas=betas, eps=cfg.adam_eps)
        d_params = list(self.discriminator.parameters()) + list(self.regressor.parameters())
        opt_d = torch.optim.Adam(d_params, lr=cfg.d_lr, betas=betas, eps=cfg.adam_eps)
        return [opt_g, opt_d]

    def extra_callbacks(self) -> list:
        """Callbacks train.py adds for this part: the media logger (no-op without W&B)."""
        return [MediaLogger(every_n_steps=self.config.media_every_n_steps)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The generator's constructor arguments, for loading without Lightning."""
        checkpoint[EXPRGAN_GENERATOR_KWARGS_KEY] = dict(self.generator.init_kwargs)

    def _optimizer_step(self, optimizer: Any, *, count: bool) -> None:
        """Step ``optimizer``; only counted steps advance ``global_step`` (one per iteration)."""
        if count:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, _no_closure, model=self)

    # ------------------------------------------------------------------ batches
    def split_batch(self, batch: dict[str, Any]) -> ExprGANBatch:
        """Check a (paired) DataModule batch and convert the uint8 crops to [-1, 1]."""
        cfg = self.config
        if TARGET_IMAGE_KEY not in batch:
            raise KeyError(f"exprgan needs paired batches with {TARGET_IMAGE_KEY!r} (set data.paired=true)")
        shape = ("B", cfg.image_channels, cfg.resolution, cfg.resolution)
        dims = assert_shape(batch[IMAGE_KEY], shape, f"batch[{IMAGE_KEY!r}]")
        assert_shape(batch[TARGET_IMAGE_KEY], shape, f"batch[{TARGET_IMAGE_KEY!r}]", dims)
        for key in (IMAGE_KEY, TARGET_IMAGE_KEY):
            if batch[key].dtype != torch.uint8:
                raise TypeError(f"batch[{key!r}] must be uint8 (the face crop DataModule's output), got {batch[key].dtype}")
        for key in (EMOTION_KEY, TARGET_KEY):
            assert_shape(batch[key], ("B", NUM_EMOTIONS), f"batch[{key!r}]", dims)

        def network(key: str) -> Tensor:
            return batch[key].float().div(127.5).sub(1.0)

        return ExprGANBatch(images=network(IMAGE_KEY), targets=network(TARGET_IMAGE_KEY),
                            emotion_code=batch[EMOTION_KEY].float(), target_code=batch[TARGET_KEY].float())

    # ------------------------------------------------------------------ losses
    def discriminator_terms(self, b: ExprGANBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_D`` (D_img and Q) and its unweighted terms."""
        w = self.config.loss
        loss = b.images.new_zeros(())
        logs: dict[str, Tensor] = {}
        if w.adversarial > 0:
            with torch.no_grad():
                fake = self.generator(b.images, b.target_code).image
            real_logits = self.discriminator(b.targets, b.target_code)
            fake_logits = self.discriminator(fake, b.target_code)
            terms = discriminator_logistic_loss(real_logits, fake_logits)
            loss = loss + w.adversarial * terms.total
            logs.update(d_adv=terms.total.detach(), d_real=terms.real.detach(), d_fake=terms.fake.detach(),
                        real_logit=real_logits.detach().mean(), fake_logit=fake_logits.detach().mean())
        if w.regressor > 0:
            q_real = code_regression_loss(self.regressor(b.images), b.emotion_code)
            loss = loss + w.regressor * q_real
            logs["q_real"] = q_real.detach()
        logs["d_loss"] = loss.detach()
        return loss, logs

    def generator_terms(self, b: ExprGANBatch) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """``L_G``, its unweighted terms and the output images ``(B, C, R, R)`` in [-1, 1]."""
        w = self.config.loss
        output = self.generator(b.images, b.target_code).image
        loss = output.new_zeros(())
        logs: dict[str, Tensor] = {}
        if w.reconstruction > 0:
            g_rec = (output - b.targets).abs().mean()
            loss = loss + w.reconstruction * g_rec
            logs["g_rec"] = g_rec.detach()
        if w.adversarial > 0:
            g_adv = generator_logistic_loss(self.discriminator(output, b.target_code))
            loss = loss + w.adversarial * g_adv
            logs["g_adv"] = g_adv.detach()
        if w.expression > 0:
            g_expr = code_regression_loss(self.regressor(output), b.target_code)
            loss = loss + w.expression * g_expr
            logs["g_expr"] = g_expr.detach()
        logs["g_loss"] = loss.detach()
        return loss, logs, output

    # ------------------------------------------------------------------ steps
    def _d_step(self, opt_d: Any, b: ExprGANBatch) -> dict[str, Tensor]:
        """D_img + Q step: the counted optimiser step of every iteration."""
        with self.toggled_optimizer(opt_d):
            loss, logs = self.discriminator_terms(b)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_d, count=True)
        return logs

    def _g_step(self, opt_g: Any, b: ExprGANBatch) -> dict[str, Tensor]:
        """Generator step (encoder, controller, decoder), every iteration."""
        with self.toggled_optimizer(opt_g):
            loss, logs, output = self.generator_terms(b)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_g, count=False)
        self._keep_triples(b, output)
        return logs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = self.split_batch(batch)
        opt_g, opt_d = self.optimizers()
        logs = self._d_step(opt_d, b)
        logs.update(self._g_step(opt_g, b))
        size = b.images.shape[0]
        for name, value in logs.items():
            self.log(f"{self.PART}/train/{name}", value, on_step=True, on_epoch=False, batch_size=size,
                     prog_bar=name in ("d_loss", "g_loss"))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = self.split_batch(batch)
        _, logs, output = self.generator_terms(b)
        logs.pop("g_adv", None)
        logs.pop("g_loss", None)
        logs["self_l1"] = (self.generator(b.images, b.emotion_code).image - b.images).abs().mean()
        mse01 = F.mse_loss(output.clamp(-1, 1), b.targets) / 4.0  # in [0, 1] units
        logs["psnr"] = -10.0 * torch.log10(mse01.clamp_min(1e-10))
        for name, value in logs.items():
            self.log(f"{self.PART}/val/{name}", value, on_step=False, on_epoch=True, batch_size=b.images.shape[0],
                     sync_dist=True)

    # ------------------------------------------------------------------ media and inference
    def _keep_triples(self, b: ExprGANBatch, output: Tensor) -> None:
        count = min(self.config.log_images, b.images.shape[0])
        if count > 0:
            row = torch.cat([b.images[:count], b.targets[:count], output[:count]], dim=3)
            self._last_triples = row.detach().clamp(-1, 1).add(1).div(2).cpu()

    def media(self) -> list[MediaItem]:
        """Input | paired target | output triples of the latest generator step."""
        if self._last_triples is None:
            return []
        return [MediaImages(key=f"{self.PART}/edits", images=self._last_triples, nrow=1,
                            caption="input | target frame | G(x, target code)")]

    def forward(self, images: Tensor, emotion_code: Tensor) -> Tensor:
        """``G(x, e)``: ``(B, C, R, R)`` in [-1, 1], ``(B, E_t)`` → ``(B, C, R, R)`` in [-1, 1]."""
        return self.generator(images, emotion_code).image


__all__ = [
    "ExprGANBatch",
    "ExprGANLossConfig",
    "ExprGANModelConfig",
    "ExprGANRunConfig",
    "ExprGANSystem",
    "code_regression_loss",
]
