"""scripts/texture_demo_world.py: its core on the tiny synthetic world with untrained networks
(split selection, config overrides, the measurements, the tables)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


demo = _load_script("texture_demo_world")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from emoedit.data.synthetic import SyntheticWorld

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("texture_demo")
    world_dir = demo.ensure_world(None, work, preset="tiny", seed=0)
    info = demo.preprocess(world_dir, work, texture_size=32, frame_stride=2, threads=1)
    world = SyntheticWorld.open(world_dir)
    return {"world": world, "cache": info["cache"], "info": info, "selection": demo.training_selection(world)}


def test_selection_excludes_every_evaluation_clip(tiny):
    from emoedit.data.cache import CacheReader

    world, selection = tiny["world"], tiny["selection"]
    assert tiny["info"]["clips_written"] == tiny["info"]["clips"] > 0
    assert set(selection.held_out_clip_ids) <= set(selection.eval_clip_ids)
    assert set(selection.unseen_clip_ids) <= set(selection.eval_clip_ids)
    assert len(selection.held_out_clip_ids) == len(world.train_subjects)  # tiny: one held-out neutral clip each
    index = CacheReader.open(tiny["cache"], kind="textures").records()
    from datamodules.textures import select_records

    kept = select_records(index, keep=selection.data_filter(), drop=selection.data_exclude(), source="test")
    kept_clips = set(kept.unique("clip"))
    training = {r.key.clip_id for r in world.training_clips()}
    assert kept_clips == training  # exactly the world's training clips
    assert not kept_clips & set(selection.eval_clip_ids)
    assert set(kept.unique("subject")) == set(world.train_subjects)


def test_overrides_reach_the_composed_configs(tiny, tmp_path):
    from emoedit.config import compose_config

    selection = tiny["selection"]
    overrides = [f"output_dir={tmp_path}", "experiment=demo", *demo.data_overrides(selection, tiny["cache"]),
                 f"model.subjects={demo._json_value(list(selection.train_subjects))}",
                 *demo._limits(7, 1.5)]
    cfg = compose_config(demo.part_spec("classifier").schema, part="classifier", config_dir=REPO / "configs",
                         overrides=overrides)
    assert list(cfg.data.exclude.clip) == list(selection.eval_clip_ids)
    assert list(cfg.data.filter.subject) == list(selection.train_subjects) and cfg.data.filter.view == "front"
    assert list(cfg.model.subjects) == list(selection.train_subjects)
    assert cfg.trainer.max_steps == 7 and cfg.trainer.max_time.seconds == 90
    for part in ("tgan", "texture_encoder"):
        compose_config(demo.part_spec(part).schema, part=part, config_dir=REPO / "configs",
                       overrides=[f"output_dir={tmp_path}", "experiment=demo", "model.tgan_checkpoint=x.ckpt"
                                  if part == "texture_encoder" else "seed=0"])


def test_masked_errors_known_answer():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    target[0] = 0.1
    target[1, :, :2] = 0.5  # only the masked-out half differs
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0] = True
    mask[1, :, 2:] = True
    l1, psnr = demo.masked_errors(pred, target, mask)
    assert torch.allclose(l1, torch.tensor([0.1, 0.0]), atol=1e-6)
    assert psnr[0].item() == pytest.approx(20.0, abs=1e-4) and psnr[1].item() == pytest.approx(100.0)


def _untrained_networks(world, selection) -> object:
    from emoedit.editing.directions import solve_directions
    from emoedit.networks.psp_encoder import PSPEncoder
    from emoedit.networks.stylegan2 import StyleGAN2Generator
    from emoedit.networks.subject_classifier import SubjectClassifier

    torch.manual_seed(0)
    generator = StyleGAN2Generator(z_dim=16, w_dim=16, img_resolution=16, img_channels=3, mapping_layers=2,
                                   channel_base=128, channel_max=16).eval()
    encoder = PSPEncoder(num_ws=generator.num_ws, w_dim=16, input_size=32, depth=10, widths=(8, 16, 32, 64)).eval()
    classifier = SubjectClassifier(subjects=list(selection.train_subjects), input_size=32, depth=10,
                                   widths=(8, 16, 32, 64)).eval()
    subjects, emotions, levels = [], [], []
    for subject in selection.train_subjects:
        for emotion in ("neutral", *world.preset.emotions):
            subjects.append(subject)
            emotions.append(emotion)
            levels.append(1 if emotion == "neutral" else 3)
    latents = torch.randn(len(subjects), generator.num_ws, 16)
    directions = solve_directions(latents, subjects, emotions, levels, subject_order=selection.train_subjects,
                                  solve_emotions=world.preset.emotions)
    return demo.Networks(encoder=encoder, generator=generator, classifier=classifier, directions=directions)


def test_evaluate_gives_finite_figures_with_every_key(tiny):
    world, selection = tiny["world"], tiny["selection"]
    networks = _untrained_networks(world, selection)
    calibration = demo.calibrate_temperature(tiny["cache"], networks.classifier, networks.directions, selection)
    assert calibration.temperature in calibration.candidates and calibration.textures > 0
    metrics = demo.evaluate(world, networks, selection, cache=tiny["cache"], texture_size=32, eval_frame_stride=4,
                            subject_temperature=calibration.temperature, log=lambda _: None)
    recon = metrics["reconstruction_unseen"]
    assert recon["count"] > 0 and math.isfinite(recon["psnr"]) and math.isfinite(recon["l1"])
    cls = metrics["classifier_held_out"]
    assert cls["frames"] > 0 and 0.0 <= cls["accuracy"] <= 1.0 and cls["chance"] == pytest.approx(1 / 3)
    check = metrics["extraction_check"]
    assert check["psnr"] > 30.0  # the evaluation's own extraction matches the preprocess cache
    for group, own in (("unseen", False), ("seen", True)):
        block = metrics[f"edit_{group}"]
        rows = block["rows"]
        expected = {"input (unedited)", "G(E(I)) (no edit)", "eq. 4 (classifier)", "mean direction (w/o classifier)",
                    "floor G(E(truth))", demo.EQ4_TAU, demo.ORACLE} | ({"eq. 3 (own directions)"} if own else set())
        assert expected <= set(rows)
        assert ("eq. 3 (own directions)" in rows) == own
        for name, row in rows.items():
            assert math.isfinite(row["psnr"]) and math.isfinite(row["l1"]) and row["count"] > 0, name
        assert set(block["per_emotion"]) == set(world.preset.emotions)
        assert all(math.isfinite(v) for v in block["change_cosine"].values())
        assert rows["input (unedited)"]["psnr"] > rows["G(E(I)) (no edit)"]["psnr"]  # untrained G: far off
    text = demo.markdown_tables({"metrics": metrics, "subject_temperature": calibration.as_dict()})
    assert "leave-one-subject-out" in text and demo.EQ4_TAU in text
    assert "eq. 4 (classifier)" in text and "floor G(E(truth))" in text and "(a) G(E(I))" in text
    cells = metrics["edit_unseen"]["per_cell"]
    unseen_sources = [r for r in world.eval_clips(view="front") if r.key.subject not in selection.train_subjects]
    assert len(cells) == len(unseen_sources) * len(world.preset.emotions) > 0  # one cell per clip and emotion
    assert all(demo.DIAGNOSTIC_PREFIX + demo.EQ4_TAU in row and "input (unedited)" in row for row in cells.values())
    assert all(demo.EQ4_TAU in row and "mean direction (w/o classifier)" in row for row in cells.values())  # decoded
    assert "Paired, per clip × emotion cell" in text and "ahead in" in text
    assert f"| residual | {demo.EQ4_TAU} − mean direction" in text
    assert f"| decoded | {demo.EQ4_TAU} − mean direction" in text
    assert "| decoded | eq. 3 (own directions) − mean direction" in text  # seen subjects only


def test_face_region_cache_and_evaluation_agree(tiny, tmp_path):
    """--texture-region-min-cos: the cache holds the rim filled, records the threshold, and the
    evaluation's own extraction (filled the same way) still matches the cache; edits change only
    the face region."""
    import dataclasses

    from emoedit.data.cache import CacheReader
    from emoedit.texture.face_region import REGION_FILL_UINT8

    world, selection = tiny["world"], tiny["selection"]
    assert demo.cache_region(tiny["cache"], world, 32) is None  # a cache without a region
    info = demo.preprocess(world.root, tmp_path, texture_size=32, frame_stride=2, threads=1, region_min_cos=0.45,
                           region_margin=1)
    reader = CacheReader.open(info["cache"], kind="textures")
    assert reader.attributes["texture"]["region_min_cos"] == 0.45 and reader.attributes["texture"]["region_margin"] == 1
    region = demo.cache_region(info["cache"], world, 32)
    from emoedit.texture.face_region import face_region
    from emoedit.texture.uv_layout import UVLayout

    model = world.face_model()
    assert torch.equal(region, face_region(model, UVLayout.from_model(model, 32), 0.45, 1))  # margin read back
    assert 0.4 < float(region.float().mean()) < 0.9
    uv = reader.load_clip(reader.clips[0], fields=("uv_texture",))["uv_texture"]
    assert bool((uv[:, :, ~region] == REGION_FILL_UINT8).all())
    assert float((uv[:, :, region] == REGION_FILL_UINT8).float().mean()) < 0.1  # the face itself is kept
    # the edit pipeline reads the same threshold from the cache it bundles (PipelineSettings)
    from emoedit.pipeline.bundle import settings_from_cache

    settings = settings_from_cache(Path(info["cache"]).parent)[0]
    assert settings.texture_region_min_cos == 0.45 and settings.texture_region_margin == 1
    assert settings_from_cache(Path(tiny["cache"]).parent)[0].texture_region_min_cos is None
    networks = dataclasses.replace(_untrained_networks(world, selection), region=region)
    metrics = demo.evaluate(world, networks, selection, cache=info["cache"], texture_size=32, eval_frame_stride=4,
                            emotions=world.preset.emotions[:1], log=lambda _: None)
    assert metrics["extraction_check"]["psnr"] > 30.0  # would be far lower if the rim were compared unfilled
    change = networks.region_change(torch.ones(1, 3, 32, 32))
    assert bool((change[:, :, ~region] == 0).all()) and bool((change[:, :, region] == 1).all())


def test_paired_difference_known_answer():
    cells = {"a|happy": {"x": 30.0, "y": 29.0}, "b|happy": {"x": 31.0, "y": 29.0}, "c|sad": {"x": 28.0, "y": 29.0},
             "d|sad": {"x": 30.0}}  # d lacks y: not a pair
    out = demo.paired_difference(cells, "x", "y", resamples=500)
    assert out["cells"] == 3 and out["ahead"] == 2 and out["mean"] == pytest.approx(2.0 / 3.0)
    assert -1.0 <= out["low"] <= out["mean"] <= out["high"] <= 2.0
    same = demo.paired_difference({k: {"x": 1.0, "y": 1.0} for k in "abc"}, "x", "y")
    assert same["mean"] == same["low"] == same["high"] == 0.0 and same["ahead"] == 0
    assert demo.paired_difference(cells, "x", "z") is None


def test_selection_round_trips_and_names_its_file_when_wrong(tiny):
    selection = tiny["selection"]
    assert demo.TrainingSelection.from_dict(selection.as_dict()) == selection
    broken = selection.as_dict()
    del broken["eval_clip_ids"]
    with pytest.raises(ValueError, match="sel.json: expected the keys"):
        demo.TrainingSelection.from_dict(broken, source="sel.json")
    with pytest.raises(ValueError, match="held_out_clip_ids must be a list of strings"):
        demo.TrainingSelection.from_dict({**selection.as_dict(), "held_out_clip_ids": [1]}, source="sel.json")


def test_train_only_trains_from_the_split_and_cache_alone_then_reuses_after_a_move(tiny, tmp_path, monkeypatch):
    import json
    import shutil

    work = tmp_path / "work"
    (work / "preprocess").mkdir(parents=True)
    shutil.copytree(tiny["cache"], work / "preprocess" / "textures")
    (work / "selection.json").write_text(json.dumps(tiny["selection"].as_dict()))
    monkeypatch.setitem(sys.modules, "emoedit.data.synthetic", None)  # the world is not there: any use fails
    budget = ["--texture-size", "32", "--tgan-steps", "2", "--tgan-minutes", "0", "--encoder-steps", "2",
              "--encoder-minutes", "0", "--classifier-steps", "2", "--classifier-minutes", "0"]
    assert demo.main(["--work", str(work), "--train-only", *budget]) == 0
    training = json.loads((work / "training.json").read_text())["training"]
    assert set(training) == set(demo.PARTS)
    for part in demo.PARTS:
        assert training[part]["steps"] == 2 and Path(training[part]["checkpoint"]).is_file()
        assert "trainer.accelerator=cpu" in training[part]["overrides"]
    cfg = (work / "runs" / "classifier" / "config.yaml").read_text()
    assert str(work / "preprocess" / "textures") in cfg  # trained on the travelled cache

    moved = tmp_path / "moved"
    shutil.move(work, moved)  # e.g. checkpoints fetched from another machine
    assert demo.main(["--work", str(moved), "--train-only", *budget]) == 0
    reused = json.loads((moved / "training.json").read_text())["training"]
    for part in demo.PARTS:
        assert reused[part]["reused"] and reused[part]["checkpoint"] == str(moved / "runs" / part / "checkpoints"
                                                                             / "final.ckpt")

    (moved / "selection.json").unlink()
    with pytest.raises(SystemExit, match="selection.json is missing"):
        demo.main(["--work", str(moved), "--train-only", *budget])


def test_headroom_known_answer():
    headroom = _load_script("texture_headroom").headroom
    # Family 0 moves every texel by +1, family 1 not at all; texel (1, 1) is off the mask and garbage.
    directions = {}
    for name, family_value in (("a1", 1.0), ("a2", 1.0), ("a3", 1.0), ("b1", 0.0), ("b2", 0.0), ("b3", 0.0)):
        d = torch.full((1, 2, 2), family_value, dtype=torch.float64)
        d[0, 1, 1] = 1e6 if name == "a1" else -1e6
        directions[(name, "happy")] = d
    families = {"a1": 0, "a2": 0, "a3": 0, "b1": 1, "b2": 1, "b3": 1}
    mask = torch.tensor([[True, True], [True, False]])
    figures = headroom(directions, families, mask)
    assert figures["cells"] == 6
    assert figures["zero"] == pytest.approx(0.5)  # half the subjects move by 1
    assert figures["mean"] == pytest.approx(0.36)  # the other five: 2/5 (or 3/5) of the way
    assert figures["family"] == pytest.approx(0.0)
    assert figures["other families"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no texel"):
        headroom(directions, families, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="another family member"):
        headroom(directions, {name: i for i, name in enumerate(families)}, mask)


def test_subject_directions_on_the_tiny_cache(tiny):
    module = _load_script("texture_headroom")
    selection = tiny["selection"]
    subjects = list(selection.train_subjects)
    directions, common = module.subject_directions(tiny["cache"], subjects, level=3,
                                                   exclude_clips=selection.eval_clip_ids)
    assert set(directions) == {(s, e) for s in subjects for e in ("angry", "happy")}
    assert common.dtype == torch.bool and 0 < int(common.sum()) < common.numel()
    for d in directions.values():
        assert d.shape == (3, 32, 32) and torch.isfinite(d).all()
        assert float(d[:, common].abs().mean()) > 0  # an emotion changes the seen texels
    neutral = [r.key.clip_id for r in tiny["world"].clips(view="front") if r.key.subject == subjects[0]
               and r.key.emotion == "neutral"]
    with pytest.raises(ValueError, match="has no family"):  # the tiny world's subjects are independent
        module.world_families(tiny["world"], subjects)
    with pytest.raises(ValueError, match=f"subject {subjects[0]} has no neutral"):
        module.subject_directions(tiny["cache"], subjects, level=3, exclude_clips=neutral)
