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

``--rim-check COS`` instead measures how much of the W+ distance between two neutral training
clips of one subject comes from the texels outside the face region of threshold COS
(:mod:`emoedit.texture.face_region`): the rim of clip A is replaced by clip B's and the distance
of the clip means is measured again.
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
    p.add_argument("--world", default=None, help="the world (default: <work>/world, else the one results.json names)")
    p.add_argument("--rim-check", type=float, default=None, metavar="COS",
                   help="instead: how much of the clip-to-clip W+ distance of neutral training clips comes from the "
                        "texels outside the face region of this threshold (rim swap between clip pairs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    world_dir = Path(args.world) if args.world else work / "world"
    if not world_dir.is_dir() and (work / "results.json").is_file():
        world_dir = Path(json.loads((work / "results.json").read_text())["world"]["path"])
    world = SyntheticWorld.open(world_dir)
    directions = EditDirections.load(work / "directions.pt")
    # The checkpoints the results script evaluated (its done.json per part).
    trained = {part: json.loads((work / "runs" / part / "done.json").read_text())["checkpoint"]
               for part in ("tgan", "texture_encoder", "classifier")}
    region = demo.cache_region(str(work / "preprocess" / "textures"), world, args.texture_size)
    nets = demo.load_networks(trained["tgan"], trained["texture_encoder"], trained["classifier"], directions,
                              region=region)
    train = set(demo.training_selection(world).train_subjects)
    if args.rim_check is not None:
        return rim_check(work, world, nets, args.texture_size, args.rim_check)
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


def rim_check(work: Path, world: SyntheticWorld, nets: demo.Networks, texture_size: int, min_cos: float,
              pairs_per_subject: int = 4) -> int:
    """For pairs (A, B) of one training subject's neutral training clips (cache textures, as the
    networks were trained on), the W+ distance of the clip means ``|E(A) − E(B)|`` against
    ``|E(A's face region + B's rim) − E(B)|``: the second is what is left once the rim agrees, so
    ``1 − second / first`` is the rim's share of the clip-to-clip distance."""
    from emoedit.data.cache import CacheReader
    from emoedit.editing.emotion_code import NEUTRAL
    from emoedit.texture.face_region import face_region
    from emoedit.texture.uv_layout import UVLayout

    model = world.face_model()
    region = face_region(model, UVLayout.from_model(model, texture_size), min_cos)
    reader = CacheReader.open(work / "preprocess" / "textures", kind="textures")
    selection = demo.training_selection(world)
    excluded = set(selection.eval_clip_ids)
    whole, face_only = [], []
    with torch.no_grad():
        for subject in selection.train_subjects:
            clips = sorted(c for c in reader.clips if c.startswith(f"{subject}/front/{NEUTRAL}/") and c not in excluded)
            for a, b in list(zip(clips[0::2], clips[1::2]))[:pairs_per_subject]:
                ua, ub = (reader.load_clip(c, fields=("uv_texture",))["uv_texture"].float().div(255.0) for c in (a, b))
                n = min(len(ua), len(ub))
                ua, ub = ua[:n], ub[:n]
                eb = nets.encode(ub).mean(0)
                whole.append((nets.encode(ua).mean(0) - eb).norm().item())
                face_only.append((nets.encode(torch.where(region, ua, ub)).mean(0) - eb).norm().item())
    if not whole:
        raise SystemExit(f"{work}: no subject has two neutral training clips in the cache; nothing to compare")
    first, second = sum(whole) / len(whole), sum(face_only) / len(face_only)
    print(f"face region cos >= {min_cos:g}: {float(region.float().mean()):.3f} of the texels; {len(whole)} clip pairs")
    print(f"|E(A) - E(B)|                       {first:.3f}")
    print(f"|E(A face + B rim) - E(B)|          {second:.3f}")
    print(f"rim share of the clip-to-clip distance: {1.0 - second / first:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
