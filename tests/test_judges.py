"""Judge networks and their training part; the judged metrics (ArcSim, emotion accuracy, monotonicity)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import train
from datamodules.frames import FrameDataModule
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.config import compose_config
from emoedit.data.alignment import CropTransform
from emoedit.data.cache import CacheSpec, CacheWriter
from emoedit.editing.emotion_code import EMOTIONS
from emoedit.metrics.identity import ArcFaceEmbedder, ArcSim, cosine_similarity_pairs
from emoedit.metrics.monotonicity import (
    average_ranks,
    emotion_accuracy,
    intensity_monotonicity,
    spearman_correlation,
    target_confidence,
)
from emoedit.networks.judges import JUDGE_EMOTIONS, EmotionJudge, IdentityJudge, emotion_class_index
from lightning_modules.judge import JudgeRunConfig, JudgeSystem

REPO = Path(__file__).resolve().parents[1]
SPEC = train.PartSpec(JudgeSystem, FrameDataModule, JudgeRunConfig, "judges")
SUBJECTS = ("M001", "W002")
WORLD_EMOTIONS = ("neutral", "happy", "sad", "angry")
TINY = dict(input_size=32, depth=10, widths=(8, 16, 32, 64))


# --------------------------------------------------------------------------- networks
def test_emotion_judge_outputs():
    judge = EmotionJudge(**TINY).eval()
    assert JUDGE_EMOTIONS == ("neutral",) + EMOTIONS and judge.classes == JUDGE_EMOTIONS
    out = judge(torch.rand(3, 3, 40, 40) * 2 - 1)
    assert out.logits.shape == (3, 8) and out.features.shape == (3, 64) and judge.feature_dim == 64
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.features).all()
    assert torch.allclose(out.probabilities.sum(-1), torch.ones(3))
    assert emotion_class_index(["neutral", "happiness", "contempt"]).tolist() == [0, 1, 7]
    with pytest.raises(ValueError, match="unknown emotion"):
        emotion_class_index(["bored"])
    torch.manual_seed(7)
    first = EmotionJudge(**TINY).eval()
    torch.manual_seed(7)
    second = EmotionJudge(**TINY).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(first(x).logits, second(x).logits)  # seeded construction is reproducible


def test_identity_judge_outputs_and_subjects():
    judge = IdentityJudge(subjects=SUBJECTS, embedding_dim=16, scale=10.0, **TINY).eval()
    with torch.no_grad():
        out = judge(torch.rand(3, 3, 32, 32) * 2 - 1)
    assert out.embedding.shape == (3, 16) and out.logits.shape == (3, 2)
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert float(out.logits.abs().max()) <= 10.0 + 1e-5  # scale · cosine
    assert judge.subject_index(["W002", "M001"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="X9"):
        judge.subject_index(["X9"])
    with pytest.raises(ValueError, match="repeated"):
        IdentityJudge(subjects=["A", "A"], **TINY)


def test_save_and_load_round_trip(tmp_path: Path):
    emotion = EmotionJudge(**TINY).eval()
    identity = IdentityJudge(subjects=SUBJECTS, embedding_dim=16, **TINY).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loaded = EmotionJudge.from_checkpoint(emotion.save(tmp_path / "emotion.ckpt"))
    assert not loaded.training and torch.equal(loaded(x).logits, emotion(x).logits)
    loaded_id = IdentityJudge.from_checkpoint(identity.save(tmp_path / "identity.ckpt"))
    assert loaded_id.subjects == SUBJECTS and torch.equal(loaded_id(x).embedding, identity(x).embedding)
    with pytest.raises(CheckpointError, match="holds a 'identity' judge"):
        EmotionJudge.from_checkpoint(tmp_path / "identity.ckpt")
    torch.save({"hyper_parameters": {"part": "classifier"}, "state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="part 'classifier'"):
        EmotionJudge.from_checkpoint(tmp_path / "other.ckpt")


# --------------------------------------------------------------------------- training part
def _frames_cache(root: Path, size: int = 32) -> Path:
    """Crops whose emotion is a bright bar at an emotion-specific height and whose subject is a tint."""
    spec = CacheSpec(
        kind="frames", version=1,
        fields={"crop": ("uint8", (3, size, size)), "landmarks": ("float32", (68, 2)), "transform": ("float32", (8,))},
        meta={"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"},
        attributes={"crop_size": size},
    )
    writer = CacheWriter.open(root, spec)
    identity = CropTransform(torch.ones(()), torch.zeros(()), torch.zeros(2), (size, size), (size, size))
    generator = torch.Generator().manual_seed(0)
    frames = 4
    for s, subject in enumerate(SUBJECTS):
        for e, emotion in enumerate(WORLD_EMOTIONS):
            for clip in range(2):
                image = 0.2 + 0.1 * torch.rand(frames, 3, size, size, generator=generator)
                image[:, s] += 0.3  # subject tint
                image[:, :, 4 + 6 * e: 8 + 6 * e] = 0.95  # emotion bar
                records = {"crop": (image.clamp(0, 1) * 255).round().to(torch.uint8),
                           "landmarks": torch.zeros(frames, 68, 2),
                           "transform": identity.as_tensor().expand(frames, -1).clone()}
                meta = {"subject": subject, "emotion": emotion, "level": 0 if emotion == "neutral" else 3,
                        "view": "front", "frame": list(range(frames))}
                writer.write_clip(f"{subject}/front/{emotion}/level_3/{clip:03d}", records, meta)
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return _frames_cache(tmp_path_factory.mktemp("judge_world") / "frames")


def _config(cache: Path, out: Path, *overrides: str):
    return compose_config(JudgeRunConfig, part="judge", config_dir=REPO / "configs", overrides=[
        f"output_dir={out}", "model.input_size=32", "model.widths=[8,16,32,64]", "model.lr=3e-3",
        "model.dropout=0.0", f"data.cache_dir={cache}", "data.batch_size=8", "data.num_workers=0",
        "data.val_fraction=0.25", "logger.kind=none", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.val_check_interval=4",
        "trainer.check_val_every_n_epoch=null", "trainer.num_sanity_val_steps=0", "trainer.max_epochs=-1",
        *overrides,
    ])


@pytest.mark.parametrize("kind", ["emotion", "identity"])
def test_judge_trains_and_reloads(cache: Path, tmp_path: Path, kind: str):
    extra = ["model.kind=identity", f"model.subjects=[{','.join(SUBJECTS)}]", "model.embedding_dim=16"] if kind == "identity" else []
    cfg = _config(cache, tmp_path / "run", "trainer.max_steps=8", *extra)
    trainer = train.run(SPEC, cfg)
    assert trainer.global_step == 8
    accuracy = trainer.callback_metrics["judge/val/accuracy"]
    assert 0.0 <= float(accuracy) <= 1.0
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["part"] == "judge" and ckpt["hyper_parameters"]["config"]["kind"] == kind
    torch.manual_seed(cfg.seed)
    fresh = JudgeSystem(config=dict(ckpt["hyper_parameters"]["config"]))
    changed = [k for k, v in fresh.judge.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][f"judge.{k}"])]
    assert len(changed) > 10, "training did not change the weights"
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    fresh.eval()
    judge = (EmotionJudge if kind == "emotion" else IdentityJudge).from_checkpoint(ckpt_path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(judge(x).logits, fresh(x).logits)


def test_config_errors(cache: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="model.subjects must list"):
        JudgeSystem(config={"kind": "identity"})
    with pytest.raises(ValueError, match="model.kind must be one of"):
        JudgeSystem(config={"kind": "pose"})
    cfg = _config(cache, tmp_path / "bad", "trainer.max_steps=1", "model.kind=identity", "model.subjects=[M001]")
    with pytest.raises(ValueError, match=r"not in model.subjects: \['W002'\]"):
        train.run(SPEC, cfg)


# --------------------------------------------------------------------------- ArcSim
class _ChannelMeans(nn.Module):
    """Crops in [-1, 1] -> (B, 2) embedding = the means of the red and green channels."""

    def forward(self, crops: Tensor) -> Tensor:
        return crops[:, :2].mean(dim=(2, 3))


def test_arcsim_known_answers():
    arcsim = ArcSim(network=_ChannelMeans(), input_size=16)
    red = torch.tensor([1.0, 0.5, 0.5])[None, :, None, None].expand(2, 3, 24, 24)  # crop means (1, 0)
    green = torch.tensor([0.5, 1.0, 0.5])[None, :, None, None].expand(2, 3, 24, 24)  # crop means (0, 1)
    assert torch.allclose(arcsim(red, red), torch.ones(2))
    assert torch.allclose(arcsim(red, green), torch.zeros(2), atol=1e-6)
    a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    assert torch.allclose(cosine_similarity_pairs(a, b), torch.tensor([0.0, 1.0]))
    landmarks = torch.rand(2, 68, 2) * 10 + 7
    assert arcsim(red, red, landmarks).shape == (2,)  # the aligned path runs


def test_arcsim_with_an_insightface_layout_network_and_judges(tmp_path: Path):
    torch.manual_seed(0)
    network = ArcFaceEmbedder(depth=10, use_se=True, widths=(8, 16, 32, 64), input_size=32, embedding_dim=24).eval()
    insightface_keys = {"input_layer.0.weight", "body.0.res_layer.1.weight", "output_layer.3.weight",
                        "output_layer.4.running_var"}
    assert insightface_keys <= set(network.state_dict())
    path = tmp_path / "model_ir_se10.pth"
    torch.save(network.state_dict(), path)
    kwargs = dict(depth=10, use_se=True, widths=(8, 16, 32, 64), input_size=32, embedding_dim=24)
    arcsim = ArcSim.from_insightface(path, **kwargs)
    frames = torch.rand(3, 3, 48, 48)
    assert torch.allclose(arcsim(frames, frames), torch.ones(3), atol=1e-5)
    other = torch.rand(3, 3, 48, 48)
    scores = arcsim(frames, other)
    assert scores.shape == (3,) and torch.all(scores < 1.0) and torch.all(scores >= -1.0)
    with pytest.raises(ValueError, match="model_ir_se10.pth"):
        ArcSim.from_insightface(path, **{**kwargs, "depth": 18})
    judged = ArcSim(network=IdentityJudge(subjects=SUBJECTS, embedding_dim=8, **TINY), input_size=32)
    assert torch.allclose(judged(frames, frames), torch.ones(3), atol=1e-5)  # outputs with .embedding work


def test_onnx_needs_onnxruntime(tmp_path: Path):
    if importlib.util.find_spec("onnxruntime") is not None:
        pytest.skip("onnxruntime is installed")
    with pytest.raises(ImportError, match="onnxruntime"):
        ArcSim.from_onnx(tmp_path / "model.onnx")


# --------------------------------------------------------------------------- judged emotion
def test_emotion_accuracy_and_target_confidence():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 5.0]])
    targets = torch.tensor([0, 1, 2, 0])
    assert float(emotion_accuracy(logits, targets)) == 0.5  # rows 0 and 1 (row 2 is a tie -> index 0)
    confidence = target_confidence(logits, targets)
    assert float(confidence[2]) == pytest.approx(1 / 3)
    assert torch.allclose(confidence, torch.softmax(logits.double(), 1)[torch.arange(4), targets])
    with pytest.raises(ValueError, match="targets"):
        target_confidence(logits, torch.tensor([0, 1, 2, 3]))


def test_monotonicity_known_answers():
    alphas = torch.tensor([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    rising = intensity_monotonicity(alphas, torch.tensor([0.1, 0.2, 0.35, 0.5, 0.7, 0.9]))
    assert float(rising.spearman) == pytest.approx(1.0) and float(rising.increasing_fraction) == 1.0
    falling = intensity_monotonicity(alphas, torch.tensor([0.9, 0.7, 0.5, 0.3, 0.2, 0.1]))
    assert float(falling.spearman) == pytest.approx(-1.0) and float(falling.increasing_fraction) == 0.0
    # Unsorted input is sorted by α; one dip: 4 of 5 steps rise.
    shuffled = intensity_monotonicity(alphas[[3, 0, 5, 1, 4, 2]], torch.tensor([0.5, 0.1, 0.9, 0.2, 0.45, 0.3]))
    assert torch.equal(shuffled.alphas, alphas.double())
    assert float(shuffled.increasing_fraction) == pytest.approx(0.8)
    # Repeats (columns) are averaged first; a rise smaller than min_increase does not count.
    repeats = torch.tensor([[0.1, 0.3], [0.25, 0.25], [0.3, 0.32]])
    scores = intensity_monotonicity(alphas[:3], repeats, min_increase=0.02)
    assert torch.allclose(scores.confidences, torch.tensor([0.2, 0.25, 0.31], dtype=torch.float64))
    assert float(scores.increasing_fraction) == 1.0
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert torch.isnan(spearman_correlation(torch.arange(3.0), torch.ones(3)))
    with pytest.raises(ValueError, match="distinct"):
        intensity_monotonicity(torch.tensor([0.5, 0.5]), torch.tensor([0.1, 0.2]))
