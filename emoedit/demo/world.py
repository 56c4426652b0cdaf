"""The demo's synthetic world, rendered by two processes.

:func:`emoedit.data.synthetic.generate_world` renders one item after the other (MEAD clips,
then the ground-truth edits, then the FFHQ stills; one torch thread is fastest for its
small batches). On a 2-core machine :func:`generate_demo_world` runs it as is and starts a
*helper* process that renders the ground-truth edits from the **end** of the world's list:
``generate_world`` skips every item whose files exist, so the two meet in the middle and
the world is the same as one process would make (every item is rendered from its own
seeded random streams, independent of order; both processes write each file atomically,
so an item both happen to render at the meeting point is just written twice, identically).

The helper only writes into a folder whose ``truth/world.json`` names the same preset and
seed (it waits for the main process to write it), and stops at the first edit it finds
already rendered. Interrupted, the world resumes like any ``generate_world`` call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from emoedit.atomic_io import atomic_write_text
from emoedit.data.synthetic.layout import WORLD_FILE  # written first by generate_world
from emoedit.data.synthetic.presets import WorldPreset
from emoedit.data.synthetic.world import described_as

HELPER_WAIT_S = 120.0  # the helper gives up if the main process has not described the world by then


def _matches(root: Path, preset: WorldPreset, seed: int) -> bool | None:
    """True/False once ``truth/world.json`` exists (same preset and seed?), None before."""
    path = root / WORLD_FILE
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return described_as(body, preset, seed)


def render_edits_backwards(root: Path, preset: WorldPreset, seed: int) -> int:
    """The helper: render the world's ground-truth edits from the last one back, until one exists.

    Returns the number of edits rendered. Does nothing if the folder holds another world.
    """
    import torch

    from emoedit.data.synthetic.clip_renderer import WorldRenderer
    from emoedit.data.synthetic.layout import confined
    from emoedit.data.synthetic.world import write_clip

    torch.set_num_threads(1)
    deadline = time.monotonic() + HELPER_WAIT_S
    while (match := _matches(root, preset, seed)) is None:
        if time.monotonic() > deadline:
            return 0
        time.sleep(0.2)
    if not match:
        return 0
    renderer = WorldRenderer(preset, seed)
    rendered = 0
    for edit in reversed(renderer.plan.edits):
        if confined(root, edit.video).exists() and confined(root, edit.truth).exists():
            break  # the main process got here: everything before is done or in its hands
        write_clip(root, renderer.render_edit_key(edit), str(edit.video), str(edit.truth), preset)
        rendered += 1
    return rendered


def generate_demo_world(
    root: str | os.PathLike[str],  # the world folder
    preset: WorldPreset,  # its sizes
    seed: int,  # its seed
    *,
    workers: int = 2,  # 1: generate_world alone; 2: plus the edit-rendering helper process
    progress: bool = True,  # generate_world's progress bars
) -> dict[str, Any]:
    """Generate (or finish) the world; returns generate_world's summary as JSON plus the helper's count."""
    from emoedit.data.synthetic import generate_world

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    helper = None
    log = None
    if workers >= 2:
        preset_file = root.parent / f".{root.name}-preset.json"
        atomic_write_text(preset_file, json.dumps(preset.to_json()) + "\n")
        log = open(root.parent / f".{root.name}-helper.log", "a", encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        helper = subprocess.Popen([sys.executable, "-m", "emoedit.demo.world", str(root), str(preset_file), str(seed)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        summary = generate_world(root, preset, seed, progress=progress, torch_threads=1)
    except BaseException:
        if helper is not None and helper.poll() is None:
            helper.terminate()
        raise
    finally:
        helper_code = helper.wait() if helper is not None else None
        if log is not None:
            log.close()
    helper_rendered = 0
    if helper is not None and helper_code == 0:
        try:
            helper_rendered = int((root.parent / f".{root.name}-helper.count").read_text().strip())
        except (OSError, ValueError):
            helper_rendered = 0
    return {
        "preset": summary.preset, "seed": summary.seed, "train_subjects": summary.num_train_subjects,
        "unseen_subjects": summary.num_unseen_subjects, "clips": summary.num_clips,
        "edited_clips": summary.num_edited_clips, "ffhq": summary.num_ffhq,
        "rendered": dict(summary.rendered), "skipped": dict(summary.skipped),
        "stage_seconds": {k: round(v, 1) for k, v in summary.seconds.items()},
        "helper_exit_code": helper_code, "helper_rendered_edits": helper_rendered,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emoedit.demo.world ROOT PRESET.json SEED``: the helper process."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: python -m emoedit.demo.world ROOT PRESET.json SEED", file=sys.stderr)
        return 2
    root = Path(args[0])
    preset = WorldPreset.from_json(json.loads(Path(args[1]).read_text(encoding="utf-8")))
    count = render_edits_backwards(root, preset, int(args[2]))
    atomic_write_text(root.parent / f".{root.name}-helper.count", f"{count}\n")
    print(f"helper: rendered {count} ground-truth edits from the end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
