"""The rasteriser's output: which triangle is visible at each pixel, and where on it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from emoedit.shape_checks import assert_shape


@dataclass(frozen=True)
class Fragments:
    """Per-pixel visibility of a batch of meshes sharing one triangle list.

    Pixel ``(row i, col j)`` has its centre at screen ``(x=j, y=i)``.

    Attributes:
        pix_to_face: ``(B, H, W)`` int64 index into the ``(F, 3)`` triangle list of the
            visible (nearest) triangle; ``-1`` on background.
        bary_coords: ``(B, H, W, 3)`` float barycentric weights of the triangle's three
            vertices at the pixel centre (perspective-corrected when the rasteriser was
            asked to); they sum to 1 on covered pixels, are 0 on background and are
            differentiable w.r.t. the screen-space vertices.
        zbuf: ``(B, H, W)`` float depth (same units as the vertices' depth) of the visible
            surface at the pixel centre; ``+inf`` on background. Differentiable.
    """

    pix_to_face: Tensor
    bary_coords: Tensor
    zbuf: Tensor

    def __post_init__(self) -> None:
        dims = assert_shape(self.pix_to_face, ("B", "H", "W"), "Fragments.pix_to_face")
        assert_shape(self.bary_coords, ("B", "H", "W", 3), "Fragments.bary_coords", dims)
        assert_shape(self.zbuf, ("B", "H", "W"), "Fragments.zbuf", dims)

    @property
    def mask(self) -> Tensor:
        """``(B, H, W)`` bool, True where some triangle covers the pixel."""
        return self.pix_to_face >= 0

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return int(self.pix_to_face.shape[1]), int(self.pix_to_face.shape[2])

    def detach(self) -> Fragments:
        """A copy whose barycentrics and depth carry no autograd history."""
        return Fragments(
            pix_to_face=self.pix_to_face, bary_coords=self.bary_coords.detach(), zbuf=self.zbuf.detach()
        )
