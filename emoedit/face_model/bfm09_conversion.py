"""One-time conversion of the licensed BFM09 into Deep3DFaceRecon's ``BFM_model_front.mat``.

Reproduces Deep3DFaceRecon_pytorch ``util/load_mats.py::transferBFM09``:

- ``Exp_Pca.bin`` (Guo et al.): int32 ``exp_dim``, float32 ``expMU`` (3·53215, unused),
  float32 ``expPC`` (exp_dim·3·53215) reshaped ``(exp_dim, −1)ᵀ``; ``expEV`` from ``std_exp.txt``.
- ``idBase = shapePC·shapeEV / 1e5`` (first 80), ``exBase = expPC·expEV / 1e5`` (first 64),
  ``texBase = texPC·texEV`` (first 80).
- The 35,709-vertex front face: ``index_exp = BFM_front_idx['idx'] − 1`` (into the 53,215
  expression vertices), ``index_shape = BFM_exp_idx['trimIndex'][index_exp] − 1`` (into
  BFM09's 53,490); shape/texture arrays are gathered with ``index_shape``, expression with
  ``index_exp``; ``meanshape = shapeMU / 1e5`` gathered; ``meantex = texMU`` gathered.
- ``tri``, ``keypoints``, ``point_buf``, ``tri_mask2``, ``frontmask2_idx``, ``skinmask``
  are copied from ``facemodel_info.mat``.

Rows are gathered before the eigenvalue products (same values, far less memory).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

BFM09_VERTICES = 53490  # vertices of the official 01_MorphableModel.mat
EXP_VERTICES = 53215  # vertices of Guo et al.'s expression basis (Exp_Pca.bin)
NUM_ID = 80
NUM_EXP = 64
NUM_TEX = 80
_AUX_FILES = ("BFM_front_idx.mat", "BFM_exp_idx.mat", "facemodel_info.mat", "std_exp.txt")
_INFO_KEYS = ("tri", "keypoints", "point_buf", "tri_mask2", "frontmask2_idx", "skinmask")
_BFM_KEYS = ("shapePC", "shapeEV", "shapeMU", "texPC", "texEV", "texMU")

LICENSED_FILES_HELP = (
    "The Basel Face Model 2009 is licensed and cannot be shipped: obtain "
    "'01_MorphableModel.mat' by registering at the University of Basel's Basel Face Model "
    "2009 page (https://faces.dmi.unibas.ch/bfm/), and 'Exp_Pca.bin' (Guo et al.'s expression "
    "basis) as described in Deep3DFaceRecon_pytorch's README (the CoarseData release of "
    "Deep3DFaceReconstruction)."
)


def read_exp_pca(path: Path, *, num_vertices: int = EXP_VERTICES) -> np.ndarray:
    """Read ``Exp_Pca.bin`` and return ``expPC`` as ``(3·num_vertices, exp_dim)`` float32."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = np.fromfile(handle, dtype="<i4", count=1)
        if header.size != 1:
            raise ValueError(f"{path}: empty file, expected Guo et al.'s Exp_Pca.bin")
        exp_dim = int(header[0])
        expected = 4 + 4 * 3 * num_vertices * (1 + exp_dim)
        if exp_dim <= 0 or size != expected:
            raise ValueError(
                f"{path}: not an Exp_Pca.bin for {num_vertices} vertices "
                f"(header exp_dim={exp_dim}, file has {size} bytes, expected {expected})"
            )
        handle.seek(4 + 4 * 3 * num_vertices)  # skip expMU (unused by Deep3DFaceRecon)
        exp_pc = np.fromfile(handle, dtype="<f4", count=3 * num_vertices * exp_dim)
    return np.ascontiguousarray(exp_pc.reshape(exp_dim, -1).T)


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except Exception as error:
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({error})") from error


def _scaled_columns(pc: np.ndarray, ev: np.ndarray, rows: np.ndarray, count: int, source: str) -> np.ndarray:
    """``(pc · ev)[:, :count]`` gathered at per-vertex ``rows`` -> ``(len(rows)·3, count)`` float64."""
    ev = np.asarray(ev, dtype=np.float64).reshape(-1)
    if pc.ndim != 2 or pc.shape[1] < count or ev.size < count:
        raise ValueError(f"{source}: need at least {count} components, got basis {pc.shape} and {ev.size} eigenvalues")
    per_vertex = pc.reshape(-1, 3, pc.shape[1])
    gathered = per_vertex[rows][:, :, :count].astype(np.float64)
    return (gathered * ev[None, None, :count]).reshape(-1, count)


def convert_bfm09(
    morphable_model_mat: str | os.PathLike[str],  # the official 01_MorphableModel.mat (BFM09)
    exp_pca_bin: str | os.PathLike[str],  # Guo et al.'s Exp_Pca.bin
    aux_dir: str | os.PathLike[str],  # Deep3DFaceRecon's BFM folder files (facemodel_info.mat, ...)
    out_path: str | os.PathLike[str],  # where to write BFM_model_front.mat
) -> Path:
    """Convert BFM09 + Guo's expression basis into Deep3DFaceRecon's ``BFM_model_front.mat``.

    Args:
        morphable_model_mat: ``01_MorphableModel.mat`` with ``shapeMU`` (3·53490, 1),
            ``shapePC`` (3·53490, ≥80), ``shapeEV`` (≥80), ``texMU``, ``texPC``, ``texEV`` alike.
        exp_pca_bin: ``Exp_Pca.bin`` (53,215 vertices, exp_dim ≥ 64 components).
        aux_dir: folder holding ``BFM_front_idx.mat``, ``BFM_exp_idx.mat``,
            ``facemodel_info.mat`` and ``std_exp.txt`` (shipped with Deep3DFaceRecon).
        out_path: output ``.mat`` path; written atomically.

    Returns:
        ``out_path`` as a :class:`Path`. Load it with ``MorphableModel.from_deep3d_mat``.
    """
    bfm_path = Path(morphable_model_mat)
    exp_path = Path(exp_pca_bin)
    aux_dir = Path(aux_dir)
    out_path = Path(out_path)
    for path, label in ((bfm_path, "BFM09 model '01_MorphableModel.mat'"), (exp_path, "expression basis 'Exp_Pca.bin'")):
        if not path.is_file():
            raise FileNotFoundError(f"{label} not found at {path}. {LICENSED_FILES_HELP}")
    for name in _AUX_FILES:
        _require(aux_dir / name, f"Deep3DFaceRecon auxiliary file '{name}' (from its BFM/ folder)")

    bfm = _loadmat(bfm_path)
    for key in _BFM_KEYS:
        if key not in bfm:
            raise KeyError(f"{bfm_path}: missing key {key!r} (expected the official BFM09 01_MorphableModel.mat)")
    shape_pc = np.asarray(bfm["shapePC"])
    if shape_pc.ndim != 2 or shape_pc.shape[0] != 3 * BFM09_VERTICES:
        raise ValueError(f"{bfm_path}: 'shapePC' must have {3 * BFM09_VERTICES} rows, got {shape_pc.shape}")

    exp_pc = read_exp_pca(exp_path)
    exp_ev = np.loadtxt(aux_dir / "std_exp.txt", dtype=np.float64).reshape(-1)
    if exp_ev.size < exp_pc.shape[1]:
        raise ValueError(
            f"{aux_dir / 'std_exp.txt'}: {exp_ev.size} standard deviations for {exp_pc.shape[1]} expression components"
        )
    exp_ev = exp_ev[: exp_pc.shape[1]]

    index_exp = np.rint(np.asarray(_loadmat(aux_dir / "BFM_front_idx.mat")["idx"], dtype=np.float64)).astype(np.int64).reshape(-1) - 1
    trim = np.asarray(_loadmat(aux_dir / "BFM_exp_idx.mat")["trimIndex"]).astype(np.int64).reshape(-1) - 1
    if index_exp.min() < 0 or index_exp.max() >= trim.size or trim.size != EXP_VERTICES:
        raise ValueError(f"{aux_dir}: BFM_front_idx.mat / BFM_exp_idx.mat do not match ({trim.size} trim ids)")
    index_shape = trim[index_exp]
    if index_shape.min() < 0 or index_shape.max() >= BFM09_VERTICES:
        raise ValueError(f"{aux_dir / 'BFM_exp_idx.mat'}: trimIndex outside BFM09's {BFM09_VERTICES} vertices")

    id_base = _scaled_columns(shape_pc, bfm["shapeEV"], index_shape, NUM_ID, f"{bfm_path}: shape") / 1e5
    ex_base = _scaled_columns(exp_pc, exp_ev, index_exp, NUM_EXP, f"{exp_path}: expression") / 1e5
    tex_base = _scaled_columns(np.asarray(bfm["texPC"]), bfm["texEV"], index_shape, NUM_TEX, f"{bfm_path}: texture")
    mean_shape = np.asarray(bfm["shapeMU"], dtype=np.float64).reshape(-1, 3)[index_shape] / 1e5
    mean_tex = np.asarray(bfm["texMU"], dtype=np.float64).reshape(-1, 3)[index_shape]

    info = _loadmat(aux_dir / "facemodel_info.mat")
    missing = [key for key in _INFO_KEYS if key not in info]
    if missing:
        raise KeyError(f"{aux_dir / 'facemodel_info.mat'}: missing keys {missing}")

    result = {
        "meanshape": mean_shape.reshape(1, -1).astype(np.float32),
        "meantex": mean_tex.reshape(1, -1).astype(np.float32),
        "idBase": id_base.astype(np.float32),
        "exBase": ex_base.astype(np.float32),
        "texBase": tex_base.astype(np.float32),
        **{key: info[key] for key in _INFO_KEYS},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".mat", dir=out_path.parent)
    os.close(fd)
    try:
        from scipy.io import savemat

        savemat(tmp_name, result)
        os.replace(tmp_name, out_path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return out_path
