"""StyleGAN2 (stylegan2-ada-pytorch architecture) in pure PyTorch: the t-GAN and teeth t-GAN networks.

``StyleGAN2Generator`` (mapping + synthesis, ``num_ws``, ``mapping.w_avg``) and
``StyleGAN2Discriminator``; building blocks in :mod:`.layers`.
"""

from __future__ import annotations

from emoedit.networks.stylegan2.discriminator import (
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    MinibatchStdLayer,
    StyleGAN2Discriminator,
)
from emoedit.networks.stylegan2.generator import StyleGAN2Generator
from emoedit.networks.stylegan2.layers import (
    EqualizedConv2d,
    EqualizedLinear,
    bias_act,
    conv2d_resample,
    downsample2d,
    modulated_conv2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)
from emoedit.networks.stylegan2.mapping import MappingNetwork
from emoedit.networks.stylegan2.synthesis import SynthesisBlock, SynthesisLayer, SynthesisNetwork, ToRGBLayer

__all__ = [
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "EqualizedConv2d",
    "EqualizedLinear",
    "MappingNetwork",
    "MinibatchStdLayer",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "modulated_conv2d",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]
