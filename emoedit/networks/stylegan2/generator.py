"""The StyleGAN2 generator: mapping network + synthesis network, interface of stylegan2-ada-pytorch.

Other parts code against exactly this::

    G = StyleGAN2Generator(z_dim=512, w_dim=512, img_resolution=512, img_channels=3,
                           channel_base=32768, channel_max=512)
    G.num_ws                                   # 16 rows of W+ at 512²
    ws = G.mapping(z, truncation_psi=0.7)      # (B, 16, 512)
    img = G.synthesis(ws, noise_mode="const")  # (B, 3, 512, 512), nominally [-1, 1]
    img = G(z)                                 # both
    G.mapping.w_avg                            # (512,) running mean of w (buffer)

(No class label input: ``c_dim`` of ada is always 0 here.)
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from emoedit.networks.stylegan2.layers import DEFAULT_FILTER
from emoedit.networks.stylegan2.mapping import MappingNetwork
from emoedit.networks.stylegan2.synthesis import SynthesisNetwork
from emoedit.shape_checks import assert_shape


class StyleGAN2Generator(nn.Module):
    """z ``(B, z_dim)`` → W+ ``(B, num_ws, w_dim)`` → image ``(B, img_channels, R, R)``."""

    def __init__(
        self,
        *,
        z_dim: int,  # input latent size (512 in the paper)
        w_dim: int,  # W latent size (512 in the paper)
        img_resolution: int,  # output resolution R, a power of two (512 for the paper's textures)
        img_channels: int,  # output channels (3 for RGB)
        channel_base: int = 32768,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 512,  # maximum channels of any synthesis block
        mapping_layers: int = 8,  # fully connected layers in the mapping network
        mapping_lr_multiplier: float = 0.01,  # learning-rate multiplier of the mapping network
        w_avg_beta: float = 0.995,  # decay of the tracked mean of w (truncation centre)
        num_bf16_res: int = 0,  # the N highest synthesis resolutions run in bfloat16
        channels_last: bool = False,  # channels-last activations in the synthesis network
        conv_clamp: float | None = None,  # clamp synthesis conv outputs to ±conv_clamp (None: off)
        resample_filter: Sequence[float] = DEFAULT_FILTER,  # FIR taps for upsampling
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, channel_base=channel_base,
            channel_max=channel_max, num_bf16_res=num_bf16_res, channels_last=channels_last,
            resample_filter=resample_filter, conv_clamp=conv_clamp,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, w_dim=w_dim, num_ws=self.num_ws, num_layers=mapping_layers,
                                      lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta)

    def forward(
        self,
        z: Tensor,  # (B, z_dim) latent codes
        truncation_psi: float = 1.0,  # pull w toward w_avg (1: none)
        truncation_cutoff: int | None = None,  # truncate only the first N rows (None: all)
        noise_mode: str = "random",  # "random", "const" or "none"
        fused_modconv: bool | None = None,  # see SynthesisNetwork.forward
    ) -> Tensor:
        """``(B, z_dim)`` → image ``(B, img_channels, R, R)`` float32, nominally in [−1, 1]."""
        assert_shape(z, (None, self.z_dim), "StyleGAN2Generator z")
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, w_dim={self.w_dim}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_ws={self.num_ws}")
