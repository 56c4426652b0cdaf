"""Rendering throughput: frames/s of the rasteriser backends on real and procedural meshes.

Measures, per mesh and backend, at batch 1:
  (a) forward: rasterise + interpolate UV + sample the UV texture (``MeshRenderer``),
  (b) forward + backward of a loss on the image w.r.t. the vertices and the texture.

Usage (from the repository root):
    .venv/bin/python benchmarks/render.py [--fixtures ../shared/fixtures] [--size 224]
        [--iters 30] [--repeats 5] [--threads 1,2] [--pytorch3d-iters 1]

Each figure is the best of ``--repeats`` timed runs of ``--iters`` frames (the CPU may be
shared: the best run is the least disturbed one); the median run is printed beside it.
pytorch3d's CPU rasteriser takes seconds per frame, so it gets ``--pytorch3d-iters``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from emoedit.face_model import MorphableModel, PerspectiveCamera  # noqa: E402
from emoedit.machine import cores_available, cpu_model  # noqa: E402
from emoedit.render import MeshRenderer  # noqa: E402
from emoedit.render.pytorch3d_rasterizer import pytorch3d_import_error  # noqa: E402


@dataclass(frozen=True)
class BenchMesh:
    """A screen-space mesh with UVs, ready to render."""

    name: str
    vertices_screen: torch.Tensor  # (1,V,3) x_img, y_img, depth
    triangles: torch.Tensor  # (F,3) int64, outward winding
    uv_coords: torch.Tensor  # (V,2) in [0,1]


@dataclass(frozen=True)
class Timing:
    """Per-frame wall time over several timed runs, milliseconds."""

    best_ms: float
    median_ms: float

    @property
    def fps(self) -> float:
        return 1000.0 / self.best_ms


def machine_description() -> str:
    """CPU model, core count, torch version and threads."""
    cpu, cores = cpu_model(), cores_available()
    p3d = pytorch3d_import_error()
    if p3d is None:
        import pytorch3d

        p3d_text = f"pytorch3d {pytorch3d.__version__}"
    else:
        p3d_text = f"pytorch3d unavailable ({p3d})"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (
        f"CPU: {cpu}; {cores} cores available; torch {torch.__version__} "
        f"(default {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}); "
        f"{p3d_text}; {cuda}"
    )


def load_bfm_mesh(fixtures: Path, size: int) -> BenchMesh:
    """3DDFA's BFM09 mean face (105,840 faces) at the Deep3D camera, frontal."""
    import scipy.io

    folder = fixtures / "facemodels" / "bfm_3ddfa"
    try:
        shape = np.load(folder / "u_shp.npy") + np.load(folder / "u_exp.npy")
        tri = scipy.io.loadmat(folder / "tri.mat")["tri"].T.astype(np.int64) - 1
        uv = scipy.io.loadmat(folder / "BFM_UV.mat")["UV"].astype(np.float32)
    except (OSError, KeyError, ValueError) as error:
        raise SystemExit(f"cannot read the BFM fixture in {folder}: {error}") from error
    verts = shape.reshape(-1, 3).astype(np.float64) * 1e-5  # BFM09 units → decimetres
    verts -= verts.mean(0)
    vertices = torch.from_numpy(verts).float()
    triangles = torch.from_numpy(tri[:, [0, 2, 1]].copy())  # 3DDFA winds inward: flip to outward
    screen = PerspectiveCamera().scaled(size).project(vertices[None])
    return BenchMesh("BFM09 (3DDFA)", screen, triangles, torch.from_numpy(uv))


def procedural_mesh(size: int, resolution: int) -> BenchMesh:
    """The procedural morphable face at its mean, frontal."""
    model = MorphableModel.procedural(resolution=resolution)
    coeffs = torch.zeros(1, model.layout.size)
    screen = model(coeffs, PerspectiveCamera().scaled(size)).vertices_screen.detach()
    return BenchMesh(f"procedural r={resolution}", screen, model.triangles, model.uv_coords)


def time_frames(step: Callable[[], None], iters: int, repeats: int, warmup: int) -> Timing:
    """Best and median per-frame time of ``repeats`` runs of ``iters`` calls to ``step``."""
    for _ in range(warmup):
        step()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            step()
        runs.append((time.perf_counter() - start) / iters * 1000.0)
    return Timing(best_ms=min(runs), median_ms=statistics.median(runs))


def bench_mesh(
    mesh: BenchMesh,  # what to render
    backend: str,  # rasteriser backend name
    size: int,  # image side, pixels
    texture_size: int,  # UV texture side, texels
    iters: int,  # frames per timed run
    repeats: int,  # timed runs
) -> dict[str, Timing]:
    """Forward and forward+backward timings of ``MeshRenderer`` on ``mesh``."""
    renderer = MeshRenderer(image_size=size, backend=backend, cull_backfaces=True)
    gen = torch.Generator().manual_seed(0)
    texture = torch.rand(1, 3, texture_size, texture_size, generator=gen)
    target = torch.rand(1, 3, size, size, generator=gen)
    warmup = 1 if backend == "pytorch3d" else 3

    def forward() -> None:
        with torch.no_grad():
            renderer(mesh.vertices_screen, mesh.triangles, uv_coords=mesh.uv_coords, uv_texture=texture)

    vertices = mesh.vertices_screen.clone().requires_grad_(True)
    texture_param = texture.clone().requires_grad_(True)

    def forward_backward() -> None:
        out = renderer(vertices, mesh.triangles, uv_coords=mesh.uv_coords, uv_texture=texture_param)
        loss = ((out.image - target) ** 2).mean()
        loss.backward()
        vertices.grad = None
        texture_param.grad = None

    return {
        "forward": time_frames(forward, iters, repeats, warmup),
        "forward+backward": time_frames(forward_backward, iters, repeats, warmup),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", type=Path, default=REPO_ROOT.parent / "shared" / "fixtures")
    parser.add_argument("--size", type=int, default=224, help="image side, pixels")
    parser.add_argument("--texture-size", type=int, default=256, help="UV texture side, texels")
    parser.add_argument("--iters", type=int, default=30, help="frames per timed run (torch backend)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is reported")
    parser.add_argument("--pytorch3d-iters", type=int, default=1, help="frames per timed run, pytorch3d on CPU")
    parser.add_argument("--pytorch3d-repeats", type=int, default=2, help="timed runs, pytorch3d on CPU")
    parser.add_argument("--threads", type=str, default="", help="comma list of torch thread counts (default: torch's)")
    parser.add_argument(
        "--procedural-resolution",
        type=str,
        default="48,200",
        help="comma list of procedural grid sizes (200: ~100k faces)",
    )
    parser.add_argument("--skip-pytorch3d", action="store_true", help="time the torch backend only")
    args = parser.parse_args()

    print(machine_description())
    meshes = [load_bfm_mesh(args.fixtures, args.size)]
    meshes += [procedural_mesh(args.size, int(r)) for r in args.procedural_resolution.split(",") if r]
    backends = ["torch"]
    if not args.skip_pytorch3d and pytorch3d_import_error() is None:
        backends.append("pytorch3d")
    thread_counts = [int(t) for t in args.threads.split(",") if t] or [torch.get_num_threads()]

    print(f"image {args.size}x{args.size}, batch 1, UV texture {args.texture_size}², back-face culling on")
    header = (
        f"{'mesh':<24}{'faces':>8}  {'backend':<10}{'threads':>8}  "
        f"{'forward fps (ms)':>22}  {'fwd+bwd fps (ms)':>22}"
    )
    print(header)
    print("-" * len(header))
    for mesh in meshes:
        for backend in backends:
            for threads in thread_counts if backend == "torch" else thread_counts[-1:]:
                torch.set_num_threads(threads)
                on_cpu_p3d = backend == "pytorch3d" and not mesh.vertices_screen.is_cuda
                iters = args.pytorch3d_iters if on_cpu_p3d else args.iters
                repeats = args.pytorch3d_repeats if on_cpu_p3d else args.repeats
                result = bench_mesh(mesh, backend, args.size, args.texture_size, iters, repeats)
                cells = [
                    f"{t.fps:9.1f} ({t.best_ms:7.1f}, med {t.median_ms:7.1f})"
                    for t in (result["forward"], result["forward+backward"])
                ]
                print(
                    f"{mesh.name:<24}{mesh.triangles.shape[0]:>8}  {backend:<10}{threads:>8}  "
                    f"{cells[0]:>22}  {cells[1]:>22}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
