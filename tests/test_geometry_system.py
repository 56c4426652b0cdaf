"""geometry part: the coefficient DataModule, the losses wired into the system, a few real
training steps on a tiny coefficient cache, checkpoint reload and the inference editor."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

import train
from datamodules.coefficients import (
    COEFFS_KEY,
    EMOTION_KEY,
    REFERENCE_FAKE_KEY,
    REFERENCE_KEY,
    TARGET_KEY,
    CoefficientDataModule,
    sample_target_codes,
)
from emoedit.checkpoint_io import load_checkpoint
from emoedit.config import compose_config
from emoedit.data.cache import CacheError, CacheSpec, CacheWriter
from emoedit.editing.emotion_code import EMOTIONS, emotion_code_from_level
from emoedit.face_model import MorphableModel
from emoedit.networks.geometry_editor import FACE_MODEL_KEY, GeometryGenerator, edit_geometry
from lightning_modules.geometry import GeometryRunConfig, GeometrySystem

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = ("M001", "M002", "W003")
EMOTION_CLIPS = (("neutral", 1, "001"), ("neutral", 1, "002"), ("happy", 1, "001"), ("happy", 3, "001"),
                 ("sad", 3, "001"))
FRAMES = 6
# the experiment=tiny section proposed for configs/experiment/tiny.yaml, as overrides
TINY = ("model.generator.hidden_dim=32", "model.generator.num_layers=2", "model.discriminator.hidden_dim=32",
        "model.discriminator.num_layers=2", "model.g_lr=1e-3", "model.d_lr=1e-3", "data.batch_size=8",
        "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_epochs=-1",
        "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false")
SPEC = train.PartSpec(GeometrySystem, CoefficientDataModule, GeometryRunConfig, "geometry editor")


@pytest.fixture(scope="module")
def face_model() -> MorphableModel:
    return MorphableModel.procedural()


def write_coefficient_cache(
    root: Path,
    model: MorphableModel,
    *,
    subjects: tuple[str, ...] = SUBJECTS,
    clips: tuple[tuple[str, int, str], ...] = EMOTION_CLIPS,
    frames: int = FRAMES,
    with_truth: bool = False,
    seed: int = 0,
) -> Path:
    """A finalised ``coeffs`` cache of procedural-model coefficients: per subject an identity,
    per emotion a fixed AU pattern scaled by level / 3, per frame a little 'speech' on the mouth
    AUs; pose, texture and lighting random. ``coeffs_true`` (optional) = coeffs + 0.5."""
    layout = model.layout
    g = torch.Generator().manual_seed(seed)
    names = model.expression_names
    mouth = [names.index(n) for n in ("AU25", "AU26")]
    patterns = {e: torch.rand(layout.exp, generator=g) * (torch.rand(layout.exp, generator=g) < 0.3) for e in EMOTIONS}
    fields = {"coeffs": ("float32", (layout.size,)), "landmarks": ("float32", (68, 2)),
              "landmarks_detected": ("float32", (68, 2)), "transform": ("float32", (8,))}
    if with_truth:
        fields["coeffs_true"] = ("float32", (layout.size,))
    spec = CacheSpec(kind="coeffs", version=1, fields=fields,
                     meta={"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"},
                     attributes={"face_model": model.name})
    writer = CacheWriter.open(root, spec)
    slices = layout.slices
    for subject in subjects:
        identity = 0.7 * torch.randn(layout.id, generator=g)
        for emotion, level, clip in clips:
            coeffs = 0.1 * torch.randn(frames, layout.size, generator=g)
            coeffs[:, slices["id"]] = identity
            exp = torch.zeros(frames, layout.exp)
            exp[:, mouth] = 0.4 * torch.rand(frames, len(mouth), generator=g)
            if emotion != "neutral":
                exp += patterns[emotion] * level / 3
            coeffs[:, slices["exp"]] = exp.clamp(0, 1)
            records = {"coeffs": coeffs, "landmarks": torch.zeros(frames, 68, 2),
                       "landmarks_detected": torch.zeros(frames, 68, 2), "transform": torch.zeros(frames, 8)}
            if with_truth:
                records["coeffs_true"] = coeffs + 0.5
            meta = {"subject": subject, "emotion": emotion, "level": level, "view": "front",
                    "frame": list(range(frames))}
            writer.write_clip(f"{subject}/front/{emotion}/level_{level}/{clip}", records, meta)
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory, face_model) -> Path:
    return write_coefficient_cache(tmp_path_factory.mktemp("geometry") / "coeffs", face_model, with_truth=True)


def _datamodule(cache: Path, **data) -> CoefficientDataModule:
    dm = CoefficientDataModule(config={"cache_dir": str(cache), "batch_size": 4, **data})
    dm.setup("fit")
    return dm


def test_samples_pair_frames_with_neutral_references_of_the_same_subject(cache):
    dm = _datamodule(cache, val_keys=["M001/front/happy/level_3/001"])
    assert dm.coeff_size == 136 and dm.bank is not None and set(dm.bank.subjects) == set(SUBJECTS)
    assert set(dm.val_index.unique("clip")) == {"M001/front/happy/level_3/001"}
    dataset = dm.train_dataset()
    bank = dm.bank
    for position in range(0, len(dataset), 7):
        sample = dataset[position]
        assert sample[COEFFS_KEY].shape == (136,) and sample[REFERENCE_KEY].shape == (136,)
        rows = bank.rows_of(bank.subject_index(sample["subject"]))
        for key in (REFERENCE_KEY, REFERENCE_FAKE_KEY):
            assert (rows == sample[key]).all(dim=1).any(), "reference is not a neutral frame of the same subject"
        expected = emotion_code_from_level(sample["emotion"], sample["level"]) if sample["emotion"] != "neutral" \
            else torch.zeros(7)
        assert torch.allclose(sample[EMOTION_KEY], expected)
        target = sample[TARGET_KEY]
        assert target.shape == (7,) and int((target > 0).sum()) <= 1 and float(target.max()) <= 1.0
    batch = next(iter(dm.train_dataloader()))
    assert batch[COEFFS_KEY].shape == (4, 136) and batch[TARGET_KEY].shape == (4, 7) and len(batch["subject"]) == 4
    streamed = _datamodule(cache, preload=False, val_keys=["M001/front/happy/level_3/001"]).train_dataset()
    assert torch.equal(streamed[5][COEFFS_KEY], dataset[5][COEFFS_KEY])
    val_a = next(iter(dm.val_dataloader()))
    val_b = next(iter(dm.val_dataloader()))
    assert torch.equal(val_a[TARGET_KEY], val_b[TARGET_KEY]) and torch.equal(val_a[REFERENCE_KEY], val_b[REFERENCE_KEY])


def test_target_codes_cover_neutral_continuous_and_discrete_levels():
    g = torch.Generator().manual_seed(0)
    codes = sample_target_codes(600, neutral_prob=0.2, continuous_prob=0.5, max_level=3.0, emotions=tuple(range(7)),
                                generator=g)
    strengths = codes.max(dim=1).values
    neutral = float((strengths == 0).float().mean())
    assert 0.14 < neutral < 0.26
    levels = strengths[strengths > 0] * 3
    discrete = torch.isclose(levels, levels.round(), atol=1e-6)
    assert 0.3 < float(discrete.float().mean()) < 0.7  # about half MEAD levels 1..3
    assert float(levels[~discrete].min()) < 1.0 and 1.0 < float(levels[~discrete].median()) < 2.0  # intermediate
    assert float(levels.max()) <= 3.0 + 1e-6
    assert (codes > 0).sum(dim=1).max() <= 1  # one emotion at a time
    only = sample_target_codes(20, neutral_prob=0.0, continuous_prob=0.0, max_level=3.0, emotions=(2,), generator=g)
    assert (only[:, 2] > 0).all() and not only[:, [0, 1, 3, 4, 5, 6]].any()


def test_filters_truth_field_and_missing_references(cache, tmp_path, face_model, caplog):
    dm = _datamodule(cache, exclude={"subject": ["W003"], "clip": ["M001/front/sad/level_3/001"]})
    assert set(dm.train_index.unique("subject")) == {"M001", "M002"}
    assert "M001/front/sad/level_3/001" not in dm.train_index.unique("clip")
    truth = _datamodule(cache, coeff_field="coeffs_true")
    plain = _datamodule(cache)
    assert torch.allclose(truth.bank.coeffs, plain.bank.coeffs + 0.5)
    no_truth = write_coefficient_cache(tmp_path / "plain", face_model, subjects=("M001",), clips=EMOTION_CLIPS[:3])
    with pytest.raises(CacheError, match="coeffs_true"):
        _datamodule(no_truth, coeff_field="coeffs_true")
    lonely = write_coefficient_cache(tmp_path / "lonely", face_model, subjects=("M009",), clips=EMOTION_CLIPS[2:])
    with pytest.raises(CacheError, match=r"no neutral"):
        _datamodule(lonely, missing_reference="error")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(CacheError, match="fewer than one batch"):
            _datamodule(lonely)  # dropped with a warning, then nothing is left
    assert "M009" in caplog.text and "dropped" in caplog.text


def test_identity_generator_has_zero_geometry_losses(cache):
    dm = _datamodule(cache)
    batch = next(iter(dm.train_dataloader()))
    for pair in ("cycle", "edit"):
        system = GeometrySystem(config={"generator": {"hidden_dim": 16, "num_layers": 1},
                                        "discriminator": {"hidden_dim": 16, "num_layers": 1},
                                        "loss": {"landmark_pair": pair}})
        b = system.split_batch(batch)
        _, logs = system.generator_terms(b)  # the untrained G is the identity (zero-initialised output)
        for name in ("g_cyc", "g_reg", "g_lip", "g_lm"):
            assert float(logs[name]) == 0.0, (pair, name)
        assert {"g_adv", "g_emo", "g_loss"} <= set(logs)
        with torch.no_grad():
            system.generator.output.bias.fill_(0.05)  # now G edits: the geometry terms respond
        _, logs = system.generator_terms(b)
        for name in ("g_cyc", "g_reg", "g_lm"):
            assert float(logs[name]) > 0, (pair, name)
    off = GeometrySystem(config={"generator": {"hidden_dim": 16, "num_layers": 1},
                                 "discriminator": {"hidden_dim": 16, "num_layers": 1},
                                 "loss": {"cycle": 0.0, "landmark": 0.0, "lip": 0.0, "adversarial": 0.0,
                                          "gradient_penalty": 0.0}})
    _, g_logs = off.generator_terms(off.split_batch(batch))
    _, d_logs = off.discriminator_terms(off.split_batch(batch))
    assert set(g_logs) == {"g_emo", "g_reg", "edit_rms_mm", "g_loss"}
    assert "d_gp" not in d_logs and {"d_dis", "d_emo", "d_loss"} <= set(d_logs)


def _config(cache: Path, out: Path, *overrides: str):
    return compose_config(GeometryRunConfig, part="geometry", config_dir=REPO / "configs", overrides=[
        f"output_dir={out}", f"data.cache_dir={cache}", *TINY, "logger.kind=none",
        "trainer.enable_progress_bar=false", "data.val_keys=[M002/front/happy/level_1/001]",
        "trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=null", "trainer.num_sanity_val_steps=0",
        *overrides,
    ])


def test_trains_reloads_and_edits(cache, tmp_path, face_model):
    cfg = _config(cache, tmp_path / "run", "trainer.max_steps=4", "model.n_critic=2")
    trainer = train.run(SPEC, cfg)
    assert trainer.global_step == 4
    metrics = trainer.callback_metrics
    for name in ("d_loss", "d_dis", "d_emo", "d_gp", "g_loss", "g_adv", "g_emo", "g_cyc", "g_lm", "g_lip", "g_reg"):
        assert f"geometry/train/{name}" in metrics, name
    assert "geometry/val/g_reg" in metrics
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt[FACE_MODEL_KEY]["layout"]["exp"] == face_model.layout.exp
    assert not any(k.startswith("_face_model") or "mean_shape" in k for k in ckpt["state_dict"])

    torch.manual_seed(cfg.seed)
    fresh = GeometrySystem(config=dict(ckpt["hyper_parameters"]["config"]))
    for net in ("generator", "discriminator"):
        changed = [k for k, v in getattr(fresh, net).state_dict().items()
                   if v.is_floating_point() and not torch.equal(v, ckpt["state_dict"][f"{net}.{k}"])]
        assert len(changed) >= 4, f"training did not change the {net} weights"

    resumed = train.run(SPEC, _config(cache, tmp_path / "run", "trainer.max_steps=6", "model.n_critic=2",
                                      "ckpt_path=last"))
    assert resumed.global_step == 6
    later = load_checkpoint(ckpt_path)["state_dict"]
    assert not torch.equal(later["generator.output.weight"], ckpt["state_dict"]["generator.output.weight"])

    generator = GeometryGenerator.from_checkpoint(ckpt_path)
    g = torch.Generator().manual_seed(5)
    coeffs = 0.3 * torch.randn(9, face_model.layout.size, generator=g)
    codes = torch.zeros(9, 7)
    codes[:, EMOTIONS.index("happy")] = 1.0
    edited = edit_geometry(generator, face_model, coeffs, codes, coeffs[:3])
    assert edited.shape == coeffs.shape and torch.isfinite(edited).all()
    parts, before = face_model.layout.split(edited), face_model.layout.split(coeffs)
    for name in ("tex_coeff", "angle", "gamma", "trans"):
        assert torch.equal(getattr(parts, name), getattr(before, name)), name
    assert not torch.equal(parts.exp_coeff, before.exp_coeff)


def test_face_model_must_fit_the_cache(tmp_path, face_model):
    small = MorphableModel.procedural(num_identity=8, num_albedo=8)
    path = small.save(tmp_path / "small.pt")
    cache = write_coefficient_cache(tmp_path / "coeffs", face_model, subjects=("M001",), clips=EMOTION_CLIPS[:3])
    cfg = _config(cache, tmp_path / "bad", "trainer.max_steps=1", f"model.face_model={path}", "data.val_keys=[]")
    with pytest.raises(ValueError, match="set model.face_model to the cache's model"):
        train.run(SPEC, cfg)


def test_demo_script_summary_and_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("geometry_demo_world", REPO / "scripts" / "geometry_demo_world.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(script)
    finally:
        sys.modules.pop(spec.name, None)
    rows = []
    for set_name in script.SETS:
        for emotion in EMOTIONS:
            for level in script.LEVELS:
                row = {"set": set_name, "clip": f"{set_name}/c", "emotion": emotion, "level": level, "frames": 3}
                for method in script.METHODS:
                    for metric in ("vertex_err_mm", "upper_err_mm", "lip_change_mm", "magnitude_mm"):
                        row[f"{method}/{metric}"] = float(level)
                row["truth/lip_change_mm"] = row["truth/magnitude_mm"] = 2.0 * level
                rows.append(row)
    summary = script.summarise(rows)
    assert summary["unseen"]["by_level"]["2"]["editor/vertex_err_mm"] == pytest.approx(2.0)
    assert summary["seen_heldout"]["all"]["truth/magnitude_mm"] == pytest.approx(4.0)
    table = script.format_tables(summary, {"unseen": [0.1] * len(script.CONTINUOUS_LEVELS)})
    assert "| 1-3 | 2.00 |" in table and "2.5: 0.10" in table and "contempt" in table
