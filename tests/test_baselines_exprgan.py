"""ExprGAN-style baseline (METHOD §6): networks, the expression-intensity controller, paired targets,
losses, a few real training steps, checkpoint reload and the crop editor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import train
from datamodules.face_crops import EMOTION_KEY, IMAGE_KEY, TARGET_IMAGE_KEY, TARGET_KEY, FaceCropDataModule
from emoedit.baselines.crop_editor import ExprGANEditor, StarGANEditor, save_generator
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.config import compose_config
from emoedit.editing.emotion_code import EMOTIONS, emotion_code_from_level
from emoedit.networks.exprgan import (
    ExprGANDiscriminator,
    ExprGANGenerator,
    ExpressionController,
    ExpressionRegressor,
    stage_widths,
)
from lightning_modules.exprgan import ExprGANRunConfig, ExprGANSystem, code_regression_loss
from tests.test_baselines_stargan import FRAMES, SIZE, write_face_crop_cache

REPO = Path(__file__).resolve().parents[1]
SPEC = train.PartSpec(ExprGANSystem, FaceCropDataModule, ExprGANRunConfig, "ExprGAN baseline")
TINY = dict(image_size=SIZE, base_channels=8, max_channels=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_face_crop_cache(tmp_path_factory.mktemp("exprgan_world") / "frames")


# --------------------------------------------------------------------------- networks
def test_networks_shapes_ranges_and_seeded_regression():
    assert stage_widths(32, 8, 32) == [8, 16, 32] and stage_widths(128, 64, 512) == [64, 128, 256, 512, 512]
    torch.manual_seed(0)
    generator = ExprGANGenerator(**TINY, latent_dim=16, code_dim=2)
    discriminator = ExprGANDiscriminator(**TINY)
    regressor = ExpressionRegressor(**TINY)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, SIZE, SIZE, generator=g) * 2 - 1
    code = torch.zeros(3, 7)
    code[0, 0], code[1, 2] = 1.0, 0.5
    with torch.no_grad():
        out = generator(x, code)
        logits = discriminator(x, code)
        strengths = regressor(x)
    assert out.image.shape == x.shape and out.latent.shape == (3, 16) and out.expression_code.shape == (3, 14)
    assert float(out.image.abs().max()) <= 1.0 and float(out.latent.abs().max()) < 1.0
    assert logits.shape == (3,) and strengths.shape == (3, 7)
    for t in (out.image, logits, strengths):
        assert torch.isfinite(t).all()
    with torch.no_grad():
        assert not torch.equal(discriminator(x, code), discriminator(x, torch.zeros(3, 7)))  # conditioned
    assert float(out.image.sum()) == pytest.approx(REGRESSION["image_sum"], abs=1e-3)
    assert float(logits.sum()) == pytest.approx(REGRESSION["logits_sum"], abs=1e-4)
    assert float(strengths.sum()) == pytest.approx(REGRESSION["strengths_sum"], abs=1e-4)
    for norm in ("instance", "none"):
        other = ExprGANGenerator(**TINY, latent_dim=4, code_dim=1, decoder_norm=norm)
        assert other(x, code).image.shape == x.shape
    with pytest.raises(ValueError, match="power of two"):
        ExprGANGenerator(image_size=48)
    with pytest.raises(ValueError, match="norm must be one of"):
        ExprGANGenerator(**TINY, decoder_norm="layer")


REGRESSION = {"image_sum": 164.47369384765625, "logits_sum": 0.1501009166240692, "strengths_sum": 0.14316599071025848}


def test_controller_scales_each_emotions_block_by_its_strength():
    controller = ExpressionController(emotion_dim=7, code_dim=3)
    happy = emotion_code_from_level("happy", 1)[None]
    codes = controller(torch.cat([happy, 2 * happy, 3 * happy, torch.zeros(1, 7)]))
    assert codes.shape == (4, 21)
    assert torch.allclose(codes[1], 2 * codes[0]) and torch.allclose(codes[2], 3 * codes[0])  # linear in α
    assert torch.equal(codes[3], torch.zeros(21))  # neutral = the zero code
    blocks = codes.view(4, 7, 3)
    assert blocks[:, 1:].abs().sum() == 0 and blocks[0, 0].abs().sum() > 0  # only happy's block is used
    mix = controller(torch.tensor([[0.5, 0.0, 0.5, 0, 0, 0, 0]]))
    assert torch.allclose(mix, controller(torch.tensor([[0.5, 0, 0, 0, 0, 0, 0.0]]))
                          + controller(torch.tensor([[0, 0, 0.5, 0, 0, 0, 0.0]])))


def test_generator_save_load_round_trip(tmp_path):
    generator = ExprGANGenerator(**TINY, latent_dim=8, code_dim=2).eval()
    path = save_generator(generator, tmp_path / "exprgan.pt", part="exprgan", resolution=SIZE)
    editor = ExprGANEditor.from_checkpoint(path)
    assert editor.crop_size == SIZE and editor.name == "exprgan" and not editor.generator.training
    crops, codes = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 7)
    with torch.no_grad():
        expected = generator(crops * 2 - 1, codes).image.clamp(-1, 1).add(1).div(2)
    assert torch.allclose(editor.edit(crops, codes), expected, atol=1e-6)
    with pytest.raises(CheckpointError, match=r"exprgan\.pt: checkpoint of part 'exprgan', expected 'stargan'"):
        StarGANEditor.from_checkpoint(path)
    with pytest.raises(TypeError, match="holds a StarGANGenerator"):
        save_generator(generator, tmp_path / "x.pt", part="stargan", resolution=SIZE)


# --------------------------------------------------------------------------- paired data
def _paired(cache: Path, **data) -> FaceCropDataModule:
    dm = FaceCropDataModule(config={"cache_dir": str(cache), "paired": True, "batch_size": 4, **data})
    dm.setup("fit")
    return dm


def _frame_of(image: Tensor) -> int:
    return int(image[0, 0, 0])  # the test world writes the frame index there


def test_paired_targets_are_frames_of_the_same_subject_at_the_target_emotion(cache):
    dataset = _paired(cache, neutral_target_prob=0.0).train_dataset()
    index = dataset.index
    seen_levels = set()
    for position in range(len(dataset)):
        torch.manual_seed(position)
        sample = dataset[position]
        target = sample[TARGET_KEY]
        assert sample[TARGET_IMAGE_KEY].shape == sample[IMAGE_KEY].shape == (3, SIZE, SIZE)
        assert int((target > 0).sum()) == 1  # an emotional target (neutral_target_prob = 0)
        emotion = EMOTIONS[int(target.argmax())]
        level = round(float(target.max()) * 3)
        seen_levels.add((emotion, level))
        # find the target record: same subject, that emotion and level, the same frame index
        frame = _frame_of(sample[IMAGE_KEY])
        assert _frame_of(sample[TARGET_IMAGE_KEY]) == frame == sample["frame"]
        name = str(sample["clip"]).rsplit("/", 1)[-1]
        wanted_clip = f"{sample['subject']}/front/{emotion}/level_{level}/{name}"
        if wanted_clip not in index.unique("clip"):
            wanted_clip = f"{sample['subject']}/front/{emotion}/level_{level}/001"  # no clip of that name
        match = [p for p in range(len(index)) if index.value("clip", p) == wanted_clip and index.value("frame", p) == frame]
        assert len(match) == 1
        assert torch.equal(dataset[match[0]][IMAGE_KEY], sample[TARGET_IMAGE_KEY]), (position, wanted_clip)
    assert seen_levels == {("happy", 1), ("happy", 3), ("sad", 3)}
    own = _paired(cache, self_target_prob=1.0).train_dataset()
    sample = own[5]
    assert torch.equal(sample[TARGET_IMAGE_KEY], sample[IMAGE_KEY]) and torch.equal(sample[TARGET_KEY],
                                                                                    sample[EMOTION_KEY])
    neutral = _paired(cache, neutral_target_prob=1.0).train_dataset()
    sample = neutral[len(neutral) - 1]
    assert sample[TARGET_KEY].abs().sum() == 0
    batch = next(iter(_paired(cache, hflip=True).train_dataloader()))
    assert batch[TARGET_IMAGE_KEY].shape == (4, 3, SIZE, SIZE) and batch[TARGET_IMAGE_KEY].dtype == torch.uint8
    val = _paired(cache, val_keys=["M001/front/sad/level_3/002"], resolution=16)
    first, second = next(iter(val.val_dataloader())), next(iter(val.val_dataloader()))
    assert first[TARGET_IMAGE_KEY].shape == (4, 3, 16, 16)
    assert torch.equal(first[TARGET_IMAGE_KEY], second[TARGET_IMAGE_KEY])  # seeded validation pairs
    # validation samples are read through the pool of every kept record: still the right crops
    unpaired = FaceCropDataModule(config={"cache_dir": str(cache), "batch_size": 4, "resolution": 16,
                                          "val_keys": ["M001/front/sad/level_3/002"]})
    unpaired.setup("fit")
    paired_val, plain_val = val.val_dataset(), unpaired.val_dataset()
    assert len(paired_val) == len(plain_val) == FRAMES and len(paired_val.pool) == len(val.index)
    for position in range(FRAMES):
        assert torch.equal(paired_val[position][IMAGE_KEY], plain_val[position][IMAGE_KEY])
        assert paired_val[position]["subject"] == "M001"


# --------------------------------------------------------------------------- losses
def test_code_regression_loss_known_answer():
    prediction = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    code = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert float(code_regression_loss(prediction, code)) == pytest.approx((1.0 + 4.0) / 2)
    assert float(code_regression_loss(code, code)) == 0.0


@dataclass(frozen=True)
class _Out:
    image: Tensor


class _Identity(nn.Module):
    def forward(self, images: Tensor, code: Tensor) -> _Out:
        return _Out(image=images)


class _Reader(nn.Module):
    """A regressor that reads the code back exactly (set before the call)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = torch.zeros(0)

    def forward(self, images: Tensor) -> Tensor:
        return self.answer


def _system(**loss) -> ExprGANSystem:
    return ExprGANSystem(config={"resolution": SIZE, "base_channels": 8, "max_channels": 32, "latent_dim": 8,
                                 "code_dim": 2, "discriminator_channels": 8, "loss": loss})


def test_loss_terms_respond_to_what_they_measure(cache):
    batch = next(iter(_paired(cache, self_target_prob=1.0).train_dataloader()))  # targets = the inputs
    system = _system()
    b = system.split_batch(batch)
    _, logs, output = system.generator_terms(b)
    assert {"g_rec", "g_adv", "g_expr", "g_loss"} == set(logs) and output.shape == b.images.shape
    assert float(logs["g_rec"]) > 0
    system.generator = _Identity()  # reproduces the input = the paired target here
    reader = _Reader()
    reader.answer = b.target_code.clone()
    system.regressor = reader  # reads the requested strengths exactly
    _, logs, _ = system.generator_terms(b)
    assert float(logs["g_rec"]) == 0.0 and float(logs["g_expr"]) == 0.0
    reader.answer = b.target_code + 0.5
    _, logs, _ = system.generator_terms(b)
    assert float(logs["g_expr"]) == pytest.approx(0.25 * 7)
    system = _system()
    _, d_logs = system.discriminator_terms(b)
    assert {"d_adv", "d_real", "d_fake", "real_logit", "fake_logit", "q_real", "d_loss"} == set(d_logs)
    assert float(d_logs["d_adv"]) == pytest.approx(float(d_logs["d_real"] + d_logs["d_fake"]))
    only_rec = _system(adversarial=0.0, expression=0.0, regressor=0.0)
    _, g_logs, _ = only_rec.generator_terms(b)
    _, d_logs = only_rec.discriminator_terms(b)
    assert set(g_logs) == {"g_rec", "g_loss"} and set(d_logs) == {"d_loss"}
    with pytest.raises(KeyError, match="data.paired=true"):
        system.split_batch({k: v for k, v in batch.items() if k != TARGET_IMAGE_KEY})


# --------------------------------------------------------------------------- training
def _config(cache: Path, out: Path, *overrides: str):
    return compose_config(ExprGANRunConfig, part="exprgan", config_dir=REPO / "configs", overrides=[
        "experiment=tiny", f"output_dir={out}", f"data.cache_dir={cache}", "logger.kind=none",
        "trainer.enable_progress_bar=false", "data.val_keys=[W002/front/sad/level_3/002]",
        "trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=null", "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1", *overrides,
    ])


def test_trains_reloads_resumes_and_edits(cache, tmp_path):
    cfg = _config(cache, tmp_path / "run", "trainer.max_steps=3")
    assert cfg.data.paired and cfg.data.resolution == SIZE  # paired by default; the tiny experiment's sizes
    trainer = train.run(SPEC, cfg)
    assert trainer.global_step == 3
    metrics = trainer.callback_metrics
    for name in ("d_loss", "d_adv", "q_real", "g_loss", "g_rec", "g_adv", "g_expr"):
        assert f"exprgan/train/{name}" in metrics, name
    for name in ("g_rec", "g_expr", "self_l1", "psnr"):
        assert f"exprgan/val/{name}" in metrics, name
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["part"] == "exprgan" and ckpt["exprgan_generator_kwargs"]["latent_dim"] == 16

    torch.manual_seed(cfg.seed)
    fresh = ExprGANSystem(config=dict(ckpt["hyper_parameters"]["config"]))
    for net in ("generator", "discriminator", "regressor"):
        changed = [k for k, v in getattr(fresh, net).state_dict().items()
                   if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][f"{net}.{k}"])]
        assert len(changed) >= 4, f"training did not change the {net} weights"
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    fresh.eval()
    editor = ExprGANEditor.from_checkpoint(ckpt_path)
    crops = torch.rand(3, 3, SIZE, SIZE)
    codes = torch.stack([emotion_code_from_level("happy", 3), emotion_code_from_level("happy", 1.5), torch.zeros(7)])
    edited = editor.edit(crops, codes)
    with torch.no_grad():
        expected = fresh(crops * 2 - 1, codes).clamp(-1, 1).add(1).div(2)
    assert edited.shape == crops.shape and torch.allclose(edited, expected, atol=1e-6)

    resumed = train.run(SPEC, _config(cache, tmp_path / "run", "trainer.max_steps=4", "ckpt_path=last"))
    assert resumed.global_step == 4


def test_config_errors():
    with pytest.raises(ValueError, match="power of two"):
        ExprGANSystem(config={"resolution": 48})
    with pytest.raises(ValueError, match="at least one generator term"):
        ExprGANSystem(config={"resolution": 32, "loss": {"reconstruction": 0.0, "adversarial": 0.0,
                                                         "expression": 0.0}})
