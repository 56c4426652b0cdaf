"""The small checkpoint helpers shared by every loader: part checks and state-dict prefixes."""

from __future__ import annotations

import pytest
import torch

from emoedit.checkpoint_io import CheckpointError, checkpoint_part, require_part, state_dict_under


def test_checkpoint_part_reads_the_recorded_part_or_none():
    assert checkpoint_part({"hyper_parameters": {"part": "tgan", "config": {}}}) == "tgan"
    assert checkpoint_part({"hyper_parameters": {"config": {}}}) is None
    assert checkpoint_part({"hyper_parameters": "not a dict"}) is None
    assert checkpoint_part({"state_dict": {}}) is None


def test_require_part_names_file_found_and_expected_parts():
    ckpt = {"hyper_parameters": {"part": "classifier"}}
    assert require_part(ckpt, "classifier", "c.ckpt") == "classifier"
    assert require_part(ckpt, ("tgan", "classifier"), "c.ckpt") == "classifier"
    with pytest.raises(CheckpointError, match=r"^c\.ckpt: checkpoint of part 'classifier', expected 'geometry'$"):
        require_part(ckpt, "geometry", "c.ckpt")
    with pytest.raises(CheckpointError, match=r"expected 'tgan' or 'teeth_tgan' \(train\.py tgan\)$"):
        require_part(ckpt, ("tgan", "teeth_tgan"), "c.ckpt", hint="train.py tgan")
    with pytest.raises(CheckpointError, match="checkpoint of part None, expected 'tgan'"):
        require_part({}, "tgan", "x.ckpt")


def test_state_dict_under_keeps_only_the_prefix_and_strips_it():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    state = {"G_ema.w": a, "G_ema.block.b": b, "G.w": c, "xG_ema.w": c}
    under = state_dict_under(state, "G_ema.")
    assert list(under) == ["w", "block.b"] and under["w"] is a and under["block.b"] is b
    assert state_dict_under(state, "D.") == {}
    assert set(state) == {"G_ema.w", "G_ema.block.b", "G.w", "xG_ema.w"}  # input untouched


def test_encoder_generator_state_and_finetune_flag():
    from emoedit.networks.stylegan2.checkpoint import encoder_generator_state, finetunes_generator

    w = torch.zeros(2)
    ckpt = {"hyper_parameters": {"part": "texture_encoder", "config": {"finetune_generator": True}},
            "tgan_config": {"resolution": 16}, "state_dict": {"generator.synthesis.w": w, "encoder.x": w}}
    assert finetunes_generator(ckpt) and not finetunes_generator({"hyper_parameters": {"config": {}}})
    assert not finetunes_generator({})
    config, weights = encoder_generator_state(ckpt, path="e.ckpt")
    assert config == {"resolution": 16} and list(weights) == ["synthesis.w"]
    with pytest.raises(CheckpointError, match=r"^e\.ckpt: texture_encoder checkpoint without 'tgan_config'"):
        encoder_generator_state({**ckpt, "tgan_config": None}, path="e.ckpt")
    with pytest.raises(CheckpointError, match=r"generator\.\* tensors"):
        encoder_generator_state({**ckpt, "state_dict": {"encoder.x": w}}, path="e.ckpt")
