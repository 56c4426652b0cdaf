"""Loading a t-GAN's EMA generator out of a ``train.py`` checkpoint, without Lightning.

A ``tgan`` or ``teeth_tgan`` checkpoint (written by :class:`lightning_modules.tgan.TGANSystem`)
holds ``hyper_parameters = {"part", "config"}`` (the part's plain ``model`` config) and a
``state_dict`` with the generator ``G.*``, the discriminator ``D.*``, the EMA generator
``G_ema.*`` and the path-length mean. Inference needs only ``G_ema``:
:func:`load_generator_checkpoint` rebuilds a :class:`StyleGAN2Generator` from the config's
architecture keys (:func:`generator_from_tgan_config`) and loads the ``G_ema.*`` tensors
strictly (every tensor present, none extra, same shapes). Everything else in the file is
ignored, so a slimmed file holding only ``G_ema.*`` (a pipeline bundle's) loads the same way
(:func:`load_ema_generator` is the same without hashing the file).

A texture or teeth encoder checkpoint carries the generator it was trained with (its
``tgan_config`` and ``generator.*`` tensors; fine-tuned when ``model.finetune_generator``):
:func:`load_encoder_generator` rebuilds it, :func:`encoder_generator_state` returns its
config and tensors (what a bundle slims), :func:`finetunes_generator` says whether it was
trained jointly. Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from emoedit.atomic_io import sha256_file
from emoedit.checkpoint_io import (
    CheckpointError,
    checkpoint_part,
    load_checkpoint,
    require_part,
    state_dict_under,
)
from emoedit.networks.psp_encoder import load_matching
from emoedit.networks.stylegan2.generator import StyleGAN2Generator

#: Part names of the checkpoints holding a StyleGAN2 (``train.py tgan`` / ``train.py teeth_tgan``).
GENERATOR_PARTS: tuple[str, ...] = ("tgan", "teeth_tgan")
#: Prefix of the EMA generator's tensors in such a checkpoint's ``state_dict``.
EMA_STATE_PREFIX = "G_ema."
#: Keys of an encoder checkpoint (``train.py texture_encoder`` / ``teeth_encoder``) that carry the generator
#: it was trained with: the t-GAN's model config and the generator's ``state_dict`` prefix.
ENCODER_TGAN_CONFIG_KEY = "tgan_config"
ENCODER_GENERATOR_PREFIX = "generator."


def generator_from_tgan_config(
    config: Mapping[str, Any],  # a t-GAN model config (plain dict: TGANModelConfig fields)
    *,
    num_bf16_res: int = 0,  # the N highest resolutions run in bfloat16 (0 = float32); not part of the weights
    channels_last: bool = False,  # channels-last activations; not part of the weights
) -> StyleGAN2Generator:
    """A :class:`StyleGAN2Generator` shaped like the t-GAN of ``config``.

    The same constructor arguments as the t-GAN system's generator (architecture keys;
    ``num_bf16_res`` and ``channels_last`` are numerics / layout choices that do not change
    the state dict). Raises :class:`CheckpointError` when a key is missing or invalid.
    """
    try:
        return StyleGAN2Generator(
            z_dim=int(config["z_dim"]), w_dim=int(config["w_dim"]), img_resolution=int(config["resolution"]),
            img_channels=int(config.get("img_channels", 3)), mapping_layers=int(config["mapping_layers"]),
            mapping_lr_multiplier=float(config.get("mapping_lr_multiplier", 0.01)),
            w_avg_beta=float(config.get("w_avg_beta", 0.995)), channel_base=int(config["channel_base"]),
            channel_max=int(config["channel_max"]), num_bf16_res=int(num_bf16_res), channels_last=bool(channels_last),
            conv_clamp=config.get("conv_clamp"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"cannot build a generator from the t-GAN config {dict(config)!r} ({err})") from None


def generator_config_of(ckpt: Mapping[str, Any], *, part: str, path: str | os.PathLike) -> dict[str, Any]:
    """The plain t-GAN model config of a loaded checkpoint dict, after checking its part name."""
    if part not in GENERATOR_PARTS:
        raise ValueError(f"part must be one of {GENERATOR_PARTS}, got {part!r}")
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("config"), dict):
        raise CheckpointError(f"{path}: no emoedit hyperparameters (not a {part} checkpoint written by train.py?)")
    require_part(ckpt, part, path)
    return dict(hparams["config"])


def load_ema_generator(
    path: str | os.PathLike,  # a tgan / teeth_tgan .ckpt written by train.py (or a slimmed copy)
    *,
    part: str,  # expected part name: "tgan" or "teeth_tgan"
    map_location: str | torch.device = "cpu",  # device of the loaded tensors
    num_bf16_res: int | None = 0,  # generator numerics (0 = float32); None = the checkpoint config's own
    channels_last: bool | None = False,  # activation layout; None = the checkpoint config's own
) -> tuple[StyleGAN2Generator, dict[str, Any]]:
    """``(G_ema in eval mode with requires_grad False, the t-GAN model config)``; the file is not hashed.

    ``G_ema`` is rebuilt from the checkpoint's ``hyper_parameters["config"]`` and its
    ``G_ema.*`` tensors are loaded strictly. Raises :class:`CheckpointError` naming the
    file for another part, a missing config or state dict, or tensors that do not fit.
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    config = generator_config_of(ckpt, part=part, path=path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state_dict")
    bf16 = int(config.get("num_bf16_res", 0)) if num_bf16_res is None else int(num_bf16_res)
    layout = bool(config.get("channels_last", False)) if channels_last is None else bool(channels_last)
    try:
        generator = generator_from_tgan_config(config, num_bf16_res=bf16, channels_last=layout)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    weights = state_dict_under(state, EMA_STATE_PREFIX)
    load_matching(generator, weights, source=f"{path}: G_ema")
    generator.to(map_location)
    generator.eval().requires_grad_(False)
    return generator, config


def load_generator_checkpoint(
    path: str | os.PathLike,  # a tgan / teeth_tgan .ckpt written by train.py (or a slimmed copy)
    *,
    part: str,  # expected part name: "tgan" or "teeth_tgan"
    map_location: str | torch.device = "cpu",  # device of the loaded tensors
    num_bf16_res: int | None = 0,  # generator numerics (0 = float32); None = the checkpoint config's own
    channels_last: bool | None = False,  # activation layout; None = the checkpoint config's own
) -> tuple[StyleGAN2Generator, dict[str, Any], str]:
    """``(G_ema in eval mode with requires_grad False, the t-GAN model config, the file's sha256)``.

    :func:`load_ema_generator` plus the file's SHA-256 (what an encoder records of its t-GAN).
    """
    generator, config = load_ema_generator(path, part=part, map_location=map_location, num_bf16_res=num_bf16_res,
                                           channels_last=channels_last)
    return generator, config, sha256_file(path)


# --------------------------------------------------------------------------- an encoder's own generator
def finetunes_generator(ckpt: Mapping[str, Any]) -> bool:
    """Whether an encoder checkpoint (texture / teeth encoder) trained its generator jointly
    (``model.finetune_generator`` of its config)."""
    hparams = ckpt.get("hyper_parameters")
    config = hparams.get("config") if isinstance(hparams, Mapping) else None
    return bool(config.get("finetune_generator", False)) if isinstance(config, Mapping) else False


def encoder_generator_state(
    ckpt: Mapping[str, Any],  # a loaded texture_encoder / teeth_encoder checkpoint dict
    *,
    path: str | os.PathLike,  # its file, named in errors
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(the t-GAN model config, the generator's tensors without the "generator." prefix)`` that an
    encoder checkpoint carries (its ``tgan_config`` and ``state_dict["generator.*"]``).

    Raises :class:`CheckpointError` naming ``path`` when either is missing.
    """
    config = ckpt.get(ENCODER_TGAN_CONFIG_KEY)
    state = ckpt.get("state_dict")
    weights = state_dict_under(state, ENCODER_GENERATOR_PREFIX) if isinstance(state, Mapping) else {}
    if not isinstance(config, Mapping) or not weights:
        raise CheckpointError(f"{path}: {checkpoint_part(ckpt) or 'encoder'} checkpoint without '{ENCODER_TGAN_CONFIG_KEY}' or "
                              f"{ENCODER_GENERATOR_PREFIX}* tensors (the generator it was trained with)")
    return dict(config), weights


def load_encoder_generator(
    ckpt: Mapping[str, Any],  # a loaded texture_encoder / teeth_encoder checkpoint dict
    *,
    path: str | os.PathLike,  # its file, named in errors
    map_location: str | torch.device = "cpu",  # device of the generator
    num_bf16_res: int = 0,  # generator numerics (0 = float32)
) -> StyleGAN2Generator:
    """The generator an encoder checkpoint carries (:func:`encoder_generator_state`), rebuilt from
    its t-GAN config and loaded strictly, in eval mode (gradients left as they are)."""
    config, weights = encoder_generator_state(ckpt, path=path)
    try:
        generator = generator_from_tgan_config(config, num_bf16_res=num_bf16_res)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    load_matching(generator, weights, source=f"{path}: {checkpoint_part(ckpt) or 'encoder'} generator")
    return generator.to(map_location).eval()


__all__ = [
    "EMA_STATE_PREFIX",
    "ENCODER_GENERATOR_PREFIX",
    "ENCODER_TGAN_CONFIG_KEY",
    "GENERATOR_PARTS",
    "encoder_generator_state",
    "finetunes_generator",
    "generator_config_of",
    "generator_from_tgan_config",
    "load_ema_generator",
    "load_encoder_generator",
    "load_generator_checkpoint",
]
