"""``emoedit batch-edit``: edit every video of a manifest with one bundle (see :mod:`emoedit.pipeline.batch`).

    emoedit batch-edit MANIFEST --bundle DIR --out DIR [--processes N] [--accelerator auto|cpu|gpu]
      [--subject NAME] [--no-classifier --no-shape --no-texture --no-smoothing --no-teeth]
      [--texture-mode replace|residual|warp] [--teeth-gate F] [--bf16] [--smoothing-window N] [--batch-size N] [--crf Q]
      [--save-intermediates DIR] [--quiet]

The ablation switches build the :class:`~emoedit.pipeline.editor.EditOptions` of every row
(:func:`emoedit.pipeline.edit_command.add_edit_option_arguments` / ``edit_options_from_args``, shared
with ``emoedit edit``; a row's ``subject``
column overrides ``--subject``). The lead wires :func:`register` into
:func:`emoedit.cli.build_parser`.
"""

from __future__ import annotations

import argparse
from typing import Any

from emoedit.pipeline.edit_command import add_edit_option_arguments, edit_options_from_args


def register(subparsers: Any) -> None:
    """Add the ``batch-edit`` subcommand to ``subparsers`` (``argparse`` sub-parsers action)."""
    p = subparsers.add_parser("batch-edit", help="edit every video of a CSV/JSONL manifest (resumable, multi-process)")
    p.add_argument("manifest", help="CSV or JSONL: input, output, emotion, intensity, schedule, subject")
    p.add_argument("--bundle", required=True, help="pipeline bundle folder (emoedit bundle)")
    p.add_argument("--out", required=True, help="output folder (videos, <video>.json sidecars, summary.json)")
    p.add_argument("--processes", type=int, default=1, help="processes (DDP ranks; one device each)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    add_edit_option_arguments(p, subject_help="a training subject's name: its own directions (eq. 3) for every "
                                              "row (a row's subject column overrides it)")
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


__all__ = ["register", "run"]
