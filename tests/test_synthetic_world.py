"""The built-in synthetic world: layout, media, truth, determinism, resume, edits, textures,
mouth interior, FFHQ stills, reader confinement.

One ``tiny`` world is generated per module (a few seconds); determinism uses an even
smaller custom preset generated three times.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from emoedit.data.synthetic import (
    EFFECT_NAMES,
    PRESETS,
    ClipKey,
    SceneRenderer,
    SyntheticWorld,
    WorldRenderer,
    confined,
    generate_world,
    polygon_mask,
    world_camera,
)
from emoedit.data.synthetic.emotions import EMFACS_RECIPES, au_vector
from emoedit.data.synthetic.mouth_interior import build_mouth_interior
from emoedit.data.synthetic.performance import perform
from emoedit.data.synthetic.texture_effects import effect_activations, effect_weight_matrix
from emoedit.editing.emotion_code import EMOTIONS
from emoedit.face_model import Coeffs
from emoedit.video import probe_video, read_audio, read_video

SEED = 3
TINY = PRESETS["tiny"]
MEAD_EMOTIONS = {"neutral", "happy", "angry", "sad", "surprised", "fear", "disgusted", "contempt"}
MEAD_VIDEO = re.compile(
    r"^mead/(?P<subject>[MW]\d{3})/video/(?P<view>front|left_30|right_30)/(?P<emotion>[a-z]+)/level_(?P<level>[123])/(?P<clip>\d{3})\.mp4$"
)
MICRO = dataclasses.replace(
    TINY,
    name="micro",
    num_train_subjects=1,
    num_unseen_subjects=0,
    emotions=("sad",),
    levels=(2,),
    side_views=(),
    num_frames=4,
    image_size=32,
    texture_size=32,
    num_ffhq=3,
    num_ffhq_bad_each=1,
    ffhq_size=32,
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Many small tensor operations: one thread avoids spin-waiting on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_world")
    summary = generate_world(root, "tiny", SEED, progress=False)
    assert summary.rendered["mead"] == summary.num_clips > 0
    assert summary.rendered["edited"] == summary.num_edited_clips > 0
    return root


@pytest.fixture(scope="module")
def world(world_dir: Path) -> SyntheticWorld:
    return SyntheticWorld.open(world_dir)


@pytest.fixture(scope="module")
def renderer() -> WorldRenderer:
    return WorldRenderer(TINY, SEED)


def _region_mean_abs(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=-1)
    return float(diff[mask].mean())


# ------------------------------------------------------------------------------ layout


def test_layout_matches_mead(world_dir: Path, world: SyntheticWorld) -> None:
    videos = sorted(p.relative_to(world_dir).as_posix() for p in (world_dir / "mead").rglob("*"))
    mp4s = [p for p in videos if p.endswith(".mp4")]
    assert len(mp4s) == len(world.clips()) == json.loads((world_dir / "truth/world.json").read_text())["counts"]["mead_clips"]
    seen_views: dict[str, set[str]] = {}
    for rel in mp4s:
        match = MEAD_VIDEO.match(rel)
        assert match, f"not MEAD's layout: {rel}"
        assert match["emotion"] in MEAD_EMOTIONS
        if match["emotion"] == "neutral":
            assert match["level"] == "1", rel
        seen_views.setdefault(match["subject"], set()).add(match["view"])
    # Nothing else lives under mead/ (no temporary files, no truth).
    assert all(p.endswith(".mp4") or (world_dir / p).is_dir() for p in videos)
    for subject in world.train_subjects:
        assert seen_views[subject] == {"front"}  # training is frontal only
        emotions = {c.key.emotion for c in world.clips(subject=subject)}
        assert emotions == {"neutral", *TINY.emotions}
        levels = {c.key.level for c in world.clips(subject=subject, emotion="happy")}
        assert levels == set(TINY.levels)
    for subject in world.unseen_subjects:
        assert seen_views[subject] == {"front", *TINY.side_views}
        assert {c.key.emotion for c in world.clips(subject=subject)} == {"neutral"}
        assert all(c.role == "eval" for c in world.clips(subject=subject))


def test_split_and_edits_cover_every_eval_clip(world: SyntheticWorld) -> None:
    split = world.split
    assert len(split.train_subjects) == TINY.num_train_subjects
    assert len(split.unseen_subjects) == TINY.num_unseen_subjects
    assert not set(split.train_subjects) & set(split.unseen_subjects)
    for subject in split.train_subjects:
        held_out = set(split.held_out_neutral_clips[subject])
        trained = set(split.train_neutral_clips[subject])
        assert len(held_out) == TINY.eval_neutral_clips and not held_out & trained
        for record in world.clips(subject=subject, emotion="neutral"):
            assert record.role == ("eval" if record.key.clip in held_out else "train")
    assert not [c for c in world.training_clips() if c.subject in split.unseen_subjects]
    assert set(split.eval_clips) == {c.key for c in world.eval_clips()}
    for source in world.eval_clips():
        for emotion in TINY.emotions:
            for level in TINY.levels:
                path = world.edited_video_path(source, emotion, level)
                assert path.is_file() and world.edit(source, emotion, level).truth_path.is_file()
        assert world.edited_video_path(source, "happy", 0) == source.video_path
    assert len(world.edits()) == len(world.eval_clips()) * len(TINY.emotions) * len(TINY.levels)


# ------------------------------------------------------------------------------ media


def test_every_video_has_audio_fps_frames_and_size(world: SyntheticWorld) -> None:
    paths = [c.video_path for c in world.clips()] + [e.video_path for e in world.edits()]
    for path in paths:
        info = probe_video(path)
        assert info.has_audio, path
        assert info.audio_codec == "aac" and info.audio_sample_rate == TINY.audio_rate
        assert info.fps == TINY.fps
        assert info.num_frames == TINY.num_frames
        assert (info.width, info.height) == (TINY.image_size, TINY.image_size)


def test_audio_follows_the_mouth(world: SyntheticWorld, renderer: WorldRenderer) -> None:
    # A longer performance than the tiny clips: the audio's short-time energy follows the
    # envelope that drives the jaw.
    subject = renderer.subject(world.train_subjects[0])
    names = renderer.expression_names
    perf = perform(SEED, ("test", "audio"), subject=subject, emotion="neutral", num_frames=75, fps=25, audio_rate=16000, expression_names=names)
    hop = 16000 // 25
    energy = np.array([np.sqrt(np.mean(perf.audio[i * hop : (i + 1) * hop] ** 2)) for i in range(75)])
    envelope = perf.envelope.numpy()
    assert np.corrcoef(energy, envelope)[0, 1] > 0.6
    jaw = perf.speech_au[:, names.index("AU26")].numpy()
    assert np.corrcoef(jaw, envelope)[0, 1] > 0.6
    # The encoded audio of a clip has the clip's length and is not silent.
    clip = world.clips(emotion="neutral")[0]
    samples, rate = read_audio(clip.video_path)
    assert rate == TINY.audio_rate
    assert abs(samples.shape[1] / rate - TINY.duration_s) < 0.05
    assert float(np.abs(samples).max()) > 0.05


def test_speech_rate_depends_on_the_recorded_emotion(renderer: WorldRenderer) -> None:
    subject = renderer.subject(renderer.plan.train_subjects[0])
    counts = {}
    for emotion in ("sad", "neutral", "angry"):
        syllables = [
            len(perform(SEED, ("rate", emotion, k), subject=subject, emotion=emotion, num_frames=150, fps=25, audio_rate=8000, expression_names=renderer.expression_names).speech.syllables)
            for k in range(2)
        ]
        counts[emotion] = sum(syllables)
    assert counts["sad"] < counts["neutral"] < counts["angry"]


# ------------------------------------------------------------------------------ truth


def test_truth_round_trip_landmarks_and_coefficients(world: SyntheticWorld) -> None:
    model = world.face_model()
    records = world.clips(emotion="happy")[:2] + world.eval_clips() + world.edits(emotion="angry", level=3)[:2]
    assert any(r.key.view != "front" for r in records if hasattr(r.key, "view"))
    for record in records:
        truth = world.load_truth(record)
        assert truth.perspective_camera() == world.camera
        with torch.no_grad():
            landmarks = model(truth.coeffs, truth.perspective_camera()).landmarks
        torch.testing.assert_close(landmarks, truth.landmarks, atol=1e-3, rtol=0)
        parts = truth.split_coeffs()
        subject = world.subject(truth.subject)
        torch.testing.assert_close(parts.id_coeff, subject.id_coeff[None].expand_as(parts.id_coeff))
        torch.testing.assert_close(parts.tex_coeff, subject.tex_coeff[None].expand_as(parts.tex_coeff))
        total = truth.exp_speech + truth.exp_emotion + truth.exp_blink
        assert torch.all(parts.exp_coeff <= total + 1e-6) and torch.all(parts.exp_coeff >= 0)
        torch.testing.assert_close(parts.angle[:, 1], truth.head_angle[:, 1] + truth.view_yaw)
        torch.testing.assert_close(parts.trans, truth.head_trans + truth.framing)
        assert truth.num_frames == TINY.num_frames
        # Landmarks lie in the frame (the face is placed with margins).
        assert float(truth.landmarks.min()) > 0 and float(truth.landmarks.max()) < TINY.image_size - 1


def test_views_share_the_recording(world: SyntheticWorld) -> None:
    subject = world.unseen_subjects[0]
    front = world.load_truth(world.clips(subject=subject, view="front")[0])
    side = world.load_truth(world.clips(subject=subject, view=TINY.side_views[0])[0])
    torch.testing.assert_close(front.exp_speech, side.exp_speech)
    torch.testing.assert_close(front.head_angle, side.head_angle)
    assert abs(side.view_yaw - math.radians(-30.0)) < 1e-6 and front.view_yaw == 0.0


def test_emotion_truth_follows_emfacs_and_subject_gains(world: SyntheticWorld) -> None:
    names = world.expression_names
    for subject in world.train_subjects:
        gains = world.subject(subject).au_gains
        for level in TINY.levels:
            truth = world.load_truth(world.clips(subject=subject, emotion="angry", level=level)[0])
            expected = au_vector(EMFACS_RECIPES["angry"], names) * (level / 3) * gains
            torch.testing.assert_close(truth.exp_emotion, expected)
            assert truth.emotion_code[EMOTIONS.index("angry")] == pytest.approx(level / 3)
    a, b = (world.subject(s).au_gains for s in world.train_subjects[:2])
    assert not torch.allclose(a, b)  # subject-specific amplitude


# ------------------------------------------------------------------------------ determinism and resume


def _all_truth(root: Path) -> dict[str, dict]:
    return {p.relative_to(root).as_posix(): torch.load(p, weights_only=True) for p in sorted((root / "truth").rglob("*.pt"))}


def _all_frames(root: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(root).as_posix(): read_video(p)[0] for p in sorted(root.rglob("*.mp4"))}


def _assert_same(a: object, b: object, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    else:
        assert a == b, where


def test_same_seed_gives_identical_world_and_other_seed_differs(tmp_path: Path) -> None:
    first = generate_world(tmp_path / "a", MICRO, 7, progress=False)
    generate_world(tmp_path / "b", MICRO, 7, progress=False)
    generate_world(tmp_path / "c", MICRO, 8, progress=False)
    assert first.num_clips == 3 and first.num_edited_clips == 1
    truth_a, truth_b, truth_c = (_all_truth(tmp_path / x) for x in "abc")
    _assert_same(truth_a, truth_b, "truth")
    frames_a, frames_b = _all_frames(tmp_path / "a"), _all_frames(tmp_path / "b")
    assert frames_a.keys() == frames_b.keys() and len(frames_a) == 4
    for key in frames_a:
        assert np.array_equal(frames_a[key], frames_b[key]), key
    for name in ("a", "b"):
        assert (tmp_path / name / "ffhq/images32x32/00000/00000.png").is_file()
    pngs_a = sorted((tmp_path / "a" / "ffhq").rglob("*.png"))
    for png in pngs_a:
        other = tmp_path / "b" / png.relative_to(tmp_path / "a")
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(other)))
    # Another seed: other people, other performances.
    assert truth_a.keys() != truth_c.keys() or any(
        not torch.equal(truth_a[k]["coeffs"], truth_c[k]["coeffs"]) for k in truth_a if "coeffs" in truth_a[k]
    )
    clip_truths = [k for k in truth_a if k.startswith("truth/mead/")]
    subject_c = [k for k in truth_c if k.startswith("truth/mead/")]
    assert not torch.equal(truth_a[clip_truths[0]]["coeffs"], truth_c[subject_c[0]]["coeffs"])


def test_rerendering_a_clip_reproduces_its_truth(world: SyntheticWorld, renderer: WorldRenderer) -> None:
    record = world.clips(emotion="angry", level=3)[0]
    again = renderer.render_mead_clip(record.key)
    stored = torch.load(record.truth_path, weights_only=True)
    _assert_same(stored, again.truth.to_dict(), "clip truth")
    decoded, _ = read_video(record.video_path)
    # Lossy H.264 (CRF 16): the decoded video stays close to the rendered frames.
    assert np.abs(decoded.astype(np.float64) - again.frames).mean() < 3.0
    # The reader renders edits on demand from the stored face model, identically.
    source = world.eval_clips()[-1]
    edit = world.render_edit(source, "angry", 3)
    _assert_same(torch.load(world.edit(source, "angry", 3).truth_path, weights_only=True), edit.truth.to_dict(), "edit truth")


def test_resume_skips_finished_items(world_dir: Path) -> None:
    videos = sorted(world_dir.rglob("*.mp4"))
    before = {p: p.stat().st_mtime_ns for p in videos}
    rendered: list[tuple[str, object]] = []
    summary = generate_world(world_dir, "tiny", SEED, progress=False, on_render=lambda stage, item: rendered.append((stage, item)))
    assert rendered == [] and sum(summary.rendered.values()) == 0
    assert summary.skipped["mead"] == summary.num_clips
    victim = videos[0]
    png = sorted((world_dir / "ffhq").rglob("*.png"))[0]
    victim.unlink()
    png.unlink()
    summary = generate_world(world_dir, "tiny", SEED, progress=False)
    assert victim.is_file() and png.is_file()
    assert sum(summary.rendered.values()) == 2
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p != victim)
    assert not list(world_dir.rglob(".*.mp4")) and not list(world_dir.rglob(".*.pt"))  # no temp files left
    with pytest.raises(ValueError, match="refusing"):
        generate_world(world_dir, "tiny", SEED + 1, progress=False)


# ------------------------------------------------------------------------------ ground-truth edits


def test_level_zero_edit_is_the_neutral_clip_and_higher_levels_change_more(world: SyntheticWorld, renderer: WorldRenderer) -> None:
    source = world.eval_clips(view="front")[0]
    neutral = renderer.render_mead_clip(source.key)
    zero = renderer.render_edit(source.key, "happy", 0.0)
    assert np.array_equal(zero.frames, neutral.frames)
    assert np.array_equal(zero.audio, neutral.audio)
    torch.testing.assert_close(zero.truth.coeffs, neutral.truth.coeffs, rtol=0, atol=0)
    torch.testing.assert_close(zero.truth.coeffs, world.load_truth(source).coeffs, rtol=0, atol=0)
    face = neutral.face_mask.numpy()
    changes = []
    for level in (1, 2, 3, 4.5):
        edit = renderer.render_edit(source.key, "angry", level)
        # Same speech, head motion and blinks: only the emotion changed.
        torch.testing.assert_close(edit.truth.exp_speech, neutral.truth.exp_speech)
        torch.testing.assert_close(edit.truth.exp_blink, neutral.truth.exp_blink)
        torch.testing.assert_close(edit.truth.head_angle, neutral.truth.head_angle)
        assert np.array_equal(edit.audio, neutral.audio)
        changes.append(_region_mean_abs(edit.frames, neutral.frames, face))
    assert 0 < changes[0] < changes[1] < changes[2] < changes[3]
    # The stored ground-truth videos agree: level 3 departs from the neutral clip more than level 1.
    source_frames, _ = read_video(source.video_path)
    stored = [read_video(world.edited_video_path(source, "angry", level))[0] for level in (1, 3)]
    assert _region_mean_abs(stored[1], source_frames, face) > _region_mean_abs(stored[0], source_frames, face) > 0.5
    truth = world.load_truth(world.edit(source, "angry", 3))
    assert truth.kind == "edited" and truth.source_video == str(source.key.video)
    assert truth.emotion == "angry" and truth.level == 3


# ------------------------------------------------------------------------------ textures


def test_subject_textures_differ_between_subjects_more_than_within(world: SyntheticWorld) -> None:
    subjects = world.subjects
    albedo = torch.stack([world.subject(s).albedo for s in subjects])  # (S, 3, T, T)
    within, nearest_ok, frames = [], 0, 0
    for index, s in enumerate(subjects):
        for record in world.clips(subject=s):
            textures = world.true_texture(s, world.load_truth(record).effects)  # (N, 3, T, T)
            distances = (textures[:, None] - albedo[None]).pow(2).mean(dim=(2, 3, 4)).sqrt()  # (N, S)
            within.extend(distances[:, index].tolist())
            nearest_ok += int((distances.argmin(dim=1) == index).sum())
            frames += distances.shape[0]
    between = [float((albedo[a] - albedo[b]).pow(2).mean().sqrt()) for a in range(len(subjects)) for b in range(a + 1, len(subjects))]
    assert nearest_ok == frames  # every expressive frame's texture is nearest to its own subject
    assert np.mean(between) > 3.0 * np.mean(within), (between, np.mean(within))
    assert min(between) > 0.02


def _uv_box(world: SyntheticWorld, landmark_ids: list[int], pad: tuple[float, float, float, float]) -> torch.Tensor:
    """(T, T) bool box in UV around landmarks, padded (left, right, up, down) in UV units."""
    model = world.face_model()
    uv = model.uv_coords[model.landmark_ids[landmark_ids]]
    size = world.texture_size
    u0, v0 = (uv.min(dim=0).values - torch.tensor([pad[0], pad[2]])).tolist()
    u1, v1 = (uv.max(dim=0).values + torch.tensor([pad[1], pad[3]])).tolist()
    grid = torch.linspace(0, 1, size)
    vv, uu = torch.meshgrid(grid, grid, indexing="ij")
    return (uu >= u0) & (uu <= u1) & (vv >= v0) & (vv <= v1)


@pytest.mark.parametrize(
    ("aus", "effect", "landmarks", "pad"),
    [
        ({"AU4": 1.0}, "glabella_lines", [21, 22, 27], (0.02, 0.02, 0.08, 0.0)),
        ({"AU1": 1.0, "AU2": 1.0}, "forehead_lines", [17, 19, 24, 26], (0.0, 0.0, 0.2, 0.0)),
        ({"AU6": 1.0}, "crows_feet", [36, 45], (0.1, 0.1, 0.05, 0.05)),
        ({"AU9": 1.0}, "nose_wrinkles", [27, 28, 29], (0.06, 0.06, 0.03, 0.02)),
    ],
)
def test_wrinkles_darken_their_own_region(world: SyntheticWorld, aus: dict, effect: str, landmarks: list[int], pad: tuple) -> None:
    names = world.expression_names
    activations = effect_activations(au_vector(aus, names)[None], effect_weight_matrix(names))
    assert activations[0, EFFECT_NAMES.index(effect)] > 0
    region = _uv_box(world, landmarks, pad)
    control = _uv_box(world, [4, 5, 6], (0.0, 0.0, 0.0, 0.0)) | _uv_box(world, [10, 11, 12], (0.0, 0.0, 0.0, 0.0))
    changes = []
    for subject in world.subjects:
        neutral = world.true_texture(subject)[0]
        expressed = world.true_texture(subject, activations)[0]
        darkening = (neutral - expressed).mean(dim=0)  # (T, T), positive = darker
        assert float(darkening[region].mean()) > 0.004, (subject, effect)
        assert float(darkening[region].mean()) > 10 * float(darkening[control].abs().mean())
        changes.append((expressed - neutral).flatten())
    # Subject-specific: the texture change of one AU differs between subjects.
    cosine = F.cosine_similarity(changes[0], changes[1], dim=0)
    assert float(cosine) < 0.9


def test_anger_flushes(world: SyntheticWorld) -> None:
    names = world.expression_names
    activations = effect_activations(au_vector({"AU23": 1.0}, names)[None], effect_weight_matrix(names))
    cheeks = _uv_box(world, [1, 2, 3, 31], (0.0, 0.0, 0.0, 0.0)) | _uv_box(world, [13, 14, 15, 35], (0.0, 0.0, 0.0, 0.0))
    for subject in world.subjects:
        change = world.true_texture(subject, activations)[0] - world.true_texture(subject)[0]
        red, green = float(change[0][cheeks].mean()), float(change[1][cheeks].mean())
        assert red > 0.005 and red > green, subject


# ------------------------------------------------------------------------------ mouth interior


def test_mouth_interior_shows_only_through_an_open_mouth(renderer: WorldRenderer) -> None:
    model = renderer.model
    names = renderer.expression_names
    size = 128
    scene = SceneRenderer(model=model, camera=world_camera(size))
    subject = renderer.subject(renderer.plan.train_subjects[0])
    interior = build_mouth_interior(model, subject.id_coeff, subject.teeth_colour)
    closed = [{}, {"AU1": 1.0, "AU2": 1.0}, {"AU4": 1.2, "AU7": 0.9}, {"AU6": 1.0, "AU12": 1.2}, {"AU43": 1.0}, {"AU15": 1.0}]
    opened = [{"AU25": 1.0, "AU26": 0.8}, {"AU25": 0.8, "AU26": 0.4}, {"AU25": 1.0, "AU26": 1.0, "AU1": 1.0}]
    batch = len(closed) + len(opened)
    exp = torch.stack([au_vector(a, names) for a in closed + opened])
    yaw = torch.tensor([0.0, 0.3, -0.3, 0.0, 0.5, -0.5, 0.0, 0.5, -0.5])
    coeffs = model.layout.join(
        Coeffs(
            id_coeff=subject.id_coeff[None].expand(batch, -1),
            exp_coeff=exp,
            tex_coeff=subject.tex_coeff[None].expand(batch, -1),
            angle=torch.stack([torch.zeros(batch), yaw, torch.zeros(batch)], dim=1),
            gamma=torch.zeros(batch, 27),
            trans=torch.zeros(batch, 3),
        )
    )
    with torch.no_grad():
        out = scene(coeffs, subject.albedo[None].expand(batch, -1, -1, -1), interior, torch.full((3, size, size), 0.5))
    counts = out.interior_mask.sum(dim=(1, 2))
    assert counts[: len(closed)].tolist() == [0] * len(closed)
    assert bool((counts[len(closed) :] > 20).all())
    lips = polygon_mask(out.landmarks[:, 60:68], size).float()
    lips = F.max_pool2d(lips[:, None], 5, stride=1, padding=2)[:, 0] > 0  # ±2 px around the inner lip contour
    inside = (out.interior_mask & lips).sum(dim=(1, 2))[len(closed) :]
    assert bool((inside >= 0.95 * counts[len(closed) :]).all())
    # Teeth are bright and the cavity dark: the interior is not one flat colour.
    pixels = out.image.permute(0, 2, 3, 1)[out.interior_mask]
    assert float(pixels.mean(dim=1).max() - pixels.mean(dim=1).min()) > 0.3


def test_stored_clips_record_the_interior(world: SyntheticWorld) -> None:
    open_frames = closed_frames = 0
    for record, truth in world.iter_clips_with_truth(view="front"):
        gap = (truth.landmarks[:, 62] - truth.landmarks[:, 66]).norm(dim=1)
        visible = truth.interior_pixels > 0
        open_frames += int(visible.sum())
        closed_frames += int((gap < 1e-3).sum())
        assert not bool((visible & (gap < 1e-3)).any()), record.key  # a closed mouth shows nothing
    assert open_frames > 0 and closed_frames > 0


# ------------------------------------------------------------------------------ FFHQ


def test_ffhq_stills_with_truth_and_bad_flags(world_dir: Path, world: SyntheticWorld) -> None:
    ffhq = world.ffhq()
    pngs = sorted((world_dir / "ffhq").rglob("*.png"))
    assert len(pngs) == len(ffhq.image_paths) == TINY.num_ffhq
    for path in ffhq.image_paths + ffhq.texture_paths:
        assert path.is_file()
    for kind in ("large_pose", "dark", "occluded"):
        assert ffhq.bad_reason.count(kind) == TINY.num_ffhq_bad_each
    assert ffhq.bad.tolist() == [bool(r) for r in ffhq.bad_reason]
    layout = world.coeff_layout
    parts = layout.split(ffhq.coeffs)
    yaw = parts.angle[:, 1].abs()
    brightness = torch.tensor([np.asarray(Image.open(p), dtype=np.float64).mean() for p in ffhq.image_paths])
    good = ~ffhq.bad
    for i, reason in enumerate(ffhq.bad_reason):
        if reason == "large_pose":
            assert float(yaw[i]) >= math.radians(55.0)
        elif reason == "dark":
            assert float(brightness[i]) < float(brightness[good].median())
            assert float(parts.gamma[i, 0]) < -0.4
        elif reason == "occluded":
            x0, y0, x1, y1 = ffhq.occluder_box[i].tolist()
            assert 0 <= x0 < x1 < TINY.ffhq_size and 0 <= y0 < y1 < TINY.ffhq_size
        else:
            assert float(yaw[i]) <= math.radians(25.0) and float(ffhq.occluder_box[i, 0]) == -1
    assert float(yaw[good].max()) <= math.radians(25.0)
    with torch.no_grad():
        landmarks = world.face_model()(ffhq.coeffs, ffhq.camera).landmarks
    torch.testing.assert_close(landmarks, ffhq.landmarks, atol=1e-3, rtol=0)
    # Many identities: every still is a different person.
    assert len({tuple(row.tolist()) for row in parts.id_coeff}) == TINY.num_ffhq


# ------------------------------------------------------------------------------ reader safety


def test_reader_confines_paths(tmp_path: Path, world_dir: Path) -> None:
    with pytest.raises(ValueError):
        confined(tmp_path, "/etc/passwd")
    with pytest.raises(ValueError):
        confined(tmp_path, "truth/../../outside.pt")
    (tmp_path / "escape").symlink_to("/")
    with pytest.raises(ValueError):
        confined(tmp_path, "escape/etc/passwd")
    assert confined(tmp_path, "truth/world.json") == tmp_path.resolve() / "truth/world.json"
    # A tampered index cannot point the reader outside the world.
    copy = tmp_path / "copy"
    shutil.copytree(world_dir / "truth", copy / "truth", ignore=shutil.ignore_patterns("*.pt", "*.png", "*.mp4"))
    index = json.loads((copy / "truth/index.json").read_text())
    index["clips"][0]["subject"] = ".."
    (copy / "truth/index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError):
        SyntheticWorld.open(copy)
    index["clips"][0]["subject"] = "M001/../../.."
    (copy / "truth/index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError):
        SyntheticWorld.open(copy)


def test_clip_key_rejects_bad_names() -> None:
    with pytest.raises(ValueError):
        ClipKey("M001", "front", "neutral", 2, "001")  # neutral has level 1 only
    with pytest.raises(ValueError):
        ClipKey("../M001", "front", "happy", 1, "001")


@pytest.mark.parametrize("lighting", ["per_recording", "per_subject"])
def test_lighting_per_recording_or_per_subject(lighting: str) -> None:
    preset = dataclasses.replace(PRESETS["tiny"], lighting=lighting, num_frames=2)
    renderer = WorldRenderer(preset, SEED)
    subject = renderer.plan.train_subjects[0]
    layout = renderer.model.layout
    gammas = [
        layout.split(renderer.render_mead_clip(ClipKey(subject, "front", emotion, level, "001")).truth.coeffs).gamma[0]
        for emotion, level in (("neutral", 1), ("happy", 3))
    ]
    same = torch.equal(gammas[0], gammas[1])
    assert same == (lighting == "per_subject")


def test_lighting_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="lighting"):
        dataclasses.replace(PRESETS["tiny"], lighting="studio")
