"""Training the 3D reconstruction regressor (METHOD.md §3.1, training step 1 of §4).

Self-supervised like Deep3DFaceRecon — regress coefficients from the aligned crop, build
and render the face (per-vertex colours with SH shading, Deep3D's ``compute_for_render``),
and compare with the input: robust photometric loss on the face region, weighted
68-landmark loss, coefficient / lighting / reflectance priors, optional perceptual
identity loss — plus supervised coefficient and vertex losses where the cache stores the
true coefficients (synthetic world). Every weight set to 0 switches its term off.

Logged: ``recon/train/<term>`` and ``recon/train/loss`` per step; ``recon/val/<term>``,
``recon/val/landmark_px`` (mean 68-point error, crop pixels), ``recon/val/photometric_l2``
(unweighted), and with truth ``recon/val/coeff_abs/<block>`` and ``recon/val/vertex_error``
(decimetres) per epoch; a few input | overlay images when the logger can log images.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from datamodules.frames import TRUTH_FIELD, FrameDataConfig
from emoedit.config import RunConfig
from emoedit.face_model.camera import PerspectiveCamera
from emoedit.face_model.morphable_model import MorphableModel
from emoedit.losses import (
    IdentityLoss,
    coefficient_prior,
    gamma_regularizer,
    landmark_error_px,
    landmark_loss,
    photometric_loss,
    reflectance_loss,
    region_faces,
    region_pixel_mask,
    supervised_coeff_loss,
    vertex_loss,
)
from emoedit.networks.recon_regressor import BACKBONES, ReconRegressor
from emoedit.render.renderer import MeshRenderer, RenderOutput
from emoedit.shape_checks import assert_shape
from lightning_modules.base import EmoeditSystem

PROCEDURAL = "procedural"
DEEP3D_CROP = 224  # the landmark loss is measured in 224-px units (Deep3D's weights)


@dataclass
class ReconLossConfig:
    photometric: float = 1.92  # w_color (Deep3D 1.92): robust photometric loss on the face region
    landmark: float = 1.6e-3  # w_lm (Deep3D 1.6e-3): weighted 68-landmark loss, 224-px units
    identity: float = 0.0  # w_feat (Deep3D 0.2): perceptual identity loss; needs model.identity_network
    coeff_prior: float = 3.0e-4  # w_reg (Deep3D 3e-4): weighted squared id / exp / tex coefficients
    id_prior: float = 1.0  # w_id inside coeff_prior (Deep3D 1.0)
    exp_prior: float = 0.8  # w_exp inside coeff_prior (Deep3D 0.8)
    tex_prior: float = 1.7e-2  # w_tex inside coeff_prior (Deep3D 1.7e-2)
    gamma_prior: float = 10.0  # w_gamma (Deep3D 10): monochromatic-light prior
    reflectance: float = 5.0  # w_reflc (Deep3D 5): uniform skin albedo (needs a skin mask and an albedo basis)
    supervised_coeff: float = 0.0  # squared error to coeffs_true (when the cache has it)
    supervised_vertex: float = 0.0  # mean vertex distance (dm) to the true shape (when the cache has coeffs_true)
    robust_photometric: bool = True  # per-pixel L2 norm (Deep3D) rather than squared error


@dataclass
class ReconModelConfig:
    backbone: str = "resnet50"  # regressor trunk: resnet50 (Deep3D), resnet34, resnet18, resnet_tiny
    crop_size: int = 224  # side of the aligned input crops, pixels (the cache's crop size)
    face_model: str = PROCEDURAL  # "procedural" or a path to a saved emoedit face model (.pt, MorphableModel.save)
    render_backend: str = "auto"  # rasteriser: auto | torch | pytorch3d
    identity_network: Optional[str] = None  # face-recognition network for loss.identity: .pt2 (torch.export) or TorchScript
    identity_input_size: int = 112  # input side of the identity network, pixels
    loss: ReconLossConfig = field(default_factory=ReconLossConfig)
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1.0e-4  # learning rate (Deep3D 1e-4)
    weight_decay: float = 0.0  # weight decay (adamw: decoupled)
    bf16: bool = False  # bfloat16 autocast for the backbone only (CPU or GPU); the renderer stays float32
    channels_last: bool = False  # channels-last memory format for the backbone
    log_images: int = 4  # input | overlay pairs logged once per validation (0: none; needs an image logger)


@dataclass
class ReconRunConfig(RunConfig):
    model: ReconModelConfig = field(default_factory=ReconModelConfig)
    data: FrameDataConfig = field(default_factory=FrameDataConfig)


def build_face_model(source: str) -> MorphableModel:
    """``"procedural"`` → :meth:`MorphableModel.procedural` (defaults); else a saved model file."""
    if source == PROCEDURAL:
        return MorphableModel.procedural()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"model.face_model: {path} is neither 'procedural' nor an existing face model file")
    return MorphableModel.load(path)


class ReconSystem(EmoeditSystem[ReconModelConfig]):
    """Regressor + face model + renderer + Deep3D losses (see the module docstring)."""

    PART = "recon"
    CONFIG_CLS = ReconModelConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"model.backbone must be one of {BACKBONES}, got {cfg.backbone!r}")
        if cfg.optimizer not in ("adam", "adamw"):
            raise ValueError(f"model.optimizer must be adam or adamw, got {cfg.optimizer!r}")
        self.face_model = build_face_model(cfg.face_model)
        layout = self.face_model.layout
        self.regressor = ReconRegressor(
            backbone=cfg.backbone, id_size=layout.id, exp_size=layout.exp, tex_size=layout.tex, input_size=cfg.crop_size
        )
        if cfg.channels_last:
            self.regressor.to(memory_format=torch.channels_last)
        self.camera = PerspectiveCamera().scaled(cfg.crop_size)
        self.renderer = MeshRenderer(image_size=cfg.crop_size, backend=cfg.render_backend, cull_backfaces=True)
        faces = region_faces(self.face_model)
        self.register_buffer("faces_in_region", faces, persistent=False)
        # The identity network lives outside the module tree: it is frozen and must not be
        # saved into every checkpoint. It follows the system's device lazily.
        identity: IdentityLoss | None = None
        if cfg.loss.identity > 0:
            if not cfg.identity_network:
                raise ValueError("model.loss.identity > 0 needs model.identity_network (an exported recognition network)")
            identity = IdentityLoss.from_file(cfg.identity_network, input_size=cfg.identity_input_size)
        self.set_identity_loss(identity)

    # ------------------------------------------------------------------ pieces
    def set_identity_loss(self, loss: IdentityLoss | None) -> None:
        """Use ``loss`` for the identity term (e.g. a network built in code); weight from the config.

        Stored outside the module tree (``object.__setattr__``), so it is never saved in checkpoints.
        """
        object.__setattr__(self, "_identity", loss)

    def _identity_loss(self) -> IdentityLoss | None:
        if self._identity is not None:
            self._identity.to(self.device)
        return self._identity

    def forward(self, crops: Tensor) -> Tensor:
        """``(B, 3, S, S)`` float [0, 1] crops → ``(B, layout.size)`` float32 coefficients."""
        cfg = self.config
        if cfg.channels_last:
            crops = crops.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            if cfg.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            features = self.regressor.features(crops)
        return self.regressor.heads_forward(features.float()).coeffs

    def _check_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
        size = self.config.crop_size
        crops = batch["crop"]
        dims = assert_shape(crops, ("B", 3, None, None), "batch['crop']")
        if crops.shape[-1] != size or crops.shape[-2] != size:
            raise ValueError(f"batch crops are {tuple(crops.shape[-2:])}, but model.crop_size is {size}: "
                             "set model.crop_size to the cache's crop size")
        landmarks = batch["landmarks"].float()
        assert_shape(landmarks, ("B", 68, 2), "batch['landmarks']", dims)
        truth = batch.get(TRUTH_FIELD)
        if truth is not None:
            size_l = self.face_model.layout.size
            if truth.shape[-1] != size_l:
                raise ValueError(f"batch['{TRUTH_FIELD}'] has {truth.shape[-1]} coefficients, the face model "
                                 f"{self.face_model.name!r} has {size_l}: the cache was made with another face model")
            truth = truth.float()
        return crops.float(), landmarks, truth

    def _render(self, face: Any) -> RenderOutput:
        return self.renderer(face.vertices_screen, self.face_model.triangles, vertex_colors=face.vertex_colors)

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Weighted loss terms (only those with weight > 0) and intermediate values for metrics."""
        cfg = self.config
        weights = cfg.loss
        crops, landmarks, truth = self._check_batch(batch)
        coeffs = self(crops)
        parts = self.face_model.layout.split(coeffs)
        face = self.face_model(coeffs, self.camera)
        terms: dict[str, Tensor] = {}
        render: RenderOutput | None = None
        mask: Tensor | None = None
        identity = self._identity_loss() if weights.identity > 0 else None
        if weights.photometric > 0 or identity is not None:
            render = self._render(face)
            mask = region_pixel_mask(render.fragments.pix_to_face, self.faces_in_region).detach()
        if weights.photometric > 0:
            assert render is not None and mask is not None
            terms["photometric"] = weights.photometric * photometric_loss(
                render.image, crops, mask, robust=weights.robust_photometric
            )
        if weights.landmark > 0:
            scale = DEEP3D_CROP / cfg.crop_size
            terms["landmark"] = weights.landmark * landmark_loss(face.landmarks, landmarks, scale=scale)
        if identity is not None:
            assert render is not None
            composite = render.image * render.mask + crops * (1.0 - render.mask)
            terms["identity"] = weights.identity * identity(composite, crops, landmarks)
        if weights.coeff_prior > 0:
            terms["coeff_prior"] = weights.coeff_prior * coefficient_prior(
                parts, id_weight=weights.id_prior, exp_weight=weights.exp_prior, tex_weight=weights.tex_prior
            )
        if weights.gamma_prior > 0:
            terms["gamma_prior"] = weights.gamma_prior * gamma_regularizer(parts.gamma)
        skin = self.face_model.skin_mask
        if weights.reflectance > 0 and skin is not None and self.face_model.layout.tex > 0:
            terms["reflectance"] = weights.reflectance * reflectance_loss(face.albedo, skin)
        true_vertices: Tensor | None = None
        if truth is not None:
            if weights.supervised_coeff > 0:
                terms["supervised_coeff"] = weights.supervised_coeff * supervised_coeff_loss(
                    coeffs, truth, self.face_model.layout
                )
            true_parts = self.face_model.layout.split(truth)
            with torch.no_grad():
                true_vertices = self.face_model.shape(true_parts.id_coeff, true_parts.exp_coeff)
            if weights.supervised_vertex > 0:
                terms["supervised_vertex"] = weights.supervised_vertex * vertex_loss(face.vertices, true_vertices)
        if not terms:
            raise ValueError("every recon loss weight is 0 (or inapplicable): nothing to train")
        extras = dict(crops=crops, landmarks=landmarks, truth=truth, coeffs=coeffs, face=face, render=render,
                      mask=mask, true_vertices=true_vertices)
        return terms, extras

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms, extras = self.compute_losses(batch)
        total = torch.stack(list(terms.values())).sum()
        size = extras["crops"].shape[0]
        for name, value in terms.items():
            self.log(f"recon/train/{name}", value.detach(), batch_size=size)
        self.log("recon/train/loss", total.detach(), batch_size=size, prog_bar=True)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms, extras = self.compute_losses(batch)
        size = extras["crops"].shape[0]
        log = dict(batch_size=size, sync_dist=True, on_epoch=True, on_step=False)
        for name, value in terms.items():
            self.log(f"recon/val/{name}", value, **log)
        self.log("recon/val/loss", torch.stack(list(terms.values())).sum(), **log)
        face = extras["face"]
        self.log("recon/val/landmark_px", landmark_error_px(face.landmarks, extras["landmarks"]).mean(), **log)
        render, mask = extras["render"], extras["mask"]
        if render is None:
            render = self._render(face)
            mask = region_pixel_mask(render.fragments.pix_to_face, self.faces_in_region)
        self.log("recon/val/photometric_l2", photometric_loss(render.image, extras["crops"], mask), **log)
        truth = extras["truth"]
        if truth is not None:
            layout = self.face_model.layout
            for name, block in layout.slices.items():
                if block.stop > block.start:
                    error = (extras["coeffs"][:, block] - truth[:, block]).abs().mean()
                    self.log(f"recon/val/coeff_abs/{name}", error, **log)
            self.log("recon/val/vertex_error", vertex_loss(face.vertices, extras["true_vertices"]), **log)
        if batch_idx == 0:
            self._log_overlays(extras["crops"], render)

    def _log_overlays(self, crops: Tensor, render: RenderOutput) -> None:
        count = min(self.config.log_images, crops.shape[0])
        logger = self.logger
        if count <= 0 or logger is None or not hasattr(logger, "log_image") or not self.trainer.is_global_zero:
            return
        overlay = render.image * render.mask + crops * (1.0 - render.mask)
        pairs = torch.cat([crops[:count], overlay[:count]], dim=3).detach().float().clamp(0, 1).cpu()
        images = [(pair.permute(1, 2, 0).numpy() * 255).round().astype("uint8") for pair in pairs]
        logger.log_image(key="recon/val/overlay", images=images, step=self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = [p for p in self.regressor.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
