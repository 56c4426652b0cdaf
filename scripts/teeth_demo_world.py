#!/usr/bin/env python
"""Teeth completion measured on a synthetic world's mouths cache (METHOD.md §3.7): PSNR / L1 inside the teeth region.

Measure trained checkpoints::

    .venv/bin/python scripts/teeth_demo_world.py --cache CACHE/mouths \
        --encoder runs/teeth_encoder/X/checkpoints/last.ckpt \
        [--world WORLD | --subjects M011 W014 ...] [--max-records 1024] [--work outputs/results/teeth]

or train them first (no ``--encoder``; needs ``--world`` for the split)::

    .venv/bin/python scripts/teeth_demo_world.py --world WORLD --cache CACHE/mouths --work outputs/results/teeth \
        [--tgan-steps 2000 --tgan-minutes 10 --encoder-steps 2000 --encoder-minutes 8] [--config-dir configs]

Training (``train.run``, ``configs/<part>.yaml`` + the ``demo`` experiment of ``--config-dir``;
finished runs are reused): the teeth t-GAN on the ``crop`` field, then the teeth encoder
with its frozen EMA generator, both on the training subjects' front clips only
(``data.filter``), every evaluation clip of the world's split excluded (``data.exclude``).

Measurement: for every record of the chosen subjects (default: the world's **unseen**
subjects; ``--subjects`` lists them by hand; at most ``--max-records``, a seeded random
pick) whose teeth region is not empty, the true mouth crop ``crop`` is compared with,
inside the teeth region ``mask`` only:

- ``hole``: the teeth-removed crop itself (what the renderer leaves: the region = fill);
- ``inpaint``: a classic inpainting of the hole — OpenCV Telea (``cv2.inpaint``, radius 3)
  when ``cv2`` is importable (it is not a project dependency), else **harmonic (diffusion)
  inpainting**: the hole solves Laplace's equation with the surrounding pixels as boundary
  values (Jacobi iterations of 4-neighbour averaging, coarse-to-fine); named as such in the
  output;
- ``teeth_completion``: :class:`~emoedit.editing.teeth_completion.TeethCompleter` (encoder +
  teeth generator) on the teeth-removed crop; inside the region the completed crop is the
  generated one.

Reported per method: PSNR (dB, from the mean squared error pooled over every teeth-region
pixel of every record, images in [0, 1]), mean per-record PSNR, and L1 (mean absolute
error over the region pixels, [0, 1] units); also over the records whose mouth is open
(region ≥ ``--open-fraction`` of the crop). Written to ``<work>/results.json`` (or ``--out``) and
printed; ``<work>/sheet.png`` shows a few open mouths (teeth removed | inpaint | completion | truth).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emoedit.atomic_io import atomic_write_bytes, atomic_write_text  # noqa: E402
from emoedit.data.cache import CacheReader  # noqa: E402
from emoedit.editing.teeth_completion import TeethCompleter  # noqa: E402
from emoedit.shape_checks import assert_shape  # noqa: E402

HARMONIC_NAME = "harmonic (diffusion) inpainting, Jacobi 4-neighbour averaging, coarse-to-fine"
TELEA_NAME = "OpenCV Telea (cv2.inpaint, radius 3)"


# ---------------------------------------------------------------- baselines
def harmonic_inpaint(
    images: Tensor,  # (B, C, H, W) float
    mask: Tensor,  # (B, 1, H, W) bool: pixels to fill
    *,
    iterations: int = 100,  # Jacobi sweeps per level (each level starts from the coarser level's solution)
    min_size: int = 8,  # coarsest level side
) -> Tensor:
    """Fill ``mask`` by solving Laplace's equation (the known pixels are the boundary values).

    Coarse-to-fine: the hole is first solved on a 2× smaller image (recursively) and the
    result upsampled as the start of the Jacobi iterations, so large holes converge. Each
    sweep replaces every hole pixel by the mean of its known-or-filled 4-neighbours that
    lie inside the image. Pixels outside the mask are returned unchanged.
    """
    dims = assert_shape(images, ("B", "C", "H", "W"), "images")
    assert_shape(mask, ("B", 1, "H", "W"), "mask", dims)
    if mask.dtype != torch.bool:
        raise TypeError(f"harmonic_inpaint: mask must be bool, got {mask.dtype}")
    if not bool(mask.any()):
        return images.clone()
    # The solution inside the hole depends only on the known pixels around it: work on the
    # hole's bounding box (union over the batch) grown by 2 pixels.
    rows, cols = mask.any(dim=3)[:, 0].any(dim=0).nonzero(), mask.any(dim=2)[:, 0].any(dim=0).nonzero()
    y0, y1 = max(int(rows.min()) - 2, 0), min(int(rows.max()) + 3, dims["H"])
    x0, x1 = max(int(cols.min()) - 2, 0), min(int(cols.max()) + 3, dims["W"])
    if (y1 - y0, x1 - x0) != (dims["H"], dims["W"]):
        out = images.clone()
        out[..., y0:y1, x0:x1] = harmonic_inpaint(images[..., y0:y1, x0:x1].contiguous(),
                                                  mask[..., y0:y1, x0:x1].contiguous(), iterations=iterations,
                                                  min_size=min_size)
        return out
    hole = mask.to(images.dtype)
    known = 1.0 - hole
    height, width = images.shape[-2:]
    if min(height, width) >= 2 * min_size:
        small_known = F.avg_pool2d(known, 2, ceil_mode=True)
        small_images = F.avg_pool2d(images * known, 2, ceil_mode=True) / small_known.clamp_min(1e-6)
        small = harmonic_inpaint(small_images, small_known <= 0, iterations=iterations, min_size=min_size)
        start = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    else:
        count = known.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        start = ((images * known).sum(dim=(2, 3), keepdim=True) / count).expand_as(images)
    current = torch.where(mask, start, images)
    ones = torch.ones_like(hole)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=images.dtype,
                          device=images.device).reshape(1, 1, 3, 3)
    neighbours = F.conv2d(ones, kernel, padding=1)  # in-image 4-neighbours of each pixel
    channel_kernel = kernel.expand(dims["C"], 1, 3, 3)
    for _ in range(iterations):
        average = F.conv2d(current, channel_kernel, padding=1, groups=dims["C"]) / neighbours
        current = torch.where(mask, average, images)
    return current


def telea_inpaint(images: Tensor, mask: Tensor) -> Tensor:
    """OpenCV's Telea inpainting (radius 3) of (B, 3, H, W) [0, 1] images (needs ``cv2``)."""
    import cv2  # optional; not a project dependency

    out = []
    for image, hole in zip(images, mask):
        array = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        filled = cv2.inpaint(array, hole[0].numpy().astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
        out.append(torch.from_numpy(filled).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out)


def pick_inpainter() -> tuple[str, Callable[[Tensor, Tensor], Tensor]]:
    """Telea when ``cv2`` is importable, else harmonic inpainting."""
    if importlib.util.find_spec("cv2") is None:
        return HARMONIC_NAME, harmonic_inpaint
    return TELEA_NAME, telea_inpaint


# ---------------------------------------------------------------- metrics
class RegionErrors:
    """Accumulates squared and absolute errors inside the teeth region, per method."""

    def __init__(self) -> None:
        self.sum_sq: dict[str, float] = {}
        self.sum_abs: dict[str, float] = {}
        self.count: dict[str, float] = {}
        self.record_psnr: dict[str, list[float]] = {}

    def add(self, name: str, prediction: Tensor, target: Tensor, mask: Tensor) -> None:
        """prediction/target (B, 3, M, M) [0, 1]; mask (B, 1, M, M) bool (non-empty per record)."""
        weights = mask.to(prediction.dtype)
        diff = (prediction.clamp(0, 1) - target) * weights
        per_sq = diff.square().sum(dim=(1, 2, 3))
        per_count = weights.sum(dim=(1, 2, 3)) * prediction.shape[1]
        self.sum_sq[name] = self.sum_sq.get(name, 0.0) + float(per_sq.sum())
        self.sum_abs[name] = self.sum_abs.get(name, 0.0) + float(diff.abs().sum())
        self.count[name] = self.count.get(name, 0.0) + float(per_count.sum())
        psnr = -10.0 * torch.log10((per_sq / per_count).clamp_min(1e-10))
        self.record_psnr.setdefault(name, []).extend(psnr.tolist())

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name in self.sum_sq:
            mse = self.sum_sq[name] / max(self.count[name], 1.0)
            out[name] = {"psnr_db": -10.0 * math.log10(max(mse, 1e-10)),
                         "mean_record_psnr_db": float(np.mean(self.record_psnr[name])),
                         "l1": self.sum_abs[name] / max(self.count[name], 1.0)}
        return out


# ---------------------------------------------------------------- training
EXPERIMENT = "demo"


def world_selection(world: Path) -> dict[str, Any]:
    """Training subjects, unseen subjects and the cache clip ids of every front evaluation clip."""
    from emoedit.data.synthetic import SyntheticWorld

    opened = SyntheticWorld.open(world, require_complete=False)
    eval_front = [r for r in opened.clips(view="front") if r.role == "eval"]
    clip_ids = [r.key.clip_id for r in eval_front]
    return {"train_subjects": list(opened.train_subjects), "unseen_subjects": list(opened.unseen_subjects),
            "eval_clip_ids": clip_ids}


def _part_spec(name: str) -> Any:
    """The train.py row of a part, or the same row built here while train.py lacks it."""
    import train

    parts = train._parts()
    if name in parts:
        return parts[name]
    from datamodules.mouths import MouthDataModule
    from datamodules.textures import TextureDataModule
    from lightning_modules.teeth import (TeethEncoderRunConfig, TeethEncoderSystem, TeethTGANRunConfig,
                                         TeethTGANSystem)

    if name == "teeth_tgan":
        return train.PartSpec(TeethTGANSystem, TextureDataModule, TeethTGANRunConfig, "teeth t-GAN")
    if name == "teeth_encoder":
        return train.PartSpec(TeethEncoderSystem, MouthDataModule, TeethEncoderRunConfig, "teeth encoder")
    raise KeyError(name)


def train_part(name: str, run_dir: Path, overrides: Sequence[str], *, config_dir: Path) -> dict[str, Any]:
    """Train one part with ``train.run`` (experiment ``demo``) unless ``run_dir`` holds its final checkpoint."""
    import train
    from emoedit.config import compose_config

    done_file, final = run_dir / "done.json", run_dir / "checkpoints" / "final.ckpt"
    if done_file.is_file() and final.is_file():
        return {**json.loads(done_file.read_text()), "reused": True}
    spec = _part_spec(name)
    cfg = compose_config(spec.schema, part=name, config_dir=config_dir,
                         overrides=[f"experiment={EXPERIMENT}", f"output_dir={run_dir}", *overrides])
    start = time.perf_counter()
    trainer = train.run(spec, cfg)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(str(final))  # the final weights, whatever stopped the run (max_steps, max_time)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    info = {"checkpoint": str(final), "steps": int(trainer.global_step), "seconds": seconds, "metrics": metrics,
            "overrides": list(overrides)}
    atomic_write_text(done_file, json.dumps(info, indent=2) + "\n")
    return info


def _limits(steps: int, minutes: float) -> list[str]:
    out = [f"trainer.max_steps={steps}"]
    if minutes > 0:
        out.append(f"trainer.max_time={json.dumps({'seconds': int(round(minutes * 60))})}")
    return out


def train_teeth(args: argparse.Namespace, selection: dict[str, Any]) -> dict[str, Any]:
    """The teeth t-GAN, then the teeth encoder on it: ``{part: train_part info}``."""
    data = [f"data.cache_dir={args.cache}",
            f"data.filter={json.dumps({'view': 'front', 'subject': selection['train_subjects']})}",
            f"data.exclude={json.dumps({'clip': selection['eval_clip_ids']})}", "logger.kind=none",
            f"seed={args.seed}"]
    runs = args.work / "runs"
    tgan = train_part("teeth_tgan", runs / "teeth_tgan", [*data, *_limits(args.tgan_steps, args.tgan_minutes)],
                      config_dir=args.config_dir)
    encoder = train_part("teeth_encoder", runs / "teeth_encoder",
                         [*data, f"model.tgan_checkpoint={tgan['checkpoint']}",
                          *_limits(args.encoder_steps, args.encoder_minutes)], config_dir=args.config_dir)
    return {"teeth_tgan": tgan, "teeth_encoder": encoder}


# ---------------------------------------------------------------- measurement
def evaluate(
    cache: Path,  # mouths cache
    completer: TeethCompleter,  # the trained encoder + generator
    *,
    subjects: Sequence[str] | None,  # records of these subjects (None: all)
    clips: Sequence[str] | None = None,  # and of these clip ids only (None: every clip)
    max_records: int,  # seeded random pick of at most this many records
    batch_size: int,  # records per network call
    seed: int = 0,  # seed of the pick
    open_fraction: float = 0.05,  # a mouth is "open" when its teeth region covers at least this share of the crop
    sheet_records: int = 0,  # open-mouth records kept for the sheet
) -> dict[str, Any]:
    """The metrics of the module docstring (+ ``_sheet`` images when ``sheet_records`` > 0)."""
    reader = CacheReader.open(cache, kind="mouths")
    conditions: dict[str, Any] = {}
    if subjects:
        conditions["subject"] = list(subjects)
    if clips is not None:
        conditions["clip"] = list(clips)
    index = reader.records(**conditions)
    if len(index) == 0:
        raise SystemExit(f"{cache}: no records for subjects {subjects} and the clips given")
    crop_size = int(reader.spec.fields["crop"].shape[-1])
    open_pixels = max(1, math.ceil(open_fraction * crop_size * crop_size))
    if crop_size != completer.crop_size:
        raise SystemExit(f"{cache}: crops are {crop_size} px but the completer expects {completer.crop_size} px")
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:max_records]
    index = index.select(order.sort().values)
    inpaint_name, inpaint = pick_inpainter()
    errors, open_errors = RegionErrors(), RegionErrors()
    sheet: list[Tensor] = []
    used = skipped = opened = 0
    seconds = {"teeth_completion": 0.0, "inpaint": 0.0}
    for shard in index.shard.unique().tolist():
        rows = index.row[index.shard == shard]
        tensors = reader.load_shard(int(shard), ("crop", "crop_removed", "mask"))
        for chunk in rows.split(batch_size):
            mask = tensors["mask"][chunk]
            area = mask.flatten(1).sum(dim=1)
            keep = area > 0
            skipped += int((~keep).sum())
            if not bool(keep.any()):
                continue
            mask, area = mask[keep], area[keep]
            crop = tensors["crop"][chunk][keep].float() / 255.0
            removed = tensors["crop_removed"][chunk][keep].float() / 255.0
            t0 = time.perf_counter()
            generated, _ = completer.complete_crops(removed.to(completer.template_points.device))
            seconds["teeth_completion"] += time.perf_counter() - t0
            generated = generated.cpu()
            t0 = time.perf_counter()
            filled = inpaint(removed, mask)
            seconds["inpaint"] += time.perf_counter() - t0
            is_open = area >= open_pixels
            for name, prediction in (("hole", removed), ("inpaint", filled), ("teeth_completion", generated)):
                errors.add(name, prediction, crop, mask)
                if bool(is_open.any()):
                    open_errors.add(name, prediction[is_open], crop[is_open], mask[is_open])
            used += len(crop)
            opened += int(is_open.sum())
            for i in is_open.nonzero().flatten().tolist():
                if len(sheet) >= sheet_records:
                    break
                completed = torch.where(mask[i], generated[i], removed[i])
                sheet.append(torch.cat([removed[i], filled[i], completed, crop[i]], dim=2))
    result: dict[str, Any] = {
        "cache": str(cache), "subjects": list(subjects) if subjects else "all", "records": used,
        "records_open": opened, "open_region_min_pixels": open_pixels, "records_skipped_empty_region": skipped,
        "crop_size": crop_size, "generator_resolution": completer.generator.img_resolution,
        "inpaint_method": inpaint_name, "metrics": errors.summary(), "metrics_open": open_errors.summary(),
        "seconds": seconds,
    }
    if sheet:
        result["_sheet"] = torch.stack(sheet)
    return result


def _write_png(images: Tensor, path: Path) -> None:
    import io

    from PIL import Image

    factor = max(1, 96 // images.shape[-2])  # small crops are enlarged (nearest) to be seen
    grid = torch.cat(list(images), dim=1)  # records stacked vertically
    grid = grid.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    array = (grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def markdown(result: dict[str, Any]) -> str:
    """The metrics as a markdown table."""
    lines = ["| method | PSNR in region (dB) ↑ | L1 in region ↓ | PSNR, open mouths (dB) ↑ "
             "| L1, open mouths ↓ |",
             "|---|---|---|---|---|"]
    for name in ("hole", "inpaint", "teeth_completion"):
        row, opened = result["metrics"][name], result["metrics_open"].get(name, {})
        label = f"inpaint: {result['inpaint_method']}" if name == "inpaint" else name
        lines.append(f"| {label} | {row['psnr_db']:.2f} | {row['l1']:.4f} | {opened.get('psnr_db', float('nan')):.2f} "
                     f"| {opened.get('l1', float('nan')):.4f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="mouths cache folder")
    parser.add_argument("--encoder", type=Path, default=None, help="teeth_encoder checkpoint (default: train one)")
    parser.add_argument("--generator", type=Path, default=None, help="teeth_tgan checkpoint (default: the encoder's)")
    parser.add_argument("--world", type=Path, default=None, help="synthetic world: its split (unseen subjects)")
    parser.add_argument("--subjects", nargs="*", default=None, help="subjects to measure (default: unseen / all)")
    parser.add_argument("--work", type=Path, default=Path("outputs/results/teeth"), help="runs, results.json, sheet")
    parser.add_argument("--config-dir", type=Path, default=REPO / "configs", help="configs with experiment/demo.yaml")
    parser.add_argument("--tgan-steps", type=int, default=2000)
    parser.add_argument("--tgan-minutes", type=float, default=10.0, help="wall-time cap (0: none)")
    parser.add_argument("--encoder-steps", type=int, default=2000)
    parser.add_argument("--encoder-minutes", type=float, default=8.0, help="wall-time cap (0: none)")
    parser.add_argument("--max-records", type=int, default=1024)
    parser.add_argument("--open-fraction", type=float, default=0.05,
                        help="open mouth: region >= this share of the crop")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: <work>/results.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    selection = world_selection(args.world) if args.world is not None else None
    training = None
    encoder = args.encoder
    if encoder is None:
        if selection is None:
            raise SystemExit("training needs --world (its split); or give --encoder")
        training = train_teeth(args, selection)
        encoder = Path(training["teeth_encoder"]["checkpoint"])
    subjects = args.subjects or (selection["unseen_subjects"] if selection else None)
    completer = TeethCompleter.from_checkpoints(encoder, generator_checkpoint=args.generator, map_location=args.device)
    common = dict(max_records=args.max_records, batch_size=args.batch_size, seed=args.seed,
                  open_fraction=args.open_fraction)
    result = evaluate(args.cache, completer, subjects=subjects, sheet_records=8, **common)
    sheet = result.pop("_sheet", None)
    if selection is not None and not args.subjects:
        # also the training subjects' evaluation clips (held out from training), when the world says which
        seen = evaluate(args.cache, completer, subjects=selection["train_subjects"],
                        clips=selection["eval_clip_ids"], **common)
        seen.pop("_sheet", None)
        result["seen_subjects_held_out_clips"] = seen
    result["encoder_checkpoint"] = str(encoder)
    if training is not None:
        result["training"] = training
    args.work.mkdir(parents=True, exist_ok=True)
    if sheet is not None:
        _write_png(sheet, args.work / "sheet.png")
    text = json.dumps(result, indent=2)
    atomic_write_text(args.out or args.work / "results.json", text + "\n")
    print(text)
    print(f"unseen subjects ({result['records']} records):")
    print(markdown(result))
    if "seen_subjects_held_out_clips" in result:
        seen = result["seen_subjects_held_out_clips"]
        print(f"training subjects, held-out clips ({seen['records']} records):")
        print(markdown(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
