"""UV textures: layout tables, image → UV extraction (METHOD §3.2), and UV → image.

- :class:`UVLayout` — per-texel owning triangle and barycentrics of a UV template.
- :class:`TextureExtractor` / :func:`extract_uv_texture` — sample a frame into the layout,
  returning :class:`UVExtraction` (``uv_texture`` (B,3,T,T), ``visibility`` (B,1,T,T)).
- UV → image needs no code here: ``emoedit.render.MeshRenderer`` renders a mesh with
  ``uv_coords=layout.uv_coords, uv_texture=...``.
"""

from __future__ import annotations

from emoedit.texture.extraction import (
    TextureExtractor,
    UVExtraction,
    extract_uv_texture,
    pad_invisible,
    inverse_depth_gradient,
    screen_facing,
)
from emoedit.texture.uv_layout import UVLayout

__all__ = [
    "TextureExtractor",
    "UVExtraction",
    "UVLayout",
    "extract_uv_texture",
    "pad_invisible",
    "inverse_depth_gradient",
    "screen_facing",
]
