"""The reconstruction network: aligned face crop → face-model coefficients (METHOD.md §3.1).

Structured like Deep3DFaceRecon's ``ReconNetWrapper``: a torchvision ResNet trunk without
its ``fc`` (global average pooling → a ``(B, C)`` feature) and one zero-initialised 1×1
convolution per coefficient block (id, exp, tex, angle, gamma, trans-xy, trans-z); the
block outputs are concatenated in :class:`~emoedit.face_model.CoeffLayout` order.
Backbone parameter names are torchvision's (``backbone.conv1.weight``, ``backbone.layer1.0...``),
so Deep3D's official checkpoint maps onto this module key by key
(:mod:`emoedit.reconstruction.deep3d_checkpoint`).

Input: ``(B, 3, S, S)`` float RGB in **[0, 1]** — Deep3DFaceRecon feeds un-normalised
[0, 1] crops to its ResNet, and the official weights expect exactly that. This is the one
network of the project that does not take [−1, 1].

No weights are ever downloaded: the trunk is built with ``weights=None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.resnet import BasicBlock

from emoedit.face_model.layout import CoeffLayout, Coeffs
from emoedit.shape_checks import assert_range, assert_shape

#: Backbones by name: constructor and feature width. ``resnet_tiny`` is a small CPU ResNet.
BACKBONES: tuple[str, ...] = ("resnet50", "resnet34", "resnet18", "resnet_tiny")
_FEATURE_WIDTH = {"resnet50": 2048, "resnet34": 512, "resnet18": 512}

#: Output heads in concatenation order: (head name, CoeffLayout block it fills).
#: Translation has two heads (x, y and z) as in Deep3DFaceRecon.
HEAD_BLOCKS: tuple[tuple[str, str], ...] = (
    ("id", "id"),
    ("exp", "exp"),
    ("tex", "tex"),
    ("angle", "angle"),
    ("gamma", "gamma"),
    ("trans_xy", "trans"),
    ("trans_z", "trans"),
)


class TinyResNet(nn.Module):
    """A small ResNet for CPU experiments: a stride-2 stem, four stages of one torchvision
    :class:`~torchvision.models.resnet.BasicBlock` each (strides 1, 2, 2, 2), global average pooling.

    ``(B, 3, H, W)`` → ``(B, 8·width)`` features.
    """

    def __init__(
        self,
        *,
        width: int = 16,  # channels of the stem and the first stage (stages: w, 2w, 4w, 8w)
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"TinyResNet: width must be >= 1, got {width}")
        self.conv1 = nn.Conv2d(3, width, kernel_size=5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_channels = width
        for index, stride in enumerate((1, 2, 2, 2)):
            out_channels = width * 2**index
            downsample = None
            if stride != 1 or in_channels != out_channels:
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )
            stages.append(nn.Sequential(BasicBlock(in_channels, out_channels, stride=stride, downsample=downsample)))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` → ``(B, num_features)``."""
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """The trunk called ``name`` (see :data:`BACKBONES`) without classifier, and its feature width.

    The torchvision ResNets keep their module names (so checkpoints map by key) with ``fc``
    replaced by an identity: ``forward`` returns the pooled ``(B, C)`` feature.
    """
    if name == "resnet_tiny":
        tiny = TinyResNet()
        return tiny, tiny.num_features
    constructors = {"resnet50": resnet50, "resnet34": resnet34, "resnet18": resnet18}
    if name not in constructors:
        raise ValueError(f"unknown reconstruction backbone {name!r}; choose one of {BACKBONES}")
    trunk = constructors[name](weights=None)  # never downloads
    trunk.fc = nn.Identity()
    return trunk, _FEATURE_WIDTH[name]


@dataclass(frozen=True)
class RegressorOutput:
    """What :class:`ReconRegressor` predicts (B = batch)."""

    coeffs: Tensor  # (B, layout.size) float32 flat coefficients, CoeffLayout order
    parts: Coeffs  # the same split into named blocks (views of ``coeffs``)


class ReconRegressor(nn.Module):
    """ResNet trunk + one zero-initialised 1×1-conv head per coefficient block.

    ``forward``: ``(B, 3, S, S)`` float RGB in [0, 1] (aligned crop, ``S = input_size``)
    → :class:`RegressorOutput`. At initialisation every head is zero, so the network
    predicts the mean face with the identity pose and the default light (Deep3D's init).
    """

    def __init__(
        self,
        *,
        backbone: str = "resnet50",  # trunk name, one of BACKBONES (resnet50 = Deep3DFaceRecon)
        id_size: int = 80,  # K_id, identity coefficients
        exp_size: int = 64,  # K_exp, expression coefficients
        tex_size: int = 80,  # K_tex, albedo coefficients (0: no albedo head)
        input_size: int = 224,  # side S of the square input crop, pixels
    ) -> None:
        super().__init__()
        self.layout = CoeffLayout(id=int(id_size), exp=int(exp_size), tex=int(tex_size))
        if input_size < 16:
            raise ValueError(f"ReconRegressor: input_size must be >= 16, got {input_size}")
        self.backbone_name = backbone
        self.input_size = int(input_size)
        self.backbone, self.num_features = build_backbone(backbone)
        sizes = {
            "id": self.layout.id,
            "exp": self.layout.exp,
            "tex": self.layout.tex,
            "angle": self.layout.angle,
            "gamma": self.layout.gamma,
            "trans_xy": 2,
            "trans_z": 1,
        }
        self.head_sizes: dict[str, int] = sizes
        self.heads = nn.ModuleDict(
            {name: nn.Conv2d(self.num_features, size, kernel_size=1, bias=True) for name, size in sizes.items() if size > 0}
        )
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def extra_repr(self) -> str:
        layout = self.layout
        return (
            f"backbone={self.backbone_name!r}, input_size={self.input_size}, "
            f"id={layout.id}, exp={layout.exp}, tex={layout.tex}"
        )

    def features(self, images: Tensor) -> Tensor:
        """Trunk only: ``(B, 3, S, S)`` in [0, 1] → ``(B, num_features)`` float."""
        assert_shape(images, (None, 3, self.input_size, self.input_size), "images")
        return self.backbone(images)

    def heads_forward(self, features: Tensor) -> RegressorOutput:
        """Heads only: ``(B, num_features)`` → :class:`RegressorOutput` (float32)."""
        assert_shape(features, (None, self.num_features), "features")
        x = features[:, :, None, None]
        blocks = []
        for name, _ in HEAD_BLOCKS:
            if name in self.heads:
                blocks.append(self.heads[name](x).flatten(1))
            else:
                blocks.append(x.new_zeros(x.shape[0], 0))
        coeffs = torch.cat(blocks, dim=1).float()
        return RegressorOutput(coeffs=coeffs, parts=self.layout.split(coeffs))

    def forward(self, images: Tensor) -> RegressorOutput:
        """Regress coefficients.

        Args:
            images: ``(B, 3, S, S)`` float RGB in [0, 1], aligned crops (``S = input_size``).

        Returns:
            :class:`RegressorOutput` with ``coeffs`` ``(B, layout.size)`` float32.
        """
        assert_shape(images, (None, 3, self.input_size, self.input_size), "images")
        assert_range(images.detach(), 0.0, 1.0, "images (ReconRegressor takes [0, 1] crops)", atol=1e-3)
        return self.heads_forward(self.features(images))
