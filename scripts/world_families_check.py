"""Does appearance predict emotional texture in a synthetic world? (issue #4; no training)

METHOD eq. 4 edits a new face with the training subjects' directions weighted by a subject
classifier over UV textures. That can only beat the plain mean direction over all training
subjects if subjects who look alike also change their texture alike. This script measures,
with the world's exact truth, for each unseen subject and emotion the cosine between its
true emotional texture change and three predictors built from the training subjects' true
changes:

- (a) ``mean``: the mean over all training subjects (eq. 4's ablation "without classifier");
- (b) ``family``: the mean over the training members of the subject's family (``families``
  worlds only);
- (c) ``oracle``: a softmax-weighted mean, weights ``softmax(−d / τ)`` over training subjects
  with ``d`` the RMS distance between neutral UV albedos — a stand-in for a perfect subject
  classifier; ``τ`` is given as fractions of the median unseen-to-training distance.

The true change of subject s for emotion j: ``clamp(albedo + Σ_e a_e D[s, e], 0, 1) − albedo``
with the activations ``a`` of emotion j at level 3 through the subject's own AU gains
(exactly what the world renders, :func:`~emoedit.data.synthetic.texture_effects.apply_effects`).
It also prints, as a check of the world itself, the mean pairwise cosine of those changes and
the mean albedo distance within and across families.

Subjects are drawn on demand (nothing is rendered or written). Usage::

    .venv/bin/python scripts/world_families_check.py                    # demo_families, seed 0
    .venv/bin/python scripts/world_families_check.py --preset demo      # the independent control
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from emoedit.data.synthetic import PRESETS, WorldRenderer
from emoedit.data.synthetic.emotions import emotion_activation
from emoedit.data.synthetic.texture_effects import apply_effects, effect_activations
from emoedit.editing.emotion_code import MAX_LEVEL
from emoedit.shape_checks import assert_shape


@dataclass(frozen=True)
class SubjectChanges:
    """One subject's true texture changes and appearance."""

    name: str  # subject name
    split: str  # "train" or "unseen"
    family: int | None  # family index, None in an independent world
    albedo: Tensor  # (3·T·T,) neutral UV albedo, flattened
    changes: Tensor  # (J, 3·T·T) true texture change per emotion at level MAX_LEVEL


def true_changes(renderer: WorldRenderer, emotions: tuple[str, ...]) -> list[SubjectChanges]:
    """Every subject's true emotional texture change per emotion at the top level."""
    names = renderer.expression_names
    out = []
    for plan in renderer.plan.subjects:
        subject = renderer.subject(plan.name)
        aus = torch.stack([emotion_activation(e, float(MAX_LEVEL), subject.au_gains, names) for e in emotions])
        activations = effect_activations(aus, renderer.effect_weights)  # (J, E)
        with torch.no_grad():
            textures = apply_effects(subject.albedo, subject.effect_maps, activations)  # (J, 3, T, T)
        changes = (textures - subject.albedo[None]).flatten(1)
        out.append(SubjectChanges(plan.name, plan.split, plan.family, subject.albedo.flatten(), changes))
    return out


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine between two flat vectors (0 if either is zero)."""
    return float(F.cosine_similarity(a[None], b[None], dim=1, eps=1e-12)[0])


def albedo_distance(a: Tensor, b: Tensor) -> float:
    """RMS distance between two flattened albedos (0-1 units)."""
    return float((a - b).pow(2).mean().sqrt())


def family_structure(subjects: list[SubjectChanges], num_emotions: int) -> dict[str, float]:
    """Mean pairwise change cosine and albedo distance, within and across families (all subjects)."""
    cos_in, cos_out, dist_in, dist_out = [], [], [], []
    for a, b in itertools.combinations(subjects, 2):
        same = a.family is not None and a.family == b.family
        cosines = [cosine(a.changes[j], b.changes[j]) for j in range(num_emotions)]
        (cos_in if same else cos_out).append(statistics.fmean(cosines))
        (dist_in if same else dist_out).append(albedo_distance(a.albedo, b.albedo))
    nan = float("nan")
    return {
        "cos_within": statistics.fmean(cos_in) if cos_in else nan,
        "cos_across": statistics.fmean(cos_out) if cos_out else nan,
        "albedo_within": statistics.fmean(dist_in) if dist_in else nan,
        "albedo_across": statistics.fmean(dist_out) if dist_out else nan,
    }


def predictor_cosines(
    subjects: list[SubjectChanges], taus: tuple[float, ...]
) -> tuple[list[str], dict[str, Tensor], float]:
    """Cosines of the predictors for each unseen subject and emotion.

    Returns ``(unseen names, {predictor: (U, J) cosines}, median unseen-to-train albedo distance)``.
    """
    train = [s for s in subjects if s.split == "train"]
    unseen = [s for s in subjects if s.split == "unseen"]
    if not train or not unseen:
        raise ValueError("the world needs training and unseen subjects")
    train_changes = torch.stack([s.changes for s in train])  # (N, J, D)
    train_albedo = torch.stack([s.albedo for s in train])  # (N, D)
    num_emotions = train_changes.shape[1]
    distances = torch.stack([(train_albedo - u.albedo[None]).pow(2).mean(dim=1).sqrt() for u in unseen])  # (U, N)
    assert_shape(distances, (len(unseen), len(train)), "distances")
    median = float(distances.median())
    mean_direction = train_changes.mean(dim=0)  # (J, D)
    results: dict[str, list[list[float]]] = {"mean": []}
    families = unseen[0].family is not None
    if families:
        results["family"] = []
    for tau in taus:
        results[f"oracle τ={tau:g}·med"] = []
    for u_index, u in enumerate(unseen):
        results["mean"].append([cosine(u.changes[j], mean_direction[j]) for j in range(num_emotions)])
        if families:
            members = [i for i, s in enumerate(train) if s.family == u.family]
            if not members:
                raise ValueError(f"unseen subject {u.name}'s family {u.family} has no training members")
            family_direction = train_changes[members].mean(dim=0)
            results["family"].append([cosine(u.changes[j], family_direction[j]) for j in range(num_emotions)])
        for tau in taus:
            weights = torch.softmax(-distances[u_index] / (tau * median), dim=0)  # (N,)
            weighted = torch.einsum("n,njd->jd", weights, train_changes)
            results[f"oracle τ={tau:g}·med"].append([cosine(u.changes[j], weighted[j]) for j in range(num_emotions)])
    return [u.name for u in unseen], {k: torch.tensor(v) for k, v in results.items()}, median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo_families", choices=sorted(PRESETS), help="world preset")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.05, 0.1, 0.25],
                        help="oracle softmax temperatures, as fractions of the median unseen-to-train albedo distance")
    args = parser.parse_args()
    torch.set_num_threads(1)
    preset = PRESETS[args.preset]
    renderer = WorldRenderer(preset, args.seed)
    emotions = preset.emotions
    subjects = true_changes(renderer, emotions)

    print(f"world {preset.name!r} seed {args.seed}: subject_model={preset.subject_model}"
          + (f", {preset.num_families} families, spread {preset.family_spread:g}" if preset.subject_model == "families" else "")
          + f"; {preset.num_train_subjects} training + {preset.num_unseen_subjects} unseen subjects; "
          f"emotions at level {MAX_LEVEL}, texture {preset.texture_size}²")
    if preset.subject_model == "families":
        print("families: " + "; ".join(
            f"{k}: " + " ".join(s.name + ("*" if s.split == "unseen" else "") for s in subjects if s.family == k)
            for k in range(preset.num_families)) + "   (* unseen)")
        structure = family_structure(subjects, len(emotions))
        print(f"pairwise change cosine   within families {structure['cos_within']:.3f}   across {structure['cos_across']:.3f}")
        print(f"pairwise albedo RMS dist within families {structure['albedo_within']:.4f}  across {structure['albedo_across']:.4f}")

    names, results, median = predictor_cosines(subjects, tuple(args.taus))
    print(f"median unseen-to-train albedo RMS distance: {median:.4f}")
    print()
    print("cosine(true change of the unseen subject, predictor), mean over emotions")
    header = "| subject | " + " | ".join(results) + " |"
    print(header)
    print("|" + "---|" * (len(results) + 1))
    for u, name in enumerate(names):
        print(f"| {name} | " + " | ".join(f"{float(v[u].mean()):.3f}" for v in results.values()) + " |")
    print("| **all** | " + " | ".join(f"**{float(v.mean()):.3f}**" for v in results.values()) + " |")
    print()
    print("per emotion, mean over unseen subjects")
    print("| emotion | " + " | ".join(results) + " |")
    print("|" + "---|" * (len(results) + 1))
    for j, emotion in enumerate(emotions):
        print(f"| {emotion} | " + " | ".join(f"{float(v[:, j].mean()):.3f}" for v in results.values()) + " |")
    wins = {k: int((v > results["mean"]).sum()) for k, v in results.items() if k != "mean"}
    total = results["mean"].numel()
    print()
    print("(unseen subject, emotion) pairs where the predictor beats the mean: "
          + ", ".join(f"{k} {n}/{total}" for k, n in wins.items()))


if __name__ == "__main__":
    main()
