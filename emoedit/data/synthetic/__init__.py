"""The built-in synthetic world: MEAD- and FFHQ-like data with exactly known truth.

Real MEAD and FFHQ cannot ship with the project, so it carries a world in which every part
of the method (METHOD.md) can be trained and, because the truth is known, measured:

- ``mead/``: talking-head clips in MEAD's layout (views, emotions, levels; H.264 + AAC
  speech-like audio that drives the mouth), rendered from the procedural face model whose
  expression basis is FACS action units; emotions are EMFACS AU recipes with
  subject-specific amplitude and subject-specific wrinkles / flush in UV space; teeth and
  mouth interior exist in the renders but not in the face model;
- ``ffhq/``: FFHQ-like stills of many random people, with a few deliberately bad ones;
- ``truth/``: per-frame coefficients, landmarks, emotion, texture effects, each subject's
  true UV albedo, the split, and for every neutral evaluation clip the ground-truth edit
  into every emotion at every level.

Entry points: :func:`generate_world` (``emoedit synth``), :class:`SyntheticWorld` (reader),
:class:`WorldRenderer` (render any clip or edit on demand), :data:`PRESETS`.
"""

from __future__ import annotations

from emoedit.data.synthetic.clip_renderer import RenderedClip, WorldRenderer, build_face_model
from emoedit.data.synthetic.emotions import EMFACS_RECIPES, combine_activations, emotion_activation
from emoedit.data.synthetic.layout import ClipKey, EditKey, confined
from emoedit.data.synthetic.plan import WorldPlan, plan_world
from emoedit.data.synthetic.presets import PRESETS, VIEW_YAW_DEGREES, WorldPreset, get_preset
from emoedit.data.synthetic.reader import (
    ClipRecord,
    EditRecord,
    FFHQTruth,
    SubjectTruth,
    SyntheticWorld,
    WorldSplit,
)
from emoedit.data.synthetic.scene import SceneFrames, SceneRenderer, polygon_mask, world_camera
from emoedit.data.synthetic.texture_effects import EFFECT_NAMES, apply_effects
from emoedit.data.synthetic.truth_format import ClipTruth, load_clip_truth
from emoedit.data.synthetic.world import WorldSummary, generate_world

__all__ = [
    "EFFECT_NAMES",
    "EMFACS_RECIPES",
    "PRESETS",
    "VIEW_YAW_DEGREES",
    "ClipKey",
    "ClipRecord",
    "ClipTruth",
    "EditKey",
    "EditRecord",
    "FFHQTruth",
    "RenderedClip",
    "SceneFrames",
    "SceneRenderer",
    "SubjectTruth",
    "SyntheticWorld",
    "WorldPlan",
    "WorldPreset",
    "WorldRenderer",
    "WorldSplit",
    "WorldSummary",
    "apply_effects",
    "build_face_model",
    "combine_activations",
    "confined",
    "emotion_activation",
    "generate_world",
    "get_preset",
    "load_clip_truth",
    "plan_world",
    "polygon_mask",
    "world_camera",
]
