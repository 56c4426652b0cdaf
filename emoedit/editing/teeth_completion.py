"""Teeth completion at inference (METHOD.md §3.7): complete the rendered mouth and paste it back.

The face model has no teeth, so a rendered open mouth shows a hole. :class:`TeethCompleter`
fills it exactly as the teeth encoder was trained to (``train.py teeth_encoder``):

1. **align** the mouth of every frame from its 20 projected mouth landmarks
   (:func:`~emoedit.data.alignment.align_mouths`, the same template, crop size ``M`` and
   mouth width as the ``mouths`` cache the encoder trained on);
2. **remove** the teeth region — the inner-lip polygon (0-based landmarks 60..67) grown by
   ``dilate_px`` (:func:`~emoedit.data.mouth.polygon_mask`) — with ``fill``
   (:func:`~emoedit.data.mouth.remove_region`), so the encoder sees what it saw in training
   whatever the renderer put inside the mouth;
3. **encode** the teeth-removed crop into the teeth t-GAN's W+ (pSp encoder) and **decode**
   it with the teeth generator: the complete mouth ``generated``. The crop is area-resized
   from ``M`` to the generator's resolution ``R`` first (what the training DataModule does)
   and the decoded image resized back to ``M`` (bilinear, antialiased when shrinking);
4. **paste** back only the inner-mouth region: a feathered mask (the inner-lip polygon
   grown by ``dilate_px + feather_px / 2``, blurred with a Gaussian of σ = ``feather_px / 4``,
   and at least 1 on the removed region itself) is warped into the frame with the inverse
   crop transform (:func:`~emoedit.data.alignment.paste_crop_into_frame`). Frame pixels
   where the warped mask is 0 are returned unchanged (bit for bit).

Loading is Lightning-free: :meth:`TeethCompleter.from_checkpoints` reads a ``teeth_encoder``
checkpoint with ``weights_only=True``; it holds the encoder (``encoder.*`` + its
constructor arguments), the generator it was trained with (``generator.*`` + the teeth
t-GAN's model config) and the mouths cache's ``mouth`` attributes (crop size, mouth width,
template, teeth dilation, fill), which become the completer's defaults. A ``teeth_tgan``
checkpoint may be given instead for the generator (its ``G_ema``).

Shapes: frames (B, 3, H, W) float in [0, 1]; landmarks (B, 68, 2) frame pixels (x right,
y down); crops (B, 3, M, M) float in [0, 1]; masks (B, 1, M, M).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.checkpoint_io import CheckpointError, load_checkpoint, require_part, state_dict_under
from emoedit.data.alignment import CropTransform, MouthTemplate, align_mouths, paste_crop_into_frame
from emoedit.data.detection import NUM_LANDMARKS68
from emoedit.data.mouth import (
    DEFAULT_DILATE_PX,
    DEFAULT_MOUTH_CROP_SIZE,
    DEFAULT_MOUTH_WIDTH,
    INNER_LIP_IDS,
    polygon_mask,
    remove_region,
)
from emoedit.networks.psp_encoder import ENCODER_KWARGS_KEY, ENCODER_STATE_PREFIX, PSPEncoder, load_matching
from emoedit.networks.stylegan2 import StyleGAN2Generator
from emoedit.networks.stylegan2.checkpoint import (
    EMA_STATE_PREFIX,
    ENCODER_GENERATOR_PREFIX,
    ENCODER_TGAN_CONFIG_KEY,
    generator_from_tgan_config,
    load_ema_generator,
    load_encoder_generator,
)
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

#: Part names of the checkpoints written by ``train.py teeth_tgan`` / ``train.py teeth_encoder``.
TEETH_TGAN_PART = "teeth_tgan"
TEETH_ENCODER_PART = "teeth_encoder"
#: Keys of a teeth_encoder checkpoint (the first two are the texture encoder's, shared).
GENERATOR_CONFIG_KEY = ENCODER_TGAN_CONFIG_KEY  # the teeth t-GAN's model config (plain dict)
GENERATOR_STATE_PREFIX = ENCODER_GENERATOR_PREFIX  # the generator the encoder was trained with
MOUTH_SETTINGS_KEY = "mouth_settings"  # the mouths cache's "mouth" attributes (plain dict)
DEFAULT_FEATHER_PX = 4.0  # width of the soft edge of the paste-back mask, mouth-crop pixels
NOISE_MODES = ("const", "random", "none")


# ---------------------------------------------------------------- pieces
def gaussian_blur(
    images: Tensor,  # (B, C, H, W) float
    sigma: float,  # standard deviation, pixels (0: no blur)
) -> Tensor:
    """Separable Gaussian blur, zero padding (values beyond the border count as 0), radius ``ceil(3σ)``."""
    assert_shape(images, (None, None, None, None), "images")
    if sigma < 0:
        raise ValueError(f"gaussian_blur: sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return images.clone()
    radius = max(1, math.ceil(3.0 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1)
    out = F.conv2d(images, horizontal, padding=(0, radius), groups=channels)
    return F.conv2d(out, vertical, padding=(radius, 0), groups=channels)


def feathered_mouth_mask(
    inner_lips: Tensor,  # (B, 8, 2) inner-lip landmarks (iBUG 61-68) in mouth-crop pixels, in order
    size: int,  # mouth crop side M, pixels
    *,
    dilate_px: float = DEFAULT_DILATE_PX,  # growth of the removed teeth region (as in the cache)
    feather_px: float = DEFAULT_FEATHER_PX,  # width of the soft edge (0: the hard removed region)
    removed: Tensor | None = None,  # (B, 1, M, M) bool: polygon_mask(inner_lips, dilate_px) when already made
) -> Tensor:
    """(B, 1, M, M) float in [0, 1]: the paste-back weight of the completed mouth.

    ``max(blur(polygon grown by dilate_px + feather_px/2, σ = feather_px/4), removed region)``:
    1 on the whole removed region, falling to 0 about ``feather_px`` beyond it.
    """
    dims = assert_shape(inner_lips, ("B", len(INNER_LIP_IDS), 2), "inner_lips")
    if feather_px < 0:
        raise ValueError(f"feathered_mouth_mask: feather_px must be >= 0, got {feather_px}")
    if removed is None:
        removed = polygon_mask(inner_lips, (size, size), dilate_px=dilate_px)
    assert_shape(removed, ("B", 1, size, size), "removed", dims)
    hard = removed.float()
    if feather_px == 0:
        return hard
    core = polygon_mask(inner_lips, (size, size), dilate_px=dilate_px + feather_px / 2).float()
    soft = gaussian_blur(core, feather_px / 4)
    return torch.maximum(soft, hard).clamp(0.0, 1.0)


def resize_square(images: Tensor, size: int, *, mode: str) -> Tensor:
    """``(B, C, S, S)`` → ``(B, C, size, size)``: ``area`` (the training DataModule's default resize) or
    ``smooth`` (bilinear; antialiased when shrinking). Identity when ``S == size``."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if mode == "area":
        return F.interpolate(images, size=(size, size), mode="area")
    if mode == "smooth":
        shrink = images.shape[-1] > size
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    raise ValueError(f"resize_square: mode must be area or smooth, got {mode!r}")


def load_teeth_encoder_parts(
    path: str | os.PathLike,  # a teeth_encoder .ckpt written by train.py
    *,
    map_location: str | torch.device = "cpu",  # device of the loaded tensors
    num_bf16_res: int = 0,  # generator numerics (0 = float32)
) -> tuple[PSPEncoder, StyleGAN2Generator, dict[str, Any]]:
    """``(encoder, generator, mouth settings)`` of a ``teeth_encoder`` checkpoint, both networks in eval mode.

    Mouth settings are the training cache's ``mouth`` attributes (empty dict when the
    checkpoint has none). Raises :class:`CheckpointError` naming the file for anything else.
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    require_part(ckpt, TEETH_ENCODER_PART, path, hint="train.py teeth_encoder")
    kwargs, config, state = ckpt.get(ENCODER_KWARGS_KEY), ckpt.get(GENERATOR_CONFIG_KEY), ckpt.get("state_dict")
    if not isinstance(kwargs, dict) or not isinstance(config, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: no '{ENCODER_KWARGS_KEY}', '{GENERATOR_CONFIG_KEY}' or state_dict "
                              "(not written by train.py teeth_encoder?)")
    try:
        encoder = PSPEncoder(**{**kwargs, "widths": tuple(kwargs["widths"])})
    except (TypeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot build the encoder from {kwargs!r} ({err})") from None
    load_matching(encoder, state_dict_under(state, ENCODER_STATE_PREFIX), source=f"{path}: encoder")
    generator = load_encoder_generator(ckpt, path=path, map_location=map_location, num_bf16_res=num_bf16_res)
    settings = ckpt.get(MOUTH_SETTINGS_KEY)
    return encoder.eval(), generator.eval(), dict(settings) if isinstance(settings, dict) else {}


def load_teeth_generator(
    path: str | os.PathLike,  # a teeth_tgan .ckpt written by train.py
    *,
    map_location: str | torch.device = "cpu",  # device of the loaded tensors
    num_bf16_res: int = 0,  # generator numerics (0 = float32)
) -> StyleGAN2Generator:
    """The EMA generator (``G_ema``) of a ``teeth_tgan`` checkpoint, in eval mode (no Lightning).

    See :func:`emoedit.networks.stylegan2.checkpoint.load_ema_generator`.
    """
    generator, _ = load_ema_generator(path, part=TEETH_TGAN_PART, map_location=map_location, num_bf16_res=num_bf16_res)
    return generator


# ---------------------------------------------------------------- the module
@dataclass(frozen=True, eq=False)
class TeethCompletionOutput:
    """What :class:`TeethCompleter` returns for B frames of size H×W (M = mouth crop side)."""

    frames: Tensor  # (B, 3, H, W) float in [0, 1]: the frames with the completed mouth pasted in
    crop: Tensor  # (B, 3, M, M) float in [0, 1]: completed mouth crop (generated blended in with blend_mask)
    crop_input: Tensor  # (B, 3, M, M) float in [0, 1]: the aligned input mouth crop
    crop_removed: Tensor  # (B, 3, M, M) float in [0, 1]: the encoder's input (teeth region = fill)
    generated: Tensor  # (B, 3, M, M) float in [0, 1]: the teeth generator's complete mouth
    mask: Tensor  # (B, 1, M, M) bool: the removed teeth region
    blend_mask: Tensor  # (B, 1, M, M) float in [0, 1]: feathered paste-back weight in crop pixels
    frame_mask: Tensor  # (B, 1, H, W) float in [0, 1]: the same weight in frame pixels (0 = pixel unchanged)
    transform: CropTransform  # batch (B,): frame pixels → mouth-crop pixels
    wplus: Tensor  # (B, num_ws, w_dim) float: the encoded teeth t-GAN latents


class TeethCompleter(nn.Module):
    """Rendered frames + projected landmarks → frames with completed teeth (see the module docstring)."""

    def __init__(
        self,
        *,
        encoder: PSPEncoder,  # teeth encoder: (B, 3, S, S) [-1, 1] → W+ of the teeth t-GAN
        generator: StyleGAN2Generator,  # teeth t-GAN generator (R × R)
        crop_size: int = DEFAULT_MOUTH_CROP_SIZE,  # mouth crop side M, pixels (the mouths cache's)
        mouth_width: float = DEFAULT_MOUTH_WIDTH,  # mouth-corner distance / M (the mouths cache's)
        template: MouthTemplate | None = None,  # mouth alignment target; None: MouthTemplate.default() (the cache's)
        dilate_px: float = DEFAULT_DILATE_PX,  # growth of the teeth region beyond the inner lips, crop pixels
        fill: float = 0.0,  # value of the removed region in [0, 1] (the cache's teeth_fill)
        feather_px: float = DEFAULT_FEATHER_PX,  # soft-edge width of the paste-back mask, crop pixels
        noise_mode: str = "const",  # generator noise: const (deterministic, as the encoder trained), random, none
    ) -> None:
        super().__init__()
        if encoder.num_ws != generator.num_ws or encoder.w_dim != generator.w_dim:
            raise ValueError(f"TeethCompleter: encoder W+ ({encoder.num_ws}×{encoder.w_dim}) does not fit the "
                             f"generator ({generator.num_ws}×{generator.w_dim})")
        if generator.img_channels != 3 or encoder.in_channels != 3:
            raise ValueError("TeethCompleter: encoder and generator must work on RGB images")
        if crop_size < 8 or not 0 < mouth_width <= 1 or dilate_px < 0 or feather_px < 0 or not 0 <= fill <= 1:
            raise ValueError(f"TeethCompleter: bad settings crop_size={crop_size}, mouth_width={mouth_width}, "
                             f"dilate_px={dilate_px}, feather_px={feather_px}, fill={fill}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"TeethCompleter: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.generator = generator.eval().requires_grad_(False)
        template = MouthTemplate.default() if template is None else template
        self.register_buffer("template_points", template.points.clone())
        self.template_name = template.name
        self.crop_size, self.mouth_width = int(crop_size), float(mouth_width)
        self.dilate_px, self.fill, self.feather_px = float(dilate_px), float(fill), float(feather_px)
        self.noise_mode = noise_mode

    @classmethod
    def from_checkpoints(
        cls,
        encoder_checkpoint: str | os.PathLike,  # teeth_encoder .ckpt (encoder + its generator + mouth settings)
        *,
        generator_checkpoint: str | os.PathLike | None = None,  # teeth_tgan .ckpt: its G_ema replaces the stored one
        map_location: str | torch.device = "cpu",  # device of the loaded weights
        feather_px: float = DEFAULT_FEATHER_PX,  # soft-edge width of the paste-back mask, crop pixels
        crop_size: int | None = None,  # None: the checkpoint's mouth settings (else the library default)
        mouth_width: float | None = None,  # None: as crop_size
        dilate_px: float | None = None,  # None: as crop_size
        fill: float | None = None,  # None: as crop_size
        noise_mode: str = "const",  # generator noise
        num_bf16_res: int = 0,  # generator numerics (0 = float32)
    ) -> TeethCompleter:
        """Load everything from checkpoints (``weights_only``; no Lightning). See the module docstring."""
        encoder, generator, settings = load_teeth_encoder_parts(encoder_checkpoint, map_location=map_location,
                                                                num_bf16_res=num_bf16_res)
        if generator_checkpoint is not None:
            generator = load_teeth_generator(generator_checkpoint, map_location=map_location,
                                             num_bf16_res=num_bf16_res)
        template_name = settings.get("template", "default")
        if template_name != "default":
            raise CheckpointError(f"{encoder_checkpoint}: mouth template {template_name!r} is not known here "
                                  "(only the 'default' MouthTemplate)")
        return cls(
            encoder=encoder,
            generator=generator,
            crop_size=int(settings.get("crop_size", DEFAULT_MOUTH_CROP_SIZE)) if crop_size is None else crop_size,
            mouth_width=float(settings.get("mouth_width", DEFAULT_MOUTH_WIDTH)) if mouth_width is None else mouth_width,
            dilate_px=float(settings.get("teeth_dilate_px", DEFAULT_DILATE_PX)) if dilate_px is None else dilate_px,
            fill=float(settings.get("teeth_fill", 0.0)) if fill is None else fill,
            feather_px=feather_px,
            noise_mode=noise_mode,
        ).to(map_location)

    @property
    def template(self) -> MouthTemplate:
        """The mouth alignment template."""
        return MouthTemplate(self.template_points, name=self.template_name)

    def train(self, mode: bool = True) -> TeethCompleter:
        """Always eval: inference only."""
        return super().train(False)

    @torch.no_grad()
    def complete_crops(
        self,
        crop_removed: Tensor,  # (B, 3, M, M) float in [0, 1], teeth region = fill
    ) -> tuple[Tensor, Tensor]:
        """Encode + decode teeth-removed crops → ``(generated (B, 3, M, M) in [0, 1], wplus (B, num_ws, w_dim))``."""
        dims = assert_shape(crop_removed, ("B", 3, "M", "M"), "crop_removed")
        assert_range(crop_removed, 0.0, 1.0, "crop_removed")
        resolution = self.generator.img_resolution
        inputs = resize_square(crop_removed.float(), resolution, mode="area").mul(2.0).sub(1.0)
        wplus = self.encoder(inputs).wplus
        decoded = self.generator.synthesis(wplus, noise_mode=self.noise_mode).float()
        generated = resize_square(decoded.add(1.0).div(2.0).clamp(0.0, 1.0), dims["M"], mode="smooth")
        return generated.clamp(0.0, 1.0), wplus

    @torch.no_grad()
    def forward(
        self,
        frames: Tensor,  # (B, 3, H, W) float in [0, 1], rendered frames
        landmarks: Tensor,  # (B, 68, 2) frame pixels (x right, y down), the projected landmarks
    ) -> TeethCompletionOutput:
        """Complete the mouth of every frame (see the module docstring)."""
        if not isinstance(frames, Tensor) or not frames.is_floating_point():
            raise TypeError(f"frames: expected a float tensor (B, 3, H, W) in [0, 1], got "
                            f"{getattr(frames, 'dtype', type(frames).__name__)}")
        if not isinstance(landmarks, Tensor) or not landmarks.is_floating_point():
            raise TypeError(f"landmarks: expected a float tensor (B, 68, 2), got "
                            f"{getattr(landmarks, 'dtype', type(landmarks).__name__)}")
        dims = assert_shape(frames, ("B", 3, None, None), "frames")
        assert_shape(landmarks, ("B", NUM_LANDMARKS68, 2), "landmarks", dims)
        assert_range(frames, 0.0, 1.0, "frames")
        assert_finite(landmarks, "landmarks")
        if landmarks.device != frames.device:
            raise ValueError(f"landmarks are on {landmarks.device} but frames on {frames.device}")
        size = self.crop_size
        aligned = align_mouths(frames, landmarks, self.template, crop_size=size, mouth_width=self.mouth_width)
        inner = aligned.landmarks[:, list(INNER_LIP_IDS)]
        mask = polygon_mask(inner, (size, size), dilate_px=self.dilate_px)
        crop_removed = remove_region(aligned.crop, mask, fill=self.fill)
        generated, wplus = self.complete_crops(crop_removed)
        blend = feathered_mouth_mask(inner, size, dilate_px=self.dilate_px, feather_px=self.feather_px,
                                     removed=mask).to(generated)
        crop = aligned.crop * (1.0 - blend) + generated * blend
        # One warp for the frames and their mask: a channel of ones pasted over zeros gives the
        # warped weight (channels are resampled independently, so each equals a paste of its own).
        both = paste_crop_into_frame(torch.cat([generated, torch.ones_like(blend)], dim=1).to(frames.dtype),
                                     aligned.transform,
                                     torch.cat([frames, frames.new_zeros(dims["B"], 1, *frames.shape[-2:])], dim=1),
                                     mask=blend.to(frames.dtype))
        pasted, frame_mask = both[:, :3], both[:, 3:]
        return TeethCompletionOutput(
            frames=pasted, crop=crop.clamp(0.0, 1.0), crop_input=aligned.crop, crop_removed=crop_removed,
            generated=generated, mask=mask, blend_mask=blend, frame_mask=frame_mask.clamp(0.0, 1.0),
            transform=aligned.transform, wplus=wplus,
        )


__all__ = [
    "EMA_STATE_PREFIX",
    "MOUTH_SETTINGS_KEY",
    "TEETH_ENCODER_PART",
    "TEETH_TGAN_PART",
    "TeethCompleter",
    "TeethCompletionOutput",
    "feathered_mouth_mask",
    "gaussian_blur",
    "generator_from_tgan_config",
    "load_teeth_encoder_parts",
    "load_teeth_generator",
]
