"""W&B sweep files (configs/sweeps/*.yaml): every parameter is a valid key of its program's config.

A W&B agent runs a sweep's ``command`` with ``${args_no_hyphens}`` replaced by one
``f"{param}={value}"`` per parameter (wandb/sdk/launch/sweeps/utils.py
``create_sweep_command_args``). These tests build exactly those strings — for every listed
value, and both ends of every distribution — and compose them with ``train.py``'s
``compose_config`` (parts) or ``load_evaluate_config`` (``emoedit evaluate``), so a
misspelled key or an unparsable value fails here rather than in the first trial.
"""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

import train
from emoedit.config import compose_config, config_to_plain
from emoedit.evaluation.config import load_evaluate_config
from emoedit.evaluation.scoring import METRIC_BY_KEY
from emoedit.evaluation.splits import EVALUATION_SETS

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
METHODS = {"grid", "random", "bayes"}


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def _choices(spec: dict[str, Any]) -> list[Any]:
    """Values W&B may give a parameter: its value, each of its values, or both ends of its range."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if "min" in spec and "max" in spec:
        return [spec["min"], spec["max"]]
    raise AssertionError(f"parameter spec without value/values/min+max: {spec}")


def _trials(parameters: dict[str, Any]) -> list[list[str]]:
    """``key=value`` argument lists as W&B formats them: every choice of every parameter appears."""
    names = list(parameters)
    choices = [_choices(parameters[n]) for n in names]
    longest = max(len(c) for c in choices)
    return [[f"{n}={c[i % len(c)]}" for n, c in zip(names, choices)] for i in range(longest)]


def _target(command: list[str]) -> tuple[str, list[str]]:
    """``("train", [part])`` or ``("evaluate", [config file])`` from a sweep command."""
    if "${program}" in command and command[command.index("${program}") + 1] in train._parts():
        return "train", [command[command.index("${program}") + 1]]
    if "evaluate" in command:
        return "evaluate", [command[command.index("--config") + 1]]
    raise AssertionError(f"unrecognised sweep command {command}")


def test_there_are_the_three_sweeps() -> None:
    assert [p.stem for p in SWEEPS] == ["ablations", "geometry_loss_weights", "texture_encoder"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_structure(path: Path) -> None:
    sweep = _load(path)
    assert sweep["method"] in METHODS
    assert sweep["metric"]["goal"] in ("minimize", "maximize") and sweep["metric"]["name"]
    assert (REPO / sweep["program"]).is_file()
    command = sweep["command"]
    assert command[0] == "${env}" and command[-1] == "${args_no_hyphens}" and command.count("${args_no_hyphens}") == 1
    for spec in sweep["parameters"].values():
        assert _choices(spec)
        if "distribution" in spec:
            assert spec["distribution"] in ("log_uniform_values", "uniform", "int_uniform", "q_log_uniform_values")
            assert 0 < spec["min"] < spec["max"]
    if sweep["method"] == "grid":
        assert all("distribution" not in spec for spec in sweep["parameters"].values())


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_parameter_is_a_valid_config_key(path: Path) -> None:
    sweep = _load(path)
    kind, (target,) = _target(sweep["command"])
    metric = sweep["metric"]["name"]
    for args in _trials(sweep["parameters"]):
        if kind == "train":
            spec = train._parts()[target]
            cfg = compose_config(spec.schema, part=target, config_dir=train.CONFIG_DIR, overrides=args)
            train.check_trainer_args(config_to_plain(cfg.trainer))
        else:
            cfg = load_evaluate_config(REPO / target, args)
            assert cfg.wandb.enabled, "an evaluate sweep must log to W&B"
            assert len([m for m in cfg.methods]) == 1 and not cfg.references, \
                "one method per trial: its metrics are logged under evaluate/<set>/<metric>"
            _, set_name, key = metric.split("/")
            assert set_name in cfg.sets
    if kind == "train":
        part = target
        assert metric.startswith(f"{part}/val/"), metric
        source = inspect.getsource(train._parts()[part].system)
        leaf = metric.split("/")[-1]
        assert f'"{leaf}"' in source or f"/{leaf}" in source, f"{metric} is not logged by {part}'s system"
    else:
        prefix, set_name, key = metric.split("/")
        assert prefix == "evaluate" and set_name in EVALUATION_SETS and key in METRIC_BY_KEY


def test_trials_cover_every_value() -> None:
    trials = _trials({"a": {"values": [1, 2, 3]}, "b": {"value": "x"}, "c": {"min": 0.1, "max": 1.0}})
    assert trials == [["a=1", "b=x", "c=0.1"], ["a=2", "b=x", "c=1.0"], ["a=3", "b=x", "c=0.1"]]
    assert list(itertools.chain(*trials)).count("b=x") == 3
