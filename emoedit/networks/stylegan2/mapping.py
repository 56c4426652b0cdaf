"""StyleGAN2 mapping network: z → W, broadcast to W+ (``num_ws`` copies), with the tracked W average."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emoedit.networks.stylegan2.layers import EqualizedLinear, normalize_2nd_moment
from emoedit.shape_checks import assert_shape


class MappingNetwork(nn.Module):
    """MLP ``z → w`` (lrelu, equalised lr with a low lr multiplier) and the running mean ``w_avg``.

    ``w_avg`` (a float32 buffer of shape ``(w_dim,)``) follows the batch mean of ``w`` with
    ``w_avg ← lerp(mean_b w_b, w_avg, w_avg_beta)`` whenever :meth:`forward` is called with
    ``update_w_avg=True`` (the training system does it for its generator's main mapping
    calls); truncation pulls ``w`` toward it.
    """

    def __init__(
        self,
        *,
        z_dim: int,  # input latent size
        w_dim: int,  # intermediate latent size
        num_ws: int,  # copies of w returned (W+ rows: one per synthesis layer input)
        num_layers: int = 8,  # fully connected layers
        layer_features: int | None = None,  # hidden width; None = w_dim
        lr_multiplier: float = 0.01,  # learning-rate multiplier of every layer
        w_avg_beta: float = 0.995,  # decay of the running mean of w
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MappingNetwork: num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= w_avg_beta < 1.0:
            raise ValueError(f"MappingNetwork: w_avg_beta must lie in [0, 1), got {w_avg_beta}")
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        hidden = w_dim if layer_features is None else layer_features
        features = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        for idx in range(num_layers):
            layer = EqualizedLinear(in_features=features[idx], out_features=features[idx + 1], activation="lrelu",
                                    lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: Tensor,  # (B, z_dim) latent codes (any scale: normalised to unit second moment first)
        truncation_psi: float = 1.0,  # 1 = no truncation; 0 = every w is w_avg
        truncation_cutoff: int | None = None,  # truncate only the first N rows of W+ (None: all)
        update_w_avg: bool = False,  # update the running mean of w with this batch
    ) -> Tensor:
        """``(B, z_dim)`` → ``ws`` ``(B, num_ws, w_dim)`` float32 (every row equal before mixing)."""
        assert_shape(z, (None, self.z_dim), "MappingNetwork z")
        x = normalize_2nd_moment(z.float())
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            avg = self.w_avg.to(ws.dtype)
            if truncation_cutoff is None:
                ws = avg.lerp(ws, truncation_psi)
            else:
                rows = torch.arange(self.num_ws, device=ws.device).reshape(1, -1, 1) < truncation_cutoff
                ws = torch.where(rows, avg.lerp(ws, truncation_psi), ws)
        return ws

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, w_avg_beta={self.w_avg_beta}"
