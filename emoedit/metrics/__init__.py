"""Evaluation metrics (METHOD.md §6 and the synthetic world's exact metrics).

The paper's four, for real data with user-supplied networks (nothing is downloaded):

- :mod:`~emoedit.metrics.frechet` — FID (TensorFlow-FID Inception v3 from a weights file)
  and FED (an emotion classifier's penultimate features), on torchmetrics;
- :mod:`~emoedit.metrics.cpbd` — CPBD sharpness (own implementation of Narvekar & Karam 2011);
- :mod:`~emoedit.metrics.identity` — ArcSim (cosine of face-recognition embeddings).

Exact metrics where the synthetic world has the truth:

- :mod:`~emoedit.metrics.image_quality` — masked PSNR / SSIM / LPIPS against the true edit;
- :mod:`~emoedit.metrics.geometry` — expression, vertex (mm), lip-opening and landmark errors;
- :mod:`~emoedit.metrics.temporal` — landmark / texture jitter against the truth's;
- :mod:`~emoedit.metrics.monotonicity` — judged emotion accuracy, target confidence and its
  monotonicity in the strength α (judges: :mod:`emoedit.networks.judges`).

Names are imported lazily from their modules, so ``emoedit.metrics.cpbd`` does not import
torchvision / torchmetrics. The functions ``cpbd`` and ``image_quality`` share their
modules' names: import them from ``emoedit.metrics.cpbd`` / ``emoedit.metrics.image_quality``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # frechet
    "EmotionFeatures": "frechet", "FIDInceptionV3": "frechet", "feature_statistics": "frechet",
    "fed_metric": "frechet", "fid_metric": "frechet", "frechet_distance": "frechet",
    "frechet_distance_from_features": "frechet", "frechet_metric": "frechet",
    # cpbd (the function cpbd shares its module's name: import it from emoedit.metrics.cpbd)
    "cpbd_grey": "cpbd",
    # identity
    "ArcFaceEmbedder": "identity", "ArcSim": "identity", "cosine_similarity_pairs": "identity",
    # image quality
    "ImageQualityScores": "image_quality", "PSNR_CAP_DB": "image_quality",
    "masked_lpips": "image_quality", "masked_psnr": "image_quality", "masked_ssim": "image_quality",
    # geometry
    "MM_PER_MODEL_UNIT": "geometry", "expression_error": "geometry", "landmark_error": "geometry",
    "lip_opening_distances": "geometry", "lip_opening_error": "geometry", "shape_vertex_error_mm": "geometry",
    "vertex_error_mm": "geometry",
    # temporal
    "JitterComparison": "temporal", "compare_jitter": "temporal", "image_jitter": "temporal",
    "image_jitter_against_truth": "temporal", "landmark_jitter": "temporal",
    "landmark_jitter_against_truth": "temporal",
    # monotonicity
    "MonotonicityScores": "monotonicity", "emotion_accuracy": "monotonicity",
    "intensity_monotonicity": "monotonicity", "spearman_correlation": "monotonicity",
    "target_confidence": "monotonicity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'emoedit.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"emoedit.metrics.{module}"), name)
