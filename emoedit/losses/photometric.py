"""Photometric (image) loss of analysis-by-synthesis face reconstruction (METHOD.md §3.1).

Deep3DFaceRecon's ``photo_loss``: at every masked pixel the L2 norm of the RGB difference
``sqrt(eps + Σ_c (rendered − target)²)`` (robust: an L2,1 norm over pixels, less dominated
by outliers such as hair or occluders than a squared error), averaged over the mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape


def photometric_loss(
    rendered: Tensor,  # (B, 3, H, W) float in [0, 1], the rendered face
    target: Tensor,  # (B, 3, H, W) float in [0, 1], the input image
    mask: Tensor,  # (B, 1, H, W) float in [0, 1] (or bool): pixels that count
    *,
    robust: bool = True,  # True: per-pixel L2 norm (Deep3D); False: per-pixel squared L2
    eps: float = 1e-6,  # inside the square root, keeps the gradient finite at 0
    reduction: str = "mean",  # "mean": one scalar over the batch; "none": (B,) per image
) -> Tensor:
    """Mask-averaged per-pixel colour distance.

    ``mean`` reduction divides the masked sum over the whole batch by the total mask
    weight (Deep3D); ``none`` gives each image its own mask average, ``(B,)``. An empty
    mask gives 0 (the divisor is clamped to ≥ 1).

    Returns:
        Scalar (``mean``) or ``(B,)`` float, in colour units ([0, √3] robust, [0, 3] squared).
    """
    dims = assert_shape(rendered, ("B", 3, "H", "W"), "rendered")
    assert_shape(target, ("B", 3, "H", "W"), "target", dims)
    assert_shape(mask, ("B", 1, "H", "W"), "mask", dims)
    if reduction not in ("mean", "none"):
        raise ValueError(f"photometric_loss: reduction must be 'mean' or 'none', got {reduction!r}")
    mask = mask.to(rendered.dtype)
    squared = ((rendered - target) ** 2).sum(dim=1, keepdim=True)
    per_pixel = torch.sqrt(squared + eps) if robust else squared
    weighted = per_pixel * mask
    if reduction == "none":
        return weighted.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)
    return weighted.sum() / mask.sum().clamp(min=1.0)


def region_faces(face_model: object) -> Tensor | None:
    """``(F,)`` bool: triangles whose three vertices lie in the model's photometric region.

    The region is ``front_mask`` (Deep3D's front face), else ``skin_mask``; ``None`` when the
    model has neither (every rendered pixel counts then).
    """
    region = getattr(face_model, "front_mask", None)
    if region is None:
        region = getattr(face_model, "skin_mask", None)
    if region is None:
        return None
    return region[face_model.triangles].all(dim=1)  # type: ignore[attr-defined]


def region_pixel_mask(pix_to_face: Tensor, faces_in_region: Tensor | None) -> Tensor:
    """``(B, 1, H, W)`` float in {0, 1}: pixels covered by a triangle of the region.

    Args:
        pix_to_face: ``(B, H, W)`` int64 visible triangle per pixel, −1 on background
            (:attr:`emoedit.render.Fragments.pix_to_face`).
        faces_in_region: ``(F,)`` bool from :func:`region_faces`; ``None``: every covered pixel.
    """
    assert_shape(pix_to_face, (None, None, None), "pix_to_face")
    covered = pix_to_face >= 0
    if faces_in_region is not None:
        covered = covered & faces_in_region[pix_to_face.clamp(min=0)]
    return covered.unsqueeze(1).float()
