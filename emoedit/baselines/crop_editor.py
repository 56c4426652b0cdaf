"""One inference interface for the image-level baselines of METHOD.md §6 (the evaluation harness uses it).

:class:`CropEditor` edits a batch of aligned face crops towards emotion codes::

    editor = StarGANEditor.from_checkpoint("runs/stargan/default/checkpoints/last.ckpt")
    edited = editor.edit(crops, emotion_codes)   # (B, 3, S, S) [0, 1], (B, E_t) -> (B, 3, S, S) [0, 1]

``emotion_codes`` are the strengths of :mod:`emoedit.editing.emotion_code` (``EMOTIONS``
order, neutral = zeros; continuous and mixed strengths are passed to the network as they
are). Crops of any side ``S`` are accepted: they are resized to the editor's
``crop_size`` (the side its network was trained at; ``area`` when shrinking, bilinear when
enlarging), edited, and resized back to ``S``; feed crops of side ``crop_size`` to skip both
resamplings. Editors are ``nn.Module`` s (``.to(device)``; always in eval mode); ``edit``
runs without gradients on the editor's device and returns the result on the crops' device.

Implementations: :class:`StarGANEditor`, :class:`ExprGANEditor` (here) and
:class:`emoedit.baselines.psp_face.PSPFaceEditor`. Loaders read ``train.py`` checkpoints
(or files written by :func:`save_generator`) with ``weights_only=True``, build the
generator from the constructor arguments stored in the file and load its tensors strictly;
a wrong file raises :class:`~emoedit.checkpoint_io.CheckpointError` naming the file and the
part it holds.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.atomic_io import atomic_torch_save
from emoedit.checkpoint_io import CheckpointError, load_checkpoint, require_part, state_dict_under
from emoedit.editing.emotion_code import NUM_EMOTIONS
from emoedit.networks.exprgan import EXPRGAN_GENERATOR_KWARGS_KEY, EXPRGAN_GENERATOR_PREFIX, EXPRGAN_PART, ExprGANGenerator
from emoedit.networks.psp_encoder import load_matching
from emoedit.networks.stargan import (
    STARGAN_GENERATOR_KWARGS_KEY,
    STARGAN_GENERATOR_PREFIX,
    STARGAN_PART,
    StarGANGenerator,
    check_emotion_code,
)
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

#: part name → (generator class, checkpoint key of its constructor arguments, state-dict prefix)
GENERATOR_FORMATS: dict[str, tuple[type[nn.Module], str, str]] = {
    STARGAN_PART: (StarGANGenerator, STARGAN_GENERATOR_KWARGS_KEY, STARGAN_GENERATOR_PREFIX),
    EXPRGAN_PART: (ExprGANGenerator, EXPRGAN_GENERATOR_KWARGS_KEY, EXPRGAN_GENERATOR_PREFIX),
}


def resize_crops(
    images: Tensor,  # (B, C, H, W) float
    size: int,  # output side
) -> Tensor:
    """``(B, C, size, size)``: ``area`` when shrinking, bilinear (``align_corners=False``) when enlarging."""
    if images.shape[-2:] == (size, size):
        return images
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


class CropEditor(nn.Module, abc.ABC):
    """Edits aligned face crops ``(B, 3, S, S)`` in [0, 1] towards emotion codes ``(B, E_t)`` (module docstring)."""

    name: ClassVar[str]  # the method's name in tables ("stargan", "exprgan", "psp")

    def __init__(self, *, crop_size: int, emotion_dim: int = NUM_EMOTIONS) -> None:
        # crop_size: side the network works at, pixels; emotion_dim: E_t, length of the codes
        super().__init__()
        if crop_size < 1 or emotion_dim < 1:
            raise ValueError(f"{type(self).__name__}: crop_size and emotion_dim must be >= 1")
        self.crop_size = int(crop_size)
        self.emotion_dim = int(emotion_dim)
        self.training = False  # always in eval mode (see train())

    @abc.abstractmethod
    def translate(
        self,
        images: Tensor,  # (B, 3, crop_size, crop_size) float in [-1, 1], on the editor's device
        emotion_codes: Tensor,  # (B, E_t) float strengths >= 0, on the editor's device
    ) -> Tensor:
        """The network's edit: ``(B, 3, crop_size, crop_size)`` float, nominally in [-1, 1]."""

    def train(self, mode: bool = True) -> CropEditor:
        """Editors stay in eval mode (``train(True)`` is ignored)."""
        return super().train(False)

    def _device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @torch.no_grad()
    def edit(
        self,
        crops: Tensor,  # (B, 3, S, S) float in [0, 1]: aligned face crops
        emotion_codes: Tensor,  # (B, E_t) float strengths >= 0 (EMOTIONS order; zeros = neutral)
    ) -> Tensor:
        """Edited crops ``(B, 3, S, S)`` float in [0, 1], on ``crops``' device and dtype."""
        dims = assert_shape(crops, ("B", 3, "S", "S"), "crops")
        assert_shape(emotion_codes, ("B", self.emotion_dim), "emotion_codes", dims)
        if not crops.is_floating_point():
            raise TypeError(f"crops must be float in [0, 1], got {crops.dtype}")
        assert_finite(crops, "crops")
        assert_range(crops, 0.0, 1.0, "crops")
        check_emotion_code(emotion_codes, self.emotion_dim, "emotion_codes")
        device = self._device()
        x = resize_crops(crops.to(device=device, dtype=torch.float32), self.crop_size) * 2.0 - 1.0
        out = self.translate(x, emotion_codes.to(device=device, dtype=torch.float32)).float()
        assert_shape(out, (dims["B"], 3, self.crop_size, self.crop_size), f"{type(self).__name__} output")
        out = resize_crops(out.clamp(-1.0, 1.0), dims["S"])
        return out.add(1.0).div(2.0).clamp(0.0, 1.0).to(device=crops.device, dtype=crops.dtype)


# --------------------------------------------------------------------------- checkpoints


def load_generator(
    path: str | os.PathLike,  # a train.py checkpoint of the part, or a save_generator file
    *,
    part: str,  # "stargan" or "exprgan"
    map_location: str | torch.device = "cpu",  # device of the loaded tensors
) -> tuple[nn.Module, dict[str, Any]]:
    """``(generator in eval mode, the part's model config)`` from a checkpoint (``weights_only``, strict).

    Raises :class:`CheckpointError` naming the file for another part, missing constructor
    arguments or state dict, or tensors that do not fit.
    """
    if part not in GENERATOR_FORMATS:
        raise ValueError(f"part must be one of {tuple(GENERATOR_FORMATS)}, got {part!r}")
    cls, kwargs_key, prefix = GENERATOR_FORMATS[part]
    path = Path(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    require_part(ckpt, part, path, hint=f"the {part} baseline's train.py checkpoint")
    kwargs, state = ckpt.get(kwargs_key), ckpt.get("state_dict")
    config = ckpt["hyper_parameters"].get("config")
    if not isinstance(kwargs, dict) or not isinstance(state, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: {part} checkpoint without '{kwargs_key}', model config or state_dict "
                              "(not written by train.py?)")
    try:
        generator = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot build the {part} generator from {kwargs!r} ({err})") from None
    weights = state_dict_under(state, prefix)
    load_matching(generator, weights, source=f"{path}: {part} generator")
    generator.to(map_location)
    return generator.eval().requires_grad_(False), dict(config)


def save_generator(
    generator: nn.Module,  # a StarGANGenerator or ExprGANGenerator
    path: str | os.PathLike,  # file to write (atomically)
    *,
    part: str,  # "stargan" or "exprgan"
    resolution: int,  # crop side the generator was trained at (the model config's ``resolution``)
) -> Path:
    """A stand-alone generator file that :func:`load_generator` (and the editors) read."""
    if part not in GENERATOR_FORMATS:
        raise ValueError(f"part must be one of {tuple(GENERATOR_FORMATS)}, got {part!r}")
    cls, kwargs_key, prefix = GENERATOR_FORMATS[part]
    if not isinstance(generator, cls):
        raise TypeError(f"save_generator: part {part!r} holds a {cls.__name__}, got {type(generator).__name__}")
    state = {prefix + k: v.detach().cpu() for k, v in generator.state_dict().items()}
    body = {"hyper_parameters": {"part": part, "config": {"resolution": int(resolution)}},
            kwargs_key: dict(generator.init_kwargs), "state_dict": state}  # type: ignore[arg-type]
    return atomic_torch_save(body, path)


# --------------------------------------------------------------------------- editors


class StarGANEditor(CropEditor):
    """StarGAN: ``G(x, c)`` on crops resized to the training resolution."""

    name = "stargan"

    def __init__(self, *, generator: StarGANGenerator, crop_size: int) -> None:
        # generator: trained G; crop_size: its training resolution (model.resolution)
        super().__init__(crop_size=crop_size, emotion_dim=generator.emotion_dim)
        step = 2 ** generator.num_down
        if crop_size % step:
            raise ValueError(f"StarGANEditor: crop_size {crop_size} must be divisible by {step}")
        self.generator = generator.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> StarGANEditor:
        """The editor of a ``train.py stargan`` checkpoint (or a :func:`save_generator` file)."""
        generator, config = load_generator(path, part=STARGAN_PART, map_location=map_location)
        resolution = config.get("resolution")
        if not isinstance(resolution, int):
            raise CheckpointError(f"{path}: stargan checkpoint without model config 'resolution'")
        return cls(generator=generator, crop_size=resolution)  # type: ignore[arg-type]

    def translate(self, images: Tensor, emotion_codes: Tensor) -> Tensor:
        return self.generator(images, emotion_codes)


class ExprGANEditor(CropEditor):
    """ExprGAN: ``G_dec(G_enc(x), F_ctrl(e))`` on crops resized to the generator's side."""

    name = "exprgan"

    def __init__(self, *, generator: ExprGANGenerator) -> None:  # generator: trained G (its side is crop_size)
        super().__init__(crop_size=generator.image_size, emotion_dim=generator.emotion_dim)
        self.generator = generator.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ExprGANEditor:
        """The editor of a ``train.py exprgan`` checkpoint (or a :func:`save_generator` file)."""
        generator, _ = load_generator(path, part=EXPRGAN_PART, map_location=map_location)
        return cls(generator=generator)  # type: ignore[arg-type]

    def translate(self, images: Tensor, emotion_codes: Tensor) -> Tensor:
        return self.generator(images, emotion_codes).image


def __getattr__(name: str) -> Any:
    """``PSPFaceEditor`` lives in :mod:`emoedit.baselines.psp_face` (it builds on this module);
    it is reachable from here too, so that every editor can be found in one place."""
    if name == "PSPFaceEditor":
        from emoedit.baselines.psp_face import PSPFaceEditor

        return PSPFaceEditor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CropEditor",
    "ExprGANEditor",
    "GENERATOR_FORMATS",
    "StarGANEditor",
    "load_generator",
    "resize_crops",
    "save_generator",
]
