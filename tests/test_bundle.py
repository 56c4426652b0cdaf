"""Pipeline bundle: build from tiny train.py-format checkpoints, load, checksums, compatibility checks, CLI.

The checkpoints are written from tiny freshly built systems in exactly train.py's format
(:func:`write_train_checkpoint`: the keys of Lightning's ``Trainer.save_checkpoint`` —
epoch, global_step, version, state_dict, hyper_parameters, optimizer states after one
step, loops, callbacks — plus each system's ``on_save_checkpoint`` keys), because training
all eight parts with ``train.py`` even for one step would take the whole test budget. The
preprocess caches hold only their spec (attributes as ``emoedit preprocess`` records
them) and one record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from emoedit.atomic_io import sha256_file
from emoedit.checkpoint_io import load_checkpoint
from emoedit.data.cache import CacheSpec, CacheWriter
from emoedit.data.preprocess import PreprocessConfig, face_model_identity
from emoedit.editing.directions import EditDirections
from emoedit.editing.emotion_code import EMOTIONS
from emoedit.editing.teeth_completion import TeethCompleter
from emoedit.editing.texture_editor import TextureEditor
from emoedit.face_model import MorphableModel
from emoedit.networks.geometry_editor import GeometryGenerator
from emoedit.networks.psp_encoder import PSPEncoder
from emoedit.networks.subject_classifier import SubjectClassifier
from emoedit.pipeline.bundle import (
    BUNDLE_VERSION,
    BundleError,
    BundleSources,
    build_bundle,
    frozen_modules,
    load_bundle,
    read_manifest,
)
from emoedit.pipeline.parts import PipelineSettings
from emoedit.reconstruction.fitter import FitterConfig
from emoedit.reconstruction.reconstructor import FittingReconstructor, RegressorReconstructor

SUBJECTS = ("M001", "M002", "W003")
TEXTURE_SIZE = 32
CROP_SIZE = 64
MOUTH_SIZE = 32
TINY_TGAN = dict(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16, num_samples=4)
TINY_ENCODER = dict(input_size=32, depth=10, widths=[8, 16, 32, 64], loss={"lpips": 0.0})
MOUTH_SETTINGS = {"crop_size": MOUTH_SIZE, "mouth_width": 0.5, "template": "default", "teeth_dilate_px": 1.0,
                  "teeth_fill": 0.0, "inner_lip_ids": list(range(60, 68))}
TRAINING_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "epoch", "global_step",
                 "pytorch-lightning_version")


# --------------------------------------------------------------------------- helpers (reused by test_batch_edit)
def _perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Move every floating parameter a little (zero-initialised layers would make outputs trivial)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def write_train_checkpoint(system: pl.LightningModule, path: Path, *, step: int = 1) -> Path:
    """``system`` saved in train.py's checkpoint format (see the module docstring)."""
    optimizer = torch.optim.Adam([p for p in system.parameters() if p.requires_grad] or [torch.zeros(1)], lr=1e-3)
    for p in system.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradients: Adam moves nothing but fills its state (exp_avg, exp_avg_sq)
    optimizer.zero_grad(set_to_none=True)
    ckpt = {
        "epoch": 0, "global_step": step, "pytorch-lightning_version": pl.__version__,
        "state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams), "hparams_name": "kwargs",
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": step}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": torch.tensor(0.0),
                                                          "best_model_path": "", "dirpath": str(path.parent)}},
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [],
    }
    system.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def write_preprocess_cache(root: Path, face_model: MorphableModel, *, texture_size: int = TEXTURE_SIZE,
                           crop_size: int = CROP_SIZE, mouth_size: int = MOUTH_SIZE, mouth_width: float = 0.5) -> Path:
    """``root/textures`` and ``root/mouths`` with the spec attributes ``emoedit preprocess`` records (1 record each)."""
    config = PreprocessConfig(output_dir=str(root), stage="reconstruct", crop_size=crop_size,
                              texture_size=texture_size, mouth_crop_size=mouth_size, mouth_width=mouth_width)
    common = {"face_model": face_model.name, "face_model_info": face_model_identity(face_model),
              "crop_size": crop_size,
              "texture": {"texture_size": texture_size, "texture_crop_size": config.resolved_texture_crop_size,
                          "sampling": config.texture_sampling},
              "mouth": {"crop_size": mouth_size, "mouth_width": mouth_width, "template": "default",
                        "teeth_dilate_px": config.teeth_dilate_px, "teeth_fill": config.teeth_fill,
                        "inner_lip_ids": list(range(60, 68))}}
    meta = {"subject": "str", "frame": "int"}
    for kind, fields in (("textures", {"uv_texture": ("uint8", (3, texture_size, texture_size))}),
                         ("mouths", {"crop": ("uint8", (3, mouth_size, mouth_size))})):
        spec = CacheSpec(kind=kind, version=1, fields=fields, meta=meta,
                         attributes={**common, "preprocess_config": config.content_settings(kind)})
        writer = CacheWriter.open(root / kind, spec)
        name, (_, shape) = next(iter(fields.items()))
        writer.write_clip("M001/front/neutral/001", {name: torch.zeros(1, *shape, dtype=torch.uint8)},
                          {"subject": "M001", "frame": [0]})
        writer.finalize()
    return root


def write_directions(path: Path, encoder_ckpt: Path | None, *, subjects=SUBJECTS, num_ws: int = 8, w_dim: int = 16,
                     seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    n = len(subjects)
    EditDirections(
        directions=torch.randn(n, len(EMOTIONS), num_ws, w_dim, generator=g), subjects=tuple(subjects),
        emotions=EMOTIONS, level=3, counts=torch.full((n, len(EMOTIONS)), 4), neutral_counts=torch.full((n,), 4),
        encoder_sha256=sha256_file(encoder_ckpt) if encoder_ckpt is not None else None,
    ).save(path)
    return path


def make_world(root: Path, *, seed: int = 0, teeth: bool = True) -> dict[str, Path]:
    """Tiny checkpoints of every part in train.py's format, a face model, directions and a preprocess cache."""
    from lightning_modules.classifier import ClassifierSystem
    from lightning_modules.geometry import GeometrySystem
    from lightning_modules.recon import ReconSystem
    from lightning_modules.teeth import TeethEncoderSystem, TeethTGANSystem
    from lightning_modules.texture_encoder import TextureEncoderSystem
    from lightning_modules.tgan import TGANSystem

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    face_model = MorphableModel.procedural()
    w: dict[str, Path] = {"face_model": face_model.save(root / "face_model.pt")}
    tgan = TGANSystem(config=dict(TINY_TGAN))
    _perturb(tgan.G_ema)  # a G_ema distinct from G: loading the wrong one would show
    w["tgan"] = write_train_checkpoint(tgan, root / "tgan.ckpt")
    encoder = TextureEncoderSystem(config=dict(tgan_checkpoint=str(w["tgan"]), **TINY_ENCODER))
    _perturb(encoder.encoder)
    w["texture_encoder"] = write_train_checkpoint(encoder, root / "texture_encoder.ckpt")
    classifier = ClassifierSystem(config=dict(subjects=list(reversed(SUBJECTS)), input_size=32, depth=10,
                                              widths=[8, 16, 32, 64]))
    w["classifier"] = write_train_checkpoint(classifier, root / "classifier.ckpt")
    tiny = {"hidden_dim": 16, "num_layers": 2}
    geometry = GeometrySystem(config=dict(face_model=str(w["face_model"]), generator=tiny, discriminator=tiny))
    _perturb(geometry.generator)
    w["geometry"] = write_train_checkpoint(geometry, root / "geometry.ckpt")
    recon = ReconSystem(config=dict(backbone="resnet_tiny", crop_size=CROP_SIZE, render_backend="torch",
                                    face_model=str(w["face_model"])))
    w["recon"] = write_train_checkpoint(recon, root / "recon.ckpt")
    if teeth:
        teeth_tgan = TeethTGANSystem(config=dict(TINY_TGAN))
        _perturb(teeth_tgan.G_ema)
        w["teeth_tgan"] = write_train_checkpoint(teeth_tgan, root / "teeth_tgan.ckpt")
        teeth_encoder = TeethEncoderSystem(config=dict(tgan_checkpoint=str(w["teeth_tgan"]), **TINY_ENCODER))
        teeth_encoder._mouth_settings = dict(MOUTH_SETTINGS)
        _perturb(teeth_encoder.encoder)
        w["teeth_encoder"] = write_train_checkpoint(teeth_encoder, root / "teeth_encoder.ckpt")
    w["directions"] = write_directions(root / "directions.pt", w["texture_encoder"])
    w["cache"] = write_preprocess_cache(root / "cache", face_model)
    return w


def sources_of(world: dict[str, Path], **changes) -> BundleSources:
    names = ("face_model", "recon", "tgan", "texture_encoder", "classifier", "directions", "geometry", "teeth_tgan",
             "teeth_encoder", "cache")
    values = {name: (str(world[name]) if name in world else None) for name in names}
    values.update({k: (None if v is None else str(v)) for k, v in changes.items()})
    return BundleSources(**values)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("bundle_world"))


@pytest.fixture(scope="module")
def built(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    build_bundle(out, sources_of(world), smoothing_half_window=3)
    return out


# --------------------------------------------------------------------------- round trip
def test_round_trip_gives_identical_outputs(world, built):
    from lightning_modules.teeth import load_teeth_tgan_generator
    from lightning_modules.texture_encoder import load_tgan_generator

    parts = load_bundle(built)
    g = torch.Generator().manual_seed(1)
    # t-GAN generator = the t-GAN's G_ema
    generator, _, _ = load_tgan_generator(world["tgan"])
    ws = torch.randn(2, generator.num_ws, generator.w_dim, generator=g)
    assert torch.equal(parts.generator.synthesis(ws, noise_mode="const"), generator.synthesis(ws, noise_mode="const"))
    # encoder, classifier
    textures = torch.rand(2, 3, TEXTURE_SIZE, TEXTURE_SIZE, generator=g) * 2 - 1
    encoder = PSPEncoder.from_checkpoint(world["texture_encoder"])
    assert torch.equal(parts.encoder(textures).wplus, encoder(textures).wplus)
    classifier = SubjectClassifier.from_checkpoint(world["classifier"])
    assert torch.equal(parts.classifier(textures).logits, classifier(textures).logits)
    # texture editor rows follow the classifier (whose order differs from the directions file's)
    assert parts.texture_editor.subjects == parts.classifier.subjects == tuple(reversed(SUBJECTS))
    editor = TextureEditor.load(world["directions"], classifier.subjects)
    code = torch.zeros(2, len(EMOTIONS))
    code[:, 0] = 0.7
    weights = classifier(textures).subject_weights.detach()
    assert torch.equal(parts.texture_editor(ws, code, subject_weights=weights).wplus,
                       editor(ws, code, subject_weights=weights).wplus)
    # geometry
    geometry = GeometryGenerator.from_checkpoint(world["geometry"])
    s = torch.randn(3, geometry.shape_size, generator=g)
    e = torch.rand(3, 7, generator=g)
    out = parts.geometry(s, e, s.flip(0)).shape_coeffs
    assert torch.equal(out, geometry(s, e, s.flip(0)).shape_coeffs) and not torch.equal(out, s)
    # reconstruction regressor
    model = MorphableModel.load(world["face_model"])
    reference = RegressorReconstructor.from_checkpoint(world["recon"], model)
    assert isinstance(parts.reconstructor, RegressorReconstructor)
    crops = torch.rand(2, 3, CROP_SIZE, CROP_SIZE, generator=g)
    assert torch.equal(parts.reconstructor.regress(crops), reference.regress(crops))
    assert torch.equal(parts.face_model.mean_shape, model.mean_shape)
    # teeth: the teeth t-GAN's G_ema decodes the teeth encoder's latents
    teeth = TeethCompleter.from_checkpoints(world["teeth_encoder"], generator_checkpoint=world["teeth_tgan"])
    crops = torch.rand(2, 3, MOUTH_SIZE, MOUTH_SIZE, generator=g)
    assert torch.equal(parts.teeth.complete_crops(crops)[0], teeth.complete_crops(crops)[0])
    teeth_generator, _, _ = load_teeth_tgan_generator(world["teeth_tgan"])
    assert torch.equal(parts.teeth.generator.synthesis(ws, noise_mode="const"),
                       teeth_generator.synthesis(ws, noise_mode="const"))
    # everything frozen
    for name, module in frozen_modules(parts).items():
        assert not module.training, name
        assert not any(p.requires_grad for p in module.parameters()), name


def test_manifest_records_sources_settings_and_sizes(world, built):
    manifest = read_manifest(built)
    assert manifest["format_version"] == BUNDLE_VERSION and manifest["torch_version"] == torch.__version__
    assert manifest["created_utc"].endswith("Z")
    assert set(manifest["parts"]) == {"face_model", "recon", "tgan", "texture_encoder", "classifier", "directions",
                                      "geometry", "teeth_tgan", "teeth_encoder"}
    for part, entry in manifest["parts"].items():
        path = built / entry["file"]
        assert entry["sha256"] == sha256_file(path) and entry["size"] == path.stat().st_size, part
        assert entry["source"] == str(world[part].resolve()) and entry["source_sha256"] == sha256_file(world[part])
    info = {part: entry["info"] for part, entry in manifest["parts"].items()}
    assert info["tgan"]["num_ws"] == info["texture_encoder"]["num_ws"] == info["directions"]["num_ws"] == 8
    assert info["tgan"]["w_dim"] == 16 and info["tgan"]["resolution"] == 32
    assert info["classifier"]["subjects"] == list(reversed(SUBJECTS))
    assert info["face_model"]["num_vertices"] == MorphableModel.procedural().num_vertices
    assert manifest["parts"]["tgan"]["part"] == "tgan" and manifest["parts"]["recon"]["part"] == "recon"
    assert manifest["recon"] == {"mode": "regressor", "refine": None, "fitter": None}
    settings = PipelineSettings(**manifest["settings"])
    assert settings == PipelineSettings(crop_size=CROP_SIZE, texture_size=TEXTURE_SIZE,
                                        texture_crop_size=2 * TEXTURE_SIZE, mouth_crop_size=MOUTH_SIZE,
                                        smoothing_half_window=3)
    assert load_bundle(built, verify=False).settings == settings


def test_slim_files_hold_only_what_the_loaders_read(world, built):
    for part in ("tgan", "texture_encoder", "classifier", "geometry", "recon", "teeth_tgan", "teeth_encoder"):
        slim = load_checkpoint(built / "parts" / f"{part}.ckpt")
        assert not set(TRAINING_KEYS) & set(slim), part
        assert set(slim["hyper_parameters"]) == {"part", "config"}, part
        source = load_checkpoint(world[part])
        for key, value in slim["state_dict"].items():
            assert torch.equal(value, source["state_dict"][key]), (part, key)
    assert all(k.startswith("G_ema.") for k in load_checkpoint(built / "parts" / "tgan.ckpt")["state_dict"])
    recon = load_checkpoint(built / "parts" / "recon.ckpt")["state_dict"]
    assert "face_model.id_basis" not in recon and "face_model.mean_shape" in recon
    assert (built / "parts" / "tgan.ckpt").stat().st_size < world["tgan"].stat().st_size / 2
    assert (built / "parts" / "face_model.pt").read_bytes() == world["face_model"].read_bytes()


def test_everything_is_loaded_weights_only(built, monkeypatch):
    calls: list[object] = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_bundle(built)
    assert len(calls) >= 9 and all(flag is True for flag in calls), calls


def test_load_hashes_each_file_once(built, monkeypatch):
    import emoedit.networks.stylegan2.checkpoint as generator_checkpoint
    import emoedit.pipeline.bundle as bundle_module

    hashed: list[Path] = []

    def counting(path, *args, **kwargs):
        hashed.append(Path(path).resolve())
        return sha256_file(path, *args, **kwargs)

    for module in (bundle_module, generator_checkpoint):
        monkeypatch.setattr(module, "sha256_file", counting)
    load_bundle(built)
    assert len(hashed) == len(set(hashed)), sorted(str(p) for p in hashed)
    assert (built / "parts" / "tgan.ckpt").resolve() in hashed


# --------------------------------------------------------------------------- integrity
def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_or_missing_part_names_the_part(built, tmp_path):
    bundle = _copy(built, tmp_path / "b")
    path = bundle / "parts" / "classifier.ckpt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"classifier: .*classifier.ckpt: sha256 .* does not match"):
        load_bundle(bundle)
    (bundle / "parts" / "geometry.ckpt").unlink()
    with pytest.raises(BundleError, match=r"geometry: .*geometry.ckpt: file missing"):
        load_bundle(bundle, verify=False)


def test_missing_foreign_or_unknown_manifest(built, tmp_path):
    bundle = _copy(built, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest"):
        load_bundle(bundle)
    for change, pattern in (({"format_version": 0}, "format version 0"), ({"format": "other"}, "not an emoedit"),
                            ({"extra": 1}, r"unknown manifest keys \['extra'\]")):
        (bundle / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(BundleError, match=pattern):
            load_bundle(bundle)
    parts = {**manifest["parts"], "tgan": {**manifest["parts"]["tgan"], "comment": "x"}}
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "parts": parts}))
    with pytest.raises(BundleError, match="tgan: .*part entry keys"):
        load_bundle(bundle)
    settings = {**manifest["settings"], "colour": 1}
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "settings": settings}))
    with pytest.raises(BundleError, match="settings: .*colour"):
        load_bundle(bundle)


# --------------------------------------------------------------------------- compatibility
def test_directions_of_another_encoder_are_refused(world, tmp_path):
    other = write_directions(tmp_path / "other.pt", world["classifier"])  # records another file's checksum
    with pytest.raises(BundleError, match=r"directions \(.*other.pt\) were solved with the encoder checkpoint"):
        build_bundle(tmp_path / "b", sources_of(world, directions=other))
    assert not (tmp_path / "b" / "manifest.json").exists()
    assert not list((tmp_path / "b" / "parts").iterdir())  # nothing half-built is left behind


def test_subjects_of_directions_and_classifier_must_agree(world, tmp_path):
    other = write_directions(tmp_path / "d.pt", world["texture_encoder"], subjects=("M001", "M002", "W009"))
    with pytest.raises(BundleError, match=r"different subjects: without directions \['W003'\].*\['W009'\]"):
        build_bundle(tmp_path / "b", sources_of(world, directions=other))


def test_directions_temperature_reaches_the_texture_editor(world, built, tmp_path):
    assert load_bundle(built, verify=False).texture_editor.subject_temperature == 1.0  # the paper by default
    assert read_manifest(built)["parts"]["directions"]["info"]["subject_temperature"] == 1.0
    tempered = EditDirections.load(world["directions"]).with_subject_temperature(6.0)
    path = tempered.save(tmp_path / "tempered.pt")
    out = tmp_path / "b"
    build_bundle(out, sources_of(world, directions=path))
    parts = load_bundle(out, verify=False)
    assert parts.texture_editor.subject_temperature == 6.0
    assert read_manifest(out)["parts"]["directions"]["info"]["subject_temperature"] == 6.0
    ws = torch.randn(1, parts.texture_editor.num_ws, parts.texture_editor.w_dim)
    code = torch.zeros(1, len(EMOTIONS))
    code[0, 1] = 1.0
    weights = torch.softmax(torch.tensor([[5.0, 0.0, -2.0]]), dim=-1)
    paper = TextureEditor.from_directions(EditDirections.load(world["directions"]), parts.classifier.subjects)
    assert torch.allclose(parts.texture_editor(ws, code, subject_weights=weights).wplus,
                          paper(ws, code, subject_weights=torch.softmax(weights.log() / 6.0, dim=-1)).wplus, atol=1e-5)


def test_wplus_mismatch_is_refused(world, tmp_path):
    from lightning_modules.tgan import TGANSystem

    wide = write_directions(tmp_path / "d.pt", world["texture_encoder"], w_dim=8)
    with pytest.raises(BundleError, match=r"directions .* are W\+ 8×8 but tgan .* takes 8×16"):
        build_bundle(tmp_path / "b", sources_of(world, directions=wide))
    torch.manual_seed(3)
    narrow = write_train_checkpoint(TGANSystem(config={**TINY_TGAN, "w_dim": 8}), tmp_path / "narrow_tgan.ckpt")
    with pytest.raises(BundleError) as info:
        build_bundle(tmp_path / "b2", sources_of(world, tgan=narrow))
    text = str(info.value)
    assert "texture_encoder" in text and "predicts W+ 8×16 but tgan" in text and "narrow_tgan.ckpt" in text
    assert "was trained with the t-GAN checkpoint of sha256" in text


def test_face_model_teeth_and_settings_checks(world, tmp_path):
    small = MorphableModel.procedural(num_identity=8, num_albedo=8).save(tmp_path / "small.pt")
    with pytest.raises(BundleError, match="face_model: .*small.pt is not the face model of the cache"):
        build_bundle(tmp_path / "b", sources_of(world, face_model=small))
    other_cache = write_preprocess_cache(tmp_path / "cache", MorphableModel.load(world["face_model"]), mouth_width=0.4)
    with pytest.raises(BundleError, match=r"teeth_encoder \(.*\) was trained on mouth crops .*mouth_width 0.5"):
        build_bundle(tmp_path / "b", sources_of(world, cache=other_cache))
    with pytest.raises(BundleError, match="settings: give sources.cache"):
        build_bundle(tmp_path / "b", sources_of(world, cache=None))
    with pytest.raises(BundleError, match="teeth_tgan: .*needs a teeth encoder"):
        build_bundle(tmp_path / "b", sources_of(world, teeth_encoder=None))
    with pytest.raises(BundleError, match="classifier: .*nope.ckpt: file not found"):
        build_bundle(tmp_path / "b", sources_of(world, classifier=tmp_path / "nope.ckpt"))
    with pytest.raises(BundleError, match="geometry: .*checkpoint of part 'classifier', expected 'geometry'"):
        build_bundle(tmp_path / "b", sources_of(world, geometry=world["classifier"]))


def test_fitter_modes_explicit_settings_and_no_teeth(world, tmp_path):
    settings = PipelineSettings(crop_size=48, texture_size=32, texture_crop_size=64, mouth_crop_size=MOUTH_SIZE)
    build_bundle(tmp_path / "fit", sources_of(world, recon=None, teeth_tgan=None, teeth_encoder=None, cache=None),
                 fitter={"pose_steps": 3}, settings=settings)
    parts = load_bundle(tmp_path / "fit")
    assert isinstance(parts.reconstructor, FittingReconstructor) and parts.teeth is None
    assert parts.reconstructor.crop_size == 48 and parts.reconstructor.config == FitterConfig(pose_steps=3)
    assert read_manifest(tmp_path / "fit")["recon"] == {"mode": "fitter", "refine": None, "fitter": {"pose_steps": 3}}
    assert parts.reconstructor.face_model is parts.face_model
    manifest = build_bundle(tmp_path / "refine", sources_of(world), recon_refine={"photo_steps": 0})
    parts = load_bundle(manifest.parent)
    assert isinstance(parts.reconstructor, RegressorReconstructor)
    assert parts.reconstructor.refine == FitterConfig(photo_steps=0)
    with pytest.raises(BundleError, match="recon: fitter settings .*bogus"):
        build_bundle(tmp_path / "bad", sources_of(world), recon_refine={"bogus": 1})


def test_rebuilding_in_place_replaces_the_bundle(world, tmp_path):
    out = tmp_path / "b"
    build_bundle(out, sources_of(world))
    build_bundle(out, sources_of(world, teeth_tgan=None, teeth_encoder=None))
    assert "teeth_encoder" not in read_manifest(out)["parts"]
    assert not (out / "parts" / "teeth_encoder.ckpt").exists()
    assert load_bundle(out).teeth is None


def test_finetuned_texture_generator_is_bundled(world, tmp_path):
    """An encoder trained with finetune_generator=true: its own generator becomes the bundle's t-GAN."""
    from lightning_modules.texture_encoder import TextureEncoderSystem

    torch.manual_seed(4)
    system = TextureEncoderSystem(config=dict(tgan_checkpoint=str(world["tgan"]), finetune_generator=True,
                                              **TINY_ENCODER))
    _perturb(system.generator.synthesis)
    encoder = write_train_checkpoint(system, tmp_path / "ft.ckpt")
    directions = write_directions(tmp_path / "d.pt", encoder)
    build_bundle(tmp_path / "b", sources_of(world, texture_encoder=encoder, directions=directions,
                                            teeth_tgan=None, teeth_encoder=None))
    parts = load_bundle(tmp_path / "b")
    ws = torch.randn(1, 8, 16)
    assert torch.equal(parts.generator.synthesis(ws, noise_mode="const"),
                       system.generator.eval().synthesis(ws, noise_mode="const"))
    manifest = read_manifest(tmp_path / "b")
    assert "fine-tuned" in manifest["parts"]["tgan"]["info"]["weights_from"] and manifest["notes"]


# --------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    from emoedit.pipeline.bundle_command import register

    parser = argparse.ArgumentParser(prog="emoedit")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_command_builds_and_checks(world, tmp_path, capsys):
    from emoedit.cli import CliError

    out = tmp_path / "cli"
    argv = ["bundle", "--out", str(out), "--face-model", str(world["face_model"]), "--recon", "fitter",
            "--tgan", str(world["tgan"]), "--texture-encoder", str(world["texture_encoder"]),
            "--classifier", str(world["classifier"]), "--directions", str(world["directions"]),
            "--geometry", str(world["geometry"]), "--cache", str(world["cache"]), "--fitter", "shape_steps=5",
            "--smoothing-half-window", "1"]
    args = _parser().parse_args(argv)
    args.func(args)
    assert "wrote" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest["recon"]["fitter"] == {"shape_steps": 5} and manifest["settings"]["smoothing_half_window"] == 1
    args = _parser().parse_args(["bundle", "--check", str(out)])
    args.func(args)
    assert "ok: every checksum matches" in capsys.readouterr().out
    args = _parser().parse_args(["bundle", "--out", str(out)])
    with pytest.raises(CliError, match="missing --face-model"):
        args.func(args)
    (out / "parts" / "tgan.ckpt").write_bytes(b"broken")
    args = _parser().parse_args(["bundle", "--check", str(out)])
    with pytest.raises(CliError, match="tgan: .*size"):
        args.func(args)
