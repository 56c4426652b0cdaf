"""t-GAN training throughput (kimg/s) of precision / memory-layout variants, on synthetic data.

Runs the real ``TGANSystem`` training iterations (G step, path length every
``g_reg_interval``, D step, R1 every ``d_reg_interval``, EMA) through a Lightning Trainer
on random uint8 images, for each variant:

    fp32                 the default
    bf16                 model.num_bf16_res = all resolutions of G and D
    bf16_top2            model.num_bf16_res = 2 (the two highest resolutions)
    channels_last        model.channels_last = true
    bf16+channels_last   both
    fused_modconv        modulation as one grouped convolution (fp32)

Usage (from the repository root):
    .venv/bin/python benchmarks/train_throughput.py [--resolution 64] [--batch 8]
        [--channel-base 4096] [--channel-max 128] [--iters 32] [--repeats 3] [--threads 2]
        [--variants fp32,bf16,channels_last] [--device cpu]

Each variant runs ``--repeats`` timed windows of ``--iters`` iterations (a multiple of
16 covers the lazy-regularisation cycle) after two warm-up iterations; the best window is
reported (the CPU may be shared) with the median beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import pytorch_lightning as pl  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from emoedit.machine import cpu_model  # noqa: E402
from lightning_modules.tgan import TGANSystem  # noqa: E402

WARMUP = 2


class RandomImages(Dataset):
    """Endless-enough random uint8 images ``{"image": (3, R, R)}``."""

    def __init__(self, resolution: int, count: int) -> None:
        self.images = torch.randint(0, 256, (count, 3, resolution, resolution), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


class IterationTimer(pl.Callback):
    """Wall-clock end time of every training iteration."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def variants(resolution: int) -> dict[str, dict[str, Any]]:
    all_res = resolution.bit_length()  # > number of resolutions: every block in bf16
    return {
        "fp32": {},
        "bf16": {"num_bf16_res": all_res},
        "bf16_top2": {"num_bf16_res": 2},
        "channels_last": {"channels_last": True},
        "bf16+channels_last": {"num_bf16_res": all_res, "channels_last": True},
        "fused_modconv": {"fused_modconv": True},
    }


def measure(model: dict[str, Any], *, batch: int, iters: int, repeats: int, device: str) -> list[float]:
    """Seconds per iteration for each timed window."""
    steps = WARMUP + iters * repeats
    data = DataLoader(RandomImages(model["resolution"], batch * 8), batch_size=batch, shuffle=True, drop_last=True)
    timer = IterationTimer()
    pl.seed_everything(0, verbose=False)
    system = TGANSystem(model)
    trainer = pl.Trainer(accelerator=device, devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(system, train_dataloaders=data)
    ends = timer.ends[WARMUP - 1:]
    return [(ends[(r + 1) * iters] - ends[r * iters]) / iters for r in range(repeats)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channel-base", type=int, default=4096)
    parser.add_argument("--channel-max", type=int, default=128)
    parser.add_argument("--latent", type=int, default=128, help="z_dim = w_dim")
    parser.add_argument("--iters", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or gpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    table = variants(args.resolution)
    chosen = [v for v in args.variants.split(",") if v] or list(table)
    unknown = [v for v in chosen if v not in table]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(table)}")
    base = dict(resolution=args.resolution, z_dim=args.latent, w_dim=args.latent, channel_base=args.channel_base,
                channel_max=args.channel_max, mapping_layers=8, num_samples=4, media_every_n_steps=0)
    print(f"# {cpu_model()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, device {args.device}")
    print(f"# resolution {args.resolution}, batch {args.batch}, channel_base {args.channel_base}, "
          f"channel_max {args.channel_max}, z/w {args.latent}; best (median) of {args.repeats} x {args.iters} iters")
    reference = None
    for name in chosen:
        seconds = measure({**base, **table[name]}, batch=args.batch, iters=args.iters, repeats=args.repeats,
                          device=args.device)
        best, median = min(seconds), statistics.median(seconds)
        kimg = args.batch / best / 1000.0
        reference = reference or kimg
        print(f"{name:<20} {kimg * 1000:8.1f} img/s  {kimg:7.4f} kimg/s  ({args.batch / median:7.1f} img/s median)  "
              f"x{kimg / reference:4.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
