"""The reconstruction interface the preprocessing uses: aligned crops + landmarks → coefficients.

- :class:`RegressorReconstructor` — a :class:`~emoedit.networks.ReconRegressor` (our recon
  checkpoint, or Deep3DFaceRecon's official weights), batched, optionally refined by the
  fitter.
- :class:`FittingReconstructor` — optimisation only (:mod:`emoedit.reconstruction.fitter`),
  needs no checkpoint.

Coefficients do not depend on the crop size: the crop camera is Deep3D's 224-px camera
scaled to the crop (focal and principal point scale together), so a regressor trained on
one crop size is fed resized crops of another.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from emoedit.checkpoint_io import CheckpointError, load_checkpoint, require_part, state_dict_under
from emoedit.face_model.camera import PerspectiveCamera
from emoedit.face_model.morphable_model import MorphableModel
from emoedit.networks.recon_regressor import ReconRegressor
from emoedit.reconstruction.deep3d_checkpoint import load_deep3d_regressor
from emoedit.reconstruction.fitter import FaceFitter, FitterConfig, FitResult
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

RECON_PART = "recon"  # part name of the reconstruction system in train.py's table
REGRESSOR_PREFIX = "regressor."  # state-dict prefix of the regressor inside a recon checkpoint
FACE_MODEL_PREFIX = "face_model."  # state-dict prefix of the face model inside a recon checkpoint


class Reconstructor(abc.ABC):
    """Aligned crops of one clip → face-model coefficients per frame."""

    face_model: MorphableModel  # the model the coefficients belong to
    camera: PerspectiveCamera  # the crop camera, scaled to ``crop_size``

    @property
    def crop_size(self) -> int:
        """Side of the square crops :meth:`reconstruct_clip` expects by default, pixels."""
        return self.camera.image_size

    def _check_inputs(self, crops: Tensor, landmarks: Tensor) -> dict[str, int]:
        dims = assert_shape(crops, ("T", 3, "S", "S"), "crops")
        assert_shape(landmarks, ("T", 68, 2), "landmarks", dims)
        if not crops.is_floating_point():
            raise TypeError(f"crops: expected float in [0, 1], got {crops.dtype}")
        assert_range(crops, 0.0, 1.0, "crops")
        assert_finite(landmarks, "landmarks")
        return dims

    def to(self, device: torch.device | str) -> Reconstructor:
        """Move the face model (and any network) to ``device``; returns ``self``."""
        self.face_model.to(device)
        return self

    @abc.abstractmethod
    def reconstruct_clip(self, crops: Tensor, landmarks: Tensor) -> Tensor:
        """Reconstruct one clip.

        Args:
            crops: ``(T, 3, S, S)`` float RGB in [0, 1], aligned face crops.
            landmarks: ``(T, 68, 2)`` float, iBUG landmarks in crop pixels.

        Returns:
            ``(T, layout.size)`` float32 coefficients (crop camera ``camera.scaled(S)``),
            on the crops' device.
        """


def _crop_camera(size: int) -> PerspectiveCamera:
    return PerspectiveCamera().scaled(int(size))


class RegressorReconstructor(Reconstructor):
    """A regression network, batched, with optional fitter refinement."""

    def __init__(
        self,
        *,
        regressor: ReconRegressor,  # the network (its layout must equal the face model's)
        face_model: MorphableModel,  # the face model of its coefficients
        batch_size: int = 32,  # crops per forward pass
        refine: FitterConfig | None = None,  # refine the regression with the fitter (None: regression only)
    ) -> None:
        if regressor.layout != face_model.layout:
            raise ValueError(
                f"regressor layout {regressor.layout} does not match the face model's {face_model.layout}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.regressor = regressor.eval()
        self.face_model = face_model
        self.camera = _crop_camera(regressor.input_size)
        self.batch_size = int(batch_size)
        self.refine = refine

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],  # a recon .ckpt written by train.py
        face_model: MorphableModel,  # the face model the checkpoint was trained with
        *,
        batch_size: int = 32,  # crops per forward pass
        refine: FitterConfig | None = None,  # optional fitter refinement
    ) -> RegressorReconstructor:
        """Load the regressor of a recon training checkpoint (weights only, ``weights_only=True``).

        The network is rebuilt from the checkpoint's ``hyper_parameters["config"]``
        (``backbone``, ``crop_size``) and ``face_model``'s layout. Raises
        :class:`~emoedit.checkpoint_io.CheckpointError` when the file is not a recon
        checkpoint or was trained for another face model.
        """
        regressor = load_recon_regressor(path, face_model)
        return cls(regressor=regressor, face_model=face_model, batch_size=batch_size, refine=refine)

    @classmethod
    def from_deep3d(
        cls,
        path: str | os.PathLike[str],  # Deep3DFaceRecon_pytorch's epoch_20.pth
        face_model: MorphableModel,  # must have the BFM09 layout 80/64/80/3/27/3
        *,
        batch_size: int = 32,  # crops per forward pass
        refine: FitterConfig | None = None,  # optional fitter refinement
    ) -> RegressorReconstructor:
        """The official Deep3DFaceRecon network (224-px crops)."""
        regressor = load_deep3d_regressor(path, layout=face_model.layout)
        return cls(regressor=regressor, face_model=face_model, batch_size=batch_size, refine=refine)

    def to(self, device: torch.device | str) -> RegressorReconstructor:
        """Move the network and the face model to ``device``; returns ``self``."""
        self.regressor.to(device)
        self.face_model.to(device)
        return self

    @torch.no_grad()
    def regress(self, crops: Tensor) -> Tensor:
        """``(T, 3, S, S)`` [0, 1] → ``(T, layout.size)`` float32 by the network alone (crops resized to its input size)."""
        assert_shape(crops, (None, 3, "S", "S"), "crops")
        device = next(self.regressor.parameters()).device
        size = self.regressor.input_size
        outputs = []
        for start in range(0, crops.shape[0], self.batch_size):
            batch = crops[start : start + self.batch_size].to(device=device, dtype=torch.float32)
            if batch.shape[-1] != size:
                batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                batch = batch.clamp(0.0, 1.0)
            outputs.append(self.regressor(batch).coeffs)
        return torch.cat(outputs).to(crops.device)

    def reconstruct_clip(self, crops: Tensor, landmarks: Tensor) -> Tensor:
        """See :meth:`Reconstructor.reconstruct_clip`."""
        dims = self._check_inputs(crops, landmarks)
        coeffs = self.regress(crops)
        if self.refine is None:
            return coeffs
        model_device = self.face_model.mean_shape.device
        fitter = FaceFitter(face_model=self.face_model, camera=_crop_camera(dims["S"]), config=self.refine)
        result = fitter.fit(crops.to(model_device), landmarks.to(model_device), init=coeffs.to(model_device))
        return result.coeffs.to(crops.device)


class FittingReconstructor(Reconstructor):
    """Optimisation-based reconstruction (no network); long clips are fitted in chunks.

    The first chunk fits the clip's identity and albedo with its frames; later chunks keep
    them fixed and start from the previous chunk's last frame (warm start).
    """

    def __init__(
        self,
        *,
        face_model: MorphableModel,  # the face model to fit (crops are moved to its device)
        crop_size: int = 224,  # side of the crops reconstruct_clip expects, pixels
        config: FitterConfig | None = None,  # fitter settings; None: defaults
        chunk_size: int = 32,  # frames optimised together
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.face_model = face_model
        self.camera = _crop_camera(crop_size)
        self.config = config or FitterConfig()
        self.chunk_size = int(chunk_size)
        self.last_results: list[FitResult] = []  # the fitter results of the last clip, one per chunk

    def reconstruct_clip(self, crops: Tensor, landmarks: Tensor) -> Tensor:
        """See :meth:`Reconstructor.reconstruct_clip`."""
        dims = self._check_inputs(crops, landmarks)
        device = self.face_model.mean_shape.device
        camera = self.camera if dims["S"] == self.camera.image_size else _crop_camera(dims["S"])
        fitter = FaceFitter(face_model=self.face_model, camera=camera, config=self.config)
        layout = self.face_model.layout
        slices = layout.slices
        results: list[FitResult] = []
        outputs: list[Tensor] = []
        for start in range(0, dims["T"], self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            frames = crops[chunk].to(device=device, dtype=torch.float32)
            points = landmarks[chunk].to(device=device, dtype=torch.float32)
            if not results:
                result = fitter.fit(frames, points)
            else:
                previous = results[-1]
                init = previous.coeffs[-1:].expand(frames.shape[0], -1)
                result = fitter.fit(
                    frames,
                    points,
                    init=init,
                    fixed_id=previous.coeffs[0, slices["id"]],
                    fixed_tex=previous.coeffs[0, slices["tex"]] if layout.tex else None,
                    fixed_albedo_scale=previous.albedo_scale,
                )
            results.append(result)
            outputs.append(result.coeffs)
        self.last_results = results
        return torch.cat(outputs).to(crops.device)


def load_recon_regressor(path: str | os.PathLike[str], face_model: MorphableModel) -> ReconRegressor:
    """The :class:`ReconRegressor` of a recon training checkpoint (eval mode, CPU); see
    :meth:`RegressorReconstructor.from_checkpoint`."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("config"), dict):
        raise CheckpointError(f"{path}: no emoedit hyperparameters (not written by train.py?)")
    require_part(ckpt, RECON_PART, path)
    config = hparams["config"]
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state_dict")
    try:
        backbone, crop_size = str(config["backbone"]), int(config["crop_size"])
    except KeyError as error:
        raise CheckpointError(f"{path}: model config lacks {error}") from None
    _check_face_model(path, state, face_model)
    layout = face_model.layout
    regressor = ReconRegressor(
        backbone=backbone, id_size=layout.id, exp_size=layout.exp, tex_size=layout.tex, input_size=crop_size
    )
    weights = state_dict_under(state, REGRESSOR_PREFIX)
    expected = {name: tuple(t.shape) for name, t in regressor.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in weights.items()}
    problems = [f"{k}: missing" for k in expected if k not in found]
    problems += [f"{k}: unexpected" for k in found if k not in expected]
    problems += [f"{k}: shape {found[k]} in checkpoint, {expected[k]} here" for k in expected if k in found and found[k] != expected[k]]
    if problems:
        raise CheckpointError(
            f"{path}: regressor weights do not fit a {backbone} regressor for face model "
            f"{face_model.name!r} ({layout}): " + "; ".join(problems[:6])
        )
    regressor.load_state_dict(weights, strict=True)
    return regressor.eval()


def _check_face_model(path: Path, state: dict[str, Tensor], face_model: MorphableModel) -> None:
    """The checkpoint stores its face model's buffers; refuse a different model."""
    for name in ("mean_shape", "id_basis", "exp_basis", "albedo_basis", "triangles"):
        stored = state.get(FACE_MODEL_PREFIX + name)
        if stored is None:
            continue
        mine = getattr(face_model, name).detach().cpu()
        if tuple(stored.shape) != tuple(mine.shape) or not torch.allclose(stored.to(mine.dtype), mine, atol=1e-6):
            raise CheckpointError(
                f"{path}: the checkpoint was trained with another face model ({name} differs: "
                f"{tuple(stored.shape)} in checkpoint vs {tuple(mine.shape)} for {face_model.name!r})"
            )
