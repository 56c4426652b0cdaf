#!/usr/bin/env python
"""How close eq. 5's W+ directions come to each evaluation clip's own direction.

    .venv/bin/python scripts/texture_direction_check.py --work outputs/results/texture_rich32 \
        [--texture-size 32] [--tau 16]

Reads what ``scripts/texture_demo_world.py`` left under ``--work`` (world, the trained checkpoints
named by ``runs/<part>/done.json``, directions.pt).
For every front evaluation clip and emotion, the *oracle* direction is the clip's mean
``E(truth) − E(I)`` over its frames (every 2nd frame); it is compared in W+ with the mean
direction (the "without classifier" ablation), eq. 4 at temperature ``--tau`` and, for seen
subjects, eq. 3 (the subject's own direction): norms, cosine to the oracle, and the best
scalar ``β`` with ``β · d ≈ oracle``. Prints mean ± std per group (seen / unseen subjects).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import texture_demo_world as demo  # noqa: E402
from emoedit.data.synthetic import SyntheticWorld  # noqa: E402
from emoedit.editing.directions import EditDirections  # noqa: E402
from emoedit.editing.emotion_code import MAX_LEVEL, emotion_code_from_level  # noqa: E402
from emoedit.editing.texture_editor import TextureEditor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="the --work folder of scripts/texture_demo_world.py")
    p.add_argument("--texture-size", type=int, default=32, help="texture side used by that run")
    p.add_argument("--tau", type=float, default=16.0, help="eq. 4 temperature to compare")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    world = SyntheticWorld.open(work / "world")
    directions = EditDirections.load(work / "directions.pt")
    # The checkpoints the results script evaluated (its done.json per part).
    trained = {part: json.loads((work / "runs" / part / "done.json").read_text())["checkpoint"]
               for part in ("tgan", "texture_encoder", "classifier")}
    nets = demo.load_networks(trained["tgan"], trained["texture_encoder"], trained["classifier"], directions)
    train = set(demo.training_selection(world).train_subjects)
    editor = TextureEditor.from_directions(directions)
    tempered = TextureEditor.from_directions(directions.with_subject_temperature(args.tau))
    extract = demo.TruthTextures(world, args.texture_size)
    stats: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    with torch.no_grad():
        for record in world.eval_clips(view="front"):
            seen = record.key.subject in train
            truth = world.load_truth(record)
            clip = extract(record.video_path, truth, list(range(0, truth.num_frames, 2)))
            frames = list(clip.frames)
            x0 = nets.encode(clip.uv_texture)
            weights = nets.subject_weights(clip.uv_texture)
            for emotion in directions.solved:
                edit = world.edit(record, emotion, MAX_LEVEL)
                target = extract(edit.video_path, world.load_truth(edit), frames)
                oracle = (nets.encode(target.uv_texture) - x0).mean(0).flatten()
                code = emotion_code_from_level(emotion, MAX_LEVEL).expand(len(frames), -1)
                rows = {"mean": editor(x0, code, mode="mean").wplus,
                        f"eq4 tau={args.tau:g}": tempered(x0, code, subject_weights=weights).wplus}
                if seen:
                    rows["eq3 own"] = editor(x0, code, subject_index=editor.subject_index([record.key.subject] * len(frames))).wplus
                group = "seen" if seen else "unseen"
                stats[group, "|oracle|"].append(oracle.norm().item())
                for name, wplus in rows.items():
                    d = (wplus - x0).mean(0).flatten()
                    stats[group, f"|{name}|"].append(d.norm().item())
                    stats[group, f"cos({name}, oracle)"].append(torch.nn.functional.cosine_similarity(d, oracle, dim=0).item())
                    stats[group, f"beta({name})"].append((d @ oracle / (d @ d)).item())
    for key in sorted(stats):
        values = torch.tensor(stats[key])
        print(f"{key[0]:>6}  {key[1]:<24} {values.mean():.3f} ± {values.std():.3f}  (n={len(values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
