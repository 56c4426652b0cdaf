"""ResNet-IR(-SE) backbone (InsightFace "improved residual" blocks, optional squeeze-excitation).

The layout of pSp's encoder backbone (``encoders/helpers.py`` of pixel2style2pixel, after
TreB1eN's InsightFace_Pytorch): a stride-1 3×3 input layer (conv, BN, PReLU) and four
stages of bottleneck-IR units; the first unit of every stage has stride 2, so a ``(B, C,
S, S)`` input gives stage outputs at ``S/2, S/4, S/8, S/16``. Each unit is

    shortcut: identity (1×1 max-pool with the stride) or 1×1 conv + BN when widths differ
    residual: BN → 3×3 conv → PReLU → 3×3 conv (stride) → BN [→ SE]

Module names follow InsightFace's IR-SE50 (``input_layer.0``, ``body.<k>.res_layer.<n>``,
``body.<k>.shortcut_layer.<n>``, SE ``fc1``/``fc2``), so the ArcFace ``model_ir_se50.pth``
weights pSp initialises from load key by key (:meth:`ResNetIR.load_insightface_weights`).

Depths (units per stage): 50 = (3, 4, 14, 3) (IR-SE50, pSp's default), 100, 152 as in
InsightFace, and smaller ones for CPU configs: 34 = (3, 4, 6, 3), 18 = (2, 2, 2, 2),
10 = (1, 1, 1, 1). Stage widths default to (64, 128, 256, 512) and can be reduced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from emoedit.shape_checks import assert_shape

#: Units per stage for each supported depth.
DEPTH_UNITS: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
#: InsightFace / pSp stage widths.
DEFAULT_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
NUM_STAGES = 4
INPUT_LAYER_PREFIX = "input_layer."
BODY_PREFIX = "body."


class SqueezeExcitation(nn.Module):
    """Channel attention: global average → 1×1 conv (reduce) → ReLU → 1×1 conv → sigmoid gate.

    ``(B, C, H, W)`` → ``(B, C, H, W)``.
    """

    def __init__(
        self,
        *,
        channels: int,  # C
        reduction: int = 16,  # hidden width = max(1, C // reduction)
    ) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIR(nn.Module):
    """One improved-residual unit (see the module docstring). ``(B, Cin, H, W)`` → ``(B, Cout, H/s, W/s)``."""

    def __init__(
        self,
        *,
        in_channels: int,  # Cin
        out_channels: int,  # Cout
        stride: int,  # 1 or 2 (spatial downsampling of this unit)
        use_se: bool,  # append squeeze-excitation to the residual branch (IR-SE)
        se_reduction: int = 16,  # SE hidden width divisor
    ) -> None:
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if use_se:
            layers.append(SqueezeExcitation(channels=out_channels, reduction=se_reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


@dataclass(frozen=True)
class IRFeatures:
    """The four stage outputs of :class:`ResNetIR` (finest first)."""

    stage1: Tensor  # (B, widths[0], S/2, S/2)
    stage2: Tensor  # (B, widths[1], S/4, S/4)
    stage3: Tensor  # (B, widths[2], S/8, S/8)
    stage4: Tensor  # (B, widths[3], S/16, S/16)


class ResNetIR(nn.Module):
    """ResNet-IR(-SE) trunk without an output layer; returns every stage's feature map.

    Input ``(B, in_channels, S, S)`` float (images in [-1, 1]); ``S`` must be divisible by 16.
    """

    def __init__(
        self,
        *,
        depth: int = 50,  # units per stage from DEPTH_UNITS (50 = IR-SE50)
        use_se: bool = True,  # IR-SE (True) or plain IR (False)
        in_channels: int = 3,  # input channels (RGB)
        widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,  # channels of the four stages
        stem_width: int | None = None,  # channels of the input layer; None = widths[0]
        se_reduction: int = 16,  # SE hidden width divisor
    ) -> None:
        super().__init__()
        if depth not in DEPTH_UNITS:
            raise ValueError(f"ResNetIR: depth must be one of {sorted(DEPTH_UNITS)}, got {depth}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != NUM_STAGES or any(w < 1 for w in widths):
            raise ValueError(f"ResNetIR: widths must be {NUM_STAGES} positive ints, got {widths}")
        stem = int(stem_width or widths[0])
        self.depth = depth
        self.widths: tuple[int, int, int, int] = widths  # type: ignore[assignment]
        self.in_channels = in_channels
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.PReLU(stem),
        )
        units: list[nn.Module] = []
        stage_ends: list[int] = []
        channels = stem
        for width, count in zip(widths, DEPTH_UNITS[depth]):
            for unit in range(count):
                units.append(
                    BottleneckIR(
                        in_channels=channels, out_channels=width, stride=2 if unit == 0 else 1,
                        use_se=use_se, se_reduction=se_reduction,
                    )
                )
                channels = width
            stage_ends.append(len(units) - 1)
        self.body = nn.Sequential(*units)
        self.stage_ends: tuple[int, ...] = tuple(stage_ends)  # body index of each stage's last unit

    def forward(self, x: Tensor) -> IRFeatures:
        """``(B, in_channels, S, S)`` → :class:`IRFeatures` (S divisible by 16)."""
        assert_shape(x, (None, self.in_channels, "S", "S"), "ResNetIR input")
        if x.shape[-1] % 16:
            raise ValueError(f"ResNetIR input: side {x.shape[-1]} is not divisible by 16")
        x = self.input_layer(x)
        stages: list[Tensor] = []
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index in self.stage_ends:
                stages.append(x)
        return IRFeatures(*stages)

    def load_insightface_weights(
        self,
        path: str | os.PathLike,  # InsightFace IR(-SE) state dict, e.g. pSp's model_ir_se50.pth
    ) -> None:
        """Copy ``input_layer.*`` and ``body.*`` from an InsightFace state dict (``weights_only``).

        Other keys (``output_layer.*``) are ignored; every backbone tensor must be present
        with the same shape, else ``ValueError`` naming the file and the first differences.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: backbone weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = self.state_dict()
        problems = [f"{k}: missing" for k in own if k not in state]
        problems += [
            f"{k}: shape {tuple(state[k].shape)} in file, {tuple(v.shape)} here"
            for k, v in own.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ]
        if problems:
            raise ValueError(
                f"{path}: weights do not fit a ResNet-IR{'-SE' if self._has_se() else ''}-{self.depth} "
                f"with widths {self.widths}: " + "; ".join(problems[:6])
            )
        self.load_state_dict({k: state[k] for k in own}, strict=True)

    def _has_se(self) -> bool:
        return any(isinstance(m, SqueezeExcitation) for m in self.modules())
