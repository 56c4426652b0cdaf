"""The `emoedit` command line as a user runs it: synth → preprocess, and bad input."""

from __future__ import annotations

import json

from emoedit.cli import main
from emoedit.data.cache import CacheReader


def test_synth_then_preprocess_through_the_cli(tmp_path, capsys):
    world = tmp_path / "world"
    assert main(["synth", "--out", str(world), "--preset", "tiny", "--seed", "0", "--quiet"]) == 0
    assert "synthetic world 'tiny'" in capsys.readouterr().out
    assert (world / "truth" / "world.json").exists()
    cache = tmp_path / "cache"
    args = ["preprocess", "mead", str(world), "--out", str(cache), "--stage", "align", "--crop-size", "64",
            "--views", "front", "--max-clips", "3", "--no-progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == 3 and report["failed"] == []
    reader = CacheReader.open(cache / "frames")
    assert len(reader.clips) == 3 and reader.num_records > 0
    assert main(args) == 0  # resume: nothing left to do
    assert json.loads(capsys.readouterr().out)["already_done"] == 3


def test_preprocess_texture_region_through_the_cli(tmp_path, capsys):
    world = tmp_path / "world"
    assert main(["synth", "--out", str(world), "--preset", "tiny", "--seed", "0", "--quiet"]) == 0
    capsys.readouterr()
    base = ["preprocess", "mead", str(world), "--stage", "reconstruct", "--reconstructor", "truth",
            "--crop-size", "64", "--texture-size", "32", "--mouth-size", "32", "--views", "front", "--max-clips", "1",
            "--max-frames", "2", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "bad"), "--texture-region-min-cos", "1.5"]) == 2
    assert "texture_region_min_cos" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "cache"), "--texture-region-min-cos", "0.45",
                 "--texture-region-margin", "1"]) == 0
    reader = CacheReader.open(tmp_path / "cache" / "textures")
    assert reader.attributes["texture"]["region_min_cos"] == 0.45 and reader.attributes["texture"]["region_margin"] == 1


def test_preprocess_bad_input_is_a_clear_error(tmp_path, capsys):
    code = main(["preprocess", "mead", str(tmp_path / "missing"), "--out", str(tmp_path / "c"), "--no-progress"])
    assert code == 2
    assert "missing" in capsys.readouterr().err


def test_directions_subject_temperature_through_the_cli(tmp_path, capsys):
    from emoedit.editing.directions import EditDirections
    from tests.test_directions import _write_classifier, _write_encoder, write_texture_cache

    cache = write_texture_cache(tmp_path / "textures", subjects=("M001", "M002", "W003"), frames=3)
    encoder = _write_encoder(tmp_path / "encoder.ckpt")
    classifier = _write_classifier(tmp_path / "classifier.ckpt", ("W003", "M001", "M002"))
    base = ["directions", "--cache", str(cache), "--encoder", str(encoder), "--device", "cpu", "--batch-size", "4",
            "--emotions", "happy,angry"]

    for value, message in (("warm", "expected a positive number or 'calibrate'"), ("0", "positive finite"),
                           ("-1", "positive finite"), ("nan", "positive finite"), ("inf", "positive finite"),
                           ("calibrate", "needs --classifier")):
        assert main([*base, "--out", str(tmp_path / "bad.pt"), "--subject-temperature", value]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()

    assert main([*base, "--out", str(tmp_path / "paper.pt")]) == 0  # default: τ = 1, the paper
    assert "temperature" not in capsys.readouterr().out
    assert EditDirections.load(tmp_path / "paper.pt").subject_temperature == 1.0
    assert main([*base, "--out", str(tmp_path / "fixed.pt"), "--subject-temperature", "2.5"]) == 0
    assert "τ = 2.5 (set by hand" in capsys.readouterr().out
    assert EditDirections.load(tmp_path / "fixed.pt").subject_temperature == 2.5

    out = tmp_path / "calibrated.pt"
    assert main([*base, "--out", str(out), "--classifier", str(classifier), "--subject-temperature", "calibrate"]) == 0
    printed = capsys.readouterr().out
    loaded = EditDirections.load(out)
    record = loaded.extra["subject_temperature"]
    assert loaded.subjects == ("W003", "M001", "M002") and loaded.subject_temperature == record["temperature"]
    assert f"τ = {record['temperature']:g}, chosen leave-one-subject-out on 9 neutral textures" in printed
    assert "plain mean of the other subjects" in printed and f"{record['mean_score']:.4f}" in printed
    assert all(f"τ={c:g}: {s:.4f}" in printed for c, s in zip(record["candidates"], record["scores"]))
