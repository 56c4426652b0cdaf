"""The ``emoedit`` command line (thin: parse, call the library, report).

    emoedit demo [--preset quick|demo|gpu] [--out DIR] [--restart] [--evaluate]
    emoedit tour [--out DIR]
    emoedit bundle --out DIR --face-model F --recon CKPT ... | emoedit bundle --check DIR
    emoedit edit INPUT.mp4 --bundle DIR (--emotion E [--intensity A] | --schedule S) --out OUT.mp4
    emoedit batch-edit MANIFEST --bundle DIR --out DIR [--processes N]
    emoedit evaluate --config configs/evaluate/demo.yaml [key=value ...]
    emoedit synth --out DIR --preset {tiny,demo,demo_families,full} --seed N
    emoedit preprocess {mead,ffhq,videos} INPUT... --out DIR --stage {align,reconstruct,all} [...]
    emoedit directions --cache DIR --encoder CKPT --out directions.pt [--classifier CKPT --subject-temperature calibrate]
    emoedit face-model convert-bfm09 --bfm 01_MorphableModel.mat --exp Exp_Pca.bin --aux DIR --out BFM_model_front.mat
    emoedit face-model export {procedural,deep3d,3ddfa} [--path P] --out model.pt
    emoedit face-model info MODEL.pt
    emoedit video probe VIDEO

Training is ``python train.py <part> ...`` (see ``python train.py --help``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


class CliError(Exception):
    """An error to report on stderr with exit status 2 (no traceback)."""


def _cmd_convert_bfm09(args: argparse.Namespace) -> None:
    from emoedit.face_model import convert_bfm09

    out = convert_bfm09(args.bfm, args.exp, args.aux, args.out)
    print(f"wrote {out or args.out}")


def _load_face_model(source: str, path: str | None):
    from emoedit.face_model import MorphableModel

    if source == "procedural":
        return MorphableModel.procedural()
    if path is None:
        raise CliError(f"--path is required for source '{source}'")
    if source == "deep3d":
        return MorphableModel.from_deep3d_mat(path)
    if source == "3ddfa":
        return MorphableModel.from_3ddfa(path)
    raise CliError(f"unknown face model source '{source}'")


def _describe_face_model(model) -> str:
    layout = model.layout
    lines = [
        f"name: {model.name}",
        f"vertices: {model.num_vertices}  faces: {model.num_faces}",
        f"coefficients: {layout.size} = " + " + ".join(f"{k} {s.stop - s.start}" for k, s in layout.slices.items()),
    ]
    if getattr(model, "expression_names", None):
        lines.append(f"expression basis: {', '.join(model.expression_names)}")
    return "\n".join(lines)


def _cmd_face_model_export(args: argparse.Namespace) -> None:
    model = _load_face_model(args.source, args.path)
    model.save(args.out)
    print(_describe_face_model(model))
    print(f"wrote {args.out}")


def _cmd_face_model_info(args: argparse.Namespace) -> None:
    from emoedit.face_model import MorphableModel

    print(_describe_face_model(MorphableModel.load(args.model)))


def _cmd_video_probe(args: argparse.Namespace) -> None:
    from emoedit.video import probe_video

    info = probe_video(args.video)
    for key, value in vars(info).items() if hasattr(info, "__dict__") else info.__dataclass_fields__.items():
        print(f"{key}: {getattr(info, key)}")


def _cmd_synth(args: argparse.Namespace) -> None:
    from emoedit.data.synthetic import generate_world

    summary = generate_world(args.out, args.preset, args.seed, progress=not args.quiet)
    print(
        f"synthetic world '{summary.preset}' (seed {summary.seed}) in {summary.root}: "
        f"{summary.num_train_subjects}+{summary.num_unseen_subjects} subjects, {summary.num_clips} clips, "
        f"{summary.num_edited_clips} ground-truth edits, {summary.num_ffhq} stills; "
        f"rendered {sum(summary.rendered.values())}, skipped {sum(summary.skipped.values())}, "
        f"{summary.total_seconds:.0f} s"
    )


def _key_values(items: Sequence[str] | None, flag: str) -> dict:
    """``KEY=VALUE`` strings → dict with YAML-typed values (numbers, booleans)."""
    import yaml

    out: dict = {}
    for item in items or ():
        if "=" not in item:
            raise CliError(f"{flag}: expected KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _csv(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


def _cmd_preprocess(args: argparse.Namespace) -> None:
    import json

    from emoedit.data.preprocess import PreprocessConfig, run_preprocess

    values = {
        "input_kind": args.kind,
        "inputs": list(args.inputs),
        "input_root": args.input_root,
        "output_dir": args.out,
        "stage": args.stage,
        "subjects": _csv(args.subjects),
        "emotions": _csv(args.emotions),
        "views": _csv(args.views),
        "levels": [int(v) for v in _csv(args.levels)] if args.levels else None,
        "face_model": args.face_model,
        "alignment_template": args.template,
        "crop_size": args.crop_size,
        "detector": args.detector,
        "detect_upsample": args.detect_upsample,
        "max_gap": args.max_gap,
        "max_frames": args.max_frames,
        "frame_stride": args.frame_stride,
        "max_clips": args.max_clips,
        "reconstructor": args.reconstructor,
        "reconstructor_path": args.checkpoint,
        "refine": args.refine or None,
        "fitter": _key_values(args.fitter, "--fitter") or None,
        "texture_size": args.texture_size,
        "texture_region_min_cos": args.texture_region_min_cos,
        "texture_region_margin": args.texture_region_margin,
        "mouth_crop_size": args.mouth_size,
        "quality_filter": args.quality_filter,
        "filter": _key_values(args.filter, "--filter") or None,
        "workers": args.workers,
        "devices": list(args.devices or ()),
        "progress": False if args.no_progress else None,
        "fail_fast": args.fail_fast or None,
        "verify_checksums": args.verify_checksums or None,
    }
    config = PreprocessConfig.from_dict({k: v for k, v in values.items() if v is not None})
    summary = run_preprocess(config)
    report = {
        "stage": summary.stage,
        "caches": {k: str(v) for k, v in summary.caches.items()},
        "clips": summary.num_clips,
        "already_done": summary.clips_already_done,
        "written": summary.clips_written,
        "skipped": summary.clips_skipped,
        "failed": [list(f) for f in summary.failed],
        "records": summary.records_written,
        "frames_without_face": summary.frames_without_face,
        "frames_interpolated": summary.frames_interpolated,
        "filter": dict(summary.filter_counts),
        "seconds": round(summary.seconds, 1),
    }
    print(json.dumps(report, indent=2))
    if summary.clips_failed:
        raise CliError(f"{summary.clips_failed} clip(s) failed (listed above); re-run to retry them")


def _subject_temperature(value: str, *, classifier: str | None) -> float | str:
    """``--subject-temperature``: a positive finite number, or ``calibrate`` (needs ``--classifier``)."""
    import math

    from emoedit.editing.directions import CALIBRATE

    text = value.strip().lower()
    if text == CALIBRATE:
        if not classifier:
            raise CliError(f"--subject-temperature {CALIBRATE} needs --classifier (the subject classifier checkpoint)")
        return CALIBRATE
    try:
        tau = float(text)
    except ValueError:
        raise CliError(f"--subject-temperature: expected a positive number or '{CALIBRATE}', got '{value}'") from None
    if not (tau > 0 and math.isfinite(tau)):
        raise CliError(f"--subject-temperature: must be a positive finite number (1 = the paper), got '{value}'")
    return tau


def _cmd_directions(args: argparse.Namespace) -> None:
    import torch

    from emoedit.editing.directions import TEMPERATURE_RECORD_KEY, run_directions

    subject_temperature = _subject_temperature(args.subject_temperature, classifier=args.classifier)
    # --classifier: run_directions loads it once, for the subjects (its order; over --subjects) and the calibration
    subjects = None if args.classifier else _csv(args.subjects)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    excluded: list[str] = []
    if args.exclude_clips:
        path = Path(args.exclude_clips)
        try:
            excluded = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as err:
            raise CliError(f"--exclude-clips {path}: {err.strerror or err}") from None
    result = run_directions(
        args.cache,
        args.encoder,
        args.out,
        device,
        args.batch_size,
        subjects=subjects,
        views=None if args.views == "all" else _csv(args.views),
        level=args.level,
        missing=args.missing,
        emotions=_csv(args.emotions),
        num_workers=args.num_workers,
        exclude_clips=excluded,
        classifier=args.classifier or None,
        subject_temperature=subject_temperature,
    )
    print(result.describe())
    if TEMPERATURE_RECORD_KEY in result.extra:
        from emoedit.editing.subject_temperature import describe_calibration

        print(describe_calibration(result.extra[TEMPERATURE_RECORD_KEY]))
    print(f"wrote {args.out}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from emoedit.demo.run import run_demo

    summary = run_demo(args.preset, Path(args.out), restart=args.restart, progress=not args.no_progress,
                       evaluate=args.evaluate)
    print(f"demo finished in {summary.run_seconds / 60:.1f} min: {summary.out_dir}")


def _cmd_tour(args: argparse.Namespace) -> None:
    from emoedit.tour import run_tour

    run_tour(out_dir=Path(args.out), preset=args.preset)


def _register_pipeline_commands(sub: argparse._SubParsersAction) -> None:
    """The product's commands, each registered by its own module (emoedit/pipeline, emoedit/evaluation)."""
    from emoedit.pipeline import batch_command, bundle_command, edit_command

    bundle_command.register(sub)
    edit_command.register(sub)
    batch_command.register(sub)

    from emoedit.evaluation.command import register as register_evaluate

    register_evaluate(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoedit", description="Continuous emotion editing of talking-head video.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole method on the built-in synthetic world: world, preprocessing, "
                          "every part trained, bundle, edits of an unseen subject, evaluation")
    demo.add_argument("--preset", default="demo", choices=["quick", "demo", "gpu"],
                      help="quick (~3 min CPU), demo (~18 min on 2 CPU cores) or gpu (CUDA, paper texture size)")
    demo.add_argument("--out", default="outputs/demo", help="output folder (re-running continues where it stopped)")
    demo.add_argument("--restart", action="store_true", help="delete the folder's finished stages and start over")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (for log files)")
    demo.add_argument("--evaluate", action="store_true",
                      help="then train the judges and baselines and run emoedit evaluate (Tables 1 and 2)")
    demo.set_defaults(func=_cmd_demo)

    tour = sub.add_parser("tour", help="a one-minute tour of the foundation (face model, renderer, UV, video)")
    tour.add_argument("--preset", default="demo", choices=["quick", "demo"], help="size of the tour")
    tour.add_argument("--out", default="outputs/tour", help="output folder")
    tour.set_defaults(func=_cmd_tour)

    synth = sub.add_parser("synth", help="generate the built-in synthetic world (MEAD/FFHQ layout + exact truth)")
    synth.add_argument("--out", required=True, help="output folder (re-running continues where it stopped)")
    synth.add_argument("--preset", default="demo", choices=["tiny", "demo", "demo_families", "full"],
                       help="world size (demo_families: demo with look-alike subject families)")
    synth.add_argument("--seed", type=int, default=0, help="world seed (the same seed gives the same world)")
    synth.add_argument("--quiet", action="store_true", help="no progress bars")
    synth.set_defaults(func=_cmd_synth)

    pre = sub.add_parser("preprocess", help="detect, align, reconstruct and cache MEAD / FFHQ / any videos")
    pre.add_argument("kind", choices=["mead", "ffhq", "videos"], help="input layout")
    pre.add_argument("inputs", nargs="+", help="mead/ffhq: the root folder; videos: video files and/or list files")
    pre.add_argument("--out", required=True, help="cache folder: <out>/{frames,coeffs,textures,mouths}")
    pre.add_argument("--stage", choices=["align", "reconstruct", "all"])
    pre.add_argument("--input-root", help="videos: root that list entries are confined to")
    pre.add_argument("--subjects", help="mead: comma-separated subjects to keep")
    pre.add_argument("--emotions", help="mead: comma-separated emotions to keep")
    pre.add_argument("--views", help="mead: comma-separated views to keep (e.g. front)")
    pre.add_argument("--levels", help="mead: comma-separated levels to keep")
    pre.add_argument("--face-model", help="auto | procedural | 3ddfa:DIR | deep3d:MAT | FILE.pt")
    pre.add_argument("--template", help="Deep3DFaceRecon similarity_Lm3D_all.mat (default: the face model's landmarks)")
    pre.add_argument("--crop-size", type=int, help="aligned crop side, pixels")
    pre.add_argument("--detector", choices=["auto", "dlib-hog", "dlib-cnn", "truth"])
    pre.add_argument("--detect-upsample", type=int, help="dlib: upsample frames ×2 this many times")
    pre.add_argument("--max-gap", type=int, help="longest run of faceless frames interpolated")
    pre.add_argument("--max-frames", type=int, help="at most this many frames per clip")
    pre.add_argument("--frame-stride", type=int, help="use every n-th frame")
    pre.add_argument("--max-clips", type=int, help="at most this many clips")
    pre.add_argument("--reconstructor", choices=["fitter", "checkpoint", "deep3d", "truth"])
    pre.add_argument("--checkpoint", help="recon .ckpt (checkpoint) or Deep3D epoch_20.pth (deep3d)")
    pre.add_argument("--refine", action="store_true", help="refine a regressor's estimate with the fitter")
    pre.add_argument("--fitter", nargs="*", metavar="KEY=VALUE", help="fitter settings (FitterConfig fields)")
    pre.add_argument("--texture-size", type=int, help="UV texture side, texels")
    pre.add_argument("--texture-region-min-cos", type=float, metavar="COS",
                     help="face region of the textures: texels whose frontal normal faces the camera by a cosine "
                          "below COS (the rim: background, silhouette) are cached mid-grey (default: every texel)")
    pre.add_argument("--texture-region-margin", type=int, metavar="TEXELS",
                     help="with --texture-region-min-cos: move the rim this many texels inward (default 0)")
    pre.add_argument("--mouth-size", type=int, help="mouth crop side, pixels")
    pre.add_argument("--quality-filter", action=argparse.BooleanOptionalAction, default=None,
                     help="FFHQ-style filter (default: on for ffhq inputs)")
    pre.add_argument("--filter", nargs="*", metavar="KEY=VALUE", help="filter thresholds (FaceFilterConfig fields)")
    pre.add_argument("--workers", type=int, help="processes (ranks)")
    pre.add_argument("--devices", nargs="*", help="devices of the ranks (default: cuda:r%%n if CUDA, else cpu)")
    pre.add_argument("--no-progress", action="store_true")
    pre.add_argument("--fail-fast", action="store_true", help="re-raise the first unexpected per-clip error")
    pre.add_argument("--verify-checksums", action="store_true", help="verify every shard when finalising")
    pre.set_defaults(func=_cmd_preprocess)

    directions = sub.add_parser("directions", help="solve the edit directions d[subject, emotion] (eq. 5) of a texture cache")
    directions.add_argument("--cache", required=True, help="textures cache folder (preprocess <out>/textures)")
    directions.add_argument("--encoder", required=True, help="texture_encoder checkpoint (train.py texture_encoder)")
    directions.add_argument("--out", required=True, help="directions file to write (.pt)")
    directions.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    directions.add_argument("--batch-size", type=int, default=32, help="textures per encoder pass")
    directions.add_argument("--subjects", help="comma-separated training subjects, in row order (default: all)")
    directions.add_argument("--classifier", help="take the subjects and their order from a classifier checkpoint")
    directions.add_argument("--subject-temperature", default="1", metavar="TAU",
                            help="softmax temperature of eq. 4's subject weights stored with the directions: a "
                                 "positive number (default 1 = the paper) or 'calibrate' (leave-one-subject-out on "
                                 "the neutral textures; needs --classifier)")
    directions.add_argument("--views", default="front", help="comma-separated views to use, or 'all'")
    directions.add_argument("--level", type=int, default=3, help="intensity level of the emotional means (MEAD max: 3)")
    directions.add_argument("--emotions", help="comma-separated emotions to solve (default: all 7)")
    directions.add_argument("--missing", choices=["error", "mean"], default="error",
                            help="a subject without some emotion: error, or the mean of the other subjects' directions")
    directions.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading shards")
    directions.add_argument("--exclude-clips", metavar="FILE",
                            help="text file of clip ids (the cache's 'clip' metadata), one per line, to leave out")
    directions.set_defaults(func=_cmd_directions)

    fm = sub.add_parser("face-model", help="face model files: conversion, export, inspection")
    fm_sub = fm.add_subparsers(dest="face_model_command", required=True)
    conv = fm_sub.add_parser(
        "convert-bfm09",
        help="one-time conversion of the licensed BFM09 + expression basis into Deep3DFaceRecon's BFM_model_front.mat",
    )
    conv.add_argument("--bfm", required=True, help="01_MorphableModel.mat (Basel Face Model 2009)")
    conv.add_argument("--exp", required=True, help="Exp_Pca.bin (Guo et al. expression basis)")
    conv.add_argument("--aux", required=True, help="folder with BFM_front_idx.mat, BFM_exp_idx.mat, facemodel_info.mat, std_exp.txt")
    conv.add_argument("--out", required=True, help="output BFM_model_front.mat")
    conv.set_defaults(func=_cmd_convert_bfm09)
    export = fm_sub.add_parser("export", help="save a face model as an emoedit .pt file")
    export.add_argument("source", choices=["procedural", "deep3d", "3ddfa"])
    export.add_argument("--path", help="BFM_model_front.mat (deep3d) or the 3DDFA BFM folder (3ddfa)")
    export.add_argument("--out", required=True)
    export.set_defaults(func=_cmd_face_model_export)
    info = fm_sub.add_parser("info", help="describe a saved face model")
    info.add_argument("model")
    info.set_defaults(func=_cmd_face_model_info)

    _register_pipeline_commands(sub)

    video = sub.add_parser("video", help="video utilities")
    video_sub = video.add_subparsers(dest="video_command", required=True)
    probe = video_sub.add_parser("probe", help="print a video's size, fps, frame count and audio")
    probe.add_argument("video")
    probe.set_defaults(func=_cmd_video_probe)
    return parser


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """User-facing RuntimeErrors of long jobs (reported without a traceback)."""
    from emoedit.demo.stages import StageError
    from emoedit.demo.training import TrainingError
    from emoedit.video import VideoError

    return (StageError, TrainingError, VideoError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CliError, FileNotFoundError, ValueError, OSError, *_runtime_errors()) as err:
        print(f"emoedit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
