"""t-GAN system end to end on a tiny texture cache: data module, training steps, resume, init_from, media, FID."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import train
from callbacks.media_logger import MediaImages, MediaLogger, MediaTable, MediaVideo
from datamodules.textures import TextureDataModule, resize_image
from emoedit.checkpoint_io import load_checkpoint
from emoedit.config import compose_config
from emoedit.data.cache import CacheError, CacheSpec, CacheWriter
from lightning_modules.tgan import FIDFeatureNetwork, TGANRunConfig, TGANSystem

SPEC = train.PartSpec(TGANSystem, TextureDataModule, TGANRunConfig, "t-GAN (StyleGAN2 on UV textures)")
T = 32  # texture side in the test cache (the model trains at 16: resized)
SUBJECTS = ("M001", "M002", "W001", "W002")

TINY_MODEL = [
    "model.resolution=16", "model.z_dim=16", "model.w_dim=16", "model.mapping_layers=2", "model.channel_base=128",
    "model.channel_max=16", "model.num_samples=4", "model.d_reg_interval=2", "model.g_reg_interval=2",
    "model.ema_kimg=0.01", "model.media_every_n_steps=0",
]
TRAINER = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_cache(root: Path, *, kind: str = "textures", image_field: str = "uv_texture", size: int = T,
                per_clip: int = 6) -> Path:
    """A cache shaped like emoedit.data.preprocess's (fields and metadata), with smooth random images."""
    if kind == "textures":
        fields = {image_field: ("uint8", (3, size, size)), "visibility": ("bool", (1, size, size)),
                  "coeffs": ("float32", (10,))}
    else:
        fields = {image_field: ("uint8", (3, size, size)), "mask": ("bool", (1, size, size))}
    spec = CacheSpec(kind=kind, version=1, fields=fields,
                     meta={"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"},
                     attributes={"texture": {"texture_size": size}})
    writer = CacheWriter.open(root, spec)
    g = torch.Generator().manual_seed(0)
    for i, subject in enumerate(SUBJECTS):
        for view in ("front", "left_30"):
            low = torch.rand(per_clip, 3, 4, 4, generator=g)
            images = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
            records = {image_field: (images * 255).round().to(torch.uint8)}
            if kind == "textures":
                records["visibility"] = torch.ones(per_clip, 1, size, size, dtype=torch.bool)
                records["coeffs"] = torch.zeros(per_clip, 10)
            else:
                records["mask"] = torch.zeros(per_clip, 1, size, size, dtype=torch.bool)
            meta = {"subject": subject, "emotion": "neutral", "level": 0, "view": view, "frame": list(range(per_clip))}
            writer.write_clip(f"{subject}/{view}/neutral/001", records, meta)
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("tex") / "textures")


def compose(tmp_path: Path, cache: Path, *overrides: str, run: str = "run"):
    return compose_config(TGANRunConfig, part="tgan", config_dir=tmp_path / "no_configs",
                          overrides=[f"output_dir={tmp_path / run}", f"data.cache_dir={cache}", "data.batch_size=4",
                                     "data.filter.view=front", *TINY_MODEL, *TRAINER, *overrides])


# --------------------------------------------------------------------------- data


def test_texture_datamodule_filters_resizes_and_batches(cache_dir):
    dm = TextureDataModule({"cache_dir": str(cache_dir), "batch_size": 4, "resolution": 16,
                            "filter": {"view": "front"}, "exclude": {"subject": ["W002"]}, "val_images": 5})
    dm.setup("fit")
    assert len(dm.train_index) == 3 * 6 and set(dm.train_index.unique("subject")) == {"M001", "M002", "W001"}
    assert dm.train_index.unique("view") == ["front"] and len(dm.val_index) == 5
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.uint8
    assert len(dm.train_dataloader()) == 18 // 4  # drop_last
    # area resizing of a 32-px record = 2x2 box average; no flip by default
    record = dm.reader.load_shard(int(dm.train_index.shard[0]), ("uv_texture",))["uv_texture"][int(dm.train_index.row[0])]
    served = dm._dataset(dm.train_index, hflip=False)[0]["image"]
    want = record.float().reshape(3, 16, 2, 16, 2).mean(dim=(2, 4)).round().to(torch.uint8)
    assert (served.int() - want.int()).abs().max() <= 1
    assert torch.equal(resize_image(record, 32, "bilinear"), record)
    flipped = dm._dataset(dm.train_index, hflip=True)
    seen = {torch.equal(flipped[0]["image"], served.flip(-1)) for _ in range(20)}
    assert seen == {True, False}


def test_texture_datamodule_serves_mouth_crops_and_reports_bad_fields(tmp_path):
    mouths = write_cache(tmp_path / "mouths", kind="mouths", image_field="crop", size=16)
    dm = TextureDataModule({"cache_dir": str(mouths), "cache_kind": "mouths", "image_field": "crop", "batch_size": 2})
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 3, 16, 16)
    with pytest.raises(CacheError, match="no field 'uv_texture'"):
        TextureDataModule({"cache_dir": str(mouths), "cache_kind": "mouths"}).setup("fit")
    with pytest.raises(CacheError, match="kind"):
        TextureDataModule({"cache_dir": str(mouths)}).setup("fit")
    with pytest.raises(CacheError, match="no metadata 'camera'"):
        TextureDataModule({"cache_dir": str(mouths), "cache_kind": "mouths", "image_field": "crop",
                           "filter": {"camera": "x"}}).setup("fit")


# --------------------------------------------------------------------------- training


def _initial_state(cfg) -> dict[str, torch.Tensor]:
    from emoedit.config import config_to_plain

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return {k: v.clone() for k, v in TGANSystem(config=config_to_plain(cfg.model)).state_dict().items()}


def test_trains_resumes_and_inits_from_checkpoint(tmp_path, cache_dir, monkeypatch):
    starts: list[int] = []
    original = TGANSystem.on_train_start

    ema_is_g: list[bool] = []

    def record_start(self):
        starts.append(self.global_step)
        original(self)
        ema_is_g.append(all(torch.equal(a, b) for a, b in zip(self.G_ema.parameters(), self.G.parameters())))

    monkeypatch.setattr(TGANSystem, "on_train_start", record_start)
    cfg = compose(tmp_path, cache_dir, "trainer.max_steps=3", "logger.kind=csv")
    initial = _initial_state(cfg)
    trainer = train.run(SPEC, cfg)
    assert trainer.global_step == 3 and starts == [0]
    system = trainer.lightning_module
    for prefix in ("G.", "D."):
        changed = [k for k, v in system.state_dict().items() if k.startswith(prefix) and not torch.equal(v, initial[k])]
        assert any(".weight" in k for k in changed), f"{prefix} weights did not change"
    assert not torch.equal(system.G_ema.synthesis.b16.conv1.weight, initial["G_ema.synthesis.b16.conv1.weight"])
    assert system.pl_reg.pl_mean > 0 and system.G.mapping.w_avg.abs().sum() > 0
    metrics = trainer.callback_metrics
    for name in ("g_loss", "d_loss", "d_loss_real", "d_loss_fake", "real_logit", "fake_logit", "r1_penalty",
                 "r1_loss", "pl_penalty", "pl_length", "pl_mean", "pl_loss", "ema_beta", "kimg"):
        assert torch.isfinite(metrics[f"tgan/train/{name}"]), name
    assert metrics["tgan/train/kimg"].item() == pytest.approx(3 * 4 / 1000)
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["part"] == "tgan" and "pl_reg.pl_mean" in ckpt["state_dict"]
    assert any(k.startswith("G_ema.") for k in ckpt["state_dict"]) and len(ckpt["optimizer_states"]) == 2

    resumed = train.run(SPEC, compose(tmp_path, cache_dir, "trainer.max_steps=5", "logger.kind=csv",
                                      "ckpt_path=last"))
    assert starts == [0, 3] and resumed.global_step == 5

    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    fresh = train.run(SPEC, compose(tmp_path, cache_dir, "trainer.max_steps=0", "logger.kind=none",
                                    f"init_from={source}", run="finetune"))
    expected = load_checkpoint(source)["state_dict"]
    loaded = fresh.lightning_module.state_dict()
    assert set(loaded) == set(expected)
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key
    assert fresh.global_step == 0

    # init_from keeping the counters: the step count and kimg continue from the checkpoint (5), the
    # optimisers start fresh, and reset_ema still applies although the run does not start at step 0.
    kept = train.run(SPEC, compose(tmp_path, cache_dir, "trainer.max_steps=6", "logger.kind=csv",
                                   f"init_from={source}", "init_keep_counters=true", "model.reset_ema=true",
                                   run="kept"))
    assert starts[-1] == 5 and kept.global_step == 6 and ema_is_g[-1]
    assert kept.callback_metrics["tgan/train/kimg"].item() == pytest.approx(6 * 4 / 1000)
    adam_steps = {int(state["step"]) for opt in load_checkpoint(tmp_path / "kept" / "checkpoints" / "last.ckpt")
                  ["optimizer_states"] for state in opt["state"].values()}
    resumed_steps = {int(state["step"]) for opt in ckpt["optimizer_states"] for state in opt["state"].values()}
    assert max(adam_steps) <= 2 < min(resumed_steps), (adam_steps, resumed_steps)
    assert not ema_is_g[1], "a resume keeps its EMA (G_ema starts as a copy of G only in a fresh run)"


def test_training_keys_leave_the_state_dict_unchanged():
    from dataclasses import fields

    from lightning_modules.tgan import TGANModelConfig

    assert TGANSystem.TRAINING_KEYS <= {f.name for f in fields(TGANModelConfig)}
    base = {"resolution": 16, "z_dim": 8, "w_dim": 8, "mapping_layers": 1, "channel_base": 64, "channel_max": 8}
    changed = dict(base, conv_clamp=256.0, num_bf16_res=2, channels_last=True, fused_modconv=True, g_lr=0.1,
                   d_lr=0.1, betas=[0.5, 0.9], adam_eps=1e-6, r1_gamma=1.0, d_reg_interval=4, pl_weight=0.0,
                   g_reg_interval=8, pl_decay=0.1, pl_batch_shrink=1, style_mixing_prob=0.0, ema_kimg=1.0,
                   ema_rampup=0.05, reset_ema=True, sample_seed=3, num_samples=3, sample_truncations=[0.5],
                   media_every_n_steps=7, media_video_frames=3, media_video_fps=5.0, fid_network_kind="inception_v3",
                   fid_input_size=64, fid_num_images=10, fid_batch_size=2)
    assert set(changed) - set(base) == TGANSystem.TRAINING_KEYS - {"fid_network"}
    a, b = TGANSystem(base).state_dict(), TGANSystem(changed).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    TGANSystem(changed).load_state_dict(a, strict=True)


def test_reset_ema_restarts_the_average_from_the_generator():
    config = {"resolution": 16, "z_dim": 8, "w_dim": 8, "mapping_layers": 1, "channel_base": 64, "channel_max": 8,
              "num_samples": 2, "reset_ema": True}
    system = TGANSystem(config)
    with torch.no_grad():
        system.G.synthesis.b8.conv0.weight.add_(1.0)
        system.G.mapping.w_avg.fill_(0.5)
    system.on_train_start()  # global_step 0 without a trainer
    for (name, a), b in zip(system.G_ema.state_dict().items(), system.G.state_dict().values()):
        assert torch.equal(a, b), name


def test_media_items_of_the_system():
    config = {"resolution": 16, "z_dim": 8, "w_dim": 8, "mapping_layers": 1, "channel_base": 64, "channel_max": 8,
              "num_samples": 4, "media_video_frames": 6, "sample_truncations": [1.0, 0.7]}
    system = TGANSystem(config)
    system._last_reals = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    items = {item.key: item for item in system.media()}
    assert set(items) == {"tgan/samples/psi_1", "tgan/samples/psi_0.7", "tgan/reals", "tgan/latent_walk"}
    grid = items["tgan/samples/psi_0.7"]
    assert isinstance(grid, MediaImages) and grid.images.shape == (4, 3, 16, 16)
    assert 0 <= grid.images.min() and grid.images.max() <= 1
    assert not torch.equal(items["tgan/samples/psi_1"].images, grid.images)
    assert torch.equal(system.media()[0].images, items["tgan/samples/psi_1"].images), "fixed z, const noise"
    video = items["tgan/latent_walk"]
    assert isinstance(video, MediaVideo) and video.frames.shape == (6, 3, 16, 16)


# --------------------------------------------------------------------------- media callback


class _Provider(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def media(self):
        self.calls += 1
        return [MediaImages(key="test/grid", images=torch.rand(4, 3, 8, 8), nrow=2, caption="grid"),
                MediaVideo(key="test/video", frames=torch.rand(5, 3, 9, 9), fps=5.0),
                MediaTable(key="test/table", columns=["a", "b"], rows=[[1, "x"], [2, "y"]])]


def test_media_logger_is_a_no_op_without_wandb(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    module = _Provider()
    callback = MediaLogger(every_n_steps=1)
    for logger in (False, CSVLogger(save_dir=str(tmp_path))):
        trainer = pl.Trainer(logger=logger, accelerator="cpu", devices=1, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=str(tmp_path))
        assert callback.log_media(trainer, module) == []
    assert module.calls == 0, "media() must not be computed without a W&B logger"


def test_media_logger_logs_images_video_and_table_offline(tmp_path, monkeypatch):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="emoedit-test", save_dir=str(tmp_path), offline=True)
    trainer = pl.Trainer(logger=logger, accelerator="cpu", devices=1, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    module = _Provider()
    try:
        keys = MediaLogger().log_media(trainer, module)
        run_dir = Path(logger.experiment.dir)
    finally:
        wandb.finish()
    assert keys == ["test/grid", "test/video", "test/table"] and module.calls == 1
    assert list((tmp_path / "media").glob("test_video_step*.mp4")), "video file not written"
    logged = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.startswith("media/images/test/grid") and p.endswith(".png") for p in logged), logged
    assert any(p.startswith("media/videos/test/video") and p.endswith(".mp4") for p in logged), logged
    assert any(p.startswith("media/table/test/table") for p in logged), logged


# --------------------------------------------------------------------------- FID


class _TinyFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _export_features(path: Path) -> Path:
    example = torch.rand(2, 3, 16, 16)
    program = torch.export.export(_TinyFeatures().eval(), (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(program, str(path))
    return path


def test_fid_from_an_exported_feature_network(tmp_path, cache_dir):
    path = _export_features(tmp_path / "features.pt2")
    network = FIDFeatureNetwork.from_file(path, kind="program", input_size=16)
    assert network.num_features == 6
    with torch.no_grad():
        torch.testing.assert_close(network(torch.full((3, 3, 16, 16), 0.5)), _TinyFeatures()(torch.full((3, 3, 16, 16), 0.5)))
    cfg = compose(tmp_path, cache_dir, "trainer.max_steps=4", "logger.kind=none", f"model.fid_network={path}",
                  "model.fid_input_size=16", "model.fid_num_images=8", "model.fid_batch_size=4", "data.val_images=8",
                  "trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=null",
                  "trainer.num_sanity_val_steps=1")
    trainer = train.run(SPEC, cfg)
    fid = trainer.callback_metrics["tgan/val/fid"]
    assert torch.isfinite(fid) and fid >= 0
    system = trainer.lightning_module
    assert int(system.fid_metric.real_features_num_samples) == 8, "reals counted once, sanity check excluded"
    assert not any("fid" in key or "inception" in key for key in system.state_dict()), "FID net leaked into state"
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        FIDFeatureNetwork.from_file(tmp_path / "missing.pt")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fid_from_a_torchscript_file(tmp_path):
    path = tmp_path / "features.ts"
    torch.jit.trace(_TinyFeatures(), torch.rand(1, 3, 16, 16)).save(str(path))
    assert FIDFeatureNetwork.from_file(path, kind="program", input_size=16).num_features == 6


@pytest.mark.slow
def test_fid_from_an_inception_v3_state_dict(tmp_path):
    from torchvision.models import inception_v3

    path = tmp_path / "inception.pt"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    network = FIDFeatureNetwork.from_file(path, kind="inception_v3", input_size=299)
    assert network.num_features == 2048
    with torch.no_grad():
        assert network(torch.rand(2, 3, 32, 32)).shape == (2, 2048)


def test_train_run_with_offline_wandb_logs_media(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(tmp_path, cache_dir, "trainer.max_steps=2", "logger.kind=wandb", "model.media_every_n_steps=1",
                  "model.media_video_frames=4")
    train.run(SPEC, cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs
    files = [p.as_posix() for p in runs[0].rglob("*") if p.is_file()]
    assert any("media/images/tgan/samples/psi_0.7" in p for p in files), files
    assert any("media/videos/tgan/latent_walk" in p for p in files), files
    assert os.path.isdir(tmp_path / "run" / "media")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, cache_dir):
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__)), str(tmp_path), f"output_dir={tmp_path / 'ddp'}",
           f"data.cache_dir={cache_dir}", "data.batch_size=2", *TINY_MODEL, "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.strategy=ddp_find_unused_parameters_true", "trainer.max_steps=4",
           "trainer.enable_progress_bar=false", "logger.kind=csv"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    found = re.findall(r"RANK (\d) WORLD (\d) STEP (\d+) CHECKSUM (-?[\d.]+)", out.stdout)
    assert sorted(rank for rank, *_ in found) == ["0", "1"], out.stdout
    assert all(world == "2" and step == "4" for _, world, step, _ in found), out.stdout
    assert len({checksum for *_, checksum in found}) == 1, "ranks ended with different weights"
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").exists()


if __name__ == "__main__":  # used by the DDP test: python tests/test_tgan_system.py CONFIG_DIR key=value ...
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    torch.set_num_threads(1)
    cfg = compose_config(TGANRunConfig, part="tgan", config_dir=sys.argv[1], overrides=sys.argv[2:])
    trainer = train.run(SPEC, cfg)
    checksum = float(trainer.lightning_module.G.synthesis.b16.conv1.weight.detach().sum())
    print(f"RANK {trainer.global_rank} WORLD {trainer.world_size} STEP {trainer.global_step} CHECKSUM {checksum:.6f}")
