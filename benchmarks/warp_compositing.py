#!/usr/bin/env python
"""Speed of warp compositing (``FaceCompositor.warp``) on HD frames, by raster-side cap.

    .venv/bin/python benchmarks/warp_compositing.py --bundle outputs/demo/bundle [--frame 844] [--face 420]

Builds an ``--frame``² batch of random frames whose face (the bundle's face model at rest) spans about
``--face`` frame pixels, and times ``FaceCompositor.warp`` (8 frames per call, one torch thread, after one
untimed call) with the face window rasterised at most 256 px a side (the default) and at full
resolution. Prints the machine, the window and ms/frame.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="outputs/demo/bundle", help="a bundle folder (its face model and crop)")
    parser.add_argument("--frame", type=int, default=844, help="frame side, pixels")
    parser.add_argument("--face", type=int, default=420, help="face crop side in the frame, pixels")
    parser.add_argument("--caps", default="256,100000", help="comma-separated warp_raster_side values")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from emoedit.data.alignment import CropTransform
    from emoedit.machine import machine_info
    from emoedit.pipeline.bundle import load_bundle
    from emoedit.pipeline.compositing import FaceCompositor

    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()))
    parts = load_bundle(args.bundle, device="cpu")
    model, side = parts.face_model, parts.settings.texture_crop_size
    batch = 8
    coeffs = torch.zeros(batch, model.layout.size)
    scale = side / float(args.face)
    offset = -(args.frame - args.face) / 2 * scale
    transform = CropTransform(scale=torch.full((batch,), scale), rotation=torch.zeros(batch),
                              offset=torch.full((batch, 2), offset), crop_size=(side, side),
                              frame_size=(args.frame, args.frame))
    frames = torch.rand(batch, 3, args.frame, args.frame)
    for cap in (int(c) for c in args.caps.split(",")):
        compositor = FaceCompositor(face_model=model, crop_size=side, backend="torch", warp_raster_side=cap)
        compositor.warp(coeffs, coeffs, transform, frames)
        began = time.perf_counter()
        out = compositor.warp(coeffs, coeffs, transform, frames)
        ms = (time.perf_counter() - began) / batch * 1000
        print(f"warp_raster_side {cap}: window {out.window[2]}x{out.window[3]} px, {ms:.0f} ms/frame")


if __name__ == "__main__":
    main()
