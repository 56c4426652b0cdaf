"""``emoedit bundle``: build a pipeline bundle from trained parts, or check one.

    emoedit bundle --out DIR --face-model F --recon CKPT|fitter --tgan CKPT --texture-encoder CKPT
                   --classifier CKPT --directions PT --geometry CKPT [--teeth-tgan CKPT --teeth-encoder CKPT]
                   --cache DIR [--refine] [--fitter KEY=VALUE ...] [--smoothing-half-window N]
    emoedit bundle --check DIR

The lead wires :func:`register` into :func:`emoedit.cli.build_parser`.
"""

from __future__ import annotations

import argparse
from typing import Any

REQUIRED_FLAGS: tuple[tuple[str, str], ...] = (
    ("out", "--out"), ("face_model", "--face-model"), ("recon", "--recon"), ("tgan", "--tgan"),
    ("texture_encoder", "--texture-encoder"), ("classifier", "--classifier"), ("directions", "--directions"),
    ("geometry", "--geometry"), ("cache", "--cache"),
)


def register(subparsers: Any) -> None:
    """Add the ``bundle`` subcommand to ``subparsers`` (``argparse`` sub-parsers action)."""
    p = subparsers.add_parser("bundle", help="gather the trained parts into one checked, checksummed bundle "
                                             "(or --check one)")
    p.add_argument("--check", metavar="DIR",
                   help="verify every checksum of the bundle in DIR, load it, print a summary")
    p.add_argument("--out", help="bundle folder to write (an existing bundle there is replaced)")
    p.add_argument("--face-model", help="face model file (MorphableModel.save; synthetic world: truth/face_model.pt)")
    p.add_argument("--recon", help="recon checkpoint (train.py recon), or 'fitter' for optimisation only")
    p.add_argument("--tgan", help="t-GAN checkpoint (train.py tgan)")
    p.add_argument("--texture-encoder", help="texture encoder checkpoint (train.py texture_encoder)")
    p.add_argument("--classifier", help="subject classifier checkpoint (train.py classifier)")
    p.add_argument("--directions", help="edit directions file (emoedit directions)")
    p.add_argument("--geometry", help="geometry editor checkpoint (train.py geometry)")
    p.add_argument("--teeth-tgan", help="teeth t-GAN checkpoint (train.py teeth_tgan; optional)")
    p.add_argument("--teeth-encoder", help="teeth encoder checkpoint (train.py teeth_encoder; optional)")
    p.add_argument("--cache", help="preprocess output folder the parts were trained on (<DIR>/textures, <DIR>/mouths)")
    p.add_argument("--refine", action="store_true", help="refine the recon regressor's estimate with the fitter")
    p.add_argument("--fitter", nargs="*", metavar="KEY=VALUE",
                   help="FitterConfig settings of the fitter (--recon fitter) or of the refinement (--refine)")
    p.add_argument("--smoothing-half-window", type=int, default=2,
                   help="default half window l of the temporal smoothing (2l+1 frames; 0 = off)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Handler of ``emoedit bundle``."""
    from emoedit.cli import CliError, _key_values
    from emoedit.pipeline.bundle import (
        BundleError,
        BundleSources,
        build_bundle,
        describe_bundle,
        load_bundle,
        read_manifest,
    )

    try:
        if args.check:
            if args.out:
                raise CliError("--check DIR reads a bundle; do not combine it with --out")
            parts = load_bundle(args.check, verify=True)
            print(describe_bundle(read_manifest(args.check)))
            print(f"ok: every checksum matches and the parts load together "
                  f"(texture editor: {parts.texture_editor.num_subjects} subjects, teeth: "
                  f"{'yes' if parts.teeth is not None else 'no'})")
            return
        missing = [flag for name, flag in REQUIRED_FLAGS if not getattr(args, name)]
        if missing:
            raise CliError(f"bundle: missing {', '.join(missing)} (or use --check DIR)")
        if args.teeth_tgan and not args.teeth_encoder:
            raise CliError("--teeth-tgan needs --teeth-encoder")
        fitter_mode = args.recon == "fitter"
        if args.refine and fitter_mode:
            raise CliError("--refine refines a recon checkpoint; with --recon fitter set the fitter with --fitter")
        overrides = _key_values(args.fitter, "--fitter")
        sources = BundleSources(
            face_model=args.face_model, recon=None if fitter_mode else args.recon, tgan=args.tgan,
            texture_encoder=args.texture_encoder, classifier=args.classifier, directions=args.directions,
            geometry=args.geometry, teeth_tgan=args.teeth_tgan, teeth_encoder=args.teeth_encoder, cache=args.cache,
        )
        if args.fitter and not (fitter_mode or args.refine):
            raise CliError("--fitter sets the fitter of --recon fitter or of --refine")
        manifest = build_bundle(
            args.out, sources,
            recon_refine=overrides if args.refine else None,
            fitter=overrides if fitter_mode else None,
            smoothing_half_window=args.smoothing_half_window,
        )
        print(describe_bundle(read_manifest(args.out)))
        print(f"wrote {manifest}")
    except BundleError as err:
        raise CliError(str(err)) from None


__all__ = ["register", "run"]
