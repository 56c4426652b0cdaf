"""Batch inference: manifest parsing (CSV, JSONL), path confinement, bad rows, resume, failures, summary, DDP.

The editing itself is a stand-in (:class:`FakeEditor`: copies the input bytes and records
what it was asked; an input starting with ``corrupt`` fails like an unreadable video), so
these tests exercise exactly the batch machinery: validation, distribution with Lightning
``Trainer.predict``, sidecars, resume and the merged summary. The bundle is a manifest
only (:func:`write_bundle_manifest`); the stand-in loader never reads part files.

Run as a script (``python tests/test_batch_edit.py MANIFEST BUNDLE OUT N``) it is the
program the two-process DDP test starts.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # script mode: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch

from emoedit.atomic_io import atomic_write_bytes, sha256_file
from emoedit.editing.emotion_code import EMOTIONS
from emoedit.pipeline.batch import (
    SUMMARY_FILE,
    BatchManifestError,
    edit_row,
    read_batch_manifest,
    run_batch_edit,
)
from emoedit.pipeline.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, PART_FILES, REQUIRED_PARTS
from emoedit.pipeline.parts import PipelineSettings

SUBJECTS = ("M001", "M002", "W003")


# --------------------------------------------------------------------------- stand-ins
@dataclass(frozen=True)
class FakeOptions:
    """The fields of EditOptions the batch code touches."""

    use_classifier: bool = True
    subject: str | None = None
    batch_size: int = 16
    progress: bool = False
    save_intermediates: str | None = None


@dataclass(frozen=True)
class FakeReport:
    input: str
    output: str
    num_frames: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FakeEditor:
    """Writes ``input bytes + the request`` to the output; ``corrupt*`` inputs fail."""

    def __init__(self, parts: Any, options: Any) -> None:
        self.parts, self.options = parts, options

    def edit(self, input_path: Path, schedule: Any, out_path: Path) -> FakeReport:
        data = Path(input_path).read_bytes()
        if data.startswith(b"corrupt"):
            raise ValueError("cannot decode the video (corrupt)")
        record = {"schedule": str(schedule), "subject": self.options.subject, "parts": self.parts,
                  "grad": torch.is_grad_enabled(), "pid": os.getpid()}
        atomic_write_bytes(out_path, data + b"\n" + json.dumps(record).encode())
        return FakeReport(input=str(input_path), output=str(out_path), num_frames=len(data))


def fake_load_parts(bundle_dir: Path, device: torch.device) -> str:
    return f"parts on {device}"


def write_bundle_manifest(root: Path, subjects=SUBJECTS) -> Path:
    """A bundle folder with a valid manifest.json (fitter mode); its part files are never read here."""
    entry = {"sha256": "0" * 64, "size": 0, "source": "-", "source_sha256": "0" * 64, "info": {}}
    parts = {part: {**entry, "file": f"parts/{PART_FILES[part]}", "part": part} for part in REQUIRED_PARTS}
    parts["classifier"]["info"] = {"subjects": list(subjects)}
    manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "emoedit_version": "0", "torch_version": "0",
                "created_utc": "2000-01-01T00:00:00Z", "parts": parts, "notes": [],
                "settings": PipelineSettings(crop_size=64, texture_size=32, texture_crop_size=64).to_json(),
                "recon": {"mode": "fitter", "refine": None, "fitter": {}}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def write_videos(root: Path, names: dict[str, bytes]) -> None:
    for name, data in names.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- manifest parsing
def test_csv_and_jsonl_manifests(tmp_path):
    data = tmp_path / "data"
    write_videos(data, {"a.mp4": b"A", "sub/b.mp4": b"B"})
    out = tmp_path / "out"
    manifest = data / "list.csv"
    manifest.write_text("# a comment line\n"
                        "input, emotion, intensity, schedule, subject, output\n"
                        "a.mp4, happy, , , ,\n"
                        "\n"
                        "sub/b.mp4, 0.5 sad + 0.5 angry, 2, , M002,\n"
                        "a.mp4, , , 0s neutral; 2s happy 1.0, , edits/a_sched.mkv\n")
    rows = read_batch_manifest(manifest, out, subjects=SUBJECTS)
    assert [r.line for r in rows] == [3, 5, 6]
    assert rows[0].input_path == (data / "a.mp4").resolve() and rows[0].output == "a__happy.mp4"
    assert rows[0].output_path == (out / "a__happy.mp4").resolve()
    assert rows[1].output == "b__0.5_sad_0.5_angry_x2__m002.mp4" and rows[1].subject == "M002"
    assert rows[2].output == "edits/a_sched.mkv" and rows[2].schedule == "0s neutral; 2s happy 1.0"
    code = rows[1].emotion_schedule().codes[0]  # intensity multiplies the strengths (as emoedit edit)
    assert code[EMOTIONS.index("sad")] == 1.0 and code[EMOTIONS.index("angry")] == 1.0
    assert rows[0].emotion_schedule().codes[0, EMOTIONS.index("happy")] == 1.0
    assert len(rows[2].emotion_schedule().keyframes) == 2

    jsonl = data / "list.jsonl"
    jsonl.write_text('{"input": "a.mp4", "emotion": "happy", "intensity": 0.5}\n\n'
                     '{"input": "sub/b.mp4", "schedule": "0s sad; 1s sad 0.2", "output": "x.mp4", "subject": null}\n')
    rows = read_batch_manifest(jsonl, out)
    assert [(r.line, r.output, r.intensity) for r in rows] == [(1, "a__happy_x0.5.mp4", 0.5), (3, "x.mp4", None)]
    assert rows[0].emotion_schedule().codes[0, EMOTIONS.index("happy")] == 0.5


def test_paths_are_confined_to_their_folders(tmp_path):
    data = tmp_path / "data"
    write_videos(data, {"a.mp4": b"A"})
    write_videos(tmp_path, {"outside.mp4": b"O"})
    (data / "link.mp4").symlink_to(tmp_path / "outside.mp4")
    manifest = write_csv(data / "m.csv", ["input", "emotion", "output"], [
        [str((data / "a.mp4").resolve()), "happy", ""],  # absolute
        ["../outside.mp4", "happy", ""],  # escapes with ..
        ["link.mp4", "happy", ""],  # a link leading outside
        ["a.mp4", "happy", "../../escaped.mp4"],  # output outside the output folder
        ["a.mp4", "sad", str(tmp_path / "abs.mp4")],  # absolute output
        ["a.mp4", "angry", ""],  # fine
    ])
    with pytest.raises(BatchManifestError) as info:
        read_batch_manifest(manifest, tmp_path / "out")
    text = str(info.value)
    assert "5 bad row(s)" in text
    assert "line 2: input" in text and "is absolute" in text
    assert "line 3: input '../outside.mp4' leaves" in text
    assert "line 4: input 'link.mp4' leaves" in text
    assert "line 5: output '../../escaped.mp4' leaves" in text
    assert "line 6: output" in text and "line 7" not in text


def test_bad_rows_are_all_reported_with_line_numbers(tmp_path):
    data = tmp_path / "data"
    write_videos(data, {"a.mp4": b"A"})
    manifest = write_csv(data / "m.csv", ["input", "emotion", "intensity", "schedule", "subject", "output"], [
        ["a.mp4", "happy", "", "0s sad", "", ""],  # both
        ["a.mp4", "", "", "", "", "n.mp4"],  # neither
        ["a.mp4", "jolly", "", "", "", ""],  # unknown emotion
        ["a.mp4", "happy", "-1", "", "", "x1.mp4"],  # negative
        ["a.mp4", "happy", "lots", "", "", "x2.mp4"],  # not a number
        ["a.mp4", "", "2", "0s sad", "", "x3.mp4"],  # intensity with a schedule
        ["a.mp4", "happy", "", "", "U999", "x4.mp4"],  # unknown subject
        ["missing.mp4", "happy", "", "", "", ""],  # no such input
        ["a.mp4", "sad", "", "", "", "dup.mp4"],
        ["a.mp4", "angry", "", "", "", "dup.mp4"],  # duplicate output
        ["a.mp4", "", "", "1s happy; 0s sad", "", "x5.mp4"],  # times decrease
        ["a.mp4", "sad", "", "", "", "noext"],  # no extension
    ])
    with pytest.raises(BatchManifestError) as info:
        read_batch_manifest(manifest, tmp_path / "out", subjects=SUBJECTS)
    text = str(info.value)
    expected = {2: "exactly one of", 3: "exactly one of", 4: "jolly", 5: ">= 0", 6: "not a number",
                7: "intensity goes with emotion", 8: "U999", 9: "not found", 11: "also the output of line 10",
                12: "increase", 13: "no file extension"}
    assert f"{len(expected)} bad row(s)" in text
    for line, pattern in expected.items():
        assert any(part.strip().startswith(f"line {line}:") and pattern in part
                   for part in text.splitlines()), (line, text)

    write_videos(data, {"b.mp4": b"B"})
    clash = write_csv(data / "c.csv", ["input", "emotion", "output"],
                      [["a.mp4", "happy", "b.mp4"], ["b.mp4", "sad", ""], ["a.mp4", "sad", "a.mp4"]])
    with pytest.raises(BatchManifestError) as info:
        read_batch_manifest(clash, data)  # outputs next to the inputs
    assert "line 2: output 'b.mp4' would overwrite the input of line 3" in str(info.value)
    assert "line 4: output 'a.mp4' would overwrite the input of line 2" in str(info.value)

    bad_header = write_csv(data / "h.csv", ["input", "emotion", "colour"], [["a.mp4", "happy", "red"]])
    with pytest.raises(BatchManifestError, match=r"h.csv:1: header .*unknown: \['colour'\]"):
        read_batch_manifest(bad_header, tmp_path / "out")
    jsonl = data / "m.jsonl"
    jsonl.write_text('{"input": "a.mp4", "emotion": "happy"}\nnot json\n["a"]\n{"input": "a.mp4", "mood": "x"}\n')
    with pytest.raises(BatchManifestError) as info:
        read_batch_manifest(jsonl, tmp_path / "out")
    text = str(info.value)
    assert "line 2: not JSON" in text and "line 3: expected a JSON object" in text
    assert "line 4: unknown keys ['mood']" in text
    with pytest.raises(BatchManifestError, match="must be .csv or .jsonl"):
        read_batch_manifest(data / "a.mp4", tmp_path / "out")


# --------------------------------------------------------------------------- one row
def test_edit_row_writes_sidecar_and_skips_only_matching_requests(tmp_path):
    write_videos(tmp_path, {"a.mp4": b"A"})
    out = tmp_path / "out"
    row = read_batch_manifest(write_csv(tmp_path / "m.csv", ["input", "emotion"], [["a.mp4", "happy"]]), out)[0]
    made: list[Any] = []

    def make(parts: Any, options: Any) -> FakeEditor:
        made.append(options)
        return FakeEditor(parts, options)

    kwargs = dict(parts="p", make_editor=make, bundle_sha256="b" * 64)
    first = edit_row(row, options=FakeOptions(), **kwargs)
    assert first.status == "succeeded" and first.report["num_frames"] == 1 and len(made) == 1
    sidecar = json.loads(row.sidecar_path.read_text())
    assert sidecar["input_sha256"] == sha256_file(tmp_path / "a.mp4") and sidecar["bundle_manifest_sha256"] == "b" * 64
    assert sidecar["request"] == {"emotion": "happy", "intensity": None, "schedule": None, "subject": None}
    assert json.loads(row.output_path.read_bytes().split(b"\n", 1)[1])["grad"] is True  # rows run with autograd on
    assert edit_row(row, options=FakeOptions(progress=True), **kwargs).status == "skipped"  # volatile option
    assert len(made) == 1
    assert edit_row(row, options=FakeOptions(use_classifier=False), **kwargs).status == "succeeded"
    assert edit_row(row, options=FakeOptions(use_classifier=False), parts="p", make_editor=make,
                    bundle_sha256="c" * 64).status == "succeeded"  # another bundle
    changed = dataclasses.replace(row, emotion="sad")
    assert edit_row(changed, options=FakeOptions(use_classifier=False), parts="p", make_editor=make,
                    bundle_sha256="c" * 64).status == "succeeded"  # another request
    (tmp_path / "a.mp4").write_bytes(b"A2")
    assert edit_row(changed, options=FakeOptions(use_classifier=False), parts="p", make_editor=make,
                    bundle_sha256="c" * 64).status == "succeeded"  # new input bytes
    assert len(made) == 5
    (tmp_path / "a.mp4").write_bytes(b"corrupt")
    failed = edit_row(changed, options=FakeOptions(), **kwargs)
    assert failed.status == "failed" and failed.error.startswith("ValueError: cannot decode the video (corrupt)")
    subject_row = dataclasses.replace(row, subject="M002")
    (tmp_path / "a.mp4").write_bytes(b"A")
    edit_row(subject_row, options=FakeOptions(save_intermediates=str(tmp_path / "inter")), **kwargs)
    assert made[-1].subject == "M002" and made[-1].save_intermediates == str(tmp_path / "inter" / "a__happy")


# --------------------------------------------------------------------------- whole batches
def _batch(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "data"
    write_videos(data, {"a.mp4": b"A", "b.mp4": b"B", "bad.mp4": b"corrupt bytes"})
    manifest = write_csv(data / "m.csv", ["input", "emotion", "schedule", "subject"], [
        ["a.mp4", "happy", "", ""], ["bad.mp4", "sad", "", ""], ["b.mp4", "", "0s neutral; 1s angry", "W003"],
        ["a.mp4", "surprised 0.5", "", "M001"],
    ])
    return manifest, write_bundle_manifest(tmp_path / "bundle"), tmp_path / "out"


def test_batch_records_failures_summarises_and_resumes(tmp_path):
    manifest, bundle, out = _batch(tmp_path)
    calls: list[str] = []

    def make(parts: Any, options: Any) -> FakeEditor:
        calls.append(options.subject)
        return FakeEditor(parts, options)

    run = dict(options=FakeOptions(), load_parts=fake_load_parts, make_editor=make, accelerator="cpu")
    summary = run_batch_edit(manifest, bundle, out, **run)
    assert (len(summary.succeeded), len(summary.skipped), len(summary.failed)) == (3, 0, 1)
    assert summary.failed[0].line == 3 and "cannot decode the video" in summary.failed[0].error
    assert sorted(map(str, calls)) == ["M001", "None", "None", "W003"]
    data = json.loads((out / SUMMARY_FILE).read_text())
    assert data["counts"] == {"succeeded": 3, "skipped": 0, "failed": 1} and data["world_size"] == 1
    assert data["failed"][0]["input"] == "bad.mp4" and data["manifest"] == str(manifest.resolve())
    assert [r["line"] for r in data["succeeded"]] == [2, 4, 5]
    assert len((out / ".batch" / "rank0.jsonl").read_text().splitlines()) == 4
    for name in ("a__happy.mp4", "b__0s_neutral_1s_angry__w003.mp4", "a__surprised_0.5__m001.mp4"):
        assert (out / name).is_file() and (out / f"{name}.json").is_file(), name
        record = json.loads((out / name).read_bytes().split(b"\n", 1)[1])
        assert record["parts"] == "parts on cpu"
    assert not (out / "bad__sad.mp4").exists()

    calls.clear()
    again = run_batch_edit(manifest, bundle, out, **run)
    assert (len(again.succeeded), len(again.skipped), len(again.failed)) == (0, 3, 1) and calls == [None]
    assert again.skipped[0].report["num_frames"] == 1  # the sidecar's report
    (manifest.parent / "bad.mp4").write_bytes(b"fixed")
    calls.clear()
    third = run_batch_edit(manifest, bundle, out, **run)
    assert (len(third.succeeded), len(third.skipped), len(third.failed)) == (1, 3, 0) and calls == [None]
    calls.clear()
    fourth = run_batch_edit(manifest, bundle, out, **{**run, "options": FakeOptions(batch_size=4)})
    assert len(fourth.succeeded) == 4 and len(calls) == 4  # other options: everything again


def test_bad_manifest_fails_before_anything_runs(tmp_path):
    manifest, bundle, out = _batch(tmp_path)
    with open(manifest, "a") as handle:
        handle.write("a.mp4,happy,,U999\n")
    with pytest.raises(BatchManifestError, match="line 6: subject 'U999'"):
        run_batch_edit(manifest, bundle, out, options=FakeOptions(), load_parts=fake_load_parts,
                       make_editor=FakeEditor)
    assert not out.exists()
    from emoedit.pipeline.bundle import BundleError

    with pytest.raises(BundleError, match="no manifest"):
        run_batch_edit(manifest, tmp_path, out, options=FakeOptions())


def test_command_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("emoedit.pipeline.editor")
    from emoedit.cli import CliError
    from emoedit.pipeline import batch
    from emoedit.pipeline.batch_command import register

    manifest, bundle, out = _batch(tmp_path)
    seen: list[Any] = []

    def make(parts: Any, options: Any) -> FakeEditor:
        seen.append(options)
        return FakeEditor(parts, options)

    monkeypatch.setattr(batch, "default_load_parts", fake_load_parts)
    monkeypatch.setattr(batch, "default_make_editor", make)
    parser = argparse.ArgumentParser(prog="emoedit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["batch-edit", str(manifest), "--bundle", str(bundle), "--out", str(out),
                              "--accelerator", "cpu", "--no-teeth", "--no-smoothing", "--texture-mode", "residual",
                              "--smoothing-window", "1", "--quiet"])
    with pytest.raises(CliError, match=r"1 row\(s\) failed"):
        args.func(args)
    printed = capsys.readouterr().out
    assert "3 succeeded, 0 skipped (already done), 1 failed" in printed and "line 3 bad.mp4" in printed
    options = seen[0]
    assert (options.teeth, options.smoothing, options.texture_mode, options.smoothing_half_window,
            options.progress, options.use_classifier) == (False, False, "residual", 1, False, True)
    args = parser.parse_args(["batch-edit", str(manifest), "--bundle", str(bundle), "--out", str(out),
                              "--subject", "M001", "--no-classifier"])
    with pytest.raises(CliError, match="exclude each other"):
        args.func(args)
    args = parser.parse_args(["batch-edit", str(manifest), "--bundle", str(bundle), "--out", str(out),
                              "--no-classifier"])  # rows 4 and 5 name subjects
    with pytest.raises(CliError, match=r"2 row\(s\) do not fit the options:\n  line 4: .*exclude each other"):
        args.func(args)
    (manifest.parent / "x.csv").write_text("input,emotion\nnope.mp4,happy\n")
    args = parser.parse_args(["batch-edit", str(manifest.parent / "x.csv"), "--bundle", str(bundle), "--out", str(out)])
    with pytest.raises(CliError, match="line 2: input 'nope.mp4' not found"):
        args.func(args)


def test_real_bundle_and_video_editor(tmp_path):
    """A bundle built from train.py-format checkpoints drives the real VideoEditor through a batch."""
    editor_tests = pytest.importorskip("tests.test_editor")
    from emoedit.pipeline.bundle import build_bundle
    from emoedit.pipeline.editor import EditOptions, VideoEditor
    from tests.test_bundle import make_world, sources_of

    world = make_world(tmp_path / "world", teeth=False)
    build_bundle(tmp_path / "bundle", sources_of(world, recon=None),
                 fitter={"pose_steps": 4, "shape_steps": 4, "photo_steps": 0})
    clip = editor_tests.render_talking_head(tmp_path / "data" / "clip.mp4", num_frames=4, audio=False)
    manifest = write_csv(tmp_path / "data" / "m.csv", ["input", "emotion", "subject"],
                         [["clip.mp4", "happy", ""], ["clip.mp4", "sad 0.5", "M002"]])

    def make(parts: Any, options: Any) -> VideoEditor:
        return VideoEditor(parts=parts, options=options, detector=clip.detector())

    options = EditOptions(progress=False, preset="ultrafast")
    summary = run_batch_edit(manifest, tmp_path / "bundle", tmp_path / "out", options=options, accelerator="cpu",
                             make_editor=make)
    assert len(summary.succeeded) == 2, summary.describe()
    report = summary.succeeded[0].report
    assert report["num_frames"] == report["frames_with_face"] == 4 and (tmp_path / "out" / "clip__happy.mp4").is_file()
    sidecar = json.loads((tmp_path / "out" / "clip__sad_0.5__m002.mp4.json").read_text())
    assert sidecar["options"]["subject"] == "M002"
    again = run_batch_edit(manifest, tmp_path / "bundle", tmp_path / "out", options=options, accelerator="cpu",
                           make_editor=make)
    assert len(again.skipped) == 2


@pytest.mark.slow
def test_two_ddp_processes(tmp_path):
    """Two gloo ranks share the rows; rank 0 merges both logs into summary.json."""
    manifest, bundle, out = _batch(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, str(Path(__file__).resolve()), str(manifest), str(bundle), str(out), "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / SUMMARY_FILE).read_text())
    assert data["world_size"] == 2 and data["counts"] == {"succeeded": 3, "skipped": 0, "failed": 1}
    ranks = {r["rank"] for status in ("succeeded", "failed") for r in data[status]}
    assert ranks == {0, 1}
    for rank in (0, 1):
        assert len((out / ".batch" / f"rank{rank}.jsonl").read_text().splitlines()) == 2
    pids = {json.loads((out / r["output"]).read_bytes().split(b"\n", 1)[1])["pid"] for r in data["succeeded"]}
    assert len(pids) == 2
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)  # resume on 2 ranks
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / SUMMARY_FILE).read_text())["counts"] == {"succeeded": 0, "skipped": 3, "failed": 1}


def _main(argv: list[str]) -> int:
    manifest, bundle, out, processes = argv
    summary = run_batch_edit(manifest, bundle, out, options=FakeOptions(), num_processes=int(processes),
                             accelerator="cpu", load_parts=fake_load_parts, make_editor=FakeEditor)
    assert len(summary.results) == 4 and summary.world_size == int(processes)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
