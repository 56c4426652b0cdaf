"""Geometry errors of an edit against the synthetic world's truth (and the input).

- :func:`expression_error` — mean absolute error of the expression coefficients of the
  re-reconstructed output against the true ones;
- :func:`vertex_error_mm` / :func:`shape_vertex_error_mm` — mean over vertices of the
  Euclidean distance between two meshes of the face model, in millimetres (the face-model
  space is Deep3DFaceRecon's "decimetre" scale, so mm = model units ×
  :data:`MM_PER_MODEL_UNIT` = 100, as in the geometry system and
  ``scripts/geometry_demo_world.py``); the shape meshes are pose-free (``model.shape``);
- :func:`lip_opening_distances` / :func:`lip_opening_error` — the outer and inner mouth
  openings (distances between the iBUG points 52/58 and 63/67, 1-based as in the paper =
  0-based indices 51/57 and 62/66, :data:`emoedit.losses.geometry.LIP_PAIRS`) and the mean
  absolute change of the edit's openings against the input's (the editor must keep the
  speech: METHOD.md eq. 14);
- :func:`landmark_error` — mean Euclidean distance over the 68 landmarks, optionally
  divided by the target's inter-ocular distance (outer eye corners, 1-based 37/46 =
  0-based 36/45).

Every function returns per-sample values ``(B,)``; average them as needed. Lengths are in
the inputs' unit unless the name says mm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from emoedit.losses.geometry import LIP_PAIRS, NUM_LANDMARKS
from emoedit.losses.landmark import landmark_error_px
from emoedit.shape_checks import assert_shape

#: Millimetres per face-model unit (Deep3DFaceRecon's BFM09 scale is decimetres); the same
#: factor as ``lightning_modules.geometry.MM_PER_MODEL_UNIT``.
MM_PER_MODEL_UNIT: float = 100.0
#: Outer eye corners (0-based iBUG ids; the paper's 1-based points 37 and 46).
OUTER_EYE_CORNERS: tuple[int, int] = (36, 45)


def expression_error(
    predicted: Tensor,  # (B, K_exp) float expression coefficients of the re-reconstructed output
    target: Tensor,  # (B, K_exp) float true expression coefficients
) -> Tensor:
    """``(B,)`` mean absolute coefficient error (coefficient units)."""
    dims = assert_shape(predicted, ("B", "K"), "predicted")
    assert_shape(target, ("B", "K"), "target", dims)
    return (predicted - target.to(predicted)).abs().mean(dim=1)


def vertex_error_mm(
    vertices: Tensor,  # (B, V, 3) float mesh in face-model units
    reference: Tensor,  # (B, V, 3) float reference mesh in face-model units
    *,
    unit_scale: float = MM_PER_MODEL_UNIT,  # length of one model unit in the reported unit (100: mm)
) -> Tensor:
    """``(B,)`` mean over vertices of ``‖V − V_ref‖``, in mm (model units × ``unit_scale``)."""
    dims = assert_shape(vertices, ("B", "V", 3), "vertices")
    assert_shape(reference, ("B", "V", 3), "reference", dims)
    return torch.linalg.norm(vertices - reference.to(vertices), dim=-1).mean(dim=1) * unit_scale


def shape_vertex_error_mm(
    model: Any,  # a MorphableModel (its ``shape(id_coeff, exp_coeff)``)
    id_coeff: Tensor,  # (B, K_id) float identity of the output
    exp_coeff: Tensor,  # (B, K_exp) float expression of the output
    true_id_coeff: Tensor,  # (B, K_id) float true identity
    true_exp_coeff: Tensor,  # (B, K_exp) float true expression
) -> Tensor:
    """``(B,)`` mean vertex distance (mm) between the pose-free meshes of two coefficient sets."""
    dims = assert_shape(id_coeff, ("B", "K_id"), "id_coeff")
    assert_shape(exp_coeff, ("B", "K_exp"), "exp_coeff", dims)
    assert_shape(true_id_coeff, ("B", "K_id"), "true_id_coeff", dims)
    assert_shape(true_exp_coeff, ("B", "K_exp"), "true_exp_coeff", dims)
    return vertex_error_mm(model.shape(id_coeff, exp_coeff), model.shape(true_id_coeff, true_exp_coeff))


def lip_opening_distances(
    landmarks: Tensor,  # (B, 68, D) float landmarks (D = 2 pixels or 3 model units)
) -> Tensor:
    """``(B, 2)`` outer (0-based 51/57) and inner (62/66) mouth openings ``‖p_a − p_b‖``, input units."""
    assert_shape(landmarks, (None, NUM_LANDMARKS, None), "landmarks")
    upper = landmarks[:, [a for a, _ in LIP_PAIRS]]
    lower = landmarks[:, [b for _, b in LIP_PAIRS]]
    return torch.linalg.norm(upper - lower, dim=-1)


def lip_opening_error(
    edited: Tensor,  # (B, 68, D) float landmarks of the edited frame
    original: Tensor,  # (B, 68, D) float landmarks of the input frame, same unit
) -> Tensor:
    """``(B,)`` mean over the outer and inner pair of ``|d(edited) − d(original)|``, input units."""
    dims = assert_shape(edited, ("B", NUM_LANDMARKS, "D"), "edited")
    assert_shape(original, ("B", NUM_LANDMARKS, "D"), "original", dims)
    return (lip_opening_distances(edited) - lip_opening_distances(original.to(edited))).abs().mean(dim=1)


def interocular_distance(
    landmarks: Tensor,  # (B, 68, D) float landmarks
) -> Tensor:
    """``(B,)`` distance between the outer eye corners (0-based 36 and 45), input units."""
    assert_shape(landmarks, (None, NUM_LANDMARKS, None), "landmarks")
    left, right = OUTER_EYE_CORNERS
    return torch.linalg.norm(landmarks[:, left] - landmarks[:, right], dim=-1)


def landmark_error(
    predicted: Tensor,  # (B, 68, 2) float landmarks, pixels
    target: Tensor,  # (B, 68, 2) float reference landmarks, pixels
    *,
    normalize: bool = False,  # divide by the target's inter-ocular distance (a unitless error)
) -> Tensor:
    """``(B,)`` mean Euclidean landmark distance (pixels, or a fraction of the inter-ocular distance)."""
    error = landmark_error_px(predicted, target.to(predicted))
    if normalize:
        error = error / interocular_distance(target.to(predicted)).clamp(min=1e-12)
    return error


__all__ = [
    "MM_PER_MODEL_UNIT",
    "OUTER_EYE_CORNERS",
    "expression_error",
    "interocular_distance",
    "landmark_error",
    "lip_opening_distances",
    "lip_opening_error",
    "shape_vertex_error_mm",
    "vertex_error_mm",
]
