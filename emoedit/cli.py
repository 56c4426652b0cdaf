"""The ``emoedit`` command line (thin: parse, call the library, report).

    emoedit demo [--preset quick|demo] [--out DIR]
    emoedit synth --out DIR --preset {tiny,demo,full} --seed N
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


def _cmd_demo(args: argparse.Namespace) -> None:
    from emoedit.tour import run_tour

    run_tour(out_dir=Path(args.out), preset=args.preset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoedit", description="Continuous emotion editing of talking-head video.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on the built-in synthetic world")
    demo.add_argument("--preset", default="demo", choices=["quick", "demo"], help="size of the run")
    demo.add_argument("--out", default="outputs/demo", help="output folder")
    demo.set_defaults(func=_cmd_demo)

    synth = sub.add_parser("synth", help="generate the built-in synthetic world (MEAD/FFHQ layout + exact truth)")
    synth.add_argument("--out", required=True, help="output folder (re-running continues where it stopped)")
    synth.add_argument("--preset", default="demo", choices=["tiny", "demo", "full"], help="world size")
    synth.add_argument("--seed", type=int, default=0, help="world seed (the same seed gives the same world)")
    synth.add_argument("--quiet", action="store_true", help="no progress bars")
    synth.set_defaults(func=_cmd_synth)

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

    video = sub.add_parser("video", help="video utilities")
    video_sub = video.add_subparsers(dest="video_command", required=True)
    probe = video_sub.add_parser("probe", help="print a video's size, fps, frame count and audio")
    probe.add_argument("video")
    probe.set_defaults(func=_cmd_video_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CliError, FileNotFoundError, ValueError, OSError) as err:
        print(f"emoedit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
