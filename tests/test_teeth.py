"""Teeth completion (METHOD.md §3.7): mouths DataModule, teeth t-GAN and teeth encoder training on a tiny
synthetic mouths cache, the masked loss, TeethCompleter inference and its checkpoint loading, the
inpainting baseline of the demo script."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import train
from datamodules.mouths import MouthDataModule, resize_mask
from datamodules.textures import TextureDataModule
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.config import compose_config
from emoedit.data.alignment import CropTransform
from emoedit.data.cache import CacheError, CacheSpec, CacheWriter
from emoedit.data.detection import MOUTH_IDS
from emoedit.data.mouth import INNER_LIP_IDS, polygon_mask, remove_region
from emoedit.editing.teeth_completion import (
    TeethCompleter,
    feathered_mouth_mask,
    gaussian_blur,
    load_teeth_encoder_parts,
    load_teeth_generator,
)
from emoedit.networks.psp_encoder import PSPEncoder
from emoedit.networks.stylegan2 import StyleGAN2Generator
from lightning_modules.teeth import (
    TeethEncoderRunConfig,
    TeethEncoderSystem,
    TeethTGANRunConfig,
    TeethTGANSystem,
    load_teeth_tgan_generator,
    masked_mse,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 16  # mouth crop side in the test cache = tiny teeth t-GAN resolution
TINY_TGAN = dict(resolution=SIZE, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16,
                 num_samples=4, d_reg_interval=2, g_reg_interval=2, ema_kimg=0.01, media_every_n_steps=0)
TRAINER = ["logger.kind=none", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0"]
TGAN_SPEC = train.PartSpec(TeethTGANSystem, TextureDataModule, TeethTGANRunConfig, "teeth t-GAN")
ENCODER_SPEC = train.PartSpec(TeethEncoderSystem, MouthDataModule, TeethEncoderRunConfig, "teeth encoder")
MOUTH_SETTINGS = {"crop_size": SIZE, "mouth_width": 0.5, "template": "default", "teeth_dilate_px": 1.0,
                  "teeth_fill": 0.0, "inner_lip_ids": list(INNER_LIP_IDS)}

# An open mouth (iBUG 49-68), normalised like MouthTemplate: corners 1 apart on a horizontal line.
OPEN_MOUTH = torch.tensor([
    (-0.50, 0.00), (-0.32, -0.14), (-0.13, -0.22), (0.00, -0.19), (0.13, -0.22), (0.32, -0.14),
    (0.50, 0.00), (0.33, 0.22), (0.16, 0.30), (0.00, 0.31), (-0.16, 0.30), (-0.33, 0.22),
    (-0.42, 0.00), (-0.17, -0.10), (0.00, -0.09), (0.17, -0.10),
    (0.42, 0.00), (0.17, 0.16), (0.00, 0.17), (-0.17, 0.16),
])
OUTER_IDS = list(range(12))
INNER_IDS = list(range(12, 20))


def mouth_points(size: int, opening: float) -> torch.Tensor:
    """(20, 2) crop pixels of an open mouth centred in a size² crop; ``opening`` scales the vertical extent."""
    points = OPEN_MOUTH * torch.tensor([1.0, opening])
    return (size - 1) / 2.0 + 0.5 * size * points


def draw_mouths(size: int, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Mouth-like crops: skin, lips, a dark inner mouth with bright teeth rectangles; the mouths cache's fields."""
    openings = 0.6 + 0.8 * torch.rand(count, generator=generator)
    points = torch.stack([mouth_points(size, float(o)) for o in openings])  # (N, 20, 2)
    lips = polygon_mask(points[:, OUTER_IDS], (size, size)).float()
    inner = polygon_mask(points[:, INNER_IDS], (size, size)).float()
    ys = torch.arange(size).float().reshape(1, 1, size, 1)
    centre_y = points[:, INNER_IDS, 1].mean(dim=1).reshape(-1, 1, 1, 1)
    upper_teeth = inner * (ys <= centre_y).float()
    skin = torch.tensor([0.80, 0.60, 0.50]).reshape(1, 3, 1, 1)
    skin = skin + 0.05 * torch.randn(count, 3, 1, 1, generator=generator)
    image = skin.expand(count, 3, size, size).clone()
    image = image * (1 - lips) + torch.tensor([0.70, 0.30, 0.30]).reshape(1, 3, 1, 1) * lips
    image = image * (1 - inner) + torch.tensor([0.10, 0.05, 0.05]).reshape(1, 3, 1, 1) * inner
    teeth = (0.85 + 0.1 * torch.rand(count, 1, 1, 1, generator=generator)).expand(count, 3, 1, 1)
    image = image * (1 - upper_teeth) + teeth * upper_teeth
    image = (image + 0.02 * torch.randn(image.shape, generator=generator)).clamp(0, 1)
    crop = (image * 255).round().to(torch.uint8)
    mask = polygon_mask(points[:, INNER_IDS], (size, size), dilate_px=1.0)
    removed = remove_region(crop.float() / 255, mask).mul(255).round().to(torch.uint8)
    transform = CropTransform(torch.full((count,), 0.5), torch.zeros(count), torch.zeros(count, 2), (size, size),
                              (2 * size, 2 * size))
    return {"crop": crop, "crop_removed": removed, "mask": mask, "landmarks": points.float(),
            "transform": transform.as_tensor().float()}


def write_mouth_cache(root: Path, *, size: int = SIZE, per_clip: int = 4,
                      subjects: tuple[str, ...] = ("M001", "M002", "W001")) -> Path:
    """A finalised ``mouths`` cache with emoedit.data.preprocess's fields, metadata and mouth attributes."""
    spec = CacheSpec(kind="mouths", version=1,
                     fields={"crop": ("uint8", (3, size, size)), "crop_removed": ("uint8", (3, size, size)),
                             "mask": ("bool", (1, size, size)), "landmarks": ("float32", (20, 2)),
                             "transform": ("float32", (CropTransform.TENSOR_FIELDS,))},
                     meta={"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"},
                     attributes={"mouth": {**MOUTH_SETTINGS, "crop_size": size}})
    writer = CacheWriter.open(root, spec)
    g = torch.Generator().manual_seed(0)
    for subject in subjects:
        for emotion in ("neutral", "happy"):
            meta = {"subject": subject, "emotion": emotion, "level": 1, "view": "front", "frame": list(range(per_clip))}
            writer.write_clip(f"{subject}/front/{emotion}/001", draw_mouths(size, per_clip, g), meta)
    writer.finalize()
    return root


def write_teeth_tgan_checkpoint(path: Path, seed: int = 0) -> Path:
    """A teeth t-GAN checkpoint as train.py writes it, with G_ema distinct from G."""
    torch.manual_seed(seed)
    system = TeethTGANSystem(config=dict(TINY_TGAN))
    with torch.no_grad():
        for p in system.G_ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
        system.G_ema.mapping.w_avg.copy_(torch.randn(TINY_TGAN["w_dim"]))
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teeth_world")
    return {"cache": write_mouth_cache(root / "mouths"), "tgan": write_teeth_tgan_checkpoint(root / "teeth_tgan.ckpt")}


# --------------------------------------------------------------------------- data


def test_mouth_datamodule_serves_aligned_triples(world, tmp_path):
    dm = MouthDataModule({"cache_dir": str(world["cache"]), "batch_size": 4, "val_images": 3, "hflip": True,
                          "exclude": {"subject": ["W001"]}})
    dm.setup("fit")
    assert len(dm.train_index) == 2 * 2 * 4 and len(dm.val_index) == 3
    assert dm.mouth_settings["teeth_dilate_px"] == 1.0 and dm.mouth_settings["template"] == "default"
    batch = next(iter(dm.train_dataloader()))
    assert batch["crop"].shape == batch["crop_removed"].shape == (4, 3, SIZE, SIZE)
    assert batch["crop"].dtype == batch["crop_removed"].dtype == torch.uint8
    assert batch["mask"].shape == (4, 1, SIZE, SIZE) and batch["mask"].dtype == torch.float32
    # flipped or not, the three fields stay aligned: the removed crop is the crop outside the mask, fill inside
    for _ in range(3):
        sample = dm._dataset(dm.train_index, hflip=True)[0]
        inside = sample["mask"].bool().expand(3, -1, -1)
        assert inside.any()
        assert torch.equal(sample["crop_removed"][~inside], sample["crop"][~inside])
        assert (sample["crop_removed"][inside] == 0).all()
    # resized: the mask becomes the covered fraction (area average)
    small = MouthDataModule({"cache_dir": str(world["cache"]), "batch_size": 2, "resolution": 8})
    small.setup("fit")
    sample = small._dataset(small.train_index, hflip=False)[0]
    assert sample["crop"].shape == (3, 8, 8) and sample["mask"].shape == (1, 8, 8)
    full = torch.zeros(1, 4, 4, dtype=torch.bool)
    full[0, :2, :2] = True
    assert resize_mask(full, 2).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    # a cache without the triple's fields is refused with the field named
    with pytest.raises(CacheError, match="no field 'crop_removed'"):
        _cache_without_removed(tmp_path)


def _cache_without_removed(tmp_path: Path) -> None:
    spec = CacheSpec(kind="mouths", version=1, fields={"crop": ("uint8", (3, 8, 8)), "mask": ("bool", (1, 8, 8))},
                     meta={"subject": "str"})
    writer = CacheWriter.open(tmp_path / "bad", spec)
    writer.write_clip("a", {"crop": torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                            "mask": torch.zeros(2, 1, 8, 8, dtype=torch.bool)}, {"subject": "M001"})
    writer.finalize()
    MouthDataModule({"cache_dir": str(tmp_path / "bad"), "batch_size": 2}).setup("fit")


# --------------------------------------------------------------------------- losses


def test_masked_mse_known_answer():
    prediction = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2, :2] = 1.0  # 4 pixels in image 0, error 0.5 on every channel
    prediction[0, :, :2, :2] = 0.5
    prediction[1, :, 3, 3] = 2.0  # an error outside every mask: ignored
    assert masked_mse(prediction, target, mask).item() == pytest.approx(0.25)
    mask[1, 0, 3, 3] = 0.5  # half a pixel with squared error 4: (4·3·0.25 + 0.5·3·4) / (3·4.5)
    assert masked_mse(prediction, target, mask).item() == pytest.approx((3.0 + 6.0) / 13.5)
    assert masked_mse(prediction, target, torch.zeros(2, 1, 4, 4)).item() == 0.0


def test_teeth_encoder_loss_weights_the_mask_as_configured(world):
    config = dict(tgan_checkpoint=str(world["tgan"]), input_size=16, depth=10, widths=[8, 16, 32, 64],
                  loss={"lpips": 0.0, "l2": 2.0, "mask_weight": 5.0, "latent": 0.1})
    system = TeethEncoderSystem(config=config)
    batch = {"crop": torch.full((2, 3, SIZE, SIZE), 255, dtype=torch.uint8),  # target +1 everywhere
             "crop_removed": torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8),
             "mask": torch.zeros(2, 1, SIZE, SIZE)}
    batch["mask"][:, :, :4, :4] = 1.0  # 32 mask pixels of 512
    recon = torch.ones(2, 3, SIZE, SIZE)
    recon[:, :, :4, :4] = 0.0  # error 1 inside the mask
    recon[:, :, -1, :] = 3.0  # error 2 on one row outside it
    offsets = torch.full((2, system.generator.num_ws, 16), 0.5)
    system.forward = lambda x: (recon, offsets, offsets)  # type: ignore[method-assign]
    terms, extras = system.compute_losses(batch)
    full = (32 * 3 * 1.0 + 2 * SIZE * 3 * 4.0) / (2 * 3 * SIZE * SIZE)
    assert extras["raw_l2"].item() == pytest.approx(full)
    assert terms["l2"].item() == pytest.approx(2.0 * full)
    assert extras["raw_l2_mask"].item() == pytest.approx(1.0)
    assert terms["l2_mask"].item() == pytest.approx(5.0)
    assert terms["latent"].item() == pytest.approx(0.1 * 0.25)
    assert set(terms) == {"l2", "l2_mask", "latent"}
    with pytest.raises(ValueError, match="set data.resolution=16"):
        system.compute_losses({**batch, "crop": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)})


def test_teeth_encoder_config_errors(world, tmp_path):
    base = dict(tgan_checkpoint=str(world["tgan"]), input_size=16, depth=10, widths=[8, 16, 32, 64])
    with pytest.raises(ValueError, match="teeth_encoder model config: .*lpips_backbone"):
        TeethEncoderSystem(config=base)
    with pytest.raises(ValueError, match="mask_weight must be >= 0"):
        TeethEncoderSystem(config={**base, "loss": {"lpips": 0.0, "mask_weight": -1.0}})
    with pytest.raises(ValueError, match="must name a teeth_tgan checkpoint"):
        TeethEncoderSystem(config={**base, "tgan_checkpoint": None, "loss": {"lpips": 0.0}})
    texture = tmp_path / "texture_tgan.ckpt"  # a texture t-GAN is not a teeth t-GAN
    ckpt = load_checkpoint(world["tgan"])
    ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], "part": "tgan"}
    torch.save(ckpt, texture)
    with pytest.raises(CheckpointError, match="expected 'teeth_tgan'"):
        TeethEncoderSystem(config={**base, "tgan_checkpoint": str(texture), "loss": {"lpips": 0.0}})


# --------------------------------------------------------------------------- training


def test_teeth_tgan_trains_and_reloads(world, tmp_path):
    overrides = [f"output_dir={tmp_path / 'tgan'}", f"data.cache_dir={world['cache']}", "data.batch_size=4",
                 "data.num_workers=0", "data.pin_memory=false", "trainer.max_steps=2",
                 *[f"model.{k}={v}" for k, v in TINY_TGAN.items()], *TRAINER]
    cfg = compose_config(TeethTGANRunConfig, part="teeth_tgan", config_dir=REPO / "configs", overrides=overrides)
    assert cfg.data.cache_kind == "mouths" and cfg.data.image_field == "crop" and cfg.data.resolution == SIZE
    trainer = train.run(TGAN_SPEC, cfg)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["teeth_tgan/train/g_loss"])
    ckpt_path = tmp_path / "tgan" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["part"] == "teeth_tgan"
    generator, config, sha = load_teeth_tgan_generator(ckpt_path)  # strict, through the system
    plain = load_teeth_generator(ckpt_path)  # Lightning-free
    for name, value in generator.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"G_ema.{name}"]), name
        assert torch.equal(plain.state_dict()[name], value), name
    assert config["resolution"] == SIZE and len(sha) == 64
    resumed = train.run(TGAN_SPEC, compose_config(TeethTGANRunConfig, part="teeth_tgan", config_dir=REPO / "configs",
                                                  overrides=[*overrides, "trainer.max_steps=3", "ckpt_path=last"]))
    assert resumed.global_step == 3


def test_teeth_encoder_trains_and_loads_for_inference(world, tmp_path):
    out = tmp_path / "enc"
    cfg = compose_config(TeethEncoderRunConfig, part="teeth_encoder", config_dir=REPO / "configs", overrides=[
        f"output_dir={out}", f"model.tgan_checkpoint={world['tgan']}", "model.input_size=16", "model.depth=10",
        "model.widths=[8,16,32,64]", "model.loss.lpips=0", "model.lr=1e-3", f"data.cache_dir={world['cache']}",
        f"data.resolution={SIZE}", "data.batch_size=4", "data.val_images=4", "data.num_workers=0",
        "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1", *TRAINER])
    assert cfg.model.loss.mask_weight == 1.0 and cfg.data.hflip
    trainer = train.run(ENCODER_SPEC, cfg)
    system: TeethEncoderSystem = trainer.lightning_module
    assert trainer.global_step == 3
    for name in ("train/l2", "train/l2_mask", "train/latent", "val/psnr", "val/psnr_mask", "val/psnr_mask_hole"):
        assert torch.isfinite(trainer.callback_metrics[f"teeth_encoder/{name}"]), name
    ckpt_path = out / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["part"] == "teeth_encoder"
    assert ckpt["mouth_settings"]["crop_size"] == SIZE and ckpt["tgan_config"]["w_dim"] == 16

    # the encoder trained; the frozen teeth generator did not move
    torch.manual_seed(cfg.seed)
    fresh = TeethEncoderSystem(config=dict(ckpt["hyper_parameters"]["config"]))
    changed = [k for k, v in fresh.encoder.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][f"encoder.{k}"])]
    assert len(changed) > 10
    tgan_state = load_checkpoint(world["tgan"])["state_dict"]
    for name, value in system.generator.state_dict().items():
        assert torch.equal(value.cpu(), tgan_state[f"G_ema.{name}"]), name
    fresh.load_state_dict(ckpt["state_dict"], strict=True)

    # Lightning-free loading gives the same networks and the cache's mouth settings
    encoder, generator, settings = load_teeth_encoder_parts(ckpt_path)
    assert settings["teeth_dilate_px"] == 1.0
    completer = TeethCompleter.from_checkpoints(ckpt_path, feather_px=2.0)
    assert completer.crop_size == SIZE and completer.dilate_px == 1.0 and completer.fill == 0.0
    removed = torch.rand(2, 3, SIZE, SIZE)
    fresh.eval()
    with torch.no_grad():
        want, wplus, _ = fresh(removed * 2 - 1)
    generated, got_wplus = completer.complete_crops(removed)
    assert torch.allclose(got_wplus, wplus, atol=1e-5)
    assert torch.allclose(generated, want.add(1).div(2).clamp(0, 1), atol=1e-5)
    with pytest.raises(CheckpointError, match="expected 'teeth_encoder'"):
        TeethCompleter.from_checkpoints(world["tgan"])
    with pytest.raises(CheckpointError, match="expected 'teeth_tgan'"):
        TeethCompleter.from_checkpoints(ckpt_path, generator_checkpoint=ckpt_path)


def test_teeth_encoder_joint_generator_finetuning(world, tmp_path):
    cfg = compose_config(TeethEncoderRunConfig, part="teeth_encoder", config_dir=REPO / "configs", overrides=[
        f"output_dir={tmp_path / 'ft'}", f"model.tgan_checkpoint={world['tgan']}", "model.input_size=16",
        "model.depth=10", "model.widths=[8,16,32,64]", "model.loss.lpips=0", "model.finetune_generator=true",
        "model.generator_lr=1e-2", f"data.cache_dir={world['cache']}", f"data.resolution={SIZE}", "data.batch_size=4",
        "data.val_images=0", "data.num_workers=0", "trainer.max_steps=2", *TRAINER])
    system: TeethEncoderSystem = train.run(ENCODER_SPEC, cfg).lightning_module
    tgan_state = load_checkpoint(world["tgan"])["state_dict"]
    moved = [k for k, v in system.generator.synthesis.state_dict().items()
             if v.is_floating_point() and not torch.equal(v.cpu(), tgan_state[f"G_ema.synthesis.{k}"])]
    assert moved
    for name, value in system.generator.mapping.state_dict().items():
        assert torch.equal(value.cpu(), tgan_state[f"G_ema.mapping.{name}"]), name
    assert len(system.optimizers().optimizer.param_groups) == 2


# --------------------------------------------------------------------------- inference


def _completer(crop_size: int = 32, feather_px: float = 3.0) -> TeethCompleter:
    torch.manual_seed(0)
    generator = StyleGAN2Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=3, channel_base=64,
                                   channel_max=8, mapping_layers=1)
    encoder = PSPEncoder(num_ws=generator.num_ws, w_dim=8, input_size=16, depth=10, widths=(8, 8, 8, 8))
    return TeethCompleter(encoder=encoder, generator=generator, crop_size=crop_size, feather_px=feather_px)


def _frames_and_landmarks(batch: int = 2, height: int = 72, width: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(batch, 3, height, width, generator=g)
    landmarks = torch.rand(batch, 68, 2, generator=g) * torch.tensor([width - 1.0, height - 1.0])
    for b in range(batch):
        angle = 0.2 * (b - 0.5)
        rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        centre = torch.tensor([width / 2 + 3 * b, height * 0.6])
        landmarks[b, list(MOUTH_IDS)] = centre + (24.0 + 4 * b) * OPEN_MOUTH @ rotation.T
    return frames, landmarks


def test_completer_pastes_only_inside_the_feathered_mouth():
    completer = _completer()
    frames, landmarks = _frames_and_landmarks()
    frames_before, landmarks_before = frames.clone(), landmarks.clone()
    out = completer(frames, landmarks)
    assert torch.equal(frames, frames_before) and torch.equal(landmarks, landmarks_before)  # inputs untouched
    assert out.frames.shape == frames.shape and out.frame_mask.shape == (2, 1, 72, 96)
    for name in ("crop", "crop_input", "crop_removed", "generated"):
        assert getattr(out, name).shape == (2, 3, 32, 32), name
    assert out.mask.shape == (2, 1, 32, 32) and out.mask.dtype == torch.bool and out.mask.any()
    assert out.wplus.shape == (2, completer.generator.num_ws, 8)
    assert torch.isfinite(out.frames).all() and out.frames.min() >= 0 and out.frames.max() <= 1
    # outside the warped feathered mask every frame pixel is unchanged, bit for bit
    outside = (out.frame_mask == 0).expand_as(frames)
    assert outside.float().mean() > 0.8
    assert torch.equal(out.frames[outside], frames[outside])
    assert not torch.equal(out.frames, frames)
    # the changed area lies around the inner lips: their bounding box grown by the mask's reach
    # (dilation + feather/2 + the blur's 3σ radius, crop pixels; +1 for bilinear warping)
    changed = (out.frame_mask[:, 0] > 0).nonzero()
    reach_crop = completer.dilate_px + completer.feather_px / 2 + math.ceil(3 * completer.feather_px / 4) + 1
    for b in range(2):
        inner = landmarks[b, list(INNER_LIP_IDS)]
        reach = reach_crop / float(out.transform.scale[b]) + 1
        ys, xs = changed[changed[:, 0] == b, 1], changed[changed[:, 0] == b, 2]
        assert xs.min() >= inner[:, 0].min() - reach and xs.max() <= inner[:, 0].max() + reach
        assert ys.min() >= inner[:, 1].min() - reach and ys.max() <= inner[:, 1].max() + reach
    # the removed region is entirely generated, the crop elsewhere from the input where the blend is 0
    inside = out.mask.expand_as(out.crop)
    assert torch.allclose(out.crop[inside], out.generated[inside], atol=1e-6)
    assert torch.equal(out.crop_removed[inside], torch.zeros_like(out.crop_removed[inside]))
    far = (out.blend_mask == 0).expand_as(out.crop)
    assert torch.allclose(out.crop[far], out.crop_input[far], atol=1e-6)


def test_completer_validates_frames_and_landmarks():
    completer = _completer()
    frames, landmarks = _frames_and_landmarks()
    with pytest.raises(TypeError, match="frames"):
        completer((frames * 255).to(torch.uint8), landmarks)
    with pytest.raises(ValueError, match="landmarks"):
        completer(frames, landmarks[:, :20])
    with pytest.raises(ValueError, match="landmarks"):
        completer(frames, landmarks[:1])
    with pytest.raises(ValueError, match="frames"):
        completer(frames * 2, landmarks)
    bad = landmarks.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="landmarks"):
        completer(frames, bad)
    with pytest.raises(ValueError, match="frames"):
        completer(frames[:, :1], landmarks)
    with pytest.raises(ValueError, match="does not fit"):
        TeethCompleter(encoder=PSPEncoder(num_ws=3, w_dim=8, input_size=16, depth=10, widths=(8, 8, 8, 8)),
                       generator=completer.generator)


def test_feathered_mask_and_blur():
    points = mouth_points(32, 1.0)[INNER_IDS][None]
    hard = polygon_mask(points, (32, 32), dilate_px=1.0).float()
    soft = feathered_mouth_mask(points, 32, dilate_px=1.0, feather_px=4.0)
    assert torch.equal(feathered_mouth_mask(points, 32, dilate_px=1.0, feather_px=0.0), hard)
    assert (soft[hard.bool()] == 1).all() and (soft >= hard).all() and soft.max() <= 1
    grown = polygon_mask(points, (32, 32), dilate_px=1.0 + 2.0 + 3.0).float()  # support ends ~ 3σ beyond the core
    assert (soft[grown == 0] < 5e-3).all()  # the Gaussian tail beyond 3σ
    assert ((soft > 0) & (soft < 1)).any()
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1.0
    blurred = gaussian_blur(impulse, 2.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(blurred, blurred.flip(-1)) and torch.allclose(blurred, blurred.transpose(-1, -2))
    ratio = (blurred[0, 0, 10, 12] / blurred[0, 0, 10, 10]).item()
    assert ratio == pytest.approx(math.exp(-0.5), rel=1e-3)  # one σ away


def _demo_script():
    spec = importlib.util.spec_from_file_location("teeth_demo_world", REPO / "scripts" / "teeth_demo_world.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_demo_script_measures_a_mouths_cache(world):
    module = _demo_script()
    completer = _completer(crop_size=SIZE)
    result = module.evaluate(world["cache"], completer, subjects=["M001", "W001"], max_records=100, batch_size=8,
                             open_fraction=0.05, sheet_records=2)
    assert result["records"] == 2 * 2 * 4 and result["_sheet"].shape == (2, 3, SIZE, 4 * SIZE)
    metrics = result["metrics"]
    assert set(metrics) == {"hole", "inpaint", "teeth_completion"}
    assert all(math.isfinite(v) for row in metrics.values() for v in row.values())
    assert metrics["inpaint"]["psnr_db"] > metrics["hole"]["psnr_db"]  # the hole is black, the teeth bright
    assert "| teeth_completion |" in module.markdown(result)


def test_harmonic_inpainting_reproduces_a_linear_ramp():
    module = _demo_script()
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    image = torch.stack([xs, ys, 0.5 * xs + 0.25 * ys])[None]  # linear = harmonic: the exact answer
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[..., 10:22, 8:20] = True
    filled = module.harmonic_inpaint(torch.where(mask, torch.zeros(()), image), mask, iterations=300)
    assert (filled - image).abs().max() < 2e-3
    assert torch.equal(filled[~mask.expand_as(image)], image[~mask.expand_as(image)])
    errors = module.RegionErrors()
    errors.add("x", image + 0.1 * mask, image, mask)
    assert errors.summary()["x"]["psnr_db"] == pytest.approx(20.0) and errors.summary()["x"]["l1"] == pytest.approx(0.1)
