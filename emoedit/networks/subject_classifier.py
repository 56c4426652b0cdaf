"""Subject classifier ``f`` over UV textures (METHOD.md §3.5, eq. 4).

A ResNet-IR(-SE) trunk (:mod:`emoedit.networks.ir_se`), global average pooling, dropout
and a linear layer to one logit per *training* subject. The softmax of the logits,
``subject_weights``, is part of the output: eq. 4 treats a texture as a mixture of the
training subjects with these weights. The subject names travel with the module
(``subjects``, the row order of the logits and of the edit directions).

Textures of any side are resized to ``input_size`` first. Load a trained classifier with
:meth:`SubjectClassifier.from_checkpoint` (a ``classifier`` checkpoint of ``train.py``; the
subject names come from its hyperparameters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.checkpoint_io import CheckpointError, load_checkpoint, require_part, state_dict_under
from emoedit.networks.ir_se import ResNetIR
from emoedit.networks.psp_encoder import load_matching
from emoedit.shape_checks import assert_shape

#: Part name of the classifier checkpoints written by ``train.py classifier``.
CLASSIFIER_PART = "classifier"
#: Prefix of the classifier's tensors in such a checkpoint's ``state_dict``.
CLASSIFIER_STATE_PREFIX = "classifier."
#: Checkpoint key holding :attr:`SubjectClassifier.init_kwargs` (a plain dict).
CLASSIFIER_KWARGS_KEY = "subject_classifier_kwargs"


@dataclass(frozen=True)
class SubjectClassifierOutput:
    """Logits and softmax weights over the training subjects."""

    logits: Tensor  # (B, N) float, N = len(subjects)
    subject_weights: Tensor  # (B, N) float in [0, 1], rows sum to 1: softmax(logits)


class SubjectClassifier(nn.Module):
    """UV texture ``(B, C, T, T)`` in [-1, 1] → :class:`SubjectClassifierOutput` over ``subjects``."""

    def __init__(
        self,
        *,
        subjects: Sequence[str],  # training subject names, in logit order (N >= 1, unique)
        input_size: int = 128,  # side the textures are resized to (divisible by 16)
        depth: int = 18,  # ResNet-IR depth (ir_se.DEPTH_UNITS)
        use_se: bool = True,  # IR-SE (True) or IR (False)
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),  # trunk stage widths
        in_channels: int = 3,  # texture channels
        dropout: float = 0.2,  # dropout before the linear layer (training only)
    ) -> None:
        super().__init__()
        names = tuple(str(s) for s in subjects)
        if not names:
            raise ValueError("SubjectClassifier: at least one subject is needed")
        repeated = sorted({s for s in names if names.count(s) > 1})
        if repeated:
            raise ValueError(f"SubjectClassifier: subject names repeated: {repeated}")
        if input_size < 16 or input_size % 16:
            raise ValueError(f"SubjectClassifier: input_size must be a multiple of 16, got {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SubjectClassifier: dropout must lie in [0, 1), got {dropout}")
        widths = tuple(int(w) for w in widths)  # type: ignore[assignment]
        self.subjects: tuple[str, ...] = names
        self.input_size, self.in_channels = input_size, in_channels
        self.init_kwargs: dict[str, Any] = dict(
            subjects=list(names), input_size=input_size, depth=depth, use_se=use_se, widths=list(widths),
            in_channels=in_channels, dropout=dropout,
        )
        self.backbone = ResNetIR(depth=depth, use_se=use_se, in_channels=in_channels, widths=widths)
        self.norm = nn.BatchNorm1d(widths[3])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[3], len(names))

    @property
    def num_subjects(self) -> int:
        return len(self.subjects)

    def resize(self, uv_texture: Tensor) -> Tensor:
        """``(B, C, T, T)`` → ``(B, C, input_size, input_size)`` (identity when T == input_size)."""
        size = self.input_size
        if uv_texture.shape[-1] == size and uv_texture.shape[-2] == size:
            return uv_texture
        down = uv_texture.shape[-1] > size
        return F.interpolate(uv_texture, size=(size, size), mode="bilinear", align_corners=False, antialias=down)

    def forward(self, uv_texture: Tensor) -> SubjectClassifierOutput:
        """``(B, C, T, T)`` float textures in [-1, 1] → logits and softmax weights ``(B, N)``."""
        assert_shape(uv_texture, (None, self.in_channels, "T", "T"), "uv_texture")
        features = self.backbone(self.resize(uv_texture)).stage4.mean(dim=(2, 3))
        logits = self.head(self.dropout(self.norm(features)))
        return SubjectClassifierOutput(logits=logits, subject_weights=torch.softmax(logits, dim=-1))

    def subject_index(self, names: Sequence[str]) -> Tensor:
        """``(B,)`` int64 row of each subject name; ``ValueError`` naming an unknown subject."""
        lookup = {s: i for i, s in enumerate(self.subjects)}
        unknown = sorted({n for n in names if n not in lookup})
        if unknown:
            raise ValueError(f"subjects {unknown[:5]} are not among the classifier's {len(self.subjects)} subjects")
        return torch.tensor([lookup[n] for n in names], dtype=torch.int64)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,  # a classifier .ckpt written by train.py
        map_location: str | torch.device = "cpu",  # device of the loaded tensors
    ) -> SubjectClassifier:
        """The classifier of a ``classifier`` checkpoint (``weights_only``), in eval mode."""
        path = Path(path)
        ckpt = load_checkpoint(path, map_location=map_location)
        require_part(ckpt, CLASSIFIER_PART, path)
        kwargs = ckpt.get(CLASSIFIER_KWARGS_KEY)
        state = ckpt.get("state_dict")
        if not isinstance(kwargs, dict) or not isinstance(state, dict):
            raise CheckpointError(f"{path}: no '{CLASSIFIER_KWARGS_KEY}' or no state_dict (not written by train.py?)")
        try:
            classifier = cls(**{**kwargs, "widths": tuple(kwargs["widths"])})
        except (TypeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot build the classifier from {kwargs!r} ({err})") from None
        weights = state_dict_under(state, CLASSIFIER_STATE_PREFIX)
        load_matching(classifier, weights, source=f"{path}: classifier")
        return classifier.eval()
