"""``emoedit evaluate``: the command line of :func:`~emoedit.evaluation.harness.run_evaluation`.

    emoedit evaluate --config configs/evaluate/demo.yaml [key=value ...]
    emoedit evaluate --world outputs/demo/world --bundle outputs/demo/bundle --out outputs/demo/evaluate \\
        [--methods ours,wo_shape] [--sets seen] [--max-items 7] [--max-frames 12] [--device cuda] \\
        [--wandb] [--quiet] [judges.emotion=PATH ...]

Every setting is a key of :class:`~emoedit.evaluation.config.EvaluateConfig`; the flags are
shorthands for the most common keys and are applied after the file, the ``key=value``
overrides last (a W&B sweep passes its parameters that way, see ``configs/sweeps/``).
Re-running the same command continues an interrupted evaluation; a finished one only
rewrites ``results.json`` and ``tables.md``. User errors become
:class:`emoedit.cli.CliError` (exit status 2).
"""

from __future__ import annotations

import argparse
from typing import Any

#: flag destination -> config key
_FLAG_KEYS: dict[str, str] = {
    "world": "world", "bundle": "bundle", "out": "out", "methods": "methods", "sets": "sets",
    "max_items": "max_items", "max_frames": "max_frames", "device": "device",
}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``emoedit``'s subparsers; returns its parser."""
    parser = subparsers.add_parser(
        "evaluate", help="score every method and ablation on the synthetic world (Tables 1 and 2)",
        description="Run every method and ablation over the synthetic world's evaluation sets and write "
                    "results.json and tables.md (METHOD.md §6). Resumable: re-run to continue.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. max_items=7 judges.emotion=PATH methods=ours,wo_shape")
    parser.add_argument("--config", help="evaluation config YAML (e.g. configs/evaluate/demo.yaml)")
    parser.add_argument("--world", help="synthetic world folder (world=)")
    parser.add_argument("--bundle", help="bundle of frozen parts for ours and the ablations (bundle=)")
    parser.add_argument("--out", help="output folder (out=)")
    parser.add_argument("--methods", help="comma-separated methods or slugs, e.g. ours,wo_texture,stargan (methods=)")
    parser.add_argument("--sets", help="comma-separated sets: seen, unseen_subjects, unseen_views (sets=)")
    parser.add_argument("--max-items", type=int, help="items per set, a spread over emotions and subjects (max_items=)")
    parser.add_argument("--max-frames", type=int, help="cut every clip to its first N frames (max_frames=)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (device=)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log a W&B table (offline unless wandb.mode=online) (wandb.enabled=)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (progress=false)")
    parser.set_defaults(func=run_evaluate)
    return parser


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The flags as ``key=value`` overrides, followed by the positional overrides."""
    out = []
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out.append(f"{key}={value}")
    if args.wandb is not None:
        out.append(f"wandb.enabled={'true' if args.wandb else 'false'}")
    if args.quiet:
        out.append("progress=false")
    return out + list(args.overrides)


def run_evaluate(args: argparse.Namespace) -> None:
    """The ``emoedit evaluate`` handler."""
    from emoedit.cli import CliError
    from emoedit.config import ConfigError
    from emoedit.evaluation.config import load_evaluate_config
    from emoedit.evaluation.harness import run_evaluation

    if args.config is None and args.world is None and not any(o.startswith("world=") for o in args.overrides):
        raise CliError("give --config FILE.yaml or --world DIR (the synthetic world to evaluate on)")
    try:
        cfg = load_evaluate_config(args.config, overrides_from_args(args))
    except ConfigError as error:
        raise CliError(str(error)) from None
    result = run_evaluation(cfg)
    for entry in result.skipped:
        print(f"skipped {entry['name']}: {entry['reason']}")
    for note in result.results.get("notes", []):
        print(f"note: {note}")
    for set_name, block in result.results["sets"].items():
        ordering = block["ordering"]
        broken = sorted({k for table in ordering.values() for k, v in table.items() if v["holds"] is False})
        print(f"{set_name}: {block['items']} items; rows " + ", ".join(f"{k} {v}" for k, v in block["counts"].items())
              + (f"; ordering fails on: {', '.join(broken)}" if broken else ""))
    print(f"made {result.produced} videos and {result.scored} rows this time")
    print(f"wrote {result.results_path} and {result.tables_path}")


__all__ = ["overrides_from_args", "register", "run_evaluate"]
