"""Training the subject classifier ``f`` over UV textures (METHOD.md §3.5, step 7 of §4).

A :class:`~emoedit.networks.subject_classifier.SubjectClassifier` (ResNet-IR(-SE) trunk,
linear head over the N *training* subjects) trained with cross-entropy on the textures
of every frame of the training subjects (all emotions and levels, so that it recognises
the person, not the expression). Its softmax ``subject_weights`` is what eq. 4 mixes the
edit directions with. The subject names (logit order) are the config's ``model.subjects``
(a plain list, saved in the checkpoint's hyperparameters); every subject of the training
data must be among them and every one of them must have training data (checked when
training starts; drop the unseen subjects with ``data.exclude={subject: [...]}``).

Data: :class:`SubjectTextureDataModule` — K's :class:`~datamodules.textures.TextureDataModule`
(same filtering and resizing) plus the subject label of every record and a held-out
validation split **within the seen subjects**: ``data.split_by=clip`` keeps a seeded
``val_fraction`` of every subject's clips (or the explicit ``data.val_keys``) for
validation; ``data.split_by=frame`` keeps the last ``val_fraction`` of every clip's frames
(by the ``frame`` metadata). ``data.val_images`` (the t-GAN's FID subset) is not used.

Logged: ``classifier/train/{loss,accuracy}`` per step, ``classifier/val/{loss,accuracy,
true_weight}`` per validation (accuracy on held-out frames of seen subjects; ``true_weight``
= mean softmax weight of the true subject); media: a per-subject accuracy table.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.media_logger import MediaItem, MediaLogger, MediaTable
from datamodules.subject_textures import (  # noqa: F401  (re-exported for existing imports)
    LABEL_KEY,
    LabelledTextureDataset,
    SubjectTextureDataConfig,
    SubjectTextureDataModule,
    split_within_subjects,
)
from datamodules.textures import IMAGE_KEY
from emoedit.config import RunConfig
from emoedit.networks.subject_classifier import CLASSIFIER_KWARGS_KEY, CLASSIFIER_PART, SubjectClassifier
from lightning_modules.base import EmoeditSystem

# --------------------------------------------------------------------------- system
@dataclass
class ClassifierModelConfig:
    subjects: list[str] = field(default_factory=list)  # training subjects = classes, in logit order (required)
    input_size: int = 128  # textures are resized to this side (multiple of 16)
    depth: int = 18  # ResNet-IR depth (10, 18, 34, 50, ...)
    use_se: bool = True  # IR-SE (True) or IR (False)
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # trunk stage widths
    dropout: float = 0.2  # dropout before the linear head
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 3.0e-4  # learning rate
    weight_decay: float = 1.0e-4  # weight decay (adamw: decoupled)


@dataclass
class ClassifierRunConfig(RunConfig):
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    data: SubjectTextureDataConfig = field(default_factory=SubjectTextureDataConfig)


class ClassifierSystem(EmoeditSystem[ClassifierModelConfig]):
    """Subject classifier + cross-entropy (see the module docstring)."""

    PART = CLASSIFIER_PART
    CONFIG_CLS = ClassifierModelConfig

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        problems = []
        if not cfg.subjects:
            problems.append("model.subjects must list the training subjects (the classes, in logit order), "
                            "e.g. model.subjects=[M003,M005,W009]")
        if cfg.optimizer not in ("adam", "adamw"):
            problems.append(f"model.optimizer must be adam or adamw, got {cfg.optimizer!r}")
        if len(cfg.widths) != 4:
            problems.append(f"model.widths must hold 4 stage widths, got {list(cfg.widths)}")
        if problems:
            raise ValueError("classifier model config: " + "; ".join(problems))
        self.classifier = SubjectClassifier(
            subjects=list(cfg.subjects), input_size=cfg.input_size, depth=cfg.depth, use_se=cfg.use_se,
            widths=tuple(cfg.widths), dropout=cfg.dropout,  # type: ignore[arg-type]
        )
        self._val_hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._per_subject: list[list[Any]] = []

    def setup(self, stage: str) -> None:
        """Check the data's subjects against ``model.subjects`` before any step."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        found = getattr(datamodule, "subjects", ())
        if not found:
            return
        known = set(self.classifier.subjects)
        extra = sorted(set(found) - known)
        missing = sorted(known - set(found))
        if extra or missing:
            parts = []
            if extra:
                parts.append(f"subjects in the training data but not in model.subjects: {extra[:8]} "
                             "(add them, or drop them with data.exclude={subject: [...]})")
            if missing:
                parts.append(f"model.subjects without training records: {missing[:8]}")
            raise ValueError("classifier: " + "; ".join(parts))

    def forward(self, uv_texture: Tensor) -> Any:
        """``(B, C, T, T)`` [-1, 1] textures → :class:`SubjectClassifierOutput`."""
        return self.classifier(uv_texture)

    def _batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        images = batch[IMAGE_KEY]
        if images.dtype != torch.uint8:
            raise TypeError(f"batch[{IMAGE_KEY!r}] must be uint8 (the texture DataModule's output), got {images.dtype}")
        labels = self.classifier.subject_index(list(batch[LABEL_KEY])).to(self.device)
        return images.float().div(127.5).sub(1.0), labels

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x, labels = self._batch(batch)
        out = self(x)
        loss = F.cross_entropy(out.logits, labels, label_smoothing=self.config.label_smoothing)
        accuracy = (out.logits.argmax(-1) == labels).float().mean()
        self.log("classifier/train/loss", loss.detach(), batch_size=x.shape[0], prog_bar=True)
        self.log("classifier/train/accuracy", accuracy.detach(), batch_size=x.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_hits = defaultdict(lambda: [0, 0])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x, labels = self._batch(batch)
        out = self(x)
        hits = out.logits.argmax(-1) == labels
        log = dict(batch_size=x.shape[0], sync_dist=True, on_epoch=True, on_step=False)
        self.log("classifier/val/loss", F.cross_entropy(out.logits, labels), **log)
        self.log("classifier/val/accuracy", hits.float().mean(), **log)
        true_weight = out.subject_weights.gather(1, labels[:, None]).mean()
        self.log("classifier/val/true_weight", true_weight, **log)
        for subject, hit in zip(batch[LABEL_KEY], hits.tolist()):
            counts = self._val_hits[str(subject)]
            counts[0] += int(hit)
            counts[1] += 1

    def on_validation_epoch_end(self) -> None:
        self._per_subject = [[s, c[0] / c[1], c[1]] for s, c in sorted(self._val_hits.items()) if c[1]]

    def media(self) -> list[MediaItem]:
        """Per-subject held-out accuracy of the latest validation (this process's share)."""
        if not self._per_subject:
            return []
        return [MediaTable(key="classifier/val/per_subject", columns=["subject", "accuracy", "frames"],
                           rows=[list(row) for row in self._per_subject])]

    def extra_callbacks(self) -> list:
        """Callbacks train.py adds for this part: the media logger (no-op without W&B)."""
        return [MediaLogger(every_n_steps=1000)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = list(self.classifier.parameters())
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Constructor arguments, so :meth:`SubjectClassifier.from_checkpoint` needs no Lightning."""
        checkpoint[CLASSIFIER_KWARGS_KEY] = dict(self.classifier.init_kwargs)


__all__ = [
    "ClassifierModelConfig",
    "ClassifierRunConfig",
    "ClassifierSystem",
    "LabelledTextureDataset",
    "SubjectTextureDataConfig",
    "SubjectTextureDataModule",
    "split_within_subjects",
]
