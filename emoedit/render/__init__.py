"""Differentiable mesh rendering (METHOD.md §3.9).

- :class:`Fragments` — per-pixel visible triangle, barycentrics, depth.
- :class:`Rasterizer`, :func:`make_rasterizer` — backends ``"torch"`` (built-in, pure
  PyTorch) and ``"pytorch3d"`` (optional); ``"auto"`` picks pytorch3d on CUDA.
- :func:`interpolate_vertex_attributes` — per-vertex values → per-pixel values.
- :class:`MeshRenderer` / :class:`RenderOutput` — UV-textured or vertex-coloured meshes,
  optional SH shading, face mask.
"""

from __future__ import annotations

from emoedit.render.fragments import Fragments
from emoedit.render.pytorch3d_rasterizer import Pytorch3dRasterizer
from emoedit.render.rasterizer import (
    BACKENDS,
    AutoRasterizer,
    Rasterizer,
    interpolate_vertex_attributes,
    make_rasterizer,
    pytorch3d_available,
    resolve_backend,
)
from emoedit.render.renderer import MeshRenderer, RenderOutput
from emoedit.render.torch_rasterizer import TorchRasterizer

__all__ = [
    "AutoRasterizer",
    "BACKENDS",
    "Fragments",
    "MeshRenderer",
    "Pytorch3dRasterizer",
    "Rasterizer",
    "RenderOutput",
    "TorchRasterizer",
    "interpolate_vertex_attributes",
    "make_rasterizer",
    "pytorch3d_available",
    "resolve_backend",
]
