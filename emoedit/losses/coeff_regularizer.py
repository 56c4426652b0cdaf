"""Coefficient losses: priors toward the mean face (Deep3DFaceRecon's regularisers) and,
where synthetic ground truth exists, supervision toward the true coefficients / vertices.

- :func:`coefficient_prior` — Deep3D's ``reg_loss`` first term:
  ``(w_id·Σα² + w_exp·Σβ² + w_tex·Σδ²) / B`` (defaults 1, 0.8, 0.017 = Deep3D's).
- :func:`gamma_regularizer` — Deep3D's ``gamma_loss``: variance of the SH coefficients across
  the three colour channels (a nearly monochromatic light).
- :func:`reflectance_loss` — Deep3D's ``reflectance_loss``: variance of the albedo over the
  skin region (uniform skin albedo).
- :func:`supervised_coeff_loss`, :func:`vertex_loss` — distance to the truth.
"""

from __future__ import annotations

from torch import Tensor

from emoedit.face_model.layout import BLOCK_FIELDS, CoeffLayout, Coeffs
from emoedit.shape_checks import assert_shape


def coefficient_prior(
    parts: Coeffs,  # predicted coefficients, named blocks (B, n)
    *,
    id_weight: float = 1.0,  # w_id (Deep3D: 1.0)
    exp_weight: float = 0.8,  # w_exp (Deep3D: 0.8)
    tex_weight: float = 1.7e-2,  # w_tex (Deep3D: 1.7e-2)
) -> Tensor:
    """Scalar weighted squared norm of the id / exp / tex coefficients, divided by B."""
    batch = parts.batch_size
    total = id_weight * parts.id_coeff.pow(2).sum() + exp_weight * parts.exp_coeff.pow(2).sum()
    if parts.tex_coeff.shape[1]:
        total = total + tex_weight * parts.tex_coeff.pow(2).sum()
    return total / batch


def gamma_regularizer(gamma: Tensor) -> Tensor:
    """Scalar mean squared deviation of each SH band from its mean over the 3 colour channels.

    Args:
        gamma: ``(B, 27)`` float SH lighting, Deep3D layout (3 channels × 9 bands).
    """
    assert_shape(gamma, (None, 27), "gamma")
    lit = gamma.view(-1, 3, 9)
    return (lit - lit.mean(dim=1, keepdim=True)).pow(2).mean()


def reflectance_loss(albedo: Tensor, mask: Tensor) -> Tensor:
    """Scalar variance of the albedo over the masked (skin) vertices (Deep3D).

    Args:
        albedo: ``(B, V, 3)`` float per-vertex RGB albedo.
        mask: ``(V,)`` bool or float in {0, 1}, the skin region.
    """
    dims = assert_shape(albedo, ("B", "V", 3), "albedo")
    assert_shape(mask, ("V",), "mask", dims)
    weight = mask.to(albedo.dtype).view(1, -1, 1)
    count = weight.sum().clamp(min=1.0)
    mean = (albedo * weight).sum(dim=1, keepdim=True) / count
    return ((albedo - mean) * weight).pow(2).sum() / (dims["B"] * count)


def supervised_coeff_loss(
    predicted: Tensor,  # (B, L) float predicted coefficients
    target: Tensor,  # (B, L) float true coefficients
    layout: CoeffLayout,  # block sizes of both
    *,
    block_weights: dict[str, float] | None = None,  # block name ("id", "exp", ...) -> weight; default 1 each
) -> Tensor:
    """Scalar ``Σ_blocks w_b · mean((p_b − t_b)²)`` over the non-empty blocks."""
    dims = assert_shape(predicted, ("B", layout.size), "predicted")
    assert_shape(target, ("B", layout.size), "target", dims)
    weights = {name: 1.0 for name, _ in BLOCK_FIELDS}
    if block_weights:
        unknown = sorted(set(block_weights) - set(weights))
        if unknown:
            raise ValueError(f"supervised_coeff_loss: unknown blocks {unknown}; blocks are {list(weights)}")
        weights.update(block_weights)
    total = predicted.new_zeros(())
    for name, block in layout.slices.items():
        if block.stop > block.start and weights[name]:
            total = total + weights[name] * (predicted[:, block] - target[:, block]).pow(2).mean()
    return total


def vertex_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Scalar mean Euclidean vertex distance, in the vertices' unit (decimetres for the face model).

    Args:
        predicted: ``(B, V, 3)`` float.
        target: ``(B, V, 3)`` float.
    """
    dims = assert_shape(predicted, ("B", "V", 3), "predicted")
    assert_shape(target, ("B", "V", 3), "target", dims)
    return (predicted - target).pow(2).sum(-1).add(1e-12).sqrt().mean()
