"""pSp whole-face baseline (METHOD §6): the t-GAN / texture-encoder parts on face crops (override files),
one global W+ direction per emotion, and the crop editor."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import train
from datamodules.textures import IMAGE_KEY, TextureDataModule, resize_image
from emoedit.baselines import GLOBAL_SUBJECT, PSPFaceEditor
from emoedit.baselines.psp_face import area_resize_uint8, main
from emoedit.checkpoint_io import CheckpointError, load_checkpoint
from emoedit.config import ConfigError, compose_config, config_to_plain
from emoedit.data.cache import CacheReader
from emoedit.editing.directions import EditDirections
from emoedit.editing.emotion_code import EMOTIONS, emotion_code_from_alpha
from emoedit.networks.psp_encoder import PSPEncoder
from emoedit.networks.stylegan2.checkpoint import load_generator_checkpoint
from lightning_modules.texture_encoder import TextureEncoderRunConfig
from lightning_modules.tgan import TGANRunConfig
from tests.test_baselines_stargan import SIZE, write_face_crop_cache
from tests.test_texture_encoder_system import write_tgan_checkpoint

REPO = Path(__file__).resolve().parents[1]
TGAN_YAML = REPO / "configs" / "baselines" / "psp_face_tgan.yaml"
ENCODER_YAML = REPO / "configs" / "baselines" / "psp_face_encoder.yaml"
PARTS = train._parts()
ENCODER_SPEC = PARTS["psp_encoder"]
SOLVED = ("happy", "sad")  # the test world's emotions at level 3


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("psp_face_world")
    return {"root": root, "cache": write_face_crop_cache(root / "frames"),
            "tgan": write_tgan_checkpoint(root / "tgan.ckpt")}


def _encoder_config(world: dict[str, Path], out: Path, *overrides: str):
    return compose_config(TextureEncoderRunConfig, part="psp_encoder", config_dir=REPO / "configs",
                          base_files=ENCODER_SPEC.config_files, overrides=[f"output_dir={out}", f"model.tgan_checkpoint={world['tgan']}",
        f"data.cache_dir={world['cache']}", f"data.resolution={SIZE}", "model.input_size=32", "model.depth=10",
        "model.widths=[8,16,32,64]", "model.loss.lpips=0", "model.lr=1e-3", "data.batch_size=4",
        "data.val_images=0", "data.num_workers=0", "logger.kind=none", "trainer.accelerator=cpu",
        "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *overrides,
    ])


@pytest.fixture(scope="module")
def encoder_ckpt(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("psp_encoder_run")
    trainer = train.run(ENCODER_SPEC, _encoder_config(world, out, "trainer.max_steps=2"))
    assert trainer.global_step == 2
    return out / "checkpoints" / "last.ckpt"


# --------------------------------------------------------------------------- configs and data
def test_psp_parts_layer_the_baseline_files_over_the_parts_configs(tmp_path):
    for name, part, schema, baseline in (("psp_tgan", "tgan", TGANRunConfig, TGAN_YAML),
                                         ("psp_encoder", "texture_encoder", TextureEncoderRunConfig, ENCODER_YAML)):
        spec = PARTS[name]
        assert spec.schema is schema and spec.system is PARTS[part].system and spec.datamodule is TextureDataModule
        cfg = compose_config(schema, part=name, config_dir=REPO / "configs", base_files=spec.config_files)
        assert cfg.data.cache_kind == "frames" and cfg.data.image_field == "crop" and cfg.run_name == "psp_face"
        assert cfg.output_dir == f"runs/{name}/psp_face"
        # The part's own file sits underneath: a key the baseline file does not set keeps the part's value.
        plain_part = yaml.safe_load((REPO / "configs" / f"{part}.yaml").read_text())
        plain_baseline = yaml.safe_load(baseline.read_text())
        untouched = [k for k in plain_part.get("model", {}) if k not in plain_baseline.get("model", {})]
        assert untouched, "the test needs a model key only the part's file sets"
        assert all(cfg.model[k] == plain_part["model"][k] for k in untouched)
        # Experiment sections and key=value still apply on top, under the baseline part's name.
        (tmp_path / "experiment").mkdir(exist_ok=True)
        for f in (f"{part}.yaml", f"baselines/{baseline.name}"):
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / "configs" / f, tmp_path / f)
        (tmp_path / "experiment" / "x.yaml").write_text(yaml.safe_dump({name: {"run_name": "from_experiment"}}))
        cfg = compose_config(schema, part=name, config_dir=tmp_path, base_files=spec.config_files,
                             overrides=["experiment=x", "data.batch_size=3"])
        assert cfg.run_name == "from_experiment" and cfg.data.batch_size == 3
    assert compose_config(TGANRunConfig, part="psp_tgan", config_dir=REPO / "configs",
                          base_files=PARTS["psp_tgan"].config_files).model.resolution == 256
    with pytest.raises(ConfigError, match="no such config file"):
        compose_config(TGANRunConfig, part="psp_tgan", config_dir=tmp_path / "nowhere", base_files=("tgan.yaml",))


def test_texture_datamodule_reads_the_frames_crops(world):
    plain = config_to_plain(compose_config(TGANRunConfig, part="psp_tgan", config_dir=REPO / "configs",
                                           base_files=PARTS["psp_tgan"].config_files, overrides=[
        f"data.cache_dir={world['cache']}", "model.resolution=16",
        "data.batch_size=4", "data.num_workers=0", "data.pin_memory=false"]))
    dm = TextureDataModule(config=plain["data"])
    dm.setup("fit")
    assert dm.source_size == SIZE and len(dm.train_index) == 48
    batch = next(iter(dm.train_dataloader()))
    assert batch[IMAGE_KEY].shape == (4, 3, 16, 16) and batch[IMAGE_KEY].dtype == torch.uint8
    crops = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    batched = area_resize_uint8(crops, 16)
    assert all(torch.equal(batched[i], resize_image(crops[i], 16, "area")) for i in range(3))


# --------------------------------------------------------------------------- directions and editor
def test_global_directions_are_emotion_means_minus_the_neutral_mean(world, encoder_ckpt, tmp_path, capsys):
    out = tmp_path / "directions.pt"
    code = main(["directions", "--cache", str(world["cache"]), "--encoder", str(encoder_ckpt), "--out", str(out),
                 "--emotions", *SOLVED])
    assert code == 0 and "1 subjects" in capsys.readouterr().out
    directions = EditDirections.load(out)
    assert directions.subjects == (GLOBAL_SUBJECT,) and directions.solved == SOLVED
    assert directions.extra["kind"] == "psp_face_global" and directions.extra["resolution"] == SIZE

    encoder = PSPEncoder.from_checkpoint(encoder_ckpt)
    reader = CacheReader.open(world["cache"])
    index = reader.records()
    latents = {}
    with torch.no_grad():
        for position in range(len(index)):
            meta = index.meta(position)
            record = reader.load_shard(int(index.shard[position]), ("crop",))["crop"][int(index.row[position])]
            wplus = encoder(record[None].float() / 127.5 - 1).wplus[0]
            latents.setdefault((meta["emotion"], meta["level"]), []).append(wplus)
    neutral = torch.stack(latents[("neutral", 1)]).mean(0)
    for emotion in SOLVED:
        expected = torch.stack(latents[(emotion, 3)]).mean(0) - neutral  # level 1 of happy is not used
        assert torch.allclose(directions.direction(GLOBAL_SUBJECT, emotion), expected, atol=1e-5), emotion
    assert int(directions.counts[0, EMOTIONS.index("happy")]) == 8 and int(directions.neutral_counts[0]) == 16
    # Held-out clips can be left out (the demo's evaluation lane leaves out every evaluation clip).
    from emoedit.baselines.psp_face import run_psp_face_directions

    held_out = run_psp_face_directions(world["cache"], encoder_ckpt, tmp_path / "held_out.pt", emotions=SOLVED,
                                       exclude_clips=["M001/front/happy/level_3/001"])
    assert int(held_out.counts[0, EMOTIONS.index("happy")]) == 4 and held_out.extra["excluded_clips"] == [
        "M001/front/happy/level_3/001"]
    from emoedit.editing.directions import DirectionsError

    with pytest.raises(DirectionsError, match="does not hold"):  # a mistyped id is not silently ignored
        run_psp_face_directions(world["cache"], encoder_ckpt, tmp_path / "typo.pt", emotions=SOLVED,
                                exclude_clips=["M001/front/happy/level_3/0001"])

    from emoedit.baselines import crop_editor

    assert crop_editor.PSPFaceEditor is PSPFaceEditor  # every editor is reachable from crop_editor
    editor = crop_editor.PSPFaceEditor.from_checkpoints(world["tgan"], encoder_ckpt, out)
    assert editor.name == "psp" and editor.crop_size == SIZE and not editor.training
    crops = torch.rand(3, 3, SIZE, SIZE)
    codes = torch.stack([torch.zeros(7), emotion_code_from_alpha("happy", 1.0), emotion_code_from_alpha("sad", 0.5)])
    edited = editor.edit(crops, codes)
    assert edited.shape == crops.shape and float(edited.min()) >= 0 and float(edited.max()) <= 1
    generator, _, _ = load_generator_checkpoint(world["tgan"], part="tgan")
    with torch.no_grad():
        x0 = encoder(crops * 2 - 1).wplus
        shift = torch.stack([torch.zeros_like(x0[0]), directions.direction(GLOBAL_SUBJECT, "happy"),
                             0.5 * directions.direction(GLOBAL_SUBJECT, "sad")])
        expected = generator.synthesis(x0 + shift, noise_mode="const").clamp(-1, 1).add(1).div(2)
    assert torch.allclose(edited, expected, atol=1e-5)
    with pytest.raises(ValueError, match="no edit directions"):
        editor.edit(crops[:1], emotion_code_from_alpha("angry", 1.0)[None])

    # wrong files: each error names the file and the part
    with pytest.raises(CheckpointError, match=r"last\.ckpt: checkpoint of part 'texture_encoder', expected 'tgan'"):
        PSPFaceEditor.from_checkpoints(encoder_ckpt, encoder_ckpt, out)
    other_tgan = write_tgan_checkpoint(tmp_path / "other_tgan.ckpt", seed=1)
    with pytest.raises(CheckpointError, match=r"other_tgan\.ckpt \(tgan\)"):
        PSPFaceEditor.from_checkpoints(other_tgan, encoder_ckpt, out)
    stale = EditDirections(directions=directions.directions, subjects=directions.subjects,
                           emotions=directions.emotions, level=3, counts=directions.counts,
                           neutral_counts=directions.neutral_counts, encoder_sha256="0" * 64,
                           solved=directions.solved)
    stale.save(tmp_path / "stale.pt")
    with pytest.raises(CheckpointError, match=r"stale\.pt: directions solved with the encoder"):
        PSPFaceEditor.from_checkpoints(world["tgan"], encoder_ckpt, tmp_path / "stale.pt")


def test_a_jointly_finetuned_generator_is_the_decoder(world, tmp_path):
    run = tmp_path / "ft"
    train.run(ENCODER_SPEC, _encoder_config(world, run, "trainer.max_steps=1", "model.finetune_generator=true",
                                            "model.generator_lr=1e-2"))
    ckpt_path = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "directions.pt"
    assert main(["directions", "--cache", str(world["cache"]), "--encoder", str(ckpt_path), "--out", str(out),
                 "--emotions", *SOLVED, "--views", "front"]) == 0
    editor = PSPFaceEditor.from_checkpoints(world["tgan"], ckpt_path, out)
    state = load_checkpoint(ckpt_path)["state_dict"]
    tgan_state = load_checkpoint(world["tgan"])["state_dict"]
    moved = 0
    for name, value in editor.generator.state_dict().items():
        assert torch.equal(value, state[f"generator.{name}"]), name
        moved += not torch.equal(value, tgan_state[f"G_ema.{name}"])
    assert moved > 0
    assert main(["directions", "--cache", str(world["cache"]), "--encoder", str(ckpt_path), "--out", str(out)]) == 2
