"""Re-reconstruction by photometric re-fit: the expression measured back from a video's pixels.

A video of the synthetic world (an edit's output, the unedited input, the ground-truth
edit) is re-reconstructed with the optimisation fitter
(:class:`~emoedit.reconstruction.fitter.FaceFitter`) on the **whole frames** with the
world's camera (no crop):

- photometric stage only, no landmarks (an output has no known landmarks and no detector
  weights ship; the landmarks the fitter's interface takes are carried along with weight 0);
- started from the **input's true** coefficients (per frame), with the input's true
  identity and albedo held fixed; expression, pose and lighting are fitted;
- the same settings and the same start for every video of an item, so no video gets a
  different prior. Because the fit starts at the input, an under-fitted video looks closer
  to the input: the measure errs against an edit, never for it.

Used by the demo's evaluation (:mod:`emoedit.demo.evaluation`) and by ``emoedit evaluate``
with ``rereconstruct: fitter`` (:mod:`emoedit.evaluation.scoring`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape


@dataclass(frozen=True)
class FitErrors:
    """Errors of one re-reconstruction against the true values of a video (means over frames)."""

    vertex_mm: float  # mean vertex distance of the pose-free shape, mm
    exp_mae: float  # mean absolute expression-coefficient error
    landmark_px: float  # mean 68-landmark distance, pixels of the video

    def to_json(self) -> dict[str, float]:
        return {"vertex_mm": self.vertex_mm, "exp_mae": self.exp_mae, "landmark_px": self.landmark_px}


class ReReconstructor:
    """Photometric re-fit of the face model to whole frames (see the module docstring).

    Holds a :class:`~emoedit.reconstruction.fitter.FaceFitter` (no parameters; every
    :meth:`fit` is independent and deterministic on a given device).
    """

    def __init__(
        self,
        *,
        face_model: Any,  # the world's MorphableModel (on the device the fits run on)
        camera: Any,  # the world's frame PerspectiveCamera (image_size = frame side; no crop)
        photo_steps: int,  # photometric fitter iterations (>= 1)
        render_size: int,  # side of the photometric render, pixels (clamped to the frame side)
    ) -> None:
        from emoedit.reconstruction.fitter import FaceFitter, FitterConfig

        if photo_steps < 1:
            raise ValueError(f"ReReconstructor: photo_steps must be >= 1, got {photo_steps}")
        self.face_model = face_model
        self.camera = camera
        self.photo_steps = int(photo_steps)
        self.render_size = int(min(render_size, camera.image_size))
        config = FitterConfig(pose_steps=0, shape_steps=0, photo_steps=self.photo_steps, landmark_weight=0.0,
                              render_size=self.render_size, render_backend="torch")
        self.fitter = FaceFitter(face_model=face_model, camera=camera, config=config)

    def describe(self) -> str:
        """One line for tables and JSON: what this re-reconstruction is."""
        return (f"photometric re-fit of the whole frames (FaceFitter photometric stage, {self.photo_steps} steps, "
                f"render {self.render_size} px, no landmarks) from the input's true coefficients, identity and "
                "albedo fixed")

    def fit(
        self,
        frames: Tensor,  # (N, 3, S, S) float [0, 1] whole frames, S = camera.image_size
        start_coeffs: Tensor,  # (N, L) float the input's true coefficients (start; identity and albedo kept)
        landmarks: Tensor,  # (N, 68, 2) float frame pixels (the fitter's interface; weight 0, only reported)
    ) -> Tensor:
        """``(N, L)`` float32 fitted coefficients of ``frames``, on the face model's device."""
        size = self.camera.image_size
        dims = assert_shape(frames, ("N", 3, size, size), "frames")
        assert_shape(start_coeffs, ("N", self.face_model.layout.size), "start_coeffs", dims)
        assert_shape(landmarks, ("N", 68, 2), "landmarks", dims)
        device = self.face_model.mean_shape.device
        start = start_coeffs.float().to(device)
        parts = self.face_model.layout.split(start)
        result = self.fitter.fit(frames.float().to(device), landmarks.float().to(device), init=start,
                                 fixed_id=parts.id_coeff[0], fixed_tex=parts.tex_coeff[0])
        return result.coeffs

    def landmarks(
        self,
        coeffs: Tensor,  # (N, L) float coefficients
    ) -> Tensor:
        """``(N, 68, 2)`` float projected landmarks, frame pixels (the world's camera), on the model's device."""
        with torch.no_grad():
            return self.face_model(coeffs.float().to(self.face_model.mean_shape.device), self.camera).landmarks

    def errors(
        self,
        fitted: Tensor,  # (N, L) float fitted coefficients
        true_coeffs: Tensor,  # (N, L) float the video's true coefficients
        true_landmarks: Tensor,  # (N, 68, 2) float the video's true landmarks, frame pixels
    ) -> FitErrors:
        """Errors of ``fitted`` against the true values (means over frames)."""
        from emoedit.metrics.geometry import expression_error, landmark_error, shape_vertex_error_mm

        dims = assert_shape(fitted, ("N", "L"), "fitted")
        assert_shape(true_coeffs, ("N", "L"), "true_coeffs", dims)
        assert_shape(true_landmarks, ("N", 68, 2), "true_landmarks", dims)
        layout = self.face_model.layout
        mine, true = layout.split(fitted), layout.split(true_coeffs)
        with torch.no_grad():
            vertex = shape_vertex_error_mm(self.face_model, mine.id_coeff, mine.exp_coeff, true.id_coeff,
                                           true.exp_coeff)
        landmarks = self.landmarks(fitted).to(true_landmarks.device)
        return FitErrors(vertex_mm=float(vertex.mean()),
                         exp_mae=float(expression_error(mine.exp_coeff, true.exp_coeff).mean()),
                         landmark_px=float(landmark_error(landmarks, true_landmarks).mean()))


__all__ = ["FitErrors", "ReReconstructor"]
