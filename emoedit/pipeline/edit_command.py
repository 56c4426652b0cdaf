"""``emoedit edit``: the command line of :class:`~emoedit.pipeline.editor.VideoEditor`.

    emoedit edit INPUT.mp4 --bundle DIR --emotion happy --intensity 0.8 --out OUT.mp4
    emoedit edit INPUT.mp4 --bundle DIR --out OUT.mp4 \\
        --schedule "0s neutral; 1.5s happy 0.3; 4s happy 1.0; 6s 0.5 sad + 0.5 angry"
      [--subject NAME] [--no-classifier --no-shape --no-texture --no-smoothing --no-teeth]
      [--texture-mode replace|residual|warp] [--teeth-gate F] [--device cpu|cuda] [--batch-size N]
      [--save-intermediates DIR] [--report OUT.json] [--detect-max-side N] [--detect-upsample K] [--bf16] [--crf Q]

``--emotion`` takes a name or an expression of the schedule grammar (``"0.5 sad + 0.5
angry"``; :mod:`emoedit.editing.emotion_code`); ``--intensity`` (default 1.0) multiplies
its strengths: 1.0 is MEAD's strongest level (α = j / E_m), larger values extrapolate
(reported as a warning). ``--schedule`` gives keyframes ``TIMEs EXPRESSION`` separated by
``;``, interpolated linearly between them.

Thin: parse, check the inputs early (the video is probed before the bundle loads), call the
library, print a summary. User errors become :class:`emoedit.cli.CliError` (exit status 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: ``--texture-mode`` values: :data:`emoedit.pipeline.editor.TEXTURE_MODES` (a test checks they agree; the
#: editor module is not imported when the parser is built, to keep ``--help`` fast).
TEXTURE_MODE_CHOICES: tuple[str, ...] = ("replace", "residual", "warp")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``edit`` subcommand to ``emoedit``'s subparsers; returns its parser."""
    parser = subparsers.add_parser(
        "edit", help="edit the emotion of a talking-head video (continuous intensity, schedules)",
        description="Edit the emotion of a talking-head video with a trained bundle (METHOD.md §2).",
    )
    parser.add_argument("input", help="input video (a talking head with a neutral face)")
    parser.add_argument("--bundle", required=True, help="bundle folder of frozen parts (emoedit.pipeline.bundle)")
    parser.add_argument("--out", required=True, help="output video (.mp4, .mkv, .mov); written atomically")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--emotion", help="target emotion: a name (happy, angry, sad, surprised, fear, disgusted, "
                                           "contempt, neutral) or a mixture, e.g. '0.5 sad + 0.5 angry'")
    target.add_argument("--schedule", help="emotion over time, e.g. '0s neutral; 1.5s happy 0.3; 4s happy 1.0'")
    parser.add_argument("--intensity", type=float, default=None,
                        help="strength with --emotion (default 1.0 = MEAD's strongest level; >1 extrapolates)")
    add_edit_option_arguments(parser, subject_help="a training subject's name: use its own directions (eq. 3)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--detect-max-side", type=int, default=None,
                        help="run dlib on frames downscaled to this longest side (faster on HD video)")
    parser.add_argument("--detect-upsample", type=int, default=0,
                        help="dlib: upsample frames x2 this many times before detection (1 finds faces down to ~40 px)")
    parser.add_argument("--report", metavar="OUT.json", help="write the edit report as JSON")
    parser.set_defaults(func=run_edit)
    return parser


def add_edit_option_arguments(parser: argparse.ArgumentParser, *, subject_help: str) -> None:
    """The switches of :class:`~emoedit.pipeline.editor.EditOptions` (``emoedit edit`` and ``batch-edit``)."""
    group = parser.add_argument_group("edit options")
    group.add_argument("--subject", help=subject_help)
    group.add_argument("--no-classifier", action="store_true",
                       help="ablation: one mean direction per emotion instead of the classifier mixture (eq. 4)")
    group.add_argument("--no-shape", action="store_true", help="ablation: keep the reconstructed geometry")
    group.add_argument("--no-texture", action="store_true", help="ablation: keep the frame's own texture")
    group.add_argument("--no-smoothing", action="store_true", help="no temporal smoothing of expression and W+")
    group.add_argument("--no-teeth", action="store_true", help="no teeth completion")
    group.add_argument("--texture-mode", choices=TEXTURE_MODE_CHOICES, default="replace",
                       help="replace: render G(x) (the paper); residual: extracted texture + G(x) - G(x0); "
                            "warp: the frame's own pixels moved with the edited mesh + G(x) - G(x0)")
    group.add_argument("--teeth-gate", type=float, default=0.0, metavar="F",
                       help="warp mode: complete teeth in proportion to how far the edit moved the inner lips, "
                            "fully from F x the mouth width (e.g. 0.1; 0: always)")
    group.add_argument("--smoothing-window", type=int, default=None,
                       help="half window l of the temporal smoothing (2l+1 frames; default: the bundle's)")
    group.add_argument("--batch-size", type=int, default=16, help="frames per network call")
    group.add_argument("--crf", type=float, default=18.0, help="x264 quality of the output (0 lossless .. 51)")
    group.add_argument("--bf16", action="store_true", help="bfloat16 for the encoder, classifier, t-GAN and "
                                                           "regressor (faster on CPUs with AVX-512 BF16 / GPUs)")
    group.add_argument("--save-intermediates", metavar="DIR", help="write per-frame textures, renders, latents")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def edit_options_from_args(args: argparse.Namespace) -> Any:
    """:class:`~emoedit.pipeline.editor.EditOptions` from the switches of :func:`add_edit_option_arguments`."""
    from emoedit.cli import CliError
    from emoedit.pipeline.editor import EditError, EditOptions

    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.smoothing_window is not None and args.smoothing_window < 0:
        raise CliError(f"--smoothing-window must be >= 0, got {args.smoothing_window}")
    if args.subject is not None and args.no_classifier:
        raise CliError("--subject (eq. 3) and --no-classifier (mean directions) exclude each other")
    try:
        return EditOptions(
            use_classifier=not args.no_classifier, edit_shape=not args.no_shape, edit_texture=not args.no_texture,
            smoothing=not args.no_smoothing, teeth=not args.no_teeth, subject=args.subject,
            texture_mode=args.texture_mode, teeth_gate=args.teeth_gate, batch_size=args.batch_size,
            smoothing_half_window=args.smoothing_window, progress=not args.quiet,
            save_intermediates=args.save_intermediates, crf=args.crf, bf16=args.bf16,
        )
    except EditError as error:
        raise CliError(str(error)) from None


def _schedule(args: argparse.Namespace) -> Any:
    from emoedit.cli import CliError
    from emoedit.editing.emotion_code import EmotionSchedule, parse_emotion

    if args.schedule is not None:
        if args.intensity is not None:
            raise CliError("--intensity goes with --emotion; a --schedule carries its own strengths")
        try:
            return EmotionSchedule.parse(args.schedule)
        except ValueError as error:
            raise CliError(f"--schedule {args.schedule!r}: {error}") from None
    intensity = 1.0 if args.intensity is None else float(args.intensity)
    if not intensity >= 0 or intensity == float("inf"):
        raise CliError(f"--intensity must be a finite number >= 0, got {args.intensity}")
    try:
        code = parse_emotion(args.emotion)
    except ValueError as error:
        raise CliError(f"--emotion {args.emotion!r}: {error}") from None
    return EmotionSchedule.constant(code * intensity)


def run_edit(args: argparse.Namespace) -> None:
    """The ``emoedit edit`` handler."""
    import torch

    from emoedit.atomic_io import atomic_write_text
    from emoedit.cli import CliError
    from emoedit.pipeline.editor import EditError, VideoEditor
    from emoedit.video import VideoError, probe_video

    schedule = _schedule(args)
    if args.detect_max_side is not None and args.detect_max_side < 64:
        raise CliError(f"--detect-max-side must be >= 64 pixels, got {args.detect_max_side}")
    if not 0 <= args.detect_upsample <= 3:
        raise CliError(f"--detect-upsample must lie in 0..3, got {args.detect_upsample}")
    bundle = Path(args.bundle)
    if not bundle.is_dir():
        raise CliError(f"--bundle {bundle}: not a folder (a bundle of frozen parts is needed)")
    try:
        probe_video(args.input)
    except VideoError as error:
        raise CliError(str(error)) from None
    if Path(args.out).resolve() == Path(args.input).resolve():
        raise CliError(f"--out {args.out}: would overwrite the input video")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = edit_options_from_args(args)

    from emoedit.pipeline.bundle import load_bundle

    parts = load_bundle(bundle, device=device)
    detector, min_face_size = None, None
    if args.detect_max_side is not None or args.detect_upsample:
        from emoedit.data.detection import DlibFaceDetector
        from emoedit.data.preprocess import ScaledDetector
        from emoedit.pipeline.editor import DEFAULT_DLIB_MIN_FACE_PX

        detector = DlibFaceDetector(detector="hog", upsample=args.detect_upsample)
        if args.detect_max_side is not None:
            detector = ScaledDetector(detector, max_side=args.detect_max_side)
        min_face_size = DEFAULT_DLIB_MIN_FACE_PX
    try:
        editor = VideoEditor(parts=parts, options=options, detector=detector, min_face_size=min_face_size)
        report = editor.edit(args.input, schedule, args.out)
    except (EditError, VideoError) as error:
        raise CliError(str(error)) from None
    if args.report:
        atomic_write_text(args.report, json.dumps(report.to_json(), indent=2) + "\n")
    busy = sorted(((s, k) for k, s in report.seconds.items() if s > 0), reverse=True)[:4]
    print(f"edited {report.frames_with_face} of {report.num_frames} frames ({report.fps:g} fps) → {report.output}")
    print(f"schedule: {schedule}; texture: {report.details.get('texture_edit_mode')}, "
          f"teeth: {'on' if report.details.get('teeth_completion') else 'off'}; "
          f"{report.details.get('total_seconds', 0.0):.1f} s (" + ", ".join(f"{k} {s:.1f} s" for s, k in busy) + ")")
    for warning in report.warnings:
        print(f"warning: {warning}")
    if args.report:
        print(f"wrote {args.report}")


__all__ = ["register", "run_edit"]
