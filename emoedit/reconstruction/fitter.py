"""Optimisation-based face fitting (analysis by synthesis through the differentiable renderer).

Fits the face model to one clip of aligned crops and their 68 landmarks, without any
network or checkpoint; also refines a regressor's estimate (pass ``init``). Works with any
:class:`~emoedit.face_model.MorphableModel`: for models without an albedo basis
(``layout.tex == 0``, e.g. 3DDFA's BFM) a per-clip RGB scale of the mean albedo is fitted
instead.

Unknowns (clip-batched, all frames optimised together with Adam):

- shared by the clip: identity ``id_coeff`` and albedo (``tex_coeff``, or the albedo scale);
- per frame: ``exp_coeff``, ``angle``, ``trans``, ``gamma``.

Objective (Deep3DFaceRecon's terms): weighted 68-landmark loss (measured in 224-px units),
robust photometric loss on the rendered face region, coefficient priors, monochromatic
light prior, and a temporal smoothness term on the per-frame expression and pose
(squared first differences).

Coarse-to-fine schedule (each stage a fresh Adam with a cosine-decayed step size):

1. ``pose``  — landmarks only, rigid pose (angle, trans);
2. ``shape`` — landmarks + priors, pose + identity + expression;
3. ``photo`` — everything: + photometric, lighting, albedo.

Landmark-only stages evaluate just the 68 landmark vertices (cheap for any mesh size);
the photometric stage renders at ``render_size`` (default the crop size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from emoedit.face_model.camera import PerspectiveCamera
from emoedit.face_model.layout import Coeffs
from emoedit.face_model.morphable_model import MorphableModel
from emoedit.face_model.rotation import euler_to_rotation
from emoedit.losses.coeff_regularizer import gamma_regularizer
from emoedit.losses.landmark import deep3d_landmark_weights, landmark_error_px, landmark_loss
from emoedit.losses.photometric import photometric_loss, region_faces, region_pixel_mask
from emoedit.render.renderer import MeshRenderer
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

STAGES: tuple[str, ...] = ("pose", "shape", "photo")


@dataclass(frozen=True)
class FitterConfig:
    """Settings of :class:`FaceFitter` (steps, step sizes, loss weights)."""

    pose_steps: int = 60  # stage 1 iterations: landmarks only, rigid pose
    shape_steps: int = 120  # stage 2 iterations: landmarks + priors, pose + identity + expression
    photo_steps: int = 100  # stage 3 iterations: + photometric, lighting, albedo
    lr_pose: float = 0.01  # Adam step size of angle (rad) and trans (dm)
    lr_shape: float = 0.05  # Adam step size of id / exp coefficients
    lr_light: float = 0.02  # Adam step size of gamma (SH) and the albedo (tex coefficients / log scale)
    final_lr_fraction: float = 0.05  # cosine decay of each stage's step size down to this fraction
    landmark_weight: float = 0.1  # weight of the landmark loss (squared 224-px units, Deep3D point weights)
    photometric_weight: float = 20.0  # weight of the robust photometric loss (colour units)
    id_prior: float = 1e-3  # weight of Σ id² (the clip's one identity)
    exp_prior: float = 1e-3  # weight of Σ exp² averaged over frames
    tex_prior: float = 1e-4  # weight of Σ tex² (the clip's one albedo)
    gamma_prior: float = 1.0  # weight of the monochromatic-light prior
    temporal_weight: float = 0.01  # weight of the squared first differences of exp / angle / trans (per frame pair)
    render_size: int | None = None  # photometric resolution in pixels; None: the crop size
    robust_photometric: bool = True  # per-pixel L2 norm (Deep3D) rather than squared error
    render_backend: str = "auto"  # rasteriser backend of the photometric stage

    def __post_init__(self) -> None:
        for name in ("pose_steps", "shape_steps", "photo_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"FitterConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.final_lr_fraction <= 1.0:
            raise ValueError(f"FitterConfig.final_lr_fraction must be in (0, 1], got {self.final_lr_fraction}")
        if self.render_size is not None and self.render_size < 8:
            raise ValueError(f"FitterConfig.render_size must be >= 8, got {self.render_size}")


@dataclass(frozen=True)
class FitResult:
    """What :meth:`FaceFitter.fit` returns (T = frames of the clip)."""

    coeffs: Tensor  # (T, layout.size) float32 fitted coefficients (id and tex equal across frames)
    albedo_scale: Tensor | None  # (3,) RGB multiplier of the mean albedo (models without albedo basis), else None
    landmark_error_px: Tensor  # (T,) mean 68-point reprojection error per frame, crop pixels
    losses: dict[str, float]  # final value of every loss term of the last stage that ran
    stage_losses: dict[str, float] = field(default_factory=dict)  # final total objective of each stage that ran


class FaceFitter:
    """Fits a :class:`MorphableModel` to aligned crops + landmarks (see the module docstring).

    Holds no parameters itself; every :meth:`fit` call starts from ``init`` (or the mean
    face) and is independent.
    """

    def __init__(
        self,
        *,
        face_model: MorphableModel,  # the face model (on the device the crops will be on)
        camera: PerspectiveCamera,  # the crop camera (image_size = crop size)
        config: FitterConfig | None = None,  # steps, step sizes, weights; None: defaults
    ) -> None:
        self.face_model = face_model
        self.camera = camera
        self.config = config or FitterConfig()
        render_size = self.config.render_size or camera.image_size
        self.render_size = int(render_size)
        self.renderer = MeshRenderer(image_size=self.render_size, backend=self.config.render_backend, cull_backfaces=True)
        self._region_faces = region_faces(face_model)  # (F,) bool, None: whole mesh

    # ------------------------------------------------------------------ geometry
    def _landmarks(self, id_coeff: Tensor, exp_coeff: Tensor, angle: Tensor, trans: Tensor) -> Tensor:
        """(T, 68, 2) crop pixels from the 68 landmark vertices only (same maths as the model's forward)."""
        model = self.face_model
        ids = model.landmark_ids
        points = model.mean_shape[ids].unsqueeze(0)
        points = points + torch.einsum("vck,bk->bvc", model.id_basis[ids], id_coeff)
        points = points + torch.einsum("vck,bk->bvc", model.exp_basis[ids], exp_coeff)
        posed = points @ euler_to_rotation(angle) + trans.unsqueeze(1)
        return self.camera.project(posed)[..., :2]

    def _photometric(
        self,
        coeffs: Tensor,
        albedo_scale: Tensor | None,
        target: Tensor,
    ) -> Tensor:
        """Scalar robust photometric loss of the rendered face region at render_size."""
        face = self.face_model(coeffs, self.camera)
        colors = face.vertex_colors if albedo_scale is None else face.vertex_colors * albedo_scale
        ratio = self.render_size / self.camera.image_size
        screen = face.vertices_screen
        if ratio != 1.0:  # the same pixel-centre convention as F.interpolate(align_corners=False)
            xy = (screen[..., :2] + 0.5) * ratio - 0.5
            screen = torch.cat([xy, screen[..., 2:]], dim=-1)
        rendered = self.renderer(screen, self.face_model.triangles, vertex_colors=colors)
        mask = region_pixel_mask(rendered.fragments.pix_to_face, self._region_faces)
        return photometric_loss(rendered.image, target, mask.detach(), robust=self.config.robust_photometric)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        crops: Tensor,  # (T, 3, S, S) float [0, 1] aligned crops of one clip
        landmarks: Tensor,  # (T, 68, 2) float crop pixels
        *,
        init: Tensor | None = None,  # (T, layout.size) starting coefficients (e.g. a regressor's); None: mean face
        fixed_id: Tensor | None = None,  # (K_id,) identity to keep fixed (e.g. from an earlier chunk of the clip)
        fixed_tex: Tensor | None = None,  # (K_tex,) albedo coefficients to keep fixed
        fixed_albedo_scale: Tensor | None = None,  # (3,) albedo scale to keep fixed (models without albedo basis)
    ) -> FitResult:
        """Fit the clip; see the module docstring for the objective and schedule.

        Returns:
            :class:`FitResult` (coefficients, per-frame landmark error in crop pixels, final losses).
        """
        size = self.camera.image_size
        dims = assert_shape(crops, ("T", 3, size, size), "crops")
        assert_shape(landmarks, ("T", 68, 2), "landmarks", dims)
        assert_range(crops, 0.0, 1.0, "crops")
        assert_finite(landmarks, "landmarks")
        model = self.face_model
        layout = model.layout
        frames = dims["T"]
        device = crops.device
        config = self.config
        start = layout.zeros(frames, device=device) if init is None else init.detach().to(device=device, dtype=torch.float32)
        assert_shape(start, (frames, layout.size), "init")
        parts = layout.split(start)
        landmarks = landmarks.to(device=device, dtype=torch.float32)

        def parameter(value: Tensor, fixed: Tensor | None, name: str, count: int) -> Tensor:
            if fixed is not None:
                assert_shape(fixed, (count,), name)
                return fixed.detach().to(device=device, dtype=torch.float32).reshape(1, count)
            return value.clone().requires_grad_(True)

        id_coeff = parameter(parts.id_coeff.mean(0, keepdim=True), fixed_id, "fixed_id", layout.id)
        tex_coeff = parameter(parts.tex_coeff.mean(0, keepdim=True), fixed_tex, "fixed_tex", layout.tex)
        exp_coeff = parts.exp_coeff.clone().requires_grad_(True)
        angle = parts.angle.clone().requires_grad_(True)
        trans = parts.trans.clone().requires_grad_(True)
        gamma = parts.gamma.clone().requires_grad_(True)
        log_scale: Tensor | None = None
        if layout.tex == 0:
            if fixed_albedo_scale is not None:
                assert_shape(fixed_albedo_scale, (3,), "fixed_albedo_scale")
                log_scale = fixed_albedo_scale.detach().to(device=device, dtype=torch.float32).clamp(min=1e-4).log()
            else:
                log_scale = torch.zeros(3, device=device, requires_grad=True)

        target_small = crops.float()
        if self.render_size != size:
            target_small = F.interpolate(crops.float(), size=(self.render_size,) * 2, mode="bilinear",
                                         align_corners=False, antialias=True)
        point_weights = deep3d_landmark_weights(device=device)
        lm_scale = 224.0 / size

        def assemble() -> Tensor:
            blocks = Coeffs(
                id_coeff=id_coeff.expand(frames, -1),
                exp_coeff=exp_coeff,
                tex_coeff=tex_coeff.expand(frames, -1),
                angle=angle,
                gamma=gamma,
                trans=trans,
            )
            return layout.join(blocks)

        def temporal() -> Tensor:
            if frames < 2:
                return exp_coeff.new_zeros(())
            total = exp_coeff.new_zeros(())
            for block in (exp_coeff, angle, trans):
                total = total + (block[1:] - block[:-1]).pow(2).sum() / (frames - 1)
            return total

        def objective(stage: str) -> dict[str, Tensor]:
            terms: dict[str, Tensor] = {}
            id_full = id_coeff.expand(frames, -1)
            if stage == "photo":
                scale = None if log_scale is None else log_scale.exp()
                terms["photometric"] = config.photometric_weight * self._photometric(assemble(), scale, target_small)
                predicted = self._landmarks(id_full, exp_coeff, angle, trans)
                terms["gamma_prior"] = config.gamma_prior * gamma_regularizer(gamma)
            else:
                predicted = self._landmarks(id_full, exp_coeff, angle, trans)
            terms["landmark"] = config.landmark_weight * landmark_loss(predicted, landmarks, point_weights, scale=lm_scale)
            if stage != "pose":
                prior = config.id_prior * id_coeff.pow(2).sum() + config.exp_prior * exp_coeff.pow(2).sum() / frames
                if layout.tex:
                    prior = prior + config.tex_prior * tex_coeff.pow(2).sum()
                terms["prior"] = prior
            if config.temporal_weight and frames > 1:
                terms["temporal"] = config.temporal_weight * temporal()
            return terms

        def trainable(*tensors: Tensor | None) -> list[Tensor]:
            return [t for t in tensors if t is not None and t.requires_grad]

        groups_by_stage = {
            "pose": [(trainable(angle, trans), config.lr_pose)],
            "shape": [(trainable(angle, trans), config.lr_pose), (trainable(id_coeff, exp_coeff), config.lr_shape)],
            "photo": [
                (trainable(angle, trans), config.lr_pose),
                (trainable(id_coeff, exp_coeff), config.lr_shape),
                (trainable(gamma, tex_coeff, log_scale), config.lr_light),
            ],
        }
        steps_by_stage = {"pose": config.pose_steps, "shape": config.shape_steps, "photo": config.photo_steps}
        stage_losses: dict[str, float] = {}
        last_terms: dict[str, Tensor] = {}
        for stage in STAGES:
            steps = steps_by_stage[stage]
            groups = [{"params": params, "lr": lr, "base_lr": lr} for params, lr in groups_by_stage[stage] if params]
            if steps == 0 or not groups:
                continue
            optimizer = torch.optim.Adam(groups)
            for step in range(steps):
                decay = config.final_lr_fraction + (1 - config.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * step / steps))
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * decay
                optimizer.zero_grad(set_to_none=True)
                terms = objective(stage)
                total = torch.stack(list(terms.values())).sum()
                total.backward()
                optimizer.step()
            with torch.no_grad():
                last_terms = objective(stage)
                stage_losses[stage] = float(torch.stack(list(last_terms.values())).sum())

        with torch.no_grad():
            coeffs = assemble().detach()
            predicted = self._landmarks(id_coeff.expand(frames, -1), exp_coeff, angle, trans)
            errors = landmark_error_px(predicted, landmarks)
        albedo_scale = None if log_scale is None else log_scale.detach().exp()
        return FitResult(
            coeffs=coeffs,
            albedo_scale=albedo_scale,
            landmark_error_px=errors,
            losses={name: float(value) for name, value in last_terms.items()},
            stage_losses=stage_losses,
        )
