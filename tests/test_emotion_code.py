"""Emotion codes (eq. 2), mixtures, the CLI syntax and emotion schedules."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from emoedit.editing.emotion_code import (
    EMOTIONS,
    MAX_LEVEL,
    NUM_EMOTIONS,
    EmotionKeyframe,
    EmotionSchedule,
    canonical_emotion,
    emotion_code,
    emotion_code_from_alpha,
    emotion_code_from_level,
    emotion_codes_from_labels,
    emotion_index,
    format_emotion_code,
    mix_emotion_codes,
    parse_emotion,
    parse_emotion_alphas,
    parse_emotion_schedule,
)


def one_hot(name: str, value: float) -> torch.Tensor:
    code = torch.zeros(NUM_EMOTIONS)
    code[EMOTIONS.index(name)] = value
    return code


def test_constants_follow_mead():
    assert EMOTIONS == ("happy", "angry", "sad", "surprised", "fear", "disgusted", "contempt")
    assert NUM_EMOTIONS == 7 and MAX_LEVEL == 3


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, 2.0, 3.0, 4.0])
def test_eq2_levels(level: float):
    code = emotion_code("sad", level)
    assert code.shape == (7,) and code.dtype == torch.float32
    torch.testing.assert_close(code, one_hot("sad", level / 3))
    torch.testing.assert_close(emotion_code_from_level("sad", level), code)


def test_alpha_variant_and_index_input():
    torch.testing.assert_close(emotion_code_from_alpha("fear", 0.25), one_hot("fear", 0.25))
    torch.testing.assert_close(emotion_code_from_alpha(4, 0.25), one_hot("fear", 0.25))
    torch.testing.assert_close(emotion_code_from_level(EMOTIONS.index("contempt"), 3), one_hot("contempt", 1.0))
    code = emotion_code_from_alpha("happy", 0.5, dtype=torch.float64)
    assert code.dtype == torch.float64


def test_neutral_is_zero():
    assert torch.equal(emotion_code("neutral", 3), torch.zeros(7))
    assert torch.equal(emotion_code_from_alpha("Neutral", 1.0), torch.zeros(7))
    assert emotion_index("neutral") is None


def test_aliases_and_case():
    assert canonical_emotion("Surprise") == "surprised"
    assert canonical_emotion(" DISGUST ") == "disgusted"
    assert canonical_emotion("anger") == "angry"
    assert canonical_emotion("happiness") == "happy"
    assert canonical_emotion("sadness") == "sad"
    assert emotion_index("surprised") == 3


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="valid names: neutral, happy, angry"):
        emotion_code("joyful", 1)
    with pytest.raises(ValueError, match=">= 0"):
        emotion_code("happy", -1)
    with pytest.raises(ValueError, match=">= 0"):
        emotion_code_from_alpha("happy", -0.1)
    with pytest.raises(ValueError, match="finite"):
        emotion_code_from_alpha("happy", float("nan"))
    with pytest.raises(ValueError, match="out of range"):
        emotion_code(7, 1)
    with pytest.raises(ValueError):
        emotion_code(True, 1)  # type: ignore[arg-type]


def test_batched_labels_match_scalar_codes():
    ids = torch.tensor([0, 2, -1, 6])
    levels = torch.tensor([1.0, 3.0, 2.0, 1.5])
    codes = emotion_codes_from_labels(ids, levels)
    expected = torch.stack(
        [emotion_code("happy", 1), emotion_code("sad", 3), torch.zeros(7), emotion_code("contempt", 1.5)]
    )
    torch.testing.assert_close(codes, expected)
    with pytest.raises(ValueError, match="emotion_ids"):
        emotion_codes_from_labels(torch.tensor([7]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="level"):
        emotion_codes_from_labels(torch.tensor([0]), torch.tensor([-1.0]))


def test_mixture():
    code = mix_emotion_codes({"sad": 0.5, "angry": 0.5})
    torch.testing.assert_close(code, one_hot("sad", 0.5) + one_hot("angry", 0.5))
    torch.testing.assert_close(mix_emotion_codes({"neutral": 1.0, "happy": 0.3}), one_hot("happy", 0.3))
    with pytest.raises(ValueError, match="more than once"):
        mix_emotion_codes({"surprise": 0.5, "surprised": 0.2})
    with pytest.raises(ValueError, match=">= 0"):
        mix_emotion_codes({"sad": -0.5})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("neutral", {"neutral": 1.0}),
        ("happy", {"happy": 1.0}),
        ("happy 0.3", {"happy": 0.3}),
        ("0.3 happy", {"happy": 0.3}),
        ("0.5 sad + 0.5 angry", {"sad": 0.5, "angry": 0.5}),
        ("  Sad 1.2+surprise .25 ", {"sad": 1.2, "surprised": 0.25}),
    ],
)
def test_parse_expressions(text: str, expected: dict[str, float]):
    assert parse_emotion_alphas(text) == expected
    torch.testing.assert_close(parse_emotion(text), mix_emotion_codes(expected))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("joyful 0.3", "valid names"),
        ("happy -0.3", "negative"),
        ("-0.3 happy", "negative"),
        ("happy 0.3 0.4", "cannot parse"),
        ("happy sad", "cannot parse"),
        ("0.5 sad +", "empty term"),
        ("sad 0.2 + sad 0.3", "more than once"),
    ],
)
def test_parse_errors(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_emotion(text)


def test_format_round_trip():
    for text in ["neutral", "0.3 happy", "0.5 angry + 0.5 sad"]:
        assert format_emotion_code(parse_emotion(text)) == text
    code = parse_emotion("0.25 fear + 1.5 contempt")
    torch.testing.assert_close(parse_emotion(format_emotion_code(code)), code)


def test_schedule_parse_and_interpolation():
    schedule = parse_emotion_schedule("0s neutral; 1.5s happy 0.3; 4s happy 1.0; 6s 0.5 sad + 0.5 angry")
    assert [k.time_s for k in schedule.keyframes] == [0.0, 1.5, 4.0, 6.0]
    times = torch.tensor([-1.0, 0.0, 0.75, 1.5, 2.75, 4.0, 5.0, 6.0, 10.0])
    codes = schedule.codes_at(times)
    assert codes.shape == (9, 7) and codes.dtype == torch.float32
    mixed = one_hot("sad", 0.5) + one_hot("angry", 0.5)
    expected = torch.stack(
        [
            torch.zeros(7),  # held before the first keyframe
            torch.zeros(7),
            one_hot("happy", 0.15),  # halfway neutral -> happy 0.3
            one_hot("happy", 0.3),
            one_hot("happy", 0.65),  # halfway happy 0.3 -> happy 1.0
            one_hot("happy", 1.0),
            0.5 * one_hot("happy", 1.0) + 0.5 * mixed,  # halfway happy 1.0 -> mixture
            mixed,
            mixed,  # held after the last keyframe
        ]
    )
    torch.testing.assert_close(codes, expected)
    # str() gives text the parser reads back to the same schedule
    assert parse_emotion_schedule(str(schedule)) == schedule


def test_schedule_codes_for_frames():
    schedule = parse_emotion_schedule("0s neutral; 1s sad 1.0")
    codes = schedule.codes_for_frames(26, Fraction(25))
    assert codes.shape == (26, 7)
    torch.testing.assert_close(codes[:, EMOTIONS.index("sad")], torch.arange(26) / 25.0)
    assert codes[:, [i for i, e in enumerate(EMOTIONS) if e != "sad"]].abs().max() == 0
    assert schedule.codes_for_frames(0, 25).shape == (0, 7)


def test_constant_schedule():
    schedule = parse_emotion_schedule("happy 0.5")
    codes = schedule.codes_for_frames(5, 30000 / 1001)
    torch.testing.assert_close(codes, one_hot("happy", 0.5).expand(5, 7))
    held = EmotionSchedule.constant(one_hot("sad", 1)).codes_at(torch.tensor([3.0]))
    torch.testing.assert_close(held, one_hot("sad", 1)[None])


def test_schedule_errors():
    with pytest.raises(ValueError, match="strictly increase"):
        parse_emotion_schedule("0s neutral; 2s happy; 1s sad")
    with pytest.raises(ValueError, match="strictly increase"):
        parse_emotion_schedule("1s neutral; 1s happy")
    with pytest.raises(ValueError, match="leading time"):
        parse_emotion_schedule("0s neutral; happy 0.3")
    with pytest.raises(ValueError, match="valid names"):
        parse_emotion_schedule("0s neutral; 1s joyful")
    with pytest.raises(ValueError, match="no emotion"):
        parse_emotion_schedule("0s neutral; 1s")
    with pytest.raises(ValueError, match="negative"):
        parse_emotion_schedule("0s sad -1")
    with pytest.raises(ValueError, match="strictly increase"):
        EmotionSchedule(keyframes=(EmotionKeyframe(1.0, (0.0,) * 7), EmotionKeyframe(0.5, (0.0,) * 7)))
    with pytest.raises(ValueError, match="7 entries"):
        EmotionKeyframe(0.0, (0.0,) * 6)
