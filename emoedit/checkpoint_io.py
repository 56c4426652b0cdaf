"""Reading training checkpoints safely and checking they fit a config.

Checkpoints are Lightning ``.ckpt`` files (plain dicts) written by ``train.py``. They are
always read with ``torch.load(weights_only=True)``; the hyperparameters inside are plain
dicts (``hyper_parameters["config"]`` = the part's ``model`` section), so a checkpoint
can be checked against a config without unpickling any object.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the config it is used with."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip errors, unpickling errors, truncation
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    return ckpt


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            full = f"{prefix}{key}"
            if key not in a:
                out.append(f"{full}: absent in checkpoint, {b[key]!r} in config")
            elif key not in b:
                out.append(f"{full}: {a[key]!r} in checkpoint, absent in config")
            else:
                out.extend(_diff(a[key], b[key], full + "."))
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} in checkpoint, {b!r} in config"]


def check_model_config(
    ckpt: dict[str, Any],
    model_config: dict[str, Any],
    *,
    part: str,
    path: str | os.PathLike,
    ignore: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt`` was trained for ``part`` with ``model_config``.

    ``model_config`` is the plain ``model`` section of the current config. Every difference
    is listed, so a user resuming with a changed architecture sees exactly what changed.
    Top-level keys in ``ignore`` (settings that do not change the weights) may differ.
    """
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "config" not in hparams:
        raise CheckpointError(f"{path}: no emoedit hyperparameters in this checkpoint (not written by train.py?)")
    ckpt_part = checkpoint_part(ckpt)
    if ckpt_part is not None and ckpt_part != part:
        raise CheckpointError(f"{path}: checkpoint of part '{ckpt_part}', but this run trains '{part}'")
    saved = {k: v for k, v in hparams["config"].items() if k not in ignore}
    differences = _diff(saved, {k: v for k, v in model_config.items() if k not in ignore})
    if differences:
        lines = "\n  ".join(differences)
        raise CheckpointError(f"{path}: checkpoint does not fit this config's model section:\n  {lines}")


def checkpoint_part(ckpt: Mapping[str, Any]) -> Any:
    """The part name a ``train.py`` checkpoint records (``hyper_parameters["part"]``); ``None`` when absent."""
    hparams = ckpt.get("hyper_parameters")
    return hparams.get("part") if isinstance(hparams, Mapping) else None


def require_part(
    ckpt: Mapping[str, Any],  # a loaded checkpoint dict
    expected: str | tuple[str, ...],  # the part name(s) the caller can use
    path: str | os.PathLike,  # the checkpoint's file, named in the error
    *,
    hint: str = "",  # appended in parentheses, e.g. which train.py part writes such a file
) -> str:
    """The checkpoint's part name; raises :class:`CheckpointError` naming ``path``, the found and the expected part."""
    found = checkpoint_part(ckpt)
    wanted = (expected,) if isinstance(expected, str) else tuple(expected)
    if found not in wanted:
        names = " or ".join(repr(name) for name in wanted)
        suffix = f" ({hint})" if hint else ""
        raise CheckpointError(f"{path}: checkpoint of part {found!r}, expected {names}{suffix}")
    return found


def state_dict_under(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state`` whose key starts with ``prefix``, keyed without it (e.g. ``"G_ema."``)."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
