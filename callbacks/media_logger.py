"""The one callback that talks to Weights & Biases about media (image grids, videos, tables).

A system that has something to show implements the small :class:`MediaProvider`
protocol — ``media() -> Sequence[MediaItem]`` — returning named items:

- :class:`MediaImages`: a batch ``(N, C, H, W)`` float in [0, 1], logged as one grid image;
- :class:`MediaVideo`: frames ``(T, C, H, W)`` float in [0, 1], encoded to an mp4 file
  (``wandb.Video`` needs a file to avoid a moviepy dependency) and logged from it;
- :class:`MediaTable`: columns and rows of plain values.

:class:`MediaLogger` asks for them every ``every_n_steps`` optimisation steps (and once
at the end of training) and logs them through every ``WandbLogger`` of the trainer, on
global rank 0 only. Without a W&B logger it does nothing (and does not even call
``media()``, which can be expensive).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import pytorch_lightning as pl
import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape


@dataclass(frozen=True)
class MediaImages:
    """Images shown as one grid."""

    key: str  # W&B key, e.g. "tgan/samples/psi_0.7"
    images: Tensor  # (N, C, H, W) float in [0, 1] (C = 1 or 3)
    nrow: int = 8  # images per grid row
    caption: str | None = None  # caption under the grid


@dataclass(frozen=True)
class MediaVideo:
    """A short video (encoded to mp4 by the logger)."""

    key: str  # W&B key
    frames: Tensor  # (T, C, H, W) float in [0, 1] (C = 1 or 3)
    fps: float = 24.0  # frames per second
    caption: str | None = None  # caption


@dataclass(frozen=True)
class MediaTable:
    """A table of plain values (str, int, float, bool)."""

    key: str  # W&B key
    columns: list[str]  # column names
    rows: list[list[Any]] = field(default_factory=list)  # one list per row, len(columns) values each


MediaItem = MediaImages | MediaVideo | MediaTable


@runtime_checkable
class MediaProvider(Protocol):
    """What a LightningModule implements to have media logged."""

    def media(self) -> Sequence[MediaItem]:
        """Named media items to log now (called on global rank 0 only)."""
        ...


def to_uint8_hwc(images: Tensor) -> Tensor:
    """``(..., C, H, W)`` float in [0, 1] → ``(..., H, W, 3)`` uint8 on the CPU (grey repeated to RGB)."""
    if images.shape[-3] == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    out = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return out.movedim(-3, -1).contiguous()


def image_grid(images: Tensor, nrow: int, padding: int = 2) -> Tensor:
    """``(N, C, H, W)`` float → one grid ``(C, H', W')`` float (``torchvision.utils.make_grid``)."""
    from torchvision.utils import make_grid

    assert_shape(images, (None, None, None, None), "image_grid images")
    return make_grid(images.detach().float(), nrow=max(1, min(nrow, images.shape[0])), padding=padding, pad_value=1.0)


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "media"


def write_video_file(path: Path, frames: Tensor, fps: float) -> Path:
    """Encode ``(T, C, H, W)`` float [0, 1] frames to an H.264 mp4 at ``path`` (atomic); odd sizes padded."""
    from emoedit.video import VideoWriter

    assert_shape(frames, (None, None, None, None), "video frames")
    height, width = frames.shape[-2:]
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:  # yuv420p needs even sides
        frames = torch.nn.functional.pad(frames, [0, pad_w, 0, pad_h], value=1.0)
    with VideoWriter(path, fps=fps, crf=20.0, preset="veryfast") as writer:
        writer.write(to_uint8_hwc(frames).numpy())
    return path


class MediaLogger(pl.Callback):
    """Logs a :class:`MediaProvider`'s media to W&B every ``every_n_steps`` steps (see the module docstring)."""

    def __init__(
        self,
        *,
        every_n_steps: int = 1000,  # optimisation steps between two loggings (0: only at the end)
        log_on_train_end: bool = True,  # also log once when training ends
        log_first_step: bool = True,  # also log after the first step of a run (a quick visual check)
    ) -> None:
        super().__init__()
        if every_n_steps < 0:
            raise ValueError(f"MediaLogger: every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.log_on_train_end = log_on_train_end
        self.log_first_step = log_first_step
        self._last_logged_step: int | None = None
        self._first_step: int | None = None

    @staticmethod
    def wandb_loggers(trainer: pl.Trainer) -> list[Any]:
        """The trainer's ``WandbLogger`` instances (empty without W&B)."""
        from pytorch_lightning.loggers import WandbLogger

        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        due = self.every_n_steps > 0 and step % self.every_n_steps == 0
        first = self.log_first_step and self._first_step is not None and step == self._first_step + 1
        if due or first:
            self.log_media(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.log_on_train_end:
            self.log_media(trainer, pl_module)

    def log_media(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
        """Ask ``pl_module`` for media and log them; returns the keys logged (empty when nothing to do)."""
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_logged_step:
            return []
        loggers = self.wandb_loggers(trainer)
        if not loggers or not isinstance(pl_module, MediaProvider):
            return []
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                items = list(pl_module.media())
        finally:
            pl_module.train(was_training)
        keys: list[str] = []
        for logger in loggers:
            for item in items:
                self._log_item(logger, item, step)
                keys.append(item.key)
        self._last_logged_step = step
        return keys

    def _log_item(self, logger: Any, item: MediaItem, step: int) -> None:
        if isinstance(item, MediaImages):
            grid = image_grid(item.images, item.nrow)
            kwargs = {"caption": [item.caption]} if item.caption else {}
            logger.log_image(key=item.key, images=[to_uint8_hwc(grid).numpy()], step=step, **kwargs)
        elif isinstance(item, MediaVideo):
            folder = Path(logger.save_dir) / "media" if logger.save_dir else Path(tempfile.mkdtemp(prefix="media-"))
            path = write_video_file(folder / f"{_safe_name(item.key)}_step{step:08d}.mp4", item.frames, item.fps)
            kwargs = {"caption": [item.caption]} if item.caption else {}
            logger.log_video(key=item.key, videos=[str(path)], step=step, format=["mp4"], **kwargs)
        elif isinstance(item, MediaTable):
            rows = [list(row) for row in item.rows]
            bad = [i for i, row in enumerate(rows) if len(row) != len(item.columns)]
            if bad:
                raise ValueError(f"MediaTable {item.key!r}: rows {bad[:5]} do not have {len(item.columns)} values")
            logger.log_table(key=item.key, columns=list(item.columns), data=rows, step=step)
        else:
            raise TypeError(f"MediaLogger: unknown media item {type(item).__name__}")
