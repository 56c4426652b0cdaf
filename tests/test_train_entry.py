"""train.py machinery end to end: config composition, overrides, unknown keys, loggers,
checkpoints (last + best), resume continuing the step count, init_from, DDP on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.config import ConfigError, compose_config
from tests.toy_part import ToyDataModule, ToyRunConfig, ToySystem

SPEC = train.PartSpec(ToySystem, ToyDataModule, ToyRunConfig, "toy regression")


@pytest.fixture()
def config_dir(tmp_path: Path) -> Path:
    root = tmp_path / "configs"
    (root / "experiment").mkdir(parents=True)
    (root / "toy.yaml").write_text("model:\n  hidden: 6\ndata:\n  batch_size: 4\n")
    (root / "experiment" / "small.yaml").write_text(
        "all:\n  trainer:\n    max_steps: 3\n    enable_progress_bar: false\n"
        "toy:\n  model:\n    lr: 0.05\nother_part:\n  model:\n    nonsense: 1\n"
    )
    (root / "experiment" / "typo.yaml").write_text("toy:\n  model:\n    hiden: 3\n")
    return root


def compose(config_dir: Path, tmp_path: Path, *overrides: str):
    return compose_config(
        ToyRunConfig, part="toy", config_dir=config_dir, overrides=[f"output_dir={tmp_path / 'run'}", *overrides]
    )


def test_merge_order_and_overrides(config_dir, tmp_path):
    cfg = compose(config_dir, tmp_path)
    assert cfg.model.hidden == 6 and cfg.data.batch_size == 4 and cfg.model.lr == pytest.approx(1e-2)
    cfg = compose(config_dir, tmp_path, "experiment=small")
    assert cfg.model.lr == pytest.approx(0.05) and cfg.trainer.max_steps == 3 and cfg.model.hidden == 6
    cfg = compose(config_dir, tmp_path, "experiment=small", "model.lr=0.2", "trainer.max_steps=7")
    assert cfg.model.lr == pytest.approx(0.2) and cfg.trainer.max_steps == 7
    assert cfg.part == "toy"


def test_logger_shorthand(config_dir, tmp_path):
    assert compose(config_dir, tmp_path, "logger=none").logger.kind == "none"
    assert compose(config_dir, tmp_path, "logger=csv").logger.kind == "csv"


def test_default_output_dir_interpolates_part_and_run_name(config_dir):
    cfg = compose_config(ToyRunConfig, part="toy", config_dir=config_dir, overrides=["run_name=abc"])
    assert cfg.output_dir == "runs/toy/abc"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.hiden=3"], "command line: unknown config key 'model.hiden'. Did you mean: model.hidden"),
        (["experiment=typo"], "typo.yaml [toy]: unknown config key 'model.hiden'"),
        (["experiment=nope"], "no such experiment; available: small, typo"),
        (["model.hidden=abc"], "invalid value for 'model.hidden'"),
        (["modelhidden"], "expected key=value"),
    ],
)
def test_config_errors_name_their_source(config_dir, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        compose(config_dir, tmp_path, *overrides)
    assert message in str(err.value)


def test_unknown_key_in_part_yaml_names_the_file(config_dir, tmp_path):
    (config_dir / "toy.yaml").write_text("data:\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"toy.yaml: unknown config key 'data.batchsize'. Did you mean: data.batch_size"):
        compose(config_dir, tmp_path)


def test_trainer_args_checked_against_lightning(config_dir, tmp_path):
    with pytest.raises(ConfigError, match="Did you mean: trainer.max_steps"):
        train.check_trainer_args({"max_step": 3})
    with pytest.raises(ConfigError, match="set by train.py"):
        train.check_trainer_args({"logger": None})
    assert train.check_trainer_args({"max_steps": 3, "devices": 1}) == {"max_steps": 3, "devices": 1}


def _fit(config_dir, tmp_path, *overrides):
    cfg = compose(
        config_dir,
        tmp_path,
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.val_check_interval=2",
        "trainer.check_val_every_n_epoch=null",
        "trainer.log_every_n_steps=1",
        "checkpoint.monitor=val/loss",
        "checkpoint.every_n_train_steps=2",
        *overrides,
    )
    return train.run(SPEC, cfg)


def test_fit_logs_offline_checkpoints_and_resumes(config_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    trainer = _fit(config_dir, tmp_path, "trainer.max_steps=4")
    assert trainer.global_step == 4 and trainer.lightning_module.start_step == 0
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("step") for n in ckpts)
    assert (run_dir / "config.yaml").read_text().count("hidden: 6") == 1
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert wandb_runs, "W&B offline run folder missing"
    assert any(p.suffix == ".wandb" for p in wandb_runs[0].iterdir())

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # weights_only=True
    assert ckpt["hyper_parameters"] == {"part": "toy", "config": {"hidden": 6, "lr": 0.01}}
    first_weights = ckpt["state_dict"]["net.0.weight"].clone()

    resumed = _fit(config_dir, tmp_path, "trainer.max_steps=8", "ckpt_path=last")
    assert resumed.lightning_module.start_step == 4 and resumed.global_step == 8
    later = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]["net.0.weight"]
    assert not torch.equal(first_weights, later), "training did not change the weights"

    with pytest.raises(CheckpointError, match=r"model.hidden|hidden: 6 in checkpoint, 9 in config"):
        _fit(config_dir, tmp_path, "trainer.max_steps=9", "ckpt_path=last", "model.hidden=9")


def test_last_checkpoint_holds_the_final_step_with_step_based_checkpointing(config_dir, tmp_path):
    trainer = _fit(config_dir, tmp_path, "trainer.max_steps=5", "checkpoint.every_n_train_steps=4", "logger=none")
    assert trainer.global_step == 5
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 5


def test_init_from_loads_weights_with_fresh_step_count(config_dir, tmp_path):
    _fit(config_dir, tmp_path, "trainer.max_steps=2", "logger.kind=none")
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    other = tmp_path / "other"
    cfg = compose_config(
        ToyRunConfig,
        part="toy",
        config_dir=config_dir,
        overrides=[f"output_dir={other}", f"init_from={source}", "logger.kind=none", "trainer.max_steps=0",
                   "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0"],
    )
    trainer = train.run(SPEC, cfg)
    expected = load_checkpoint(source)["state_dict"]
    for key, value in trainer.lightning_module.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert trainer.global_step == 0


def test_init_from_keeps_the_step_count_by_choice(config_dir, tmp_path):
    _fit(config_dir, tmp_path, "trainer.max_steps=4", "logger.kind=none")
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    expected = load_checkpoint(source)
    assert expected["global_step"] == 4 and expected["optimizer_states"][0]["state"][0]["step"] == 4

    def init_run(name: str, *overrides: str):
        cfg = compose_config(
            ToyRunConfig, part="toy", config_dir=config_dir,
            overrides=[f"output_dir={tmp_path / name}", f"init_from={source}", "init_keep_counters=true",
                       "logger.kind=none", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0",
                       *overrides],
        )
        return train.run(SPEC, cfg)

    unchanged = init_run("same", "trainer.max_steps=4")  # already at max_steps: the weights as loaded
    assert unchanged.global_step == 4
    for key, value in unchanged.lightning_module.state_dict().items():
        assert torch.equal(value, expected["state_dict"][key]), key

    kept = init_run("kept", "trainer.max_steps=6")
    assert kept.lightning_module.start_step == 4 and kept.global_step == 6
    ckpt = load_checkpoint(tmp_path / "kept" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    adam = ckpt["optimizer_states"][0]
    assert adam["state"][0]["step"] == 2, "the optimiser must start fresh (its own 2 steps, not 4 + 2)"
    assert not torch.equal(ckpt["state_dict"]["net.0.weight"], expected["state_dict"]["net.0.weight"])
    assert not list((tmp_path / "kept").glob(".init_counters.*")), "the private counters checkpoint is removed"

    with pytest.raises(ConfigError, match="max_stepz"):  # a run that fails before fit leaves no private file
        init_run("typo", "trainer.max_stepz=6")
    assert not list((tmp_path / "typo").glob(".init_counters.*"))
    with pytest.raises(ConfigError, match="init_keep_counters=true needs init_from"):
        _fit(config_dir, tmp_path, "trainer.max_steps=1", "logger.kind=none", "init_keep_counters=true")
    with pytest.raises(CheckpointError, match="needs a Lightning training checkpoint; this one has no loops"):
        weights_only = tmp_path / "weights.ckpt"
        torch.save({key: expected[key] for key in ("state_dict", "hyper_parameters", "global_step", "epoch",
                                                   "pytorch-lightning_version")}, weights_only)
        init_run("bad", "trainer.max_steps=6", f"init_from={weights_only}")


def test_resume_from_missing_or_corrupt_checkpoint(config_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _fit(config_dir, tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}", "logger.kind=none")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        _fit(config_dir, tmp_path, f"ckpt_path={bad}", "logger.kind=none")


def test_cli_help_and_unknown_part(capsys):
    assert train.main(["--help"]) == 0
    assert "python train.py <part>" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.main(["no_such_part"])
    assert "unknown part" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes(config_dir, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(repo))
    cmd = [sys.executable, str(repo / "tests" / "toy_part.py"), str(config_dir), f"output_dir={tmp_path / 'ddp'}",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=4",
           "trainer.enable_progress_bar=false", "logger.kind=csv"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WORLD 2" in out.stdout and "RANK 1" in out.stdout and "STEP 4" in out.stdout
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").exists()

    # init_from keeping the counters under DDP: every process reads its own private copy
    kept = [sys.executable, str(repo / "tests" / "toy_part.py"), str(config_dir), f"output_dir={tmp_path / 'kept'}",
            "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=6",
            "trainer.enable_progress_bar=false", "logger.kind=csv",
            f"init_from={tmp_path / 'ddp' / 'checkpoints' / 'last.ckpt'}", "init_keep_counters=true"]
    out = subprocess.run(kept, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RANK 0 WORLD 2 START 4 STEP 6" in out.stdout and "RANK 1 WORLD 2 START 4 STEP 6" in out.stdout, out.stdout
    assert load_checkpoint(tmp_path / "kept" / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert not list((tmp_path / "kept").glob(".init_counters.*"))
