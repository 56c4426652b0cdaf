"""The rasteriser interface, its factory and per-pixel attribute interpolation.

A :class:`Rasterizer` turns screen-space triangles into :class:`Fragments`. Backends only
implement :meth:`Rasterizer.visible_faces` (which triangle is nearest at each pixel
centre, no autograd); barycentrics and depth are recomputed by the shared, differentiable
:func:`~emoedit.render.barycentric.fragments_from_pix_to_face`, so all backends have the
same gradients.

Backends:
- ``"torch"``: :class:`~emoedit.render.torch_rasterizer.TorchRasterizer`, pure PyTorch,
  CPU or CUDA, work proportional to covered pixels.
- ``"pytorch3d"``: :class:`~emoedit.render.pytorch3d_rasterizer.Pytorch3dRasterizer`
  (optional dependency, imported lazily); fast on CUDA, very slow on CPU.
- ``"auto"``: pytorch3d for CUDA tensors when it imports (:class:`AutoRasterizer`),
  the torch backend otherwise.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from emoedit.render.barycentric import corner_table, fragments_from_pix_to_face
from emoedit.render.fragments import Fragments
from emoedit.shape_checks import assert_shape

BACKENDS: tuple[str, ...] = ("auto", "torch", "pytorch3d")
_PER_CHANNEL_MAX = 4  # interpolate up to this many channels one by one


class Rasterizer(abc.ABC):
    """Screen-space triangle rasteriser (one sample at each pixel centre, nearest wins)."""

    name: str = "abstract"

    def __init__(
        self,
        *,
        cull_backfaces: bool = False,  # drop triangles facing away from the camera
        perspective_correct: bool = True,  # perspective-correct barycentrics and depth
    ) -> None:
        self.cull_backfaces = bool(cull_backfaces)
        self.perspective_correct = bool(perspective_correct)

    def __call__(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Fragments:
        """Rasterise a batch of meshes sharing one triangle list.

        Args:
            vertices: ``(B, V, 3)`` float screen space ``(x_img, y_img, depth)``: pixels
                (x right, y down, pixel (i, j) centred at (x=j, y=i)) and positive depth.
                Triangles with a non-positive or non-finite depth are not drawn.
            triangles: ``(F, 3)`` int64 vertex ids in ``[0, V)``. Front faces are wound
                so that ``(v1 − v0) × (v2 − v0)`` points toward the viewer in model space,
                i.e. they have a negative signed area in screen space (y down).
            image_size: ``(H, W)`` in pixels.

        Returns:
            :class:`Fragments` ``(B, H, W)``; bary_coords/zbuf differentiable w.r.t.
            ``vertices``.
        """
        height, width = _check_image_size(image_size)
        assert_shape(vertices, (None, None, 3), "vertices")
        assert_shape(triangles, (None, 3), "triangles")
        if not vertices.is_floating_point():
            raise TypeError(f"{type(self).__name__}: vertices must be floating point, got {vertices.dtype}")
        if triangles.dtype != torch.int64:
            raise TypeError(f"{type(self).__name__}: triangles must be int64, got {triangles.dtype}")
        if triangles.device != vertices.device:
            raise ValueError(
                f"{type(self).__name__}: vertices on {vertices.device} but triangles on {triangles.device}"
            )
        self._check_triangle_ids(triangles, vertices.shape[1])
        with torch.no_grad():
            pix_to_face = self.visible_faces(vertices.detach(), triangles, (height, width))
        return fragments_from_pix_to_face(
            vertices, triangles, pix_to_face, perspective_correct=self.perspective_correct
        )

    def _check_triangle_ids(self, triangles: Tensor, num_vertices: int) -> None:
        """Raise unless all ids lie in [0, V); remembers the last triangle tensor checked."""
        checked = getattr(self, "_checked_triangles", None)
        signature = (triangles._version, num_vertices)
        if checked is not None and checked[0] is triangles and checked[1] == signature:
            return
        if triangles.numel():
            low, high = torch.aminmax(triangles)
            if int(low) < 0 or int(high) >= num_vertices:
                raise ValueError(
                    f"{type(self).__name__}: triangles index vertices outside [0, {num_vertices}): "
                    f"ids span [{int(low)}, {int(high)}]"
                )
        self._checked_triangles = (triangles, signature)

    @abc.abstractmethod
    def visible_faces(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``(B, H, W)`` int64 nearest drawable triangle at each pixel centre, -1 = none.

        Called under ``torch.no_grad`` with validated inputs (see :meth:`__call__`).
        Depth comparisons use the perspective-correct depth when
        ``self.perspective_correct`` (else the screen-space interpolated depth); ties go
        to the lower triangle index.
        """

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cull_backfaces={self.cull_backfaces}, "
            f"perspective_correct={self.perspective_correct})"
        )


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int) or len(image_size) != 2:
        raise ValueError(f"image_size must be a (H, W) pair, got {image_size!r}")
    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return height, width


def pytorch3d_available() -> bool:
    """True when ``import pytorch3d`` (with its compiled extension) works."""
    from emoedit.render.pytorch3d_rasterizer import pytorch3d_import_error

    return pytorch3d_import_error() is None


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """The concrete backend ``"torch"`` or ``"pytorch3d"`` that ``backend`` means.

    ``"auto"`` is pytorch3d when it imports and ``device`` is CUDA (``device=None``: when
    CUDA is available), else torch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasteriser backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return "pytorch3d" if cuda and pytorch3d_available() else "torch"


def make_rasterizer(
    backend: str = "auto",  # "auto" | "torch" | "pytorch3d"
    *,
    cull_backfaces: bool = False,  # drop triangles facing away from the camera
    perspective_correct: bool = True,  # perspective-correct barycentrics and depth
) -> Rasterizer:
    """Build a rasteriser.

    ``"auto"`` uses pytorch3d for CUDA tensors when it imports (:class:`AutoRasterizer`;
    its CPU path takes seconds per frame) and the built-in torch backend otherwise. Requesting ``"pytorch3d"`` when
    it cannot be imported raises ``ImportError`` with the reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasteriser backend {backend!r}; choose one of {BACKENDS}")
    if backend == "pytorch3d":
        from emoedit.render.pytorch3d_rasterizer import Pytorch3dRasterizer

        return Pytorch3dRasterizer(cull_backfaces=cull_backfaces, perspective_correct=perspective_correct)
    from emoedit.render.torch_rasterizer import TorchRasterizer

    if backend == "auto" and torch.cuda.is_available() and pytorch3d_available():
        return AutoRasterizer(cull_backfaces=cull_backfaces, perspective_correct=perspective_correct)
    return TorchRasterizer(cull_backfaces=cull_backfaces, perspective_correct=perspective_correct)


class AutoRasterizer(Rasterizer):
    """Per call: pytorch3d for CUDA tensors, the torch backend for CPU tensors.

    Built by ``make_rasterizer("auto")`` when CUDA and pytorch3d are both available, so a
    renderer moved between devices never runs pytorch3d's slow CPU path.
    """

    name = "auto"

    def __init__(
        self,
        *,
        cull_backfaces: bool = False,  # drop triangles facing away from the camera
        perspective_correct: bool = True,  # perspective-correct barycentrics and depth
    ) -> None:
        super().__init__(cull_backfaces=cull_backfaces, perspective_correct=perspective_correct)
        from emoedit.render.pytorch3d_rasterizer import Pytorch3dRasterizer
        from emoedit.render.torch_rasterizer import TorchRasterizer

        options = dict(cull_backfaces=cull_backfaces, perspective_correct=perspective_correct)
        self.cuda_backend: Rasterizer = Pytorch3dRasterizer(**options)
        self.cpu_backend: Rasterizer = TorchRasterizer(**options)

    def visible_faces(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Dispatch on ``vertices.device`` (see the class docstring)."""
        backend = self.cuda_backend if vertices.is_cuda else self.cpu_backend
        return backend.visible_faces(vertices, triangles, image_size)


def interpolate_vertex_attributes(fragments: Fragments, triangles: Tensor, attributes: Tensor) -> Tensor:
    """Interpolate per-vertex attributes at every pixel with the fragments' barycentrics.

    Args:
        fragments: :class:`Fragments` ``(B, H, W)``.
        triangles: ``(F, 3)`` int64, the list the fragments index.
        attributes: ``(B, V, C)`` or ``(V, C)`` (shared by the batch) float.

    Returns:
        ``(B, H, W, C)`` float (a view of a channel-major ``(C, B, H, W)`` tensor); zeros
        on background. Differentiable w.r.t. ``attributes`` and (through
        ``bary_coords``) the vertices.
    """
    batch, height, width = fragments.pix_to_face.shape
    assert_shape(triangles, (None, 3), "triangles")
    corners_of = corner_table(triangles)  # (3, F)
    if attributes.ndim == 2:
        assert_shape(attributes, (None, None), "attributes")
        table = attributes.t().contiguous()  # (C, V) shared by the batch
        faces = fragments.pix_to_face.reshape(-1).clamp(min=0)
        corner_ids = corners_of.index_select(1, faces).to(torch.int64)  # (3, B·H·W)
    else:
        assert_shape(attributes, (batch, None, None), "attributes")
        num_vertices = attributes.shape[1]
        table = attributes.reshape(-1, attributes.shape[2]).t().contiguous()  # (C, B·V)
        faces = fragments.pix_to_face.reshape(batch, -1).clamp(min=0)
        offsets = torch.arange(batch, device=faces.device).mul_(num_vertices).view(batch, 1)
        corner_ids = corners_of.index_select(1, faces.reshape(-1)).view(3, batch, -1).to(torch.int64).add_(offsets)
    channels = table.shape[0]
    corners = table.index_select(1, corner_ids.reshape(-1)).view(channels, 3, -1)  # (C, 3, B·H·W)
    bary = fragments.bary_coords.to(corners.dtype)
    weights = [bary[..., k].reshape(1, -1) for k in range(3)]  # contiguous (1, B·H·W) each
    if channels <= _PER_CHANNEL_MAX:
        # One contiguous 1-D product per channel: cheaper forward and backward for uv/rgb.
        per_channel = [
            corners[c, 0] * weights[0][0] + corners[c, 1] * weights[1][0] + corners[c, 2] * weights[2][0]
            for c in range(channels)
        ]
        result = torch.stack(per_channel)
    else:
        result = corners[:, 0] * weights[0] + corners[:, 1] * weights[1] + corners[:, 2] * weights[2]
    return result.view(channels, batch, height, width).permute(1, 2, 3, 0)
