"""StarGAN (Choi et al., CVPR 2018): the paper's strongest baseline (METHOD.md §6), on aligned face crops.

An image-to-image translator conditioned on the **target emotion code** of
:mod:`emoedit.editing.emotion_code` (``E_t = 7`` strengths in ``EMOTIONS`` order, neutral =
all zeros; continuous strengths, mixtures and values beyond 1 are accepted and simply fed
to the network, which was trained on the strengths the data module draws):

- :class:`StarGANGenerator` ``G(x, c)``: the code is replicated into ``E_t`` constant
  feature maps and concatenated to the image; a 7×7 convolution, ``num_down`` stride-2
  4×4 down-sampling convolutions, ``num_res_blocks`` residual blocks, ``num_down`` 4×4
  transposed convolutions and a 7×7 convolution with ``tanh`` give the output image
  directly (no residual to the input, no attention mask), as in the paper. Every
  convolution but the last is followed by instance normalisation (affine) and ReLU.
  Instance normalisation never tracks running statistics here (the official code sets
  ``track_running_stats=True`` but never switches to eval mode, so it always normalises with
  the instance statistics; this module behaves the same in train and eval mode).
- :class:`StarGANDiscriminator` ``D(x)``: a PatchGAN of ``num_layers`` stride-2 4×4
  convolutions with LeakyReLU(0.01) (no normalisation: the WGAN-GP penalty is per sample)
  and two heads: ``source`` — a 3×3 convolution to one channel, the per-patch critic
  score ``(B, 1, k, k)`` with ``k = image_size / 2^num_layers``; ``emotion_logits`` — a
  ``k × k`` convolution to ``E_t`` channels, the auxiliary emotion classifier ``(B, E_t)``.

Images are NCHW float in [-1, 1] (the networks' convention). Paper sizes at 128²:
``conv_dim = 64, num_down = 2, num_res_blocks = 6`` (G), ``conv_dim = 64, num_layers = 6``
(D). Training (WGAN-GP, domain classification, cycle reconstruction) is in
:mod:`lightning_modules.stargan`; the inference wrapper is
:class:`emoedit.baselines.crop_editor.StarGANEditor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from emoedit.editing.emotion_code import NUM_EMOTIONS
from emoedit.shape_checks import assert_finite, assert_shape

#: Part name of the checkpoints written by ``train.py stargan``.
STARGAN_PART = "stargan"
#: Checkpoint key holding :attr:`StarGANGenerator.init_kwargs` (a plain dict).
STARGAN_GENERATOR_KWARGS_KEY = "stargan_generator_kwargs"
#: Prefix of the generator's tensors in such a checkpoint's ``state_dict``.
STARGAN_GENERATOR_PREFIX = "generator."


def code_maps(
    emotion_code: Tensor,  # (B, E) float strengths
    height: int,  # H of the maps
    width: int,  # W of the maps
) -> Tensor:
    """The code as ``E`` constant feature maps ``(B, E, H, W)`` (StarGAN's spatial replication)."""
    return emotion_code[:, :, None, None].expand(-1, -1, height, width)


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class ResidualBlock(nn.Module):
    """``x + IN(conv3(ReLU(IN(conv3(x)))))`` at constant width (StarGAN's bottleneck block)."""

    def __init__(self, *, channels: int) -> None:  # channels: input = output width
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False), _instance_norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False), _instance_norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class StarGANGenerator(nn.Module):
    """``G(x, c)``: face crop ``(B, C, H, W)`` in [-1, 1] + emotion code ``(B, E)`` → edited crop in [-1, 1]."""

    def __init__(
        self,
        *,
        image_channels: int = 3,  # C, channels of the images
        emotion_dim: int = NUM_EMOTIONS,  # E, length of the emotion code
        conv_dim: int = 64,  # channels of the first convolution (doubled at every down-sampling)
        num_down: int = 2,  # stride-2 down-sampling (and up-sampling) stages; H, W must divide by 2^num_down
        num_res_blocks: int = 6,  # residual blocks at the bottleneck
    ) -> None:
        super().__init__()
        if min(image_channels, emotion_dim, conv_dim) < 1 or num_down < 0 or num_res_blocks < 0:
            raise ValueError(f"StarGANGenerator: invalid sizes image_channels={image_channels}, emotion_dim="
                             f"{emotion_dim}, conv_dim={conv_dim}, num_down={num_down}, num_res_blocks={num_res_blocks}")
        self.init_kwargs: dict[str, Any] = dict(image_channels=int(image_channels), emotion_dim=int(emotion_dim),
                                                conv_dim=int(conv_dim), num_down=int(num_down),
                                                num_res_blocks=int(num_res_blocks))
        self.image_channels, self.emotion_dim, self.num_down = int(image_channels), int(emotion_dim), int(num_down)
        layers: list[nn.Module] = [
            nn.Conv2d(image_channels + emotion_dim, conv_dim, 7, stride=1, padding=3, bias=False),
            _instance_norm(conv_dim), nn.ReLU(inplace=True),
        ]
        width = conv_dim
        for _ in range(num_down):
            layers += [nn.Conv2d(width, width * 2, 4, stride=2, padding=1, bias=False), _instance_norm(width * 2),
                       nn.ReLU(inplace=True)]
            width *= 2
        layers += [ResidualBlock(channels=width) for _ in range(num_res_blocks)]
        for _ in range(num_down):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1, bias=False),
                       _instance_norm(width // 2), nn.ReLU(inplace=True)]
            width //= 2
        layers += [nn.Conv2d(width, image_channels, 7, stride=1, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(
        self,
        images: Tensor,  # (B, C, H, W) float in [-1, 1]; H and W divisible by 2^num_down
        emotion_code: Tensor,  # (B, E) float target strengths (eq. 2 codes; zeros = neutral)
    ) -> Tensor:
        """Edited images ``(B, C, H, W)`` float in [-1, 1] (tanh output)."""
        dims = assert_shape(images, ("B", self.image_channels, "H", "W"), "StarGANGenerator images")
        assert_shape(emotion_code, ("B", self.emotion_dim), "StarGANGenerator emotion_code", dims)
        step = 2 ** self.num_down
        if dims["H"] % step or dims["W"] % step:
            raise ValueError(f"StarGANGenerator: image size {dims['H']}x{dims['W']} must be divisible by {step}")
        code = emotion_code.to(images.dtype)
        return self.main(torch.cat([images, code_maps(code, dims["H"], dims["W"])], dim=1))


@dataclass(frozen=True)
class StarGANDiscriminatorOutput:
    """One discriminator pass."""

    source: Tensor  # (B, 1, k, k) per-patch WGAN critic scores (unbounded; higher = more real)
    emotion_logits: Tensor  # (B, E) auxiliary emotion classifier logits (sigmoid = predicted strength)

    @property
    def critic(self) -> Tensor:
        """(B,) the mean patch score per image."""
        return self.source.mean(dim=(1, 2, 3))


class StarGANDiscriminator(nn.Module):
    """``D(x)``: PatchGAN critic ``D_src`` and auxiliary emotion classifier ``D_cls`` (see the module docstring)."""

    def __init__(
        self,
        *,
        image_size: int = 128,  # side S of the (square) input images; divisible by 2^num_layers
        image_channels: int = 3,  # C, channels of the images
        emotion_dim: int = NUM_EMOTIONS,  # E, outputs of the classifier head
        conv_dim: int = 64,  # channels of the first convolution (doubled every layer)
        num_layers: int = 6,  # stride-2 4×4 convolutions (paper: 6 at 128²)
        max_channels: int = 2048,  # cap on the channels of any layer (paper: no cap, 2048 at 128²)
    ) -> None:
        super().__init__()
        if num_layers < 1 or image_size % (2 ** num_layers) or image_size < 2 ** num_layers:
            raise ValueError(f"StarGANDiscriminator: image_size {image_size} must be a positive multiple of "
                             f"2^num_layers = {2 ** max(num_layers, 0)}")
        if min(image_channels, emotion_dim, conv_dim, max_channels) < 1:
            raise ValueError("StarGANDiscriminator: image_channels, emotion_dim, conv_dim and max_channels must be >= 1")
        self.init_kwargs: dict[str, Any] = dict(image_size=int(image_size), image_channels=int(image_channels),
                                                emotion_dim=int(emotion_dim), conv_dim=int(conv_dim),
                                                num_layers=int(num_layers), max_channels=int(max_channels))
        self.image_size, self.image_channels, self.emotion_dim = int(image_size), int(image_channels), int(emotion_dim)
        layers: list[nn.Module] = []
        width_in, width = image_channels, min(conv_dim, max_channels)
        for _ in range(num_layers):
            layers += [nn.Conv2d(width_in, width, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            width_in, width = width, min(width * 2, max_channels)
        self.main = nn.Sequential(*layers)
        self.patch_side = image_size // 2 ** num_layers
        self.source_head = nn.Conv2d(width_in, 1, 3, stride=1, padding=1, bias=False)
        self.emotion_head = nn.Conv2d(width_in, emotion_dim, self.patch_side, bias=False)

    def forward(self, images: Tensor) -> StarGANDiscriminatorOutput:  # (B, C, S, S) float in [-1, 1]
        """Patch critic scores ``(B, 1, k, k)`` and emotion logits ``(B, E)``."""
        assert_shape(images, (None, self.image_channels, self.image_size, self.image_size), "StarGANDiscriminator images")
        hidden = self.main(images)
        return StarGANDiscriminatorOutput(source=self.source_head(hidden),
                                          emotion_logits=self.emotion_head(hidden).flatten(1))


def check_emotion_code(emotion_code: Tensor, emotion_dim: int, name: str = "emotion_code") -> None:
    """Raise ``ValueError`` unless ``emotion_code`` is ``(B, emotion_dim)``, finite and >= 0."""
    assert_shape(emotion_code, (None, emotion_dim), name)
    assert_finite(emotion_code, name)
    if emotion_code.numel() and float(emotion_code.min()) < 0:
        raise ValueError(f"{name}: strengths must be >= 0 (a negative strength is not an emotion)")


__all__ = [
    "STARGAN_GENERATOR_KWARGS_KEY",
    "STARGAN_GENERATOR_PREFIX",
    "STARGAN_PART",
    "ResidualBlock",
    "StarGANDiscriminator",
    "StarGANDiscriminatorOutput",
    "StarGANGenerator",
    "check_emotion_code",
    "code_maps",
]
