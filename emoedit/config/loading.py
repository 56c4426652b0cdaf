"""Compose a part's configuration from its schema, YAML files and overrides.

Order (later wins)::

    schema defaults  →  configs/<part>.yaml  →  configs/experiment/<name>.yaml  →  key=value

An experiment file holds overrides for several parts at once, keyed by part name, plus
an optional ``all:`` section applied to every part first::

    all:
      trainer: {max_steps: 20}
    recon:
      model: {backbone: resnet18}

Every key is checked against the part's schema: a misspelled key is a
:class:`ConfigError` naming the file (or the command line) and the closest valid keys.
Configs are saved as YAML, never pickled; hyperparameters travel as plain dicts.

The building blocks are public for other loaders with another file layout (e.g.
``emoedit evaluate``'s :func:`~emoedit.evaluation.config.load_evaluate_config`):
:func:`structured_config` (a strict schema node), :func:`load_yaml_mapping` (a YAML file as a
dict), :func:`split_override` / :func:`dotlist_to_dict` (``key=value`` strings),
:func:`merge_config` (merge with key checks and "did you mean") and :func:`config_keys`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

from emoedit.atomic_io import atomic_write_text
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError
import yaml

T = TypeVar("T")

EXPERIMENT_ALL = "all"


class ConfigError(ValueError):
    """A configuration problem, with the file (or the command line) it came from."""


def config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a ``DictConfig`` (sections and their fields), ``prefix`` prepended."""
    keys: list[str] = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}{key}"
            keys.append(full)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                keys.extend(config_keys(child, full + "."))
    return keys


def did_you_mean(bad_key: str, candidates: Iterable[str], *, prefix: str = "") -> str:
    """`` Did you mean: a, b?`` naming up to 3 of ``candidates`` close to ``bad_key`` (each shown
    with ``prefix``), or ``""`` when none is close."""
    close = difflib.get_close_matches(bad_key, sorted(candidates), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(prefix + c for c in close)}?" if close else ""


def _unknown_key_error(base: DictConfig, bad_key: str, source: str) -> ConfigError:
    return ConfigError(f"{source}: unknown config key '{bad_key}'.{did_you_mean(bad_key, config_keys(base))}")


def _flatten(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            full = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                yield from _flatten(value, full + ".")
            else:
                yield full, value
    else:
        yield prefix.rstrip("."), node


def _free_form(base: DictConfig, dotted: str) -> bool:
    """True when ``dotted`` lies under a ``dict[str, Any]`` field (e.g. ``trainer``)."""
    parts = dotted.split(".")
    node: Any = base
    for part in parts[:-1]:
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
        if isinstance(node, DictConfig) and node._metadata.object_type in (None, dict):
            return True
    return False


def _has_key(base: DictConfig, dotted: str) -> bool:
    node: Any = base
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in list(node.keys()):
            return False
        node = node._get_node(part)
    return True


def _check_keys(base: DictConfig, overrides: dict, source: str) -> None:
    for dotted, _ in _flatten(overrides):
        if dotted and not _free_form(base, dotted) and not _has_key(base, dotted):
            raise _unknown_key_error(base, dotted, source)


def _open_free_form(node: DictConfig) -> None:
    """Allow new keys under ``dict[str, Any]`` fields (e.g. ``trainer``); keep dataclasses strict."""
    for key in list(node.keys()):
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            if child._metadata.object_type in (None, dict):
                OmegaConf.set_struct(child, False)
            else:
                _open_free_form(child)


def structured_config(schema: type) -> DictConfig:
    """The schema's defaults as a strict ``DictConfig`` (unknown keys rejected, ``dict`` fields open)."""
    cfg: DictConfig = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    _open_free_form(cfg)
    return cfg


def merge_config(base: DictConfig, overrides: dict, source: str) -> DictConfig:
    """``overrides`` (a plain nested dict) merged onto ``base``, every key checked first.

    Raises:
        ConfigError: starting with ``source`` (a file name, ``"command line"``, ...): an unknown
            key with the closest valid keys ("Did you mean: ..."), or a value of the wrong type.
    """
    _check_keys(base, overrides, source)
    try:
        merged: DictConfig = OmegaConf.merge(base, overrides)  # type: ignore[assignment]
        _open_free_form(merged)
        return merged
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or str(err)
        raise _unknown_key_error(base, str(key), source) from None
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid value for '{err.full_key}': {err.msg}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: {err}") from None


def load_yaml_mapping(path: str | os.PathLike) -> dict:
    """A YAML file's top-level mapping as a plain dict (interpolations left unresolved).

    Raises:
        ConfigError: naming ``path``: missing, not valid YAML, or not a mapping at the top level.
    """
    path = Path(path)
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if isinstance(loaded, ListConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level, got a list")
    return OmegaConf.to_container(loaded, resolve=False)  # type: ignore[return-value]


def split_override(arg: str, source: str = "command line") -> tuple[str, str]:
    """``"key=value"`` → ``(key, value)`` (split at the first ``=``); ``ConfigError`` otherwise."""
    if "=" not in arg:
        raise ConfigError(f"{source}: expected key=value, got '{arg}'")
    key, value = arg.split("=", 1)
    if not key:
        raise ConfigError(f"{source}: empty key in '{arg}'")
    return key, value


def dotlist_to_dict(dotlist: Sequence[str], source: str = "command line") -> dict:
    """``key=value`` strings (OmegaConf dotlist syntax, YAML values) as a nested plain dict."""
    for arg in dotlist:
        split_override(arg, source)
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(list(dotlist)), resolve=False)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"{source}: cannot parse overrides ({err})") from None
    return parsed  # type: ignore[return-value]


def parse_overrides(args: Sequence[str]) -> tuple[dict, str | None]:
    """Split ``key=value`` arguments into a nested dict and the ``experiment`` name."""
    experiment = None
    dotlist: list[str] = []
    for arg in args:
        key, value = split_override(arg)
        if key == "experiment":
            experiment = value
        elif key == "logger" and value in ("none", "wandb", "csv"):
            dotlist.append(f"logger.kind={value}")  # shorthand: logger=none
        else:
            dotlist.append(arg)
    return dotlist_to_dict(dotlist), experiment


def compose_config(
    schema: type,
    *,
    part: str,
    config_dir: str | os.PathLike,
    overrides: Sequence[str] = (),
    experiment: str | None = None,
    base_files: Sequence[str] | None = None,
) -> DictConfig:
    """Build the validated config of ``part``.

    Args:
        schema: the part's structured-config dataclass (a :class:`RunConfig` subclass).
        part: part name; ``configs/<part>.yaml`` is its base file (optional).
        config_dir: folder holding ``<part>.yaml`` and ``experiment/<name>.yaml``.
        overrides: ``key=value`` strings; ``experiment=NAME`` is allowed among them.
        experiment: experiment name (overridden by an ``experiment=`` entry).
        base_files: the part's base YAML files under ``config_dir``, merged in order
            (default ``[<part>.yaml]``, optional there). Named files must exist: a part that
            reuses another part's system layers its own file on top, e.g. the pSp baseline's
            ``["tgan.yaml", "baselines/psp_face_tgan.yaml"]``.

    Returns:
        A read-only, fully validated ``DictConfig`` with ``part`` set.
    """
    config_dir = Path(config_dir)
    cli, cli_experiment = parse_overrides(overrides)
    experiment = cli_experiment or experiment

    cfg = merge_config(structured_config(schema), {"part": part}, "train.py")

    if base_files is None:
        default = config_dir / f"{part}.yaml"
        files = [default] if default.exists() else []
    else:
        files = [config_dir / name for name in base_files]
    for base_file in files:
        if not base_file.is_file():
            raise ConfigError(f"{base_file}: no such config file (a base file of part '{part}')")
        cfg = merge_config(cfg, load_yaml_mapping(base_file), str(base_file))

    if experiment:
        exp_file = config_dir / "experiment" / f"{experiment}.yaml"
        if not exp_file.exists():
            available = sorted(p.stem for p in (config_dir / "experiment").glob("*.yaml"))
            raise ConfigError(f"{exp_file}: no such experiment; available: {', '.join(available) or 'none'}")
        content = load_yaml_mapping(exp_file)
        for section in content:
            if not isinstance(content[section], dict):
                raise ConfigError(f"{exp_file}: top-level key '{section}' must map to a section of overrides")
        if EXPERIMENT_ALL in content:
            cfg = merge_config(cfg, content[EXPERIMENT_ALL], f"{exp_file} [{EXPERIMENT_ALL}]")
        if part in content:
            cfg = merge_config(cfg, content[part], f"{exp_file} [{part}]")

    if cli:
        cfg = merge_config(cfg, cli, "command line")

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"config interpolation failed: {err}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"config keys without a value (set them): {', '.join(missing)}")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def config_to_plain(cfg: Any) -> Any:
    """A resolved ``DictConfig`` (or dataclass) as plain dicts/lists/scalars (safe for ``weights_only``)."""
    if not isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


def config_from_plain(schema: type[T], plain: dict, source: str = "config") -> T:
    """Validate a plain dict against ``schema`` and return the dataclass instance."""
    merged = merge_config(structured_config(schema), plain, source)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def save_config_yaml(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as resolved YAML, atomically."""
    text = OmegaConf.to_yaml(OmegaConf.create(config_to_plain(cfg)))
    return atomic_write_text(path, text)
