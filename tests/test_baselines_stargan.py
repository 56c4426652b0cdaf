"""StarGAN baseline (METHOD §6): networks, losses, the face-crop DataModule, a few real training steps,
checkpoint reload and the crop editor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import train
from datamodules.face_crops import (
    EMOTION_KEY,
    IMAGE_KEY,
    TARGET_IMAGE_KEY,
    TARGET_KEY,
    FaceCropDataModule,
)
from emoedit.baselines.crop_editor import StarGANEditor, load_generator, save_generator
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.config import compose_config
from emoedit.data.alignment import CropTransform
from emoedit.data.cache import CacheError, CacheSpec, CacheWriter
from emoedit.editing.emotion_code import EMOTIONS, emotion_code_from_level
from emoedit.networks.stargan import StarGANDiscriminator, StarGANGenerator
from lightning_modules.stargan import (
    StarGANRunConfig,
    StarGANSystem,
    emotion_classification_loss,
    linear_decay_factor,
)

REPO = Path(__file__).resolve().parents[1]
SPEC = train.PartSpec(StarGANSystem, FaceCropDataModule, StarGANRunConfig, "StarGAN baseline")
SUBJECTS = ("M001", "W002")
# (emotion, level, clip name): two neutral clips, happy at two levels, sad at level 3 twice
CLIPS = (("neutral", 1, "001"), ("neutral", 1, "002"), ("happy", 1, "001"), ("happy", 3, "001"),
         ("sad", 3, "001"), ("sad", 3, "002"))
FRAMES = 4
SIZE = 32
TINY_G = dict(conv_dim=8, num_down=2, num_res_blocks=1)
TINY_D = dict(image_size=SIZE, conv_dim=8, num_layers=3, max_channels=32)


def write_face_crop_cache(root: Path, *, size: int = SIZE, subjects: tuple[str, ...] = SUBJECTS,
                          clips: tuple[tuple[str, int, str], ...] = CLIPS, frames: int = FRAMES) -> Path:
    """A finalised ``frames`` cache of synthetic crops: a subject tint, an emotion bar whose height
    depends on the emotion and whose brightness on the level, and the frame index written into the
    top-left pixel's red value (so a test can read which frame a crop is)."""
    spec = CacheSpec(
        kind="frames", version=1,
        fields={"crop": ("uint8", (3, size, size)), "landmarks": ("float32", (68, 2)), "transform": ("float32", (8,))},
        meta={"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"},
        attributes={"crop_size": size},
    )
    writer = CacheWriter.open(root, spec)
    identity = CropTransform(torch.ones(()), torch.zeros(()), torch.zeros(2), (size, size), (size, size))
    generator = torch.Generator().manual_seed(0)
    emotions = ("neutral",) + EMOTIONS
    for s, subject in enumerate(subjects):
        for emotion, level, name in clips:
            image = 0.2 + 0.1 * torch.rand(frames, 3, size, size, generator=generator)
            image[:, s % 3] += 0.3
            if emotion != "neutral":
                row = 3 + 3 * emotions.index(emotion)
                image[:, :, row: row + 3] = 0.3 + 0.2 * level
            crops = (image.clamp(0, 1) * 255).round().to(torch.uint8)
            crops[:, 0, 0, 0] = torch.arange(frames, dtype=torch.uint8)  # the frame index
            records = {"crop": crops, "landmarks": torch.zeros(frames, 68, 2),
                       "transform": identity.as_tensor().expand(frames, -1).clone()}
            meta = {"subject": subject, "emotion": emotion, "level": level, "view": "front",
                    "frame": list(range(frames))}
            writer.write_clip(f"{subject}/front/{emotion}/level_{level}/{name}", records, meta)
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_face_crop_cache(tmp_path_factory.mktemp("stargan_world") / "frames")


# --------------------------------------------------------------------------- networks
def test_networks_shapes_ranges_and_seeded_regression():
    torch.manual_seed(0)
    generator = StarGANGenerator(**TINY_G)
    discriminator = StarGANDiscriminator(**TINY_D)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, SIZE, SIZE, generator=g) * 2 - 1
    code = torch.zeros(3, 7)
    code[0, 0], code[1, 2] = 1.0, 0.5
    with torch.no_grad():
        out = generator(x, code)
        d = discriminator(x)
    assert out.shape == x.shape and torch.isfinite(out).all() and float(out.abs().max()) <= 1.0
    assert d.source.shape == (3, 1, 4, 4) and d.emotion_logits.shape == (3, 7) and d.critic.shape == (3,)
    assert torch.isfinite(d.source).all() and torch.isfinite(d.emotion_logits).all()
    with torch.no_grad():
        assert not torch.equal(generator(x, code), generator(x, torch.zeros(3, 7)))  # the code matters
        assert torch.equal(generator.eval()(x, code), out)  # train = eval (no running statistics)
    # seeded regression (torch.manual_seed(0) construction)
    assert float(out.sum()) == pytest.approx(REGRESSION["g_sum"], abs=1e-3)
    assert float(d.source.sum()) == pytest.approx(REGRESSION["d_source_sum"], abs=1e-4)
    assert float(d.emotion_logits.sum()) == pytest.approx(REGRESSION["d_logits_sum"], abs=1e-4)
    with pytest.raises(ValueError, match="divisible by 4"):
        generator(torch.zeros(1, 3, 30, 30), torch.zeros(1, 7))
    with pytest.raises(ValueError, match="multiple of 2"):
        StarGANDiscriminator(image_size=36, num_layers=3)


REGRESSION = {"g_sum": 19.3583984375, "d_source_sum": -0.34295085072517395, "d_logits_sum": -0.05555360019207001}


def test_generator_save_load_round_trip_and_wrong_files(tmp_path):
    generator = StarGANGenerator(**TINY_G).eval()
    path = save_generator(generator, tmp_path / "g.pt", part="stargan", resolution=SIZE)
    loaded, config = load_generator(path, part="stargan")
    assert config == {"resolution": SIZE} and not loaded.training
    x, code = torch.rand(2, 3, SIZE, SIZE) * 2 - 1, torch.rand(2, 7)
    assert torch.equal(loaded(x, code), generator(x, code))
    with pytest.raises(CheckpointError, match=r"g\.pt: checkpoint of part 'stargan', expected 'exprgan'"):
        load_generator(path, part="exprgan")
    state = load_checkpoint(path)
    state["state_dict"].pop(next(iter(state["state_dict"])))
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken\.pt: stargan generator tensors do not fit"):
        StarGANEditor.from_checkpoint(tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="not found"):
        StarGANEditor.from_checkpoint(tmp_path / "missing.ckpt")


# --------------------------------------------------------------------------- losses
def test_classification_loss_and_lr_schedule_known_answers():
    code = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    right = (code * 2 - 1) * 30.0  # confident and right
    assert float(emotion_classification_loss(right, code)) == pytest.approx(0.0, abs=1e-10)
    wrong = -right
    assert float(emotion_classification_loss(wrong, code)) == pytest.approx(3 * 30.0, rel=1e-3)  # 3 classes / sample
    soft = torch.tensor([[0.5, 0.0, 0.0]])
    at_target = torch.tensor([[0.0, -30.0, -30.0]])  # sigmoid(0) = 0.5: the soft label's optimum
    grad_logits = at_target.clone().requires_grad_(True)
    emotion_classification_loss(grad_logits, soft).backward()
    assert float(grad_logits.grad.abs().max()) < 1e-6
    assert float(emotion_classification_loss(code, code, "mse")) == 0.0
    assert float(emotion_classification_loss(torch.zeros(2, 3), code, "mse")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="classification kind"):
        emotion_classification_loss(code, code, "hinge")
    assert linear_decay_factor(50, start=None, total=200) == 1.0
    assert linear_decay_factor(100, start=100, total=200) == 1.0
    assert linear_decay_factor(150, start=100, total=200) == pytest.approx(0.5)
    assert linear_decay_factor(200, start=100, total=200) == 0.0


class _Identity(nn.Module):
    def forward(self, images: Tensor, code: Tensor) -> Tensor:
        return images


class _Shift(nn.Module):
    def forward(self, images: Tensor, code: Tensor) -> Tensor:
        return images + 0.1 * code.sum(dim=1)[:, None, None, None]


def _system(**loss) -> StarGANSystem:
    return StarGANSystem(config={"resolution": SIZE, "generator": {k: v for k, v in TINY_G.items()},
                                 "discriminator": {k: v for k, v in TINY_D.items() if k != "image_size"},
                                 "loss": loss})


def test_loss_terms_respond_to_what_they_measure(cache):
    dm = FaceCropDataModule(config={"cache_dir": str(cache), "resolution": SIZE, "batch_size": 6,
                                    "neutral_target_prob": 0.0})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    system = _system()
    b = system.split_batch(batch)
    assert float(b.images.min()) >= -1 and float(b.images.max()) <= 1
    _, logs, images = system.generator_terms(b)
    assert {"g_adv", "g_cls", "g_rec", "g_loss"} == set(logs) and images["cycle"].shape == b.images.shape
    assert float(logs["g_rec"]) > 0
    system.generator = _Identity()  # identity mapping: the cycle comes back exactly
    _, logs, _ = system.generator_terms(b)
    assert float(logs["g_rec"]) == 0.0
    system.generator = _Shift()  # the edit adds 0.1·Σc, the way back adds 0.1·Σc_o: the cycle misses by both
    _, logs, _ = system.generator_terms(b)
    expected = 0.1 * (b.target_code.sum(1) + b.emotion_code.sum(1)).mean()
    assert float(logs["g_rec"]) == pytest.approx(float(expected), rel=1e-5)
    # the critic: a D that scores reals higher gives a negative d_adv and a positive Wasserstein estimate
    system = _system()
    _, d_logs = system.discriminator_terms(b)
    assert {"d_adv", "d_cls", "d_gp", "d_loss", "critic_real", "critic_fake", "wasserstein"} == set(d_logs)
    assert float(d_logs["d_adv"]) == pytest.approx(-float(d_logs["wasserstein"]), abs=1e-6)
    assert float(d_logs["d_gp"]) >= 0 and torch.isfinite(d_logs["d_loss"])
    off = _system(reconstruction=0.0, gradient_penalty=0.0, classification=0.0)
    _, g_logs, images = off.generator_terms(off.split_batch(batch))
    _, d_logs = off.discriminator_terms(off.split_batch(batch))
    assert set(g_logs) == {"g_adv", "g_loss"} and "cycle" not in images
    assert set(d_logs) == {"d_adv", "d_loss", "critic_real", "critic_fake", "wasserstein"}


# --------------------------------------------------------------------------- data
def test_datamodule_serves_labelled_crops_with_random_targets(cache):
    dm = FaceCropDataModule(config={"cache_dir": str(cache), "resolution": 16, "batch_size": 4,
                                    "val_keys": ["M001/front/happy/level_3/001"]})
    dm.setup("fit")
    assert set(dm.val_index.unique("clip")) == {"M001/front/happy/level_3/001"}
    dataset = dm.train_dataset()
    for position in range(0, len(dataset), 5):
        sample = dataset[position]
        assert sample[IMAGE_KEY].shape == (3, 16, 16) and sample[IMAGE_KEY].dtype == torch.uint8
        expected = torch.zeros(7) if sample["emotion"] == "neutral" else emotion_code_from_level(
            sample["emotion"], sample["level"])
        assert torch.allclose(sample[EMOTION_KEY], expected)
        target = sample[TARGET_KEY]
        assert target.shape == (7,) and int((target > 0).sum()) <= 1 and float(target.max()) <= 1.0 + 1e-6
        assert TARGET_IMAGE_KEY not in sample
    batch = next(iter(dm.train_dataloader()))
    assert batch[IMAGE_KEY].shape == (4, 3, 16, 16) and batch[TARGET_KEY].shape == (4, 7)
    assert len(batch["subject"]) == 4
    val_a, val_b = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert torch.equal(val_a[TARGET_KEY], val_b[TARGET_KEY])  # seeded validation targets
    only_sad = FaceCropDataModule(config={"cache_dir": str(cache), "batch_size": 4, "neutral_target_prob": 0.0,
                                          "target_emotions": ["sadness"]})
    only_sad.setup("fit")
    codes = torch.stack([only_sad.train_dataset()[p][TARGET_KEY] for p in range(8)])
    assert (codes[:, EMOTIONS.index("sad")] > 0).all() and codes.sum(0)[[0, 1, 3, 4, 5, 6]].eq(0).all()
    with pytest.raises(CacheError, match="neutral_target_prob"):
        FaceCropDataModule(config={"cache_dir": str(cache), "neutral_target_prob": 2.0})
    with pytest.raises(CacheError, match="target_emotions lists 'neutral'"):
        FaceCropDataModule(config={"cache_dir": str(cache), "target_emotions": ["neutral"]})
    textures = FaceCropDataModule(config={"cache_dir": str(cache), "cache_kind": "textures"})
    with pytest.raises(CacheError, match="kind"):
        textures.setup("fit")


# --------------------------------------------------------------------------- training
def _config(cache: Path, out: Path, *overrides: str):
    return compose_config(StarGANRunConfig, part="stargan", config_dir=REPO / "configs", overrides=[
        "experiment=tiny", f"output_dir={out}", f"data.cache_dir={cache}", "logger.kind=none",
        "trainer.enable_progress_bar=false", "data.val_keys=[W002/front/sad/level_3/002]",
        "trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=null", "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1", *overrides,
    ])


def test_trains_reloads_resumes_and_edits(cache, tmp_path):
    cfg = _config(cache, tmp_path / "run", "trainer.max_steps=4", "model.lr_decay_start=2")
    assert cfg.data.resolution == 32 and cfg.model.n_critic == 2  # the tiny experiment's section
    trainer = train.run(SPEC, cfg)
    assert trainer.global_step == 4
    metrics = trainer.callback_metrics
    for name in ("d_loss", "d_adv", "d_cls", "d_gp", "wasserstein", "g_loss", "g_adv", "g_cls", "g_rec", "lr_factor"):
        assert f"stargan/train/{name}" in metrics, name
    assert "stargan/val/self_l1" in metrics and "stargan/val/g_rec" in metrics
    assert float(metrics["stargan/train/lr_factor"]) == pytest.approx(0.5)  # iteration 3 of 4, decay from 2
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["part"] == "stargan" and ckpt["stargan_generator_kwargs"]["conv_dim"] == 8

    torch.manual_seed(cfg.seed)
    fresh = StarGANSystem(config=dict(ckpt["hyper_parameters"]["config"]))
    for net in ("generator", "discriminator"):
        changed = [k for k, v in getattr(fresh, net).state_dict().items()
                   if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][f"{net}.{k}"])]
        assert len(changed) >= 4, f"training did not change the {net} weights"
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    fresh.eval()

    editor = StarGANEditor.from_checkpoint(ckpt_path)
    assert editor.name == "stargan" and editor.crop_size == SIZE and not editor.training
    crops = torch.rand(3, 3, SIZE, SIZE)
    codes = torch.stack([emotion_code_from_level("happy", 3), emotion_code_from_level("sad", 1.5), torch.zeros(7)])
    edited = editor.edit(crops, codes)
    assert edited.shape == crops.shape and float(edited.min()) >= 0 and float(edited.max()) <= 1
    with torch.no_grad():
        expected = fresh(crops * 2 - 1, codes).clamp(-1, 1).add(1).div(2)
    assert torch.allclose(edited, expected, atol=1e-6)
    big = editor.edit(torch.rand(2, 3, 48, 48), codes[:2])  # another crop side: resized in and out
    assert big.shape == (2, 3, 48, 48)
    with pytest.raises(ValueError, match=">= 0"):
        editor.edit(crops, -codes)
    with pytest.raises(ValueError, match=r"values must lie in \[0.0, 1.0\]"):
        editor.edit(crops * 2, codes)

    resumed = train.run(SPEC, _config(cache, tmp_path / "run", "trainer.max_steps=6", "model.lr_decay_start=2",
                                      "ckpt_path=last"))
    assert resumed.global_step == 6
    later = load_checkpoint(ckpt_path)["state_dict"]
    assert not torch.equal(later["generator.main.0.weight"], ckpt["state_dict"]["generator.main.0.weight"])
    with pytest.raises(CheckpointError, match="expected 'exprgan'"):
        from emoedit.baselines.crop_editor import ExprGANEditor

        ExprGANEditor.from_checkpoint(ckpt_path)


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of 2\\^discriminator.num_layers"):
        StarGANSystem(config={"resolution": 32})  # 6 layers need 64 px at least
    with pytest.raises(ValueError, match="classification_kind"):
        StarGANSystem(config={"resolution": 64, "loss": {"classification_kind": "hinge"}})
