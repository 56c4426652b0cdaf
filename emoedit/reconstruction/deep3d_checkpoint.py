"""Load the official Deep3DFaceRecon_pytorch checkpoint into :class:`ReconRegressor`.

The official ``epoch_20.pth`` is a ``torch.save``-d dict; key ``net_recon`` holds the state
dict of Deep3D's ``ReconNetWrapper`` (ResNet-50 trunk without ``fc``; other keys hold the
optimiser and scheduler states and are ignored)::

    backbone.conv1.weight, backbone.bn1.*, backbone.layer{1..4}.*   torchvision ResNet names
    final_layers.0.{weight,bias}   (80, C, 1, 1)  id
    final_layers.1.*               (64, C, 1, 1)  exp
    final_layers.2.*               (80, C, 1, 1)  tex
    final_layers.3.*               (3, C, 1, 1)   angle
    final_layers.4.*               (27, C, 1, 1)  gamma
    final_layers.5.*               (2, C, 1, 1)   trans x, y
    final_layers.6.*               (1, C, 1, 1)   trans z

(``C`` = 2048 for ResNet-50, 512 for ResNet-18/34, Deep3D's ``--net_recon`` choices.)
The backbone keys are copied unchanged; ``final_layers.i`` becomes ``heads.<name>``.
The checkpoint is read with ``torch.load(weights_only=True)``; a ``module.`` prefix (a
DataParallel save) is stripped. The official network regresses BFM09's 80/64/80/3/27/3
coefficients, so it only fits a face model with that layout (Deep3D's
``BFM_model_front.mat``, :meth:`MorphableModel.from_deep3d_mat`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from emoedit.face_model.layout import CoeffLayout
from emoedit.networks.recon_regressor import ReconRegressor

#: Deep3D's ``final_layers`` in order: (our head name, output size).
DEEP3D_HEADS: tuple[tuple[str, int], ...] = (
    ("id", 80),
    ("exp", 64),
    ("tex", 80),
    ("angle", 3),
    ("gamma", 27),
    ("trans_xy", 2),
    ("trans_z", 1),
)
NET_RECON_KEY = "net_recon"
_FINAL_LAYER = re.compile(r"^final_layers\.(\d+)\.(weight|bias)$")


class Deep3DCheckpointError(ValueError):
    """A file that is not a usable Deep3DFaceRecon checkpoint, or a face model it does not fit."""


def check_deep3d_layout(layout: CoeffLayout, *, source: str = "Deep3DFaceRecon checkpoint") -> None:
    """Raise :class:`Deep3DCheckpointError` unless ``layout`` is BFM09's 80/64/80/3/27/3."""
    if layout != CoeffLayout.deep3d():
        raise Deep3DCheckpointError(
            f"{source}: the official Deep3DFaceRecon checkpoint only fits the BFM09 face model "
            f"(coefficients id/exp/tex/angle/gamma/trans = 80/64/80/3/27/3, e.g. "
            f"MorphableModel.from_deep3d_mat); this face model has "
            f"{layout.id}/{layout.exp}/{layout.tex}/{layout.angle}/{layout.gamma}/{layout.trans}"
        )


def read_deep3d_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read the ``net_recon`` state dict of an official checkpoint (``weights_only=True``, CPU).

    Raises:
        FileNotFoundError: no such file.
        Deep3DCheckpointError: unreadable, or no ``net_recon`` state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Deep3DFaceRecon checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip / unpickling / truncation errors
        raise Deep3DCheckpointError(
            f"{path}: not a readable checkpoint with torch.load(weights_only=True) ({type(error).__name__}: {error}). "
            "emoedit never unpickles objects; if this is a genuine Deep3DFaceRecon checkpoint that also holds "
            "non-tensor objects, re-save only its 'net_recon' state dict (tensors) from a source you trust."
        ) from None
    if not isinstance(payload, Mapping) or NET_RECON_KEY not in payload:
        found = sorted(map(str, payload))[:10] if isinstance(payload, Mapping) else type(payload).__name__
        raise Deep3DCheckpointError(
            f"{path}: not a Deep3DFaceRecon checkpoint (expected a dict with key {NET_RECON_KEY!r}, found {found})"
        )
    state = payload[NET_RECON_KEY]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise Deep3DCheckpointError(f"{path}: {NET_RECON_KEY!r} is not a state dict of tensors")
    return {str(k): v for k, v in state.items()}


def infer_deep3d_backbone(state: Mapping[str, Tensor], *, source: str = "state dict") -> str:
    """``"resnet50"``, ``"resnet34"`` or ``"resnet18"`` from the keys of a Deep3D ``net_recon`` state dict."""
    if "backbone.layer1.0.conv3.weight" in state:
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"^backbone\.layer3\.(\d+)\.", k))}
        if len(blocks) != 6:
            raise Deep3DCheckpointError(f"{source}: bottleneck ResNet with {len(blocks)} layer3 blocks; only ResNet-50 is supported")
        return "resnet50"
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^backbone\.layer3\.(\d+)\.", k))}
    if len(blocks) == 2:
        return "resnet18"
    if len(blocks) == 6:
        return "resnet34"
    raise Deep3DCheckpointError(f"{source}: cannot recognise the ResNet trunk (layer3 has {len(blocks)} blocks)")


def map_deep3d_state_dict(state: Mapping[str, Tensor], *, source: str = "state dict") -> dict[str, Tensor]:
    """Rename a Deep3D ``net_recon`` state dict to :class:`ReconRegressor` keys, checking head shapes.

    ``backbone.*`` is kept; ``final_layers.<i>.{weight,bias}`` → ``heads.<name>.{weight,bias}``
    (:data:`DEEP3D_HEADS`). Any other key is an error (it is not Deep3D's wrapper).
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    heads_seen: set[int] = set()
    for key, value in state.items():
        if key.startswith("backbone."):
            if key.startswith("backbone.fc."):
                continue  # use_last_fc=True leftovers are not part of the wrapper we load
            mapped[key] = value
            continue
        match = _FINAL_LAYER.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, kind = int(match.group(1)), match.group(2)
        if index >= len(DEEP3D_HEADS):
            raise Deep3DCheckpointError(f"{source}: unexpected head {key!r} (Deep3D has {len(DEEP3D_HEADS)} final layers)")
        name, size = DEEP3D_HEADS[index]
        if value.shape[0] != size or (kind == "weight" and (value.ndim != 4 or value.shape[2:] != (1, 1))):
            raise Deep3DCheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, expected ({size}, C, 1, 1) weights / ({size},) bias "
                f"for the {name} head — the official checkpoint only fits the BFM09 layout 80/64/80/3/27/3"
            )
        mapped[f"heads.{name}.{kind}"] = value
        heads_seen.add(index)
    if unknown:
        raise Deep3DCheckpointError(f"{source}: keys that are not Deep3D's ReconNetWrapper: {sorted(unknown)[:8]}")
    if heads_seen != set(range(len(DEEP3D_HEADS))) or not any(k.startswith("backbone.") for k in mapped):
        raise Deep3DCheckpointError(
            f"{source}: not a Deep3D ReconNetWrapper state dict (final_layers found: {sorted(heads_seen)}, "
            f"need 0..{len(DEEP3D_HEADS) - 1}, and backbone.* keys)"
        )
    return mapped


def load_deep3d_regressor(
    path: str | os.PathLike[str],  # the official epoch_20.pth (or any Deep3D net_recon checkpoint)
    *,
    layout: CoeffLayout | None = None,  # the face model's layout; must be BFM09's (checked)
    input_size: int = 224,  # crop size the regressor will be fed (Deep3D: 224)
) -> ReconRegressor:
    """A :class:`ReconRegressor` holding the official Deep3DFaceRecon weights (eval mode, CPU).

    Raises:
        Deep3DCheckpointError: not a Deep3D checkpoint, or ``layout`` is not BFM09's.
    """
    source = str(path)
    if layout is not None:
        check_deep3d_layout(layout, source=source)
    state = read_deep3d_state_dict(path)
    mapped = map_deep3d_state_dict(state, source=source)
    backbone = infer_deep3d_backbone(mapped, source=source)
    deep3d = CoeffLayout.deep3d()
    regressor = ReconRegressor(
        backbone=backbone, id_size=deep3d.id, exp_size=deep3d.exp, tex_size=deep3d.tex, input_size=input_size
    )
    try:
        result = regressor.load_state_dict(mapped, strict=False)
    except RuntimeError as error:  # size mismatches
        raise Deep3DCheckpointError(f"{source}: weights do not fit a {backbone} regressor: {error}") from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise Deep3DCheckpointError(
            f"{source}: weights do not fit a {backbone} regressor: missing {missing[:6]}, "
            f"unexpected {list(result.unexpected_keys)[:6]}"
        )
    return regressor.eval()
