"""Time the generation of a synthetic world (default: the ``demo`` preset).

Usage (from the repository root):
    .venv/bin/python benchmarks/synth.py [--preset demo] [--seed 0] [--out DIR] [--keep]
        [--torch-threads 1]

Prints the machine (CPU model, cores, load average, torch version and threads), then the
wall time of each generation stage, the total wall and CPU time, and the item counts.
Without ``--out`` the world goes to a temporary folder that is removed afterwards (unless
``--keep``). On a shared CPU the load average printed before and after tells how
disturbed the measurement was.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from emoedit.data.synthetic import PRESETS, generate_world  # noqa: E402
from emoedit.machine import cpu_model  # noqa: E402


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="world folder (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary world")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads while rendering")
    parser.add_argument("--progress", action="store_true", help="show tqdm progress bars")
    args = parser.parse_args()

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torch threads while rendering: {args.torch_threads}")
    print(f"load average before: {_load()}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"synth_{args.preset}_"))
    preset = PRESETS[args.preset]
    print(
        f"preset {preset.name}: {preset.num_train_subjects}+{preset.num_unseen_subjects} subjects, "
        f"{preset.num_frames} frames at {preset.image_size} px, {preset.fps} fps, textures {preset.texture_size}, "
        f"{preset.num_ffhq} stills at {preset.ffhq_size} px -> {out}"
    )
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        summary = generate_world(out, preset, args.seed, progress=args.progress, torch_threads=args.torch_threads)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    finally:
        if not args.out and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"load average after: {_load()}")
    for stage, seconds in summary.seconds.items():
        print(f"  {stage:9s} {seconds:8.1f} s  rendered {summary.rendered[stage]:5d}  skipped {summary.skipped[stage]:5d}")
    print(
        f"total: {wall:.1f} s wall, {cpu:.1f} s CPU (all threads of this process); "
        f"{summary.num_clips} MEAD clips, {summary.num_edited_clips} ground-truth edits, {summary.num_ffhq} stills, "
        f"{size / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
