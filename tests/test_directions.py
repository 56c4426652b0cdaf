"""Edit directions (eq. 5): known answer, streaming = batch, save/load, missing data, cache encoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emoedit.data.cache import CacheSpec, CacheWriter
from emoedit.editing.directions import (
    DirectionAccumulator,
    DirectionsError,
    EditDirections,
    encode_cache,
    solve_directions,
)
from emoedit.editing.emotion_code import EMOTIONS, MAX_LEVEL

NUM_WS, W_DIM = 3, 5
SUBJECTS = ("s1", "s2", "s3")


def write_texture_cache(
    root: Path,
    *,
    subjects: tuple[str, ...] = ("M001", "M002", "W003"),
    emotions: tuple[tuple[str, int], ...] = (("neutral", 1), ("happy", 3), ("angry", 3)),
    frames: int = 4,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """A finalised ``textures`` cache (J's fields and metadata): one clip per (subject, emotion),
    textures = a per-subject colour pattern + a per-emotion pattern + per-frame noise."""
    g = torch.Generator().manual_seed(seed)
    spec = CacheSpec(
        kind="textures", version=1,
        fields={"uv_texture": ("uint8", (3, size, size)), "visibility": ("bool", (1, size, size)),
                "coeffs": ("float32", (8,))},
        meta={"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"},
    )
    writer = CacheWriter.open(root, spec)
    ramp = torch.linspace(0, 1, size)
    for s, subject in enumerate(subjects):
        colour = torch.rand(3, 1, 1, generator=g)
        base = colour * (0.5 + 0.5 * ramp[None, :, None] ** (s + 1))
        for e, (emotion, level) in enumerate(emotions):
            pattern = 0.15 * e * ramp[None, None, :]
            noise = 0.03 * torch.randn(frames, 3, size, size, generator=g)
            textures = (base + pattern + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
            records = {"uv_texture": textures, "visibility": torch.ones(frames, 1, size, size, dtype=torch.bool),
                       "coeffs": torch.zeros(frames, 8)}
            meta = {"subject": subject, "emotion": emotion, "level": level, "view": "front",
                    "frame": list(range(frames))}
            writer.write_clip(f"{subject}/front/{emotion}/level_{level}/001", records, meta)
    writer.finalize()
    return root


def _planted(frames_per_group: int = 4, seed: int = 0, skip: set[tuple[str, str]] = frozenset()):
    """Latents = subject base + emotion offset d[i, j] (at level 3) + zero-mean noise per group.

    Returns (latents, subjects, emotions, levels, truth (N, E, K, C)).
    """
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(len(SUBJECTS), len(EMOTIONS), NUM_WS, W_DIM, generator=g)
    rows, subjects, emotions, levels = [], [], [], []

    def group(base: torch.Tensor, subject: str, emotion: str, level: int) -> None:
        noise = torch.randn(frames_per_group, NUM_WS, W_DIM, generator=g)
        noise = noise - noise.mean(0, keepdim=True)  # exact mean: the known answer is exact
        rows.append(base + noise)
        subjects.extend([subject] * frames_per_group)
        emotions.extend([emotion] * frames_per_group)
        levels.extend([level] * frames_per_group)

    for i, subject in enumerate(SUBJECTS):
        base = torch.randn(NUM_WS, W_DIM, generator=g) * 3
        group(base, subject, "neutral", 1)
        for j, emotion in enumerate(EMOTIONS):
            if (subject, emotion) in skip:
                continue
            group(base + truth[i, j], subject, emotion, MAX_LEVEL)
            group(base + 0.3 * truth[i, j] + 5.0, subject, emotion, 1)  # another level: must be ignored
    latents = torch.cat(rows)
    order = torch.randperm(latents.shape[0], generator=g)  # order must not matter
    pick = order.tolist()
    return (latents[order], [subjects[k] for k in pick], [emotions[k] for k in pick],
            [levels[k] for k in pick], truth)


def test_solve_recovers_planted_offsets():
    latents, subjects, emotions, levels, truth = _planted()
    result = solve_directions(latents, subjects, emotions, levels)
    assert result.subjects == SUBJECTS and result.emotions == EMOTIONS and result.level == MAX_LEVEL
    assert result.directions.shape == (3, len(EMOTIONS), NUM_WS, W_DIM)
    assert torch.allclose(result.directions, truth, atol=1e-5)
    assert (result.counts == 4).all() and (result.neutral_counts == 4).all()
    assert not result.filled.any()
    assert torch.allclose(result.mean_directions(), truth.mean(0), atol=1e-5)
    assert torch.allclose(result.direction("s2", "anger"), truth[1, 1], atol=1e-5)  # alias of "angry"


def test_streaming_equals_batch_and_order_is_configurable():
    latents, subjects, emotions, levels, truth = _planted(seed=3)
    accumulator = DirectionAccumulator(num_ws=NUM_WS, w_dim=W_DIM)
    used = 0
    for start in range(0, latents.shape[0], 7):
        stop = start + 7
        used += accumulator.add(latents[start:stop], subjects[start:stop], emotions[start:stop], levels[start:stop])
    assert used == 3 * 4 * (1 + len(EMOTIONS)) and accumulator.ignored == 3 * 4 * len(EMOTIONS)
    streamed = accumulator.solve(subjects=("s3", "s1"))
    assert streamed.subjects == ("s3", "s1")
    assert torch.allclose(streamed.directions, truth[[2, 0]], atol=1e-5)
    reordered = solve_directions(latents, subjects, emotions, levels).reorder(["s3", "s1"])
    assert torch.allclose(reordered.directions, streamed.directions, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    latents, subjects, emotions, levels, _ = _planted()
    result = solve_directions(latents, subjects, emotions, levels, encoder_sha256="ab" * 32)
    path = result.save(tmp_path / "directions.pt")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    loaded = EditDirections.load(path)
    assert torch.equal(loaded.directions, result.directions)
    assert loaded.subjects == result.subjects and loaded.emotions == result.emotions
    assert loaded.level == MAX_LEVEL and loaded.encoder_sha256 == "ab" * 32 and loaded.solved == EMOTIONS
    assert torch.equal(loaded.counts, result.counts) and torch.equal(loaded.neutral_counts, result.neutral_counts)
    bad = tmp_path / "bad.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(DirectionsError, match="not an emoedit directions file"):
        EditDirections.load(bad)
    with pytest.raises(DirectionsError, match="not found"):
        EditDirections.load(tmp_path / "absent.pt")


def test_missing_emotion_is_an_error_or_filled_with_the_mean():
    skip = {("s2", "sad")}
    latents, subjects, emotions, levels, truth = _planted(skip=skip)
    with pytest.raises(DirectionsError, match=r"subject 's2' has no textures of sad at level 3"):
        solve_directions(latents, subjects, emotions, levels)
    filled = solve_directions(latents, subjects, emotions, levels, missing="mean")
    sad = EMOTIONS.index("sad")
    assert filled.filled[1, sad] and filled.filled.sum() == 1
    assert torch.allclose(filled.directions[1, sad], truth[[0, 2], sad].mean(0), atol=1e-5)
    assert torch.allclose(filled.directions[0], truth[0], atol=1e-5)
    # the filled row does not move the per-emotion mean of the measured subjects
    assert torch.allclose(filled.mean_directions()[sad], truth[[0, 2], sad].mean(0), atol=1e-5)


def test_missing_neutral_and_unknown_labels():
    latents, subjects, emotions, levels, _ = _planted()
    keep = [k for k, (s, e) in enumerate(zip(subjects, emotions)) if not (s == "s1" and e == "neutral")]
    with pytest.raises(DirectionsError, match="subject 's1' has no neutral textures"):
        solve_directions(latents[keep], [subjects[k] for k in keep], [emotions[k] for k in keep],
                         [levels[k] for k in keep])
    with pytest.raises(ValueError, match="unknown emotion"):
        solve_directions(latents[:2], ["s1", "s1"], ["neutral", "bored"], [1, 3])
    with pytest.raises(DirectionsError, match="labels do not match"):
        solve_directions(latents[:2], ["s1"], ["neutral"], [1])
    with pytest.raises(DirectionsError, match="no subject has textures of emotion"):
        solve_directions(latents[:2], ["s1", "s1"], ["neutral", "neutral"], [1, 1], missing="mean")


class _MeanEncoder(torch.nn.Module):
    """A stand-in encoder: W+ entries = the texture's per-channel means (known answer)."""

    num_ws, w_dim = 2, 3

    def forward(self, uv_texture):
        from emoedit.networks.psp_encoder import PSPEncoderOutput

        means = uv_texture.mean(dim=(2, 3))  # (B, 3)
        wplus = torch.stack([means, 2 * means], dim=1)
        return PSPEncoderOutput(wplus=wplus, offsets=wplus)


def test_encode_cache_in_batches(tmp_path):
    from emoedit.data.cache import CacheReader

    spec = CacheSpec(kind="textures", version=1,
                     fields={"uv_texture": ("uint8", (3, 4, 4)), "visibility": ("bool", (1, 4, 4))},
                     meta={"subject": "str", "emotion": "str", "level": "int", "view": "str", "frame": "int"})
    writer = CacheWriter.open(tmp_path / "textures", spec)
    values = {("s1", "neutral", 1): 0, ("s1", "happy", 3): 255, ("s2", "neutral", 1): 51}
    for (subject, emotion, level), value in values.items():
        records = {"uv_texture": torch.full((3, 3, 4, 4), value, dtype=torch.uint8),
                   "visibility": torch.ones(3, 1, 4, 4, dtype=torch.bool)}
        meta = {"subject": subject, "emotion": emotion, "level": level, "view": "front", "frame": [0, 1, 2]}
        writer.write_clip(f"{subject}/{emotion}/{level}", records, meta)
    writer.finalize()
    reader = CacheReader.open(tmp_path / "textures", kind="textures")
    batches = list(encode_cache(reader, _MeanEncoder(), batch_size=4))
    assert [b.wplus.shape[0] for b in batches] == [4, 4, 1]
    subjects = sum((b.subjects for b in batches), ())
    wplus = torch.cat([b.wplus for b in batches])
    for k, subject in enumerate(subjects):
        emotion, level = sum((b.emotions for b in batches), ())[k], sum((b.levels for b in batches), ())[k]
        expected = values[(subject, emotion, level)] / 127.5 - 1.0
        assert torch.allclose(wplus[k, 0], torch.full((3,), expected), atol=1e-6)
        assert torch.allclose(wplus[k, 1], torch.full((3,), 2 * expected), atol=1e-6)


def test_solving_a_subset_of_emotions():
    keep_emotions = ("happy", "angry")
    skip = {(s, e) for s in SUBJECTS for e in EMOTIONS if e not in keep_emotions}
    latents, subjects, emotions, levels, truth = _planted(skip=skip)
    with pytest.raises(DirectionsError, match="no textures of sad"):
        solve_directions(latents, subjects, emotions, levels)
    result = solve_directions(latents, subjects, emotions, levels, solve_emotions=["angry", "happy"])
    assert result.solved == ("happy", "angry")  # code order
    assert torch.allclose(result.directions[:, :2], truth[:, :2], atol=1e-5)
    assert not result.directions[:, 2:].any() and not result.filled.any()
    with pytest.raises(DirectionsError, match="no direction for emotion 'sad'"):
        result.direction("s1", "sad")
    from emoedit.editing.texture_editor import TextureEditor

    editor = TextureEditor.from_directions(result)
    x0 = torch.zeros(1, NUM_WS, W_DIM)
    code = torch.zeros(1, len(EMOTIONS))
    code[0, 0] = 1.0
    assert torch.allclose(editor(x0, code, mode="mean").wplus[0], truth[:, 0].mean(0), atol=1e-5)
    code[0, 2] = 0.5
    with pytest.raises(ValueError, match=r"no edit directions for \['sad'"):
        editor(x0, code, mode="mean")


def test_run_directions_end_to_end(tmp_path):
    from emoedit.data.cache import CacheDataset, CacheReader
    from emoedit.atomic_io import sha256_file
    from emoedit.editing.directions import run_directions, texture_to_network
    from emoedit.networks.psp_encoder import PSPEncoder

    cache = write_texture_cache(tmp_path / "textures", emotions=(("neutral", 1), ("happy", 3), ("happy", 1),
                                                                  ("angry", 3)))
    torch.manual_seed(0)
    encoder = PSPEncoder(num_ws=4, w_dim=8, input_size=32, depth=10, widths=(8, 16, 32, 64)).eval()
    encoder.set_average_latent(torch.randn(8))
    ckpt = tmp_path / "encoder.ckpt"
    torch.save({"hyper_parameters": {"part": "texture_encoder", "config": {}},
                "psp_encoder_kwargs": encoder.init_kwargs,
                "state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, ckpt)

    with pytest.raises(DirectionsError, match="no textures of sad"):
        run_directions(cache, ckpt, tmp_path / "all.pt", "cpu", 5)
    out = tmp_path / "directions.pt"
    result = run_directions(cache, ckpt, out, "cpu", 5, emotions=["happy", "angry"])
    loaded = EditDirections.load(out)
    assert torch.equal(loaded.directions, result.directions)
    assert loaded.encoder_sha256 == sha256_file(ckpt) and loaded.solved == ("happy", "angry")
    assert loaded.subjects == ("M001", "M002", "W003") and (loaded.counts[:, :2] == 4).all()
    assert "3 subjects × 7 emotions" in loaded.describe() and "happy, angry" in loaded.describe()

    reader = CacheReader.open(cache)
    dataset = CacheDataset(reader, fields=("uv_texture",))
    items = [dataset[k] for k in range(len(dataset))]
    with torch.no_grad():
        latents = encoder(texture_to_network(torch.stack([i["uv_texture"] for i in items]))).wplus
    expected = solve_directions(latents, [i["subject"] for i in items], [i["emotion"] for i in items],
                                [i["level"] for i in items], solve_emotions=["happy", "angry"])
    assert torch.allclose(loaded.directions, expected.directions, atol=1e-5)
    assert loaded.directions[:, :2].abs().sum() > 0

    # Held-out clips can be left out; a clip id the cache lacks is an error, not silently nothing.
    held_out = "M002/front/angry/level_3/001"
    partial = run_directions(cache, ckpt, tmp_path / "partial.pt", "cpu", 5, emotions=["happy", "angry"],
                             missing="mean", exclude_clips=[held_out])
    m002, angry = partial.subjects.index("M002"), 1
    assert partial.filled[m002, angry] and partial.filled.sum() == 1  # M002's angry came from the others' mean
    assert partial.counts[m002, angry] == 0 and partial.extra["excluded_clips"] == [held_out]
    assert torch.allclose(partial.directions[:, 0], loaded.directions[:, 0], atol=1e-5)  # happy untouched
    with pytest.raises(DirectionsError, match="does not hold"):
        run_directions(cache, ckpt, tmp_path / "x.pt", "cpu", 5, emotions=["happy"], exclude_clips=["M009/nope"])


# --------------------------------------------------------------------------- eq. 4's temperature τ
def test_subject_temperature_field_round_trip_reorder_and_old_files(tmp_path):
    from emoedit.editing.directions import DIRECTIONS_VERSION

    latents, subjects, emotions, levels, _ = _planted()
    result = solve_directions(latents, subjects, emotions, levels)
    assert result.subject_temperature == 1.0 and "temperature" not in result.describe()  # the paper by default
    record = {"temperature": 8.0, "candidates": [1.0, 8.0], "scores": [0.1, 0.3], "mean_score": 0.25}
    tempered = result.with_subject_temperature(8, record)
    assert tempered.subject_temperature == 8.0 and isinstance(tempered.subject_temperature, float)
    assert tempered.extra["subject_temperature"] == record and "subject_temperature" not in result.extra  # a copy
    assert "τ = 8 (calibrated leave-one-subject-out" in tempered.describe()
    loaded = EditDirections.load(tempered.save(tmp_path / "tau.pt"))
    assert loaded.subject_temperature == 8.0 and loaded.extra["subject_temperature"] == record
    assert torch.equal(loaded.directions, result.directions)
    assert loaded.reorder(["s3", "s1", "s2"]).subject_temperature == 8.0
    by_hand = tempered.with_subject_temperature(2.5)  # no record: the stale calibration record is dropped
    assert by_hand.subject_temperature == 2.5 and "subject_temperature" not in by_hand.extra
    assert "τ = 2.5 (set by hand" in by_hand.describe()

    body = torch.load(tmp_path / "tau.pt", weights_only=True)  # a file written before the field existed
    del body["subject_temperature"]
    assert body["version"] == DIRECTIONS_VERSION == 1
    torch.save(body, tmp_path / "old.pt")
    assert EditDirections.load(tmp_path / "old.pt").subject_temperature == 1.0

    for bad in (0.0, -2.0, float("inf"), float("nan"), "2", True):
        with pytest.raises(DirectionsError, match="subject_temperature"):
            result.with_subject_temperature(bad)
    with pytest.raises(DirectionsError, match="subject_temperature"):
        EditDirections(directions=result.directions, subjects=result.subjects, emotions=result.emotions, level=3,
                       counts=result.counts, neutral_counts=result.neutral_counts, subject_temperature=0.0)
    with pytest.raises(DirectionsError, match="calibration record chose"):
        result.with_subject_temperature(4.0, record)


def _write_encoder(path: Path, seed: int = 0) -> Path:
    from emoedit.networks.psp_encoder import PSPEncoder

    torch.manual_seed(seed)
    encoder = PSPEncoder(num_ws=4, w_dim=8, input_size=32, depth=10, widths=(8, 16, 32, 64)).eval()
    encoder.set_average_latent(torch.randn(8))
    torch.save({"hyper_parameters": {"part": "texture_encoder", "config": {}},
                "psp_encoder_kwargs": encoder.init_kwargs,
                "state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, path)
    return path


def _write_classifier(path: Path, subjects: tuple[str, ...], seed: int = 0) -> Path:
    """A tiny untrained subject classifier in train.py's checkpoint layout (what from_checkpoint reads)."""
    from emoedit.networks.subject_classifier import (
        CLASSIFIER_KWARGS_KEY,
        CLASSIFIER_STATE_PREFIX,
        SubjectClassifier,
    )

    torch.manual_seed(seed)
    classifier = SubjectClassifier(subjects=subjects, input_size=32, depth=10, widths=(8, 16, 32, 64)).eval()
    with torch.no_grad():
        classifier.head.weight.mul_(20.0)  # confident logits, as a trained classifier's
    torch.save({"hyper_parameters": {"part": "classifier", "config": {}},
                CLASSIFIER_KWARGS_KEY: classifier.init_kwargs,
                "state_dict": {f"{CLASSIFIER_STATE_PREFIX}{k}": v for k, v in classifier.state_dict().items()}}, path)
    return path


def test_run_directions_stores_a_given_or_calibrated_temperature(tmp_path):
    from emoedit.atomic_io import sha256_file
    from emoedit.data.cache import CacheReader
    from emoedit.editing.directions import run_directions
    from emoedit.editing.subject_temperature import calibrate_subject_temperature, classify_neutral_textures
    from emoedit.networks.subject_classifier import SubjectClassifier

    cache = write_texture_cache(tmp_path / "textures", subjects=("M001", "M002", "W003", "W004"))
    encoder = _write_encoder(tmp_path / "encoder.ckpt")
    classifier_ckpt = _write_classifier(tmp_path / "classifier.ckpt", ("W004", "M002", "W003", "M001"))
    held_out = "M001/front/neutral/level_1/001"

    plain = run_directions(cache, encoder, tmp_path / "plain.pt", "cpu", 5, emotions=["happy", "angry"])
    assert plain.subject_temperature == 1.0 and "subject_temperature" not in plain.extra
    fixed = run_directions(cache, encoder, tmp_path / "fixed.pt", "cpu", 5, emotions=["happy", "angry"],
                           subject_temperature=3.0)
    assert EditDirections.load(tmp_path / "fixed.pt").subject_temperature == 3.0
    assert torch.equal(fixed.directions, plain.directions)

    out = tmp_path / "calibrated.pt"
    result = run_directions(cache, encoder, out, "cpu", 5, emotions=["happy", "angry"], missing="mean",
                            classifier=classifier_ckpt, subject_temperature="calibrate", exclude_clips=[held_out])
    assert result.subjects == ("W004", "M002", "W003", "M001")  # the classifier's order
    loaded = EditDirections.load(out)
    record = loaded.extra["subject_temperature"]
    assert loaded.subject_temperature == record["temperature"] == result.subject_temperature
    assert record["classifier_sha256"] == sha256_file(classifier_ckpt) and record["subjects"] == list(result.subjects)
    assert record["textures"] == 3 * 4  # the neutral textures of every subject but the excluded clip's
    # the same as calibrating by hand on the same textures, logits in the directions' row order
    classifier = SubjectClassifier.from_checkpoint(classifier_ckpt)
    reader = CacheReader.open(cache, kind="textures")
    logits, rows = classify_neutral_textures(reader, classifier, loaded, exclude_clips=[held_out], batch_size=5)
    assert logits.shape == (12, 4) and rows.tolist().count(loaded.subjects.index("M001")) == 0
    expected = calibrate_subject_temperature(logits, rows, loaded.directions[:, loaded.solved_mask])
    assert record["temperature"] == expected.temperature
    assert record["scores"] == pytest.approx(list(expected.scores), abs=1e-6)

    with pytest.raises(DirectionsError, match="needs the subject classifier"):
        run_directions(cache, encoder, tmp_path / "x.pt", "cpu", 5, emotions=["happy"], subject_temperature="calibrate")
    with pytest.raises(DirectionsError, match="positive number or 'calibrate'"):
        run_directions(cache, encoder, tmp_path / "x.pt", "cpu", 5, emotions=["happy"], subject_temperature="warm")
    with pytest.raises(DirectionsError, match="subject_temperature"):
        run_directions(cache, encoder, tmp_path / "x.pt", "cpu", 5, emotions=["happy"], subject_temperature=0.0)
    with pytest.raises(DirectionsError, match="not among the subject classifier"):
        run_directions(cache, encoder, tmp_path / "x.pt", "cpu", 5, emotions=["happy"], subjects=["M001", "X9"],
                       classifier=classifier_ckpt, subject_temperature="calibrate")
    assert not (tmp_path / "x.pt").exists()


def test_classify_neutral_textures_known_answer(tmp_path):
    from emoedit.data.cache import CacheDataset, CacheReader
    from emoedit.editing.directions import texture_to_network
    from emoedit.editing.subject_temperature import classify_neutral_textures
    from emoedit.networks.subject_classifier import SubjectClassifier

    cache = write_texture_cache(tmp_path / "textures", frames=3)
    latents, subjects, emotions, levels, _ = _planted()
    directions = solve_directions(latents, ["M001" if s == "s1" else "M002" if s == "s2" else "W003" for s in subjects],
                                  emotions, levels)
    torch.manual_seed(0)
    classifier = SubjectClassifier(subjects=("W003", "M001", "M002"), input_size=32, depth=10,
                                   widths=(8, 16, 32, 64)).train()
    reader = CacheReader.open(cache, kind="textures")
    logits, rows = classify_neutral_textures(reader, classifier, directions, batch_size=2)
    assert classifier.training  # its mode is restored
    items = [item for item in CacheDataset(reader, fields=("uv_texture",)) if item["emotion"] == "neutral"]
    classifier.eval()
    with torch.no_grad():
        direct = classifier(texture_to_network(torch.stack([i["uv_texture"] for i in items]))).logits
    order = [classifier.subjects.index(s) for s in directions.subjects]
    assert torch.allclose(logits, direct[:, order], atol=1e-5)
    assert rows.tolist() == [directions.subjects.index(i["subject"]) for i in items]
    with pytest.raises(DirectionsError, match="no class for the direction subjects"):
        classify_neutral_textures(reader, SubjectClassifier(subjects=("M001", "M002"), input_size=32, depth=10,
                                                            widths=(8, 16, 32, 64)), directions)
