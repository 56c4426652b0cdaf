"""The 3D morphable face model (METHOD.md §3.1, eq. 1) as a pure ``nn.Module``.

Geometry ``S = S̄ + B_id·α + B_exp·β``; albedo ``T = T̄ + B_tex·δ``; pose, camera and SH
lighting as in Deep3DFaceRecon. Every array is a registered buffer, so ``.to()`` moves
and casts the whole model. Space: decimetres, x right, y up, z toward the viewer;
triangles wound so that ``(v1 − v0) × (v2 − v0)`` points out of the face.

Construct from arrays, or with the classmethods :meth:`MorphableModel.from_deep3d_mat`,
:meth:`MorphableModel.from_3ddfa`, :meth:`MorphableModel.procedural` and
:meth:`MorphableModel.load`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.face_model.camera import PerspectiveCamera
from emoedit.face_model.layout import CoeffLayout, Coeffs
from emoedit.face_model.lighting import sh_irradiance
from emoedit.face_model.rotation import euler_to_rotation
from emoedit.shape_checks import assert_range, assert_shape

NUM_LANDMARKS = 68
FILE_FORMAT = "emoedit.face_model"
FILE_FORMAT_VERSION = 1
_FLOAT_BUFFERS = ("mean_shape", "id_basis", "exp_basis", "mean_albedo", "albedo_basis", "uv_coords")
_INDEX_BUFFERS = ("triangles", "landmark_ids")
_OPTIONAL_BUFFERS = ("front_mask", "skin_mask")


@dataclass(frozen=True)
class FaceModelOutput:
    """Everything one forward pass of :class:`MorphableModel` computes (B = batch, V = vertices)."""

    vertices: Tensor  # (B, V, 3) model space (eq. 1), decimetres
    vertices_world: Tensor  # (B, V, 3) posed: vertices @ rotation + trans, decimetres
    vertices_screen: Tensor  # (B, V, 3) (x_img, y_img, depth): pixels, pixels, decimetres
    landmarks: Tensor  # (B, 68, 2) iBUG 68 landmarks in pixels (x right, y down)
    albedo: Tensor  # (B, V, 3) RGB reflectance, [0, 1]-ish (not clamped)
    normals: Tensor  # (B, V, 3) unit vertex normals in world (posed) space
    vertex_colors: Tensor  # (B, V, 3) albedo × SH shading, [0, 1]-ish (not clamped)
    rotation: Tensor  # (B, 3, 3) row-vector rotation R, vertices_world = vertices @ R + trans


@dataclass(frozen=True)
class FaceGeometry:
    """The geometry half of a forward pass (shape, pose, projection, landmarks; no shading)."""

    vertices: Tensor  # (B, V, 3) model space (eq. 1), decimetres
    rotation: Tensor  # (B, 3, 3) row-vector rotation R
    vertices_world: Tensor  # (B, V, 3) vertices @ rotation + trans, decimetres
    vertices_screen: Tensor  # (B, V, 3) (x_img, y_img, depth): pixels, pixels, decimetres
    landmarks: Tensor  # (B, 68, 2) iBUG 68 landmarks in pixels (x right, y down)


class MorphableModel(nn.Module):
    """A linear 3D morphable model with Deep3DFaceRecon pose, camera and lighting.

    Buffers (float32 unless noted; V vertices, F triangles):
    ``mean_shape`` (V,3) dm, ``id_basis`` (V,3,K_id), ``exp_basis`` (V,3,K_exp) dm per unit
    coefficient, ``mean_albedo`` (V,3) in [0,1], ``albedo_basis`` (V,3,K_tex) (K_tex may be 0),
    ``triangles`` (F,3) int64, ``landmark_ids`` (68,) int64 iBUG order, ``uv_coords`` (V,2)
    in [0,1] (v downward), optional ``front_mask`` / ``skin_mask`` (V,) bool (``None`` when
    the source has none).
    """

    mean_shape: Tensor
    id_basis: Tensor
    exp_basis: Tensor
    mean_albedo: Tensor
    albedo_basis: Tensor
    triangles: Tensor
    landmark_ids: Tensor
    uv_coords: Tensor
    front_mask: Tensor | None
    skin_mask: Tensor | None

    def __init__(
        self,
        *,
        mean_shape: Tensor,  # (V, 3) mean geometry S̄, decimetres
        id_basis: Tensor,  # (V, 3, K_id) identity basis, decimetres per unit coefficient
        exp_basis: Tensor,  # (V, 3, K_exp) expression basis, decimetres per unit coefficient
        mean_albedo: Tensor,  # (V, 3) mean RGB albedo in [0, 1]
        albedo_basis: Tensor,  # (V, 3, K_tex) albedo basis (K_tex = 0 allowed), [0,1] units per coefficient
        triangles: Tensor,  # (F, 3) integer vertex ids, wound outward
        landmark_ids: Tensor,  # (68,) integer vertex ids of the iBUG-68 landmarks
        uv_coords: Tensor,  # (V, 2) texture coordinates in [0, 1], u right, v down
        front_mask: Tensor | None = None,  # (V,) bool, region for the photometric loss
        skin_mask: Tensor | None = None,  # (V,) bool, skin region for albedo regularisers
        expression_names: tuple[str, ...] | None = None,  # names of the K_exp expression coefficients
        name: str = "custom",  # human-readable model name, saved with the model
    ) -> None:
        super().__init__()
        dims = assert_shape(mean_shape, ("V", 3), "mean_shape")
        assert_shape(id_basis, ("V", 3, None), "id_basis", dims)
        assert_shape(exp_basis, ("V", 3, None), "exp_basis", dims)
        assert_shape(mean_albedo, ("V", 3), "mean_albedo", dims)
        assert_shape(albedo_basis, ("V", 3, None), "albedo_basis", dims)
        assert_shape(triangles, (None, 3), "triangles")
        assert_shape(landmark_ids, (NUM_LANDMARKS,), "landmark_ids")
        assert_shape(uv_coords, ("V", 2), "uv_coords", dims)
        num_vertices = dims["V"]
        for tensor_name, tensor in (("triangles", triangles), ("landmark_ids", landmark_ids)):
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise TypeError(f"{tensor_name}: expected an integer tensor, got {tensor.dtype}")
            if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= num_vertices):
                raise ValueError(
                    f"{tensor_name}: vertex ids must lie in [0, {num_vertices}), "
                    f"got [{int(tensor.min())}, {int(tensor.max())}]"
                )
        assert_range(uv_coords, 0.0, 1.0, "uv_coords")
        assert_range(mean_albedo, 0.0, 1.0, "mean_albedo")
        for tensor_name, mask in (("front_mask", front_mask), ("skin_mask", skin_mask)):
            if mask is not None:
                assert_shape(mask, ("V",), tensor_name, dims)
                if mask.dtype != torch.bool:
                    raise TypeError(f"{tensor_name}: expected a bool tensor, got {mask.dtype}")
        num_exp = int(exp_basis.shape[2])
        if expression_names is not None:
            expression_names = tuple(str(n) for n in expression_names)
            if len(expression_names) != num_exp:
                raise ValueError(
                    f"expression_names: expected {num_exp} names (one per expression coefficient), "
                    f"got {len(expression_names)}"
                )

        float_values = {
            "mean_shape": mean_shape,
            "id_basis": id_basis,
            "exp_basis": exp_basis,
            "mean_albedo": mean_albedo,
            "albedo_basis": albedo_basis,
            "uv_coords": uv_coords,
        }
        for buffer_name, value in float_values.items():  # float32; use .to() for other dtypes
            self.register_buffer(buffer_name, value.detach().to(dtype=torch.float32).contiguous())
        self.register_buffer("triangles", triangles.detach().to(torch.int64).contiguous())
        self.register_buffer("landmark_ids", landmark_ids.detach().to(torch.int64).contiguous())
        # Absent masks are registered as None buffers: attribute reads give None, they are
        # skipped by .to() and state_dict(), and assigning a tensor later makes them real.
        self.register_buffer("front_mask", None if front_mask is None else front_mask.detach().contiguous())
        self.register_buffer("skin_mask", None if skin_mask is None else skin_mask.detach().contiguous())
        self.expression_names: tuple[str, ...] | None = expression_names
        self.name: str = str(name)

    # ------------------------------------------------------------------ sizes
    @property
    def layout(self) -> CoeffLayout:
        """Coefficient layout derived from the basis sizes."""
        return CoeffLayout(
            id=int(self.id_basis.shape[2]), exp=int(self.exp_basis.shape[2]), tex=int(self.albedo_basis.shape[2])
        )

    @property
    def num_vertices(self) -> int:
        """V."""
        return int(self.mean_shape.shape[0])

    @property
    def num_faces(self) -> int:
        """F, the number of triangles."""
        return int(self.triangles.shape[0])

    def extra_repr(self) -> str:
        layout = self.layout
        return (
            f"name={self.name!r}, V={self.num_vertices}, F={self.num_faces}, "
            f"id={layout.id}, exp={layout.exp}, tex={layout.tex}"
        )

    # ------------------------------------------------------------------ model
    def shape(self, id_coeff: Tensor, exp_coeff: Tensor) -> Tensor:
        """Geometry of eq. 1, ``S̄ + B_id·α + B_exp·β``.

        Args:
            id_coeff: ``(B, K_id)`` float.
            exp_coeff: ``(B, K_exp)`` float.

        Returns:
            ``(B, V, 3)`` float vertices in model space, decimetres.
        """
        dims = assert_shape(id_coeff, ("B", self.id_basis.shape[2]), "id_coeff")
        assert_shape(exp_coeff, ("B", self.exp_basis.shape[2]), "exp_coeff", dims)
        offset = torch.einsum("vck,bk->bvc", self.id_basis, id_coeff)
        offset = offset + torch.einsum("vck,bk->bvc", self.exp_basis, exp_coeff)
        return self.mean_shape.unsqueeze(0) + offset

    def albedo(self, tex_coeff: Tensor) -> Tensor:
        """Albedo ``T̄ + B_tex·δ``.

        Args:
            tex_coeff: ``(B, K_tex)`` float (``(B, 0)`` for models without an albedo basis).

        Returns:
            ``(B, V, 3)`` float RGB reflectance, roughly [0, 1] (not clamped).
        """
        assert_shape(tex_coeff, (None, self.albedo_basis.shape[2]), "tex_coeff")
        offset = torch.einsum("vck,bk->bvc", self.albedo_basis, tex_coeff)
        return self.mean_albedo.unsqueeze(0) + offset

    def vertex_normals(self, vertices: Tensor) -> Tensor:
        """Area-weighted vertex normals.

        Each triangle's ``(v1 − v0) × (v2 − v0)`` (length = twice its area) is added to its
        three vertices and the sums are normalised; with the model's outward winding the
        normals point out of the face. Vertices in no triangle get a zero vector.

        Args:
            vertices: ``(B, V, 3)`` float.

        Returns:
            ``(B, V, 3)`` float unit normals, in the same space as ``vertices``.
        """
        assert_shape(vertices, (None, self.num_vertices, 3), "vertices")
        tri = self.triangles
        v0 = vertices[:, tri[:, 0]]
        v1 = vertices[:, tri[:, 1]]
        v2 = vertices[:, tri[:, 2]]
        face_normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # (B, F, 3)
        accum = torch.zeros_like(vertices)
        for corner in range(3):
            accum = accum.index_add(1, tri[:, corner], face_normals)
        return F.normalize(accum, dim=-1, eps=1e-12)

    def forward(self, coeffs: Tensor | Coeffs, camera: PerspectiveCamera) -> FaceModelOutput:
        """Build, pose, project and shade the face.

        Args:
            coeffs: ``(B, layout.size)`` float flat coefficients, or their :class:`Coeffs` split.
            camera: projection (use ``camera.scaled(size)`` for other image sizes).

        Returns:
            :class:`FaceModelOutput` (see its fields for shapes and units).
        """
        parts = self._as_parts(coeffs)
        geo = self._geometry(parts, camera)
        albedo = self.albedo(parts.tex_coeff)
        normals = self.vertex_normals(geo.vertices) @ geo.rotation
        vertex_colors = albedo * sh_irradiance(normals, parts.gamma)
        return FaceModelOutput(
            vertices=geo.vertices,
            vertices_world=geo.vertices_world,
            vertices_screen=geo.vertices_screen,
            landmarks=geo.landmarks,
            albedo=albedo,
            normals=normals,
            vertex_colors=vertex_colors,
            rotation=geo.rotation,
        )

    def geometry(self, coeffs: Tensor | Coeffs, camera: PerspectiveCamera) -> FaceGeometry:
        """Shape, pose, projection and landmark pick of :meth:`forward` (same operations, same numbers).

        Args:
            coeffs: ``(B, layout.size)`` float flat coefficients, or their :class:`Coeffs` split.
            camera: projection (use ``camera.scaled(size)`` for other image sizes).

        Returns:
            :class:`FaceGeometry` (no albedo, normals or shading are computed).
        """
        return self._geometry(self._as_parts(coeffs), camera)

    def _as_parts(self, coeffs: Tensor | Coeffs) -> Coeffs:
        if isinstance(coeffs, Tensor):
            return self.layout.split(coeffs)
        self.layout.join(coeffs)  # validates every block's shape
        return coeffs

    def _geometry(self, parts: Coeffs, camera: PerspectiveCamera) -> FaceGeometry:
        vertices = self.shape(parts.id_coeff, parts.exp_coeff)
        rotation = euler_to_rotation(parts.angle)
        vertices_world = vertices @ rotation + parts.trans.unsqueeze(1)
        vertices_screen = camera.project(vertices_world)
        landmarks = vertices_screen[:, self.landmark_ids, :2]
        return FaceGeometry(vertices=vertices, rotation=rotation, vertices_world=vertices_world,
                            vertices_screen=vertices_screen, landmarks=landmarks)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to ``path`` (atomic): a plain dict of CPU tensors + JSON-able metadata.

        Returns the path written.
        """
        path = Path(path)
        tensors: dict[str, Tensor] = {}
        for buffer_name in _FLOAT_BUFFERS + _INDEX_BUFFERS + _OPTIONAL_BUFFERS:
            value = getattr(self, buffer_name)
            if value is not None:
                tensors[buffer_name] = value.detach().cpu().clone()
        payload: dict[str, Any] = {
            "format": FILE_FORMAT,
            "format_version": FILE_FORMAT_VERSION,
            "name": self.name,
            "expression_names": None if self.expression_names is None else list(self.expression_names),
            "tensors": tensors,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
            os.replace(tmp_name, path)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MorphableModel:
        """Read a model written by :meth:`save` (``torch.load(weights_only=True)``, CPU)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"face model file not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch.load raises many types for corrupt or foreign files
            raise ValueError(f"{path}: not a readable emoedit face model file ({error})") from error
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise ValueError(f"{path}: not an emoedit face model file (missing format tag {FILE_FORMAT!r})")
        version = payload.get("format_version")
        if version != FILE_FORMAT_VERSION:
            raise ValueError(f"{path}: face model format version {version!r} is not supported (want {FILE_FORMAT_VERSION})")
        tensors = payload.get("tensors")
        if not isinstance(tensors, dict):
            raise ValueError(f"{path}: face model file has no tensor table")
        missing = [key for key in _FLOAT_BUFFERS + _INDEX_BUFFERS if key not in tensors]
        if missing:
            raise ValueError(f"{path}: face model file lacks arrays {missing}")
        names = payload.get("expression_names")
        try:
            return cls(
                **{key: tensors[key] for key in _FLOAT_BUFFERS + _INDEX_BUFFERS},
                front_mask=tensors.get("front_mask"),
                skin_mask=tensors.get("skin_mask"),
                expression_names=None if names is None else tuple(names),
                name=str(payload.get("name", "custom")),
            )
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: invalid face model contents: {error}") from error

    # ------------------------------------------------------------------ loaders
    @classmethod
    def from_deep3d_mat(cls, path: str | os.PathLike[str]) -> MorphableModel:
        """Load Deep3DFaceRecon's ``BFM_model_front.mat`` (35,709 vertices, 80/64/80 bases).

        See :func:`emoedit.face_model.loaders.read_deep3d_mat` for the conversion details.
        """
        from emoedit.face_model.loaders import read_deep3d_mat

        return cls(**read_deep3d_mat(path))

    @classmethod
    def from_3ddfa(
        cls,
        directory: str | os.PathLike[str],  # folder with 3DDFA's u_shp.npy, w_shp_sim.npy, ... tri.mat, BFM_UV.mat
        *,
        id_std: Sequence[float] | None = None,  # per-column scale of the unit-norm identity PCs, BFM units (µm); None = default spectrum
    ) -> MorphableModel:
        """Load 3DDFA's reduced BFM09 (53,215 vertices, 40 identity + 10 expression PCs, no albedo basis).

        See :func:`emoedit.face_model.loaders.read_3ddfa` for units and basis scaling.
        """
        from emoedit.face_model.loaders import read_3ddfa

        return cls(**read_3ddfa(directory, id_std=id_std))

    @classmethod
    def procedural(cls, **kwargs: Any) -> MorphableModel:
        """A procedurally generated face model (no data files); ``kwargs`` go to ``build_procedural_face``."""
        from emoedit.face_model.procedural import build_procedural_face

        return cls(**build_procedural_face(**kwargs).as_kwargs())
