"""Losses of the method's trainable parts (reconstruction: photometric, landmark, coefficient, identity)."""

from __future__ import annotations

from emoedit.losses.coeff_regularizer import (
    coefficient_prior,
    gamma_regularizer,
    reflectance_loss,
    supervised_coeff_loss,
    vertex_loss,
)
from emoedit.losses.identity import IdentityLoss
from emoedit.losses.landmark import deep3d_landmark_weights, landmark_error_px, landmark_loss
from emoedit.losses.photometric import photometric_loss, region_faces, region_pixel_mask

__all__ = [
    "IdentityLoss",
    "coefficient_prior",
    "deep3d_landmark_weights",
    "gamma_regularizer",
    "landmark_error_px",
    "landmark_loss",
    "photometric_loss",
    "reflectance_loss",
    "region_faces",
    "region_pixel_mask",
    "supervised_coeff_loss",
    "vertex_loss",
]
