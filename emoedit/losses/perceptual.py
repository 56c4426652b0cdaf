"""LPIPS perceptual distance (Zhang et al. 2018) as a frozen loss module, with no download.

Wraps ``lpips.LPIPS``. That package downloads torchvision's ImageNet trunk when asked for
a pretrained one (``pnet_rand=False``); this wrapper never lets it: the trunk is always
built random (``pnet_rand=True``) and then, in :meth:`LPIPSLoss.from_files`, filled from a
file the user supplies. Two kinds of weights are involved:

- the **trunk** (AlexNet or VGG16 ``features``): a torchvision state dict such as
  ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` (keys ``features.<i>.weight``), or
  an LPIPS trunk state dict (``net.slice<k>.<i>.weight`` or ``slice<k>.<i>.weight``);
- the **linear calibration layers** (``lin<k>.model.1.weight``): by default the file that
  ships inside the installed ``lpips`` package (``lpips/weights/v0.1/<net>.pth``, local,
  not a download), or any file given as ``linear_path``.

Every file is read with ``torch.load(weights_only=True)``. For tests,
:meth:`LPIPSLoss.with_random_backbone` keeps the random trunk (``pnet_rand=True``) — a
differentiable image distance, not a perceptual one.

Inputs are images in [-1, 1] (``(B, 3, H, W)``); images smaller than ``min_size`` are
bilinearly enlarged first (AlexNet's two 3×3/2 max-pools need about 32 px).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.shape_checks import assert_shape

NETS: tuple[str, ...] = ("alex", "vgg")
DEFAULT_MIN_SIZE = 32


def bundled_linear_weights(net: str) -> Path:
    """Path of the calibration layers shipped with the installed ``lpips`` package (v0.1)."""
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


def _load_state(path: Path, what: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LPIPS {what} weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable LPIPS {what} weights file ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors for the LPIPS {what}")
    return state


class LPIPSLoss(nn.Module):
    """Frozen LPIPS: ``(x, y)`` images ``(B, 3, H, W)`` in [-1, 1] → ``(B,)`` distances >= 0.

    The constructor builds the network with random weights (no file read, no download);
    use :meth:`from_files` (real LPIPS) or :meth:`with_random_backbone` (tests). The module
    stays in eval mode and its parameters never require gradients (gradients still flow to
    the inputs).
    """

    def __init__(
        self,
        *,
        net: str = "alex",  # trunk: "alex" (pSp's choice) or "vgg"
        min_size: int = DEFAULT_MIN_SIZE,  # images smaller than this (either side) are enlarged to it
    ) -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPSLoss: net must be one of {NETS}, got {net!r}")
        import lpips

        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" for the random trunk
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
        self.net_name = net
        self.min_size = int(min_size)
        for parameter in self.lpips.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSLoss:
        """Always eval (no dropout in the calibration layers); ``mode`` is ignored."""
        return super().train(False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_files(
        cls,
        *,
        net: str = "alex",  # trunk: "alex" or "vgg"
        backbone_path: str | os.PathLike,  # trunk weights (torchvision or LPIPS layout)
        linear_path: str | os.PathLike | None = None,  # calibration layers; None = the lpips package's own file
        min_size: int = DEFAULT_MIN_SIZE,  # see the constructor
    ) -> LPIPSLoss:
        """Real LPIPS from local files (never downloads)."""
        loss = cls(net=net, min_size=min_size)
        loss.load_backbone(backbone_path)
        loss.load_linear(bundled_linear_weights(net) if linear_path is None else linear_path)
        return loss

    @classmethod
    def with_random_backbone(
        cls,
        *,
        net: str = "alex",  # trunk: "alex" or "vgg"
        linear_path: str | os.PathLike | None = None,  # calibration layers; None = the lpips package's own file
        min_size: int = DEFAULT_MIN_SIZE,  # see the constructor
    ) -> LPIPSLoss:
        """LPIPS with a randomly initialised trunk (``pnet_rand=True``): for tests only."""
        loss = cls(net=net, min_size=min_size)
        loss.load_linear(bundled_linear_weights(net) if linear_path is None else linear_path)
        return loss

    def load_backbone(self, path: str | os.PathLike) -> None:
        """Fill the trunk from a torchvision (``features.<i>.*``) or LPIPS (``[net.]slice<k>.<i>.*``) state dict."""
        path = Path(path)
        state = _load_state(path, "backbone")
        trunk = self.lpips.net
        wanted = trunk.state_dict()
        mapped: dict[str, Tensor] = {}
        for name in wanted:  # name = "slice<k>.<i>.<param>"; torchvision's = "features.<i>.<param>"
            _, index, param = name.split(".", 2)
            for candidate in (name, f"net.{name}", f"features.{index}.{param}"):
                if candidate in state:
                    mapped[name] = state[candidate]
                    break
        missing = sorted(set(wanted) - set(mapped))
        bad = [f"{k}: {tuple(mapped[k].shape)} in file, {tuple(v.shape)} expected"
               for k, v in wanted.items() if k in mapped and mapped[k].shape != v.shape]
        if missing or bad:
            problems = [f"{k}: missing" for k in missing[:4]] + bad[:4]
            raise ValueError(f"{path}: not {self.net_name} trunk weights for LPIPS: " + "; ".join(problems))
        trunk.load_state_dict(mapped, strict=True)

    def load_linear(self, path: str | os.PathLike) -> None:
        """Fill the calibration layers from an LPIPS ``lin<k>.model.1.weight`` state dict."""
        path = Path(path)
        state = _load_state(path, "linear-layer")
        names = [n for n in self.lpips.state_dict() if n.startswith("lin") and not n.startswith("lins.")]
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"{path}: not LPIPS {self.net_name} calibration weights (missing {missing[:3]})")
        own = self.lpips.state_dict()
        bad = [n for n in names if state[n].shape != own[n].shape]
        if bad:
            raise ValueError(f"{path}: LPIPS calibration weights of another trunk (shape of {bad[0]} differs)")
        for name in names:
            own[name].copy_(state[name])

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x``, ``y``: ``(B, 3, H, W)`` float in [-1, 1] → ``(B,)`` LPIPS distance."""
        dims = assert_shape(x, ("B", 3, "H", "W"), "x")
        assert_shape(y, ("B", 3, "H", "W"), "y", dims)
        height, width = x.shape[-2:]
        if min(height, width) < self.min_size:
            scale = self.min_size / min(height, width)
            size = (max(self.min_size, round(height * scale)), max(self.min_size, round(width * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.lpips(x, y).reshape(x.shape[0])
