"""``emoedit edit`` as a user runs it: a full edit with a (stand-in) bundle, and bad input.

The bundle loader (``emoedit.pipeline.bundle.load_bundle``) is replaced by one that returns
the tiny untrained parts of ``tests/test_editor.py``, and dlib by the clip's known
landmarks, so the command runs end to end in a second without trained files.
"""

from __future__ import annotations

import argparse
import json
import sys
import types

import pytest

import emoedit.data.detection as detection_module
from emoedit.cli import CliError
from emoedit.pipeline.edit_command import register
from emoedit.video import probe_video
from tests.test_editor import TalkingHead, render_talking_head, tiny_parts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoedit")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def cli(argv: list[str]) -> int:
    """Parse and run like ``emoedit.cli.main`` (exit status 2 and a message on stderr for user errors)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CliError, FileNotFoundError, ValueError, OSError) as err:
        print(f"emoedit: error: {err}", file=sys.stderr)
        return 2
    return 0


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> TalkingHead:
    return render_talking_head(tmp_path_factory.mktemp("clip") / "talk.mp4", num_frames=6)


class FakeBundle:
    """A bundle folder and the calls its loader received."""

    def __init__(self, path, calls: list[tuple[str, str]]) -> None:  # noqa: ANN001
        self.path, self.calls = path, calls

    def __str__(self) -> str:
        return str(self.path)


@pytest.fixture
def bundle(tmp_path, monkeypatch, clip):
    """A bundle folder whose loader returns tiny parts; dlib replaced by the clip's true landmarks."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    calls: list[tuple[str, str]] = []

    def load_bundle(path, device="cpu"):  # noqa: ANN001
        calls.append((str(path), str(device)))
        return tiny_parts(teeth=False)

    module = types.ModuleType("emoedit.pipeline.bundle")
    module.load_bundle = load_bundle  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "emoedit.pipeline.bundle", module)
    monkeypatch.setattr(detection_module, "DlibFaceDetector", lambda **kw: clip.detector())
    return FakeBundle(folder, calls)


def test_edit_writes_the_video_the_report_and_a_summary(clip, bundle, tmp_path, capsys):
    out, report = tmp_path / "happy.mp4", tmp_path / "report.json"
    code = cli(["edit", str(clip.path), "--bundle", str(bundle), "--emotion", "happy", "--intensity", "0.8",
                "--out", str(out), "--report", str(report), "--device", "cpu", "--quiet",
                "--save-intermediates", str(tmp_path / "inter")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert bundle.calls == [(str(bundle), "cpu")]
    assert probe_video(out).num_frames == 6
    data = json.loads(report.read_text())
    assert data["num_frames"] == 6 and data["frames_with_face"] == 6 and data["output"] == str(out)
    assert data["details"]["texture_edit_mode"] == "classifier"
    assert data["details"]["schedule"] == "0s 0.8 happy"
    assert "edited 6 of 6 frames" in captured.out and "warning: no teeth completer" in captured.out
    assert (tmp_path / "inter" / "edit_data.pt").is_file()


def test_schedule_and_switches_reach_the_editor(clip, bundle, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = cli(["edit", str(clip.path), "--bundle", str(bundle), "--out", str(tmp_path / "o.mp4"), "--quiet",
                "--schedule", "0s neutral; 0.3s 0.5 sad + 0.5 angry", "--no-classifier", "--no-shape", "--no-teeth",
                "--no-smoothing", "--texture-mode", "residual", "--batch-size", "4", "--report", str(report),
                "--detect-max-side", "96"])
    assert code == 0, capsys.readouterr().err
    details = json.loads(report.read_text())["details"]
    assert details["texture_edit_mode"] == "mean" and details["texture_mode"] == "residual"
    assert not details["shape_edit"] and not details["teeth_completion"] and details["smoothing_half_window"] == 0
    assert details["options"]["batch_size"] == 4


def test_detect_upsample_and_bf16_reach_the_detector_and_options(clip, bundle, tmp_path, capsys, monkeypatch):
    seen: list[dict] = []

    def fake_dlib(**kw):  # noqa: ANN003, ANN202
        seen.append(kw)
        return clip.detector()

    monkeypatch.setattr(detection_module, "DlibFaceDetector", fake_dlib)
    report = tmp_path / "r.json"
    code = cli(["edit", str(clip.path), "--bundle", str(bundle), "--out", str(tmp_path / "o.mp4"), "--quiet",
                "--emotion", "sad", "--detect-upsample", "1", "--bf16", "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    assert seen == [{"detector": "hog", "upsample": 1}]
    assert json.loads(report.read_text())["details"]["options"]["bf16"] is True
    assert cli(["edit", str(clip.path), "--bundle", str(bundle), "--out", str(tmp_path / "p.mp4"),
                "--emotion", "sad", "--detect-upsample", "5"]) == 2
    assert "--detect-upsample" in capsys.readouterr().err


def test_unknown_subject_lists_the_known_ones(clip, bundle, tmp_path, capsys):
    code = cli(["edit", str(clip.path), "--bundle", str(bundle), "--emotion", "sad", "--subject", "M099",
                "--out", str(tmp_path / "o.mp4"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'M099'" in err and "s1, s2, s3" in err


@pytest.mark.parametrize("argv", [
    ["edit", "in.mp4", "--emotion", "happy", "--out", "o.mp4"],  # no --bundle
    ["edit", "in.mp4", "--bundle", "b", "--out", "o.mp4"],  # neither --emotion nor --schedule
    ["edit", "in.mp4", "--bundle", "b", "--emotion", "happy", "--schedule", "0s sad", "--out", "o.mp4"],
    ["edit", "in.mp4", "--bundle", "b", "--emotion", "happy", "--out", "o.mp4", "--texture-mode", "blend"],
    ["edit", "in.mp4", "--bundle", "b", "--emotion", "happy", "--out", "o.mp4", "--intensity", "strong"],
])
def test_argument_errors_exit_like_argparse(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2


@pytest.mark.parametrize("extra, message", [
    (["--schedule", "0s neutral; 1s joyful"], "joyful"),
    (["--schedule", "2s happy; 1s sad"], "increase"),
    (["--schedule", "happy; 1s sad"], "needs a leading time"),
    (["--emotion", "elated"], "'elated'"),
    (["--emotion", "happy", "--intensity", "-1"], "--intensity"),
    (["--schedule", "0s happy", "--intensity", "0.5"], "--intensity goes with --emotion"),
    (["--emotion", "happy", "--subject", "s1", "--no-classifier"], "exclude each other"),
    (["--emotion", "happy", "--batch-size", "0"], "--batch-size"),
])
def test_bad_emotions_and_schedules_name_the_text(clip, tmp_path, capsys, extra, message):
    code = cli(["edit", str(clip.path), "--bundle", str(tmp_path), "--out", str(tmp_path / "o.mp4"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_bundle_and_bad_videos(clip, tmp_path, capsys):
    code = cli(["edit", str(clip.path), "--bundle", str(tmp_path / "no_bundle"), "--emotion", "happy",
                "--out", str(tmp_path / "o.mp4")])
    assert code == 2 and "no_bundle: not a folder" in capsys.readouterr().err
    code = cli(["edit", str(tmp_path / "absent.mp4"), "--bundle", str(tmp_path), "--emotion", "happy",
                "--out", str(tmp_path / "o.mp4")])
    assert code == 2 and "absent.mp4: file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 20)
    code = cli(["edit", str(broken), "--bundle", str(tmp_path), "--emotion", "happy", "--out", str(tmp_path / "o.mp4")])
    assert code == 2 and "broken.mp4" in capsys.readouterr().err
    code = cli(["edit", str(clip.path), "--bundle", str(tmp_path), "--emotion", "happy", "--out", str(clip.path)])
    assert code == 2 and "overwrite the input" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_wired_into_emoedit_main_when_registered(clip, tmp_path, capsys):
    from emoedit import cli as cli_module

    parser = cli_module.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "edit" not in commands:
        pytest.skip("emoedit.cli does not register 'edit' yet (the lead wires it)")
    code = cli_module.main(["edit", str(clip.path), "--bundle", str(tmp_path), "--schedule", "1s grumpy",
                            "--out", str(tmp_path / "o.mp4")])
    assert code == 2 and "grumpy" in capsys.readouterr().err


def test_texture_mode_choices_are_the_editors():
    from emoedit.pipeline.edit_command import TEXTURE_MODE_CHOICES
    from emoedit.pipeline.editor import TEXTURE_MODES

    assert TEXTURE_MODE_CHOICES == TEXTURE_MODES
