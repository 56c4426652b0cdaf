"""Schema pieces shared by every trainable part's run configuration.

A part's schema subclasses :class:`RunConfig` and adds two typed sections, ``model``
(what the LightningModule builds) and ``data`` (what the DataModule reads)::

    @dataclass
    class ReconRunConfig(RunConfig):
        model: ReconModelConfig = field(default_factory=ReconModelConfig)
        data: FrameDataConfig = field(default_factory=FrameDataConfig)

``trainer`` is passed to ``pytorch_lightning.Trainer`` as keyword arguments; its keys
are checked against the Trainer's signature when the trainer is built (a misspelled key
is an error), so any Trainer option can be set from the command line
(``trainer.devices=2 trainer.strategy=ddp trainer.precision=bf16-mixed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # "wandb", "csv" or "none"
    project: str = "emoedit"  # W&B project
    entity: Optional[str] = None  # W&B entity (team or user); None = the user's default
    mode: str = "offline"  # W&B mode: "offline" (default), "online" or "disabled"
    name: Optional[str] = None  # run name; None = the run directory's name
    group: Optional[str] = None  # W&B group (e.g. a sweep or an experiment family)
    tags: list[str] = field(default_factory=list)  # W&B tags
    log_model: bool = False  # upload checkpoints as W&B artifacts (online runs)


@dataclass
class CheckpointConfig:
    monitor: Optional[str] = None  # metric key for "best" (e.g. "val/loss"); None = no best-k tracking
    mode: str = "min"  # "min" or "max" for the monitored metric
    save_top_k: int = 1  # best checkpoints kept (when monitor is set)
    save_last: bool = True  # always keep last.ckpt (what resume uses)
    every_n_train_steps: Optional[int] = None  # also checkpoint every N optimiser steps
    every_n_epochs: Optional[int] = None  # checkpoint every N epochs (Lightning's default: 1)


@dataclass
class RunConfig:
    """What every part's run needs besides its ``model`` and ``data`` sections."""

    seed: int = 0  # global seed (Lightning seed_everything, workers too)
    output_dir: str = "runs/${part}/${run_name}"  # run folder: config.yaml, checkpoints/, logs
    part: str = "???"  # filled by train.py from the command line
    run_name: str = "default"  # sub-folder name under runs/<part>/
    ckpt_path: Optional[str] = None  # resume: a .ckpt path, or "last" = this run's last.ckpt if present
    init_from: Optional[str] = None  # start weights from a checkpoint (strict), with a fresh optimiser
    init_keep_counters: bool = False  # with init_from: continue its step/epoch counters (True) or restart at 0
    matmul_precision: str = "highest"  # torch.set_float32_matmul_precision ("high" enables TF32 on GPUs)
    trainer: dict[str, Any] = field(default_factory=dict)  # keyword arguments of pytorch_lightning.Trainer
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
