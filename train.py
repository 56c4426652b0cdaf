#!/usr/bin/env python
"""Train one part of emoedit.

    python train.py <part> [experiment=NAME] [key=value ...]
    python train.py --help              # the parts
    python train.py <part> --help       # the part's resolved config (with your overrides)

Each part is a row of the literal table ``PARTS`` below: its LightningModule ("system"),
its DataModule and its config schema. The config is composed from the schema defaults,
``configs/<part>.yaml``, ``configs/experiment/<NAME>.yaml`` and ``key=value`` overrides
(a misspelled key is an error). The run folder ``runs/<part>/<run_name>/`` receives the
resolved ``config.yaml``, ``checkpoints/`` (``last.ckpt`` + best) and the W&B logs
(offline unless ``logger.mode=online``; ``logger.kind=none`` for no logger).

Resume with ``ckpt_path=last`` (this run's last checkpoint, if any) or ``ckpt_path=PATH``;
the checkpoint's model config must match (differences are listed). ``init_from=PATH``
starts from a checkpoint's weights (strict) with a fresh optimiser; its step and epoch
counters restart at 0, or continue from the checkpoint's with ``init_keep_counters=true``
(then ``trainer.max_steps`` counts the checkpoint's steps too, like StyleGAN's resume kimg).
Any ``pytorch_lightning.Trainer`` argument can be set as ``trainer.NAME=VALUE``, e.g.
``trainer.devices=2 trainer.strategy=ddp trainer.precision=bf16-mixed trainer.max_steps=1000``.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parent
CONFIG_DIR = REPO_ROOT / "configs"


@dataclass(frozen=True)
class PartSpec:
    """One trainable part: which system, which data, which config schema."""

    system: type  # an EmoeditSystem subclass
    datamodule: type  # an EmoeditDataModule subclass
    schema: type  # a RunConfig subclass with ``model`` and ``data`` sections
    summary: str  # one line for ``--help``
    config_files: tuple[str, ...] | None = None  # base YAMLs under configs/, in merge order; None: (<part>.yaml,)


def _parts() -> dict[str, PartSpec]:
    """The literal table of parts (imports deferred so ``--help`` stays fast)."""
    from datamodules.coefficients import CoefficientDataModule
    from datamodules.face_crops import FaceCropDataModule
    from datamodules.frames import FrameDataModule
    from datamodules.mouths import MouthDataModule
    from datamodules.subject_textures import SubjectTextureDataModule
    from datamodules.textures import TextureDataModule
    from lightning_modules.classifier import ClassifierRunConfig, ClassifierSystem
    from lightning_modules.exprgan import ExprGANRunConfig, ExprGANSystem
    from lightning_modules.geometry import GeometryRunConfig, GeometrySystem
    from lightning_modules.judge import JudgeRunConfig, JudgeSystem
    from lightning_modules.recon import ReconRunConfig, ReconSystem
    from lightning_modules.stargan import StarGANRunConfig, StarGANSystem
    from lightning_modules.teeth import TeethEncoderRunConfig, TeethEncoderSystem, TeethTGANRunConfig, TeethTGANSystem
    from lightning_modules.texture_encoder import TextureEncoderRunConfig, TextureEncoderSystem
    from lightning_modules.tgan import TGANRunConfig, TGANSystem

    return {
        # METHOD §4 order.
        "recon": PartSpec(ReconSystem, FrameDataModule, ReconRunConfig, "3D face reconstruction regressor (Deep3DFaceRecon-style, METHOD §3.1)"),
        "tgan": PartSpec(TGANSystem, TextureDataModule, TGANRunConfig, "t-GAN: StyleGAN2 on UV textures (METHOD §3.4)"),
        "texture_encoder": PartSpec(TextureEncoderSystem, TextureDataModule, TextureEncoderRunConfig, "pSp texture encoder: UV texture -> t-GAN W+ (L2 + LPIPS + latent regulariser, METHOD §3.4)"),
        "teeth_tgan": PartSpec(TeethTGANSystem, TextureDataModule, TeethTGANRunConfig, "teeth t-GAN: StyleGAN2 on aligned mouth crops (METHOD §3.7)"),
        "teeth_encoder": PartSpec(TeethEncoderSystem, MouthDataModule, TeethEncoderRunConfig, "teeth encoder: teeth-removed mouth crop -> teeth t-GAN W+ (L2 + masked L2 + LPIPS + latent, METHOD §3.7)"),
        "geometry": PartSpec(GeometrySystem, CoefficientDataModule, GeometryRunConfig, "geometry editor: BFM-conditioned StarGAN on id/exp coefficients (METHOD §3.6, eqs. 6-16)"),
        "classifier": PartSpec(ClassifierSystem, SubjectTextureDataModule, ClassifierRunConfig, "subject classifier over UV textures (softmax weights of eq. 4, METHOD §3.5)"),
        # Evaluation only (issue 7): baselines and judges, never used by the method.
        "stargan": PartSpec(StarGANSystem, FaceCropDataModule, StarGANRunConfig, "baseline: StarGAN on aligned face crops (WGAN-GP + emotion classification + cycle, METHOD §6)"),
        "exprgan": PartSpec(ExprGANSystem, FaceCropDataModule, ExprGANRunConfig, "baseline: ExprGAN-style encoder-decoder with an expression-intensity code on aligned face crops (METHOD §6)"),
        "psp_tgan": PartSpec(TGANSystem, TextureDataModule, TGANRunConfig, "baseline pSp, step 1: the t-GAN's StyleGAN2 on aligned face crops (METHOD §6)",
                             config_files=("tgan.yaml", "baselines/psp_face_tgan.yaml")),
        "psp_encoder": PartSpec(TextureEncoderSystem, TextureDataModule, TextureEncoderRunConfig, "baseline pSp, step 2: the pSp encoder face crop -> W+ of psp_tgan (METHOD §6)",
                                config_files=("texture_encoder.yaml", "baselines/psp_face_encoder.yaml")),
        "judge": PartSpec(JudgeSystem, FrameDataModule, JudgeRunConfig, "evaluation judges: emotion / identity classifiers of ground-truth face crops (METHOD §6; never used by the method)"),
    }


# Trainer arguments train.py owns itself; setting them under ``trainer.`` is an error.
_RESERVED_TRAINER_ARGS = {"logger", "callbacks", "default_root_dir", "enable_checkpointing"}


def _fail(message: str) -> None:
    print(f"train.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_trainer_args(trainer_args: dict[str, Any]) -> dict[str, Any]:
    """Validate ``trainer.*`` keys against ``pytorch_lightning.Trainer``'s signature."""
    import pytorch_lightning as pl

    from emoedit.config import ConfigError, did_you_mean

    valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    for key in trainer_args:
        if key in _RESERVED_TRAINER_ARGS:
            raise ConfigError(f"trainer.{key} is set by train.py (use the logger/checkpoint sections or output_dir)")
        if key not in valid:
            raise ConfigError(f"unknown Trainer argument 'trainer.{key}'.{did_you_mean(key, valid, prefix='trainer.')}")
    return dict(trainer_args)


def build_logger(cfg: Any, run_dir: Path):
    """W&B (offline by default), CSV, or no logger."""
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        mode = cfg.logger.mode
        if mode not in ("offline", "online", "disabled"):
            from emoedit.config import ConfigError

            raise ConfigError(f"logger.mode must be offline, online or disabled, got '{mode}'")
        return WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            name=cfg.logger.name or cfg.run_name,
            group=cfg.logger.group,
            tags=list(cfg.logger.tags),
            save_dir=str(run_dir),
            offline=mode == "offline",
            mode=mode,
            log_model=bool(cfg.logger.log_model) and mode == "online",
            id=_wandb_run_id(run_dir),
            resume="allow",
        )
    from emoedit.config import ConfigError

    raise ConfigError(f"logger.kind must be wandb, csv or none, got '{kind}'")


def _wandb_run_id(run_dir: Path) -> str:
    """A stable W&B run id per run folder, so a resumed run continues the same W&B run."""
    from emoedit.atomic_io import atomic_write_text

    id_file = run_dir / "wandb_run_id.txt"
    if id_file.exists():
        return id_file.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    if os.environ.get("LOCAL_RANK", "0") == "0":
        atomic_write_text(id_file, run_id)
    return run_id


def build_callbacks(cfg: Any, run_dir: Path, system: Any) -> list:
    """Checkpointing (last + best), the learning-rate monitor and the system's own callbacks."""
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    ck = cfg.checkpoint
    callbacks: list = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="step{step:08d}",
            auto_insert_metric_name=False,
            monitor=ck.monitor,
            mode=ck.mode,
            save_top_k=ck.save_top_k if ck.monitor else 1,
            save_last=ck.save_last,
            every_n_train_steps=ck.every_n_train_steps,
            every_n_epochs=ck.every_n_epochs,
        )
    ]
    if cfg.logger.kind != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    extra = getattr(system, "extra_callbacks", None)
    if callable(extra):
        callbacks.extend(extra())
    return callbacks


def resolve_ckpt_path(cfg: Any, run_dir: Path) -> str | None:
    """``ckpt_path``: None, ``last`` (this run's last.ckpt when present) or an existing file."""
    from emoedit.checkpoint_io import CheckpointError

    if not cfg.ckpt_path:
        return None
    if cfg.ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            return str(last)
        print(f"train.py: no {last} yet; starting from scratch")
        return None
    path = Path(cfg.ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ckpt_path does not exist")
    return str(path)


#: Entries of a Lightning checkpoint that ``init_keep_counters`` carries over: the weights and
#: the loop progress (global step, epoch, batches). Optimiser, scheduler, callback (timer,
#: best-checkpoint) and precision states are left behind, so they start fresh.
COUNTER_KEYS = ("state_dict", "loops", "global_step", "epoch", "pytorch-lightning_version")


def counters_state(init: dict[str, Any], *, source: str) -> dict[str, Any]:
    """A resumable copy of checkpoint ``init`` holding only :data:`COUNTER_KEYS`, for Lightning's
    own resume path (``trainer.fit(ckpt_path=...)``) to restore the weights and continue the
    step and epoch counters. ``optimizer_states`` and ``lr_schedulers`` are empty lists: Lightning
    pairs saved states with the run's optimisers and schedulers one by one, so none is restored
    and they start from their initial state. Raises ``CheckpointError`` naming ``source`` when
    the checkpoint has no loop state (not saved by a Lightning Trainer).
    """
    from emoedit.checkpoint_io import CheckpointError

    missing = [key for key in COUNTER_KEYS if key not in init]
    if missing:
        raise CheckpointError(f"{source}: init_keep_counters needs a Lightning training checkpoint; "
                              f"this one has no {', '.join(missing)}")
    return {**{key: init[key] for key in COUNTER_KEYS}, "optimizer_states": [], "lr_schedulers": []}


def write_private_checkpoint(state: dict[str, Any], run_dir: Path) -> Path:
    """``state`` saved atomically to a file of its own in ``run_dir`` (one per process under
    DDP), for ``trainer.fit(ckpt_path=...)``; the caller deletes it after the run."""
    import tempfile

    from emoedit.atomic_io import atomic_torch_save

    handle, name = tempfile.mkstemp(prefix=".init_counters.", suffix=".ckpt", dir=run_dir)
    os.close(handle)
    return atomic_torch_save(state, name)


def run(spec: PartSpec, cfg: Any, *, callbacks: Sequence[Any] = ()) -> Any:
    """Build everything from ``cfg`` (a composed config) and fit, with ``callbacks`` (Lightning
    callbacks, e.g. the demo's progress reporter) after the run's own. Returns the Trainer."""
    import pytorch_lightning as pl
    import torch

    from emoedit.checkpoint_io import check_model_config, load_checkpoint
    from emoedit.config import ConfigError, config_to_plain, save_config_yaml

    run_dir = Path(cfg.output_dir)
    if not run_dir.is_absolute():
        run_dir = Path.cwd() / run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.matmul_precision)

    if cfg.init_keep_counters and not cfg.init_from:
        raise ConfigError("init_keep_counters=true needs init_from=PATH (the checkpoint whose counters to keep)")
    model_plain = config_to_plain(cfg.model)
    ckpt_path = resolve_ckpt_path(cfg, run_dir)
    if ckpt_path:
        check_model_config(load_checkpoint(ckpt_path), model_plain, part=cfg.part, path=ckpt_path)

    system = spec.system(config=model_plain)
    datamodule = spec.datamodule(config=config_to_plain(cfg.data))
    keep_counters_of: dict[str, Any] | None = None  # init_from's weights and loop state (init_keep_counters)
    if cfg.init_from and not ckpt_path:
        init = load_checkpoint(cfg.init_from)
        # Keys that do not change the saved weights (learning rates, regularisation...) may
        # differ when starting from a checkpoint (e.g. the t-GAN's MEAD fine-tune).
        training_keys = getattr(spec.system, "TRAINING_KEYS", frozenset())
        check_model_config(init, model_plain, part=cfg.part, path=cfg.init_from, ignore=training_keys)
        system.load_state_dict(init["state_dict"], strict=True)
        system.started_from_init = True
        if cfg.init_keep_counters:
            keep_counters_of = counters_state(init, source=cfg.init_from)

    if os.environ.get("LOCAL_RANK", "0") == "0":
        save_config_yaml(cfg, run_dir / "config.yaml")
    # The GAN parts optimise manually and checkpoint the state after an iteration on purpose
    # (it is the resume point); Lightning 2.6 warns about that at every step-based checkpoint.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    trainer = pl.Trainer(
        **check_trainer_args(config_to_plain(cfg.trainer)),
        logger=build_logger(cfg, run_dir),
        callbacks=[*build_callbacks(cfg, run_dir, system), *callbacks],
        default_root_dir=str(run_dir),
    )
    counters_from: Path | None = None  # a private resumable copy of init_from, removed below
    try:
        if keep_counters_of is not None:
            counters_from = write_private_checkpoint(keep_counters_of, run_dir)
            ckpt_path = str(counters_from)
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        _save_final_last(trainer, cfg, run_dir)
    finally:
        if counters_from is not None:
            counters_from.unlink(missing_ok=True)
        if cfg.logger.kind == "wandb":
            import wandb

            wandb.finish()  # close this run so a later run in the same process starts its own
    return trainer


def _save_final_last(trainer: Any, cfg: Any, run_dir: Path) -> None:
    """Make sure ``last.ckpt`` holds the final step.

    With step-based checkpointing (``checkpoint.every_n_train_steps``) a run that stops at a
    step that is not a multiple of N (``max_steps``, ``max_time``) would otherwise lose the
    steps after the last multiple; resume must continue from where training stopped.
    """
    callback = trainer.checkpoint_callback
    if not cfg.checkpoint.save_last or callback is None or trainer.global_step == 0:
        return
    if getattr(callback, "_last_global_step_saved", -1) == trainer.global_step:
        return
    trainer.save_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))


def _usage(parts: dict[str, PartSpec]) -> str:
    lines = [__doc__.strip(), "", "parts:"]
    if not parts:
        lines.append("  (none yet)")
    for name, spec in parts.items():
        lines.append(f"  {name:<16} {spec.summary}")
    experiments = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
    lines += ["", f"experiments: {', '.join(experiments) or '(none)'}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parts = _parts()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(parts))
        return 0
    part, rest = argv[0], argv[1:]
    if part not in parts:
        close = difflib.get_close_matches(part, list(parts), n=1)
        _fail(f"unknown part '{part}'" + (f"; did you mean '{close[0]}'?" if close else f"; parts: {', '.join(parts) or 'none yet'}"))
    from omegaconf import OmegaConf

    from emoedit.checkpoint_io import CheckpointError
    from emoedit.config import ConfigError, compose_config

    show_help = any(a in ("-h", "--help") for a in rest)
    overrides = [a for a in rest if a not in ("-h", "--help")]
    try:
        cfg = compose_config(parts[part].schema, part=part, config_dir=CONFIG_DIR, overrides=overrides,
                             base_files=parts[part].config_files)
        if show_help:
            print(f"{part}: {parts[part].summary}\n\nresolved config (override any key with key=value):\n")
            print(OmegaConf.to_yaml(cfg))
            return 0
        run(parts[part], cfg)
    except (ConfigError, CheckpointError) as err:
        _fail(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
