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


def test_preprocess_bad_input_is_a_clear_error(tmp_path, capsys):
    code = main(["preprocess", "mead", str(tmp_path / "missing"), "--out", str(tmp_path / "c"), "--no-progress"])
    assert code == 2
    assert "missing" in capsys.readouterr().err
