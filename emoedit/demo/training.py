"""Training the parts for the demo: train.py in worker processes ("lanes"), with progress bars.

Each part is one :class:`TrainJob`: ``train.run`` of train.py's table with
``experiment=<name>``, the job's ``key=value`` overrides, ``ckpt_path=last`` (an interrupted
run continues from its last checkpoint) and the step / time caps (``trainer.max_steps``,
``trainer.max_time``).

Jobs run in *lanes*: a lane is one worker process (``python -m emoedit.demo.training
LANE.json``, one torch thread on CPU) that trains its jobs one after the other, so the
imports and start-up are paid once per lane rather than once per part (5-15 s each on a
busy 2-core machine). Two lanes use the two cores of a small machine; a lane's jobs must
not depend on another lane's (checked). A crash of a part cannot take the demo's own
process down.

The worker reports progress through a small JSON status file per job (global step,
seconds) that the parent turns into one progress bar per lane; the worker's full output
(Lightning, W&B) goes to ``<runs>/lane<k>.log``. After each job the worker writes the job's
``result.json`` (steps, seconds, CPU seconds, checkpoint); the parent then calls
``on_done`` (which writes the part's stage stamp), so finished parts survive an
interruption of the lane.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from emoedit.atomic_io import atomic_write_text
from emoedit.demo.stages import cpu_seconds

REPO_ROOT = Path(__file__).resolve().parents[2]  # train.py and configs/ live here
STATUS_INTERVAL_S = 1.0  # the worker rewrites its status file at most this often


class TrainingError(RuntimeError):
    """A part's training failed (the message names its log file)."""


def check_source_checkout() -> None:
    """The demo trains with the repository's train.py and configs/: raise if they are not beside the package."""
    missing = [name for name in ("train.py", "configs") if not (REPO_ROOT / name).exists()]
    if missing:
        raise TrainingError(f"{REPO_ROOT}: no {' or '.join(missing)} here; the demo runs from a source checkout "
                            "of emoedit (pip install -e .), not from an installed wheel")


@dataclass(frozen=True)
class TrainJob:
    """One part's training run (what the worker process needs, JSON-able)."""

    part: str  # train.py part name
    run_dir: str  # absolute run folder (checkpoints/last.ckpt is the result)
    experiment: str  # configs/experiment/<experiment>.yaml
    overrides: tuple[str, ...]  # train.py key=value overrides (data, model inputs, logger)
    max_steps: int  # trainer.max_steps
    max_seconds: int  # trainer.max_time in seconds (0: no cap)
    checkpoint_every: int  # checkpoint.every_n_train_steps (resume granularity)
    validate: bool  # False: trainer.limit_val_batches=0
    seed: int  # training seed
    threads: int  # torch intra-op threads of the worker
    accelerator: str  # "cpu" or "gpu"

    @property
    def status_file(self) -> Path:
        """Progress of the running job (step, seconds)."""
        return Path(self.run_dir) / "status.json"

    @property
    def result_file(self) -> Path:
        """Written by the worker when the job has finished."""
        return Path(self.run_dir) / "result.json"

    @property
    def checkpoint(self) -> Path:
        """The final weights (train.py keeps last.ckpt at the final step)."""
        return Path(self.run_dir) / "checkpoints" / "last.ckpt"

    def train_overrides(self) -> list[str]:
        """Every train.py override of the run, in order (later ones win)."""
        out = [f"experiment={self.experiment}", f"output_dir={self.run_dir}", f"seed={self.seed}", "ckpt_path=last",
               *self.overrides, f"trainer.max_steps={self.max_steps}", "trainer.enable_progress_bar=false",
               f"checkpoint.every_n_train_steps={self.checkpoint_every}",
               f"trainer.accelerator={self.accelerator}"]
        if self.max_seconds > 0:
            out.append(f"trainer.max_time={json.dumps({'seconds': int(self.max_seconds)})}")
        if not self.validate:
            out.append("trainer.limit_val_batches=0")
            out.append("trainer.num_sanity_val_steps=0")
        return out

    def settings(self) -> dict[str, Any]:
        """What the stage stamp records (everything that changes the result)."""
        body = asdict(self)
        body["overrides"] = list(self.overrides)
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TrainJob:
        values = dict(body)
        values["overrides"] = tuple(values["overrides"])
        return cls(**values)


# --------------------------------------------------------------------------- worker side
def _status_callback(job: TrainJob) -> Any:
    """A Lightning callback that rewrites ``job.status_file`` with the step and elapsed time."""
    import pytorch_lightning as pl

    parent = os.getppid()

    class StatusFile(pl.Callback):
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.last = 0.0

        def _write(self, trainer: Any, done: bool = False) -> None:
            body = {"step": int(trainer.global_step), "max_steps": job.max_steps,
                    "seconds": time.perf_counter() - self.start, "max_seconds": job.max_seconds, "done": done}
            atomic_write_text(job.status_file, json.dumps(body) + "\n")

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self._write(trainer)

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if os.getppid() != parent:  # the demo process is gone (killed): stop, the last checkpoint stays
                raise SystemExit(f"{job.part}: the demo process {parent} is gone; stopping")
            now = time.perf_counter()
            if now - self.last >= STATUS_INTERVAL_S:
                self.last = now
                self._write(trainer)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._write(trainer, done=True)

    return StatusFile()


def run_job(job: TrainJob) -> dict[str, Any]:
    """Train ``job`` in this process (resuming from its last checkpoint); returns and writes its result."""
    import torch

    torch.set_num_threads(max(1, job.threads))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import train

    from emoedit.config import compose_config

    spec = train._parts()[job.part]
    cfg = compose_config(spec.schema, part=job.part, config_dir=train.CONFIG_DIR, overrides=job.train_overrides(),
                         base_files=spec.config_files)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    trainer = train.run(spec, cfg, callbacks=[_status_callback(job)])
    seconds = time.perf_counter() - start
    if getattr(trainer, "interrupted", False):  # Ctrl-C: Lightning returns from fit; this part is not done
        raise KeyboardInterrupt(f"training {job.part} was interrupted at step {trainer.global_step}")
    if not job.checkpoint.is_file():
        raise TrainingError(f"{job.part}: training ended without {job.checkpoint}")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    steps = int(trainer.global_step)
    result = {"part": job.part, "steps": steps, "seconds": seconds, "cpu_seconds": cpu_seconds() - cpu_start,
              "checkpoint": str(job.checkpoint), "metrics": metrics,
              "stopped_by": "max_steps" if steps >= job.max_steps else "max_time"}
    atomic_write_text(job.result_file, json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emoedit.demo.training LANE.json``: run a lane's jobs in order (see :func:`run_job`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m emoedit.demo.training LANE.json", file=sys.stderr)
        return 2
    body = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    for entry in body["jobs"]:
        job = TrainJob.from_json(entry)
        print(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} train {job.part}: {' '.join(job.train_overrides())}",
              flush=True)
        run_job(job)
    return 0


# --------------------------------------------------------------------------- parent side
@dataclass
class _Lane:
    index: int  # lane number (progress bar position)
    jobs: list[TrainJob]  # in order
    process: subprocess.Popen
    log: Any  # open log file handle
    log_path: Path
    done: int = 0  # jobs of the lane finished
    started: float = 0.0  # when the current job started (perf_counter)
    bar: Any = None  # tqdm bar of the current job


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def train_lanes(
    lanes: Sequence[Sequence[TrainJob]],  # jobs per lane, in order (empty lanes are skipped)
    *,
    log_dir: Path,  # where lane<k>.log and lane<k>.json go
    on_start: Callable[[TrainJob], None],  # called when a job starts (the stage line)
    on_done: Callable[[TrainJob, dict[str, Any], float], None],  # called with the result and wall seconds
    progress: bool = True,  # tqdm bars
    poll_s: float = 0.5,  # how often the workers' status files are read
    python: str | None = None,  # the interpreter of the workers (default: this one)
) -> None:
    """Run every lane in its own worker process at once (see the module docstring).

    Raises :class:`TrainingError` (after stopping the other workers) when a worker fails.
    """
    from tqdm import tqdm

    check_source_checkout()
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    log_dir.mkdir(parents=True, exist_ok=True)
    running: list[_Lane] = []

    def start_job(lane: _Lane) -> None:
        job = lane.jobs[lane.done]
        lane.started = time.perf_counter()
        on_start(job)
        if progress:
            cap = f", ≤{job.max_seconds} s" if job.max_seconds else ""
            lane.bar = tqdm(total=job.max_steps, desc=f"{job.part:<15}", unit="step", position=lane.index,
                            leave=True, dynamic_ncols=True, postfix=f"starting{cap}")

    try:
        for index, jobs in enumerate(lane for lane in lanes if lane):
            for job in jobs:
                Path(job.run_dir).mkdir(parents=True, exist_ok=True)
                for stale in (job.result_file, job.status_file):
                    stale.unlink(missing_ok=True)
            lane_file = log_dir / f"lane{index}.json"
            atomic_write_text(lane_file, json.dumps({"jobs": [j.settings() for j in jobs]}, indent=2) + "\n")
            log_path = log_dir / f"lane{index}.log"
            log = open(log_path, "a", encoding="utf-8")
            process = subprocess.Popen([python or sys.executable, "-m", "emoedit.demo.training", str(lane_file)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT))
            lane = _Lane(index=index, jobs=list(jobs), process=process, log=log, log_path=log_path)
            running.append(lane)
            start_job(lane)
        while running:
            time.sleep(poll_s)
            for lane in list(running):
                code = lane.process.poll()
                if lane.done == len(lane.jobs):  # every job reported: wait for the worker to exit
                    if code is not None:
                        running.remove(lane)
                        lane.log.close()
                        if code != 0:
                            raise TrainingError(f"training lane {lane.index} exited with code {code} after its "
                                                f"last part; log: {lane.log_path}")
                    continue
                job = lane.jobs[lane.done]
                status = _read_json(job.status_file)
                if lane.bar is not None and status:
                    lane.bar.n = min(int(status.get("step", 0)), job.max_steps)
                    cap = f" / {job.max_seconds} s cap" if job.max_seconds else ""
                    lane.bar.set_postfix_str(f"{status.get('seconds', 0):.0f} s{cap}", refresh=False)
                    lane.bar.refresh()
                result = _read_json(job.result_file) if job.result_file.is_file() else {}
                if result:
                    if lane.bar is not None:
                        lane.bar.n = min(int(result.get("steps", lane.bar.n)), job.max_steps)
                        lane.bar.close()
                        lane.bar = None
                    on_done(job, result, time.perf_counter() - lane.started)
                    lane.done += 1
                    if lane.done < len(lane.jobs):
                        start_job(lane)
                    continue
                if code is not None:
                    running.remove(lane)
                    lane.log.close()
                    raise TrainingError(
                        f"training {job.part} failed (exit code {code}); log: {lane.log_path}:\n"
                        f"{_tail(lane.log_path)}\nRe-run the demo to resume it.")
    finally:
        for lane in running:  # an error or Ctrl-C: stop the other workers (their last checkpoints stay)
            if lane.process.poll() is None:
                lane.process.terminate()
                try:
                    lane.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    lane.process.kill()
            lane.log.close()
            if lane.bar is not None:
                lane.bar.close()


if __name__ == "__main__":
    sys.exit(main())
