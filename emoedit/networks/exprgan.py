"""ExprGAN-style baseline (Ding, Sricharan & Chellappa, AAAI 2018; METHOD.md §6), small, on aligned face crops.

ExprGAN edits a face by encoding it into an identity representation and decoding that
with an *expression code* whose magnitude is the expression intensity:

- :class:`ExprGANEncoder` ``G_enc``: stride-2 4×4 convolutions with LeakyReLU(0.2) down to
  a 4×4 map, then a linear layer and ``tanh``: the identity latent ``z`` ``(B, Z)`` in
  (-1, 1) (ExprGAN's bounded identity representation).
- :class:`ExpressionController` ``F_ctrl``: emotion code ``e`` ``(B, E)`` (the strengths of
  :mod:`emoedit.editing.emotion_code`, neutral = zeros) → expression-intensity code
  ``c`` ``(B, E·d)``: block ``k`` is ``e_k · tanh(u_k)`` with a learned pattern ``u_k ∈ R^d``
  per emotion. The code of an emotion lives in its own block and is **scaled by the
  strength α**, so intensity is continuous (and extrapolates linearly beyond the trained
  levels); neutral is the zero code.
- :class:`ExprGANDecoder` ``G_dec``: ``[z, c]`` → a linear layer to a 4×4 map, stride-2 4×4
  transposed convolutions (normalisation ``norm``, ReLU) and a 3×3 convolution with
  ``tanh``: the image in [-1, 1].
- :class:`ExprGANDiscriminator` ``D_img``: an image critic conditioned on the emotion code
  (the code's constant maps are concatenated after the first convolution, as ExprGAN /
  CAAE condition on the label), one logit per image (non-saturating logistic loss).
- :class:`ExpressionRegressor` ``Q``: image → predicted strengths ``(B, E)``: the
  expression regulariser that makes the output show the requested intensity.

:class:`ExprGANGenerator` bundles ``G_enc``, ``F_ctrl`` and ``G_dec``: ``G(x, e) =
G_dec(G_enc(x), F_ctrl(e))``. Images are NCHW float in [-1, 1]; the side must be a power of
two >= 8. Not reproduced (see :mod:`lightning_modules.exprgan`): the identity-preserving
VGG-Face feature loss (no face network weights ship), the adversarial prior on ``z``, the
total-variation term and the incremental three-stage schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from emoedit.editing.emotion_code import NUM_EMOTIONS
from emoedit.networks.stargan import code_maps
from emoedit.shape_checks import assert_shape

#: Part name of the checkpoints written by ``train.py exprgan``.
EXPRGAN_PART = "exprgan"
#: Checkpoint key holding :attr:`ExprGANGenerator.init_kwargs` (a plain dict).
EXPRGAN_GENERATOR_KWARGS_KEY = "exprgan_generator_kwargs"
#: Prefix of the generator's tensors in such a checkpoint's ``state_dict``.
EXPRGAN_GENERATOR_PREFIX = "generator."
#: Normalisations of the decoder's up-sampling layers.
DECODER_NORMS: tuple[str, ...] = ("batch", "instance", "none")
#: Side of the bottleneck feature map.
BOTTLENECK_SIDE = 4


def stage_widths(
    image_size: int,  # side S of the images, a power of two >= 8
    base_channels: int,  # channels of the first stride-2 stage
    max_channels: int,  # cap on the channels of any stage
) -> list[int]:
    """Channels of the ``log2(S / 4)`` stride-2 stages from ``S`` down to 4×4: ``min(base·2^i, max)``."""
    if image_size < 2 * BOTTLENECK_SIDE or image_size & (image_size - 1):
        raise ValueError(f"ExprGAN: image_size must be a power of two >= {2 * BOTTLENECK_SIDE}, got {image_size}")
    if base_channels < 1 or max_channels < 1:
        raise ValueError(f"ExprGAN: base_channels and max_channels must be >= 1, got {base_channels}, {max_channels}")
    stages = int(math.log2(image_size // BOTTLENECK_SIDE))
    return [min(base_channels * 2**i, max_channels) for i in range(stages)]


def _down_stage(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    return nn.Identity()


class ExprGANEncoder(nn.Module):
    """``G_enc``: image ``(B, C, S, S)`` in [-1, 1] → identity latent ``z`` ``(B, Z)`` in (-1, 1)."""

    def __init__(
        self,
        *,
        image_size: int = 128,  # side S (power of two >= 8)
        image_channels: int = 3,  # C
        base_channels: int = 64,  # channels of the first stride-2 stage (doubled per stage)
        max_channels: int = 512,  # cap on the channels of any stage
        latent_dim: int = 50,  # Z, length of the identity latent (ExprGAN: 50)
    ) -> None:
        super().__init__()
        widths = stage_widths(image_size, base_channels, max_channels)
        layers: list[nn.Module] = []
        previous = image_channels
        for width in widths:
            layers += _down_stage(previous, width)
            previous = width
        self.trunk = nn.Sequential(*layers)
        self.latent = nn.Linear(previous * BOTTLENECK_SIDE**2, latent_dim)
        self.image_size, self.image_channels, self.latent_dim = image_size, image_channels, latent_dim

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, S, S)`` → ``(B, Z)`` float in (-1, 1)."""
        assert_shape(images, (None, self.image_channels, self.image_size, self.image_size), "ExprGANEncoder images")
        return torch.tanh(self.latent(self.trunk(images).flatten(1)))


class ExpressionController(nn.Module):
    """``F_ctrl``: strengths ``(B, E)`` → expression-intensity code ``(B, E·d)``, block k = ``e_k · tanh(u_k)``."""

    def __init__(
        self,
        *,
        emotion_dim: int = NUM_EMOTIONS,  # E, length of the emotion code
        code_dim: int = 5,  # d, entries of each emotion's block (ExprGAN: 5 per expression)
    ) -> None:
        super().__init__()
        if emotion_dim < 1 or code_dim < 1:
            raise ValueError(f"ExpressionController: emotion_dim and code_dim must be >= 1, got {emotion_dim}, {code_dim}")
        self.emotion_dim, self.code_dim = emotion_dim, code_dim
        self.patterns = nn.Parameter(torch.randn(emotion_dim, code_dim))

    @property
    def output_dim(self) -> int:
        """E·d."""
        return self.emotion_dim * self.code_dim

    def forward(self, emotion_code: Tensor) -> Tensor:  # (B, E) float strengths >= 0
        """``(B, E·d)`` float: each emotion's block scaled by its strength (zeros for neutral)."""
        assert_shape(emotion_code, (None, self.emotion_dim), "ExpressionController emotion_code")
        blocks = emotion_code.to(self.patterns.dtype)[:, :, None] * torch.tanh(self.patterns)[None]
        return blocks.flatten(1)


class ExprGANDecoder(nn.Module):
    """``G_dec``: identity latent ``(B, Z)`` + expression code ``(B, K)`` → image ``(B, C, S, S)`` in [-1, 1]."""

    def __init__(
        self,
        *,
        image_size: int = 128,  # side S (power of two >= 8)
        image_channels: int = 3,  # C
        base_channels: int = 64,  # channels of the last up-sampling stage (mirror of the encoder)
        max_channels: int = 512,  # cap on the channels of any stage
        latent_dim: int = 50,  # Z
        code_dim: int = 35,  # K = E·d, length of the expression code
        norm: str = "batch",  # normalisation after each transposed convolution: batch | instance | none
    ) -> None:
        super().__init__()
        if norm not in DECODER_NORMS:
            raise ValueError(f"ExprGANDecoder: norm must be one of {DECODER_NORMS}, got {norm!r}")
        widths = stage_widths(image_size, base_channels, max_channels)[::-1]
        self.top_channels = widths[0]
        self.project = nn.Sequential(nn.Linear(latent_dim + code_dim, widths[0] * BOTTLENECK_SIDE**2), nn.ReLU())
        layers: list[nn.Module] = []
        for index, width in enumerate(widths):
            out = widths[index + 1] if index + 1 < len(widths) else width
            layers += [nn.ConvTranspose2d(width, out, 4, stride=2, padding=1), _norm(norm, out), nn.ReLU()]
        layers += [nn.Conv2d(widths[-1], image_channels, 3, stride=1, padding=1), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        self.latent_dim, self.code_dim = latent_dim, code_dim

    def forward(self, latent: Tensor, expression_code: Tensor) -> Tensor:
        """``(B, Z)``, ``(B, K)`` → ``(B, C, S, S)`` float in [-1, 1]."""
        dims = assert_shape(latent, ("B", self.latent_dim), "ExprGANDecoder latent")
        assert_shape(expression_code, ("B", self.code_dim), "ExprGANDecoder expression_code", dims)
        hidden = self.project(torch.cat([latent, expression_code.to(latent.dtype)], dim=1))
        return self.upsample(hidden.view(-1, self.top_channels, BOTTLENECK_SIDE, BOTTLENECK_SIDE))


@dataclass(frozen=True)
class ExprGANGeneratorOutput:
    """One generator pass."""

    image: Tensor  # (B, C, S, S) float in [-1, 1]: G_dec(z, c)
    latent: Tensor  # (B, Z) float in (-1, 1): the identity latent z = G_enc(x)
    expression_code: Tensor  # (B, E·d) float: c = F_ctrl(e)


class ExprGANGenerator(nn.Module):
    """``G(x, e) = G_dec(G_enc(x), F_ctrl(e))`` (see the module docstring)."""

    def __init__(
        self,
        *,
        image_size: int = 128,  # side S of the crops (power of two >= 8; ExprGAN: 128)
        image_channels: int = 3,  # C
        emotion_dim: int = NUM_EMOTIONS,  # E
        base_channels: int = 64,  # channels of the first encoder stage (doubled per stage)
        max_channels: int = 512,  # cap on the channels of any stage
        latent_dim: int = 50,  # Z, identity latent length
        code_dim: int = 5,  # d, expression-code entries per emotion
        decoder_norm: str = "batch",  # batch | instance | none
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(
            image_size=int(image_size), image_channels=int(image_channels), emotion_dim=int(emotion_dim),
            base_channels=int(base_channels), max_channels=int(max_channels), latent_dim=int(latent_dim),
            code_dim=int(code_dim), decoder_norm=str(decoder_norm),
        )
        self.image_size, self.image_channels, self.emotion_dim = int(image_size), int(image_channels), int(emotion_dim)
        self.encoder = ExprGANEncoder(image_size=image_size, image_channels=image_channels, base_channels=base_channels,
                                      max_channels=max_channels, latent_dim=latent_dim)
        self.controller = ExpressionController(emotion_dim=emotion_dim, code_dim=code_dim)
        self.decoder = ExprGANDecoder(image_size=image_size, image_channels=image_channels, base_channels=base_channels,
                                      max_channels=max_channels, latent_dim=latent_dim,
                                      code_dim=self.controller.output_dim, norm=decoder_norm)

    def forward(
        self,
        images: Tensor,  # (B, C, S, S) float in [-1, 1]
        emotion_code: Tensor,  # (B, E) float target strengths (zeros = neutral)
    ) -> ExprGANGeneratorOutput:
        """Edited images, the identity latents and the expression codes."""
        dims = assert_shape(images, ("B", self.image_channels, self.image_size, self.image_size), "ExprGAN images")
        assert_shape(emotion_code, ("B", self.emotion_dim), "ExprGAN emotion_code", dims)
        latent = self.encoder(images)
        code = self.controller(emotion_code)
        return ExprGANGeneratorOutput(image=self.decoder(latent, code), latent=latent, expression_code=code)


class ExprGANDiscriminator(nn.Module):
    """``D_img(x, e)``: image ``(B, C, S, S)`` + emotion code ``(B, E)`` → logit ``(B,)`` (higher = more real)."""

    def __init__(
        self,
        *,
        image_size: int = 128,  # side S (power of two >= 8)
        image_channels: int = 3,  # C
        emotion_dim: int = NUM_EMOTIONS,  # E, the condition's length
        base_channels: int = 64,  # channels of the first stage
        max_channels: int = 512,  # cap on the channels of any stage
    ) -> None:
        super().__init__()
        widths = stage_widths(image_size, base_channels, max_channels)
        self.first = nn.Sequential(*_down_stage(image_channels, widths[0]))
        layers: list[nn.Module] = []
        previous = widths[0] + emotion_dim
        for width in widths[1:]:
            layers += _down_stage(previous, width)
            previous = width
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(previous * BOTTLENECK_SIDE**2, 1)
        self.image_size, self.image_channels, self.emotion_dim = image_size, image_channels, emotion_dim

    def forward(self, images: Tensor, emotion_code: Tensor) -> Tensor:
        """``(B, C, S, S)`` in [-1, 1], ``(B, E)`` → logits ``(B,)``."""
        dims = assert_shape(images, ("B", self.image_channels, self.image_size, self.image_size), "D_img images")
        assert_shape(emotion_code, ("B", self.emotion_dim), "D_img emotion_code", dims)
        hidden = self.first(images)
        hidden = torch.cat([hidden, code_maps(emotion_code.to(hidden.dtype), *hidden.shape[-2:])], dim=1)
        return self.head(self.trunk(hidden).flatten(1)).squeeze(1)


class ExpressionRegressor(nn.Module):
    """``Q``: image ``(B, C, S, S)`` in [-1, 1] → predicted emotion strengths ``(B, E)`` (unbounded regression)."""

    def __init__(
        self,
        *,
        image_size: int = 128,  # side S (power of two >= 8)
        image_channels: int = 3,  # C
        emotion_dim: int = NUM_EMOTIONS,  # E
        base_channels: int = 64,  # channels of the first stage
        max_channels: int = 512,  # cap on the channels of any stage
    ) -> None:
        super().__init__()
        widths = stage_widths(image_size, base_channels, max_channels)
        layers: list[nn.Module] = []
        previous = image_channels
        for width in widths:
            layers += _down_stage(previous, width)
            previous = width
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(previous * BOTTLENECK_SIDE**2, emotion_dim)
        self.image_size, self.image_channels, self.emotion_dim = image_size, image_channels, emotion_dim

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, S, S)`` → ``(B, E)`` float."""
        assert_shape(images, (None, self.image_channels, self.image_size, self.image_size), "Q images")
        return self.head(self.trunk(images).flatten(1))


__all__ = [
    "DECODER_NORMS",
    "EXPRGAN_GENERATOR_KWARGS_KEY",
    "EXPRGAN_GENERATOR_PREFIX",
    "EXPRGAN_PART",
    "ExprGANDecoder",
    "ExprGANDiscriminator",
    "ExprGANEncoder",
    "ExprGANGenerator",
    "ExprGANGeneratorOutput",
    "ExpressionController",
    "ExpressionRegressor",
    "stage_widths",
]
