"""texture_encoder part: a few real training steps on a tiny texture cache with a tiny t-GAN checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from datamodules.textures import TextureDataModule
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.config import compose_config
from emoedit.networks.psp_encoder import PSPEncoder
from lightning_modules.texture_encoder import TextureEncoderRunConfig, TextureEncoderSystem, load_tgan_generator
from tests.test_directions import write_texture_cache

REPO = Path(__file__).resolve().parents[1]
SIZE = 32  # texture side = t-GAN resolution
TINY_TGAN = dict(resolution=SIZE, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16,
                 num_samples=4)
SPEC = train.PartSpec(TextureEncoderSystem, TextureDataModule, TextureEncoderRunConfig, "pSp texture encoder")


def write_tgan_checkpoint(path: Path, seed: int = 0) -> Path:
    """A t-GAN checkpoint as train.py writes it (state_dict + {"part", "config"} hyperparameters)."""
    from lightning_modules.tgan import TGANSystem

    torch.manual_seed(seed)
    system = TGANSystem(config=dict(TINY_TGAN))
    with torch.no_grad():  # a G_ema distinct from G, so loading the wrong one would show
        for p in system.G_ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
        system.G_ema.mapping.w_avg.copy_(torch.randn(TINY_TGAN["w_dim"]))
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoder_world")
    return {"cache": write_texture_cache(root / "textures"), "tgan": write_tgan_checkpoint(root / "tgan.ckpt")}


def _config(world: dict[str, Path], out: Path, *overrides: str):
    return compose_config(TextureEncoderRunConfig, part="texture_encoder", config_dir=REPO / "configs", overrides=[
        f"output_dir={out}", f"model.tgan_checkpoint={world['tgan']}", "model.input_size=32", "model.depth=10",
        "model.widths=[8,16,32,64]", "model.lpips_random_backbone=true", "model.lr=1e-3",
        f"data.cache_dir={world['cache']}", f"data.resolution={SIZE}", "data.batch_size=2", "data.val_images=2",
        "data.num_workers=0", "logger.kind=none", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", *overrides,
    ])


def test_generator_comes_from_the_tgan_ema(world):
    generator, config, sha = load_tgan_generator(world["tgan"])
    state = load_checkpoint(world["tgan"])["state_dict"]
    for name, value in generator.state_dict().items():
        assert torch.equal(value, state[f"G_ema.{name}"]), name
    assert not generator.training and not any(p.requires_grad for p in generator.parameters())
    assert config["resolution"] == SIZE and len(sha) == 64


def test_trains_saves_and_reloads(world, tmp_path):
    cfg = _config(world, tmp_path / "run", "trainer.max_steps=3")
    trainer = train.run(SPEC, cfg)
    system: TextureEncoderSystem = trainer.lightning_module
    assert trainer.global_step == 3
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["part"] == "texture_encoder"
    assert isinstance(ckpt["hyper_parameters"]["config"], dict)
    assert ckpt["tgan_config"]["w_dim"] == 16 and len(ckpt["tgan_checkpoint_sha256"]) == 64

    # the encoder trained, the frozen generator did not move and stayed in eval mode
    torch.manual_seed(cfg.seed)
    fresh = TextureEncoderSystem(config=dict(ckpt["hyper_parameters"]["config"]))
    changed = [k for k, v in fresh.encoder.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][f"encoder.{k}"])]
    assert len(changed) > 10
    tgan_state = load_checkpoint(world["tgan"])["state_dict"]
    for name, value in system.generator.state_dict().items():
        assert torch.equal(value.cpu(), tgan_state[f"G_ema.{name}"]), name
    assert not system.generator.training
    # w_avg of the encoder is the generator's
    assert torch.equal(ckpt["state_dict"]["encoder.w_avg"], tgan_state["G_ema.mapping.w_avg"])

    # strict reload into a fresh system; PSPEncoder.from_checkpoint (no Lightning) gives the same encoder
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    encoder = PSPEncoder.from_checkpoint(ckpt_path)
    fresh.eval()
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        assert torch.equal(encoder(x).wplus, fresh.encoder(x).wplus)
        recon, wplus, _ = fresh(x)
    assert recon.shape == (2, 3, SIZE, SIZE) and wplus.shape == (2, fresh.generator.num_ws, 16)
    assert torch.isfinite(recon).all()

    # resume continues the step count
    resumed = train.run(SPEC, _config(world, tmp_path / "run", "trainer.max_steps=4", "ckpt_path=last"))
    assert resumed.global_step == 4


def test_joint_generator_finetuning(world, tmp_path):
    trainer = train.run(SPEC, _config(world, tmp_path / "ft", "trainer.max_steps=2", "model.finetune_generator=true",
                                      "model.generator_lr=1e-2", "model.loss.lpips=0"))
    system: TextureEncoderSystem = trainer.lightning_module
    tgan_state = load_checkpoint(world["tgan"])["state_dict"]
    synthesis_moved = [k for k, v in system.generator.synthesis.state_dict().items()
                       if v.is_floating_point() and not torch.equal(v.cpu(), tgan_state[f"G_ema.synthesis.{k}"])]
    assert synthesis_moved
    for name, value in system.generator.mapping.state_dict().items():  # unused by W+ inputs: frozen
        assert torch.equal(value.cpu(), tgan_state[f"G_ema.mapping.{name}"]), name
    assert len(system.optimizers().optimizer.param_groups) == 2


def test_config_errors(world, tmp_path):
    base = dict(tgan_checkpoint=str(world["tgan"]), input_size=32, depth=10, widths=[8, 16, 32, 64])
    with pytest.raises(ValueError, match="lpips_backbone"):
        TextureEncoderSystem(config=base)
    with pytest.raises(ValueError, match="tgan_checkpoint must name"):
        TextureEncoderSystem(config={**base, "tgan_checkpoint": None, "loss": {"lpips": 0.0}})
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"part": "recon", "config": {}}}, wrong)
    with pytest.raises(CheckpointError, match="expected 'tgan'"):
        TextureEncoderSystem(config={**base, "tgan_checkpoint": str(wrong), "loss": {"lpips": 0.0}})
    system = TextureEncoderSystem(config={**base, "loss": {"lpips": 0.0}})
    with pytest.raises(ValueError, match="set data.resolution=32"):
        system.compute_losses({"image": torch.zeros(2, 3, 16, 16, dtype=torch.uint8)})
