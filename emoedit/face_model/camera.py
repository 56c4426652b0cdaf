"""Deep3DFaceRecon's pinhole camera (METHOD.md §3.1).

The camera sits on the +z axis at ``camera_distance`` looking toward −z. A world point
``(x, y, z)`` (decimetres) has depth ``camera_distance − z`` and lands at
``x_img = center + focal·x/depth``, ``y_img = (image_size − 1) − (center + focal·y/depth)``
(pixels, x right, y down; Deep3D's landmark convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape


@dataclass(frozen=True)
class PerspectiveCamera:
    """Pinhole camera; the defaults are Deep3DFaceRecon's 224-px camera."""

    focal: float = 1015.0  # focal length, pixels (at image_size)
    center: float = 112.0  # principal point x and y, pixels (at image_size)
    camera_distance: float = 10.0  # camera position on +z, decimetres
    image_size: int = 224  # square image side, pixels

    def __post_init__(self) -> None:
        if self.focal <= 0 or self.camera_distance <= 0 or self.image_size <= 0:
            raise ValueError(f"PerspectiveCamera: focal, camera_distance, image_size must be > 0, got {self}")

    def scaled(self, image_size: int) -> PerspectiveCamera:
        """The same camera for a ``image_size``-pixel image: focal and center scale by the ratio."""
        ratio = image_size / self.image_size
        return PerspectiveCamera(
            focal=self.focal * ratio,
            center=self.center * ratio,
            camera_distance=self.camera_distance,
            image_size=int(image_size),
        )

    def depth(self, vertices_world: Tensor) -> Tensor:
        """``(B, V, 3)`` world points -> ``(B, V)`` positive depth ``camera_distance − z``."""
        assert_shape(vertices_world, (None, None, 3), "vertices_world")
        return self.camera_distance - vertices_world[..., 2]

    def project(self, vertices_world: Tensor) -> Tensor:
        """Project world points to screen space.

        Args:
            vertices_world: ``(B, V, 3)`` float, decimetres, after pose (``v @ R + trans``).
                Points must lie in front of the camera (``z < camera_distance``).

        Returns:
            ``(B, V, 3)`` float ``(x_img, y_img, depth)``: pixels (x right, y down) and
            depth in decimetres (positive), the input of the rasterisers.
        """
        assert_shape(vertices_world, (None, None, 3), "vertices_world")
        depth = self.camera_distance - vertices_world[..., 2]
        x_img = self.center + self.focal * vertices_world[..., 0] / depth
        y_img = (self.image_size - 1) - (self.center + self.focal * vertices_world[..., 1] / depth)
        return torch.stack([x_img, y_img, depth], dim=-1)
