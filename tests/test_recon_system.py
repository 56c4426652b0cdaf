"""The recon part end to end on a tiny synthetic frames cache: the DataModule, training
through train.run, resume with ckpt_path=last, the reconstructor reading the checkpoint,
bf16 / channels-last / identity-loss options and image logging."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger

import train
from datamodules.frames import FrameDataModule, color_jitter
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.config import compose_config
from emoedit.data.cache import CacheError, CacheSpec, CacheWriter
from emoedit.face_model import MorphableModel
from emoedit.reconstruction import RegressorReconstructor
from lightning_modules.recon import ReconRunConfig, ReconSystem
from tests.recon_helpers import one_thread, write_frames_cache  # noqa: F401  (one_thread: autouse fixture)

SPEC = train.PartSpec(ReconSystem, FrameDataModule, ReconRunConfig, "3D reconstruction regressor")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TINY_MODEL = {"backbone": "resnet_tiny", "crop_size": 64, "render_backend": "torch", "lr": 1e-3}


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return MorphableModel.procedural()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, model: MorphableModel) -> Path:
    return write_frames_cache(tmp_path_factory.mktemp("frames") / "cache", model, crop_size=64)


def test_datamodule_splits_and_samples(cache: Path) -> None:
    dm = FrameDataModule({"cache_dir": str(cache), "batch_size": 4, "val_fraction": 0.25})
    dm.setup()
    assert dm.crop_size == 64 and dm.coeff_size == MorphableModel.procedural().layout.size
    assert len(dm.train_index) == 9 and len(dm.val_index) == 3  # 4 clips of 3 frames: 1 clip for validation
    assert not set(dm.train_index.unique("clip")) & set(dm.val_index.unique("clip"))
    batch = next(iter(dm.train_dataloader()))
    assert batch["crop"].shape == (4, 3, 64, 64) and batch["crop"].dtype == torch.float32
    assert 0.0 <= float(batch["crop"].min()) and float(batch["crop"].max()) <= 1.0
    assert batch["landmarks"].shape == (4, 68, 2) and batch["coeffs_true"].shape == (4, dm.coeff_size)
    assert batch["transform"].shape == (4, 8) and len(batch["subject"]) == 4

    by_subject = FrameDataModule({"cache_dir": str(cache), "split_by": "subject", "val_keys": ["S02"]})
    by_subject.setup()
    assert by_subject.val_index.unique("subject") == ["S02"] and by_subject.train_index.unique("subject") == ["S01"]
    with pytest.raises(CacheError, match="val_keys not in the cache"):
        FrameDataModule({"cache_dir": str(cache), "val_keys": ["nope"]}).setup()
    with pytest.raises(CacheError, match="split_by"):
        FrameDataModule({"cache_dir": str(cache), "split_by": "emotion"})


def test_color_jitter_stays_in_range() -> None:
    image = torch.rand(3, 8, 8)
    jittered = color_jitter(image, 0.4, torch.Generator().manual_seed(0))
    assert not torch.equal(jittered, image) and float(jittered.min()) >= 0 and float(jittered.max()) <= 1
    assert torch.equal(color_jitter(image, 0.0), image)


def test_datamodule_rejects_other_caches(tmp_path: Path) -> None:
    spec = CacheSpec(kind="textures", version=1, fields={"uv_texture": ("uint8", (3, 8, 8))})
    writer = CacheWriter.open(tmp_path / "tex", spec)
    writer.write_clip("a", {"uv_texture": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, {})
    writer.finalize()
    with pytest.raises(CacheError, match="frames"):
        FrameDataModule({"cache_dir": str(tmp_path / "tex")}).setup()
    spec = CacheSpec(kind="frames", version=1, fields={"crop": ("uint8", (3, 8, 8))})
    writer = CacheWriter.open(tmp_path / "bad", spec)
    writer.write_clip("a", {"crop": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, {})
    writer.finalize()
    with pytest.raises(CacheError, match="lacks field 'landmarks'"):
        FrameDataModule({"cache_dir": str(tmp_path / "bad")}).setup()


def _compose(cache: Path, run_dir: Path, *overrides: str):
    return compose_config(
        ReconRunConfig,
        part="recon",
        config_dir=CONFIG_DIR,
        overrides=[
            "experiment=tiny",
            f"data.cache_dir={cache}",
            f"output_dir={run_dir}",
            "logger.kind=csv",
            "trainer.enable_progress_bar=false",
            "trainer.val_check_interval=2",
            "trainer.check_val_every_n_epoch=null",
            "trainer.log_every_n_steps=1",
            "model.loss.supervised_coeff=1.0",
            *overrides,
        ],
    )


def test_train_resume_and_reconstruct(cache: Path, tmp_path: Path, model: MorphableModel) -> None:
    run_dir = tmp_path / "run"
    trainer = train.run(SPEC, _compose(cache, run_dir, "trainer.max_steps=4"))
    assert trainer.global_step == 4
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    assert ckpt["hyper_parameters"]["part"] == "recon"
    assert ckpt["hyper_parameters"]["config"]["backbone"] == "resnet_tiny"
    head = ckpt["state_dict"]["regressor.heads.exp.weight"]
    assert torch.count_nonzero(head) > 0, "training moved the zero-initialised heads"
    with open(run_dir / "csv" / "metrics.csv") as handle:
        columns = set(next(csv.reader(handle)))
    assert {"recon/train/photometric", "recon/train/landmark", "recon/train/supervised_coeff",
            "recon/val/landmark_px", "recon/val/coeff_abs/exp", "recon/val/vertex_error"} <= columns

    resumed = train.run(SPEC, _compose(cache, run_dir, "trainer.max_steps=6", "ckpt_path=last"))
    assert resumed.global_step == 6
    later = load_checkpoint(last)
    assert later["global_step"] == 6
    assert not torch.equal(later["state_dict"]["regressor.heads.exp.weight"], head)
    with pytest.raises(CheckpointError, match="backbone"):
        train.run(SPEC, _compose(cache, run_dir, "trainer.max_steps=7", "ckpt_path=last", "model.backbone=resnet18"))

    reconstructor = RegressorReconstructor.from_checkpoint(last, model, batch_size=2)
    dm = FrameDataModule({"cache_dir": str(cache), "val_fraction": 0.0, "batch_size": 5})
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    coeffs = reconstructor.reconstruct_clip(batch["crop"], batch["landmarks"])
    assert coeffs.shape == (5, model.layout.size) and reconstructor.camera.image_size == 64
    system = ReconSystem(later["hyper_parameters"]["config"])
    system.load_state_dict(later["state_dict"], strict=True)
    system.eval()
    with torch.no_grad():
        torch.testing.assert_close(coeffs, system(batch["crop"]), rtol=1e-5, atol=1e-6)
    other = MorphableModel.procedural(seed=5)
    with pytest.raises(CheckpointError, match="another face model"):
        RegressorReconstructor.from_checkpoint(last, other)


class ImageLogger(Logger):
    """A logger that records log_image calls (what W&B's logger offers)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, list[Any]]] = []
        self.metrics: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self.images.append((key, images))


def _export_recognizer(path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 8)).eval()
    program = torch.export.export(net, (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)


def test_bf16_channels_last_identity_and_overlays(cache: Path, tmp_path: Path) -> None:
    recognizer = tmp_path / "recognizer.pt2"
    _export_recognizer(recognizer)
    config = dict(TINY_MODEL, bf16=True, channels_last=True, identity_network=str(recognizer), identity_input_size=32,
                  log_images=2, loss={"identity": 0.2})
    system = ReconSystem(config)
    assert not any("identity" in key or "network" in key for key in system.state_dict())
    dm = FrameDataModule({"cache_dir": str(cache), "batch_size": 4, "val_fraction": 0.25})
    logger = ImageLogger()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, val_check_interval=2, limit_val_batches=1,
                         logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(system, datamodule=dm)
    assert "recon/train/identity" in logger.metrics and torch.isfinite(torch.tensor(logger.metrics["recon/train/loss"]))
    assert logger.images and logger.images[0][0] == "recon/val/overlay"
    images = logger.images[0][1]
    assert len(images) == 2 and images[0].shape == (64, 128, 3) and images[0].dtype.name == "uint8"
    with pytest.raises(ValueError, match="identity_network"):
        ReconSystem(dict(TINY_MODEL, loss={"identity": 0.2}))


@pytest.mark.slow
def test_train_py_recon_ddp_two_cpu_processes(cache: Path, tmp_path: Path) -> None:
    """The real entry point, as a user runs it: `python train.py recon experiment=tiny` on 2 gloo ranks."""
    import os
    import subprocess
    import sys

    repo = CONFIG_DIR.parent
    out = tmp_path / "ddp"
    cmd = [sys.executable, str(repo / "train.py"), "recon", "experiment=tiny", f"data.cache_dir={cache}",
           f"output_dir={out}", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=3",
           "trainer.enable_progress_bar=false", "logger=csv", "data.batch_size=2"]
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["part"] == "recon"
