"""Test helpers of the reconstruction part: synthetic procedural faces and small frames caches.

Not library code: the real frames cache is written by the preprocessing. Here faces are
rendered directly with the crop camera (so the stored true coefficients are exact in the
crop's camera) and the stored crop transform is the identity (frame = crop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import Tensor

from emoedit.data.alignment import CropTransform
from emoedit.data.cache import CacheSpec, CacheWriter
from emoedit.face_model import MorphableModel, PerspectiveCamera
from emoedit.render import MeshRenderer


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Autouse in the recon tests (import it): one torch thread. These tests run small tensor
    ops, where one thread is as fast; on a shared, busy CPU several threads are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_coeffs(
    model: MorphableModel,
    frames: int,
    *,
    generator: torch.Generator,
    id_coeff: Tensor | None = None,  # (K_id,) shared identity; None: drawn
    tex_coeff: Tensor | None = None,  # (K_tex,) shared albedo; None: drawn
    exp_scale: float = 0.3,  # expression strength (uniform in [0, exp_scale] per unit)
) -> Tensor:
    """``(frames, L)`` plausible coefficients: one identity/albedo, per-frame expression, pose, light."""
    layout = model.layout
    sl = layout.slices
    coeffs = layout.zeros(frames)
    if id_coeff is None:
        id_coeff = 0.6 * torch.randn(layout.id, generator=generator)
    if tex_coeff is None:
        tex_coeff = 0.6 * torch.randn(layout.tex, generator=generator)
    coeffs[:, sl["id"]] = id_coeff
    coeffs[:, sl["tex"]] = tex_coeff
    coeffs[:, sl["exp"]] = exp_scale * torch.rand(frames, layout.exp, generator=generator) * (
        torch.rand(frames, layout.exp, generator=generator) < 0.25
    )
    coeffs[:, sl["angle"]] = 0.12 * (2 * torch.rand(frames, 3, generator=generator) - 1)
    coeffs[:, sl["trans"]] = 0.05 * (2 * torch.rand(frames, 3, generator=generator) - 1)
    gamma = 0.1 * torch.randn(frames, 3, 9, generator=generator)
    gamma = gamma.mean(dim=1, keepdim=True).expand(-1, 3, -1) + 0.02 * torch.randn(frames, 3, 9, generator=generator)
    coeffs[:, sl["gamma"]] = gamma.reshape(frames, 27)
    return coeffs


@torch.no_grad()
def render_faces(model: MorphableModel, coeffs: Tensor, crop_size: int, *, background: float = 0.4) -> tuple[Tensor, Tensor]:
    """``(T, 3, S, S)`` float [0, 1] renders (crop camera) and ``(T, 68, 2)`` true landmarks, crop pixels."""
    camera = PerspectiveCamera().scaled(crop_size)
    face = model(coeffs, camera)
    renderer = MeshRenderer(image_size=crop_size, backend="torch", background=background)
    image = renderer(face.vertices_screen, model.triangles, vertex_colors=face.vertex_colors).image
    return image, face.landmarks


def write_frames_cache(
    root: Path,
    model: MorphableModel,
    *,
    subjects: tuple[str, ...] = ("S01", "S02"),
    clips_per_subject: int = 2,
    frames_per_clip: int = 3,
    crop_size: int = 64,
    with_truth: bool = True,
    seed: int = 0,
) -> Path:
    """Write and finalise a small frames cache of procedural faces; returns ``root``."""
    layout = model.layout
    fields: dict[str, tuple[str, tuple[int, ...]]] = {
        "crop": ("uint8", (3, crop_size, crop_size)),
        "landmarks": ("float32", (68, 2)),
        "transform": ("float32", (8,)),
    }
    if with_truth:
        fields["coeffs_true"] = ("float32", (layout.size,))
    spec = CacheSpec(
        kind="frames",
        version=1,
        fields=fields,
        meta={"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"},
        attributes={"face_model": model.name, "crop_size": crop_size},
    )
    writer = CacheWriter.open(root, spec)
    generator = torch.Generator().manual_seed(seed)
    identity = CropTransform(torch.ones(()), torch.zeros(()), torch.zeros(2), (crop_size, crop_size), (crop_size, crop_size))
    for subject in subjects:
        id_coeff = 0.6 * torch.randn(layout.id, generator=generator)
        tex_coeff = 0.6 * torch.randn(layout.tex, generator=generator)
        for clip in range(clips_per_subject):
            coeffs = random_coeffs(model, frames_per_clip, generator=generator, id_coeff=id_coeff, tex_coeff=tex_coeff)
            image, landmarks = render_faces(model, coeffs, crop_size)
            records = {
                "crop": (image * 255).round().to(torch.uint8),
                "landmarks": landmarks.float(),
                "transform": identity.as_tensor().expand(frames_per_clip, -1).clone(),
            }
            if with_truth:
                records["coeffs_true"] = coeffs.float()
            meta = {"subject": subject, "emotion": "happy", "level": 3, "view": "front",
                    "frame": list(range(frames_per_clip))}
            writer.write_clip(f"{subject}/front/happy/level_3/{clip:03d}", records, meta)
    writer.finalize()
    return root
