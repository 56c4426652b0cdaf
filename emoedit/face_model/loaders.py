"""Readers that turn published face-model files into :class:`MorphableModel` constructor arguments.

Each reader returns a dict of the constructor's keyword arguments (torch tensors); the
classmethods ``MorphableModel.from_deep3d_mat`` / ``from_3ddfa`` call them. All of them
convert into the project conventions: decimetres, x right / y up / z toward the viewer,
mean shape re-centred on its vertex mean (as Deep3DFaceRecon does), 0-based int64 indices,
triangles wound so that ``(v1 − v0) × (v2 − v0)`` points out of the face, UV with v downward.

Winding found in the sources (checked on the real files, and enforced at load time by
:func:`orient_triangles_outward`):

- Deep3DFaceRecon ``BFM_model_front.mat`` / ``facemodel_info.mat`` ``tri``: already outward
  (projected area toward +z is positive; 95 % of triangles face +z on the mean face) — kept.
- 3DDFA ``tri.mat``: wound the other way (inward) — flipped by swapping columns 1 and 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emoedit.face_model.uv_unwrap import cylindrical_uv

#: BFM09's original unit is the micrometre; Deep3DFaceRecon divides by 1e5 ("decimetre" scale).
BFM_UNIT_TO_MODEL = 1e-5
NUM_LANDMARKS = 68
#: Constant albedo for models without an albedo basis (3DDFA): a mid skin tone, RGB in [0, 1].
DEFAULT_SKIN_ALBEDO = (0.70, 0.53, 0.45)
#: 3DDFA's identity PCs have unit norm and the npy files carry no eigenvalues. Default per-column
#: scale, in BFM units (µm): sigma_k = 6e5 / k for k = 1..K (a 1/k spectrum, the typical decay
#: of BFM09's identity standard deviations), so unit-variance coefficients give plausible faces.
DEFAULT_3DDFA_ID_STD_FIRST = 6.0e5
DEEP3D_REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "keypoints")


def orient_triangles_outward(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Wind ``triangles`` so that ``(v1 − v0) × (v2 − v0)`` points out of a front-facing face mesh.

    The criterion is the total projected area toward the viewer (+z): the sum of the z
    components of the triangle cross products. A face seen from the front covers the image
    with positive area when wound outward.

    Args:
        vertices: ``(V, 3)`` float, front of the face toward +z.
        triangles: ``(F, 3)`` int vertex ids.

    Returns:
        ``(triangles (F, 3) int64, flipped)``.
    """
    v0 = vertices[triangles[:, 0]].astype(np.float64)
    e1 = vertices[triangles[:, 1]].astype(np.float64) - v0
    e2 = vertices[triangles[:, 2]].astype(np.float64) - v0
    projected_area = float(np.sum(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]))
    triangles = triangles.astype(np.int64)
    if projected_area < 0:
        return np.ascontiguousarray(triangles[:, [0, 2, 1]]), True
    return np.ascontiguousarray(triangles), False


def _one_based_to_index(values: np.ndarray, *, limit: int, source: str) -> np.ndarray:
    """1-based (possibly float) MATLAB indices -> 0-based int64, checked against ``[0, limit)``."""
    rounded = np.rint(np.asarray(values, dtype=np.float64))
    if not np.allclose(rounded, values):
        raise ValueError(f"{source}: expected integer indices, found non-integral values")
    index = rounded.astype(np.int64) - 1
    if index.size and (index.min() < 0 or index.max() >= limit):
        raise ValueError(f"{source}: 1-based indices must lie in [1, {limit}], got [{index.min() + 1}, {index.max() + 1}]")
    return index


def _recenter(mean_shape: np.ndarray) -> np.ndarray:
    return mean_shape - mean_shape.mean(axis=0, keepdims=True)


def _basis(flat: np.ndarray, num_vertices: int, source: str) -> np.ndarray:
    """(3V, K) xyz-interleaved basis -> (V, 3, K) float32."""
    if flat.ndim != 2 or flat.shape[0] != 3 * num_vertices:
        raise ValueError(f"{source}: expected shape (3·{num_vertices}, K), got {flat.shape}")
    return np.ascontiguousarray(flat.reshape(num_vertices, 3, flat.shape[1]), dtype=np.float32)


def read_deep3d_mat(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read Deep3DFaceRecon's ``BFM_model_front.mat`` into ``MorphableModel`` arguments.

    Keys used: ``meanshape`` (1, 3V), ``idBase`` (3V, K_id), ``exBase`` (3V, K_exp),
    ``meantex`` (1, 3V) in 0..255, ``texBase`` (3V, K_tex) in 0..255 units, ``tri`` (F, 3)
    1-based, ``keypoints`` (1, 68) 1-based; optional ``frontmask2_idx`` (1-based ids) and
    ``skinmask`` (1, V) 0/1. ``point_buf`` is not needed (normals are computed from
    triangles). The mean shape is re-centred on its vertex mean (Deep3D's ``recenter``);
    albedo is divided by 255; the file has no UV, so a cylindrical UV template is computed
    from the re-centred mean shape.
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Deep3DFaceRecon face model not found: {path}")
    try:
        mat = loadmat(str(path))
    except Exception as error:  # scipy raises several types for non-MAT input
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({error})") from error
    for key in DEEP3D_REQUIRED_KEYS:
        if key not in mat:
            raise KeyError(f"{path}: missing key {key!r} (expected a Deep3DFaceRecon BFM_model_front.mat)")
    flat_mean = np.asarray(mat["meanshape"], dtype=np.float64).reshape(-1)
    if flat_mean.size % 3:
        raise ValueError(f"{path}: 'meanshape' has {flat_mean.size} values, not a multiple of 3")
    num_vertices = flat_mean.size // 3
    mean_shape = _recenter(flat_mean.reshape(num_vertices, 3))
    id_basis = _basis(np.asarray(mat["idBase"]), num_vertices, f"{path}: 'idBase'")
    exp_basis = _basis(np.asarray(mat["exBase"]), num_vertices, f"{path}: 'exBase'")
    tex_basis = _basis(np.asarray(mat["texBase"]), num_vertices, f"{path}: 'texBase'") / 255.0
    mean_tex = np.asarray(mat["meantex"], dtype=np.float64).reshape(-1)
    if mean_tex.size != 3 * num_vertices:
        raise ValueError(f"{path}: 'meantex' has {mean_tex.size} values, expected {3 * num_vertices}")
    mean_albedo = np.clip(mean_tex.reshape(num_vertices, 3) / 255.0, 0.0, 1.0)
    tri_raw = np.asarray(mat["tri"])
    if tri_raw.ndim != 2 or tri_raw.shape[1] != 3:
        raise ValueError(f"{path}: 'tri' must be (F, 3), got {tri_raw.shape}")
    triangles = _one_based_to_index(tri_raw, limit=num_vertices, source=f"{path}: 'tri'")
    triangles, _ = orient_triangles_outward(mean_shape, triangles)
    keypoints = np.asarray(mat["keypoints"]).reshape(-1)
    if keypoints.size != NUM_LANDMARKS:
        raise ValueError(f"{path}: 'keypoints' has {keypoints.size} entries, expected {NUM_LANDMARKS}")
    landmark_ids = _one_based_to_index(keypoints, limit=num_vertices, source=f"{path}: 'keypoints'")

    front_mask = None
    if "frontmask2_idx" in mat:
        ids = _one_based_to_index(np.asarray(mat["frontmask2_idx"]).reshape(-1), limit=num_vertices,
                                  source=f"{path}: 'frontmask2_idx'")
        front_mask = torch.zeros(num_vertices, dtype=torch.bool)
        front_mask[torch.from_numpy(ids)] = True
    skin_mask = None
    if "skinmask" in mat:
        skin = np.asarray(mat["skinmask"]).reshape(-1)
        if skin.size != num_vertices:
            raise ValueError(f"{path}: 'skinmask' has {skin.size} entries, expected {num_vertices}")
        skin_mask = torch.from_numpy(skin > 0.5)

    mean_shape_t = torch.from_numpy(mean_shape.astype(np.float32))
    return {
        "mean_shape": mean_shape_t,
        "id_basis": torch.from_numpy(id_basis),
        "exp_basis": torch.from_numpy(exp_basis),
        "mean_albedo": torch.from_numpy(mean_albedo.astype(np.float32)),
        "albedo_basis": torch.from_numpy(np.ascontiguousarray(tex_basis, dtype=np.float32)),
        "triangles": torch.from_numpy(triangles),
        "landmark_ids": torch.from_numpy(landmark_ids),
        "uv_coords": cylindrical_uv(mean_shape_t),
        "front_mask": front_mask,
        "skin_mask": skin_mask,
        "expression_names": None,
        "name": "bfm09_deep3d_front",
    }


def _load_npy(directory: Path, name: str) -> np.ndarray:
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"3DDFA face model: missing file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path}: not a plain numpy array file ({error})") from error


def _load_mat_key(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    if not path.is_file():
        raise FileNotFoundError(f"3DDFA face model: missing file {path}")
    try:
        mat = loadmat(str(path))
    except Exception as error:
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({error})") from error
    if key not in mat:
        raise KeyError(f"{path}: missing key {key!r}")
    return np.asarray(mat[key])


def read_3ddfa(
    directory: str | os.PathLike[str],  # folder with the 3DDFA reduced-BFM files
    *,
    id_std: Sequence[float] | None = None,  # per-column identity scale, BFM units; None = 6e5 / k
) -> dict[str, Any]:
    """Read 3DDFA's reduced BFM09 into ``MorphableModel`` arguments.

    Files: ``u_shp.npy`` + ``u_exp.npy`` (3V, 1) mean (shape mean + mean expression offset),
    ``w_shp_sim.npy`` (3V, 40) identity basis, ``w_exp_sim.npy`` (3V, 10) expression basis,
    xyz interleaved per vertex, BFM units (µm); ``keypoints_sim.npy`` (204,) indices into the
    flat xyz vector (landmark vertex = ``keypoints_sim[0::3] // 3``); ``tri.mat`` 'tri'
    (3, F) 1-based; ``BFM_UV.mat`` 'UV' (V, 2) with v upward.

    Units and scaling (project choice):

    - Everything is multiplied by 1e-5 (BFM µm -> Deep3D's decimetre scale), and the mean
      is re-centred on its vertex mean, as Deep3DFaceRecon does.
    - ``w_exp_sim`` columns already carry their standard deviation (column norms ≈ 2–3·10⁵
      µm; 3DDFA's fitted expression parameters have std ≈ 0.1–1.5), so the expression basis
      is only unit-converted: coefficients are O(1).
    - ``w_shp_sim`` columns are unit-norm PCs without eigenvalues (3DDFA keeps the scale in
      its parameters), so column k is multiplied by ``id_std[k]`` (default ``6e5 / (k+1)``
      µm, a 1/k spectrum of BFM09-like magnitude) to make unit-variance coefficients give
      plausible faces. ``param_whitening.pkl`` is never read (pickle).
    - No albedo basis (K_tex = 0); the mean albedo is the constant :data:`DEFAULT_SKIN_ALBEDO`.
    - UV from ``BFM_UV.mat`` with ``v -> 1 − v`` (v downward); triangles flipped to outward.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"3DDFA face model folder not found: {directory}")
    mean_flat = _load_npy(directory, "u_shp.npy").astype(np.float64) + _load_npy(directory, "u_exp.npy").astype(np.float64)
    mean_flat = mean_flat.reshape(-1)
    if mean_flat.size % 3:
        raise ValueError(f"{directory / 'u_shp.npy'}: {mean_flat.size} values, not a multiple of 3")
    num_vertices = mean_flat.size // 3
    mean_shape = _recenter(mean_flat.reshape(num_vertices, 3) * BFM_UNIT_TO_MODEL)

    w_shp = _load_npy(directory, "w_shp_sim.npy").astype(np.float64)
    w_exp = _load_npy(directory, "w_exp_sim.npy").astype(np.float64)
    num_id = w_shp.shape[1] if w_shp.ndim == 2 else -1
    if id_std is None:
        scale = DEFAULT_3DDFA_ID_STD_FIRST / np.arange(1, num_id + 1, dtype=np.float64)
    else:
        scale = np.asarray(id_std, dtype=np.float64).reshape(-1)
        if scale.size != num_id:
            raise ValueError(f"id_std: expected {num_id} values (one per identity PC), got {scale.size}")
    id_basis = _basis(w_shp * scale[None, :] * BFM_UNIT_TO_MODEL, num_vertices, f"{directory / 'w_shp_sim.npy'}")
    exp_basis = _basis(w_exp * BFM_UNIT_TO_MODEL, num_vertices, f"{directory / 'w_exp_sim.npy'}")

    keypoints = _load_npy(directory, "keypoints_sim.npy").reshape(-1).astype(np.int64)
    if keypoints.size != 3 * NUM_LANDMARKS or np.any(keypoints[0::3] % 3):
        raise ValueError(f"{directory / 'keypoints_sim.npy'}: expected {3 * NUM_LANDMARKS} xyz indices (x first)")
    landmark_ids = keypoints[0::3] // 3
    if landmark_ids.min() < 0 or landmark_ids.max() >= num_vertices:
        raise ValueError(f"{directory / 'keypoints_sim.npy'}: landmark ids out of range")

    tri_raw = _load_mat_key(directory / "tri.mat", "tri")
    if tri_raw.ndim != 2 or tri_raw.shape[0] != 3:
        raise ValueError(f"{directory / 'tri.mat'}: 'tri' must be (3, F), got {tri_raw.shape}")
    triangles = _one_based_to_index(tri_raw.T, limit=num_vertices, source=f"{directory / 'tri.mat'}: 'tri'")
    triangles, _ = orient_triangles_outward(mean_shape, triangles)

    uv = _load_mat_key(directory / "BFM_UV.mat", "UV").astype(np.float64)
    if uv.shape != (num_vertices, 2):
        raise ValueError(f"{directory / 'BFM_UV.mat'}: 'UV' must be ({num_vertices}, 2), got {uv.shape}")
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).clip(0.0, 1.0)

    mean_albedo = np.broadcast_to(np.asarray(DEFAULT_SKIN_ALBEDO, dtype=np.float32), (num_vertices, 3))
    return {
        "mean_shape": torch.from_numpy(mean_shape.astype(np.float32)),
        "id_basis": torch.from_numpy(id_basis),
        "exp_basis": torch.from_numpy(exp_basis),
        "mean_albedo": torch.from_numpy(np.ascontiguousarray(mean_albedo)),
        "albedo_basis": torch.zeros(num_vertices, 3, 0),
        "triangles": torch.from_numpy(triangles),
        "landmark_ids": torch.from_numpy(landmark_ids),
        "uv_coords": torch.from_numpy(uv.astype(np.float32)),
        "front_mask": None,
        "skin_mask": None,
        "expression_names": None,
        "name": "bfm09_3ddfa",
    }

