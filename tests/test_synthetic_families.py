"""Look-alike families in the synthetic world (issue #4): presets, membership, known answers.

Subjects are drawn on demand from a :class:`WorldRenderer` (nothing rendered) at 32-64
texels; one micro families world is generated to check what is written and read back.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emoedit.cli import build_parser
from emoedit.data.synthetic import PRESETS, SyntheticWorld, WorldPreset, WorldRenderer, generate_world, get_preset, plan_world
from emoedit.data.synthetic.emotions import emotion_activation
from emoedit.data.synthetic.families import FamilyBlendRng, assign_families
from emoedit.data.synthetic.presets import FAMILY_FIELDS
from emoedit.data.synthetic.seeding import derive_rng
from emoedit.data.synthetic.texture_effects import effect_activations
from emoedit.editing.emotion_code import EMOTIONS, MAX_LEVEL

SEED = 5
SMALL = dataclasses.replace(
    PRESETS["tiny"],
    name="families_test",
    num_train_subjects=6,
    num_unseen_subjects=3,
    texture_size=32,
    subject_model="families",
    num_families=3,
    family_spread=0.3,
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _with_spread(spread: float, **changes: object) -> WorldPreset:
    return dataclasses.replace(SMALL, family_spread=spread, **changes)


def _true_changes(renderer: WorldRenderer, name: str) -> torch.Tensor:
    """(J, 3·T·T) the subject's true UV change Σ_e a_e D_e per emotion at the top level."""
    subject = renderer.subject(name)
    aus = torch.stack([emotion_activation(e, float(MAX_LEVEL), subject.au_gains, renderer.expression_names) for e in EMOTIONS])
    activations = effect_activations(aus, renderer.effect_weights)
    return torch.einsum("je,echw->jchw", activations, subject.effect_maps).flatten(1)


# ------------------------------------------------------------------------------ presets


def test_existing_presets_describe_themselves_as_before() -> None:
    for name in ("tiny", "demo", "full"):
        preset = PRESETS[name]
        assert preset.subject_model == "independent"
        data = preset.to_json()
        assert not set(FAMILY_FIELDS) & set(data)  # world.json of an independent world is unchanged
        assert WorldPreset.from_json(data) == preset
        assert WorldPreset.from_json(json.loads(json.dumps(data))) == preset
    families = PRESETS["demo_families"]
    data = families.to_json()
    assert {k: data[k] for k in FAMILY_FIELDS} == {"subject_model": "families", "num_families": 4, "family_spread": 0.3}
    assert WorldPreset.from_json(data) == families
    # demo's sizes, one light per subject.
    assert dataclasses.replace(families, name="demo", subject_model="independent", num_families=1, family_spread=1.0,
                               lighting=PRESETS["demo"].lighting) == PRESETS["demo"]
    assert families.lighting == "per_subject" and get_preset("demo_families") is families
    args = build_parser().parse_args(["synth", "--out", "w", "--preset", "demo_families"])
    assert args.preset == "demo_families"


def test_independent_plan_has_no_families() -> None:
    plan = plan_world(PRESETS["tiny"], SEED)
    assert all(s.family is None for s in plan.subjects)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"subject_model": "clans"}, "subject_model"),
        ({"num_families": 0}, "num_families"),
        ({"num_families": 7}, "num_families"),  # more families than the 6 training subjects
        ({"num_families": 2.0}, "num_families"),
        ({"family_spread": -0.1}, "family_spread"),
        ({"family_spread": 1.5}, "family_spread"),
        ({"family_spread": float("nan")}, "family_spread"),
        ({"family_spread": "0.3"}, "family_spread"),
    ],
)
def test_family_fields_are_validated(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **changes)


# ------------------------------------------------------------------------------ membership


def test_round_robin_membership() -> None:
    assert assign_families(12, 4, 4) == ((0, 1, 2, 3) * 3, (0, 1, 2, 3))
    # Families 0 and 1 have two training members, family 2 one: the unseen go to 0 and 1.
    assert assign_families(5, 3, 3) == ((0, 1, 2, 0, 1), (0, 1, 0))
    # No family has two training members: round-robin over all.
    assert assign_families(3, 4, 3) == ((0, 1, 2), (0, 1, 2, 0))
    with pytest.raises(ValueError, match="num_families"):
        assign_families(3, 1, 4)
    plan = plan_world(SMALL, SEED)
    assert [s.family for s in plan.subjects] == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert [s.split for s in plan.subjects] == ["train"] * 6 + ["unseen"] * 3
    assert plan.family_of(plan.subjects[4].name) == 1


def test_spread_zero_makes_clones_of_the_prototype() -> None:
    renderer = WorldRenderer(_with_spread(0.0), SEED)
    for plan in renderer.plan.subjects:
        subject = renderer.subject(plan.name)
        prototype = renderer.factory.prototype(plan.family)
        assert subject.family == plan.family and prototype.split == "prototype"
        assert subject.sex == prototype.sex  # a clone has its family's sex
        for field in ("albedo", "effect_maps", "effect_gains", "id_coeff", "tex_coeff", "au_gains", "teeth_colour"):
            assert torch.equal(getattr(subject, field), getattr(prototype, field)), (plan.name, field)
        assert (subject.f0, subject.speech_rate, subject.blink_rate) == (prototype.f0, prototype.speech_rate, prototype.blink_rate)
    a, b = (renderer.factory.prototype(k) for k in (0, 1))
    assert not torch.equal(a.albedo, b.albedo) and not torch.equal(a.effect_maps, b.effect_maps)


def test_spread_one_gives_exactly_the_independent_subjects() -> None:
    families = WorldRenderer(_with_spread(1.0), SEED)
    independent = WorldRenderer(dataclasses.replace(SMALL, subject_model="independent", num_families=1, family_spread=1.0), SEED)
    assert [s.name for s in families.plan.subjects] == [s.name for s in independent.plan.subjects]
    for plan in families.plan.subjects:
        a, b = families.subject(plan.name), independent.subject(plan.name)
        assert a.family == plan.family and b.family is None
        for field in ("albedo", "effect_maps", "effect_gains", "id_coeff", "tex_coeff", "au_gains"):
            assert torch.equal(getattr(a, field), getattr(b, field)), (plan.name, field)
        assert a.details == b.details and a.f0 == b.f0


def test_partial_spread_ties_appearance_to_emotional_texture() -> None:
    renderer = WorldRenderer(SMALL, SEED)
    names = [s.name for s in renderer.plan.subjects]
    families = {s.name: s.family for s in renderer.plan.subjects}
    changes = {n: _true_changes(renderer, n) for n in names}
    albedo = {n: renderer.subject(n).albedo for n in names}
    cos_in, cos_out, dist_in, dist_out = [], [], [], []
    for a, b in itertools.combinations(names, 2):
        cos = float(F.cosine_similarity(changes[a], changes[b], dim=1).mean())
        dist = float((albedo[a] - albedo[b]).pow(2).mean().sqrt())
        same = families[a] == families[b]
        (cos_in if same else cos_out).append(cos)
        (dist_in if same else dist_out).append(dist)
    # Look-alikes change their texture alike: both clearly separated (seeds 0-5 give margins
    # of 0.05-0.09 in cosine and 1.4-3x in distance).
    assert statistics.fmean(cos_in) > statistics.fmean(cos_out) + 0.03, (cos_in, cos_out)
    assert statistics.fmean(dist_in) < 0.8 * statistics.fmean(dist_out), (dist_in, dist_out)
    # Order-independent: a fresh renderer drawing the subjects backwards gives the same people.
    again = WorldRenderer(SMALL, SEED)
    for n in reversed(names):
        assert torch.equal(again.subject(n).effect_maps, renderer.subject(n).effect_maps)
        assert torch.equal(again.subject(n).albedo, albedo[n])
    with pytest.raises(ValueError, match="family model"):
        WorldRenderer(PRESETS["tiny"], SEED).factory.make("M001", "train", "M", family=0)
    # Still individuals: no two members are identical.
    assert min(dist_in) > 0.0 and max(cos_in) < 1.0
    # Every subject's effect maps stay valid: wrinkles darken their own albedo by at most 65 %,
    # flush reddens.
    for n in names:
        maps = renderer.subject(n).effect_maps
        assert bool(torch.isfinite(maps).all())
        assert float(maps[:-1].max()) <= 0.0 and float(maps[-1, 0].min()) >= 0.0
        assert bool((maps[:-1] >= -0.65 * albedo[n][None] - 2e-3).all())


def test_blend_rng_known_answers() -> None:
    def blend(spread: float) -> FamilyBlendRng:
        return FamilyBlendRng(prototype=derive_rng(1, "p"), own=derive_rng(1, "o"), switch=derive_rng(1, "s"),
                              spread=spread, prototype_states={})

    proto, own = derive_rng(1, "p"), derive_rng(1, "o")
    expected = proto.normal(0.0, 2.0, size=4), own.normal(0.0, 2.0, size=4)
    np.testing.assert_array_equal(blend(0.0).normal(0.0, 2.0, size=4), expected[0])
    np.testing.assert_array_equal(blend(1.0).normal(0.0, 2.0, size=4), expected[1])
    np.testing.assert_allclose(blend(0.3).normal(0.0, 2.0, size=4), expected[0] + 0.3 * (expected[1] - expected[0]))
    values = blend(0.5).uniform(0.2, 0.4, size=1000)
    assert values.min() >= 0.2 and values.max() < 0.4  # convex: stays in the drawn range
    picks = [int(blend(0.0).integers(0, 10**9)) for _ in range(3)]
    assert picks == [int(derive_rng(1, "p").integers(0, 10**9))] * 3
    with pytest.raises(ValueError, match="spread"):
        blend(1.2)
    with pytest.raises(AttributeError):
        blend(0.5).standard_normal()  # only the methods the painters use


# ------------------------------------------------------------------------------ on disk


def test_family_is_recorded_in_the_world_and_read_back(tmp_path: Path) -> None:
    preset = dataclasses.replace(
        SMALL, name="families_micro", num_train_subjects=2, num_unseen_subjects=1, num_families=1,
        emotions=("sad",), levels=(2,), side_views=(), num_frames=2, image_size=32, num_ffhq=0, num_ffhq_bad_each=0,
    )
    generate_world(tmp_path, preset, SEED, progress=False)
    world = SyntheticWorld.open(tmp_path)
    assert world.preset == preset
    description = json.loads((tmp_path / "truth/world.json").read_text())
    assert [s["family"] for s in description["subjects"]] == [0, 0, 0]
    for name in world.subjects:
        assert world.subject(name).family == 0
        assert json.loads((tmp_path / f"truth/subjects/{name}.json").read_text())["family"] == 0
    # Resuming the same world is accepted; an old-style description (no family keys) still reads.
    generate_world(tmp_path, preset, SEED, progress=False)
    old = {k: v for k, v in PRESETS["tiny"].to_json().items() if k not in FAMILY_FIELDS}
    assert WorldPreset.from_json(old) == PRESETS["tiny"]


def test_a_world_described_before_a_field_existed_still_matches():
    from emoedit.data.synthetic.world import described_as

    preset = PRESETS["demo"]
    body = {"preset": preset.to_json(), "seed": 0}
    assert described_as(body, preset, 0) and not described_as(body, preset, 1)
    older = {"preset": {k: v for k, v in preset.to_json().items() if k != "lighting"}, "seed": 0}
    assert described_as(older, preset, 0)  # "lighting" has a default: a world from before it resumes
    assert not described_as(older, dataclasses.replace(preset, lighting="per_subject"), 0)
    assert not described_as({"preset": {**preset.to_json(), "bogus": 1}, "seed": 0}, preset, 0)
