"""Rendering clips of a synthetic world: MEAD clips and ground-truth edits, with their truth.

:class:`WorldRenderer` holds everything a ``(preset, seed)`` world needs to render any
clip on demand — the procedural face model, the camera, the UV layout, the subjects and
their mouth interiors — and renders

- a MEAD clip: the recording ``(subject, emotion, level, clip)`` seen from ``view``, with
  that emotion's action units at that level;
- a ground-truth edit: the *same* recording as a neutral clip (speech, head motion,
  blinks, light, framing, background) with another emotion's action units (and their
  texture effects) added at any level — continuous levels included
  (:meth:`WorldRenderer.render_edit`). Level 0 gives back the neutral clip exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from emoedit.data.synthetic.emotions import check_expression_names, combine_activations, emotion_activation
from emoedit.data.synthetic.layout import ClipKey, EditKey
from emoedit.data.synthetic.mouth_interior import MouthInterior, build_mouth_interior
from emoedit.data.synthetic.performance import perform
from emoedit.data.synthetic.plan import WorldPlan, plan_world
from emoedit.data.synthetic.presets import NEUTRAL, VIEW_YAW_DEGREES, WorldPreset
from emoedit.data.synthetic.scene import (
    SceneRenderer,
    camera_tensor,
    draw_background,
    draw_framing,
    draw_lighting,
    to_uint8_frames,
    world_camera,
)
from emoedit.data.synthetic.seeding import derive_rng
from emoedit.data.synthetic.subjects import Subject, SubjectFactory
from emoedit.data.synthetic.texture_effects import EFFECT_NAMES, apply_effects, effect_activations, effect_weight_matrix
from emoedit.data.synthetic.truth_format import ClipTruth
from emoedit.editing.emotion_code import EMOTIONS, MAX_LEVEL, emotion_code
from emoedit.face_model import Coeffs, MorphableModel
from emoedit.texture import UVLayout


@dataclass(frozen=True)
class RenderedClip:
    """A rendered clip: frames, audio and truth."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    audio: np.ndarray  # (1, num_samples) float32 mono in [-1, 1]
    truth: ClipTruth  # per-frame truth
    interior_mask: Tensor  # (N, H, W) bool, mouth interior visible
    face_mask: Tensor  # (N, H, W) bool, face surface visible


def build_face_model(preset: WorldPreset) -> MorphableModel:
    """The world's face model: the procedural model at ``preset.mesh_resolution`` (basis seed 0)."""
    model = MorphableModel.procedural(resolution=preset.mesh_resolution)
    check_expression_names(model.expression_names)
    return model


class WorldRenderer:
    """Renders any clip of the world ``(preset, seed)`` (see the module docstring)."""

    def __init__(
        self,
        preset: WorldPreset,  # the world's sizes
        seed: int,  # the world's seed
        *,
        model: MorphableModel | None = None,  # its face model (default: build_face_model(preset))
    ) -> None:
        self.preset = preset
        self.seed = int(seed)
        self.model = model if model is not None else build_face_model(preset)
        self.expression_names = check_expression_names(self.model.expression_names)
        self.camera = world_camera(preset.image_size)
        self.uv_layout = UVLayout.from_model(self.model, preset.texture_size)
        family_spread = preset.family_spread if preset.subject_model == "families" else None
        self.factory = SubjectFactory(model=self.model, layout=self.uv_layout, seed=self.seed, family_spread=family_spread)
        self.plan: WorldPlan = plan_world(preset, self.seed)
        self.scene = SceneRenderer(model=self.model, camera=self.camera)
        self.effect_weights = effect_weight_matrix(self.expression_names)
        self._subject_plans = {s.name: s for s in self.plan.subjects}
        self._subjects: dict[str, Subject] = {}
        self._interiors: dict[str, MouthInterior] = {}
        self._roles = {c.key: c.role for c in self.plan.clips}

    # ------------------------------------------------------------------ subjects
    def subject(self, name: str) -> Subject:
        """The subject ``name`` (drawn once, then cached)."""
        if name not in self._subjects:
            plan = self._subject_plans.get(name)
            if plan is None:
                raise KeyError(f"no subject {name!r} in this world (subjects: {sorted(self._subject_plans)})")
            self._subjects[name] = self.factory.make(plan.name, plan.split, plan.sex, family=plan.family)
        return self._subjects[name]

    def interior(self, name: str) -> MouthInterior:
        """The subject's mouth interior (built once, then cached)."""
        if name not in self._interiors:
            subject = self.subject(name)
            self._interiors[name] = build_mouth_interior(self.model, subject.id_coeff, subject.teeth_colour)
        return self._interiors[name]

    def role(self, key: ClipKey) -> str:
        """``"train"`` or ``"eval"`` for a planned clip (``"eval"`` for anything else)."""
        return self._roles.get(key, "eval")

    # ------------------------------------------------------------------ clips
    def render_mead_clip(self, key: ClipKey) -> RenderedClip:
        """The MEAD clip ``key``."""
        level = 0.0 if key.emotion == NEUTRAL else float(key.level)
        return self._render(key, target_emotion=key.emotion, target_level=level, kind="mead", folder_level=key.level)

    def render_edit(self, source: ClipKey, emotion: str, level: float) -> RenderedClip:
        """The ground-truth edit of the neutral clip ``source`` into ``emotion`` at ``level``
        (continuous, ≥ 0; 0 reproduces ``source`` exactly)."""
        if source.emotion != NEUTRAL:
            raise ValueError(f"render_edit: the source must be a neutral clip, got {source}")
        if emotion not in EMOTIONS:
            raise ValueError(f"render_edit: unknown target emotion {emotion!r}; choose one of {EMOTIONS}")
        return self._render(
            source,
            target_emotion=emotion,
            target_level=float(level),
            kind="edited",
            folder_level=int(round(level)) if float(level).is_integer() else 0,
        )

    def render_edit_key(self, edit: EditKey) -> RenderedClip:
        """The ground-truth edit ``edit``."""
        return self.render_edit(edit.source, edit.emotion, float(edit.level))

    def _render(self, key: ClipKey, *, target_emotion: str, target_level: float, kind: str, folder_level: int) -> RenderedClip:
        preset, names = self.preset, self.expression_names
        subject = self.subject(key.subject)
        interior = self.interior(key.subject)
        recording = (key.subject, key.emotion, key.level, key.clip)
        performance = perform(
            self.seed,
            recording,
            subject=subject,
            emotion=key.emotion,
            num_frames=preset.num_frames,
            fps=preset.fps,
            audio_rate=preset.audio_rate,
            expression_names=names,
        )
        num_frames = preset.num_frames
        emotion_au = emotion_activation(target_emotion, target_level, subject.au_gains, names)
        exp = combine_activations(performance.speech_au, emotion_au, performance.blink_au, names)
        effects = effect_activations(exp, self.effect_weights)
        light_key = recording if preset.lighting == "per_recording" else (key.subject,)
        gamma = draw_lighting(derive_rng(self.seed, "lighting", *light_key))
        scene_rng = derive_rng(self.seed, "scene", key.subject, key.view, key.emotion, key.level, key.clip)
        framing = draw_framing(scene_rng)
        background = draw_background(scene_rng, preset.image_size)
        view_yaw = math.radians(VIEW_YAW_DEGREES[key.view])
        angle = performance.angle + torch.tensor([0.0, view_yaw, 0.0])
        trans = performance.trans + framing
        coeffs = self.model.layout.join(
            Coeffs(
                id_coeff=subject.id_coeff[None].expand(num_frames, -1),
                exp_coeff=exp,
                tex_coeff=subject.tex_coeff[None].expand(num_frames, -1),
                angle=angle,
                gamma=gamma[None].expand(num_frames, -1),
                trans=trans,
            )
        ).contiguous()
        frames, landmarks, interior_masks, face_masks = [], [], [], []
        # Texture effects rarely change within a clip (speech and blinks drive none):
        # build each distinct texture once.
        distinct, texture_index = torch.unique(effects, dim=0, return_inverse=True)
        with torch.no_grad():
            textures = apply_effects(subject.albedo, subject.effect_maps, distinct)
            for start in range(0, num_frames, preset.render_batch):
                stop = min(start + preset.render_batch, num_frames)
                out = self.scene(coeffs[start:stop], textures, interior, background, texture_index[start:stop])
                frames.append(to_uint8_frames(out.image))
                landmarks.append(out.landmarks)
                interior_masks.append(out.interior_mask)
                face_masks.append(out.face_mask)
        interior_mask = torch.cat(interior_masks)
        face_mask = torch.cat(face_masks)
        if target_emotion == NEUTRAL or target_level == 0:
            code = torch.zeros(len(EMOTIONS))
        else:
            code = emotion_code(target_emotion, target_level)
        source_video = str(ClipKey(key.subject, key.view, NEUTRAL, 1, key.clip).video) if kind == "edited" else ""
        layout = self.model.layout
        truth = ClipTruth(
            kind=kind,
            subject=key.subject,
            view=key.view,
            emotion=target_emotion if kind == "edited" else key.emotion,
            level=int(folder_level),
            strength=float(target_level) / MAX_LEVEL,
            clip=key.clip,
            role=self.role(key),
            source_video=source_video,
            fps=int(preset.fps),
            audio_rate=int(preset.audio_rate),
            image_size=int(preset.image_size),
            expression_names=tuple(names),
            effect_names=EFFECT_NAMES,
            coeff_sizes=(layout.id, layout.exp, layout.tex, layout.angle, layout.gamma, layout.trans),
            coeffs=coeffs.clone(),
            landmarks=torch.cat(landmarks).contiguous(),
            exp_speech=performance.speech_au.clone(),
            exp_emotion=emotion_au.clone(),
            exp_blink=performance.blink_au.clone(),
            effects=effects.clone(),
            emotion_code=code.to(torch.float32),
            envelope=performance.envelope.clone(),
            frame_times=performance.times.clone(),
            camera=camera_tensor(self.camera),
            view_yaw=float(view_yaw),
            head_angle=performance.angle.clone(),
            head_trans=performance.trans.clone(),
            framing=framing.clone(),
            face_pixels=face_mask.sum(dim=(1, 2)).to(torch.int64),
            interior_pixels=interior_mask.sum(dim=(1, 2)).to(torch.int64),
            blink_times=torch.tensor(performance.blink_times, dtype=torch.float64),
        )
        return RenderedClip(
            frames=np.concatenate(frames),
            audio=performance.audio[None],
            truth=truth,
            interior_mask=interior_mask,
            face_mask=face_mask,
        )
