"""The 3D morphable face model: layout, camera, lighting, model and loaders (METHOD.md §3.1)."""

from __future__ import annotations

from emoedit.face_model.bfm09_conversion import convert_bfm09
from emoedit.face_model.camera import PerspectiveCamera
from emoedit.face_model.layout import CoeffLayout, Coeffs
from emoedit.face_model.lighting import sh_irradiance
from emoedit.face_model.morphable_model import FaceModelOutput, MorphableModel
from emoedit.face_model.rotation import euler_to_rotation

__all__ = [
    "CoeffLayout",
    "Coeffs",
    "FaceModelOutput",
    "MorphableModel",
    "PerspectiveCamera",
    "convert_bfm09",
    "euler_to_rotation",
    "sh_irradiance",
]
