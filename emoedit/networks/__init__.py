"""Pure ``nn.Module`` networks of the method (no Lightning, no file I/O in constructors)."""

from __future__ import annotations

from emoedit.networks.recon_regressor import BACKBONES, ReconRegressor, RegressorOutput, TinyResNet, build_backbone

__all__ = ["BACKBONES", "ReconRegressor", "RegressorOutput", "TinyResNet", "build_backbone"]
