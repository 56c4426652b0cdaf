"""The foundation tour (what `make demo` runs until the full pipeline lands), end to end."""

from __future__ import annotations

import json

from emoedit.cli import main
from emoedit.tour import TourPreset, run_tour
from emoedit.video import probe_video


def test_tour_writes_video_with_audio_and_a_faithful_texture_round_trip(tmp_path):
    preset = TourPreset(image_size=64, texture_size=64, frames_per_au=2, fps=25)
    metrics = run_tour(tmp_path, preset=preset)
    info = probe_video(tmp_path / "tour.mp4")
    assert info.num_frames == metrics["frames"] == 2 * len(metrics["action_units"])
    assert (info.width, info.height) == (64, 64) and info.has_audio
    assert abs(info.audio_duration_s - info.duration_s) < 0.1
    assert metrics["texture_round_trip_psnr_db"] > 28.0
    for name in ("action_units.png", "uv_texture_baked.png", "uv_texture_extracted.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_cli_help_and_unknown_preset(capsys, tmp_path):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert "face-model" in capsys.readouterr().out
    try:
        main(["tour", "--preset", "huge", "--out", str(tmp_path)])
    except SystemExit as exit_:
        assert exit_.code == 2
