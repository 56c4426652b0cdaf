"""3D face reconstruction (METHOD.md §3.1): regression, official-checkpoint loading, fitting.

- :class:`Reconstructor` — the interface the preprocessing uses (crops + landmarks → coefficients);
  :class:`RegressorReconstructor` (network, optionally refined) and
  :class:`FittingReconstructor` (optimisation only).
- :func:`load_deep3d_regressor` — Deep3DFaceRecon_pytorch's official ``epoch_20.pth``.
- :class:`FaceFitter` — analysis-by-synthesis fitting through the differentiable renderer.
"""

from __future__ import annotations

from emoedit.reconstruction.deep3d_checkpoint import (
    DEEP3D_HEADS,
    Deep3DCheckpointError,
    check_deep3d_layout,
    load_deep3d_regressor,
    map_deep3d_state_dict,
    read_deep3d_state_dict,
)
from emoedit.reconstruction.fitter import FaceFitter, FitResult, FitterConfig
from emoedit.reconstruction.reconstructor import (
    FittingReconstructor,
    Reconstructor,
    RegressorReconstructor,
    load_recon_regressor,
)

__all__ = [
    "DEEP3D_HEADS",
    "Deep3DCheckpointError",
    "FaceFitter",
    "FitResult",
    "FitterConfig",
    "FittingReconstructor",
    "Reconstructor",
    "RegressorReconstructor",
    "check_deep3d_layout",
    "load_deep3d_regressor",
    "load_recon_regressor",
    "map_deep3d_state_dict",
    "read_deep3d_state_dict",
]
