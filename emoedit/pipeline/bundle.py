"""A pipeline bundle: every frozen part one edit needs, slimmed, checksummed and checked together.

``build_bundle`` gathers the trained parts (``train.py`` checkpoints, the face model file,
the directions file) into one folder::

    <bundle>/
      manifest.json          written LAST: a folder without it is an incomplete bundle
      parts/face_model.pt    MorphableModel.save() file (copied byte for byte)
      parts/recon.ckpt       recon regressor (absent in "fitter" mode)
      parts/tgan.ckpt        t-GAN EMA generator
      parts/texture_encoder.ckpt
      parts/classifier.ckpt
      parts/directions.pt    EditDirections file (copied byte for byte)
      parts/geometry.ckpt
      parts/teeth_tgan.ckpt  optional (absent when the teeth encoder fine-tuned its generator)
      parts/teeth_encoder.ckpt  optional

Each checkpoint is **slimmed**: only what the Lightning-free loaders read is kept —
``hyper_parameters = {"part", "config"}``, the loaders' plain keys (``*_kwargs``,
``tgan_config``, ``tgan_checkpoint_sha256``, ``mouth_settings``, ``geometry_face_model``)
and the state-dict tensors under the loaders' prefixes (``G_ema.*`` of a t-GAN,
``encoder.*`` of the texture encoder, ``encoder.*`` + ``generator.*`` of the teeth encoder,
``classifier.*``, the geometry ``generator.*``, the recon ``regressor.*`` plus the face
model's ``mean_shape`` and ``triangles`` that the recon loader compares). Optimizer states,
loops, callbacks, discriminators and training-only buffers are dropped. When the texture
encoder was trained with ``model.finetune_generator=true`` the bundled t-GAN holds the
encoder's jointly fine-tuned generator (``generator.*`` of the encoder checkpoint) instead
of the t-GAN's own ``G_ema``: that is the decoder the encoder's latents belong to.

``manifest.json`` records the format version, the emoedit and torch versions, the UTC
creation time, per part its file, SHA-256, size, source path and source SHA-256, the part
name from the checkpoint and its key sizes (``info``), the :class:`PipelineSettings`
(from the preprocess cache the parts were trained on) and the reconstruction mode
(``regressor``, ``regressor+fit`` or ``fitter``, with the fitter overrides).

Compatibility is checked when building and again when loading (:class:`BundleError`
naming the parts and files): the encoder's W+ and average latent vs the t-GAN, the
encoder's recorded t-GAN checksum vs the bundled t-GAN's source, the directions' W+ shape,
their recorded encoder checksum vs the bundled encoder's source, their subjects vs the
classifier's (rows are reordered to the classifier's order), the geometry editor's layout
vs the face model, the recon regressor vs the face model, the teeth encoder vs the teeth
t-GAN and the mouth settings vs the settings, and (when building) the cache's face model
vs the bundled one. :func:`load_bundle` verifies every checksum first and loads everything
with ``weights_only=True``, in eval mode, without gradients, on the requested device.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

import emoedit
from emoedit.atomic_io import atomic_path, atomic_torch_save, atomic_write_text, sha256_file
from emoedit.checkpoint_io import CheckpointError, checkpoint_part, load_checkpoint, require_part
from emoedit.editing.directions import DirectionsError, EditDirections
from emoedit.editing.teeth_completion import MOUTH_SETTINGS_KEY, TEETH_ENCODER_PART, TEETH_TGAN_PART, TeethCompleter
from emoedit.editing.texture_editor import TextureEditor
from emoedit.face_model.morphable_model import MorphableModel
from emoedit.networks.geometry_editor import FACE_MODEL_KEY, GENERATOR_KWARGS_KEY, GEOMETRY_PART, GeometryGenerator
from emoedit.networks.psp_encoder import ENCODER_KWARGS_KEY, TEXTURE_ENCODER_PART, PSPEncoder
from emoedit.networks.stylegan2.checkpoint import (
    EMA_STATE_PREFIX,
    ENCODER_TGAN_CONFIG_KEY,
    encoder_generator_state,
    finetunes_generator,
    load_ema_generator,
)
from emoedit.networks.stylegan2.generator import StyleGAN2Generator
from emoedit.networks.subject_classifier import CLASSIFIER_KWARGS_KEY, CLASSIFIER_PART, SubjectClassifier
from emoedit.pipeline.parts import EditParts, PipelineSettings
from emoedit.reconstruction.fitter import FitterConfig
from emoedit.reconstruction.reconstructor import (
    RECON_PART,
    FittingReconstructor,
    RegressorReconstructor,
    Reconstructor,
    load_recon_regressor,
)

BUNDLE_FORMAT = "emoedit-pipeline-bundle"
BUNDLE_VERSION = 1
MANIFEST_FILE = "manifest.json"
PARTS_DIR = "parts"
#: Bundle part name → file name under ``parts/``.
PART_FILES: dict[str, str] = {
    "face_model": "face_model.pt",
    "recon": "recon.ckpt",
    "tgan": "tgan.ckpt",
    "texture_encoder": "texture_encoder.ckpt",
    "classifier": "classifier.ckpt",
    "directions": "directions.pt",
    "geometry": "geometry.ckpt",
    "teeth_tgan": "teeth_tgan.ckpt",
    "teeth_encoder": "teeth_encoder.ckpt",
}
REQUIRED_PARTS: tuple[str, ...] = ("face_model", "tgan", "texture_encoder", "classifier", "directions", "geometry")
RECON_MODES: tuple[str, ...] = ("regressor", "regressor+fit", "fitter")
TGAN_PART = "tgan"
TGAN_CONFIG_KEY = ENCODER_TGAN_CONFIG_KEY  # texture / teeth encoder checkpoints: the t-GAN's model config
TGAN_SHA_KEY = "tgan_checkpoint_sha256"  # texture / teeth encoder checkpoints: SHA-256 of their t-GAN file
FACE_MODEL_KEEP = ("mean_shape", "triangles")  # face-model buffers kept in a slim recon checkpoint

_MANIFEST_KEYS = frozenset({"format", "format_version", "emoedit_version", "torch_version", "created_utc", "parts",
                            "settings", "recon", "notes"})
_ENTRY_KEYS = frozenset({"file", "sha256", "size", "source", "source_sha256", "part", "info"})
_RECON_KEYS = frozenset({"mode", "refine", "fitter"})
# What a slim checkpoint keeps: state-dict prefixes and plain top-level keys, per bundle part.
_KEEP_PREFIXES: dict[str, tuple[str, ...]] = {
    "tgan": (EMA_STATE_PREFIX,),
    "teeth_tgan": (EMA_STATE_PREFIX,),
    "texture_encoder": ("encoder.",),
    "teeth_encoder": ("encoder.", "generator."),
    "classifier": ("classifier.",),
    "geometry": ("generator.",),
    "recon": ("regressor.", *(f"face_model.{name}" for name in FACE_MODEL_KEEP)),
}
_KEEP_KEYS: dict[str, tuple[str, ...]] = {
    "tgan": (),
    "teeth_tgan": (),
    "texture_encoder": (ENCODER_KWARGS_KEY, TGAN_CONFIG_KEY, TGAN_SHA_KEY),
    "teeth_encoder": (ENCODER_KWARGS_KEY, TGAN_CONFIG_KEY, TGAN_SHA_KEY, MOUTH_SETTINGS_KEY),
    "classifier": (CLASSIFIER_KWARGS_KEY,),
    "geometry": (GENERATOR_KWARGS_KEY, FACE_MODEL_KEY),
    "recon": (),
}
# train.py part name expected in each bundle checkpoint.
_CKPT_PARTS: dict[str, str] = {
    "recon": RECON_PART, "tgan": TGAN_PART, "texture_encoder": TEXTURE_ENCODER_PART, "classifier": CLASSIFIER_PART,
    "geometry": GEOMETRY_PART, "teeth_tgan": TEETH_TGAN_PART, "teeth_encoder": TEETH_ENCODER_PART,
}


class BundleError(ValueError):
    """A bundle that cannot be built or loaded; the message names the part(s) and file(s)."""


@dataclass(frozen=True)
class BundleSources:
    """Where the parts of a bundle come from (files written by training and preprocessing)."""

    face_model: str  # MorphableModel.save() file (synthetic world: <world>/truth/face_model.pt)
    recon: str | None  # recon .ckpt (train.py recon); None = optimisation fitter only
    tgan: str  # tgan .ckpt (train.py tgan)
    texture_encoder: str  # texture_encoder .ckpt (train.py texture_encoder)
    classifier: str  # classifier .ckpt (train.py classifier)
    directions: str  # directions file (emoedit directions)
    geometry: str  # geometry .ckpt (train.py geometry)
    teeth_tgan: str | None = None  # teeth_tgan .ckpt (train.py teeth_tgan); needs teeth_encoder
    teeth_encoder: str | None = None  # teeth_encoder .ckpt (train.py teeth_encoder)
    cache: str | None = None  # preprocess output dir (<dir>/textures, <dir>/mouths) → PipelineSettings


# --------------------------------------------------------------------------- settings from a cache
def settings_from_cache(
    cache_dir: str | os.PathLike,  # preprocess output folder holding textures/ (and mouths/)
    *,
    smoothing_half_window: int = 2,  # default l of the temporal smoothing window
) -> tuple[PipelineSettings, dict[str, Any]]:
    """``(PipelineSettings, cache description)`` from the stored ``PreprocessConfig`` of a textures cache.

    The mouth settings come from ``<dir>/mouths`` when it exists (else from the textures
    cache's own ``mouth`` attributes: one preprocess run writes both). The description holds
    the caches' paths and the face model identity they were made with.
    """
    from emoedit.data.cache import CacheError, CacheReader
    from emoedit.data.preprocess import PreprocessConfig, PreprocessError

    root = Path(cache_dir)
    textures = root / "textures"
    if not textures.is_dir():
        raise BundleError(f"settings: {root}: no textures cache ({textures}); give the preprocess output folder "
                          "(emoedit preprocess --out DIR) the texture encoder and classifier were trained on")
    try:
        reader = CacheReader.open(textures, kind="textures", allow_unfinalized=True, verify_checksums=False)
    except CacheError as err:
        raise BundleError(f"settings: {textures}: {err}") from None
    attributes = dict(reader.attributes)
    stored = attributes.get("preprocess_config")
    if not isinstance(stored, Mapping):
        raise BundleError(f"settings: {textures}: the cache records no preprocess_config (not written by "
                          "emoedit preprocess?)")
    try:
        config = PreprocessConfig.from_dict(dict(stored))
    except (PreprocessError, TypeError, ValueError) as err:
        raise BundleError(f"settings: {textures}: cannot read the stored preprocess_config ({err})") from None
    mouth = dict(attributes.get("mouth") or {})
    mouths_dir = root / "mouths"
    if mouths_dir.is_dir():
        try:
            mouths = CacheReader.open(mouths_dir, kind="mouths", allow_unfinalized=True, verify_checksums=False)
        except CacheError as err:
            raise BundleError(f"settings: {mouths_dir}: {err}") from None
        mouth = dict(mouths.attributes.get("mouth") or mouth)
    settings = PipelineSettings(
        crop_size=int(config.crop_size),
        texture_size=int(config.texture_size),
        texture_crop_size=int(config.resolved_texture_crop_size),
        texture_sampling=str(config.texture_sampling),
        texture_region_min_cos=config.texture_region_min_cos,
        texture_region_margin=int(config.texture_region_margin),
        mouth_crop_size=int(mouth.get("crop_size", config.mouth_crop_size)),
        mouth_width=float(mouth.get("mouth_width", config.mouth_width)),
        teeth_dilate_px=float(mouth.get("teeth_dilate_px", config.teeth_dilate_px)),
        teeth_fill=float(mouth.get("teeth_fill", config.teeth_fill)),
        smoothing_half_window=int(smoothing_half_window),
    )
    description = {"path": str(root.resolve()), "textures": str(textures.resolve()),
                   "mouths": str(mouths_dir.resolve()) if mouths_dir.is_dir() else None,
                   "face_model_info": attributes.get("face_model_info")}
    return settings, description


def face_model_identity(model: MorphableModel) -> dict[str, Any]:
    """Name, sizes, layout and hashes of the mean shape and triangles (as the preprocess caches record)."""
    from emoedit.data.preprocess import face_model_identity as identity

    return identity(model)


# --------------------------------------------------------------------------- slimming
def _own(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU with a storage of its own (``torch.save`` writes whole storages)."""
    tensor = tensor.detach().cpu()
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone().contiguous()


def _plain(value: Any) -> Any:
    """A JSON round trip (plain dicts, lists, numbers, strings), for values stored in slim files."""
    return json.loads(json.dumps(value))


def slim_checkpoint(part: str, ckpt: Mapping[str, Any], *, source: str | os.PathLike) -> dict[str, Any]:
    """The weights-only subset of a ``train.py`` checkpoint that the loaders of bundle ``part`` read.

    Raises :class:`BundleError` naming ``part`` and ``source`` when the checkpoint lacks a
    key the loader needs.
    """
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("config"), Mapping):
        raise BundleError(f"{part}: {source}: no emoedit hyperparameters (not written by train.py?)")
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise BundleError(f"{part}: {source}: no state_dict")
    prefixes = _KEEP_PREFIXES[part]
    kept = {k: _own(v) for k, v in state.items() if k.startswith(prefixes)}
    if not kept:
        raise BundleError(f"{part}: {source}: no tensors under {list(prefixes)} in its state_dict")
    out: dict[str, Any] = {
        "hyper_parameters": {"part": checkpoint_part(ckpt), "config": _plain(dict(hparams["config"]))},
        "state_dict": kept,
    }
    for key in _KEEP_KEYS[part]:
        if key in ckpt and ckpt[key] is not None:
            out[key] = _plain(ckpt[key])
        elif key != MOUTH_SETTINGS_KEY:
            raise BundleError(f"{part}: {source}: the checkpoint has no '{key}' (written by an older train.py?)")
    return out


def _generator_from_encoder(ckpt: Mapping[str, Any], *, part: str, source: Path) -> dict[str, Any]:
    """A slim t-GAN checkpoint holding an encoder checkpoint's jointly fine-tuned generator as ``G_ema``."""
    config, weights = _wrap(part, source, lambda: encoder_generator_state(ckpt, path=source))
    return {"hyper_parameters": {"part": part, "config": _plain(config)},
            "state_dict": {EMA_STATE_PREFIX + k: _own(v) for k, v in weights.items()}}


# --------------------------------------------------------------------------- loading the parts
@dataclass
class _Loaded:
    """Objects loaded from part files (before they are assembled into EditParts)."""

    face_model: MorphableModel
    reconstructor: Reconstructor
    generator: StyleGAN2Generator
    encoder: PSPEncoder
    classifier: SubjectClassifier
    directions: EditDirections
    geometry: GeometryGenerator
    teeth: TeethCompleter | None


def _wrap(part: str, path: Path, action: Any) -> Any:
    """Run ``action()``; loader errors become :class:`BundleError` naming ``part`` and ``path``."""
    try:
        return action()
    except BundleError:
        raise
    except (CheckpointError, DirectionsError, FileNotFoundError, ValueError, TypeError, KeyError, RuntimeError) as err:
        text = str(err)
        where = "" if str(path) in text else f"{path}: "
        raise BundleError(f"{part}: {where}{text}") from None


def _load_objects(
    files: Mapping[str, Path],
    *,
    settings: PipelineSettings,
    recon: Mapping[str, Any],
    device: torch.device,
) -> _Loaded:
    face_model: MorphableModel = _wrap("face_model", files["face_model"],
                                       lambda: MorphableModel.load(files["face_model"]))
    face_model = face_model.to(device).eval().requires_grad_(False)
    mode = recon["mode"]
    if mode == "fitter":
        config = dict(recon.get("fitter") or {})
        reconstructor: Reconstructor = _wrap("recon", files["face_model"], lambda: FittingReconstructor(
            face_model=face_model, crop_size=settings.crop_size, config=FitterConfig(**config)))
    else:
        refine = FitterConfig(**dict(recon["refine"])) if recon.get("refine") is not None else None
        reconstructor = _wrap("recon", files["recon"], lambda: RegressorReconstructor.from_checkpoint(
            files["recon"], face_model, refine=refine))
        reconstructor.regressor.requires_grad_(False)
        reconstructor.to(device)
    generator, _ = _wrap("tgan", files["tgan"], lambda: load_ema_generator(  # hashed by verify_bundle / build
        files["tgan"], part=TGAN_PART, map_location=device))
    encoder = _wrap("texture_encoder", files["texture_encoder"],
                    lambda: PSPEncoder.from_checkpoint(files["texture_encoder"], map_location=device))
    classifier = _wrap("classifier", files["classifier"],
                       lambda: SubjectClassifier.from_checkpoint(files["classifier"], map_location=device))
    directions = _wrap("directions", files["directions"], lambda: EditDirections.load(files["directions"]))
    geometry = _wrap("geometry", files["geometry"],
                     lambda: GeometryGenerator.from_checkpoint(files["geometry"], map_location=device))
    teeth = None
    if "teeth_encoder" in files:
        teeth = _wrap("teeth_encoder", files["teeth_encoder"], lambda: TeethCompleter.from_checkpoints(
            files["teeth_encoder"], generator_checkpoint=files.get("teeth_tgan"), map_location=device,
            crop_size=settings.mouth_crop_size, mouth_width=settings.mouth_width,
            dilate_px=settings.teeth_dilate_px, fill=settings.teeth_fill))
    for module in (encoder, classifier, geometry, generator, teeth):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    return _Loaded(face_model=face_model, reconstructor=reconstructor, generator=generator, encoder=encoder,
                   classifier=classifier, directions=directions, geometry=geometry, teeth=teeth)


# --------------------------------------------------------------------------- compatibility
def _shape(num_ws: int, w_dim: int) -> str:
    return f"{num_ws}×{w_dim}"


def _check_compatibility(
    loaded: _Loaded,
    *,
    files: Mapping[str, Path],  # part → the file named in messages
    entries: Mapping[str, Mapping[str, Any]],  # part → manifest entry (source_sha256, info)
    settings: PipelineSettings,
) -> list[str]:
    """Raise :class:`BundleError` listing every incompatibility; returns notes (harmless differences)."""
    problems: list[str] = []
    notes: list[str] = []

    def name(part: str) -> str:
        return f"{part} ({files[part]})"

    g, e, c, d = loaded.generator, loaded.encoder, loaded.classifier, loaded.directions
    if (e.num_ws, e.w_dim) != (g.num_ws, g.w_dim):
        problems.append(f"{name('texture_encoder')} predicts W+ {_shape(e.num_ws, e.w_dim)} but {name('tgan')} "
                        f"takes {_shape(g.num_ws, g.w_dim)}")
    elif e.in_channels != g.img_channels:
        problems.append(f"{name('texture_encoder')} reads {e.in_channels}-channel textures but {name('tgan')} makes "
                        f"{g.img_channels} channels")
    elif not torch.allclose(e.w_avg.float().cpu(), g.mapping.w_avg.float().cpu(), atol=1e-5, rtol=1e-5):
        problems.append(f"{name('texture_encoder')} starts from another average latent than {name('tgan')}: "
                        "the encoder was trained against another t-GAN")
    encoder_info = entries["texture_encoder"].get("info", {})
    recorded = encoder_info.get(TGAN_SHA_KEY)
    if recorded != entries["tgan"].get("source_sha256"):
        problems.append(f"{name('texture_encoder')} was trained with the t-GAN checkpoint of sha256 {recorded}, but "
                        f"{name('tgan')} comes from {entries['tgan'].get('source')} of sha256 "
                        f"{entries['tgan'].get('source_sha256')}")
    if (d.num_ws, d.w_dim) != (g.num_ws, g.w_dim):
        problems.append(f"{name('directions')} are W+ {_shape(d.num_ws, d.w_dim)} but {name('tgan')} takes "
                        f"{_shape(g.num_ws, g.w_dim)}")
    encoder_source = entries["texture_encoder"].get("source_sha256")
    if d.encoder_sha256 is None:
        problems.append(f"{name('directions')} do not record the encoder checkpoint they were solved with")
    elif d.encoder_sha256 != encoder_source:
        problems.append(f"{name('directions')} were solved with the encoder checkpoint of sha256 {d.encoder_sha256}, "
                        f"but {name('texture_encoder')} comes from {entries['texture_encoder'].get('source')} of "
                        f"sha256 {encoder_source}")
    missing = [s for s in c.subjects if s not in d.subjects]
    extra = [s for s in d.subjects if s not in c.subjects]
    if missing or extra:
        problems.append(f"{name('directions')} and {name('classifier')} have different subjects: "
                        f"without directions {missing[:8]}, not in the classifier {extra[:8]}")
    if c.in_channels != g.img_channels:
        problems.append(f"{name('classifier')} reads {c.in_channels}-channel textures but {name('tgan')} makes "
                        f"{g.img_channels} channels")
    if g.img_resolution != settings.texture_size:
        notes.append(f"the t-GAN makes {g.img_resolution}² textures and the cache's textures are "
                     f"{settings.texture_size}²: textures are resized between them")
    layout = loaded.face_model.layout
    try:
        loaded.geometry.shape_layout.check(layout)
    except ValueError as err:
        problems.append(f"{name('geometry')} does not fit {name('face_model')}: {err}")
    trained = entries["geometry"].get("info", {}).get("face_model") or {}
    vertices = trained.get("num_vertices")
    if vertices is not None and int(vertices) != loaded.face_model.num_vertices:
        problems.append(f"{name('geometry')} was trained with a face model of {vertices} vertices, "
                        f"{name('face_model')} has {loaded.face_model.num_vertices}")
    if isinstance(loaded.reconstructor, RegressorReconstructor) and loaded.reconstructor.regressor.layout != layout:
        problems.append(f"{name('recon')} regresses {loaded.reconstructor.regressor.layout}, {name('face_model')} "
                        f"has {layout}")
    if loaded.teeth is not None:
        teeth_info = entries["teeth_encoder"].get("info", {})
        tgan_entry = entries.get("teeth_tgan")
        if tgan_entry is not None and teeth_info.get(TGAN_SHA_KEY) != tgan_entry.get("source_sha256"):
            problems.append(f"{name('teeth_encoder')} was trained with the teeth t-GAN checkpoint of sha256 "
                            f"{teeth_info.get(TGAN_SHA_KEY)}, but {name('teeth_tgan')} comes from "
                            f"{tgan_entry.get('source')} of sha256 {tgan_entry.get('source_sha256')}")
        trained_mouth = teeth_info.get("mouth_settings") or {}
        wanted = {"crop_size": settings.mouth_crop_size, "mouth_width": settings.mouth_width,
                  "teeth_dilate_px": settings.teeth_dilate_px, "teeth_fill": settings.teeth_fill}
        differ = [f"{key} {trained_mouth[key]!r} in training, {value!r} in the settings"
                  for key, value in wanted.items()
                  if key in trained_mouth and abs(float(trained_mouth[key]) - float(value)) > 1e-9]
        if differ:
            problems.append(f"{name('teeth_encoder')} was trained on mouth crops made with other settings: "
                            + "; ".join(differ))
    if problems:
        raise BundleError("incompatible parts:\n  " + "\n  ".join(problems))
    return notes


# --------------------------------------------------------------------------- manifest
def _now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def read_manifest(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """The validated ``manifest.json`` of a bundle (format, version, known keys, part files inside the bundle)."""
    root = Path(bundle_dir)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise BundleError(f"{root}: bundle folder not found")
    if not path.is_file():
        raise BundleError(f"{path}: no manifest: not a bundle, or an incomplete one (build_bundle writes it last)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not an emoedit bundle manifest (format is not {BUNDLE_FORMAT!r})")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle format version {manifest.get('format_version')!r}; this emoedit reads "
                          f"version {BUNDLE_VERSION} (rebuild the bundle with emoedit bundle)")
    unknown = sorted(set(manifest) - _MANIFEST_KEYS)
    absent = sorted(_MANIFEST_KEYS - set(manifest))
    if unknown or absent:
        raise BundleError(f"{path}: unknown manifest keys {unknown}, missing keys {absent}")
    parts = manifest["parts"]
    if not isinstance(parts, dict):
        raise BundleError(f"{path}: 'parts' must be an object")
    unknown_parts = sorted(set(parts) - set(PART_FILES))
    if unknown_parts:
        raise BundleError(f"{path}: unknown parts {unknown_parts}; known: {sorted(PART_FILES)}")
    missing_parts = [p for p in REQUIRED_PARTS if p not in parts]
    if missing_parts:
        raise BundleError(f"{path}: the manifest lists no {missing_parts}")
    for part, entry in parts.items():
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise BundleError(f"{part}: {path}: part entry keys {keys}, expected {sorted(_ENTRY_KEYS)}")
        if entry["file"] != f"{PARTS_DIR}/{PART_FILES[part]}":
            raise BundleError(f"{part}: {path}: file {entry['file']!r}, expected {PARTS_DIR}/{PART_FILES[part]!r}")
    recon = manifest["recon"]
    if not isinstance(recon, dict) or set(recon) != _RECON_KEYS or recon.get("mode") not in RECON_MODES:
        raise BundleError(f"recon: {path}: 'recon' must be {{mode: one of {RECON_MODES}, refine, fitter}}, "
                          f"got {recon!r}")
    if (recon["mode"] != "fitter") != ("recon" in parts):
        raise BundleError(f"recon: {path}: mode {recon['mode']!r} but the recon part is "
                          f"{'present' if 'recon' in parts else 'absent'}")
    if ("teeth_tgan" in parts) and ("teeth_encoder" not in parts):
        raise BundleError(f"teeth_tgan: {path}: a teeth t-GAN without a teeth encoder")
    try:
        PipelineSettings(**manifest["settings"])
    except TypeError as err:
        raise BundleError(f"settings: {path}: {err}") from None
    return manifest


def describe_bundle(manifest: Mapping[str, Any]) -> str:
    """A few lines per part for the command line."""
    lines = [f"emoedit bundle v{manifest['format_version']} (emoedit {manifest['emoedit_version']}, torch "
             f"{manifest['torch_version']}, built {manifest['created_utc']})",
             f"reconstruction: {manifest['recon']['mode']}"]
    for part, entry in manifest["parts"].items():
        info = entry["info"]
        keys = ", ".join(f"{k}={v}" for k, v in info.items() if not isinstance(v, (dict, list)) and "sha256" not in k)
        if "subjects" in info:
            keys += f", {len(info['subjects'])} subjects"
        lines.append(f"  {part:16s} {entry['file']:30s} {entry['size'] / 1e6:8.2f} MB  "
                     f"sha256 {entry['sha256'][:12]}…  {keys}")
    lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in manifest["settings"].items()))
    lines += [f"note: {note}" for note in manifest.get("notes") or ()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- info per part
def _generator_info(generator: StyleGAN2Generator) -> dict[str, Any]:
    return {"num_ws": generator.num_ws, "w_dim": generator.w_dim, "z_dim": generator.z_dim,
            "resolution": generator.img_resolution, "img_channels": generator.img_channels}


def _infos(loaded: _Loaded, slim: Mapping[str, Mapping[str, Any]], *, generator_from: str,
           teeth_generator_from: str | None) -> dict[str, dict[str, Any]]:
    encoder_ckpt = slim["texture_encoder"]
    infos: dict[str, dict[str, Any]] = {
        "face_model": face_model_identity(loaded.face_model),
        "tgan": {**_generator_info(loaded.generator), "weights_from": generator_from},
        "texture_encoder": {"num_ws": loaded.encoder.num_ws, "w_dim": loaded.encoder.w_dim,
                            "input_size": loaded.encoder.input_size, TGAN_SHA_KEY: encoder_ckpt.get(TGAN_SHA_KEY),
                            "finetune_generator": finetunes_generator(encoder_ckpt)},
        "classifier": {"subjects": list(loaded.classifier.subjects), "input_size": loaded.classifier.input_size},
        "directions": {"subjects": list(loaded.directions.subjects), "num_ws": loaded.directions.num_ws,
                       "w_dim": loaded.directions.w_dim, "level": loaded.directions.level,
                       "solved": list(loaded.directions.solved or ()),
                       "encoder_sha256": loaded.directions.encoder_sha256,
                       "subject_temperature": loaded.directions.subject_temperature},
        "geometry": {"id_dim": loaded.geometry.shape_layout.id, "exp_dim": loaded.geometry.shape_layout.exp,
                     "face_model": dict(slim["geometry"].get(FACE_MODEL_KEY) or {})},
    }
    if isinstance(loaded.reconstructor, RegressorReconstructor):
        regressor = loaded.reconstructor.regressor
        infos["recon"] = {"backbone": str(slim["recon"]["hyper_parameters"]["config"].get("backbone")),
                          "input_size": regressor.input_size, "layout_size": regressor.layout.size}
    if loaded.teeth is not None:
        teeth_ckpt = slim["teeth_encoder"]
        infos["teeth_encoder"] = {"num_ws": loaded.teeth.encoder.num_ws, "w_dim": loaded.teeth.encoder.w_dim,
                                  "input_size": loaded.teeth.encoder.input_size,
                                  TGAN_SHA_KEY: teeth_ckpt.get(TGAN_SHA_KEY),
                                  "finetune_generator": finetunes_generator(teeth_ckpt),
                                  "mouth_settings": dict(teeth_ckpt.get(MOUTH_SETTINGS_KEY) or {}),
                                  "generator_from": teeth_generator_from}
        if "teeth_tgan" in slim:
            infos["teeth_tgan"] = _generator_info(loaded.teeth.generator)
    return _plain(infos)


# --------------------------------------------------------------------------- build
def _check_source(part: str, path: str | None) -> Path:
    if not path:
        raise BundleError(f"{part}: no source file given")
    source = Path(path)
    if not source.is_file():
        raise BundleError(f"{part}: {source}: file not found")
    return source


def _checkpoint(part: str, source: Path) -> dict[str, Any]:
    ckpt = _wrap(part, source, lambda: load_checkpoint(source))
    _wrap(part, source, lambda: require_part(ckpt, _CKPT_PARTS[part], source))
    return ckpt


def _fitter_config(part: str, values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    try:
        FitterConfig(**dict(values))
    except (TypeError, ValueError) as err:
        raise BundleError(f"{part}: fitter settings {dict(values)!r}: {err}") from None
    return _plain(dict(values))


def build_bundle(
    out_dir: str | os.PathLike,  # bundle folder to write (created; an existing bundle there is replaced)
    sources: BundleSources,  # where the parts come from
    *,
    recon_refine: Mapping[str, Any] | None = None,  # regressor + fitter refinement with these FitterConfig overrides
    fitter: Mapping[str, Any] | None = None,  # fitter-only mode (sources.recon None): FitterConfig overrides
    smoothing_half_window: int = 2,  # default l of the temporal smoothing (settings from the cache)
    settings: PipelineSettings | None = None,  # explicit settings (instead of sources.cache)
) -> Path:
    """Gather, slim, check and checksum the parts into ``out_dir``; returns the manifest path.

    Every file is written atomically; ``manifest.json`` last. Any problem raises
    :class:`BundleError` naming the part and file (nothing is left behind but an
    incomplete bundle without manifest, which :func:`load_bundle` refuses).
    """
    out = Path(out_dir)
    notes: list[str] = []
    # ---- settings
    cache_info: dict[str, Any] | None = None
    if settings is None:
        if sources.cache is None:
            raise BundleError("settings: give sources.cache (the preprocess output folder the parts were trained on) "
                              "or explicit PipelineSettings")
        settings, cache_info = settings_from_cache(sources.cache, smoothing_half_window=smoothing_half_window)
    elif sources.cache is not None:
        _, cache_info = settings_from_cache(sources.cache, smoothing_half_window=smoothing_half_window)
    # ---- reconstruction mode
    if sources.recon is None:
        if recon_refine is not None:
            raise BundleError("recon: refinement settings given but no recon checkpoint (use fitter= for the "
                              "fitter-only mode)")
        recon = {"mode": "fitter", "refine": None, "fitter": _fitter_config("recon", fitter or {})}
    else:
        if fitter is not None:
            raise BundleError("recon: fitter= is the fitter-only mode; with a recon checkpoint use recon_refine=")
        refine = _fitter_config("recon", recon_refine)
        recon = {"mode": "regressor" if refine is None else "regressor+fit", "refine": refine, "fitter": None}
    if sources.teeth_tgan is not None and sources.teeth_encoder is None:
        raise BundleError(f"teeth_tgan: {sources.teeth_tgan}: a teeth t-GAN needs a teeth encoder (teeth_encoder)")
    # ---- sources
    paths: dict[str, Path] = {part: _check_source(part, getattr(sources, part)) for part in REQUIRED_PARTS}
    for part in ("recon", "teeth_tgan", "teeth_encoder"):
        if getattr(sources, part) is not None:
            paths[part] = _check_source(part, getattr(sources, part))
    source_sha = {part: sha256_file(path) for part, path in paths.items()}
    face_model = _wrap("face_model", paths["face_model"], lambda: MorphableModel.load(paths["face_model"]))
    if cache_info is not None and cache_info.get("face_model_info"):
        cached, mine = cache_info["face_model_info"], face_model_identity(face_model)
        differ = [k for k in ("mean_shape_sha256", "triangles_sha256", "layout", "num_vertices")
                  if k in cached and cached[k] != mine[k]]
        if differ:
            raise BundleError(f"face_model: {paths['face_model']} is not the face model of the cache "
                              f"{cache_info['textures']} ({', '.join(differ)} differ)")
    if "recon" in paths:  # the full face-model check, with every basis (the slim file keeps two buffers)
        _wrap("recon", paths["recon"], lambda: load_recon_regressor(paths["recon"], face_model))
    _wrap("directions", paths["directions"], lambda: EditDirections.load(paths["directions"]))
    raw = {part: _checkpoint(part, paths[part]) for part in paths if part in _CKPT_PARTS}
    slim = {part: slim_checkpoint(part, ckpt, source=paths[part]) for part, ckpt in raw.items()}
    generator_from = "tgan G_ema"
    if finetunes_generator(raw["texture_encoder"]):
        slim["tgan"] = _generator_from_encoder(raw["texture_encoder"], part=TGAN_PART, source=paths["texture_encoder"])
        generator_from = "texture_encoder generator (fine-tuned jointly with the encoder)"
        notes.append("the texture encoder fine-tuned its generator: the bundled t-GAN is the encoder's generator")
    teeth_generator_from = None
    if "teeth_encoder" in raw:
        teeth_generator_from = "teeth_encoder generator"
        if "teeth_tgan" in raw:
            recorded = raw["teeth_encoder"].get(TGAN_SHA_KEY)
            if recorded != source_sha["teeth_tgan"]:
                raise BundleError(f"teeth_encoder: {paths['teeth_encoder']} was trained with the teeth t-GAN "
                                  f"checkpoint of sha256 {recorded}, but teeth_tgan {paths['teeth_tgan']} has "
                                  f"sha256 {source_sha['teeth_tgan']}")
            if finetunes_generator(raw["teeth_encoder"]):
                del slim["teeth_tgan"]
                notes.append("the teeth encoder fine-tuned its generator: the teeth t-GAN's G_ema is not bundled")
            else:
                teeth_generator_from = "teeth_tgan G_ema"
    del raw
    # ---- write the part files (an old manifest goes first: the folder is incomplete until the new one)
    parts_dir = out / PARTS_DIR
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    bundled = {"face_model", "directions", *slim}
    files = {part: parts_dir / name for part, name in PART_FILES.items() if part in bundled}  # manifest order
    try:
        for part in ("face_model", "directions"):  # plain files: copied byte for byte
            with atomic_path(files[part]) as tmp:
                shutil.copyfile(paths[part], tmp)
        for part, ckpt in slim.items():
            atomic_torch_save(ckpt, files[part])
        for stale in set(PART_FILES) - set(files):
            (parts_dir / PART_FILES[stale]).unlink(missing_ok=True)
        # ---- load the written files exactly as load_bundle does and check them together
        loaded = _load_objects(files, settings=settings, recon=recon, device=torch.device("cpu"))
        infos = _infos(loaded, slim, generator_from=generator_from, teeth_generator_from=teeth_generator_from)
        entries = {part: {"file": f"{PARTS_DIR}/{PART_FILES[part]}", "sha256": sha256_file(path),
                          "size": path.stat().st_size, "source": str(paths[part].resolve()),
                          "source_sha256": source_sha[part],
                          "part": checkpoint_part(slim[part]) if part in slim else part,
                          "info": infos.get(part, {})}
                   for part, path in files.items()}
        notes += _check_compatibility(loaded, files={part: paths[part] for part in files}, entries=entries,
                                     settings=settings)
    except BaseException:
        for path in files.values():
            path.unlink(missing_ok=True)
        raise
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "emoedit_version": emoedit.__version__,
        "torch_version": torch.__version__,
        "created_utc": _now_utc(),
        "parts": entries,
        "settings": settings.to_json(),
        "recon": recon,
        "notes": notes,
    }
    return atomic_write_text(out / MANIFEST_FILE, json.dumps(_plain(manifest), indent=2, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- load
def verify_bundle(bundle_dir: str | os.PathLike, manifest: Mapping[str, Any] | None = None) -> None:
    """Recompute every part file's size and SHA-256 and compare them with the manifest.

    Raises :class:`BundleError` naming the part of the first missing, resized or modified file.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root) if manifest is None else manifest
    for part, entry in manifest["parts"].items():
        path = root / entry["file"]
        if not path.is_file():
            raise BundleError(f"{part}: {path}: file missing from the bundle")
        size = path.stat().st_size
        if size != entry["size"]:
            raise BundleError(f"{part}: {path}: size {size} bytes, the manifest says {entry['size']} (modified?)")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise BundleError(f"{part}: {path}: sha256 {digest} does not match the manifest's {entry['sha256']} "
                              "(modified or corrupt)")


def load_bundle(
    bundle_dir: str | os.PathLike,  # a folder written by build_bundle
    *,
    device: str | torch.device = "cpu",  # device of every network and the face model
    verify: bool = True,  # recompute and compare every part file's SHA-256 first
) -> EditParts:
    """Load a bundle into :class:`EditParts` (``weights_only`` files, eval mode, no gradients, on ``device``).

    Raises :class:`BundleError` naming the part for a missing or modified file, an unknown
    manifest version or key, or parts that do not fit together.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    if verify:
        verify_bundle(root, manifest)
    else:
        for part, entry in manifest["parts"].items():
            if not (root / entry["file"]).is_file():
                raise BundleError(f"{part}: {root / entry['file']}: file missing from the bundle")
    settings = PipelineSettings(**manifest["settings"])
    files = {part: root / entry["file"] for part, entry in manifest["parts"].items()}
    loaded = _load_objects(files, settings=settings, recon=manifest["recon"], device=torch.device(device))
    _check_compatibility(loaded, files=files, entries=manifest["parts"], settings=settings)
    identity = face_model_identity(loaded.face_model)
    recorded = manifest["parts"]["face_model"]["info"]
    if any(recorded.get(k) != identity[k] for k in ("mean_shape_sha256", "triangles_sha256", "layout")):
        raise BundleError(f"face_model: {files['face_model']}: not the face model the manifest describes")
    try:
        editor = TextureEditor.from_directions(loaded.directions, loaded.classifier.subjects)
    except (DirectionsError, ValueError) as err:
        raise BundleError(f"directions: {files['directions']}: {err}") from None
    editor = editor.to(torch.device(device)).eval().requires_grad_(False)
    provenance: dict[str, Any] = {part: dict(entry) for part, entry in manifest["parts"].items()}
    provenance["bundle"] = {"path": str(root.resolve()), "manifest_sha256": sha256_file(root / MANIFEST_FILE),
                            "created_utc": manifest["created_utc"], "format_version": manifest["format_version"],
                            "recon": dict(manifest["recon"]), "notes": list(manifest["notes"])}
    return EditParts(
        face_model=loaded.face_model, reconstructor=loaded.reconstructor, generator=loaded.generator,
        encoder=loaded.encoder, classifier=loaded.classifier, texture_editor=editor, geometry=loaded.geometry,
        teeth=loaded.teeth, settings=settings, provenance=provenance,
    )


def frozen_modules(parts: EditParts) -> dict[str, nn.Module]:
    """The networks of ``parts`` by name (for checks: all in eval mode, none requiring gradients)."""
    modules: dict[str, nn.Module] = {
        "face_model": parts.face_model, "generator": parts.generator, "encoder": parts.encoder,
        "classifier": parts.classifier, "texture_editor": parts.texture_editor, "geometry": parts.geometry,
    }
    regressor = getattr(parts.reconstructor, "regressor", None)
    if isinstance(regressor, nn.Module):
        modules["regressor"] = regressor
    if parts.teeth is not None:
        modules["teeth"] = parts.teeth
    return modules


__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MANIFEST_FILE",
    "PART_FILES",
    "BundleError",
    "BundleSources",
    "build_bundle",
    "describe_bundle",
    "face_model_identity",
    "frozen_modules",
    "load_bundle",
    "read_manifest",
    "settings_from_cache",
    "slim_checkpoint",
    "verify_bundle",
]
