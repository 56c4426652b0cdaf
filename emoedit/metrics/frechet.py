"""FID and FED: the Fréchet distance between two image sets in a network's feature space.

Both sets' features are summarised by a Gaussian (mean μ, covariance Σ) and

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})

- **FID** (METHOD.md §6): features = the 2048-d pool3 activations of the TensorFlow FID
  Inception v3. :class:`FIDInceptionV3` rebuilds that network (torchvision's Inception v3
  with the FID patches: average pools that ignore padding, a max pool in the last block)
  and loads the standard ``pt_inception-2015-12-05-6726825d.pth`` weights (pytorch-fid's
  file; torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` is the same
  tensors) **from a path** — nothing is downloaded. Images are resized to 299² bilinearly
  and mapped to [-1, 1] as pytorch-fid does, so scores are comparable to pytorch-fid's.
- **FED**: the same distance over an emotion classifier's penultimate features
  (:class:`EmotionFeatures`: the harness's :class:`~emoedit.networks.judges.EmotionJudge`,
  a judge checkpoint by path, or an exported feature network by path).

:func:`fid_metric` / :func:`fed_metric` / :func:`frechet_metric` return torchmetrics'
``FrechetInceptionDistance`` built with ``feature=`` one of these modules: stream images
with ``metric.update(images, real=True/False)`` and read ``metric.compute()``
(distributed reductions included). Every feature module here takes ``(B, 3, H, W)`` float
images in [0, 1] and returns ``(B, D)`` features; it stays in eval mode and runs without
gradients. :func:`frechet_distance` and :func:`frechet_distance_from_features` compute the
distance directly (float64, a symmetric square root, so Σ₁Σ₂'s eigenvalues are real).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from emoedit.losses.identity import IdentityLoss
from emoedit.networks.judges import EmotionJudge
from emoedit.shape_checks import assert_finite, assert_range, assert_shape

#: Input side of the FID Inception network, pixels.
FID_INPUT_SIZE: int = 299
#: Length of the FID (pool3) features.
FID_FEATURE_DIM: int = 2048
#: Blocks of the FID Inception up to pool3, in order (torchvision / pytorch-fid names).
FID_BLOCKS: tuple[str, ...] = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)
#: Keys of a weights file that the features do not use (logits layer, auxiliary classifier).
_UNUSED_PREFIXES: tuple[str, ...] = ("fc.", "AuxLogits.")

_inception = torchvision.models.inception


class _FIDInceptionA(_inception.InceptionA):
    """InceptionA whose pooling branch averages without the zero padding (TensorFlow's)."""

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, pool], 1)


class _FIDInceptionC(_inception.InceptionC):
    """InceptionC whose pooling branch averages without the zero padding."""

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), branch7x7, dbl, pool], 1)


class _FIDInceptionE(_inception.InceptionE):
    """InceptionE with the FID network's pooling: average without padding (7b) or max (7c)."""

    def __init__(self, in_channels: int, *, max_pool: bool) -> None:
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        dbl = torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([self.branch1x1(x), branch3x3, dbl, self.branch_pool(pooled)], 1)


class _NoTrain(nn.Module):
    """Feature modules stay in eval mode whatever ``train()`` is called with."""

    def train(self, mode: bool = True) -> _NoTrain:
        self.training = False
        for child in self.children():
            try:
                child.train(False)
            except (NotImplementedError, RuntimeError):  # exported programs are frozen as exported
                pass
        return self


class FIDInceptionV3(_NoTrain):
    """TensorFlow-FID Inception v3 up to pool3: ``(B, 3, H, W)`` [0, 1] → ``(B, 2048)``.

    The constructor builds random weights (no file read); load the standard weights with
    :meth:`from_file`. Parameters never require gradients.
    """

    num_features: int = FID_FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        base = _inception.Inception3(num_classes=1008, aux_logits=False, init_weights=False, transform_input=False)
        blocks = {name: getattr(base, name) for name in FID_BLOCKS if not name.startswith("maxpool")}
        blocks.update(
            maxpool1=nn.MaxPool2d(kernel_size=3, stride=2), maxpool2=nn.MaxPool2d(kernel_size=3, stride=2),
            Mixed_5b=_FIDInceptionA(192, pool_features=32), Mixed_5c=_FIDInceptionA(256, pool_features=64),
            Mixed_5d=_FIDInceptionA(288, pool_features=64), Mixed_6b=_FIDInceptionC(768, channels_7x7=128),
            Mixed_6c=_FIDInceptionC(768, channels_7x7=160), Mixed_6d=_FIDInceptionC(768, channels_7x7=160),
            Mixed_6e=_FIDInceptionC(768, channels_7x7=192), Mixed_7b=_FIDInceptionE(1280, max_pool=False),
            Mixed_7c=_FIDInceptionE(2048, max_pool=True),
        )
        for name in FID_BLOCKS:
            self.add_module(name, blocks[name])
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,  # pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or torch-fidelity's copy
    ) -> FIDInceptionV3:
        """The FID network with the weights of ``path`` (``weights_only``; every feature tensor required)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: FID Inception weights file not found (the project downloads nothing)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}
        network = cls()
        own = network.state_dict()
        problems = [f"{k}: missing" for k in own if k not in state and not k.endswith("num_batches_tracked")]
        problems += [f"{k}: unexpected" for k in state if k not in own]
        problems += [f"{k}: shape {tuple(state[k].shape)} in file, {tuple(v.shape)} here"
                     for k, v in own.items() if k in state and state[k].shape != v.shape]
        if problems:
            raise ValueError(f"{path}: not FID Inception v3 weights: " + "; ".join(problems[:6]))
        network.load_state_dict({k: state.get(k, own[k]) for k in own}, strict=True)
        return network

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` float in [0, 1] → ``(B, 2048)`` float32 pool3 features."""
        assert_shape(images, (None, 3, None, None), "images")
        assert_range(images, 0.0, 1.0, "images")
        x = F.interpolate(images.float(), size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        for name in FID_BLOCKS:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


class EmotionFeatures(_NoTrain):
    """An emotion classifier's penultimate features: ``(B, 3, H, W)`` [0, 1] → ``(B, F)`` (FED's space).

    ``classifier`` maps ``(B, 3, S, S)`` crops in [-1, 1] to either the features ``(B, F)``
    or an output with a ``features`` field (:class:`EmotionJudge`). Frames are resized to
    ``input_size`` first (aligned crops are assumed).
    """

    def __init__(
        self,
        *,
        classifier: nn.Module,  # crops in [-1, 1] -> (B, F) features or an output with .features
        input_size: int,  # side of the classifier's input crop, pixels
        num_features: int | None = None,  # F; None = found with one dummy forward pass
    ) -> None:
        super().__init__()
        if input_size < 8:
            raise ValueError(f"EmotionFeatures: input_size must be >= 8, got {input_size}")
        self.classifier = classifier
        self.input_size = int(input_size)
        for parameter in self.classifier.parameters():
            parameter.requires_grad_(False)
        self.train(False)
        if num_features is None:
            num_features = int(self(torch.full((2, 3, self.input_size, self.input_size), 0.5)).shape[-1])
        self.num_features = int(num_features)

    @classmethod
    def from_judge(cls, judge: EmotionJudge) -> EmotionFeatures:
        """The features of the harness's emotion judge."""
        return cls(classifier=judge, input_size=judge.input_size, num_features=judge.feature_dim)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,  # a judge .ckpt, or a .pt2 / TorchScript feature network
        *,
        input_size: int = 112,  # exported networks: their input side (judges know theirs)
    ) -> EmotionFeatures:
        """A judge checkpoint (``.ckpt``, :meth:`EmotionJudge.from_checkpoint`) or an exported feature network."""
        path = Path(path)
        if path.suffix == ".ckpt":
            return cls.from_judge(EmotionJudge.from_checkpoint(path))
        return cls(classifier=IdentityLoss.from_file(path, input_size=input_size).network, input_size=input_size)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` float in [0, 1] → ``(B, F)`` float features."""
        assert_shape(images, (None, 3, None, None), "images")
        assert_range(images, 0.0, 1.0, "images")
        size = self.input_size
        if images.shape[-2:] != (size, size):
            down = min(images.shape[-2:]) > size
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=down)
        output = self.classifier(images * 2.0 - 1.0)
        features = output if isinstance(output, Tensor) else output.features
        return features.float()


def frechet_metric(
    features: nn.Module,  # (B, 3, H, W) [0, 1] -> (B, D); should carry an int ``num_features``
    *,
    reset_real_features: bool = True,  # False: reset() keeps the real set's statistics
) -> FrechetInceptionDistance:
    """torchmetrics' Fréchet distance over ``features`` (update with [0, 1] float images)."""
    return FrechetInceptionDistance(feature=features, reset_real_features=reset_real_features, normalize=True)


def fid_metric(
    weights_path: str | os.PathLike,  # the standard FID Inception weights file
    *,
    reset_real_features: bool = True,  # False: reset() keeps the real set's statistics
) -> FrechetInceptionDistance:
    """FID with :class:`FIDInceptionV3` loaded from ``weights_path``."""
    return frechet_metric(FIDInceptionV3.from_file(weights_path), reset_real_features=reset_real_features)


def fed_metric(
    classifier: EmotionJudge | EmotionFeatures | str | os.PathLike,  # a judge, a feature module, or a path
    *,
    input_size: int = 112,  # exported networks given by path: their input side
    reset_real_features: bool = True,  # False: reset() keeps the real set's statistics
) -> FrechetInceptionDistance:
    """FED: the Fréchet distance over an emotion classifier's penultimate features."""
    if isinstance(classifier, EmotionJudge):
        features = EmotionFeatures.from_judge(classifier)
    elif isinstance(classifier, EmotionFeatures):
        features = classifier
    elif isinstance(classifier, (str, os.PathLike)):
        features = EmotionFeatures.from_file(classifier, input_size=input_size)
    else:
        raise TypeError(f"fed_metric: expected an EmotionJudge, EmotionFeatures or a path, got {type(classifier).__name__}")
    return frechet_metric(features, reset_real_features=reset_real_features)


def feature_statistics(
    features: Tensor,  # (N, D) float features, N >= 2
) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` in float64."""
    assert_shape(features, (None, None), "features")
    if features.shape[0] < 2:
        raise ValueError(f"features: need at least 2 samples for a covariance, got {features.shape[0]}")
    assert_finite(features, "features")
    x = features.to(torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(
    mean1: Tensor,  # (D,) float mean of set 1
    cov1: Tensor,  # (D, D) float covariance of set 1 (symmetric PSD)
    mean2: Tensor,  # (D,) float mean of set 2
    cov2: Tensor,  # (D, D) float covariance of set 2 (symmetric PSD)
) -> Tensor:
    """``()`` float64 squared Fréchet distance between two Gaussians (>= 0 up to round-off).

    ``Tr((Σ₁Σ₂)^{1/2})`` is computed as ``Σ √λ`` of the symmetric ``Σ₁^{1/2} Σ₂ Σ₁^{1/2}``,
    which has the same eigenvalues and stays real.
    """
    dims = assert_shape(mean1, ("D",), "mean1")
    assert_shape(cov1, ("D", "D"), "cov1", dims)
    assert_shape(mean2, ("D",), "mean2", dims)
    assert_shape(cov2, ("D", "D"), "cov2", dims)
    m1, m2 = mean1.to(torch.float64), mean2.to(torch.float64)
    c1, c2 = cov1.to(torch.float64), cov2.to(torch.float64)
    root1 = _psd_sqrt(c1)
    middle = root1 @ c2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return (m1 - m2).square().sum() + torch.trace(c1) + torch.trace(c2) - 2.0 * trace_sqrt


def frechet_distance_from_features(
    features1: Tensor,  # (N, D) float features of set 1
    features2: Tensor,  # (M, D) float features of set 2
) -> Tensor:
    """``()`` float64 Fréchet distance between the Gaussians fitted to two feature sets."""
    assert_shape(features1, (None, "D"), "features1")
    assert_shape(features2, (None, features1.shape[1]), "features2")
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


__all__ = [
    "EmotionFeatures",
    "FIDInceptionV3",
    "FID_FEATURE_DIM",
    "feature_statistics",
    "fed_metric",
    "fid_metric",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_metric",
]
