"""FFHQ-like stills: many random identities, expressions, poses and lights, aligned-ish.

Every still is a new person (identity, albedo with personal detail, mouth interior),
showing a random emotion at a random continuous level with a random mouth opening, under
random light, placed as FFHQ's alignment places faces (centred, eyes nearly level, face
about half the image wide). A few are deliberately bad, with the reason in the truth, so a
later FFHQ filter (METHOD §3.4: occlusion, abnormal lighting, large pose) can be scored:

- ``large_pose``: |yaw| of 55-75°;
- ``dark``: an under-exposed photo (face light and background about a quarter to a
  third of the normal brightness);
- ``occluded``: an opaque patch (hand / object stand-in) over a third of the face.

:func:`still_truth` is cheap (no painting, no rendering), so a resumed run rebuilds the
truth of stills it does not re-render.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from emoedit.data.synthetic.emotions import au_vector, combine_activations, emotion_activation
from emoedit.data.synthetic.mouth_interior import build_mouth_interior
from emoedit.data.synthetic.plan import FFHQPlan
from emoedit.data.synthetic.scene import (
    STILL_ZOOM,
    SceneRenderer,
    draw_background,
    draw_lighting,
    to_uint8_frames,
    world_camera,
)
from emoedit.data.synthetic.seeding import derive_rng
from emoedit.data.synthetic.subjects import SubjectFactory
from emoedit.data.synthetic.texture_effects import apply_effects, effect_activations, effect_weight_matrix
from emoedit.editing.emotion_code import EMOTIONS
from emoedit.face_model import Coeffs, MorphableModel, PerspectiveCamera

FFHQ_FORMAT = "emoedit.synthetic.ffhq"
FFHQ_FORMAT_VERSION = 1


@dataclass(frozen=True)
class StillSpec:
    """Everything about one still except its painted texture."""

    index: int  # image number
    bad: str  # "" or the bad kind
    sex: str  # "M" or "W"
    emotion: str  # shown emotion ("neutral" or one of EMOTIONS)
    level: float  # continuous level of that emotion
    coeffs: Tensor  # (L,) full coefficient vector
    occluder_box: Tensor  # (4,) float32 x0, y0, x1, y1 in pixels; -1 without occluder
    occluder_colour: Tensor  # (3,) float32


def still_spec(model: MorphableModel, factory: SubjectFactory, seed: int, plan: FFHQPlan, image_size: int) -> StillSpec:
    """The coefficients, pose, light and occluder of still ``plan.index`` (deterministic)."""
    names = model.expression_names
    assert names is not None
    rng = derive_rng(seed, "ffhq", plan.index, "scene")
    sex = "M" if rng.random() < 0.5 else "W"
    traits = factory.traits(f"ffhq{plan.index:05d}", "ffhq", sex, stream=("ffhq", plan.index, "identity"))
    emotion = "neutral" if rng.random() < 0.25 else str(EMOTIONS[int(rng.integers(len(EMOTIONS)))])
    level = float(rng.uniform(0.5, 3.3)) if emotion != "neutral" else 0.0
    emotion_au = emotion_activation(emotion, level, traits.au_gains, names)
    mouth = {}
    if rng.random() < 0.45:  # talking / laughing: some mouth opening
        mouth = {"AU25": rng.uniform(0.3, 1.0), "AU26": rng.uniform(0.0, 0.6)}
    speech = au_vector(mouth, names)[None]
    blink = torch.zeros(1, len(names))
    if rng.random() < 0.05:
        blink[0, names.index("AU43")] = float(rng.uniform(0.5, 1.0))
    exp = combine_activations(speech, emotion_au, blink, names)[0]
    yaw = rng.uniform(-25.0, 25.0)
    if plan.bad == "large_pose":
        yaw = rng.choice([-1.0, 1.0]) * rng.uniform(55.0, 75.0)
    angle = torch.tensor([math.radians(rng.uniform(-12.0, 12.0)), math.radians(yaw), math.radians(rng.normal(0.0, 3.0))])
    gamma = draw_lighting(rng, strength=1.4, dark=plan.bad == "dark")
    trans = torch.tensor([rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06), rng.uniform(-0.4, 0.4)], dtype=torch.float32)
    coeffs = model.layout.join(
        Coeffs(
            id_coeff=traits.id_coeff[None],
            exp_coeff=exp[None],
            tex_coeff=traits.tex_coeff[None],
            angle=angle[None].float(),
            gamma=gamma[None],
            trans=trans[None],
        )
    )[0]
    box = torch.full((4,), -1.0)
    colour = torch.zeros(3)
    if plan.bad == "occluded":
        # Over a third of the face: the eyes, the mouth, or one side.
        size = image_size
        width = rng.uniform(0.28, 0.45) * size
        height = rng.uniform(0.2, 0.32) * size
        cx = size / 2 + rng.uniform(-0.12, 0.12) * size
        cy = size / 2 + rng.choice([-0.1, 0.2]) * size + rng.uniform(-0.05, 0.05) * size
        box = torch.tensor([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2]).clamp(0, size - 1)
        colour = torch.from_numpy(rng.uniform(0.05, 0.95, size=3)).float()
    return StillSpec(
        index=plan.index,
        bad=plan.bad,
        sex=sex,
        emotion=emotion,
        level=level,
        coeffs=coeffs,
        occluder_box=box.float(),
        occluder_colour=colour,
    )


class StillRenderer:
    """Renders FFHQ-like stills of a world."""

    def __init__(
        self,
        *,
        model: MorphableModel,  # the world's face model
        factory: SubjectFactory,  # the world's subject factory (UV layout, seed)
        image_size: int,  # still side, pixels
    ) -> None:
        self.model = model
        self.factory = factory
        self.camera: PerspectiveCamera = world_camera(image_size, STILL_ZOOM)
        self.scene = SceneRenderer(model=model, camera=self.camera)
        self.effect_weights = effect_weight_matrix(model.expression_names or ())
        self.image_size = int(image_size)

    def render(self, spec: StillSpec) -> tuple[np.ndarray, Tensor, Tensor]:
        """``(image (H, W, 3) uint8, true UV albedo (3, T, T) with effects, landmarks (68, 2))``."""
        seed = self.factory.seed
        subject = self.factory.make(f"ffhq{spec.index:05d}", "ffhq", spec.sex, stream=("ffhq", spec.index, "identity"))
        interior = build_mouth_interior(self.model, subject.id_coeff, subject.teeth_colour)
        coeffs = spec.coeffs[None]
        exp = self.model.layout.split(coeffs).exp_coeff
        effects = effect_activations(exp, self.effect_weights)
        with torch.no_grad():
            texture = apply_effects(subject.albedo, subject.effect_maps, effects)
            background = draw_background(derive_rng(seed, "ffhq", spec.index, "background"), self.image_size)
            if spec.bad == "dark":  # an under-exposed photo: the whole scene is dark
                background = background * 0.3
            out = self.scene(coeffs, texture, interior, background)
        image = out.image[0]
        if spec.bad == "occluded":
            image = _occlude(image, spec, derive_rng(seed, "ffhq", spec.index, "occluder"))
        return to_uint8_frames(image[None])[0], texture[0], out.landmarks[0]


def _occlude(image: Tensor, spec: StillSpec, rng: np.random.Generator) -> Tensor:
    """Paint an opaque, slightly textured rounded patch over ``spec.occluder_box``."""
    x0, y0, x1, y1 = spec.occluder_box.tolist()
    size = image.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1.0), max((y1 - y0) / 2, 1.0)
    inside = (((xs - cx) / rx) ** 4 + ((ys - cy) / ry) ** 4) <= 1.0
    shade = 1.0 + 0.08 * torch.from_numpy(rng.normal(size=(size, size))).float()
    patch = (spec.occluder_colour.view(3, 1, 1) * shade[None]).clamp(0.0, 1.0)
    return torch.where(inside[None], patch, image)
