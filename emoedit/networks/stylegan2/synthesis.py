"""StyleGAN2 synthesis network: W+ → image, skip architecture.

A learned constant 4×4 input; one block per resolution 4, 8, …, R. Each block above 4×4
has two modulated 3×3 convolutions (the first upsamples ×2 with the [1,3,3,1] FIR filter),
with per-layer noise inputs, and a ToRGB (1×1 modulated conv without demodulation) whose
output is added to the FIR-upsampled image of the previous block. Layer ``i`` of the
network reads row ``i`` of W+, and each block's ToRGB shares its row with the next block's
first convolution (so a 512² network has 15 convs + 1 final ToRGB = 16 rows).

Mixed precision: the top ``num_bf16_res`` resolutions run their convolutions in bfloat16
(``num_fp16_res`` of stylegan2-ada, with bf16 instead of fp16); the RGB skip path stays
float32. ``channels_last`` stores those activations channels-last.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from emoedit.networks.stylegan2.layers import (
    DEFAULT_FILTER,
    EqualizedLinear,
    bias_act,
    modulated_conv2d,
    setup_filter,
    upsample2d,
)
from emoedit.shape_checks import assert_shape

NOISE_MODES = ("random", "const", "none")


def channels_per_resolution(resolutions: Sequence[int], channel_base: int, channel_max: int) -> dict[int, int]:
    """``{res: min(channel_base // res, channel_max)}`` — stylegan2's channel schedule."""
    out = {res: min(channel_base // res, channel_max) for res in resolutions}
    small = [res for res, ch in out.items() if ch < 1]
    if small:
        raise ValueError(f"channel_base {channel_base} gives no channels at resolutions {small}")
    return out


def bf16_resolution(img_resolution: int, num_bf16_res: int) -> int:
    """Lowest resolution that runs in bfloat16 (``> img_resolution`` when ``num_bf16_res`` is 0)."""
    if num_bf16_res <= 0:
        return img_resolution * 2
    return max(2 ** (int(math.log2(img_resolution)) + 1 - num_bf16_res), 8)


def check_resolution(img_resolution: int) -> int:
    """``log2(img_resolution)``; raises unless it is a power of two >= 4."""
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    return int(math.log2(img_resolution))


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution (+ optional ×2 upsampling) with demodulation, noise, bias and lrelu."""

    def __init__(
        self,
        *,
        in_channels: int,  # input channels
        out_channels: int,  # output channels
        w_dim: int,  # size of the w row that styles this layer
        resolution: int,  # output resolution of this layer
        kernel_size: int = 3,  # convolution kernel side
        up: int = 1,  # 1 or 2: FIR upsampling factor
        use_noise: bool = True,  # per-pixel noise input with a learned strength
        resample_filter: Sequence[float] = DEFAULT_FILTER,  # FIR taps for upsampling
        conv_clamp: float | None = None,  # clamp the output to ±conv_clamp (None: off)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = math.sqrt(2.0)
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        self.affine = EqualizedLinear(in_features=w_dim, out_features=in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor, *, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> Tensor:
        """``(B, in, r/up, r/up)``, ``w`` ``(B, w_dim)`` → ``(B, out, r, r)`` in the dtype of ``x``."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        size = self.resolution // self.up
        assert_shape(x, (None, self.in_channels, size, size), "SynthesisLayer input")
        styles = self.affine(w.float())
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=self.up == 1,
                             fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act="lrelu", gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, resolution={self.resolution}, up={self.up}"


class ToRGBLayer(nn.Module):
    """1×1 modulated convolution without demodulation: features → image channels (linear)."""

    def __init__(
        self,
        *,
        in_channels: int,  # feature channels
        out_channels: int,  # image channels
        w_dim: int,  # size of the w row that styles this layer
        conv_clamp: float | None = None,  # clamp the output to ±conv_clamp (None: off)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(in_features=w_dim, out_features=in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor, *, fused_modconv: bool = True) -> Tensor:
        """``(B, in, r, r)``, ``(B, w_dim)`` → ``(B, out, r, r)`` in the dtype of ``x``."""
        styles = self.affine(w.float()) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias, act="linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip-architecture synthesis network."""

    def __init__(
        self,
        *,
        in_channels: int,  # channels from the previous block; 0 = first block (learned constant)
        out_channels: int,  # channels of this block
        w_dim: int,  # latent row size
        resolution: int,  # output resolution of this block
        img_channels: int,  # image channels
        use_bf16: bool = False,  # run this block's convolutions in bfloat16
        channels_last: bool = False,  # channels-last activations in this block
        resample_filter: Sequence[float] = DEFAULT_FILTER,  # FIR taps for upsampling
        conv_clamp: float | None = None,  # clamp conv outputs to ±conv_clamp (None: off)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.use_bf16 = use_bf16
        self.channels_last = channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        self.num_conv = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels=in_channels, out_channels=out_channels, w_dim=w_dim,
                                        resolution=resolution, up=2, resample_filter=resample_filter,
                                        conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(in_channels=out_channels, out_channels=out_channels, w_dim=w_dim,
                                    resolution=resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(in_channels=out_channels, out_channels=img_channels, w_dim=w_dim,
                                conv_clamp=conv_clamp)
        self.num_torgb = 1

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.use_bf16 else torch.float32

    def forward(
        self,
        x: Tensor | None,  # (B, in, r/2, r/2) features of the previous block (None for the first)
        img: Tensor | None,  # (B, C, r/2, r/2) float32 image so far (None for the first)
        ws: Tensor,  # (B, num_conv + 1, w_dim) rows of W+ for this block
        *,
        noise_mode: str = "random",  # "random", "const" or "none"
        fused_modconv: bool = True,  # grouped-conv modulation (see modulated_conv2d)
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(features (B, out, r, r), image (B, C, r, r) float32)``."""
        assert_shape(ws, (None, self.num_conv + self.num_torgb, self.w_dim), f"SynthesisBlock{self.resolution} ws")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        rows = ws.unbind(dim=1)
        if self.in_channels == 0:
            x = self.const.to(self.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, rows[0], noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            if x is None:
                raise ValueError(f"SynthesisBlock{self.resolution}: needs the previous block's features")
            half = self.resolution // 2
            assert_shape(x, (None, self.in_channels, half, half), f"SynthesisBlock{self.resolution} x")
            x = x.to(self.dtype).contiguous(memory_format=memory_format)
            x = self.conv0(x, rows[0], noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, rows[1], noise_mode=noise_mode, fused_modconv=fused_modconv)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, rows[self.num_conv], fused_modconv=fused_modconv)
        y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """``ws (B, num_ws, w_dim)`` → image ``(B, img_channels, R, R)`` (see the module docstring)."""

    def __init__(
        self,
        *,
        w_dim: int,  # latent row size
        img_resolution: int,  # output resolution R (power of two >= 4)
        img_channels: int,  # output channels
        channel_base: int = 32768,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,  # maximum channels of any block
        num_bf16_res: int = 0,  # the N highest resolutions run in bfloat16 (0: none)
        channels_last: bool = False,  # channels-last activations (in every block)
        resample_filter: Sequence[float] = DEFAULT_FILTER,  # FIR taps for upsampling
        conv_clamp: float | None = None,  # clamp conv outputs to ±conv_clamp (None: off; 256 with bf16 in ada)
    ) -> None:
        super().__init__()
        log2 = check_resolution(img_resolution)
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = channels_per_resolution(self.block_resolutions, channel_base, channel_max)
        low_bf16 = bf16_resolution(img_resolution, num_bf16_res)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                in_channels=channels[res // 2] if res > 4 else 0, out_channels=channels[res], w_dim=w_dim,
                resolution=res, img_channels=img_channels, use_bf16=res >= low_bf16, channels_last=channels_last,
                resample_filter=resample_filter, conv_clamp=conv_clamp,
            )
            self.num_ws += block.num_conv
            if res == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(
        self,
        ws: Tensor,  # (B, num_ws, w_dim) W+ latents
        noise_mode: str = "random",  # "random" (fresh noise), "const" (the stored noise) or "none"
        fused_modconv: bool | None = None,  # None: grouped conv in eval mode, activation scaling in training
    ) -> Tensor:
        """W+ → image ``(B, img_channels, R, R)`` float32, nominally in [−1, 1] (not clamped)."""
        assert_shape(ws, (None, self.num_ws, self.w_dim), "SynthesisNetwork ws")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        fused = (not self.training) if fused_modconv is None else fused_modconv
        ws = ws.float()
        x: Tensor | None = None
        img: Tensor | None = None
        w_idx = 0
        for block in self.blocks():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused)
        assert img is not None
        return img

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, img_resolution={self.img_resolution}, num_ws={self.num_ws}"
