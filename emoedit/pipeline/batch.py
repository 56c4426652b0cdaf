"""Batch inference: edit many videos listed in a manifest, on one or several processes, resumably.

**Manifest** — a CSV file (header row) or a JSONL file (one JSON object per line) with the
columns::

    input       video path, relative to the manifest's folder and inside it (required)
    output      output path relative to the output folder (default <stem>__<label>.mp4)
    emotion     an emotion expression: "happy", "happy 0.3", "0.5 sad + 0.5 angry" (strengths α)
    intensity   multiplies the emotion's strengths (default 1.0 = MEAD's strongest level;
                > 1 extrapolates), exactly as ``emoedit edit --intensity``
    schedule    a schedule instead: "0s neutral; 2s happy 1.0; 4s sad 0.5"
    subject     edit as this training subject (eq. 3) instead of the classifier's weights (eq. 4)

Exactly one of ``emotion`` (optionally with ``intensity``) and ``schedule`` per row. Blank
lines and lines starting with ``#`` are ignored. Every row is validated before anything
runs (:func:`read_batch_manifest`): inputs must exist and stay inside the manifest's folder,
outputs inside the output folder (absolute paths and ``..`` escapes are refused, symlinks
are resolved first), outputs must be unique, emotions, intensities and schedules must parse
and subjects must be among the bundle classifier's; all bad rows are reported at once, by
line number.

**Running** — :func:`run_batch_edit` distributes the rows with Lightning ``Trainer.predict``
(a small LightningModule whose ``predict_step`` edits one row; DDP when ``num_processes >
1``, gloo on CPUs). Lightning is imported only when a batch runs (``emoedit`` otherwise
never imports it). Each rank loads the bundle once on its device; each row is edited by
:func:`edit_row` with gradients enabled (the fitting reconstructor optimises).

**Resuming** — next to each output, ``<output>.json`` (the sidecar) records the
:class:`~emoedit.pipeline.editor.EditReport`, the input's SHA-256, the bundle manifest's
SHA-256, the row's request and the edit options. A row whose output exists and whose
sidecar matches (same input bytes, bundle, request and options other than ``progress``
and ``save_intermediates``) is skipped. Outputs and sidecars are written atomically.

**Results** — rank ``k`` appends one JSON line per row to ``<out>/.batch/rank<k>.jsonl``;
when every rank has finished, rank 0 merges them into ``<out>/summary.json``: succeeded,
skipped and failed rows (with the error message). A failing row (no face, corrupt video)
does not stop the others.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from emoedit.atomic_io import atomic_write_text, sha256_file
from emoedit.editing.emotion_code import EmotionSchedule, parse_emotion, parse_emotion_schedule

MANIFEST_COLUMNS: tuple[str, ...] = ("input", "output", "emotion", "intensity", "schedule", "subject")
SIDECAR_FORMAT = "emoedit-batch-edit-output"
SIDECAR_VERSION = 1
SUMMARY_FORMAT = "emoedit-batch-summary"
SUMMARY_VERSION = 1
SUMMARY_FILE = "summary.json"
STATE_DIR = ".batch"  # hidden folder of the output folder: per-rank result logs
DEFAULT_SUFFIX = ".mp4"
#: Edit options that do not change the output video (ignored when matching a sidecar).
VOLATILE_OPTIONS: tuple[str, ...] = ("progress", "save_intermediates")
STATUSES: tuple[str, ...] = ("succeeded", "skipped", "failed")


class BatchManifestError(ValueError):
    """A batch manifest that cannot be read, or rows that are invalid (all listed with line numbers)."""


class RowEditor(Protocol):
    """What edits one video (``emoedit.pipeline.editor.VideoEditor``)."""

    def edit(self, input_path: Any, schedule: EmotionSchedule, out_path: Any) -> Any:
        """Edit ``input_path`` with ``schedule`` into ``out_path`` (atomically); returns a report with ``to_json()``."""


LoadParts = Callable[[Path, torch.device], Any]  # (bundle folder, device) -> parts (EditParts)
MakeEditor = Callable[[Any, Any], RowEditor]  # (parts, options for this row) -> editor


# --------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class BatchRow:
    """One validated manifest row."""

    line: int  # 1-based line number in the manifest file
    input: str  # the input path as written in the manifest
    input_path: Path  # resolved input file, inside the manifest's folder
    output: str  # output path relative to the output folder
    output_path: Path  # resolved output file, inside the output folder
    emotion: str | None = None  # emotion expression ("happy", "happy 0.3", "0.5 sad + 0.5 angry")
    intensity: float | None = None  # multiplier of the expression's strengths (None = 1.0), as ``emoedit edit``
    schedule: str | None = None  # emotion schedule text
    subject: str | None = None  # known training subject (eq. 3); None = the classifier's weights (eq. 4)

    def request(self) -> dict[str, Any]:
        """What the row asks for (recorded in the sidecar and compared when resuming)."""
        return {"emotion": self.emotion, "intensity": self.intensity, "schedule": self.schedule,
                "subject": self.subject}

    def emotion_schedule(self) -> EmotionSchedule:
        """The row's emotion code as a function of time."""
        if self.schedule is not None:
            return parse_emotion_schedule(self.schedule)
        assert self.emotion is not None
        scale = 1.0 if self.intensity is None else self.intensity
        return EmotionSchedule.constant(parse_emotion(self.emotion, dtype=torch.float64) * scale)

    @property
    def sidecar_path(self) -> Path:
        """``<output>.json``."""
        return self.output_path.with_name(self.output_path.name + ".json")


def _label(text: str, limit: int = 60) -> str:
    """A file-name-safe label of an emotion expression or schedule (hash-suffixed when shortened)."""
    label = re.sub(r"[^a-z0-9.]+", "_", text.lower()).strip("_.") or "edit"
    if len(label) > limit:
        label = label[:limit].rstrip("_.") + "_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return label


def default_output(input_text: str, *, emotion: str | None, intensity: float | None, schedule: str | None,
                   subject: str | None) -> str:
    """``<stem>__<label>[__<subject>].mp4`` (relative to the output folder)."""
    if schedule is not None:
        label = _label(schedule)
    else:
        label = _label(str(emotion)) + ("" if intensity is None else f"_x{intensity:g}")
    name = f"{Path(input_text).stem}__{label}"
    if subject:
        name += f"__{_label(subject)}"
    return name + DEFAULT_SUFFIX


def _confined(root: Path, text: str, what: str) -> Path:
    """``root / text`` resolved; ``ValueError`` when absolute or outside ``root``."""
    path = Path(text)
    if path.is_absolute() or path.drive:
        raise ValueError(f"{what} {text!r} is absolute; give it relative to {root}")
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"{what} {text!r} leaves {root} (after resolving '..' and links: {resolved})")
    return resolved


def _read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, record)`` pairs of a CSV or JSONL manifest; unknown columns are an error."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise BatchManifestError(f"{path}: cannot read the manifest ({err})") from None
    records: list[tuple[int, dict[str, Any]]] = []
    if suffix == ".csv":
        lines = text.splitlines()
        reader = csv.reader(lines, skipinitialspace=True)
        header: list[str] | None = None
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                unknown = [c for c in header if c not in MANIFEST_COLUMNS]
                if unknown or "input" not in header or len(set(header)) != len(header):
                    raise BatchManifestError(f"{path}:{line}: header {header}: columns must be among "
                                             f"{list(MANIFEST_COLUMNS)}, unique, with 'input' (unknown: {unknown})")
                continue
            if len(row) > len(header):
                records.append((line, {"__error__": f"{len(row)} cells, the header has {len(header)}"}))
                continue
            records.append((line, {k: v.strip() for k, v in zip(header, row) if v.strip()}))
        if header is None:
            raise BatchManifestError(f"{path}: empty manifest (no header row)")
    elif suffix in (".jsonl", ".ndjson"):
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                records.append((line, {"__error__": f"not JSON ({err.msg})"}))
                continue
            if not isinstance(record, dict):
                records.append((line, {"__error__": f"expected a JSON object, got {type(record).__name__}"}))
                continue
            unknown = sorted(set(record) - set(MANIFEST_COLUMNS))
            if unknown:
                records.append((line, {"__error__": f"unknown keys {unknown}; known: {list(MANIFEST_COLUMNS)}"}))
                continue
            records.append((line, {k: v for k, v in record.items() if v is not None and v != ""}))
    else:
        raise BatchManifestError(f"{path}: manifest must be .csv or .jsonl, got {path.suffix!r}")
    return records


def _row(line: int, record: Mapping[str, Any], *, root: Path, out_dir: Path,
         subjects: Sequence[str] | None) -> BatchRow:
    if "__error__" in record:
        raise ValueError(record["__error__"])
    for key, value in record.items():
        if key != "intensity" and not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
    if "input" not in record:
        raise ValueError("no input")
    input_path = _confined(root, record["input"], "input")
    if not input_path.is_file():
        raise ValueError(f"input {record['input']!r} not found ({input_path})")
    emotion, schedule, subject = record.get("emotion"), record.get("schedule"), record.get("subject")
    if (emotion is None) == (schedule is None):
        raise ValueError("give exactly one of emotion (with an optional intensity) and schedule")
    intensity: float | None = None
    if "intensity" in record:
        if emotion is None:
            raise ValueError("intensity goes with emotion, not with schedule")
        try:
            intensity = float(record["intensity"])
        except (TypeError, ValueError):
            raise ValueError(f"intensity {record['intensity']!r} is not a number") from None
        if not math.isfinite(intensity) or intensity < 0:
            raise ValueError(f"intensity must be a finite number >= 0, got {intensity}")
    if subject is not None and subjects is not None and subject not in subjects:
        raise ValueError(f"subject {subject!r} is not among the bundle classifier's subjects {list(subjects)[:10]}")
    output = record.get("output") or default_output(record["input"], emotion=emotion, intensity=intensity,
                                                    schedule=schedule, subject=subject)
    output_path = _confined(out_dir, output, "output")
    if output_path.suffix == "":
        raise ValueError(f"output {output!r} has no file extension (e.g. .mp4)")
    row = BatchRow(line=line, input=record["input"], input_path=input_path,
                   output=output_path.relative_to(out_dir.resolve()).as_posix(), output_path=output_path,
                   emotion=emotion, intensity=intensity, schedule=schedule, subject=subject)
    row.emotion_schedule()  # parse errors name the expression
    return row


def read_batch_manifest(
    manifest: str | os.PathLike,  # .csv or .jsonl
    out_dir: str | os.PathLike,  # output folder (default outputs go here)
    *,
    subjects: Sequence[str] | None = None,  # allowed ``subject`` values (the classifier's); None = any
) -> list[BatchRow]:
    """Every row of ``manifest``, validated; :class:`BatchManifestError` lists every bad row by line."""
    path = Path(manifest)
    if not path.is_file():
        raise BatchManifestError(f"{path}: manifest not found")
    root, out = path.resolve().parent, Path(out_dir).resolve()
    rows: list[BatchRow] = []
    problems: list[str] = []
    seen: dict[Path, int] = {}
    for line, record in _read_records(path):
        try:
            row = _row(line, record, root=root, out_dir=out, subjects=subjects)
        except ValueError as err:
            problems.append(f"line {line}: {err}")
            continue
        if row.output_path in seen:
            problems.append(f"line {line}: output {row.output!r} is also the output of line {seen[row.output_path]} "
                            "(set the output column)")
            continue
        seen[row.output_path] = line
        rows.append(row)
    inputs: dict[Path, int] = {}
    for row in rows:
        inputs.setdefault(row.input_path, row.line)
    problems += [f"line {row.line}: output {row.output!r} would overwrite the input of line {inputs[row.output_path]}"
                 for row in rows if row.output_path in inputs]
    if problems:
        problems.sort(key=lambda text: int(text.split(":", 1)[0].split()[1]))
        raise BatchManifestError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems))
    if not rows:
        raise BatchManifestError(f"{path}: no rows")
    return rows


# --------------------------------------------------------------------------- one row
@dataclass(frozen=True)
class RowResult:
    """What happened to one row."""

    line: int  # manifest line
    input: str  # as written in the manifest
    output: str  # relative to the output folder
    status: str  # "succeeded", "skipped" (output and matching sidecar existed) or "failed"
    error: str | None = None  # "ExceptionType: message" of a failed row
    seconds: float = 0.0  # wall time spent on the row
    rank: int = 0  # the process that handled it
    report: dict[str, Any] | None = None  # EditReport.to_json() (of this run, or the sidecar's when skipped)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RowResult:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def options_to_json(options: Any) -> dict[str, Any]:
    """The edit options (a dataclass) as plain JSON."""
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        values = dataclasses.asdict(options)
    elif isinstance(options, Mapping):
        values = dict(options)
    else:
        raise TypeError(f"options must be a dataclass (EditOptions), got {type(options).__name__}")
    return json.loads(json.dumps(values, default=str))


def _options_key(options_json: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options_json.items() if k not in VOLATILE_OPTIONS}


def row_options(options: Any, row: BatchRow) -> Any:
    """The options for one row: its subject, and its own intermediates folder (``<dir>/<output stem>``)."""
    changes: dict[str, Any] = {}
    if row.subject is not None:
        changes["subject"] = row.subject
    intermediates = getattr(options, "save_intermediates", None)
    if intermediates:
        changes["save_intermediates"] = str(Path(intermediates) / Path(row.output).with_suffix(""))
    return dataclasses.replace(options, **changes) if changes else options


def _sidecar(row: BatchRow, *, input_sha256: str, bundle_sha256: str, options_json: Mapping[str, Any],
             report: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "input": row.input, "input_sha256": input_sha256,
            "bundle_manifest_sha256": bundle_sha256, "request": row.request(), "options": dict(options_json),
            "report": dict(report)}


def matching_sidecar(row: BatchRow, *, input_sha256: str, bundle_sha256: str,
                     options_json: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row's sidecar when the output exists and the sidecar matches this request, else None."""
    if not row.output_path.is_file() or not row.sidecar_path.is_file():
        return None
    try:
        sidecar = json.loads(row.sidecar_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        return None
    same = (sidecar.get("version") == SIDECAR_VERSION and sidecar.get("input_sha256") == input_sha256
            and sidecar.get("bundle_manifest_sha256") == bundle_sha256 and sidecar.get("request") == row.request()
            and _options_key(sidecar.get("options") or {}) == _options_key(options_json))
    return sidecar if same else None


def edit_row(
    row: BatchRow,  # the row to edit
    *,
    parts: Any,  # the loaded bundle (EditParts), given to make_editor
    options: Any,  # the batch's edit options (EditOptions)
    make_editor: MakeEditor,  # (parts, row options) -> editor
    bundle_sha256: str,  # SHA-256 of the bundle's manifest.json
    rank: int = 0,  # the process handling the row
) -> RowResult:
    """Edit one row (or skip it when its output and sidecar match); never raises for a bad video."""
    start = time.perf_counter()
    base = dict(line=row.line, input=row.input, output=row.output, rank=rank)
    try:
        options_for_row = row_options(options, row)
        options_json = options_to_json(options_for_row)
        input_sha = sha256_file(row.input_path)
        sidecar = matching_sidecar(row, input_sha256=input_sha, bundle_sha256=bundle_sha256, options_json=options_json)
        if sidecar is not None:
            return RowResult(**base, status="skipped", seconds=time.perf_counter() - start,
                             report=sidecar.get("report"))
        row.output_path.parent.mkdir(parents=True, exist_ok=True)
        editor = make_editor(parts, options_for_row)
        with torch.inference_mode(False), torch.enable_grad():
            report = editor.edit(row.input_path, row.emotion_schedule(), row.output_path)
        report_json = report.to_json() if hasattr(report, "to_json") else dict(report)
        report_json = json.loads(json.dumps(report_json, default=str))
        if not row.output_path.is_file():
            raise RuntimeError(f"the editor reported success but wrote no {row.output_path}")
        atomic_write_text(row.sidecar_path, json.dumps(_sidecar(
            row, input_sha256=input_sha, bundle_sha256=bundle_sha256, options_json=options_json,
            report=report_json), indent=2) + "\n")
        return RowResult(**base, status="succeeded", seconds=time.perf_counter() - start, report=report_json)
    except Exception as err:  # one bad video must not stop the batch
        message = f"{type(err).__name__}: {err}"
        last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
        if last:
            message += f" (at {Path(last[0].filename).name}:{last[0].lineno})"
        return RowResult(**base, status="failed", error=message, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class BatchSummary:
    """The merged result of a batch (``<out>/summary.json``)."""

    manifest: str  # manifest file
    bundle: str  # bundle folder
    bundle_manifest_sha256: str  # SHA-256 of the bundle's manifest.json
    out_dir: str  # output folder
    world_size: int  # processes that ran
    results: tuple[RowResult, ...]  # one per manifest row, in manifest order
    seconds: float  # wall time of the whole batch (rank 0)
    rank: int = 0  # the process this object was returned in (print only on rank 0)

    def by_status(self, status: str) -> list[RowResult]:
        return [r for r in self.results if r.status == status]

    @property
    def succeeded(self) -> list[RowResult]:
        return self.by_status("succeeded")

    @property
    def skipped(self) -> list[RowResult]:
        return self.by_status("skipped")

    @property
    def failed(self) -> list[RowResult]:
        return self.by_status("failed")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SUMMARY_FORMAT, "version": SUMMARY_VERSION, "manifest": self.manifest, "bundle": self.bundle,
            "bundle_manifest_sha256": self.bundle_manifest_sha256, "out_dir": self.out_dir,
            "world_size": self.world_size, "seconds": round(self.seconds, 3),
            "counts": {status: len(self.by_status(status)) for status in STATUSES},
            **{status: [r.to_json() for r in self.by_status(status)] for status in STATUSES},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, rank: int = 0) -> BatchSummary:
        results = sorted((RowResult.from_json(r) for status in STATUSES for r in data.get(status, ())),
                         key=lambda r: r.line)
        return cls(manifest=data["manifest"], bundle=data["bundle"],
                   bundle_manifest_sha256=data["bundle_manifest_sha256"], out_dir=data["out_dir"],
                   world_size=int(data["world_size"]), results=tuple(results), seconds=float(data["seconds"]),
                   rank=rank)

    def describe(self) -> str:
        lines = [f"{len(self.succeeded)} succeeded, {len(self.skipped)} skipped (already done), "
                 f"{len(self.failed)} failed, {self.seconds:.1f} s on {self.world_size} process(es)"]
        lines += [f"  line {r.line} {r.input}: {r.error}" for r in self.failed]
        return "\n".join(lines)


def rank_log(out_dir: Path, rank: int) -> Path:
    """``<out>/.batch/rank<k>.jsonl``."""
    return out_dir / STATE_DIR / f"rank{rank}.jsonl"


def merge_results(rows: Sequence[BatchRow], out_dir: Path, world_size: int) -> list[RowResult]:
    """One result per row from the ranks' logs (a row without a result is a failure)."""
    found: dict[int, RowResult] = {}
    for rank in range(world_size):
        path = rank_log(out_dir, rank)
        if not path.is_file():
            continue
        for raw in path.read_text(encoding="utf-8").splitlines():
            if raw.strip():
                try:
                    result = RowResult.from_json(json.loads(raw))
                except (json.JSONDecodeError, TypeError, KeyError):
                    continue
                found[result.line] = result
    return [found.get(row.line) or RowResult(line=row.line, input=row.input, output=row.output, status="failed",
                                             error="no result: the process editing this row stopped")
            for row in rows]


def write_summary(summary: BatchSummary, out_dir: Path) -> Path:
    data = summary.to_json()
    data["finished_utc"] = (datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
                            .replace("+00:00", "Z"))
    return atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- Lightning plumbing
def default_load_parts(bundle_dir: Path, device: torch.device) -> Any:
    """Load (and verify) the bundle on ``device``."""
    from emoedit.pipeline.bundle import load_bundle

    return load_bundle(bundle_dir, device=device, verify=True)


def default_make_editor(parts: Any, options: Any) -> RowEditor:
    """A :class:`~emoedit.pipeline.editor.VideoEditor` over the loaded parts."""
    from emoedit.pipeline.editor import VideoEditor

    return VideoEditor(parts=parts, options=options)


def _first(items: list[Any]) -> Any:
    return items[0]


def _predict_module(**kwargs: Any) -> Any:
    """The LightningModule that edits one row per ``predict_step`` (Lightning imported here only)."""
    import pytorch_lightning as pl

    class BatchEditModule(pl.LightningModule):
        def __init__(self, *, rows: Sequence[BatchRow], manifest: Path, bundle_dir: Path, out_dir: Path,
                     options: Any, bundle_sha256: str, load_parts: LoadParts, make_editor: MakeEditor,
                     start: float) -> None:
            super().__init__()
            self.rows, self.manifest, self.bundle_dir, self.out_dir = list(rows), manifest, bundle_dir, out_dir
            self.options, self.bundle_sha256, self.start = options, bundle_sha256, start
            self.load_parts, self.make_editor = load_parts, make_editor
            self.parts: Any = None

        def on_predict_start(self) -> None:
            log = rank_log(self.out_dir, self.global_rank)
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("", encoding="utf-8")  # this run's results only
            self.parts = self.load_parts(self.bundle_dir, self.device)

        def predict_step(self, index: int, batch_idx: int) -> str:
            row = self.rows[int(index)]
            result = edit_row(row, parts=self.parts, options=self.options, make_editor=self.make_editor,
                              bundle_sha256=self.bundle_sha256, rank=self.global_rank)
            with open(rank_log(self.out_dir, self.global_rank), "a", encoding="utf-8") as handle:
                handle.write(json.dumps(result.to_json()) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            return result.status

        def on_predict_end(self) -> None:
            strategy = self.trainer.strategy
            strategy.barrier("batch-edit-results")
            if self.trainer.is_global_zero:
                world = self.trainer.world_size
                results = merge_results(self.rows, self.out_dir, world)
                write_summary(BatchSummary(
                    manifest=str(self.manifest), bundle=str(self.bundle_dir), bundle_manifest_sha256=self.bundle_sha256,
                    out_dir=str(self.out_dir), world_size=world, results=tuple(results),
                    seconds=time.perf_counter() - self.start), self.out_dir)
            strategy.barrier("batch-edit-summary")

    return BatchEditModule(**kwargs)


def run_batch_edit(
    manifest: str | os.PathLike,  # .csv or .jsonl (see the module docstring)
    bundle_dir: str | os.PathLike,  # a pipeline bundle (emoedit bundle)
    out_dir: str | os.PathLike,  # output folder (videos, sidecars, summary.json, .batch/)
    *,
    options: Any,  # EditOptions for every row (a row's subject overrides options.subject)
    num_processes: int = 1,  # ranks (DDP when > 1; one device each)
    accelerator: str = "auto",  # Lightning accelerator: auto, cpu, gpu, cuda
    load_parts: LoadParts | None = None,  # None: load_bundle(bundle_dir, device=...)
    make_editor: MakeEditor | None = None,  # None: VideoEditor(parts=..., options=...)
) -> BatchSummary:
    """Edit every row of ``manifest`` (see the module docstring); returns the merged summary on every rank.

    Raises :class:`BatchManifestError` (every bad row) or a bundle error before anything
    runs; failures of single rows are recorded, not raised.
    """
    import pytorch_lightning as pl

    from emoedit.pipeline.bundle import MANIFEST_FILE, read_manifest

    start = time.perf_counter()
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    bundle = Path(bundle_dir).resolve()
    bundle_manifest = read_manifest(bundle)
    subjects = (bundle_manifest["parts"]["classifier"].get("info") or {}).get("subjects")
    out = Path(out_dir).resolve()
    rows = read_batch_manifest(manifest, out, subjects=subjects)
    problems: list[str] = []
    for row in rows:  # options that do not fit a row (e.g. a subject with --no-classifier) fail now, not later
        try:
            row_options(options, row)
        except ValueError as err:
            problems.append(f"line {row.line}: {err}")
    if problems:
        raise BatchManifestError(f"{manifest}: {len(problems)} row(s) do not fit the options:\n  "
                                 + "\n  ".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # rank 0 writes this run's when every rank has finished
    bundle_sha = sha256_file(bundle / MANIFEST_FILE)
    options_to_json(options)  # fail early on options that cannot be recorded
    module = _predict_module(rows=rows, manifest=Path(manifest).resolve(), bundle_dir=bundle, out_dir=out,
                             options=options, bundle_sha256=bundle_sha, load_parts=load_parts or default_load_parts,
                             make_editor=make_editor or default_make_editor, start=start)
    processes = min(num_processes, len(rows))  # a rank without rows would not reach the merge barrier
    trainer = pl.Trainer(
        accelerator=accelerator, devices=processes, strategy="ddp" if processes > 1 else "auto",
        logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=bool(getattr(options, "progress", False)), inference_mode=False,
        default_root_dir=str(out / STATE_DIR),
    )
    loader = torch.utils.data.DataLoader(list(range(len(rows))), batch_size=1, shuffle=False, collate_fn=_first)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    data = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    return BatchSummary.from_json(data, rank=trainer.global_rank)


__all__ = [
    "MANIFEST_COLUMNS",
    "SUMMARY_FILE",
    "BatchManifestError",
    "BatchRow",
    "BatchSummary",
    "RowResult",
    "default_output",
    "edit_row",
    "matching_sidecar",
    "merge_results",
    "read_batch_manifest",
    "run_batch_edit",
]
