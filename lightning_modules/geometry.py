"""Training the geometry editor (METHOD.md §3.6, eqs. 6–16; step 6 of §4).

A StarGAN-style WGAN-GP on the face model's shape vector ``s = concat(id_coeff, exp_coeff)``
(:mod:`emoedit.networks.geometry_editor`): ``G(s, ê, s_ref)`` edits, ``D(s, s_ref)`` → critic
``D_c`` and emotion regression ``D_e``. Unpaired data from a ``coeffs`` cache
(:class:`~datamodules.coefficients.CoefficientDataModule`): a frame ``s_t`` with its true
code ``e_o``, a random target ``ê``, and two random neutral frames of the same person,
``s_rt`` (condition of the real input and of G in the generator step) and ``s_rf``
(condition of the fake in the discriminator step).

Discriminator step ``_d_step`` (every iteration; the counted optimiser step)::

    s_f   = G(s_t, ê, s_rf)                                   (no gradient into G)
    L_D   = L_dis + λ_e·L_emo + λ_gp·L_gp
    L_dis = −D_c(s_t, s_rt) + D_c(s_f, s_rf)                  (eq. 7, batch means)
    L_emo = ‖D_e(s_t, s_rt) − e_o‖²                           (eq. 6, real inputs only)
    L_gp  = (‖∂D_c(s̃, s_rt)/∂s̃‖₂ − 1)²,  s̃ = a·s_t + (1−a)·s_f   (eq. 8, a ~ U(0,1) per sample)

Generator step ``_g_step`` (every ``n_critic``-th iteration, StarGAN's schedule)::

    s_e   = G(s_t, ê, s_rt),  s_c = G(s_e, e_o, s_rt)
    L_G   = λ_adv·L_d + λ_e·L_emo + λ_g·L_cyc + λ_lm·L_lm + λ_lip·L_lip + λ_reg·L_reg   (eq. 16)
    L_d   = −D_c(s_e, s_rt)                                   (eq. 10)
    L_emo = ‖D_e(s_e, s_rt) − ê‖²                             (eq. 11)
    L_cyc = mean_v ‖V(s_c) − V(s_t)‖²                         (eq. 12, on mesh vertices)
    L_lm  = Σ_q Σ_{k∈K_q} λ_q/|K_q| ‖p_k − p̂_k‖²              (eq. 13, see below)
    L_lip = Σ_pairs |‖p_a − p_b‖² − ‖p̂_a − p̂_b‖²|              (eq. 14, edit vs input)
    L_reg = mean_v ‖V(s_e) − V(s_t)‖²                         (eq. 15)

(the paper has λ_adv = λ_lm = 1; both exist here so that every term can be switched off).

``V(s) = face_model.shape(id, exp)`` (model space, pose-free); every length is in
**millimetres** (model decimetres × 100), so the vertex and landmark losses are in mm²
(``mean_v ‖·‖²`` over the vertices, averaged over the batch). The vertex losses are
computed exactly as quadratic forms ``δᵀ(BᵀB/V)δ`` of the coefficient difference
(:class:`~emoedit.losses.geometry.ShapeGeometry`; equal to building both meshes with
``face_model.shape``, without the ``O(V)`` cost). Landmarks ``p`` are the 68 landmark
*vertices* of the face model in 3D model space (no camera: pose-free, depth included,
the same for every view).

Loss scales. The paper gives no values for λ_e, λ_g, λ_lip, λ_reg, and ours depend on the
units (mm² here). The defaults were chosen on the synthetic demo world
(``scripts/geometry_demo_world.py``), where the paper-like 1/10/… weights left G at the
identity: per sample, the gradient of L_lip with respect to the coefficients is ~2,600 per
unit λ_lip (it is an L1 of *squared* openings of ~20 mm, so it does not fade near zero),
the critic's is ~1 (1-Lipschitz), L_emo's ~1 per unit λ_e. Hence λ_lip = 1e-3,
λ_g = 1, λ_lm = 0.1, λ_reg = 0.01, with StarGAN's λ_e = 1, λ_gp = 10, n_critic = 5 and
Adam lr 1e-4 (λ_e = 3 with lr 3e-4 for twice the steps gave the same figures).

Identity. ``generator.identity_features`` / ``discriminator.identity_features`` (default
true, as the paper: the networks read all of ``s`` and ``s_ref``) can be switched off so
they read the expression blocks only; with ``edit_identity=false`` G then edits ``exp``
alone. With the 12 training subjects of the demo world, the paper's variant overfits to
the training identities (edits of unseen subjects are large and wrong even at level 0.5),
the expression-only one generalises (same edit sizes on seen and unseen subjects): see
``scripts/geometry_demo_world.py`` and ``docs/RESULTS.md``.

Reading of eq. 13 (the paper: "between the reconstructed value and the true value of the
keypoints", regions weighted so that G attends to regions that matter for emotion, e.g. the
eyes). Training is unpaired, so the only true landmarks are the input's own.
``loss.landmark_pair`` chooses what is compared with them:

- ``cycle`` (default): ``p`` = landmarks of the cycle reconstruction ``V(s_c)``, ``p̂`` = those
  of the input: a region-weighted landmark term of the cycle. Weighting the eyes up then
  means what the paper says: the way back must restore the eyes most precisely;
- ``edit``: ``p`` = landmarks of the edit ``V(s_e)``: a region-weighted *identity* term
  that keeps the regions an emotion should not move (use weights on ``jaw`` / ``nose``,
  not on the eyes, which an emotion must be free to change).

A loss weight of 0 switches its term off: it is not computed (nor logged), and what only
it needs (D on the edit, the cycle pass, the vertices) is skipped too.

Logged under ``geometry/train/``: ``d_loss``, ``d_dis``, ``d_emo``, ``d_gp``,
``critic_real``, ``critic_fake``, ``wasserstein`` (= mean real − fake critic) each
iteration; ``g_loss``, ``g_adv``, ``g_emo``, ``g_cyc``, ``g_lm``, ``g_lip``, ``g_reg``,
``edit_rms_mm`` (RMS vertex displacement of the edit) at generator steps — term values
are unweighted. With validation data (``data.val_fraction`` / ``data.val_keys``), the
generator terms of held-out clips under ``geometry/val/`` (seeded targets).

Adam with StarGAN's betas (0.5, 0.999). ``global_step`` counts iterations
(discriminator steps), so ``trainer.max_steps`` is the number of iterations and the
generator gets ``max_steps / n_critic`` updates. Resume with ``ckpt_path=last``.
The face model is not stored in checkpoints (BFM would add ~100 MB; the system holds only
the Gram matrix and landmark rows it needs, as non-persistent buffers); its name and
layout are, and :meth:`GeometryGenerator.from_checkpoint` loads the generator alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from datamodules.coefficients import (
    COEFFS_KEY,
    EMOTION_KEY,
    REFERENCE_FAKE_KEY,
    REFERENCE_KEY,
    TARGET_KEY,
    CoefficientDataConfig,
)
from emoedit.config import RunConfig
from emoedit.editing.emotion_code import NUM_EMOTIONS
from emoedit.losses.adversarial import gradient_penalty, wgan_critic_loss, wgan_generator_loss
from emoedit.losses.geometry import (
    ShapeGeometry,
    emotion_regression_loss,
    lip_opening_loss,
    region_landmark_loss,
    region_landmark_weights,
)
from emoedit.metrics.geometry import MM_PER_MODEL_UNIT  # face-model space is in decimetres (mm = × 100)
from emoedit.networks.geometry_editor import (
    FACE_MODEL_KEY,
    GENERATOR_KWARGS_KEY,
    GEOMETRY_PART,
    GeometryDiscriminator,
    GeometryGenerator,
    ShapeCoeffLayout,
)
from emoedit.shape_checks import assert_shape
from lightning_modules.base import EmoeditSystem
from lightning_modules.recon import build_face_model

LANDMARK_PAIRS = ("cycle", "edit")


@dataclass
class LandmarkRegionWeights:
    jaw: float = 1.0  # λ_q of the jaw line (points 1-17)
    brows: float = 1.0  # eyebrows (18-27)
    nose: float = 1.0  # nose (28-36)
    eyes: float = 3.0  # eyes (37-48): weighted up (METHOD §3.6)
    mouth: float = 1.0  # lips (49-68)


@dataclass
class GeometryLossConfig:
    adversarial: float = 1.0  # weight of L_d (eq. 10; paper 1)
    emotion: float = 1.0  # λ_e: L_emo of D (real inputs, eq. 6) and of G (eq. 11; StarGAN's λ_cls = 1)
    gradient_penalty: float = 10.0  # λ_gp (eq. 8; WGAN-GP / StarGAN 10)
    cycle: float = 1.0  # λ_g: vertex cycle loss (eq. 12), per mm²
    landmark: float = 0.1  # multiplies L_lm (eq. 13; paper 1), per mm²
    landmark_pair: str = "cycle"  # what eq. 13 compares with the input's landmarks: "cycle" or "edit"
    regions: LandmarkRegionWeights = field(default_factory=LandmarkRegionWeights)  # λ_q per region
    lip: float = 1.0e-3  # λ_lip: mouth-opening loss (eq. 14), per mm² of squared opening
    regularization: float = 0.01  # λ_reg: vertex regulariser (eq. 15), per mm²


@dataclass
class GeometryNetworkConfig:
    hidden_dim: int = 256  # width of the hidden layers
    num_layers: int = 4  # hidden layers (Linear → norm → activation)
    norm: str = "layer"  # "layer" (LayerNorm) or "none" (no BatchNorm in a WGAN-GP critic)
    activation: str = "leaky_relu"  # leaky_relu (0.2) | relu | silu | gelu
    use_difference: bool = True  # also feed s − s_ref
    identity_features: bool = True  # feed the identity blocks of s, s_ref (false: expression only; see the docstring)


@dataclass
class GeometryModelConfig:
    face_model: str = "procedural"  # "procedural" or a saved face model (.pt) — the cache's model
    generator: GeometryNetworkConfig = field(default_factory=GeometryNetworkConfig)
    discriminator: GeometryNetworkConfig = field(default_factory=GeometryNetworkConfig)
    edit_identity: bool = True  # G edits id and exp (paper); False: exp only
    loss: GeometryLossConfig = field(default_factory=GeometryLossConfig)
    g_lr: float = 1.0e-4  # generator learning rate (StarGAN 1e-4)
    d_lr: float = 1.0e-4  # discriminator learning rate (StarGAN 1e-4)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam betas (StarGAN)
    adam_eps: float = 1.0e-8  # Adam epsilon
    n_critic: int = 5  # discriminator steps per generator step (StarGAN 5)


@dataclass
class GeometryRunConfig(RunConfig):
    model: GeometryModelConfig = field(default_factory=GeometryModelConfig)
    data: CoefficientDataConfig = field(default_factory=CoefficientDataConfig)


@dataclass(frozen=True)
class GeometryBatch:
    """One batch, split into shape vectors (S = K_id + K_exp)."""

    shape: Tensor  # (B, S) s_t
    reference: Tensor  # (B, S) s_rt
    reference_fake: Tensor  # (B, S) s_rf
    emotion_code: Tensor  # (B, E_t) e_o
    target_code: Tensor  # (B, E_t) ê


def _no_closure() -> None:
    return None


class GeometrySystem(EmoeditSystem[GeometryModelConfig]):
    """G + D + the face model (outside the checkpoint) + the losses of §3.6 (module docstring)."""

    PART: ClassVar[str] = GEOMETRY_PART
    CONFIG_CLS: ClassVar[type] = GeometryModelConfig
    #: model keys that do not change the weights (may differ with ``init_from``)
    TRAINING_KEYS: ClassVar[frozenset[str]] = frozenset({"loss", "g_lr", "d_lr", "betas", "adam_eps", "n_critic"})

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self._validate(cfg)
        self.automatic_optimization = False
        face_model = build_face_model(cfg.face_model)
        layout = face_model.layout
        self.coeff_layout = layout
        self.shape_layout = ShapeCoeffLayout.from_layout(layout)
        self.face_model_info: dict[str, Any] = {
            "name": face_model.name, "source": cfg.face_model, "num_vertices": face_model.num_vertices,
            "layout": {k: sl.stop - sl.start for k, sl in layout.slices.items()},
        }
        # V(s) as an exact quadratic form + the 68 landmark rows, in mm (non-persistent buffers:
        # rebuilt from the face model, never stored in checkpoints)
        self.geometry = ShapeGeometry.from_face_model(face_model, unit_scale=MM_PER_MODEL_UNIT)
        g, d = cfg.generator, cfg.discriminator
        self.generator = GeometryGenerator(
            id_dim=layout.id, exp_dim=layout.exp, emotion_dim=NUM_EMOTIONS, hidden_dim=g.hidden_dim,
            num_layers=g.num_layers, norm=g.norm, activation=g.activation, use_difference=g.use_difference,
            identity_features=g.identity_features, edit_identity=cfg.edit_identity,
        )
        self.discriminator = GeometryDiscriminator(
            id_dim=layout.id, exp_dim=layout.exp, emotion_dim=NUM_EMOTIONS, hidden_dim=d.hidden_dim,
            num_layers=d.num_layers, norm=d.norm, activation=d.activation, use_difference=d.use_difference,
            identity_features=d.identity_features,
        )
        self.register_buffer("landmark_weights", region_landmark_weights(asdict(cfg.loss.regions)), persistent=False)

    @staticmethod
    def _validate(cfg: GeometryModelConfig) -> None:
        problems = []
        weights = cfg.loss
        for name in ("adversarial", "emotion", "gradient_penalty", "cycle", "landmark", "lip", "regularization"):
            value = getattr(weights, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"model.loss.{name} must be a finite number >= 0, got {value}")
        if weights.landmark_pair not in LANDMARK_PAIRS:
            problems.append(f"model.loss.landmark_pair must be one of {LANDMARK_PAIRS}, got {weights.landmark_pair!r}")
        if cfg.n_critic < 1:
            problems.append(f"model.n_critic must be >= 1, got {cfg.n_critic}")
        if len(cfg.betas) != 2:
            problems.append(f"model.betas must hold two numbers, got {list(cfg.betas)}")
        if cfg.g_lr <= 0 or cfg.d_lr <= 0:
            problems.append("model.g_lr and model.d_lr must be > 0")
        if problems:
            raise ValueError("geometry model config: " + "; ".join(problems))

    # ------------------------------------------------------------------ lightning plumbing
    def setup(self, stage: str) -> None:
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        size = getattr(datamodule, "coeff_size", None)
        expected = self.coeff_layout.size
        if size is not None and size != expected:
            root = getattr(getattr(datamodule, "reader", None), "root", "the cache")
            name = self.face_model_info["name"]
            raise ValueError(f"{root}: coefficients have {size} entries, the face model {name!r} "
                             f"({self.config.face_model}) has {expected}: set model.face_model to the cache's model")

    def on_fit_start(self) -> None:
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise ValueError(f"trainer.precision={precision} is not supported by geometry (the gradient penalty is "
                             "not loss-scaled); use 32 (the networks are small MLPs)")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.config
        betas = (float(cfg.betas[0]), float(cfg.betas[1]))
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.g_lr, betas=betas, eps=cfg.adam_eps)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.d_lr, betas=betas, eps=cfg.adam_eps)
        return [opt_g, opt_d]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Generator arguments and the face model's identity, for loading without Lightning."""
        checkpoint[GENERATOR_KWARGS_KEY] = dict(self.generator.init_kwargs)
        checkpoint[FACE_MODEL_KEY] = dict(self.face_model_info)

    def _optimizer_step(self, optimizer: Any, *, count: bool) -> None:
        """Step ``optimizer``; only counted steps advance ``global_step`` (one per iteration)."""
        if count:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, _no_closure, model=self)

    # ------------------------------------------------------------------ batches
    def split_batch(self, batch: dict[str, Any]) -> GeometryBatch:
        """Check a DataModule batch and take the shape vectors out of the full coefficients."""
        layout = self.coeff_layout
        coeffs = batch[COEFFS_KEY]
        dims = assert_shape(coeffs, ("B", None), f"batch[{COEFFS_KEY!r}]")
        if coeffs.shape[1] != layout.size:
            raise ValueError(f"batch coefficients have {coeffs.shape[1]} entries, the face model has {layout.size}")
        for key in (REFERENCE_KEY, REFERENCE_FAKE_KEY):
            assert_shape(batch[key], ("B", layout.size), f"batch[{key!r}]", dims)
        for key in (EMOTION_KEY, TARGET_KEY):
            assert_shape(batch[key], ("B", NUM_EMOTIONS), f"batch[{key!r}]", dims)

        def shape(key: str) -> Tensor:
            return self.shape_layout.extract(layout, batch[key].float())

        return GeometryBatch(shape=shape(COEFFS_KEY), reference=shape(REFERENCE_KEY),
                             reference_fake=shape(REFERENCE_FAKE_KEY), emotion_code=batch[EMOTION_KEY].float(),
                             target_code=batch[TARGET_KEY].float())

    # ------------------------------------------------------------------ losses
    def discriminator_terms(self, b: GeometryBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_D`` (eq. 9) and its unweighted terms."""
        w = self.config.loss
        with torch.no_grad():
            fake = self.generator(b.shape, b.target_code, b.reference_fake).shape_coeffs
        real_out = self.discriminator(b.shape, b.reference)
        fake_out = self.discriminator(fake, b.reference_fake)
        d_dis = wgan_critic_loss(real_out.critic, fake_out.critic)
        loss = d_dis
        logs = {"d_dis": d_dis.detach(), "critic_real": real_out.critic.detach().mean(),
                "critic_fake": fake_out.critic.detach().mean()}
        logs["wasserstein"] = logs["critic_real"] - logs["critic_fake"]
        if w.emotion > 0:
            d_emo = emotion_regression_loss(real_out.emotion, b.emotion_code)
            loss = loss + w.emotion * d_emo
            logs["d_emo"] = d_emo.detach()
        if w.gradient_penalty > 0:
            d_gp = gradient_penalty(lambda x: self.discriminator(x, b.reference).critic, b.shape, fake)
            loss = loss + w.gradient_penalty * d_gp
            logs["d_gp"] = d_gp.detach()
        logs["d_loss"] = loss.detach()
        return loss, logs

    def generator_terms(self, b: GeometryBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_G`` (eq. 16) and its unweighted terms (terms with weight 0 are not computed)."""
        w = self.config.loss
        edited = self.generator(b.shape, b.target_code, b.reference).shape_coeffs
        loss = edited.new_zeros(())
        logs: dict[str, Tensor] = {}
        if w.adversarial > 0 or w.emotion > 0:
            out = self.discriminator(edited, b.reference)
            if w.adversarial > 0:
                g_adv = wgan_generator_loss(out.critic)
                loss = loss + w.adversarial * g_adv
                logs["g_adv"] = g_adv.detach()
            if w.emotion > 0:
                g_emo = emotion_regression_loss(out.emotion, b.target_code)
                loss = loss + w.emotion * g_emo
                logs["g_emo"] = g_emo.detach()
        landmark_on_cycle = w.landmark > 0 and w.landmark_pair == "cycle"
        landmark_on_edit = w.landmark > 0 and w.landmark_pair == "edit"
        need_cycle = w.cycle > 0 or landmark_on_cycle
        need_edit_mesh = w.regularization > 0 or w.lip > 0 or landmark_on_edit
        if not (need_cycle or need_edit_mesh):
            logs["g_loss"] = loss.detach()
            return loss, logs
        geometry = self.geometry
        input_landmarks = geometry.landmarks(b.shape)
        if need_edit_mesh:
            edit_landmarks = geometry.landmarks(edited)
            if w.regularization > 0:
                g_reg = geometry.vertex_loss(edited, b.shape)
                loss = loss + w.regularization * g_reg
                logs["g_reg"] = g_reg.detach()
                logs["edit_rms_mm"] = g_reg.detach().sqrt()
            if w.lip > 0:
                g_lip = lip_opening_loss(edit_landmarks, input_landmarks)
                loss = loss + w.lip * g_lip
                logs["g_lip"] = g_lip.detach()
            if landmark_on_edit:
                g_lm = region_landmark_loss(edit_landmarks, input_landmarks, self.landmark_weights)
                loss = loss + w.landmark * g_lm
                logs["g_lm"] = g_lm.detach()
        if need_cycle:
            cycled = self.generator(edited, b.emotion_code, b.reference).shape_coeffs
            if w.cycle > 0:
                g_cyc = geometry.vertex_loss(cycled, b.shape)
                loss = loss + w.cycle * g_cyc
                logs["g_cyc"] = g_cyc.detach()
            if landmark_on_cycle:
                g_lm = region_landmark_loss(geometry.landmarks(cycled), input_landmarks, self.landmark_weights)
                loss = loss + w.landmark * g_lm
                logs["g_lm"] = g_lm.detach()
        logs["g_loss"] = loss.detach()
        return loss, logs

    # ------------------------------------------------------------------ steps
    def _d_step(self, opt_d: Any, b: GeometryBatch) -> dict[str, Tensor]:
        """Discriminator step (eq. 9): the counted optimiser step of every iteration."""
        with self.toggled_optimizer(opt_d):
            loss, logs = self.discriminator_terms(b)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_d, count=True)
        return logs

    def _g_step(self, opt_g: Any, b: GeometryBatch) -> dict[str, Tensor]:
        """Generator step (eq. 16), every ``n_critic``-th iteration."""
        with self.toggled_optimizer(opt_g):
            loss, logs = self.generator_terms(b)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._optimizer_step(opt_g, count=False)
        return logs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = self.split_batch(batch)
        iteration = self.global_step
        opt_g, opt_d = self.optimizers()
        logs = self._d_step(opt_d, b)
        if (iteration + 1) % self.config.n_critic == 0:
            logs.update(self._g_step(opt_g, b))
        size = b.shape.shape[0]
        for name, value in logs.items():
            self.log(f"{self.PART}/train/{name}", value, on_step=True, on_epoch=False, batch_size=size,
                     prog_bar=name in ("d_loss", "g_loss"))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = self.split_batch(batch)
        _, logs = self.generator_terms(b)
        for name, value in logs.items():
            self.log(f"{self.PART}/val/{name}", value, on_step=False, on_epoch=True, batch_size=b.shape.shape[0])

    # ------------------------------------------------------------------ inference
    def forward(self, shape_coeffs: Tensor, emotion_code: Tensor, reference: Tensor) -> Tensor:
        """``G(s, ê, s_ref)``: ``(B, S)``, ``(B, E_t)``, ``(B, S)`` → edited ``(B, S)``."""
        return self.generator(shape_coeffs, emotion_code, reference).shape_coeffs


__all__ = [
    "GeometryBatch",
    "GeometryLossConfig",
    "GeometryModelConfig",
    "GeometryNetworkConfig",
    "GeometryRunConfig",
    "GeometrySystem",
    "LandmarkRegionWeights",
    "MM_PER_MODEL_UNIT",
]
