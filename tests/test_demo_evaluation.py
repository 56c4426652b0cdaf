"""emoedit.demo.evaluation on the tiny synthetic world: known answers (the truth scored as the
output) and the shared targets (each ground-truth edit read once for all scorings)."""

from __future__ import annotations

import math

import pytest
import torch

import emoedit.demo.evaluation as evaluation
from emoedit.demo.evaluation import EditedVideo, EditTargets, evaluate_ablations, evaluate_edits


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from emoedit.data.synthetic import SyntheticWorld, generate_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    generate_world(root, "tiny", 0, progress=False)
    torch.set_num_threads(threads)
    return SyntheticWorld.open(root)


def _source(world):
    return world.eval_clips(view="front", subject=world.unseen_subjects[0])[0]


def test_truth_as_output_scores_perfectly_and_input_does_not(world):
    source = _source(world)
    emotion = world.preset.emotions[0]
    truth_video = world.edit(source, emotion, 3).video_path
    result = evaluate_edits(world, source, [EditedVideo("x", emotion, 1.0, truth_video)], frame_stride=2,
                            fit_photo_steps=0, fit_render_size=0, progress=False)
    image = result["edits"][0]["image"]
    assert image["output_vs_truth"]["l1"] == 0.0 and image["output_vs_truth"]["psnr_db"] >= 100.0
    assert math.isfinite(image["input_vs_truth"]["psnr_db"]) and image["input_vs_truth"]["l1"] > 0
    assert result["frames"] == list(range(0, world.load_truth(source).num_frames, 2))


def test_ablations_share_one_read_of_each_truth(world, monkeypatch):
    source = _source(world)
    emotion = world.preset.emotions[0]
    video = EditedVideo(f"{emotion}_1.00", emotion, 1.0, world.edit(source, emotion, 3).video_path)
    calls = {"truth": 0, "input": 0}
    load_truth, load_input = evaluation.load_truth_edit, evaluation.load_input

    def counting_truth(*args, **kwargs):
        calls["truth"] += 1
        return load_truth(*args, **kwargs)

    def counting_input(*args, **kwargs):
        calls["input"] += 1
        return load_input(*args, **kwargs)

    monkeypatch.setattr(evaluation, "load_truth_edit", counting_truth)
    monkeypatch.setattr(evaluation, "load_input", counting_input)
    targets = EditTargets.every(world, source, 3)
    full = evaluate_edits(world, source, [video], frame_stride=3, fit_photo_steps=0, fit_render_size=0,
                          progress=False, targets=targets)
    out = evaluate_ablations(world, source, {"a": [video], "b": [video]}, full=full, frame_stride=3,
                             labels={"a": "A"}, progress=False, targets=targets)
    assert calls == {"truth": 1, "input": 1}
    assert [r["name"] for r in out["rows"]] == ["full", "a", "b", "input"]
    assert out["rows"][1]["label"] == "A" and out["rows"][1]["psnr_db"] == out["rows"][0]["psnr_db"]
    other = world.eval_clips(view="front", subject=world.unseen_subjects[-1])[-1]
    if other.key != source.key:
        with pytest.raises(ValueError, match="targets of"):
            evaluate_edits(world, other, [video], frame_stride=3, fit_photo_steps=0, fit_render_size=0,
                           progress=False, targets=targets)
    with pytest.raises(ValueError, match="frame_stride"):
        evaluate_edits(world, source, [video], frame_stride=2, fit_photo_steps=0, fit_render_size=0,
                       progress=False, targets=targets)
