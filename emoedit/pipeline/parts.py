"""The frozen parts one edit needs, loaded and checked (METHOD.md §2), as one named object.

:class:`EditParts` is the contract between the bundle loader (:mod:`emoedit.pipeline.bundle`,
which builds it from checkpoint files) and the video editor (:mod:`emoedit.pipeline.editor`,
which only consumes it). Tests build it directly from small freshly initialised networks.

:class:`PipelineSettings` holds the numbers that must match between training-time
preprocessing and inference (crop sides, texture side, mouth crop settings): the editor
must extract textures and mouths exactly as ``emoedit preprocess`` did for the caches the
parts were trained on, or the encoder, classifier and teeth networks see inputs from a
different distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emoedit.editing.teeth_completion import TeethCompleter
from emoedit.editing.texture_editor import TextureEditor
from emoedit.face_model.morphable_model import MorphableModel
from emoedit.networks.geometry_editor import GeometryGenerator
from emoedit.networks.psp_encoder import PSPEncoder
from emoedit.networks.stylegan2.generator import StyleGAN2Generator
from emoedit.networks.subject_classifier import SubjectClassifier
from emoedit.reconstruction.reconstructor import Reconstructor


@dataclass(frozen=True)
class PipelineSettings:
    """Preprocessing numbers the parts were trained with (the texture cache's ``PreprocessConfig``)."""

    crop_size: int  # aligned face crop side fed to the reconstructor, pixels (PreprocessConfig.crop_size)
    texture_size: int  # UV texture side T the encoder / classifier were trained on, texels
    texture_crop_size: int  # side of the crop textures are sampled from, pixels (resolved_texture_crop_size)
    texture_sampling: str = "image_coords"  # PreprocessConfig.texture_sampling
    texture_region_min_cos: float | None = None  # PreprocessConfig.texture_region_min_cos (None: every texel)
    texture_region_margin: int = 0  # PreprocessConfig.texture_region_margin, texels
    mouth_crop_size: int = 128  # mouth crop side M, pixels (the mouths cache's; DEFAULT_MOUTH_CROP_SIZE)
    mouth_width: float = 0.5  # mouth-corner distance / M (the mouths cache's)
    teeth_dilate_px: float = 1.0  # growth of the teeth region beyond the inner lips, mouth-crop pixels
    teeth_fill: float = 0.0  # value of the removed teeth region, [0, 1]
    smoothing_half_window: int = 2  # default l of the Hann window (2l+1 frames, eqs. 17-19); 0 = off

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dict(self.__dict__)


@dataclass
class EditParts:
    """Everything :class:`~emoedit.pipeline.editor.VideoEditor` runs, all frozen and in eval mode.

    ``texture_editor.subjects`` is in the classifier's subject order (so the classifier's
    softmax weights index its rows, eq. 4). ``teeth`` may be None (``--no-teeth`` only).
    """

    face_model: MorphableModel  # the face model of every coefficient below
    reconstructor: Reconstructor  # aligned crops + landmarks → coefficients (T, L)
    generator: StyleGAN2Generator  # t-GAN EMA generator: W+ → UV texture in [-1, 1]
    encoder: PSPEncoder  # texture encoder: UV texture in [-1, 1] → W+ of ``generator``
    classifier: SubjectClassifier  # UV texture → softmax over the training subjects (eq. 4)
    texture_editor: TextureEditor  # directions d[subject, emotion] (eq. 5), rows = classifier.subjects
    geometry: GeometryGenerator  # G(s, ê, s_ref) on identity + expression coefficients (§3.6)
    teeth: TeethCompleter | None  # teeth t-GAN + encoder (§3.7); None = not available
    settings: PipelineSettings  # preprocessing numbers (see PipelineSettings)
    provenance: dict[str, Any] = field(default_factory=dict)  # part name → {path, sha256, ...} (bundle manifest)


__all__ = ["EditParts", "PipelineSettings"]
