#!/usr/bin/env python
"""How much a look-alike's emotion direction can beat the mean direction, before any network.

    .venv/bin/python scripts/texture_headroom.py --cache <work>/preprocess/textures --world <world> \
        [--level 3] [--json out.json]

Eq. 4 can only beat the "without classifier" ablation when a subject's emotion change is
better predicted by the changes of subjects who look like it than by everyone's mean. This
measures that premise on a synthetic world's texture cache, in texture space, with no
network: for every training subject ``s`` and emotion ``e``, the true direction
``d[s, e]`` is the mean extracted UV texture of its training clips of ``e`` at ``--level``
minus the mean of its neutral training clips (the world's evaluation clips are left out),
over the texels seen in every such mean. It is then predicted, leaving ``s`` out, by

- ``zero``: no edit (the input);
- ``mean``: the mean of every other training subject's ``d[·, e]`` (the ablation's premise);
- ``family``: the mean over the other members of ``s``'s look-alike family (what eq. 4's
  weights would give if the classifier put all weight on the family);
- ``other families``: the mean over the subjects outside the family.

Printed: the mean squared error of each prediction per texel and channel (textures in
[0, 1]), and its ratio to ``zero``. The gap between ``mean`` and ``family`` is the most a
classifier-weighted direction can win over the ablation in this world, before encoder and
generator errors. Needs a ``"families"`` world.

``scripts/world_families_check.py`` asks the same question of the world's truth (unshaded
albedo changes at the world's texture size, by cosine); this asks it of what the networks are
trained on: textures extracted from the videos, shading and resolution included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from emoedit.editing.emotion_code import NEUTRAL  # noqa: E402
from emoedit.shape_checks import assert_shape  # noqa: E402

PREDICTIONS = ("zero", "mean", "family", "other families")


def subject_directions(
    cache: str | Path,  # texture cache (emoedit preprocess, kind "textures")
    subjects: Sequence[str],  # training subjects
    *,
    level: int,  # emotional level whose clips define the direction
    exclude_clips: Sequence[str] = (),  # cache clip ids left out (the evaluation clips)
) -> tuple[dict[tuple[str, str], Tensor], Tensor]:
    """``({(subject, emotion): (3, T, T) float64 direction}, (T, T) bool common texels)``.

    A direction is the visibility-weighted mean texture of the subject's front clips of the
    emotion at ``level`` minus that of its neutral clips; the mask holds the texels seen in
    every one of those means. Emotions missing for any subject are left out.
    """
    from emoedit.data.cache import CacheReader

    reader = CacheReader.open(cache, kind="textures")
    skip = set(exclude_clips)
    index = reader.records().where(view="front", subject=list(subjects), clip=lambda c: c not in skip)
    sums: dict[tuple[str, str], Tensor] = {}
    weights: dict[tuple[str, str], Tensor] = {}
    for clip in index.unique("clip"):
        data = reader.load_clip(str(clip), fields=("uv_texture", "visibility"))
        emotion = data["emotion"][0]
        if emotion != NEUTRAL and data["level"][0] != level:
            continue
        key = (str(data["subject"][0]), str(emotion))
        seen = data["visibility"].double()
        sums[key] = sums.get(key, 0.0) + (data["uv_texture"].double() / 255.0 * seen).sum(0)
        weights[key] = weights.get(key, 0.0) + seen.sum(0)
    emotions = sorted({e for _, e in sums if e != NEUTRAL})
    emotions = [e for e in emotions if all((s, e) in sums for s in subjects)]
    for s in subjects:
        if (s, NEUTRAL) not in sums:
            raise ValueError(f"{cache}: subject {s} has no neutral front training clip")
    if not emotions:
        raise ValueError(f"{cache}: no emotion at level {level} has training clips of every subject")
    keys = [(s, e) for s in subjects for e in [NEUTRAL, *emotions]]
    common = torch.stack([weights[k][0] > 0 for k in keys]).all(0)
    means = {k: sums[k] / weights[k].clamp(min=1.0) for k in keys}
    directions = {(s, e): means[(s, e)] - means[(s, NEUTRAL)] for s in subjects for e in emotions}
    return directions, common


def headroom(
    directions: Mapping[tuple[str, str], Tensor],  # {(subject, emotion): (C, T, T)} true directions
    families: Mapping[str, int],  # subject -> family index
    mask: Tensor,  # (T, T) bool: texels compared
) -> dict[str, float]:
    """Leave-one-subject-out mean squared error of each prediction in :data:`PREDICTIONS`
    (mean over subjects with at least one other family member, emotions, masked texels, channels)."""
    subjects = sorted({s for s, _ in directions})
    emotions = sorted({e for _, e in directions})
    first = directions[(subjects[0], emotions[0])]
    dims = assert_shape(first, ("C", "T", "T"), "direction")
    assert_shape(mask, (dims["T"], dims["T"]), "mask")
    weight = mask.to(first.dtype).expand_as(first)
    denominator = float(weight.sum())
    if denominator == 0:
        raise ValueError("headroom: the mask selects no texel")
    totals = {name: 0.0 for name in PREDICTIONS}
    count = 0
    for s in subjects:
        others = [o for o in subjects if o != s]
        family = [o for o in others if families[o] == families[s]]
        outside = [o for o in others if families[o] != families[s]]
        if not family or not outside:
            continue
        for e in emotions:
            truth = directions[(s, e)]

            def error(group: Sequence[str]) -> float:
                guess = torch.stack([directions[(o, e)] for o in group]).mean(0) if group else torch.zeros_like(truth)
                return float(((guess - truth) ** 2 * weight).sum()) / denominator

            for name, group in zip(PREDICTIONS, ([], others, family, outside)):
                totals[name] += error(group)
            count += 1
    if count == 0:
        raise ValueError("headroom: no subject has both another family member and a subject outside its family")
    return {name: value / count for name, value in totals.items()} | {"cells": float(count)}


def world_families(world: Any, subjects: Sequence[str]) -> dict[str, int]:
    """Family index of every subject of a :class:`~emoedit.data.synthetic.SyntheticWorld`."""
    out = {}
    for s in subjects:
        family = world.subject(s).family
        if family is None:
            raise ValueError(f"{world.root}: subject {s} has no family (not a \"families\" world)")
        out[s] = family
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="texture cache of the world's front clips")
    p.add_argument("--world", required=True, help="the synthetic world (split and families)")
    p.add_argument("--level", type=int, default=3, help="emotional level of the directions")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import texture_demo_world as demo
    from emoedit.data.synthetic import SyntheticWorld

    world = SyntheticWorld.open(args.world)
    selection = demo.training_selection(world)
    subjects = list(selection.train_subjects)
    directions, common = subject_directions(args.cache, subjects, level=args.level,
                                            exclude_clips=selection.eval_clip_ids)
    figures = headroom(directions, world_families(world, subjects), common)
    zero = figures["zero"]
    print(f"{len(subjects)} training subjects, {int(figures['cells'])} subject x emotion cells, "
          f"{int(common.sum())} common texels")
    print("| prediction of d[s, e] (leave s out) | MSE | / zero |\n|---|---|---|")
    for name in PREDICTIONS:
        print(f"| {name} | {figures[name]:.3e} | {figures[name] / zero:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"subjects": subjects, **figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
