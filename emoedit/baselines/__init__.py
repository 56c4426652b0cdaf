"""Image-level baselines of METHOD.md §6 (StarGAN, ExprGAN, pSp on whole faces) behind one interface.

:class:`CropEditor` (``edit(crops, emotion_codes)``: aligned face crops ``(B, 3, S, S)`` in
[0, 1] and emotion strengths ``(B, E_t)`` → edited crops in [0, 1]) is what the evaluation
harness calls; :class:`StarGANEditor`, :class:`ExprGANEditor` and :class:`PSPFaceEditor`
load trained baselines from their ``train.py`` checkpoints.
"""

from __future__ import annotations

from typing import Any

from emoedit.baselines.crop_editor import CropEditor, ExprGANEditor, StarGANEditor, load_generator, save_generator

# Imported on first use, so that ``python -m emoedit.baselines.psp_face`` does not import its own
# module twice (once through this package).
_PSP_FACE_NAMES = ("GLOBAL_SUBJECT", "PSPFaceEditor", "run_psp_face_directions")


def __getattr__(name: str) -> Any:
    if name in _PSP_FACE_NAMES:
        from emoedit.baselines import psp_face

        return getattr(psp_face, name)
    raise AttributeError(f"module 'emoedit.baselines' has no attribute {name!r}")


__all__ = [
    "CropEditor",
    "ExprGANEditor",
    "GLOBAL_SUBJECT",
    "PSPFaceEditor",
    "StarGANEditor",
    "load_generator",
    "run_psp_face_directions",
    "save_generator",
]
