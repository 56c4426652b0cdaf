"""classifier part: held-out split within seen subjects, a few real training steps, checkpoint reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from emoedit.checkpoint_io import load_checkpoint
from emoedit.config import compose_config
from emoedit.data.cache import CacheError, CacheReader
from emoedit.networks.subject_classifier import SubjectClassifier
from lightning_modules.classifier import (
    ClassifierRunConfig,
    ClassifierSystem,
    SubjectTextureDataModule,
    split_within_subjects,
)
from tests.test_directions import write_texture_cache

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = ("M001", "M002", "W003")
SPEC = train.PartSpec(ClassifierSystem, SubjectTextureDataModule, ClassifierRunConfig, "subject classifier")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classifier_world")
    return write_texture_cache(root / "textures", subjects=SUBJECTS + ("U009",))


def _config(cache: Path, out: Path, *overrides: str, exclude: str = "data.exclude={subject: [U009]}"):
    return compose_config(ClassifierRunConfig, part="classifier", config_dir=REPO / "configs", overrides=[
        f"output_dir={out}", f"model.subjects=[{','.join(SUBJECTS)}]", "model.input_size=32", "model.depth=10",
        "model.widths=[8,16,32,64]", "model.lr=3e-3", "model.dropout=0.0",
        f"data.cache_dir={cache}", exclude, "data.batch_size=4", "data.num_workers=0",
        "logger.kind=none", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null",
        "trainer.num_sanity_val_steps=0", "trainer.max_epochs=-1", *overrides,
    ])


def test_split_holds_out_clips_or_frames_of_every_seen_subject(cache):
    index = CacheReader.open(cache).records()
    val = split_within_subjects(index, split_by="clip", val_fraction=0.34, val_keys=[], seed=0)
    train_part, val_part = index.select(~val), index.select(val)
    assert set(val_part.unique("subject")) == set(train_part.unique("subject")) == set(SUBJECTS + ("U009",))
    assert not set(val_part.unique("clip")) & set(train_part.unique("clip"))  # whole clips on one side
    frames = split_within_subjects(index, split_by="frame", val_fraction=0.25, val_keys=[], seed=0)
    held = index.select(frames)
    assert set(held.unique("frame")) == {3} and len(held) == len(index.unique("clip"))  # last frame of each clip
    clip = "M001/front/happy/level_3/001"
    explicit = split_within_subjects(index, split_by="clip", val_fraction=0.0, val_keys=[clip], seed=0)
    assert set(index.select(explicit).unique("clip")) == {clip}
    with pytest.raises(CacheError, match="not in the"):
        split_within_subjects(index, split_by="clip", val_fraction=0.0, val_keys=["nope"], seed=0)


def test_datamodule_serves_labelled_textures(cache, tmp_path):
    cfg = _config(cache, tmp_path / "dm")
    dm = SubjectTextureDataModule(config=dict(cfg.data))
    dm.setup("fit")
    assert dm.subjects == SUBJECTS  # U009 excluded
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 32, 32)
    assert all(s in SUBJECTS for s in batch["subject"])
    assert len(dm.val_index) > 0


def test_trains_and_reloads(cache, tmp_path):
    cfg = _config(cache, tmp_path / "run", "trainer.max_steps=6")
    trainer = train.run(SPEC, cfg)
    assert trainer.global_step == 6
    metrics = trainer.callback_metrics
    assert "classifier/val/accuracy" in metrics and 0.0 <= float(metrics["classifier/val/accuracy"]) <= 1.0
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["part"] == "classifier"
    assert ckpt["hyper_parameters"]["config"]["subjects"] == list(SUBJECTS)  # plain list in the hyperparameters

    torch.manual_seed(cfg.seed)
    fresh = ClassifierSystem(config=dict(ckpt["hyper_parameters"]["config"]))
    changed = [k for k, v in fresh.classifier.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][f"classifier.{k}"])]
    assert len(changed) > 10, "training did not change the weights"
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    classifier = SubjectClassifier.from_checkpoint(ckpt_path)
    assert classifier.subjects == SUBJECTS
    fresh.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = classifier(x)
        assert torch.equal(out.logits, fresh(x).logits)
    assert torch.allclose(out.subject_weights.sum(-1), torch.ones(2))


def test_subjects_must_match_the_data(cache, tmp_path):
    with pytest.raises(ValueError, match="model.subjects must list"):
        ClassifierSystem(config={})
    cfg = _config(cache, tmp_path / "bad", "trainer.max_steps=1", exclude="data.batch_size=4")
    with pytest.raises(ValueError, match=r"not in model.subjects: \['U009'\]"):
        train.run(SPEC, cfg)
