"""Named layout of the flat face-model coefficient vector (METHOD.md §3.1).

A reconstruction network regresses one flat vector per image; everything downstream
works with named blocks. :class:`CoeffLayout` holds the size of each block (derived
from a :class:`~emoedit.face_model.MorphableModel` via ``model.layout``), and
:class:`Coeffs` holds the blocks themselves. The order of the blocks is Deep3DFaceRecon's:
``id, exp, tex, angle, gamma, trans`` (BFM09 front model: 80/64/80/3/27/3 = 257).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from emoedit.shape_checks import assert_shape

#: Block names in storage order, and the :class:`Coeffs` field that holds each block.
BLOCK_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "id_coeff"),
    ("exp", "exp_coeff"),
    ("tex", "tex_coeff"),
    ("angle", "angle"),
    ("gamma", "gamma"),
    ("trans", "trans"),
)


@dataclass(frozen=True)
class Coeffs:
    """Face-model coefficients split into named blocks; every field is ``(B, n)`` float.

    ``angle`` is Euler x, y, z in radians; ``gamma`` holds 27 spherical-harmonics
    lighting coefficients (3 colour channels × 9, Deep3DFaceRecon layout); ``trans`` is a
    translation in model units (decimetres).
    """

    id_coeff: Tensor  # (B, K_id) identity coefficients (unit-variance PCA weights)
    exp_coeff: Tensor  # (B, K_exp) expression coefficients
    tex_coeff: Tensor  # (B, K_tex) albedo coefficients (K_tex may be 0)
    angle: Tensor  # (B, 3) Euler angles x, y, z, radians
    gamma: Tensor  # (B, 27) SH lighting, (3 channels × 9) flattened channel-major
    trans: Tensor  # (B, 3) translation, decimetres

    @property
    def batch_size(self) -> int:
        """Number of rows B."""
        return int(self.id_coeff.shape[0])


@dataclass(frozen=True)
class CoeffLayout:
    """Sizes of the named coefficient blocks, in storage order ``id, exp, tex, angle, gamma, trans``."""

    id: int  # identity basis size K_id
    exp: int  # expression basis size K_exp
    tex: int  # albedo basis size K_tex (0 for models without an albedo PCA)
    angle: int = 3  # Euler angles x, y, z
    gamma: int = 27  # SH lighting, 3 channels × 9 bands
    trans: int = 3  # translation x, y, z

    def __post_init__(self) -> None:
        for name, _ in BLOCK_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"CoeffLayout.{name} must be a non-negative int, got {value!r}")
        if self.angle != 3 or self.trans != 3 or self.gamma != 27:
            raise ValueError(
                f"CoeffLayout: angle/gamma/trans must be 3/27/3 (Deep3DFaceRecon pose and SH "
                f"lighting), got {self.angle}/{self.gamma}/{self.trans}"
            )

    @classmethod
    def deep3d(cls) -> CoeffLayout:
        """The Deep3DFaceRecon BFM09 layout: 80/64/80/3/27/3 = 257."""
        return cls(id=80, exp=64, tex=80)

    @property
    def size(self) -> int:
        """Total length of the flat coefficient vector."""
        return sum(getattr(self, name) for name, _ in BLOCK_FIELDS)

    @property
    def slices(self) -> dict[str, slice]:
        """Block name -> slice into the flat vector, in storage order."""
        out: dict[str, slice] = {}
        start = 0
        for name, _ in BLOCK_FIELDS:
            stop = start + getattr(self, name)
            out[name] = slice(start, stop)
            start = stop
        return out

    def split(self, coeffs: Tensor) -> Coeffs:
        """Split a flat ``(B, size)`` float tensor into named blocks (views, no copy)."""
        assert_shape(coeffs, (None, self.size), "coeffs")
        blocks = {field: coeffs[:, self.slices[name]] for name, field in BLOCK_FIELDS}
        return Coeffs(**blocks)

    def join(self, c: Coeffs) -> Tensor:
        """Concatenate named blocks back into a flat ``(B, size)`` tensor."""
        dims: dict[str, int] = {}
        parts = []
        for name, field in BLOCK_FIELDS:
            block = getattr(c, field)
            assert_shape(block, ("B", getattr(self, name)), f"Coeffs.{field}", dims)
            parts.append(block)
        return torch.cat(parts, dim=1)

    def zeros(
        self,
        batch_size: int,  # number of rows B
        *,
        device: torch.device | str | None = None,  # target device
        dtype: torch.dtype = torch.float32,  # floating dtype
    ) -> Tensor:
        """A ``(B, size)`` all-zero coefficient vector: mean face, identity pose, default light."""
        return torch.zeros(batch_size, self.size, device=device, dtype=dtype)


assert [f.name for f in fields(Coeffs)] == [field for _, field in BLOCK_FIELDS]
