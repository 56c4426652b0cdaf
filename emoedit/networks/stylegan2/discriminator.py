"""StyleGAN2 discriminator: residual architecture, FIR downsampling, minibatch standard deviation.

Blocks at R, R/2, …, 8: (FromRGB 1×1 in the first block) → 3×3 conv → 3×3 conv with ×2
FIR downsampling, plus a 1×1 downsampling skip; the two paths are summed with gain √½.
The 4×4 epilogue appends the minibatch standard deviation (group size 4, one channel),
then a 3×3 conv, a fully connected layer and the output layer (one logit per image).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from emoedit.networks.stylegan2.layers import DEFAULT_FILTER, EqualizedConv2d, EqualizedLinear
from emoedit.networks.stylegan2.synthesis import bf16_resolution, channels_per_resolution, check_resolution
from emoedit.shape_checks import assert_shape

SQRT_HALF = math.sqrt(0.5)


class DiscriminatorBlock(nn.Module):
    """One residual block: ``(B, tmp, r, r)`` → ``(B, out, r/2, r/2)``."""

    def __init__(
        self,
        *,
        in_channels: int,  # input feature channels; 0 = first block (reads the image)
        tmp_channels: int,  # channels inside the block (= in_channels unless first)
        out_channels: int,  # output channels
        resolution: int,  # input resolution r
        img_channels: int,  # image channels (first block only)
        use_bf16: bool = False,  # run this block's convolutions in bfloat16
        channels_last: bool = False,  # channels-last activations in this block
        resample_filter: Sequence[float] = DEFAULT_FILTER,  # FIR taps for downsampling
        conv_clamp: float | None = None,  # clamp conv outputs to ±conv_clamp (None: off)
    ) -> None:
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"DiscriminatorBlock: in_channels must be 0 or tmp_channels, got {in_channels}")
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.use_bf16 = use_bf16
        self.channels_last = channels_last
        if in_channels == 0:
            self.fromrgb = EqualizedConv2d(in_channels=img_channels, out_channels=tmp_channels, kernel_size=1,
                                           activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = EqualizedConv2d(in_channels=tmp_channels, out_channels=tmp_channels, kernel_size=3,
                                     activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualizedConv2d(in_channels=tmp_channels, out_channels=out_channels, kernel_size=3,
                                     activation="lrelu", down=2, resample_filter=resample_filter,
                                     conv_clamp=conv_clamp)
        self.skip = EqualizedConv2d(in_channels=tmp_channels, out_channels=out_channels, kernel_size=1, bias=False,
                                    down=2, resample_filter=resample_filter)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.use_bf16 else torch.float32

    def forward(self, x: Tensor | None, img: Tensor | None) -> Tensor:
        """Features ``(B, in, r, r)`` (or the image ``(B, C, r, r)`` for the first block) → ``(B, out, r/2, r/2)``."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.in_channels == 0:
            if img is None:
                raise ValueError(f"DiscriminatorBlock{self.resolution}: the first block needs the image")
            assert_shape(img, (None, self.img_channels, self.resolution, self.resolution), "discriminator image")
            x = self.fromrgb(img.to(self.dtype).contiguous(memory_format=memory_format))
        else:
            if x is None:
                raise ValueError(f"DiscriminatorBlock{self.resolution}: needs the previous block's features")
            x = x.to(self.dtype).contiguous(memory_format=memory_format)
        y = self.skip(x, gain=SQRT_HALF)
        x = self.conv0(x)
        x = self.conv1(x, gain=SQRT_HALF)
        return y + x


class MinibatchStdLayer(nn.Module):
    """Appends the standard deviation over groups of samples as extra feature maps.

    The batch is split into groups of ``G = min(group_size, B)`` samples (sample ``i``
    belongs with ``i + n, i + 2n, …``, ``n = B / G``); per group the std over samples,
    averaged over channels (in ``num_channels`` slices) and pixels, becomes
    ``num_channels`` constant maps. When ``B`` is not a multiple of ``G`` the largest
    divisor of ``B`` not above ``group_size`` is used.
    """

    def __init__(self, *, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        if group_size < 1 or num_channels < 1:
            raise ValueError(f"MinibatchStdLayer: group_size and num_channels must be >= 1, got {group_size}, {num_channels}")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, C + num_channels, H, W)``."""
        batch, channels, height, width = x.shape
        if channels % self.num_channels:
            raise ValueError(f"MinibatchStdLayer: {channels} channels not divisible by num_channels {self.num_channels}")
        group = min(self.group_size, batch)
        while batch % group:
            group -= 1
        f = self.num_channels
        y = x.reshape(group, -1, f, channels // f, height, width)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1).repeat(group, 1, height, width)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """4×4 head: minibatch std → 3×3 conv → fully connected (lrelu) → one logit."""

    def __init__(
        self,
        *,
        in_channels: int,  # channels at 4×4
        resolution: int = 4,  # input resolution
        mbstd_group_size: int = 4,  # minibatch-std group size
        mbstd_num_channels: int = 1,  # minibatch-std feature maps (0: no minibatch-std layer)
        conv_clamp: float | None = None,  # clamp the conv output to ±conv_clamp (None: off)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.mbstd = (MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
                      if mbstd_num_channels > 0 else None)
        self.conv = EqualizedConv2d(in_channels=in_channels + max(mbstd_num_channels, 0), out_channels=in_channels,
                                    kernel_size=3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = EqualizedLinear(in_features=in_channels * resolution**2, out_features=in_channels, activation="lrelu")
        self.out = EqualizedLinear(in_features=in_channels, out_features=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, 4, 4)`` → logits ``(B, 1)`` float32."""
        assert_shape(x, (None, self.in_channels, self.resolution, self.resolution), "DiscriminatorEpilogue input")
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)


class StyleGAN2Discriminator(nn.Module):
    """Image ``(B, img_channels, R, R)`` in [−1, 1] → realness logits ``(B, 1)`` (see the module docstring)."""

    def __init__(
        self,
        *,
        img_resolution: int,  # input resolution R (power of two >= 4)
        img_channels: int,  # input channels
        channel_base: int = 32768,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,  # maximum channels of any block
        mbstd_group_size: int = 4,  # minibatch-std group size
        mbstd_num_channels: int = 1,  # minibatch-std feature maps
        num_bf16_res: int = 0,  # the N highest resolutions run in bfloat16
        channels_last: bool = False,  # channels-last activations in every block
        conv_clamp: float | None = None,  # clamp conv outputs to ±conv_clamp (None: off)
        resample_filter: Sequence[float] = DEFAULT_FILTER,  # FIR taps for downsampling
    ) -> None:
        super().__init__()
        log2 = check_resolution(img_resolution)
        if img_resolution < 8:
            raise ValueError(f"StyleGAN2Discriminator needs img_resolution >= 8, got {img_resolution}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        channels = channels_per_resolution(self.block_resolutions + [4], channel_base, channel_max)
        low_bf16 = bf16_resolution(img_resolution, num_bf16_res)
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                in_channels=channels[res] if res < img_resolution else 0, tmp_channels=channels[res],
                out_channels=channels[res // 2], resolution=res, img_channels=img_channels,
                use_bf16=res >= low_bf16, channels_last=channels_last, resample_filter=resample_filter,
                conv_clamp=conv_clamp,
            )
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(in_channels=channels[4], mbstd_group_size=mbstd_group_size,
                                        mbstd_num_channels=mbstd_num_channels, conv_clamp=conv_clamp)

    def forward(self, img: Tensor) -> Tensor:
        """``(B, img_channels, R, R)`` → logits ``(B, 1)`` float32 (higher = more real)."""
        assert_shape(img, (None, self.img_channels, self.img_resolution, self.img_resolution), "discriminator input")
        x: Tensor | None = None
        for res in self.block_resolutions:
            block: DiscriminatorBlock = getattr(self, f"b{res}")
            x = block(x, img if x is None else None)
        assert x is not None
        return self.b4(x)

    def extra_repr(self) -> str:
        return f"img_resolution={self.img_resolution}, img_channels={self.img_channels}"
