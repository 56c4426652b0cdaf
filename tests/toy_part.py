"""A minimal trainable part used to test train.py's machinery (not a part of the method).

It regresses a fixed random linear map; small enough for a few CPU steps, real enough
that checkpoints, resume, loggers and DDP are exercised exactly as for the real parts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datamodules.base import EmoeditDataModule
from emoedit.config import RunConfig
from lightning_modules.base import EmoeditSystem


@dataclass
class ToyModelConfig:
    hidden: int = 8  # hidden width
    lr: float = 1e-2  # Adam learning rate


@dataclass
class ToyDataConfig:
    num_samples: int = 64  # dataset size
    batch_size: int = 8  # batch size per process
    seed: int = 123  # data seed


@dataclass
class ToyRunConfig(RunConfig):
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    data: ToyDataConfig = field(default_factory=ToyDataConfig)


class ToySystem(EmoeditSystem[ToyModelConfig]):
    PART = "toy"
    CONFIG_CLS = ToyModelConfig

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.net = nn.Sequential(nn.Linear(4, self.config.hidden), nn.Tanh(), nn.Linear(self.config.hidden, 2))
        self.start_step: int | None = None

    def on_train_start(self) -> None:
        self.start_step = self.global_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.config.lr)


class ToyDataModule(EmoeditDataModule[ToyDataConfig]):
    CONFIG_CLS = ToyDataConfig

    def setup(self, stage=None) -> None:
        g = torch.Generator().manual_seed(self.config.seed)
        x = torch.randn(self.config.num_samples, 4, generator=g)
        w = torch.randn(4, 2, generator=g)
        self.dataset = TensorDataset(x, x @ w)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.config.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.config.batch_size)


if __name__ == "__main__":  # used by the DDP test: python tests/toy_part.py CONFIG_DIR key=value ...
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import train
    from emoedit.config import compose_config

    spec = train.PartSpec(ToySystem, ToyDataModule, ToyRunConfig, "toy regression")
    cfg = compose_config(ToyRunConfig, part="toy", config_dir=sys.argv[1], overrides=sys.argv[2:])
    trainer = train.run(spec, cfg)
    print(f"RANK {trainer.global_rank} WORLD {trainer.world_size} START {trainer.lightning_module.start_step} "
          f"STEP {trainer.global_step}")
