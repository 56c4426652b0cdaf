"""A small resumable stage runner (``make demo``: every stage is done at most once per output folder).

A *stage* is a named unit of work with *settings* (a JSON-able description of what it is
asked to do) and *outputs* (what it produced: paths relative to the output folder and
numbers). After a stage succeeds, :class:`StageRunner` writes the stamp
``<out>/.stages/<name>.json`` atomically::

    {"name": ..., "settings": {...}, "outputs": {...}, "files": [...], "seconds": 12.3, "finished": "..."}

Re-running with the same settings skips every stamped stage whose recorded ``files`` still
exist (a stage whose stamp is missing simply runs again; the stage functions of the demo
are themselves resumable — world generation, preprocessing and ``train.py ckpt_path=last``
continue where they stopped). What happens to a stamp whose settings differ from the ones
asked for is the caller's explicit choice, :class:`OnSettingsChange`:

- ``REFUSE`` (the default; the method's stages): raise :class:`StageSettingsError` — the
  folder holds the results of another configuration, and mixing them would be silent
  nonsense, so the user picks a new output folder or restarts;
- ``RERUN`` (the evaluation lane): remove the stage's outputs (the paths the caller names)
  and its stamp, then run it again.

Timing: each stage's wall time (of the run that did the work) is stored in its stamp;
:meth:`StageRunner.report` lists them with the total.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from emoedit.atomic_io import atomic_write_text

STAMP_DIR = ".stages"  # folder of the stamps inside the output folder
STAMP_FORMAT = "emoedit-demo-stage"  # "format" field of every stamp
STAMP_VERSION = 1


class StageError(RuntimeError):
    """A stage cannot run or its stamp cannot be read (the message names the stamp file)."""


class StageSettingsError(StageError):
    """A stage was already done in this folder with other settings."""


class OnSettingsChange(str, enum.Enum):
    """What :meth:`StageRunner.is_done` / :meth:`StageRunner.run` do when the stage's stamp holds
    other settings than the ones asked for now."""

    REFUSE = "refuse"  # raise StageSettingsError (use a new output folder or --restart)
    RERUN = "rerun"  # remove the stage's outputs and its stamp, then run it again


@dataclass(frozen=True)
class StageResult:
    """What a stage function returns: plain JSON-able numbers/strings and the files it wrote."""

    outputs: Mapping[str, Any] = field(default_factory=dict)  # JSON-able values (paths as strings relative to out)
    files: tuple[str, ...] = ()  # paths relative to the output folder that must exist for the stage to count as done


@dataclass(frozen=True)
class StageRecord:
    """One stamp: a stage that finished (now or in an earlier run)."""

    name: str  # stage name (file name of the stamp)
    settings: Mapping[str, Any]  # the settings it ran with (JSON-normalised)
    outputs: Mapping[str, Any]  # what it produced (StageResult.outputs)
    files: tuple[str, ...]  # files it wrote, relative to the output folder
    seconds: float  # wall time of the run that did the work, s
    finished: str  # ISO time it finished
    cpu_seconds: float | None = None  # user + system CPU time of the work (this process and its children), s
    reused: bool = False  # True: read from the stamp of an earlier run, nothing was done now

    def to_json(self) -> dict[str, Any]:
        """The stamp's JSON body (``reused`` is not stored: it describes this run only)."""
        return {"format": STAMP_FORMAT, "version": STAMP_VERSION, "name": self.name, "settings": dict(self.settings),
                "outputs": dict(self.outputs), "files": list(self.files), "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds, "finished": self.finished}


def normalise_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as plain JSON values (tuples → lists, paths → strings), so they compare equal
    to what a stamp file reads back. Raises ``TypeError`` for values JSON cannot hold."""
    return json.loads(json.dumps(settings, default=_json_default, sort_keys=True))


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"stage settings: {type(value).__name__} is not JSON-able ({value!r})")


def settings_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-normalised settings trees (``old → new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name}: (absent) → {_short(new[key])}")
            elif key not in new:
                out.append(f"{name}: {_short(old[key])} → (absent)")
            else:
                out.extend(settings_differences(old[key], new[key], name))
        return out
    if old != new:
        return [f"{prefix or '(settings)'}: {_short(old)} → {_short(new)}"]
    return []


def _listed(changes: Sequence[str], limit: int) -> str:
    """The first ``limit`` of ``changes`` joined with "; ", and how many there are in all when more."""
    return "; ".join(changes[:limit]) + (f"; ... ({len(changes)} in all)" if len(changes) > limit else "")


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished (waited-for) children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def format_seconds(seconds: float) -> str:
    """``83.2`` → ``"1 min 23 s"``; under a minute ``"12.3 s"``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


class StageRunner:
    """Runs named stages once per output folder (see the module docstring).

    ``log`` receives one line per stage start / finish / skip (default: stdout).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],  # the output folder; stamps go to <out_dir>/.stages
        *,
        stream: TextIO | None = None,  # where progress lines go (None: sys.stdout at call time)
    ) -> None:
        self.out_dir = Path(out_dir)
        self._stream = stream
        self.records: list[StageRecord] = []  # stages done or reused by this runner, in order
        self._start = time.perf_counter()

    # ------------------------------------------------------------------ stamps
    @property
    def stamp_dir(self) -> Path:
        """``<out>/.stages``."""
        return self.out_dir / STAMP_DIR

    def stamp_path(self, name: str) -> Path:
        """The stamp file of stage ``name``."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise StageError(f"bad stage name {name!r}")
        return self.stamp_dir / f"{name}.json"

    def read_stamp(self, name: str) -> StageRecord | None:
        """The stamp of ``name`` (None when the stage has not finished here)."""
        path = self.stamp_path(name)
        if not path.is_file():
            return None
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise StageError(f"{path}: unreadable stage stamp ({error}); delete it to run the stage again") from error
        if not isinstance(body, dict) or body.get("format") != STAMP_FORMAT or body.get("name") != name:
            raise StageError(f"{path}: not a stamp of stage {name!r}; delete it to run the stage again")
        if body.get("version") != STAMP_VERSION:
            raise StageError(f"{path}: stamp version {body.get('version')} (expected {STAMP_VERSION}); "
                             "use a new output folder or --restart")
        return StageRecord(name=name, settings=body.get("settings", {}), outputs=body.get("outputs", {}),
                           files=tuple(body.get("files", ())), seconds=float(body.get("seconds", 0.0)),
                           finished=str(body.get("finished", "")), cpu_seconds=body.get("cpu_seconds"),
                           reused=True)

    def is_done(
        self,
        name: str,  # stage name
        settings: Mapping[str, Any],  # the settings asked for now
        *,
        on_change: OnSettingsChange = OnSettingsChange.REFUSE,  # what a stamp with other settings means
        outputs: Sequence[str | os.PathLike[str]] = (),  # RERUN: what the stage wrote (removed with its stamp);
        # relative paths are inside the output folder
    ) -> StageRecord | None:
        """The stamp of ``name`` if the stage is done with exactly these settings and its files
        exist; None if it must run. The stamp is read once. A stamp with other settings:
        ``REFUSE`` raises :class:`StageSettingsError`; ``RERUN`` removes ``outputs`` and the
        stamp and returns None."""
        on_change = OnSettingsChange(on_change)
        record = self.read_stamp(name)
        if record is None:
            return None
        wanted = normalise_settings(settings)
        if record.settings != wanted:
            changes = settings_differences(record.settings, wanted)
            if on_change is OnSettingsChange.REFUSE:
                raise StageSettingsError(
                    f"{self.out_dir}: stage '{name}' was done here with other settings ({_listed(changes, 6)}). "
                    "Use a new output folder (--out DIR) or start over in this one (--restart).")
            self._say(f"[{name}] settings changed ({_listed(changes, 4)}): running it again")
            self._forget(name, outputs)
            return None
        missing = [f for f in record.files if not (self.out_dir / f).exists()]
        if missing:
            self._say(f"[{name}] stamp found but {missing[0]} is missing: running it again")
            return None
        return record

    def _forget(self, name: str, outputs: Sequence[str | os.PathLike[str]]) -> None:
        """Remove ``outputs`` (files or folders) and the stamp of ``name``."""
        for output in outputs:
            path = self.out_dir / output
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.stamp_path(name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ running
    def run(
        self,
        name: str,  # stage name (unique within the output folder)
        settings: Mapping[str, Any],  # what the stage is asked to do (JSON-able)
        work: Callable[[], StageResult],  # does the work (must itself be resumable if interrupted)
        *,
        title: str | None = None,  # human-readable description for the progress line
        on_change: OnSettingsChange = OnSettingsChange.REFUSE,  # what a stamp with other settings means (is_done)
        outputs: Sequence[str | os.PathLike[str]] = (),  # RERUN: what the stage wrote (is_done)
    ) -> StageRecord:
        """Run ``work`` unless the stage is already done with these settings; return its record."""
        done = self.is_done(name, settings, on_change=on_change, outputs=outputs)
        if done is not None:
            return self.reuse(done, title=title)
        self._say(f"[{name}] {title or name} ...")
        start, cpu_start = time.perf_counter(), cpu_seconds()
        result = work()
        if not isinstance(result, StageResult):
            raise StageError(f"stage '{name}': the stage function returned {type(result).__name__}, not StageResult")
        seconds = time.perf_counter() - start
        return self.record(name, settings, result, seconds, cpu=cpu_seconds() - cpu_start)

    def reuse(
        self,
        done: StageRecord,  # a stamp is_done returned
        *,
        title: str | None = None,  # human-readable description for the progress line
    ) -> StageRecord:
        """Count a stage done by an earlier run as this run's (for stages whose work runs outside :meth:`run`)."""
        self.records.append(done)
        self._say(f"[{done.name}] done earlier ({format_seconds(done.seconds)}): {title or done.name}")
        return done

    def record(
        self,
        name: str,  # stage name
        settings: Mapping[str, Any],  # its settings (as given to run)
        result: StageResult,  # what it produced
        seconds: float,  # its wall time, s
        *,
        cpu: float | None = None,  # its CPU time, s (None: unknown)
    ) -> StageRecord:
        """Write the stamp of a stage that finished (also used for stages run outside :meth:`run`)."""
        missing = [f for f in result.files if not (self.out_dir / f).exists()]
        if missing:
            raise StageError(f"stage '{name}' says it wrote {missing[0]}, which does not exist")
        record = StageRecord(
            name=name, settings=normalise_settings(settings),
            outputs=json.loads(json.dumps(dict(result.outputs), default=_json_default)),
            files=tuple(result.files), seconds=float(seconds),
            finished=datetime.datetime.now().astimezone().isoformat(timespec="milliseconds"),
            cpu_seconds=None if cpu is None else round(float(cpu), 2),
        )
        atomic_write_text(self.stamp_path(name), json.dumps(record.to_json(), indent=2) + "\n")
        self.records.append(record)
        self._say(f"[{name}] finished in {format_seconds(seconds)}")
        return record

    # ------------------------------------------------------------------ reporting
    @property
    def elapsed(self) -> float:
        """Seconds since this runner was made."""
        return time.perf_counter() - self._start

    @staticmethod
    def wall_total(records: Sequence[StageRecord]) -> float:
        """Wall time of the stages: the sum, except that stages whose runs overlapped in time
        (the training lanes) count once, from the first start to the last finish."""
        spans = []
        for r in records:
            try:
                end = datetime.datetime.fromisoformat(r.finished).timestamp()
            except ValueError:
                return sum(x.seconds for x in records)
            spans.append((end - r.seconds, end))
        spans.sort()
        total, current = 0.0, None
        for begin, end in spans:
            if current is None or begin > current[1]:
                if current is not None:
                    total += current[1] - current[0]
                current = [begin, end]
            else:
                current[1] = max(current[1], end)
        if current is not None:
            total += current[1] - current[0]
        return total

    def report(self, names: Sequence[str] | None = None) -> str:
        """A table of the stages (this run's or earlier runs' times) and their total."""
        records = self.records if names is None else [r for r in self.records if r.name in set(names)]
        width = max([len(r.name) for r in records] + [5])
        lines = [f"{'stage':<{width}}  {'wall time':>11}  {'CPU time':>11}  note"]
        for r in records:
            note = "done in an earlier run" if r.reused else ""
            cpu = format_seconds(r.cpu_seconds) if r.cpu_seconds is not None else "?"
            lines.append(f"{r.name:<{width}}  {format_seconds(r.seconds):>11}  {cpu:>11}  {note}".rstrip())
        cpu_total = sum(r.cpu_seconds or 0.0 for r in records)
        lines.append(f"{'all stages':<{width}}  {format_seconds(self.wall_total(records)):>11}  "
                     f"{format_seconds(cpu_total):>11}  (this run: {format_seconds(self.elapsed)})")
        return "\n".join(lines)

    def _say(self, text: str) -> None:
        stream = self._stream or sys.stdout
        print(text, file=stream, flush=True)


__all__ = [
    "OnSettingsChange",
    "STAMP_DIR",
    "StageError",
    "StageRecord",
    "StageResult",
    "StageRunner",
    "StageSettingsError",
    "format_seconds",
    "normalise_settings",
    "settings_differences",
]
