"""Perceptual identity loss with a user-supplied face-recognition network (METHOD.md §3.1).

Deep3DFaceRecon's ``perceptual_loss``: both images are warped to the recognition
network's input (112² ArcFace alignment from 5 landmarks), mapped to ``[−1, 1]``, embedded,
L2-normalised, and the loss is ``1 − cos`` averaged over the batch. The network is frozen
and kept in eval mode (batch-norm statistics frozen), as Deep3D does.

The project ships no recognition weights. Pass any ``nn.Module`` mapping
``(B, 3, S, S)`` in [−1, 1] to ``(B, D)`` embeddings, or load one with
:meth:`IdentityLoss.from_weights` (a state dict, ``torch.load(weights_only=True)``, into an
architecture you construct), or :meth:`IdentityLoss.from_file`: a ``torch.export`` program
(``.pt2``, ``torch.export.save``; the recommended format) or a TorchScript archive (any other
suffix) — code and weights in one file, no Python pickle.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.data.detection import landmarks68_to_5
from emoedit.shape_checks import assert_shape

#: ArcFace's 5-point template for a 112×112 crop (x, y pixels): left eye, right eye, nose
#: tip, left and right mouth corners (image left first).
ARCFACE_TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


def similarity_to_template(points: Tensor, template: Tensor) -> Tensor:
    """Least-squares similarity (scale, rotation, translation) taking ``points`` onto ``template``.

    Args:
        points: ``(B, N, 2)`` float source pixels.
        template: ``(N, 2)`` float target pixels.

    Returns:
        ``(B, 2, 3)`` float matrix ``[[a, −b, tx], [b, a, ty]]`` (column vectors ``[x, y, 1]``).
    """
    dims = assert_shape(points, (None, "N", 2), "points")
    assert_shape(template, ("N", 2), "template", dims)
    source = torch.complex(points[..., 0].double(), points[..., 1].double())
    target = torch.complex(template[:, 0].double(), template[:, 1].double())[None]
    source_mean, target_mean = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    centred = source - source_mean
    spread = (centred.abs() ** 2).sum(1).clamp(min=1e-12)
    factor = (centred.conj() * (target - target_mean)).sum(1) / spread  # s·e^{iθ}
    shift = target_mean[:, 0] - factor * source_mean[:, 0]
    a, b = factor.real, factor.imag
    matrix = torch.stack(
        [torch.stack([a, -b, shift.real], -1), torch.stack([b, a, shift.imag], -1)], dim=1
    )
    return matrix.to(points.dtype)


def warp_with_similarity(images: Tensor, matrix: Tensor, size: int) -> Tensor:
    """Resample ``images`` (B, C, H, W) into ``size``² crops, crop = matrix · image (bilinear, zeros outside)."""
    batch, _, height, width = images.shape
    a, b = matrix[:, 0, 0], matrix[:, 1, 0]
    tx, ty = matrix[:, 0, 2], matrix[:, 1, 2]
    det = (a * a + b * b).clamp(min=1e-12)
    coords = torch.arange(size, device=images.device, dtype=images.dtype)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    u = xx[None] - tx[:, None, None]
    v = yy[None] - ty[:, None, None]
    # inverse of [[a, -b], [b, a]] is [[a, b], [-b, a]] / (a² + b²)
    x_img = (a[:, None, None] * u + b[:, None, None] * v) / det[:, None, None]
    y_img = (-b[:, None, None] * u + a[:, None, None] * v) / det[:, None, None]
    grid = torch.stack([2 * x_img / max(width - 1, 1) - 1, 2 * y_img / max(height - 1, 1) - 1], dim=-1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def _set_eval(network: nn.Module) -> None:
    """Eval mode where the module supports switching (exported programs are frozen as exported)."""
    try:
        network.eval()
    except (NotImplementedError, RuntimeError):
        pass


class IdentityLoss(nn.Module):
    """``1 − cos(f(rendered), f(target))`` averaged over the batch, ``f`` a frozen recognition network."""

    def __init__(
        self,
        *,
        network: nn.Module,  # (B, 3, input_size, input_size) in [-1, 1] -> (B, D) embedding
        input_size: int = 112,  # side of the network's input crop, pixels
    ) -> None:
        super().__init__()
        if input_size < 8:
            raise ValueError(f"IdentityLoss: input_size must be >= 8, got {input_size}")
        self.network = network
        self.input_size = int(input_size)
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        _set_eval(self.network)
        template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32) * (self.input_size / 112.0)
        self.register_buffer("template", template, persistent=False)

    def train(self, mode: bool = True) -> IdentityLoss:
        """Set this module's flag only: the recognition network stays in eval mode."""
        self.training = mode
        return self

    @classmethod
    def from_weights(
        cls,
        path: str | os.PathLike[str],  # a state dict saved with torch.save
        *,
        network: nn.Module,  # the architecture the weights belong to
        input_size: int = 112,  # side of the network's input crop, pixels
    ) -> IdentityLoss:
        """Load a state dict (``weights_only=True``, strict) into ``network``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"identity network weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: not a readable weights file ({type(error).__name__}: {error})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path}: weights do not fit the given network: {error}") from None
        return cls(network=network, input_size=input_size)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],  # ``.pt2``: torch.export.save; otherwise a TorchScript archive
        *,
        input_size: int = 112,  # side of the network's input crop, pixels
    ) -> IdentityLoss:
        """Load a self-contained recognition network (code + weights; no Python pickle involved).

        Export it in eval mode with a dynamic batch dimension, e.g.
        ``torch.export.save(torch.export.export(net.eval(), (x,), dynamic_shapes=({0: Dim("b")},)), "net.pt2")``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"identity network file not found: {path}")
        try:
            if path.suffix == ".pt2":
                network = torch.export.load(str(path)).module()
            else:
                network = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            kind = "torch.export program" if path.suffix == ".pt2" else "TorchScript archive"
            raise ValueError(f"{path}: not a readable {kind} ({type(error).__name__}: {error})") from None
        return cls(network=network, input_size=input_size)

    def embed(self, images: Tensor, landmarks: Tensor | None = None) -> Tensor:
        """``(B, 3, H, W)`` [0, 1] (+ ``(B, 68, 2)`` landmarks for alignment) → ``(B, D)`` unit embeddings."""
        assert_shape(images, (None, 3, None, None), "images")
        if landmarks is None:
            crops = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        else:
            matrix = similarity_to_template(landmarks68_to_5(landmarks.detach()), self.template)
            crops = warp_with_similarity(images, matrix, self.input_size)
        return F.normalize(self.network(crops * 2.0 - 1.0).float(), dim=-1)

    def forward(
        self,
        rendered: Tensor,  # (B, 3, H, W) float [0, 1], the rendered (composited) face
        target: Tensor,  # (B, 3, H, W) float [0, 1], the input image
        landmarks: Tensor | None = None,  # (B, 68, 2) pixels used to align both; None: plain resize
    ) -> Tensor:
        """Scalar mean ``1 − cos`` of the two embeddings, in [0, 2]."""
        dims = assert_shape(rendered, ("B", 3, "H", "W"), "rendered")
        assert_shape(target, ("B", 3, "H", "W"), "target", dims)
        if landmarks is not None:
            assert_shape(landmarks, ("B", 68, 2), "landmarks", dims)
        cosine = (self.embed(rendered, landmarks) * self.embed(target, landmarks)).sum(-1)
        return (1.0 - cosine).mean()
