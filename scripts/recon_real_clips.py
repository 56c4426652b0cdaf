#!/usr/bin/env python
"""Measured figures of the 3D reconstruction part on the real fixture clips (``videos/*.mp4``).

    python scripts/recon_real_clips.py                     # ../shared/fixtures, 50 frames per clip
    python scripts/recon_real_clips.py --max-frames 10 --work outputs/results/recon_real_quick

Steps:

1. detection + tracking over **every** frame of each clip (dlib HOG detector, 68-point
   shape predictor, :func:`track_faces`): share of frames with a detected face and of
   frames with a usable tracked face;
2. per face model (the real BFM09 of 3DDFA, ``MorphableModel.from_3ddfa``, and the
   procedural model): :func:`run_preprocess` stage ``all`` on the first ``--max-frames``
   frames of each clip (detection, Deep3D 5-point alignment at ``--crop-size``,
   :class:`FittingReconstructor`, UV texture extraction) into ``WORK/<model>/``; the
   fitter runs its default schedule except ``photo_steps`` = :data:`DEFAULT_PHOTO_STEPS`
   (CPU budget; ``--fitter NAME=VALUE`` overrides);
3. from those caches, per clip:

   a. 68-landmark reprojection error of the fitted model against the detector's
      landmarks: crop px × 224 / S, and divided by the inter-ocular distance (outer eye
      corners, iBUG p37-p46, of the detected landmarks). The fitter minimises exactly this
      distance, so it is a fit residual, not an accuracy against ground truth;
   b. round trip without any edit: render the fitted geometry with the extracted UV
      texture (unlit: the texture holds the frame's shading) in the texture crop, paste it
      back into the original frame with a feathered face mask (rendered face ∧ texels seen
      in that frame, eroded and box-blurred by ``feather`` px), quantise to uint8, and
      compute the PSNR against the original frame on the face region (the hard mask warped
      into the frame, weight > 0.5) and on the whole frame (mean over frames of per-frame
      PSNR, dB, RGB in [0, 1]).

Writes ``WORK/recon_real_clips.json``, ``WORK/recon_real_clips.md`` and one example PNG per
clip and model (original | round trip | 4 × |difference|) under ``WORK/examples/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from emoedit.atomic_io import atomic_path, atomic_write_text  # noqa: E402
from emoedit.data.alignment import AlignmentTemplate, CropTransform, face_crop_transform, paste_crop_into_frame  # noqa: E402
from emoedit.data.cache_reader import CacheReader  # noqa: E402
from emoedit.data.datasets import read_inputs  # noqa: E402
from emoedit.data.face_tracking import track_faces  # noqa: E402
from emoedit.data.preprocess import DEFAULT_MIN_FACE_SIZE_PX, PreprocessConfig, load_face_model, run_preprocess  # noqa: E402
from emoedit.face_model import MorphableModel, PerspectiveCamera  # noqa: E402
from emoedit.machine import machine_info  # noqa: E402
from emoedit.render import MeshRenderer  # noqa: E402
from emoedit.shape_checks import assert_shape  # noqa: E402
from emoedit.video import read_video  # noqa: E402

DEEP3D_CROP = 224  # landmark errors are reported at Deep3D's crop scale
LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45  # iBUG p37, p46 (0-based): the inter-ocular distance
RENDER_CHUNK = 8  # frames rendered together
# CPU budget: the photometric stage of the fitter costs ~0.14 s per frame and step with the
# 105,840-triangle BFM on one core; 25 steps instead of FitterConfig's 100 keep a 2 × 50-frame
# run near 10 minutes (the landmark-only stages keep their default steps).
DEFAULT_PHOTO_STEPS = 25


@dataclass(frozen=True)
class RealSettings:
    """Everything one run needs (the CLI fills it; tests use tiny values)."""

    fixtures: Path  # the real-data fixtures folder
    work: Path  # output folder
    max_frames: int  # frames per clip reconstructed (the first ones)
    crop_size: int = 224  # aligned crop side, pixels
    texture_size: int = 256  # UV texture side, texels (sampled from a 2·T crop)
    models: tuple[str, ...] = ("bfm", "procedural")  # face models: "bfm" (3DDFA BFM09) and/or "procedural"
    fitter: tuple[tuple[str, Any], ...] = ()  # FitterConfig overrides
    feather: float | None = None  # feather width of the paste mask in texture-crop px; None: crop / 64
    detect_all: bool = True  # step 1 over every frame (else over the reconstructed frames only)
    threads: int = 1  # torch threads
    videos: tuple[str, ...] = ()  # clip files; (): every fixtures/videos/*.mp4


def face_model_spec(name: str, fixtures: Path) -> str:
    """``PreprocessConfig.face_model`` of a model name."""
    if name == "bfm":
        return f"3ddfa:{fixtures / 'facemodels' / 'bfm_3ddfa'}"
    if name == "procedural":
        return "procedural"
    raise ValueError(f"unknown face model {name!r}: use 'bfm' or 'procedural'")


# --------------------------------------------------------------------------- step 1
def detection_rates(video: Path, max_frames: int | None) -> dict[str, Any]:
    """dlib HOG detection + tracking over the clip's frames (the first ``max_frames``; None: all)."""
    from emoedit.data.detection import DlibFaceDetector

    frames, info = read_video(video)
    if max_frames is not None:
        frames = frames[:max_frames]
    start = time.perf_counter()
    detector = DlibFaceDetector(detector="hog", upsample=0)
    detections = detector.detect_batch(frames)
    track = track_faces(detections, (info.height, info.width), min_face_size=DEFAULT_MIN_FACE_SIZE_PX, max_gap=5)
    seconds = time.perf_counter() - start
    count = len(detections)
    detected = sum(1 for d in detections if d)
    valid = int(track.valid.sum())
    return {
        "frames": count,
        "frames_with_detection": detected,
        "detected_percent": 100.0 * detected / max(1, count),
        "frames_tracked": valid,
        "tracked_percent": 100.0 * valid / max(1, count),
        "frames_with_several_faces": int(sum(1 for d in detections if len(d) > 1)),
        "interpolated_ranges": track.report.get("interpolated_ranges", []),
        "unfilled_ranges": track.report.get("unfilled_ranges", []),
        "seconds": seconds,
        "frame_size": [info.height, info.width],
    }


# --------------------------------------------------------------------------- step 3
def feathered(mask: Tensor, radius: int) -> Tensor:
    """(B,1,H,W) {0,1} → [0,1]: eroded by ``radius`` px, then box-blurred by ``radius``: 0 outside
    the mask, 1/(2·radius + 1) on its outermost pixels, 1 from 2·radius px inside; never above the mask."""
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    eroded = 1.0 - F.max_pool2d(1.0 - mask, size, stride=1, padding=radius)
    return F.avg_pool2d(eroded, size, stride=1, padding=radius, count_include_pad=False).clamp(0.0, 1.0)


def psnr(a: Tensor, b: Tensor, weight: Tensor | None = None) -> Tensor:
    """(B,) PSNR in dB of images in [0,1] (B,3,H,W), over the pixels where ``weight`` (B,1,H,W) > 0.5."""
    squared = (a - b).pow(2).mean(dim=1, keepdim=True)
    if weight is None:
        mse = squared.flatten(1).mean(dim=1)
    else:
        region = (weight > 0.5).to(squared.dtype)
        mse = (squared * region).flatten(1).sum(dim=1) / region.flatten(1).sum(dim=1).clamp(min=1.0)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-12))


@dataclass(frozen=True)
class RoundTrip:
    """The no-edit round trip of a batch of frames."""

    frames: Tensor  # (B,3,H,W) float [0,1] the pasted result, uint8-quantised
    region: Tensor  # (B,1,H,W) float the hard face mask warped into the frame
    psnr_face: Tensor  # (B,) dB
    psnr_frame: Tensor  # (B,) dB


def round_trip(model: MorphableModel, coeffs: Tensor, uv_texture: Tensor, visibility: Tensor, transform: CropTransform,
               frames: Tensor, *, renderer: MeshRenderer, feather_px: int) -> RoundTrip:
    """Render ``coeffs`` with the UV texture in the crop of ``transform`` and paste it into ``frames``.

    coeffs (B,L) for the camera of the crop size ``renderer.image_size``; uv_texture (B,3,T,T)
    and visibility (B,1,T,T) in [0,1]; frames (B,3,H,W) float [0,1].
    """
    dims = assert_shape(frames, ("B", 3, "H", "W"), "frames")
    assert_shape(uv_texture, ("B", 3, "T", "T"), "uv_texture", dims)
    size = renderer.image_size
    camera = PerspectiveCamera().scaled(size)
    with torch.no_grad():
        screen = model(coeffs, camera).vertices_screen
        uv = model.uv_coords
        render = renderer(screen, model.triangles, uv_coords=uv, uv_texture=uv_texture)
        seen = renderer(screen, model.triangles, uv_coords=uv, uv_texture=visibility.expand(-1, 3, -1, -1)).image[:, :1]
        hard = render.mask * (seen > 0.5).to(render.mask.dtype)
        soft = feathered(hard, feather_px)
        pasted = paste_crop_into_frame(render.image, transform, frames, soft)
        pasted = pasted.clamp(0.0, 1.0).mul(255.0).round().div(255.0)
        region = paste_crop_into_frame(torch.ones_like(hard), transform, torch.zeros_like(frames[:, :1]), hard)
    return RoundTrip(frames=pasted, region=region, psnr_face=psnr(pasted, frames, region), psnr_frame=psnr(pasted, frames))


def evaluate_clip(model: MorphableModel, template: AlignmentTemplate, coeffs_reader: CacheReader,
                  textures_reader: CacheReader, clip: str, video: Path, *, texture_crop: int, feather_px: int,
                  example: Path | None) -> dict[str, Any]:
    """Step 3 for one clip of one model's caches."""
    data = coeffs_reader.load_clip(clip, fields=("coeffs", "landmarks", "landmarks_detected", "transform"))
    textures = textures_reader.load_clip(clip, fields=("uv_texture", "visibility"))
    crop_size = int(coeffs_reader.attributes["crop_size"])
    error = torch.linalg.norm(data["landmarks"] - data["landmarks_detected"], dim=-1).mean(dim=1)  # (T,) crop px
    iod = torch.linalg.norm(data["landmarks_detected"][:, LEFT_EYE_OUTER] - data["landmarks_detected"][:, RIGHT_EYE_OUTER], dim=-1)
    all_frames, info = read_video(video)
    indices = [int(i) for i in data["frame"]]
    crop_transform = CropTransform.from_tensor(data["transform"])
    points_frame = crop_transform.crop_to_frame(data["landmarks_detected"])
    tex_transform = face_crop_transform(points_frame, template, frame_size=(info.height, info.width), crop_size=texture_crop)
    renderer = MeshRenderer(image_size=texture_crop, backend="torch", cull_backfaces=True)
    face_psnr, frame_psnr, region_px = [], [], []
    for start in range(0, len(indices), RENDER_CHUNK):
        rows = slice(start, start + RENDER_CHUNK)
        frames = torch.from_numpy(all_frames[indices[rows]]).permute(0, 3, 1, 2).float().div(255.0)
        result = round_trip(model, data["coeffs"][rows].float(), textures["uv_texture"][rows].float().div(255.0),
                            textures["visibility"][rows].float(), tex_transform[rows], frames, renderer=renderer,
                            feather_px=feather_px)
        face_psnr.append(result.psnr_face)
        frame_psnr.append(result.psnr_frame)
        region_px.append((result.region > 0.5).flatten(1).sum(dim=1).float())
        if example is not None and start == 0:
            write_example(example, frames[0], result.frames[0])
    face_all, frame_all = torch.cat(face_psnr), torch.cat(frame_psnr)
    return {
        "frames": len(indices),
        "crop_size": crop_size,
        "landmark_px_224": float(error.mean()) * DEEP3D_CROP / crop_size,
        "landmark_nme_interocular": float((error / iod).mean()),
        "landmark_px_224_max_frame": float(error.max()) * DEEP3D_CROP / crop_size,
        "psnr_face_db": float(face_all.mean()),
        "psnr_face_db_min": float(face_all.min()),
        "psnr_frame_db": float(frame_all.mean()),
        "face_region_percent_of_frame": float(torch.cat(region_px).mean()) * 100.0 / (info.height * info.width),
        "visible_texel_percent": float(textures["visibility"].float().mean()) * 100.0,
    }


def write_example(path: Path, original: Tensor, result: Tensor) -> None:
    """original | round trip | 4 × |difference| as one PNG."""
    from PIL import Image

    diff = (original - result).abs().mul(4.0).clamp(0.0, 1.0)
    row = torch.cat([original, result, diff], dim=2)
    image = row.permute(1, 2, 0).mul(255.0).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")


# --------------------------------------------------------------------------- run
def run_real(settings: RealSettings) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; writes and returns the results."""
    torch.set_num_threads(settings.threads)
    settings.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    videos = [Path(v) for v in settings.videos] or sorted((settings.fixtures / "videos").glob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"{settings.fixtures / 'videos'}: no .mp4 clips")
    sources = {s.clip_id: s for s in read_inputs("videos", [str(v) for v in videos])}
    detection = {cid: detection_rates(s.path, None if settings.detect_all else settings.max_frames)
                 for cid, s in sources.items()}
    models: dict[str, Any] = {}
    for name in settings.models:
        spec = face_model_spec(name, settings.fixtures)
        output = settings.work / name
        config = PreprocessConfig(
            input_kind="videos", inputs=tuple(str(v) for v in videos), output_dir=str(output), stage="all",
            face_model=spec, crop_size=settings.crop_size, detector="dlib-hog", max_frames=settings.max_frames,
            reconstructor="fitter", fitter=dict(settings.fitter), texture_size=settings.texture_size, workers=1,
            torch_threads=settings.threads, progress=False,
        )
        start = time.perf_counter()
        summary = run_preprocess(config)
        preprocess_seconds = time.perf_counter() - start
        model = load_face_model(spec, None)
        template = AlignmentTemplate.from_face_model(model)
        coeffs_reader = CacheReader.open(output / "coeffs")
        textures_reader = CacheReader.open(output / "textures")
        texture_crop = int(coeffs_reader.attributes["texture"]["texture_crop_size"])
        feather_px = int(round(settings.feather if settings.feather is not None else texture_crop / 64))
        clips: dict[str, Any] = {}
        start = time.perf_counter()
        for clip in [c for c in coeffs_reader.clips if c in sources]:  # a resumed cache may hold other clips
            example = settings.work / "examples" / f"{name}_{clip.replace('/', '_')}.png"
            clips[clip] = evaluate_clip(model, template, coeffs_reader, textures_reader, clip, sources[clip].path,
                                        texture_crop=texture_crop, feather_px=feather_px, example=example)
        models[name] = {
            "face_model": spec,
            "model_name": model.name,
            "num_vertices": model.num_vertices,
            "num_faces": model.num_faces,
            "layout": {k: s.stop - s.start for k, s in model.layout.slices.items()},
            "preprocess": summary.to_json(),
            "preprocess_seconds": preprocess_seconds,
            "evaluation_seconds": time.perf_counter() - start,
            "texture_crop_size": texture_crop,
            "feather_px": feather_px,
            "clips": clips,
        }
    results = {
        "script": "scripts/recon_real_clips.py",
        "machine": machine_info(),
        "settings": {"max_frames": settings.max_frames, "crop_size": settings.crop_size,
                     "texture_size": settings.texture_size, "fitter": dict(settings.fitter),
                     "detect_all": settings.detect_all},
        "detection": detection,
        "models": models,
        "seconds_total": time.perf_counter() - started,
    }
    atomic_write_text(settings.work / "recon_real_clips.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(settings.work / "recon_real_clips.md", format_tables(results) + "\n")
    return results


def format_tables(results: dict[str, Any]) -> str:
    """Detection table and per model × clip reconstruction table (markdown)."""
    lines = ["| clip | frames | frames with a detected face | frames with a tracked face | several faces |",
             "|---|---:|---:|---:|---:|"]
    for clip, d in results["detection"].items():
        lines.append(f"| {clip} | {d['frames']} | {d['frames_with_detection']} ({d['detected_percent']:.1f} %) | "
                     f"{d['frames_tracked']} ({d['tracked_percent']:.1f} %) | {d['frames_with_several_faces']} |")
    lines += ["", "| face model | clip | frames | landmark reprojection (px @224) | NME (inter-ocular) | "
              "PSNR face region (dB) | PSNR whole frame (dB) | face region (% of frame) | fit time (s / frame) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, model in results["models"].items():
        reconstruct = model["preprocess"]["stage_seconds"].get("reconstruct")
        frames_total = max(1, sum(c["frames"] for c in model["clips"].values()))
        fit_time = "– (resumed)" if reconstruct is None else f"{reconstruct / frames_total:.2f}"
        for clip, c in model["clips"].items():
            lines.append(f"| {name} | {clip} | {c['frames']} | {c['landmark_px_224']:.2f} | "
                         f"{c['landmark_nme_interocular']:.4f} | {c['psnr_face_db']:.2f} | {c['psnr_frame_db']:.2f} | "
                         f"{c['face_region_percent_of_frame']:.1f} | {fit_time} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> RealSettings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=REPO_ROOT.parent / "shared" / "fixtures", help="real-data fixtures")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "outputs" / "results" / "recon_real", help="output folder")
    parser.add_argument("--max-frames", type=int, default=50, help="frames per clip reconstructed (the first ones)")
    parser.add_argument("--crop-size", type=int, default=224, help="aligned crop side, pixels")
    parser.add_argument("--texture-size", type=int, default=256, help="UV texture side, texels")
    parser.add_argument("--models", default="bfm,procedural", help="comma-separated face models: bfm, procedural")
    parser.add_argument("--fitter", action="append", default=None, metavar="NAME=VALUE",
                        help="FitterConfig override, repeatable (default: photo_steps=%d, see the module "
                             "docstring; give --fitter photo_steps=100 for the library default)" % DEFAULT_PHOTO_STEPS)
    parser.add_argument("--no-detect-all", action="store_true", help="detection rates over the reconstructed frames only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    fitter = []
    for item in args.fitter if args.fitter is not None else [f"photo_steps={DEFAULT_PHOTO_STEPS}"]:
        key, _, value = item.partition("=")
        fitter.append((key, json.loads(value) if value not in ("", None) else value))
    return RealSettings(
        fixtures=args.fixtures.resolve(), work=args.work.resolve(), max_frames=args.max_frames, crop_size=args.crop_size,
        texture_size=args.texture_size, models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        fitter=tuple(fitter), detect_all=not args.no_detect_all, threads=args.threads,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    results = run_real(settings)
    print(f"{settings.max_frames} frames per clip, total {results['seconds_total']:.0f} s")
    print(format_tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
