"""``emoedit batch-edit``: edit every video of a manifest with one bundle (see :mod:`emoedit.pipeline.batch`).

    emoedit batch-edit MANIFEST --bundle DIR --out DIR [--processes N] [--accelerator auto|cpu|gpu]
      [--subject NAME] [--no-classifier --no-shape --no-texture --no-smoothing --no-teeth]
      [--texture-mode replace|residual] [--smoothing-window N] [--batch-size N] [--crf Q]
      [--save-intermediates DIR] [--quiet]

The ablation switches build the :class:`~emoedit.pipeline.editor.EditOptions` of every row
(:func:`add_edit_option_arguments` / :func:`edit_options_from_args`; a row's ``subject``
column overrides ``--subject``). The lead wires :func:`register` into
:func:`emoedit.cli.build_parser`.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_edit_option_arguments(parser: argparse.ArgumentParser) -> None:
    """The switches of :class:`~emoedit.pipeline.editor.EditOptions`, named as in ``emoedit edit``."""
    group = parser.add_argument_group("edit options (as emoedit edit)")
    group.add_argument("--subject", help="a training subject's name: its own directions (eq. 3) for every row "
                                         "(a row's subject column overrides it)")
    group.add_argument("--no-classifier", action="store_true",
                       help="ablation: one mean direction per emotion instead of the classifier mixture (eq. 4)")
    group.add_argument("--no-shape", action="store_true", help="ablation: keep the reconstructed geometry")
    group.add_argument("--no-texture", action="store_true", help="ablation: keep the frame's own texture")
    group.add_argument("--no-smoothing", action="store_true", help="no temporal smoothing of expression and W+")
    group.add_argument("--no-teeth", action="store_true", help="no teeth completion")
    group.add_argument("--texture-mode", choices=["replace", "residual"], default="replace",
                       help="replace: render G(x) (the paper); residual: extracted texture + G(x) - G(x0)")
    group.add_argument("--smoothing-window", type=int, default=None,
                       help="half window l of the temporal smoothing (2l+1 frames; default: the bundle's)")
    group.add_argument("--batch-size", type=int, default=16, help="frames per network call")
    group.add_argument("--crf", type=float, default=18.0, help="x264 quality of the outputs (0 lossless .. 51)")
    group.add_argument("--save-intermediates", metavar="DIR",
                       help="write per-frame textures, renders, latents (one sub-folder per output)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def edit_options_from_args(args: argparse.Namespace) -> Any:
    """:class:`~emoedit.pipeline.editor.EditOptions` from the switches of :func:`add_edit_option_arguments`."""
    from emoedit.cli import CliError
    from emoedit.pipeline.editor import EditError, EditOptions

    try:
        return EditOptions(
            use_classifier=not args.no_classifier, edit_shape=not args.no_shape, edit_texture=not args.no_texture,
            smoothing=not args.no_smoothing, teeth=not args.no_teeth, subject=args.subject,
            texture_mode=args.texture_mode, batch_size=args.batch_size, smoothing_half_window=args.smoothing_window,
            progress=not args.quiet, save_intermediates=args.save_intermediates, crf=args.crf,
        )
    except EditError as error:
        raise CliError(str(error)) from None


def register(subparsers: Any) -> None:
    """Add the ``batch-edit`` subcommand to ``subparsers`` (``argparse`` sub-parsers action)."""
    p = subparsers.add_parser("batch-edit", help="edit every video of a CSV/JSONL manifest (resumable, multi-process)")
    p.add_argument("manifest", help="CSV or JSONL: input, output, emotion, intensity, schedule, subject")
    p.add_argument("--bundle", required=True, help="pipeline bundle folder (emoedit bundle)")
    p.add_argument("--out", required=True, help="output folder (videos, <video>.json sidecars, summary.json)")
    p.add_argument("--processes", type=int, default=1, help="processes (DDP ranks; one device each)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    add_edit_option_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Handler of ``emoedit batch-edit``."""
    from emoedit.cli import CliError
    from emoedit.pipeline.batch import BatchManifestError, run_batch_edit
    from emoedit.pipeline.bundle import BundleError

    if args.processes < 1:
        raise CliError(f"--processes must be >= 1, got {args.processes}")
    try:
        options = edit_options_from_args(args)
        summary = run_batch_edit(args.manifest, args.bundle, args.out, options=options,
                                 num_processes=args.processes, accelerator=args.accelerator)
    except (BatchManifestError, BundleError) as err:
        raise CliError(str(err)) from None
    if summary.rank != 0:
        return
    print(summary.describe())
    print(f"summary: {args.out}/summary.json")
    if summary.failed:
        raise CliError(f"{len(summary.failed)} row(s) failed (listed above); re-run to retry them "
                       "(finished rows are skipped)")


__all__ = ["add_edit_option_arguments", "edit_options_from_args", "register", "run"]
