"""Training the evaluation judges on ground-truth frames (issue 7; never used by the method).

``model.kind = emotion`` trains an :class:`~emoedit.networks.judges.EmotionJudge`
(cross-entropy over neutral + the 7 emotions, labels from each record's ``emotion``
metadata); ``model.kind = identity`` trains an :class:`~emoedit.networks.judges.IdentityJudge`
(cosine-softmax cross-entropy over ``model.subjects``, labels from the ``subject``
metadata). Both read the aligned crops of a ``frames`` cache through
:class:`~datamodules.frames.FrameDataModule` (``crop`` in [0, 1] → [-1, 1]). Train them on
the synthetic world's ground-truth frames (every emotion and level; the identity judge on
held-out clips of the same subjects: ``data.split_by=clip``).

Logged: ``judge/train/{loss,accuracy}`` per step; ``judge/val/{loss,accuracy}`` per
validation, plus ``judge/val/true_confidence`` (mean softmax probability of the true class).
The checkpoint carries the judge's constructor arguments, so
``EmotionJudge.from_checkpoint`` / ``IdentityJudge.from_checkpoint`` need no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.frames import FrameDataConfig
from emoedit.config import RunConfig
from emoedit.networks.judges import JUDGE_KINDS, JUDGE_PART, EmotionJudge, IdentityJudge, emotion_class_index
from lightning_modules.base import EmoeditSystem

#: Metadata column holding each kind's label.
LABEL_COLUMNS: dict[str, str] = {"emotion": "emotion", "identity": "subject"}


@dataclass
class JudgeModelConfig:
    kind: str = "emotion"  # emotion | identity
    subjects: list[str] = field(default_factory=list)  # identity: the classes, in logit order (required)
    input_size: int = 112  # crops are resized to this side (multiple of 16)
    depth: int = 10  # ResNet-IR depth (10, 18, 34, 50, ...)
    use_se: bool = False  # IR-SE (True) or IR (False)
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # trunk stage widths
    dropout: float = 0.2  # emotion: dropout before the linear head
    embedding_dim: int = 128  # identity: embedding length
    scale: float = 16.0  # identity: cosine-softmax temperature
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 1.0e-3  # learning rate
    weight_decay: float = 1.0e-4  # weight decay (adamw: decoupled)


@dataclass
class JudgeRunConfig(RunConfig):
    model: JudgeModelConfig = field(default_factory=JudgeModelConfig)
    data: FrameDataConfig = field(default_factory=FrameDataConfig)


class JudgeSystem(EmoeditSystem[JudgeModelConfig]):
    """An emotion or identity judge + cross-entropy (see the module docstring)."""

    PART = JUDGE_PART
    CONFIG_CLS = JudgeModelConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        problems = []
        if cfg.kind not in JUDGE_KINDS:
            problems.append(f"model.kind must be one of {JUDGE_KINDS}, got {cfg.kind!r}")
        if cfg.kind == "identity" and not cfg.subjects:
            problems.append("model.subjects must list the subjects (the classes, in logit order) of an identity judge, "
                            "e.g. model.subjects=[M003,M005,W009]")
        if cfg.optimizer not in ("adam", "adamw"):
            problems.append(f"model.optimizer must be adam or adamw, got {cfg.optimizer!r}")
        if len(cfg.widths) != 4:
            problems.append(f"model.widths must hold 4 stage widths, got {list(cfg.widths)}")
        if problems:
            raise ValueError("judge model config: " + "; ".join(problems))
        common = dict(input_size=cfg.input_size, depth=cfg.depth, use_se=cfg.use_se, widths=tuple(cfg.widths))
        if cfg.kind == "emotion":
            self.judge: EmotionJudge | IdentityJudge = EmotionJudge(**common, dropout=cfg.dropout)  # type: ignore[arg-type]
        else:
            self.judge = IdentityJudge(subjects=list(cfg.subjects), embedding_dim=cfg.embedding_dim,  # type: ignore[arg-type]
                                       scale=cfg.scale, **common)

    @property
    def label_column(self) -> str:
        return LABEL_COLUMNS[self.config.kind]

    def setup(self, stage: str) -> None:
        """Check that the cache has the label column (and, for identity, only known subjects)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        index = getattr(datamodule, "train_index", None)
        if index is None:
            return
        column = self.label_column
        if column not in index.names:
            raise ValueError(f"judge: the frames cache has no '{column}' metadata (columns: {list(index.names)})")
        found = [str(v) for v in index.unique(column)]
        if self.config.kind == "identity":
            unknown = sorted(set(found) - set(self.judge.subjects))  # type: ignore[union-attr]
            if unknown:
                raise ValueError(f"judge: subjects in the training data but not in model.subjects: {unknown[:8]}")
        else:
            emotion_class_index(found)  # ValueError naming an unknown emotion

    def forward(self, images: Tensor) -> Any:
        """``(B, 3, H, W)`` [-1, 1] crops → the judge's output dataclass."""
        return self.judge(images)

    def _batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        crops = batch["crop"]
        if not crops.is_floating_point():
            raise TypeError(f"batch['crop'] must be float in [0, 1] (the frames DataModule's output), got {crops.dtype}")
        names = [str(v) for v in batch[self.label_column]]
        if self.config.kind == "emotion":
            labels = emotion_class_index(names)
        else:
            labels = self.judge.subject_index(names)  # type: ignore[union-attr]
        return crops * 2.0 - 1.0, labels.to(self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x, labels = self._batch(batch)
        logits = self(x).logits
        loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        self.log("judge/train/loss", loss.detach(), batch_size=x.shape[0], prog_bar=True)
        self.log("judge/train/accuracy", accuracy.detach(), batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x, labels = self._batch(batch)
        logits = self(x).logits
        log = dict(batch_size=x.shape[0], sync_dist=True, on_epoch=True, on_step=False)
        self.log("judge/val/loss", F.cross_entropy(logits, labels), **log)
        self.log("judge/val/accuracy", (logits.argmax(-1) == labels).float().mean(), **log)
        true_confidence = torch.softmax(logits, dim=-1).gather(1, labels[:, None]).mean()
        self.log("judge/val/true_confidence", true_confidence, **log)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = list(self.judge.parameters())
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Kind and constructor arguments, so ``*Judge.from_checkpoint`` needs no Lightning."""
        checkpoint.update(self.judge.checkpoint_payload())


__all__ = ["JudgeModelConfig", "JudgeRunConfig", "JudgeSystem"]
