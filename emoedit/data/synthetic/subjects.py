"""Synthetic people: identity shape, albedo with personal detail, and personal expressiveness.

A :class:`Subject` is drawn from its own random stream (``derive_rng(seed, "subject",
name)``), so it does not depend on how many other subjects exist. It holds

- ``id_coeff`` / ``tex_coeff``: identity and albedo coefficients of the face model
  (``N(0, 0.9²)``);
- ``albedo``: the true UV albedo (3, T, T): the model's albedo for ``tex_coeff`` baked into
  UV space, plus detail painted in UV space that the model's albedo basis cannot express
  — skin tone and blotchiness, pores, moles, freckles, red spots, stubble, brow colour and
  thickness, lip colour — so that a texture classifier can tell subjects apart;
- ``au_gains`` (K,): per-AU amplitude of the subject's expressions (log-normal);
- ``effect_gains`` (E,) and ``effect_maps`` (E, 3, T, T): the subject's wrinkles and flush
  (:mod:`~emoedit.data.synthetic.texture_effects`);
- speech and motion traits: syllable rate, voice pitch, blink rate, head-motion scale,
  and a teeth colour;
- ``family``: its look-alike family in a ``"families"`` world, else None.

In a ``"families"`` world (:mod:`~emoedit.data.synthetic.families`) a subject is drawn by
the same code from a blend of two streams: its family prototype's (``("family", k)``,
:meth:`SubjectFactory.prototype`) and its own (the one an independent world uses), mixed
by ``family_spread``; so identity, albedo, expressiveness, wrinkle geometry and response
gains all lean toward the family's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emoedit.data.synthetic.families import FamilyBlendRng, RandomSource, StateRecorder, family_sex, sync_point
from emoedit.data.synthetic.seeding import derive_rng
from emoedit.data.synthetic.texture_effects import EFFECT_NAMES, draw_effect_gains, paint_effect_maps
from emoedit.data.synthetic.uv_painting import UVFaceFrame, inside_polygon, polyline_band, smooth_noise, soft_disc
from emoedit.face_model import MorphableModel
from emoedit.texture import UVLayout

SUBJECT_FORMAT = "emoedit.synthetic.subject"
SUBJECT_FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "unseen", "ffhq", "prototype")  # "prototype": a family's, in no split

# Physiological colour axes (RGB): melanin darkens, blood reddens, carotene yellows.
_MELANIN = np.array([-0.62, -0.55, -0.5])
_BLOOD = np.array([0.75, -0.45, -0.35])
_CAROTENE = np.array([0.35, 0.25, -0.6])
_BROW_PALETTE = np.array(
    [
        [0.07, 0.06, 0.06],  # black
        [0.17, 0.12, 0.09],  # dark brown
        [0.3, 0.2, 0.13],  # brown
        [0.42, 0.21, 0.12],  # auburn
        [0.58, 0.46, 0.3],  # blond
        [0.5, 0.48, 0.46],  # grey
    ]
)


@dataclass(frozen=True)
class SubjectTraits:
    """A subject's coefficients and traits (everything but the painted texture)."""

    name: str  # e.g. "M003"
    split: str  # "train", "unseen" or "ffhq"
    sex: str  # "M" or "W"
    id_coeff: Tensor  # (K_id,) identity coefficients
    tex_coeff: Tensor  # (K_tex,) albedo coefficients
    au_gains: Tensor  # (K_exp,) per-AU expression amplitude
    speech_rate: float  # syllables per second when speaking neutrally
    f0: float  # voice fundamental frequency, Hz
    blink_rate: float  # blinks per second
    motion_scale: float  # head-motion amplitude factor
    teeth_colour: Tensor  # (3,) RGB in [0, 1]


@dataclass(frozen=True)
class Subject:
    """One synthetic person (see the module docstring). Tensors are float32 CPU."""

    name: str  # e.g. "M003"
    split: str  # "train", "unseen" or "ffhq"
    sex: str  # "M" or "W" (voice pitch, stubble)
    id_coeff: Tensor  # (K_id,) identity coefficients
    tex_coeff: Tensor  # (K_tex,) albedo coefficients of the model's albedo basis (closest model albedo)
    au_gains: Tensor  # (K_exp,) per-AU expression amplitude, ~1
    effect_gains: Tensor  # (E,) wrinkle / flush response gains
    albedo: Tensor  # (3, T, T) true UV albedo in [0, 1] (neutral face)
    effect_maps: Tensor  # (E, 3, T, T) additive texture change per unit effect activation
    speech_rate: float  # syllables per second when speaking neutrally
    f0: float  # voice fundamental frequency, Hz
    blink_rate: float  # blinks per second
    motion_scale: float  # head-motion amplitude factor
    teeth_colour: Tensor  # (3,) RGB in [0, 1]
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able description of the painted detail
    family: int | None = None  # look-alike family index ("families" worlds), None when drawn independently

    def truth_dict(self, expression_names: tuple[str, ...]) -> dict[str, Any]:
        """The ``truth/subjects/<name>.pt`` payload (weights_only-loadable); ``"family"`` only
        for a family member (an independent world's payload is unchanged)."""
        payload = {
            "format": SUBJECT_FORMAT,
            "format_version": SUBJECT_FORMAT_VERSION,
            "name": self.name,
            "split": self.split,
            "sex": self.sex,
            "id_coeff": self.id_coeff.clone(),
            "tex_coeff": self.tex_coeff.clone(),
            "au_gains": self.au_gains.clone(),
            "effect_gains": self.effect_gains.clone(),
            "albedo": self.albedo.clone(),
            "effect_maps": self.effect_maps.to(torch.float16),
            "teeth_colour": self.teeth_colour.clone(),
            "speech_rate": float(self.speech_rate),
            "f0": float(self.f0),
            "blink_rate": float(self.blink_rate),
            "motion_scale": float(self.motion_scale),
            "expression_names": list(expression_names),
            "effect_names": list(EFFECT_NAMES),
        }
        if self.family is not None:
            payload["family"] = int(self.family)
        return payload

    def metadata(self) -> dict[str, Any]:
        """Small JSON metadata (``truth/subjects/<name>.json``); ``"family"`` only for a family member."""
        data = {
            "name": self.name,
            "split": self.split,
            "sex": self.sex,
            "speech_rate": round(self.speech_rate, 4),
            "f0": round(self.f0, 2),
            "blink_rate": round(self.blink_rate, 4),
            "motion_scale": round(self.motion_scale, 4),
            "effect_gains": {n: round(float(g), 4) for n, g in zip(EFFECT_NAMES, self.effect_gains.tolist())},
            "details": self.details,
        }
        if self.family is not None:
            data["family"] = int(self.family)
        return data


class SubjectFactory:
    """Draws subjects for one face model and texture size (holds the UV painting frame)."""

    def __init__(
        self,
        *,
        model: MorphableModel,  # the world's face model (AU-named expression basis)
        layout: UVLayout,  # its UV layout at the world's texture size
        seed: int,  # world seed
        family_spread: float | None = None,  # in [0, 1]: members' departure from their family prototype;
        #                                      None: no families (make(family=...) is refused)
    ) -> None:
        if family_spread is not None and not 0.0 <= float(family_spread) <= 1.0:
            raise ValueError(f"family_spread must be in [0, 1], got {family_spread}")
        self.model = model
        self.layout = layout
        self.seed = int(seed)
        self.family_spread = None if family_spread is None else float(family_spread)
        self.frame = UVFaceFrame.from_model(model, layout)
        self._prototypes: dict[int, tuple[Subject, dict[str, dict[str, Any]]]] = {}

    # ------------------------------------------------------------------ random streams
    def _check_family(self, family: int) -> float:
        """The family spread, after checking that ``family`` can be drawn."""
        if self.family_spread is None:
            raise ValueError("this SubjectFactory has no family model (construct it with family_spread)")
        if isinstance(family, bool) or not isinstance(family, int) or family < 0:
            raise ValueError(f"family must be a non-negative integer, got {family!r}")
        return self.family_spread

    def _stream(self, keys: tuple[object, ...], part: str, family: int | None) -> RandomSource:
        """The random source of one part (``"traits"`` or ``"texture"``) of a subject."""
        own = derive_rng(self.seed, *keys, part)
        if family is None:
            return own
        spread = self._check_family(family)
        states = self._prototype_entry(family)[1] if part == "texture" else {}
        return FamilyBlendRng(
            prototype=derive_rng(self.seed, "family", family, part),
            own=own,
            switch=derive_rng(self.seed, *keys, "family", part, "switch"),
            spread=spread,
            prototype_states=states,
        )

    def _prototype_entry(self, family: int) -> tuple[Subject, dict[str, dict[str, Any]]]:
        if family not in self._prototypes:
            keys: tuple[object, ...] = ("family", family)
            recorder = StateRecorder(derive_rng(self.seed, *keys, "texture"))
            traits = self._draw_traits(f"family{family}", "prototype", family_sex(self.seed, family), derive_rng(self.seed, *keys, "traits"))
            subject = self._paint(traits, recorder, family=family)
            self._prototypes[family] = (subject, recorder.states)
        return self._prototypes[family]

    def prototype(self, family: int) -> Subject:
        """Family ``family``'s prototype: an ordinary subject drawn from the streams
        ``("family", family, ...)`` with the family's sex (split ``"prototype"``; cached)."""
        self._check_family(family)
        return self._prototype_entry(family)[0]

    # ------------------------------------------------------------------ subjects
    def traits(
        self,
        name: str,
        split: str,
        sex: str,
        *,
        stream: tuple[object, ...] | None = None,
        family: int | None = None,  # family index (needs family_spread), None: independent
    ) -> SubjectTraits:
        """The subject's coefficients and traits, without painting its texture (cheap).

        Deterministic in the world seed and ``stream`` (default ``("subject", name)``), and
        for a family member in its family and the factory's ``family_spread``.
        """
        keys = stream if stream is not None else ("subject", name)
        return self._draw_traits(name, split, sex, self._stream(keys, "traits", family))

    def _draw_traits(self, name: str, split: str, sex: str, rng: RandomSource) -> SubjectTraits:
        if split not in SPLITS:
            raise ValueError(f"subject split must be one of {SPLITS}, got {split!r}")
        if sex not in ("M", "W"):
            raise ValueError(f"subject sex must be 'M' or 'W', got {sex!r}")
        layout = self.model.layout
        id_coeff = torch.from_numpy(rng.normal(0.0, 0.9, size=layout.id)).float()
        tex_coeff = torch.from_numpy(rng.normal(0.0, 1.0, size=layout.tex)).float()
        expressiveness = np.exp(rng.normal(0.0, 0.15))
        au_gains = np.clip(expressiveness * np.exp(rng.normal(0.0, 0.25, size=layout.exp)), 0.55, 1.7)
        speech_rate = 3.6 * float(np.exp(rng.normal(0.0, 0.1)))
        f0 = (115.0 if sex == "M" else 205.0) * float(np.exp(rng.normal(0.0, 0.1)))
        teeth = np.array([0.92, 0.88, 0.78]) * rng.uniform(0.82, 1.0) + rng.normal(0.0, 0.015, size=3)
        return SubjectTraits(
            name=name,
            split=split,
            sex=sex,
            id_coeff=id_coeff,
            tex_coeff=tex_coeff,
            au_gains=torch.from_numpy(au_gains).float(),
            speech_rate=speech_rate,
            f0=f0,
            blink_rate=float(rng.uniform(0.25, 0.55)),
            motion_scale=float(np.exp(rng.normal(0.0, 0.3))),
            teeth_colour=torch.from_numpy(np.clip(teeth, 0.0, 1.0)).float(),
        )

    def make(
        self,
        name: str,
        split: str,
        sex: str,
        *,
        stream: tuple[object, ...] | None = None,
        family: int | None = None,  # family index (needs family_spread), None: independent
    ) -> Subject:
        """The full subject ``name``: :meth:`traits` plus its painted UV albedo and effect maps."""
        keys = stream if stream is not None else ("subject", name)
        traits = self.traits(name, split, sex, stream=stream, family=family)
        return self._paint(traits, self._stream(keys, "texture", family), family=family)

    def _paint(self, traits: SubjectTraits, rng: RandomSource, *, family: int | None) -> Subject:
        """A subject from its traits and its texture stream (albedo detail, then effects)."""
        with torch.no_grad():
            vertex_albedo = self.model.albedo(traits.tex_coeff[None]).clamp(0.0, 1.0)
            base = self.layout.interpolate(vertex_albedo)[0].double().numpy()  # (3, T, T)
        albedo, details = paint_skin_detail(self.frame, base, rng, sex=traits.sex)
        sync_point(rng, "effect_gains")
        effect_gains = draw_effect_gains(rng)
        effect_maps = paint_effect_maps(self.frame, albedo, effect_gains, rng)
        # The stored maps are float16: render with exactly what is stored.
        effect_maps_t = torch.from_numpy(effect_maps).to(torch.float16).to(torch.float32)
        return Subject(
            name=traits.name,
            split=traits.split,
            sex=traits.sex,
            id_coeff=traits.id_coeff,
            tex_coeff=traits.tex_coeff,
            au_gains=traits.au_gains,
            effect_gains=torch.from_numpy(effect_gains).float(),
            albedo=torch.from_numpy(albedo).float(),
            effect_maps=effect_maps_t,
            speech_rate=traits.speech_rate,
            f0=traits.f0,
            blink_rate=traits.blink_rate,
            motion_scale=traits.motion_scale,
            teeth_colour=traits.teeth_colour,
            details=details,
            family=family,
        )


def paint_skin_detail(
    frame: UVFaceFrame,  # texel positions of the UV template
    base: np.ndarray,  # (3, T, T) float64 model albedo baked into UV, [0, 1]
    rng: RandomSource,  # the subject's stream (a numpy generator, or a family blend)
    *,
    sex: str,  # "M" may get stubble
) -> tuple[np.ndarray, dict[str, Any]]:
    """Personal UV detail over the model albedo: returns ``(albedo (3,T,T) in [0,1], details)``."""
    size = frame.texture_size
    skin = frame.skin
    albedo = base.copy()
    details: dict[str, Any] = {}

    def blend(weight: np.ndarray, colour: np.ndarray) -> None:
        nonlocal albedo
        w = np.clip(weight, 0.0, 1.0)[None]
        albedo = albedo * (1.0 - w) + colour.reshape(3, 1, 1) * w

    # Skin tone, blotchiness and pores.
    sync_point(rng, "skin")
    melanin = float(rng.uniform(-0.4, 1.2))
    albedo = albedo + 0.16 * melanin * skin[None] * _MELANIN[:, None, None] * albedo / 0.6
    hue = rng.normal(0.0, 0.025, size=3) @ np.array([_BLOOD, _CAROTENE, _MELANIN])
    albedo = albedo + skin[None] * hue[:, None, None]
    redness = smooth_noise(rng, size, 6)
    shade = smooth_noise(rng, size, 5)
    albedo = albedo + (skin * (0.018 * np.abs(redness)))[None] * _BLOOD[:, None, None]
    albedo = albedo + (skin * 0.02 * shade)[None] * _MELANIN[:, None, None]
    pore_strength = float(rng.uniform(0.006, 0.02))
    albedo = albedo * (1.0 + pore_strength * (rng.normal(size=(size, size)) * skin)[None])
    details["melanin"] = round(melanin, 4)

    # Lips: recolour the outer lip polygon (iBUG 49-60).
    sync_point(rng, "lips")
    lip_colour = np.array([0.62, 0.32, 0.32]) + rng.normal(0.0, [0.06, 0.04, 0.04]) - 0.1 * max(melanin, 0.0)
    lip_colour = np.clip(lip_colour, 0.15, 0.9)
    lips = inside_polygon(frame, frame.landmarks[48:60, :2])
    blend(0.75 * lips, lip_colour)
    details["lip_colour"] = [round(float(c), 3) for c in lip_colour]

    # Brows: recolour a band along each brow (iBUG 18-22, 23-27) with a personal thickness.
    sync_point(rng, "brows")
    brow_colour = _BROW_PALETTE[int(rng.integers(len(_BROW_PALETTE)))] * rng.uniform(0.85, 1.15)
    thickness = float(rng.uniform(0.014, 0.03))
    brows = np.maximum(
        polyline_band(frame, frame.landmarks[17:22, :2], thickness, taper=False),
        polyline_band(frame, frame.landmarks[22:27, :2], thickness, taper=False),
    )
    blend(0.85 * brows, np.clip(brow_colour, 0.0, 1.0))
    details["brow_colour"] = [round(float(c), 3) for c in brow_colour]
    details["brow_thickness_dm"] = round(thickness, 4)

    # Stubble (some men): dark specks over the beard area, off the lips.
    sync_point(rng, "stubble")
    stubble = 0.0
    if sex == "M" and rng.random() < 0.6:
        stubble = float(rng.uniform(0.3, 1.0))
        nose_base_y = float(frame.landmark(33)[1])
        chin_y = float(frame.landmark(8)[1])
        beard = np.clip((nose_base_y - 0.02 - frame.y) / 0.06, 0.0, 1.0)
        beard *= np.clip((frame.y - (chin_y - 0.25)) / 0.1, 0.0, 1.0)
        beard *= np.clip((0.62 - np.abs(frame.x)) / 0.1, 0.0, 1.0)
        beard *= np.clip(1.0 - 1.5 * lips, 0.0, 1.0) * np.clip(skin * 1.2, 0.0, 1.0)
        specks = (rng.random((size, size)) < 0.55 * stubble).astype(np.float64)
        blend(beard * (0.12 * stubble + 0.3 * stubble * specks), np.array([0.16, 0.14, 0.13]))
    details["stubble"] = round(stubble, 4)

    # Moles, freckles, red spots on skin.
    sync_point(rng, "moles")
    min_radius = 0.6 * frame.texel_dm
    candidates = np.flatnonzero((skin * frame.front).reshape(-1) > 0.5)
    num_moles = int(rng.poisson(1.8))
    for _ in range(num_moles if candidates.size else 0):
        k = int(rng.choice(candidates))
        centre = np.array([frame.x.flat[k], frame.y.flat[k]])
        colour = np.array([0.3, 0.19, 0.13]) * rng.uniform(0.7, 1.2)
        blend(0.85 * soft_disc(frame, centre, max(rng.uniform(0.007, 0.016), min_radius)) * skin, colour)
    details["moles"] = num_moles
    sync_point(rng, "freckles")
    freckles = 0
    if rng.random() < 0.35:
        freckles = int(rng.integers(40, 160))
        nose_y = float(frame.landmark(30)[1])
        freckle_colour = np.array([0.55, 0.36, 0.25]) * rng.uniform(0.8, 1.1)
        alpha = rng.uniform(0.25, 0.5)
        spots = np.zeros_like(skin)
        for _ in range(freckles):
            centre = np.array([rng.normal(0.0, 0.25), rng.normal(nose_y + 0.05, 0.1)])
            spots = np.maximum(spots, soft_disc(frame, centre, max(rng.uniform(0.004, 0.008), min_radius)))
        blend(alpha * spots * skin, freckle_colour)
    details["freckles"] = freckles
    sync_point(rng, "red_spots")
    num_spots = int(rng.poisson(1.5))
    for _ in range(num_spots if candidates.size else 0):
        k = int(rng.choice(candidates))
        centre = np.array([frame.x.flat[k], frame.y.flat[k]])
        spot = soft_disc(frame, centre, max(rng.uniform(0.008, 0.014), min_radius), sharpness=2.0) * skin
        albedo = albedo + 0.6 * spot[None] * np.array([0.08, -0.06, -0.05])[:, None, None]
    details["red_spots"] = num_spots

    albedo = np.clip(albedo, 0.0, 1.0) * frame.filled[None]
    return albedo, details
