"""Losses of the geometry editor (METHOD.md §3.6, eqs. 6–16), on vertices and 68 landmarks.

The adversarial terms (eqs. 7, 8, 10) are :mod:`emoedit.losses.adversarial`'s WGAN-GP
functions. This module holds the rest:

- :func:`emotion_regression_loss` — eqs. 6 and 11: ``mean_b ‖D_e − e‖²``;
- :func:`vertex_loss` — eqs. 12 (cycle) and 15 (regulariser): ``mean_b mean_v ‖V − V'‖²``
  between two meshes of the face model; :class:`ShapeGeometry` computes the same value
  without building the meshes (see below);
- :func:`region_landmark_loss` with :func:`region_landmark_weights` — eq. 13:
  ``mean_b Σ_q Σ_{k∈K_q} λ_q/|K_q| · ‖p_k − p̂_k‖²`` over the regions of
  :data:`LANDMARK_REGIONS`;
- :func:`lip_opening_loss` — eq. 14: ``mean_b Σ_pairs |‖p_a − p_b‖² − ‖p̂_a − p̂_b‖²|`` over the
  mouth-opening pairs :data:`LIP_PAIRS`.

Every function works in whatever length unit its inputs have; the geometry system feeds
millimetres (face-model decimetres × 100), so the weights are per mm².

:class:`ShapeGeometry` holds what the editor needs of a linear face model as buffers: the
68 landmark rows of eq. 1 and the *vertex Gram matrix* ``M = BᵀB / V`` of the stacked
basis ``B = [B_id, B_exp]`` (``3V × S``). Because ``V(s) = S̄ + B s`` is linear,
``mean_v ‖V(s₁) − V(s₂)‖² = δᵀ M δ`` with ``δ = s₁ − s₂`` exactly: the cycle and
regulariser losses cost ``O(S²)`` per sample instead of ``O(V·S)`` (35,709 vertices for
BFM). :func:`vertex_loss` on ``model.shape`` meshes is the reference it is tested against.

Landmark ids follow the iBUG 68-point scheme. The paper (and METHOD) number points from 1;
this code indexes from 0, so the paper's point ``n`` is index ``n − 1``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from emoedit.shape_checks import assert_shape

NUM_LANDMARKS = 68

#: Face regions of the iBUG 68 landmarks, 0-based ids (1-based points in the comments).
LANDMARK_REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),  # points 1-17, the jaw line / face contour
    "brows": tuple(range(17, 27)),  # points 18-27, both eyebrows
    "nose": tuple(range(27, 36)),  # points 28-36, bridge and nostrils
    "eyes": tuple(range(36, 48)),  # points 37-48, both eye contours
    "mouth": tuple(range(48, 68)),  # points 49-68, outer (49-60) and inner (61-68) lip contours
}
#: Region names in landmark order.
REGION_NAMES: tuple[str, ...] = tuple(LANDMARK_REGIONS)

#: Mouth-opening pairs of eq. 14 as the paper numbers them (1-based iBUG points):
#: 52/58 = outer lip, top / bottom centre; 63/67 = inner lip, top / bottom centre.
LIP_PAIRS_1BASED: tuple[tuple[int, int], ...] = ((52, 58), (63, 67))
#: The same pairs as 0-based indices into a (…, 68, D) landmark tensor: 51/57 and 62/66.
LIP_PAIRS: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in LIP_PAIRS_1BASED)


def region_landmark_weights(
    weights: Mapping[str, float],  # region name (LANDMARK_REGIONS) -> λ_q >= 0; absent regions get 0
    *,
    device: torch.device | str | None = None,  # where the tensor lives
) -> Tensor:
    """``(68,)`` float32 per-landmark weights ``λ_q / |K_q|`` of eq. 13 (so each region's
    weight is shared by its points, and a region's total weight is ``λ_q``)."""
    unknown = sorted(set(weights) - set(LANDMARK_REGIONS))
    if unknown:
        raise ValueError(f"unknown landmark regions {unknown}; regions: {', '.join(REGION_NAMES)}")
    out = torch.zeros(NUM_LANDMARKS, device=device)
    for name, value in weights.items():
        value = float(value)
        if not value >= 0.0:
            raise ValueError(f"landmark region weight {name!r} must be >= 0, got {value}")
        ids = LANDMARK_REGIONS[name]
        out[list(ids)] = value / len(ids)
    return out


def region_landmark_loss(
    predicted: Tensor,  # (B, 68, D) float landmarks p (D = 2 or 3), any length unit
    target: Tensor,  # (B, 68, D) float reference landmarks p̂, same unit
    weights: Tensor,  # (68,) float per-landmark weights λ_q / |K_q| (region_landmark_weights)
) -> Tensor:
    """Scalar ``mean_b Σ_k w_k ‖p_k − p̂_k‖²`` (eq. 13), in squared length units."""
    dims = assert_shape(predicted, ("B", NUM_LANDMARKS, "D"), "predicted")
    assert_shape(target, ("B", NUM_LANDMARKS, "D"), "target", dims)
    assert_shape(weights, (NUM_LANDMARKS,), "weights")
    squared = (predicted - target).square().sum(dim=-1)  # (B, 68)
    return (squared * weights.to(squared)).sum(dim=1).mean()


def lip_openings(landmarks: Tensor) -> Tensor:
    """``(B, 68, D)`` landmarks → ``(B, 2)`` squared distances ``‖p_a − p_b‖²`` of :data:`LIP_PAIRS`
    (outer pair first, then inner), squared length units."""
    assert_shape(landmarks, (None, NUM_LANDMARKS, None), "landmarks")
    upper = landmarks[:, [a for a, _ in LIP_PAIRS]]
    lower = landmarks[:, [b for _, b in LIP_PAIRS]]
    return (upper - lower).square().sum(dim=-1)


def lip_opening_loss(
    edited: Tensor,  # (B, 68, D) float landmarks of the edit, p
    original: Tensor,  # (B, 68, D) float landmarks of the input, p̂
) -> Tensor:
    """Scalar eq. 14: ``mean_b Σ_pairs |‖p_a − p_b‖² − ‖p̂_a − p̂_b‖²|`` (squared length units).

    Zero when the edit keeps both mouth openings (outer 52/58, inner 63/67 in the paper's
    1-based numbering = 0-based 51/57, 62/66), whatever else moves.
    """
    dims = assert_shape(edited, ("B", NUM_LANDMARKS, "D"), "edited")
    assert_shape(original, ("B", NUM_LANDMARKS, "D"), "original", dims)
    return (lip_openings(edited) - lip_openings(original)).abs().sum(dim=1).mean()


def vertex_loss(
    vertices: Tensor,  # (B, V, 3) float mesh V(s'), any length unit
    reference: Tensor,  # (B, V, 3) float mesh V(s), same unit
) -> Tensor:
    """Scalar ``mean_b mean_v ‖V_v − V'_v‖²`` (eqs. 12 and 15: cycle and regulariser), squared units."""
    dims = assert_shape(vertices, ("B", "V", 3), "vertices")
    assert_shape(reference, ("B", "V", 3), "reference", dims)
    return (vertices - reference).square().sum(dim=-1).mean()


def emotion_regression_loss(
    predicted: Tensor,  # (B, E_t) float emotion regression D_e
    target: Tensor,  # (B, E_t) float eq. 2 codes
) -> Tensor:
    """Scalar ``mean_b ‖D_e − e‖²`` (eqs. 6 and 11; summed over the code, averaged over the batch)."""
    dims = assert_shape(predicted, ("B", "E"), "predicted")
    assert_shape(target, ("B", "E"), "target", dims)
    return (predicted - target.to(predicted)).square().sum(dim=1).mean()


class ShapeGeometry(nn.Module):
    """The face model's geometry of a shape vector ``s = concat(id_coeff, exp_coeff)`` (S entries).

    Buffers (float32, lengths in ``unit_scale`` × model units; non-persistent: rebuilt from
    the face model, never stored in checkpoints): ``gram`` (S, S) = ``BᵀB / V``,
    ``landmark_mean`` (68, 3), ``landmark_basis`` (68, 3, S). Build with
    :meth:`from_face_model`.
    """

    gram: Tensor
    landmark_mean: Tensor
    landmark_basis: Tensor

    def __init__(
        self,
        *,
        gram: Tensor,  # (S, S) mean over vertices of BᵀB, squared length units per unit coefficient²
        landmark_mean: Tensor,  # (68, 3) landmark vertices of the mean shape, length units
        landmark_basis: Tensor,  # (68, 3, S) landmark rows of [B_id, B_exp], length units per unit coefficient
    ) -> None:
        super().__init__()
        dims = assert_shape(gram, ("S", "S"), "gram")
        assert_shape(landmark_mean, (NUM_LANDMARKS, 3), "landmark_mean")
        assert_shape(landmark_basis, (NUM_LANDMARKS, 3, "S"), "landmark_basis", dims)
        self.register_buffer("gram", gram.detach().float().contiguous(), persistent=False)
        self.register_buffer("landmark_mean", landmark_mean.detach().float().contiguous(), persistent=False)
        self.register_buffer("landmark_basis", landmark_basis.detach().float().contiguous(), persistent=False)

    @classmethod
    def from_face_model(
        cls,
        model: Any,  # a MorphableModel (id_basis, exp_basis, mean_shape, landmark_ids)
        *,
        unit_scale: float = 1.0,  # multiplies every length (100: model decimetres -> mm)
    ) -> ShapeGeometry:
        """Gram matrix (accumulated in float64) and landmark rows of ``model``."""
        basis = torch.cat([model.id_basis, model.exp_basis], dim=2).double() * unit_scale  # (V, 3, S)
        flat = basis.reshape(-1, basis.shape[2])
        gram = flat.T @ flat / basis.shape[0]
        ids = model.landmark_ids
        return cls(gram=gram, landmark_mean=model.mean_shape[ids].double() * unit_scale,
                   landmark_basis=basis[ids])

    @property
    def shape_size(self) -> int:
        """S."""
        return int(self.gram.shape[0])

    def landmarks(self, shape_coeffs: Tensor) -> Tensor:
        """``(B, S)`` → ``(B, 68, 3)`` landmark vertices of ``V(s)`` (eq. 1 on the 68 rows)."""
        assert_shape(shape_coeffs, (None, self.shape_size), "shape_coeffs")
        offset = torch.einsum("lck,bk->blc", self.landmark_basis.to(shape_coeffs.dtype), shape_coeffs)
        return self.landmark_mean.to(shape_coeffs.dtype).unsqueeze(0) + offset

    def squared_distance(self, shape_a: Tensor, shape_b: Tensor) -> Tensor:
        """``(B,)`` exact ``mean_v ‖V(a)_v − V(b)_v‖²`` for shape vectors ``(B, S)``."""
        dims = assert_shape(shape_a, ("B", self.shape_size), "shape_a")
        assert_shape(shape_b, ("B", self.shape_size), "shape_b", dims)
        delta = shape_a - shape_b
        return ((delta @ self.gram.to(delta.dtype)) * delta).sum(dim=1).clamp(min=0)

    def vertex_loss(self, shape_a: Tensor, shape_b: Tensor) -> Tensor:
        """Scalar ``mean_b mean_v ‖V(a) − V(b)‖²`` (eqs. 12, 15) = :func:`vertex_loss` on the meshes."""
        return self.squared_distance(shape_a, shape_b).mean()
