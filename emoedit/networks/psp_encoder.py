"""pSp texture encoder: UV texture → W+ latent of the t-GAN (METHOD.md §3.4).

pixel2style2pixel's ``GradualStyleEncoder``: a ResNet-IR-SE trunk (:mod:`emoedit.networks.ir_se`)
gives stage outputs at ``S/4`` (c1), ``S/8`` (c2) and ``S/16`` (c3) of the input side ``S``;
a feature pyramid merges them top-down (``p2 = up(c3) + lat1(c2)``, ``p1 = up(p2) + lat2(c1)``,
bilinear with ``align_corners=True``, 1×1 lateral convolutions to c3's width), and one
map-to-style head (:class:`GradualStyleBlock`: stride-2 3×3 convolutions with LeakyReLU down
to 1×1, then an equalised linear layer) per W+ entry reads

- coarse entries ``[0, coarse_end)`` from c3 (pSp: 3),
- medium entries ``[coarse_end, medium_end)`` from p2 (pSp: 7),
- fine entries ``[medium_end, num_ws)`` from p1,

(both ends clamped to ``num_ws``). The heads predict *offsets* from the t-GAN's average
latent, ``wplus = w_avg + Δ`` (pSp's ``start_from_latent_avg``); ``w_avg`` is a buffer
copied from the generator's ``mapping.w_avg``.

:class:`PSPEncoder` is what the pipeline uses: textures of any side are resized to
``input_size`` (pSp: 256) first. Load a trained one with :meth:`PSPEncoder.from_checkpoint`
(a ``texture_encoder`` checkpoint of ``train.py``; no Lightning needed).
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
from emoedit.networks.ir_se import DEFAULT_WIDTHS, ResNetIR
from emoedit.shape_checks import assert_finite, assert_shape

#: Part name of the texture-encoder checkpoints written by ``train.py texture_encoder``.
TEXTURE_ENCODER_PART = "texture_encoder"
#: Prefix of the encoder's tensors in such a checkpoint's ``state_dict``.
ENCODER_STATE_PREFIX = "encoder."
#: Checkpoint key holding :attr:`PSPEncoder.init_kwargs` (a plain dict).
ENCODER_KWARGS_KEY = "psp_encoder_kwargs"


class EqualLinear(nn.Module):
    """StyleGAN2's equalised-learning-rate linear layer: ``y = x (W·c)ᵀ + b·lr_mul``.

    Weights are stored as ``N(0, 1) / lr_mul`` and scaled by ``c = lr_mul / sqrt(in_features)``
    at run time. ``(B, in_features)`` → ``(B, out_features)``.
    """

    def __init__(
        self,
        *,
        in_features: int,  # input width
        out_features: int,  # output width
        lr_mul: float = 1.0,  # learning-rate multiplier
        bias_init: float = 0.0,  # initial bias value
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.lr_mul = float(lr_mul)
        self.scale = lr_mul / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """Map-to-style head: ``(B, Cin, s, s)`` → ``(B, Cout)`` (one W+ entry).

    ``max(1, log2 s)`` stride-2 3×3 convolutions with LeakyReLU(0.01) bring the map to 1×1,
    then an :class:`EqualLinear` ``Cout → Cout``. ``s`` must be a power of two.
    """

    def __init__(
        self,
        *,
        in_channels: int,  # Cin: channels of the pyramid level read
        out_channels: int,  # Cout = w_dim
        spatial: int,  # side s of the pyramid level read (power of two)
    ) -> None:
        super().__init__()
        if spatial < 1 or spatial & (spatial - 1):
            raise ValueError(f"GradualStyleBlock: spatial must be a power of two, got {spatial}")
        num_convs = max(1, int(math.log2(spatial)))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_convs - 1):
            layers += [nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(in_features=out_channels, out_features=out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"GradualStyleBlock: convolutions left a {tuple(x.shape[-2:])} map, expected 1×1")
        return self.linear(x.flatten(1))


def _upsample_add(x: Tensor, y: Tensor) -> Tensor:
    """``x`` bilinearly resized to ``y``'s size (align_corners=True, as pSp) plus ``y``."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class GradualStyleEncoder(nn.Module):
    """pSp's feature-pyramid encoder: ``(B, C, S, S)`` → W+ offsets ``(B, num_ws, w_dim)``.

    See the module docstring for which pyramid level each W+ entry reads.
    """

    def __init__(
        self,
        *,
        num_ws: int,  # W+ entries (the generator's num_ws)
        w_dim: int,  # width of one W entry (the generator's w_dim)
        input_size: int,  # side S of the input (power of two, >= 16)
        depth: int = 50,  # ResNet-IR depth (ir_se.DEPTH_UNITS; 50 = IR-SE50)
        use_se: bool = True,  # squeeze-excitation units (IR-SE)
        widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,  # stage widths of the trunk
        in_channels: int = 3,  # input channels
        coarse_end: int = 3,  # W+ entries [0, coarse_end) read c3 (S/16); clamped to num_ws
        medium_end: int = 7,  # entries [coarse_end, medium_end) read p2 (S/8), the rest p1 (S/4)
    ) -> None:
        super().__init__()
        if num_ws < 1 or w_dim < 1:
            raise ValueError(f"GradualStyleEncoder: num_ws and w_dim must be >= 1, got {num_ws}, {w_dim}")
        if input_size < 16 or input_size & (input_size - 1):
            raise ValueError(f"GradualStyleEncoder: input_size must be a power of two >= 16, got {input_size}")
        if not 0 <= coarse_end <= medium_end:
            raise ValueError(f"GradualStyleEncoder: need 0 <= coarse_end <= medium_end, got {coarse_end}, {medium_end}")
        self.num_ws, self.w_dim, self.input_size = num_ws, w_dim, input_size
        self.in_channels = in_channels
        self.coarse_end = min(coarse_end, num_ws)
        self.medium_end = min(medium_end, num_ws)
        self.backbone = ResNetIR(depth=depth, use_se=use_se, in_channels=in_channels, widths=widths)
        top = widths[3]
        # lateral 1×1 convolutions, only for the pyramid levels some head reads (no unused
        # parameters: DDP would complain)
        uses_p2 = num_ws > self.coarse_end
        uses_p1 = num_ws > self.medium_end
        self.latlayer1 = nn.Conv2d(widths[2], top, kernel_size=1) if uses_p2 else None
        self.latlayer2 = nn.Conv2d(widths[1], top, kernel_size=1) if uses_p1 else None
        heads = []
        for index in range(num_ws):
            spatial = input_size // (16 if index < self.coarse_end else 8 if index < self.medium_end else 4)
            heads.append(GradualStyleBlock(in_channels=top, out_channels=w_dim, spatial=spatial))
        self.styles = nn.ModuleList(heads)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, S, S)`` float → ``(B, num_ws, w_dim)`` offsets."""
        assert_shape(x, (None, self.in_channels, self.input_size, self.input_size), "GradualStyleEncoder input")
        features = self.backbone(x)
        c1, c2, c3 = features.stage2, features.stage3, features.stage4
        latents: list[Tensor] = [self.styles[i](c3) for i in range(self.coarse_end)]
        if self.latlayer1 is not None:
            p2 = _upsample_add(c3, self.latlayer1(c2))
            latents += [self.styles[i](p2) for i in range(self.coarse_end, self.medium_end)]
            if self.latlayer2 is not None:
                p1 = _upsample_add(p2, self.latlayer2(c1))
                latents += [self.styles[i](p1) for i in range(self.medium_end, self.num_ws)]
        return torch.stack(latents, dim=1)


@dataclass(frozen=True)
class PSPEncoderOutput:
    """What :class:`PSPEncoder` predicts for a batch of textures."""

    wplus: Tensor  # (B, num_ws, w_dim) float: W+ latent, w_avg + offsets
    offsets: Tensor  # (B, num_ws, w_dim) float: Δ from the average latent (what the latent regulariser penalises)


class PSPEncoder(nn.Module):
    """UV texture ``(B, C, T, T)`` in [-1, 1] → W+ ``w_avg + Δ`` (see the module docstring).

    Textures whose side ``T`` differs from ``input_size`` are resized (bilinear, antialiased).
    ``w_avg`` (w_dim,) is a buffer: set it from the generator with :meth:`set_average_latent`.
    """

    def __init__(
        self,
        *,
        num_ws: int,  # W+ entries (generator.num_ws)
        w_dim: int,  # width of one W entry (generator w_dim)
        input_size: int = 256,  # side the textures are resized to before the trunk (pSp: 256)
        depth: int = 50,  # ResNet-IR depth (50 = IR-SE50; 10/18/34 for CPU configs)
        use_se: bool = True,  # IR-SE (True) or IR (False)
        widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,  # trunk stage widths
        in_channels: int = 3,  # texture channels
        coarse_end: int = 3,  # W+ entries read from the coarsest pyramid level
        medium_end: int = 7,  # end of the entries read from the medium level
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)  # type: ignore[assignment]
        self.init_kwargs: dict[str, Any] = dict(
            num_ws=num_ws, w_dim=w_dim, input_size=input_size, depth=depth, use_se=use_se,
            widths=list(widths), in_channels=in_channels, coarse_end=coarse_end, medium_end=medium_end,
        )
        self.encoder = GradualStyleEncoder(
            num_ws=num_ws, w_dim=w_dim, input_size=input_size, depth=depth, use_se=use_se, widths=widths,
            in_channels=in_channels, coarse_end=coarse_end, medium_end=medium_end,
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.num_ws, self.w_dim, self.input_size, self.in_channels = num_ws, w_dim, input_size, in_channels

    @torch.no_grad()
    def set_average_latent(self, w_avg: Tensor) -> None:
        """Copy the generator's average latent ``(w_dim,)`` into the ``w_avg`` buffer."""
        assert_shape(w_avg, (self.w_dim,), "w_avg")
        assert_finite(w_avg, "w_avg")
        self.w_avg.copy_(w_avg.detach().to(self.w_avg))

    def resize(self, uv_texture: Tensor) -> Tensor:
        """``(B, C, T, T)`` → ``(B, C, input_size, input_size)`` (identity when T == input_size)."""
        size = self.input_size
        if uv_texture.shape[-1] == size and uv_texture.shape[-2] == size:
            return uv_texture
        down = uv_texture.shape[-1] > size
        return F.interpolate(uv_texture, size=(size, size), mode="bilinear", align_corners=False, antialias=down)

    def forward(self, uv_texture: Tensor) -> PSPEncoderOutput:
        """``(B, C, T, T)`` float textures in [-1, 1] → :class:`PSPEncoderOutput`."""
        assert_shape(uv_texture, (None, self.in_channels, "T", "T"), "uv_texture")
        offsets = self.encoder(self.resize(uv_texture))
        return PSPEncoderOutput(wplus=self.w_avg.to(offsets.dtype) + offsets, offsets=offsets)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,  # a texture_encoder .ckpt written by train.py
        map_location: str | torch.device = "cpu",  # device of the loaded tensors
    ) -> PSPEncoder:
        """The encoder of a ``texture_encoder`` checkpoint (``weights_only``), in eval mode.

        Raises :class:`~emoedit.checkpoint_io.CheckpointError` when the file is not such a
        checkpoint or its encoder tensors do not fit the stored constructor arguments.
        """
        path = Path(path)
        ckpt = load_checkpoint(path, map_location=map_location)
        require_part(ckpt, TEXTURE_ENCODER_PART, path)
        kwargs = ckpt.get(ENCODER_KWARGS_KEY)
        state = ckpt.get("state_dict")
        if not isinstance(kwargs, dict) or not isinstance(state, dict):
            raise CheckpointError(f"{path}: no '{ENCODER_KWARGS_KEY}' or no state_dict (not written by train.py?)")
        try:
            encoder = cls(**{**kwargs, "widths": tuple(kwargs["widths"])})
        except (TypeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot build the encoder from {kwargs!r} ({err})") from None
        weights = state_dict_under(state, ENCODER_STATE_PREFIX)
        load_matching(encoder, weights, source=f"{path}: encoder")
        return encoder.eval()


def load_matching(module: nn.Module, weights: dict[str, Tensor], *, source: str) -> None:
    """``module.load_state_dict(weights, strict=True)`` with a readable error listing differences."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in weights.items()}
    problems = [f"{k}: missing" for k in expected if k not in found]
    problems += [f"{k}: unexpected" for k in found if k not in expected]
    problems += [f"{k}: shape {found[k]} stored, {v} here" for k, v in expected.items() if k in found and found[k] != v]
    if problems:
        raise CheckpointError(f"{source} tensors do not fit: " + "; ".join(problems[:6]))
    module.load_state_dict(weights, strict=True)
