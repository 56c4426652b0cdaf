"""Texture editor (eqs. 3, 4, the mean-direction ablation): identities, linearity, mixtures, batching."""

from __future__ import annotations

import pytest
import torch

from emoedit.editing.directions import EditDirections
from emoedit.editing.emotion_code import EMOTIONS, emotion_code_from_alpha, mix_emotion_codes
from emoedit.editing.texture_editor import TextureEditor

N, E, K, C = 3, len(EMOTIONS), 4, 6
SUBJECTS = ("s1", "s2", "s3")


@pytest.fixture()
def editor() -> TextureEditor:
    g = torch.Generator().manual_seed(0)
    return TextureEditor(directions=torch.randn(N, E, K, C, generator=g), subjects=SUBJECTS)


def _x0(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, K, C, generator=torch.Generator().manual_seed(seed))


def _codes(*codes: torch.Tensor) -> torch.Tensor:
    return torch.stack(list(codes))


def test_alpha_zero_is_the_identity(editor):
    x0 = _x0()
    zero = torch.zeros(2, E)
    weights = torch.softmax(torch.randn(2, N), -1)
    for kwargs in (dict(subject_index=torch.tensor([0, 2])), dict(subject_weights=weights), dict(mode="mean")):
        out = editor(x0, zero, **kwargs)
        assert torch.equal(out.wplus, x0) and not out.offset.any()


def test_eq3_adds_the_subject_direction(editor):
    x0 = _x0()
    code = _codes(emotion_code_from_alpha("happy", 0.7), emotion_code_from_alpha("sad", 1.0))
    out = editor(x0, code, subject_index=torch.tensor([1, 2]))
    assert torch.allclose(out.wplus[0], x0[0] + 0.7 * editor.directions[1, EMOTIONS.index("happy")], atol=1e-6)
    assert torch.allclose(out.wplus[1], x0[1] + editor.directions[2, EMOTIONS.index("sad")], atol=1e-6)


def test_eq4_with_one_hot_weights_equals_eq3(editor):
    x0 = _x0(batch=3)
    code = _codes(*(emotion_code_from_alpha(e, a) for e, a in [("angry", 0.5), ("fear", 1.3), ("contempt", 0.2)]))
    index = torch.tensor([2, 0, 1])
    eq3 = editor(x0, code, subject_index=index).wplus
    eq4 = editor(x0, code, subject_weights=torch.nn.functional.one_hot(index, N).float()).wplus
    assert torch.allclose(eq3, eq4, atol=1e-6)


def test_eq4_mixes_subjects_by_the_weights(editor):
    x0 = _x0(batch=1)
    code = emotion_code_from_alpha("surprised", 1.0)[None]
    weights = torch.tensor([[0.2, 0.5, 0.3]])
    j = EMOTIONS.index("surprised")
    expected = x0[0] + sum(weights[0, v] * editor.directions[v, j] for v in range(N))
    assert torch.allclose(editor(x0, code, subject_weights=weights).wplus[0], expected, atol=1e-6)


def test_ablation_uses_the_mean_direction(editor):
    x0 = _x0()
    code = _codes(emotion_code_from_alpha("disgusted", 1.0), emotion_code_from_alpha("happy", 0.4))
    out = editor(x0, code, mode="mean").wplus
    mean = editor.directions.mean(0)
    assert torch.allclose(out[0], x0[0] + mean[EMOTIONS.index("disgusted")], atol=1e-6)
    assert torch.allclose(out[1], x0[1] + 0.4 * mean[EMOTIONS.index("happy")], atol=1e-6)
    # uniform classifier weights give the same edit as the ablation
    uniform = editor(x0, code, subject_weights=torch.full((2, N), 1.0 / N)).wplus
    assert torch.allclose(out, uniform, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0, 1.7, 3.0])
def test_linear_in_alpha_between_and_beyond_levels(editor, alpha):
    x0 = _x0()
    index = torch.tensor([0, 1])
    unit = editor(x0, _codes(*[emotion_code_from_alpha("happy", 1.0)] * 2), subject_index=index).offset
    out = editor(x0, _codes(*[emotion_code_from_alpha("happy", alpha)] * 2), subject_index=index)
    assert torch.allclose(out.offset, alpha * unit, atol=1e-5)


def test_mixtures_add(editor):
    x0 = _x0(batch=1)
    weights = torch.softmax(torch.randn(1, N, generator=torch.Generator().manual_seed(4)), -1)
    mix = mix_emotion_codes({"sad": 0.5, "angry": 0.5})[None]
    sad = emotion_code_from_alpha("sad", 0.5)[None]
    angry = emotion_code_from_alpha("angry", 0.5)[None]
    for kwargs in (dict(subject_weights=weights), dict(subject_index=torch.tensor([2])), dict(mode="mean")):
        total = editor(x0, mix, **kwargs).offset
        parts = editor(x0, sad, **kwargs).offset + editor(x0, angry, **kwargs).offset
        assert torch.allclose(total, parts, atol=1e-6)


def test_batch_consistency(editor):
    x0 = _x0(batch=4)
    g = torch.Generator().manual_seed(5)
    codes = torch.rand(4, E, generator=g) * 1.5
    weights = torch.softmax(torch.randn(4, N, generator=g), -1)
    index = torch.tensor([0, 2, 1, 2])
    for kwargs in (dict(subject_weights=weights), dict(subject_index=index), dict(mode="mean")):
        batched = editor(x0, codes, **kwargs).wplus
        for b in range(4):
            single = {k: (v[b : b + 1] if torch.is_tensor(v) else v) for k, v in kwargs.items()}
            assert torch.allclose(editor(x0[b : b + 1], codes[b : b + 1], **single).wplus[0], batched[b], atol=1e-6)


def test_inputs_are_not_mutated_and_errors(editor):
    x0 = _x0()
    copy = x0.clone()
    editor(x0, torch.ones(2, E), mode="mean")
    assert torch.equal(x0, copy)
    with pytest.raises(ValueError, match=">= 0"):
        editor(x0, -torch.ones(2, E), mode="mean")
    with pytest.raises(ValueError, match="not both"):
        editor(x0, torch.ones(2, E), subject_index=torch.tensor([0, 1]), subject_weights=torch.ones(2, N) / N)
    with pytest.raises(ValueError, match="mode='mean'"):
        editor(x0, torch.ones(2, E))
    with pytest.raises(IndexError):
        editor(x0, torch.ones(2, E), subject_index=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="emotion_code"):
        editor(x0, torch.ones(2, E + 1), mode="mean")


def test_from_directions_file_reorders_to_classifier_subjects(tmp_path, editor):
    directions = EditDirections(
        directions=editor.directions.clone(), subjects=SUBJECTS, emotions=EMOTIONS, level=3,
        counts=torch.ones(N, E, dtype=torch.int64), neutral_counts=torch.ones(N, dtype=torch.int64),
    )
    path = directions.save(tmp_path / "d.pt")
    loaded = TextureEditor.load(path, subjects=["s3", "s1", "s2"])
    assert loaded.subjects == ("s3", "s1", "s2")
    assert torch.equal(loaded.directions[0], editor.directions[2])
    assert loaded.subject_index(["s1"]).tolist() == [1]
    state = loaded.state_dict()
    assert set(state) == {"directions", "mean_directions"}  # buffers


# --------------------------------------------------------------------------- eq. 4's temperature τ
def _tempered(tau: float) -> TextureEditor:
    g = torch.Generator().manual_seed(0)
    return TextureEditor(directions=torch.randn(N, E, K, C, generator=g), subjects=SUBJECTS, subject_temperature=tau)


@pytest.mark.parametrize("tau", [0.5, 3.0])
def test_eq4_with_temperature_mixes_by_softmax_of_scaled_logits(editor, tau):
    tempered = _tempered(tau)
    assert tempered.subject_temperature == tau and editor.subject_temperature == 1.0  # the paper by default
    x0 = _x0(batch=2)
    code = _codes(emotion_code_from_alpha("happy", 0.8), emotion_code_from_alpha("angry", 1.0))
    logits = torch.tensor([[4.0, -1.0, 0.5], [0.0, 6.0, 2.0]])
    out = tempered(x0, code, subject_weights=torch.softmax(logits, dim=-1))
    expected = editor(x0, code, subject_weights=torch.softmax(logits / tau, dim=-1))  # τ = 1 editor, tempered weights
    assert torch.allclose(out.wplus, expected.wplus, atol=1e-5)
    assert not torch.allclose(out.wplus, editor(x0, code, subject_weights=torch.softmax(logits, dim=-1)).wplus)
    # eq. 3 and the ablation ignore τ; α = 0 stays the identity; a one-hot softmax is still eq. 3
    index = torch.tensor([2, 0])
    assert torch.equal(tempered(x0, code, subject_index=index).wplus, editor(x0, code, subject_index=index).wplus)
    assert torch.equal(tempered(x0, code, mode="mean").wplus, editor(x0, code, mode="mean").wplus)
    assert torch.equal(tempered(x0, torch.zeros(2, E), subject_weights=torch.softmax(logits, -1)).wplus, x0)
    one_hot = torch.nn.functional.one_hot(index, N).float()
    assert torch.allclose(tempered(x0, code, subject_weights=one_hot).wplus,
                          tempered(x0, code, subject_index=index).wplus, atol=1e-6)


def test_eq4_with_a_large_temperature_is_the_mean_direction():
    tempered = _tempered(1e6)
    x0 = _x0(batch=2)
    code = _codes(emotion_code_from_alpha("sad", 1.0), emotion_code_from_alpha("fear", 0.4))
    confident = torch.softmax(torch.tensor([[9.0, 0.0, -3.0], [-2.0, 1.0, 8.0]]), dim=-1)
    out = tempered(x0, code, subject_weights=confident)
    assert torch.allclose(out.wplus, tempered(x0, code, mode="mean").wplus, atol=1e-4)


def test_temperature_errors():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="subject_temperature"):
            _tempered(bad)
    with pytest.raises(ValueError, match="row of zeros"):
        _tempered(2.0)(_x0(batch=1), emotion_code_from_alpha("sad", 1.0)[None], subject_weights=torch.zeros(1, N))


def test_from_directions_carries_the_temperature(tmp_path, editor):
    directions = EditDirections(
        directions=editor.directions.clone(), subjects=SUBJECTS, emotions=EMOTIONS, level=3,
        counts=torch.ones(N, E, dtype=torch.int64), neutral_counts=torch.ones(N, dtype=torch.int64),
    ).with_subject_temperature(4.0)
    path = directions.save(tmp_path / "d.pt")
    loaded = TextureEditor.load(path, subjects=["s2", "s3", "s1"])
    assert loaded.subject_temperature == 4.0
    assert TextureEditor.from_directions(directions).subject_temperature == 4.0
    x0 = _x0(batch=1)
    code = emotion_code_from_alpha("happy", 1.0)[None]
    logits = torch.tensor([[3.0, 0.0, -1.0]])  # in the stored order s1, s2, s3
    reordered = logits[:, [1, 2, 0]]
    expected = editor(x0, code, subject_weights=torch.softmax(logits / 4.0, dim=-1)).wplus
    assert torch.allclose(loaded(x0, code, subject_weights=torch.softmax(reordered, -1)).wplus, expected, atol=1e-5)
