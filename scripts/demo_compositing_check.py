#!/usr/bin/env python
"""Face PSNR of edit variants against the synthetic truth, on every unseen subject of a demo run.

    .venv/bin/python scripts/demo_compositing_check.py --demo outputs/demo --out outputs/results/compositing \\
        [--subjects W013,M016] [--variants residual,warp,warp_gate,warp_gate_no_shape,...]

For each unseen subject's neutral front clip of the demo world, edits it with the demo's bundle to
all 7 emotions at strength 1 (dlib HOG upsampled once, as the demo) with each variant's
:class:`~emoedit.pipeline.editor.EditOptions`, and prints the face-region PSNR against the
world's ground-truth edits (``emoedit.demo.evaluation.evaluate_edits``, every frame) per emotion
and averaged, next to the unedited input's. Finished videos are reused on re-runs; ``results.json``
in ``--out`` holds every number. This is how docs/RESULTS.md ("The end-to-end demo") compared the
texture modes and the teeth gate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

BASE = {"texture_mode": "residual", "progress": False, "batch_size": 32, "preset": "veryfast"}
VARIANTS: dict[str, dict] = {
    "residual": {},
    "residual_no_teeth": {"teeth": False},
    "warp": {"texture_mode": "warp"},
    "warp_no_teeth": {"texture_mode": "warp", "teeth": False},
    "warp_gate": {"texture_mode": "warp", "teeth_gate": 0.1},
    "warp_gate_no_shape": {"texture_mode": "warp", "teeth_gate": 0.1, "edit_shape": False},
    "warp_gate_no_texture": {"texture_mode": "warp", "teeth_gate": 0.1, "edit_texture": False},
    "warp_gate_no_classifier": {"texture_mode": "warp", "teeth_gate": 0.1, "use_classifier": False},
    "warp_no_edit": {"texture_mode": "warp", "edit_shape": False, "edit_texture": False, "teeth": False},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", default="outputs/demo", help="an emoedit demo output folder (world/, bundle/)")
    parser.add_argument("--out", default="outputs/results/compositing", help="edited videos and results.json")
    parser.add_argument("--subjects", default=None, help="comma-separated unseen subjects (default: all)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from emoedit.atomic_io import atomic_write_text
    from emoedit.data.detection import DlibFaceDetector
    from emoedit.data.synthetic import SyntheticWorld
    from emoedit.demo.evaluation import EditedVideo, EditTargets, evaluate_edits
    from emoedit.editing.emotion_code import EMOTIONS, EmotionSchedule, emotion_code_from_alpha
    from emoedit.pipeline.bundle import load_bundle
    from emoedit.pipeline.editor import EditOptions, VideoEditor

    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    world = SyntheticWorld.open(Path(args.demo) / "world")
    parts = load_bundle(Path(args.demo) / "bundle", device="cpu")
    detector = DlibFaceDetector(detector="hog", upsample=1)
    subjects = args.subjects.split(",") if args.subjects else list(world.unseen_subjects)
    out = Path(args.out)
    results: dict[str, dict] = {}
    for subject in subjects:
        source = world.eval_clips(view="front", subject=subject)[0]
        targets = EditTargets.every(world, source, 1)  # the truths read once for every variant
        for name in variants:
            options = EditOptions(**{**BASE, **VARIANTS[name]})
            editor = VideoEditor(parts=parts, options=options, detector=detector)
            videos = []
            for emotion in EMOTIONS:
                path = out / subject / name / f"{emotion}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    editor.edit(source.video_path, EmotionSchedule.constant(emotion_code_from_alpha(emotion, 1.0)),
                                path)
                videos.append(EditedVideo(f"{emotion}_1.00", emotion, 1.0, path))
            scored = evaluate_edits(world, source, videos, frame_stride=1, fit_photo_steps=0, fit_render_size=0,
                                    progress=False, targets=targets)
            rows = {r["emotion"]: {"output_psnr_db": r["image"]["output_vs_truth"]["psnr_db"],
                                   "input_psnr_db": r["image"]["input_vs_truth"]["psnr_db"]} for r in scored["edits"]}
            results[f"{subject}/{name}"] = {"options": dataclasses.asdict(options), "per_emotion": rows}
            outs = [rows[e]["output_psnr_db"] for e in EMOTIONS]
            ins = [rows[e]["input_psnr_db"] for e in EMOTIONS]
            print(f"{subject} {name:<24} " + " ".join(f"{v:.2f}" for v in outs)
                  + f" | mean {sum(outs) / len(outs):.2f}  input {sum(ins) / len(ins):.2f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
