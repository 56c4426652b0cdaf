"""ArcSim: identity kept by an edit = cosine similarity of face-recognition embeddings.

METHOD.md §6: "ArcFace cosine similarity to the input". For each pair of frames (input
frame, edited frame) both are embedded by a face-recognition network and the score is the
cosine of the two embeddings (1 = same embedding, 0 = orthogonal); a video's ArcSim is the
mean over its frame pairs.

The project ships no recognition weights; the network comes from the user:

- :meth:`ArcSim.from_insightface` — an InsightFace / TreB1eN IR(-SE) state dict such as
  pSp's ``model_ir_se50.pth`` into :class:`ArcFaceEmbedder` (the
  :class:`~emoedit.networks.ir_se.ResNetIR` trunk + InsightFace's output layer
  ``BN2d → dropout → flatten → linear → BN1d``, keys ``input_layer.*``, ``body.*``,
  ``output_layer.{0,3,4}.*``);
- :meth:`ArcSim.from_file` — a self-contained ``torch.export`` (``.pt2``) or TorchScript
  program (see :meth:`emoedit.losses.identity.IdentityLoss.from_file`);
- :meth:`ArcSim.from_onnx` — an ONNX model, only if ``onnxruntime`` is installed
  (imported lazily; an ``ImportError`` says so otherwise);
- any ``nn.Module`` (``ArcSim(network=...)``) mapping ``(B, 3, S, S)`` in [-1, 1] to
  ``(B, D)`` embeddings — or to an output with an ``embedding`` field, such as the
  harness's :class:`~emoedit.networks.judges.IdentityJudge`.

Frames are ``(B, 3, H, W)`` float in [0, 1]. With 68-point landmarks they are aligned to
ArcFace's 112² five-point template (:mod:`emoedit.losses.identity`'s alignment); without,
they are assumed to be aligned crops already and are resized to the network's input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.data.detection import landmarks68_to_5
from emoedit.losses.identity import ARCFACE_TEMPLATE_112, IdentityLoss, similarity_to_template, warp_with_similarity
from emoedit.networks.ir_se import DEFAULT_WIDTHS, ResNetIR
from emoedit.shape_checks import assert_range, assert_shape

def cosine_similarity_pairs(
    a: Tensor,  # (B, D) float embeddings
    b: Tensor,  # (B, D) float embeddings
) -> Tensor:
    """``(B,)`` cosine similarity of each row pair, in [-1, 1] (0 for a zero embedding)."""
    dims = assert_shape(a, ("B", "D"), "a")
    assert_shape(b, ("B", "D"), "b", dims)
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(dim=-1)


class ArcFaceEmbedder(ResNetIR):
    """InsightFace IR(-SE) recognition network: ``(B, 3, S, S)`` in [-1, 1] → ``(B, D)`` embedding (not normalised).

    The :class:`~emoedit.networks.ir_se.ResNetIR` trunk plus InsightFace's output layer;
    module names match InsightFace's state dicts key by key (``input_layer.*``, ``body.*``,
    ``output_layer.{0,3,4}.*``).
    """

    def __init__(
        self,
        *,
        depth: int = 50,  # ResNet-IR depth (50 = IR-SE50, pSp's model_ir_se50.pth)
        use_se: bool = True,  # IR-SE (True) or IR (False)
        widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,  # trunk stage widths
        input_size: int = 112,  # S, side of the input crop (multiple of 16)
        embedding_dim: int = 512,  # D
        dropout: float = 0.0,  # dropout of the output layer (eval: none)
    ) -> None:
        super().__init__(depth=depth, use_se=use_se, widths=widths)
        if input_size < 16 or input_size % 16:
            raise ValueError(f"ArcFaceEmbedder: input_size must be a multiple of 16, got {input_size}")
        self.input_size = int(input_size)
        final = int(self.widths[3])
        cells = (input_size // 16) ** 2
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(final), nn.Dropout(dropout), nn.Flatten(), nn.Linear(final * cells, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, crops: Tensor) -> Tensor:  # type: ignore[override]
        """``(B, 3, S, S)`` float in [-1, 1] → ``(B, D)`` float embedding."""
        assert_shape(crops, (None, 3, self.input_size, self.input_size), "crops")
        return self.output_layer(super().forward(crops).stage4)

    @classmethod
    def from_insightface(
        cls,
        path: str | os.PathLike,  # InsightFace IR(-SE) state dict, e.g. model_ir_se50.pth
        *,
        depth: int = 50,  # the file's depth
        use_se: bool = True,  # the file's block type
        widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,  # the file's stage widths
        input_size: int = 112,  # the file's input side
        embedding_dim: int = 512,  # the file's embedding length
    ) -> ArcFaceEmbedder:
        """Load trunk and output layer from one state dict (``weights_only``, every tensor required), in eval mode."""
        network = cls(depth=depth, use_se=use_se, widths=widths, input_size=input_size, embedding_dim=embedding_dim)
        network.load_insightface_weights(path)
        return network.eval()


class _OnnxEmbedder(nn.Module):
    """An onnxruntime session as a module (CPU numpy round trip; no gradients)."""

    def __init__(self, *, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, crops: Tensor) -> Tensor:
        array = crops.detach().to("cpu", torch.float32).numpy()
        output = self.session.run(None, {self.input_name: np.ascontiguousarray(array)})[0]
        return torch.from_numpy(np.asarray(output, dtype=np.float32)).to(crops.device)


class ArcSim(nn.Module):
    """Per-pair cosine similarity of recognition embeddings of input and edited frames (see the module docstring)."""

    def __init__(
        self,
        *,
        network: nn.Module,  # (B, 3, input_size, input_size) in [-1, 1] -> (B, D) (or an output with .embedding)
        input_size: int = 112,  # side of the network's input crop, pixels
    ) -> None:
        super().__init__()
        if input_size < 8:
            raise ValueError(f"ArcSim: input_size must be >= 8, got {input_size}")
        self.network = network
        self.input_size = int(input_size)
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self._network_eval()
        template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32) * (self.input_size / 112.0)
        self.register_buffer("template", template, persistent=False)

    def _network_eval(self) -> None:
        try:
            self.network.eval()
        except (NotImplementedError, RuntimeError):  # exported programs are frozen as exported
            pass

    def train(self, mode: bool = True) -> ArcSim:
        """Always eval: the recognition network's batch-norm statistics stay frozen."""
        self.training = False
        self._network_eval()
        return self

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_insightface(
        cls,
        path: str | os.PathLike,  # InsightFace IR(-SE) state dict (e.g. pSp's model_ir_se50.pth)
        *,
        depth: int = 50,  # the file's depth
        use_se: bool = True,  # the file's block type
        widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,  # the file's stage widths
        input_size: int = 112,  # the file's input side
        embedding_dim: int = 512,  # the file's embedding length
    ) -> ArcSim:
        """ArcSim with an :class:`ArcFaceEmbedder` loaded from an InsightFace state dict."""
        network = ArcFaceEmbedder.from_insightface(path, depth=depth, use_se=use_se, widths=widths,
                                                   input_size=input_size, embedding_dim=embedding_dim)
        return cls(network=network, input_size=input_size)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,  # ``.pt2`` (torch.export.save) or a TorchScript archive
        *,
        input_size: int = 112,  # side of the network's input crop
    ) -> ArcSim:
        """ArcSim with a self-contained exported recognition network (no pickle)."""
        return cls(network=IdentityLoss.from_file(path, input_size=input_size).network, input_size=input_size)

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,  # an ONNX recognition model: (B, 3, S, S) in [-1, 1] -> (B, D)
        *,
        input_size: int = 112,  # side of the network's input crop
    ) -> ArcSim:
        """ArcSim with an ONNX network run by onnxruntime (optional dependency, imported here)."""
        path = Path(path)
        try:
            import onnxruntime  # noqa: PLC0415  (optional, lazy)
        except ImportError:
            raise ImportError(f"{path}: ONNX recognition models need the optional package onnxruntime "
                              "(pip install onnxruntime), or export the network with torch.export") from None
        if not path.is_file():
            raise FileNotFoundError(f"identity network file not found: {path}")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return cls(network=_OnnxEmbedder(session=session), input_size=input_size)

    # ------------------------------------------------------------------ scoring
    def crops(self, frames: Tensor, landmarks: Tensor | None = None) -> Tensor:
        """``(B, 3, H, W)`` [0, 1] (+ ``(B, 68, 2)`` pixels) → ``(B, 3, S, S)`` [-1, 1] network input."""
        assert_shape(frames, (None, 3, None, None), "frames")
        assert_range(frames, 0.0, 1.0, "frames")
        if landmarks is None:
            size = self.input_size
            down = min(frames.shape[-2:]) > size
            crops = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=down)
        else:
            assert_shape(landmarks, (frames.shape[0], 68, 2), "landmarks")
            matrix = similarity_to_template(landmarks68_to_5(landmarks.to(frames)), self.template.to(frames))
            crops = warp_with_similarity(frames, matrix, self.input_size)
        return crops * 2.0 - 1.0

    @torch.no_grad()
    def embed(self, frames: Tensor, landmarks: Tensor | None = None) -> Tensor:
        """``(B, 3, H, W)`` [0, 1] frames → ``(B, D)`` float unit embeddings."""
        output = self.network(self.crops(frames, landmarks))
        if not isinstance(output, Tensor):
            output = output.embedding
        return F.normalize(output.float(), dim=-1)

    def forward(
        self,
        inputs: Tensor,  # (B, 3, H, W) float [0, 1], the input video's frames
        outputs: Tensor,  # (B, 3, H, W) float [0, 1], the edited frames (same B)
        input_landmarks: Tensor | None = None,  # (B, 68, 2) pixels to align the inputs; None: aligned crops
        output_landmarks: Tensor | None = None,  # (B, 68, 2) pixels for the outputs; None: input_landmarks
    ) -> Tensor:
        """``(B,)`` cosine similarity of each (input, output) frame pair, in [-1, 1]."""
        dims = assert_shape(inputs, ("B", 3, None, None), "inputs")
        assert_shape(outputs, ("B", 3, None, None), "outputs", dims)
        if output_landmarks is None:
            output_landmarks = input_landmarks
        return (self.embed(inputs, input_landmarks) * self.embed(outputs, output_landmarks)).sum(dim=-1)


__all__ = ["ArcFaceEmbedder", "ArcSim", "cosine_similarity_pairs"]
