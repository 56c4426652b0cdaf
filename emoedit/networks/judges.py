"""Judge networks of the evaluation harness: emotion and identity classifiers of face crops.

On the synthetic world the harness trains two small classifiers on **ground-truth frames
only** (``train.py judge``; never used by the method) and uses them to score edited
videos:

- :class:`EmotionJudge` — aligned face crop → logits over :data:`JUDGE_EMOTIONS` (neutral +
  the 7 MEAD emotions of :data:`emoedit.editing.emotion_code.EMOTIONS`, in that order) and
  its penultimate ``features`` (the input of the last linear layer; FED's feature space);
- :class:`IdentityJudge` — aligned face crop → a unit ``embedding`` (cosine similarity of
  two embeddings = identity similarity) and cosine-softmax ``logits`` over the training
  subjects (``scale · cos(embedding, class weight)``, so training pulls the embeddings of
  one subject together in cosine terms).

Both share a trunk: the crop is resized to ``input_size``, then a ResNet-IR(-SE)
(:class:`emoedit.networks.ir_se.ResNetIR`) and global average pooling. Inputs are ``(B, 3,
H, W)`` float in [-1, 1] (the networks' convention). Load a trained judge with
``EmotionJudge.from_checkpoint(path)`` / ``IdentityJudge.from_checkpoint(path)`` (a
``judge`` checkpoint of ``train.py`` or a file written by :meth:`save`; ``weights_only``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.atomic_io import atomic_torch_save
from emoedit.checkpoint_io import CheckpointError, load_checkpoint, require_part, state_dict_under
from emoedit.editing.emotion_code import EMOTIONS, NEUTRAL, canonical_emotion
from emoedit.networks.ir_se import ResNetIR
from emoedit.networks.psp_encoder import load_matching
from emoedit.shape_checks import assert_shape

#: Classes of the emotion judge, in logit order: neutral first, then EMOTIONS.
JUDGE_EMOTIONS: tuple[str, ...] = (NEUTRAL,) + EMOTIONS
#: Part name of the judge checkpoints written by ``train.py judge``.
JUDGE_PART = "judge"
#: Prefix of the judge's tensors in a checkpoint's ``state_dict``.
JUDGE_STATE_PREFIX = "judge."
#: Checkpoint keys holding the judge's kind ("emotion" / "identity") and constructor arguments.
JUDGE_KIND_KEY = "judge_kind"
JUDGE_KWARGS_KEY = "judge_kwargs"
JUDGE_KINDS: tuple[str, ...] = ("emotion", "identity")

JudgeT = TypeVar("JudgeT", bound="_Judge")


def emotion_class_index(names: Sequence[str]) -> Tensor:
    """``(B,)`` int64 index into :data:`JUDGE_EMOTIONS` of each emotion name (aliases accepted)."""
    return torch.tensor([JUDGE_EMOTIONS.index(canonical_emotion(str(n))) for n in names], dtype=torch.int64)


@dataclass(frozen=True)
class EmotionJudgeOutput:
    """Emotion judge scores of a batch of crops."""

    logits: Tensor  # (B, 8) float over JUDGE_EMOTIONS
    probabilities: Tensor  # (B, 8) float in [0, 1], rows sum to 1: softmax(logits)
    features: Tensor  # (B, F) float penultimate features (FED's feature space)


@dataclass(frozen=True)
class IdentityJudgeOutput:
    """Identity judge scores of a batch of crops."""

    embedding: Tensor  # (B, D) float, unit L2 norm
    logits: Tensor  # (B, N) float cosine-softmax logits over the training subjects


class _Judge(nn.Module):
    """Shared trunk: resize → ResNet-IR(-SE) → global average pooling → BatchNorm."""

    KIND: ClassVar[str]

    def __init__(
        self,
        *,
        input_size: int,  # crops are resized to input_size² (multiple of 16)
        depth: int,  # ResNet-IR depth (ir_se.DEPTH_UNITS)
        use_se: bool,  # IR-SE (True) or IR (False)
        widths: tuple[int, int, int, int],  # trunk stage widths
    ) -> None:
        super().__init__()
        if input_size < 16 or input_size % 16:
            raise ValueError(f"{type(self).__name__}: input_size must be a multiple of 16, got {input_size}")
        widths = tuple(int(w) for w in widths)  # type: ignore[assignment]
        self.input_size = int(input_size)
        self.backbone = ResNetIR(depth=depth, use_se=use_se, in_channels=3, widths=widths)
        self.norm = nn.BatchNorm1d(widths[3])
        self.feature_dim = int(widths[3])
        self.init_kwargs: dict[str, Any] = dict(input_size=input_size, depth=depth, use_se=use_se, widths=list(widths))

    def resize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` → ``(B, 3, input_size, input_size)`` (identity when already that size)."""
        size = self.input_size
        if images.shape[-2:] == (size, size):
            return images
        down = min(images.shape[-2:]) > size
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=down)

    def trunk_features(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` float in [-1, 1] → ``(B, F)`` pooled, batch-normalised trunk features."""
        assert_shape(images, (None, 3, None, None), "images")
        return self.norm(self.backbone(self.resize(images)).stage4.mean(dim=(2, 3)))

    # ------------------------------------------------------------------ persistence
    def checkpoint_payload(self) -> dict[str, Any]:
        """The checkpoint entries :meth:`from_checkpoint` needs besides the state dict."""
        return {JUDGE_KIND_KEY: self.KIND, JUDGE_KWARGS_KEY: dict(self.init_kwargs)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write a stand-alone judge file (atomic; readable by :meth:`from_checkpoint`)."""
        state = {JUDGE_STATE_PREFIX + k: v.detach().cpu() for k, v in self.state_dict().items()}
        return atomic_torch_save({"hyper_parameters": {"part": JUDGE_PART}, **self.checkpoint_payload(),
                                  "state_dict": state}, path)

    @classmethod
    def from_checkpoint(
        cls: type[JudgeT],
        path: str | os.PathLike,  # a judge .ckpt of train.py, or a file written by save()
        map_location: str | torch.device = "cpu",  # device of the loaded tensors
    ) -> JudgeT:
        """The judge stored in ``path`` (``weights_only``), in eval mode."""
        path = Path(path)
        ckpt = load_checkpoint(path, map_location=map_location)
        require_part(ckpt, JUDGE_PART, path)
        kind = ckpt.get(JUDGE_KIND_KEY)
        if kind != cls.KIND:
            raise CheckpointError(f"{path}: holds a {kind!r} judge, not an {cls.KIND!r} judge")
        kwargs, state = ckpt.get(JUDGE_KWARGS_KEY), ckpt.get("state_dict")
        if not isinstance(kwargs, dict) or not isinstance(state, dict):
            raise CheckpointError(f"{path}: no '{JUDGE_KWARGS_KEY}' or no state_dict (not a judge checkpoint?)")
        try:
            judge = cls(**{**kwargs, "widths": tuple(kwargs["widths"])})
        except (TypeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot build the judge from {kwargs!r} ({err})") from None
        weights = state_dict_under(state, JUDGE_STATE_PREFIX)
        load_matching(judge, weights, source=f"{path}: {cls.KIND} judge")
        return judge.eval()


class EmotionJudge(_Judge):
    """Face crop ``(B, 3, H, W)`` in [-1, 1] → :class:`EmotionJudgeOutput` over :data:`JUDGE_EMOTIONS`."""

    KIND = "emotion"

    def __init__(
        self,
        *,
        input_size: int = 112,  # crops are resized to input_size² (multiple of 16)
        depth: int = 10,  # ResNet-IR depth (ir_se.DEPTH_UNITS)
        use_se: bool = False,  # IR-SE (True) or IR (False)
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),  # trunk stage widths; F = widths[3]
        dropout: float = 0.2,  # dropout before the linear layer (training only)
    ) -> None:
        super().__init__(input_size=input_size, depth=depth, use_se=use_se, widths=widths)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"EmotionJudge: dropout must lie in [0, 1), got {dropout}")
        self.init_kwargs["dropout"] = dropout
        self.classes: tuple[str, ...] = JUDGE_EMOTIONS
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, len(JUDGE_EMOTIONS))

    def forward(self, images: Tensor) -> EmotionJudgeOutput:
        """``(B, 3, H, W)`` float in [-1, 1] → logits / probabilities ``(B, 8)`` and features ``(B, F)``."""
        features = self.trunk_features(images)
        logits = self.head(self.dropout(features))
        return EmotionJudgeOutput(logits=logits, probabilities=torch.softmax(logits, dim=-1), features=features)


class IdentityJudge(_Judge):
    """Face crop ``(B, 3, H, W)`` in [-1, 1] → :class:`IdentityJudgeOutput` (unit embedding + subject logits)."""

    KIND = "identity"

    def __init__(
        self,
        *,
        subjects: Sequence[str],  # training subject names, in logit order (N >= 1, unique)
        input_size: int = 112,  # crops are resized to input_size² (multiple of 16)
        depth: int = 10,  # ResNet-IR depth (ir_se.DEPTH_UNITS)
        use_se: bool = False,  # IR-SE (True) or IR (False)
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),  # trunk stage widths
        embedding_dim: int = 128,  # D, length of the embedding
        scale: float = 16.0,  # cosine-softmax temperature s: logits = s · cos
    ) -> None:
        super().__init__(input_size=input_size, depth=depth, use_se=use_se, widths=widths)
        names = tuple(str(s) for s in subjects)
        if not names:
            raise ValueError("IdentityJudge: at least one subject is needed")
        repeated = sorted({s for s in names if names.count(s) > 1})
        if repeated:
            raise ValueError(f"IdentityJudge: subject names repeated: {repeated}")
        if embedding_dim < 1 or not scale > 0:
            raise ValueError(f"IdentityJudge: embedding_dim must be >= 1 and scale > 0, got {embedding_dim}, {scale}")
        self.init_kwargs.update(subjects=list(names), embedding_dim=embedding_dim, scale=scale)
        self.subjects: tuple[str, ...] = names
        self.scale = float(scale)
        self.embedding_dim = int(embedding_dim)
        self.project = nn.Linear(self.feature_dim, embedding_dim)
        self.class_weights = nn.Parameter(torch.randn(len(names), embedding_dim) / embedding_dim**0.5)

    def forward(self, images: Tensor) -> IdentityJudgeOutput:
        """``(B, 3, H, W)`` float in [-1, 1] → unit embedding ``(B, D)`` and logits ``(B, N)``."""
        embedding = F.normalize(self.project(self.trunk_features(images)), dim=-1)
        logits = self.scale * embedding @ F.normalize(self.class_weights, dim=-1).T
        return IdentityJudgeOutput(embedding=embedding, logits=logits)

    def subject_index(self, names: Sequence[str]) -> Tensor:
        """``(B,)`` int64 row of each subject name; ``ValueError`` naming an unknown subject."""
        lookup = {s: i for i, s in enumerate(self.subjects)}
        unknown = sorted({str(n) for n in names if str(n) not in lookup})
        if unknown:
            raise ValueError(f"subjects {unknown[:5]} are not among the identity judge's {len(self.subjects)} subjects")
        return torch.tensor([lookup[str(n)] for n in names], dtype=torch.int64)


__all__ = [
    "EmotionJudge",
    "EmotionJudgeOutput",
    "IdentityJudge",
    "IdentityJudgeOutput",
    "JUDGE_EMOTIONS",
    "JUDGE_KINDS",
    "JUDGE_PART",
    "emotion_class_index",
]
