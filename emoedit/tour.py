"""A tour of the foundation, end to end, on the embedded procedural face model.

What it does (and what ``make demo`` runs until the full editing pipeline lands):

1. builds the procedural morphable model and bakes its albedo into a UV texture;
2. animates it: a speech-like audio signal drives the jaw and lips, the action units
   are swept one after another, the head moves a little, the eyes blink;
3. renders every frame with the built-in rasteriser (UV texture + SH lighting);
4. extracts the UV texture back from a rendered frame and re-renders it (PSNR);
5. writes ``tour.mp4`` (H.264 + AAC), a contact sheet of all action units,
   the baked and re-extracted UV textures, and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from emoedit.atomic_io import atomic_write_bytes, atomic_write_text
from emoedit.face_model import MorphableModel, PerspectiveCamera
from emoedit.render.renderer import MeshRenderer
from emoedit.texture.extraction import extract_uv_texture
from emoedit.texture.uv_layout import UVLayout
from emoedit.video import VideoWriter

AUDIO_RATE = 16000


@dataclass(frozen=True)
class TourPreset:
    image_size: int  # rendered frame side, pixels
    texture_size: int  # UV texture side, texels
    frames_per_au: int  # frames spent on each action unit
    fps: int  # video frame rate


PRESETS = {
    "quick": TourPreset(image_size=128, texture_size=128, frames_per_au=6, fps=25),
    "demo": TourPreset(image_size=256, texture_size=256, frames_per_au=12, fps=25),
}


def _speech(num_frames: int, fps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A syllable-rate envelope (per frame, in [0, 1]) and the audio it modulates."""
    duration = num_frames / fps
    t = np.arange(int(duration * AUDIO_RATE)) / AUDIO_RATE
    syllable_rate = 4.0  # syllables per second
    phase = rng.uniform(0, 2 * np.pi)
    envelope = np.clip(np.sin(2 * np.pi * syllable_rate / 2 * t + phase), 0, None) ** 2
    envelope *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t) ** 2
    pitch = 140 + 25 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / AUDIO_RATE) / k for k in range(1, 8))
    audio = (0.25 * envelope * voiced / 2.6).astype(np.float32)[None, :]
    frame_times = np.arange(num_frames) / fps
    return np.interp(frame_times, t, envelope).astype(np.float32), audio


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3,H,W) float [0,1] → (H,W,3) uint8."""
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _write_png(path: Path, image_hwc: np.ndarray) -> None:
    from torchvision.io import encode_png

    data = encode_png(torch.from_numpy(np.ascontiguousarray(image_hwc)).permute(2, 0, 1))
    atomic_write_bytes(path, bytes(data.numpy()))


def run_tour(out_dir: Path, preset: str | TourPreset = "demo", seed: int = 0) -> dict:
    """Run the tour; returns the metrics written to ``out_dir/metrics.json``."""
    if isinstance(preset, TourPreset):
        cfg, preset = preset, "custom"
    elif preset in PRESETS:
        cfg = PRESETS[preset]
    else:
        raise ValueError(f"unknown tour preset '{preset}'; choose from {', '.join(PRESETS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    started = time.perf_counter()

    model = MorphableModel.procedural()
    layout = model.layout
    camera = PerspectiveCamera().scaled(cfg.image_size)
    renderer = MeshRenderer(image_size=cfg.image_size, backend="torch", background=0.12)
    uv_layout = UVLayout.from_model(model, cfg.texture_size)
    # Albedo baked into UV, with a little skin detail so the texture round trip has texture to keep.
    uv_texture = uv_layout.interpolate(model.mean_albedo)
    detail = torch.randn(1, 1, cfg.texture_size // 8, cfg.texture_size // 8)
    detail = torch.nn.functional.interpolate(detail, size=cfg.texture_size, mode="bicubic", align_corners=True)
    uv_texture = (uv_texture * (1 + 0.06 * detail)).clamp(0, 1)

    names = list(model.expression_names or [f"exp{i}" for i in range(layout.exp)])
    num_frames = cfg.frames_per_au * len(names)
    envelope, audio = _speech(num_frames, cfg.fps, rng)
    index = {name: i for i, name in enumerate(names)}

    coeffs = layout.zeros(num_frames)
    parts = layout.split(coeffs)
    exp = torch.zeros(num_frames, layout.exp)
    for k, name in enumerate(names):  # sweep: each AU rises and falls over its slot
        ramp = torch.sin(torch.linspace(0, math.pi, cfg.frames_per_au)) ** 2
        exp[k * cfg.frames_per_au : (k + 1) * cfg.frames_per_au, k] = ramp
    if "AU26" in index:  # talking: the jaw follows the audio envelope
        exp[:, index["AU26"]] = torch.maximum(exp[:, index["AU26"]], 0.45 * torch.from_numpy(envelope))
    if "AU43" in index:  # blinks every ~2.5 s
        blink = torch.zeros(num_frames)
        for start in range(cfg.fps, num_frames, int(2.5 * cfg.fps)):
            blink[start : start + 4] = torch.tensor([0.5, 1.0, 1.0, 0.5])[: max(0, min(4, num_frames - start))]
        exp[:, index["AU43"]] = torch.maximum(exp[:, index["AU43"]], blink)
    t = torch.arange(num_frames) / cfg.fps
    angle = torch.stack([0.05 * torch.sin(0.9 * t), 0.25 * torch.sin(0.5 * t), 0.03 * torch.sin(1.3 * t)], dim=1)
    gamma = torch.zeros(num_frames, layout.gamma)
    gamma[:, 1] = 0.25  # a little light from above (Deep3D SH layout: channel-major, 9 per channel)
    gamma[:, 10] = 0.25
    gamma[:, 19] = 0.25
    coeffs = layout.join(
        type(parts)(
            id_coeff=parts.id_coeff,
            exp_coeff=exp,
            tex_coeff=parts.tex_coeff,
            angle=angle,
            gamma=gamma,
            trans=parts.trans,
        )
    )

    frames = []
    batch = 16
    with torch.no_grad():
        for start in tqdm(range(0, num_frames, batch), desc="tour: render", unit="batch"):
            out = model(coeffs[start : start + batch], camera)
            rendered = renderer(
                out.vertices_screen,
                model.triangles,
                uv_coords=model.uv_coords,
                uv_texture=uv_texture.expand(out.vertices_screen.shape[0], -1, -1, -1),
                vertex_normals=out.normals,
                gamma=coeffs[start : start + batch, layout.slices["gamma"]],
            )
            frames.extend(_to_uint8(img) for img in rendered.image)
        frames_np = np.stack(frames)

        with VideoWriter(out_dir / "tour.mp4", fps=cfg.fps, audio_samples=(audio, AUDIO_RATE)) as writer:
            writer.write(frames_np)

        # Contact sheet: every AU at its peak, in a grid.
        peaks = [frames_np[k * cfg.frames_per_au + cfg.frames_per_au // 2] for k in range(len(names))]
        cols = 6
        rows = math.ceil(len(peaks) / cols)
        sheet = np.full((rows * cfg.image_size, cols * cfg.image_size, 3), 30, np.uint8)
        for k, img in enumerate(peaks):
            r, c = divmod(k, cols)
            sheet[r * cfg.image_size : (r + 1) * cfg.image_size, c * cfg.image_size : (c + 1) * cfg.image_size] = img
        _write_png(out_dir / "action_units.png", sheet)

        # Texture round trip on an unshaded neutral frame: render → extract → re-render.
        neutral = layout.zeros(1)
        out = model(neutral, camera)
        rendered = renderer(out.vertices_screen, model.triangles, uv_coords=model.uv_coords, uv_texture=uv_texture)
        extraction = extract_uv_texture(rendered.image, out.vertices_screen, uv_layout, fragments=rendered.fragments)
        rerendered = renderer(
            out.vertices_screen, model.triangles, uv_coords=model.uv_coords, uv_texture=extraction.uv_texture
        )
        mask = rendered.mask.expand_as(rendered.image) > 0
        mse = ((rerendered.image - rendered.image)[mask] ** 2).mean().item()
        psnr = 10 * math.log10(1.0 / max(mse, 1e-12))
        _write_png(out_dir / "uv_texture_baked.png", _to_uint8(uv_texture[0]))
        _write_png(out_dir / "uv_texture_extracted.png", _to_uint8(extraction.uv_texture[0] * extraction.visibility[0]))

    metrics = {
        "preset": preset,
        "face_model": {"vertices": model.num_vertices, "faces": model.num_faces, "coefficients": layout.size},
        "action_units": names,
        "frames": num_frames,
        "fps": cfg.fps,
        "image_size": cfg.image_size,
        "texture_round_trip_psnr_db": round(psnr, 2),
        "visible_texels": round(extraction.visibility.mean().item(), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    print(
        f"tour: {num_frames} frames of {len(names)} action units at {cfg.image_size}px, "
        f"texture round trip {psnr:.1f} dB, {metrics['seconds']} s → {out_dir}"
    )
    return metrics
