"""``emoedit preprocess``: stages, resume, bad inputs, multi-process, mouths, the FFHQ filter.

Inputs are the synthetic world's ``tiny`` preset (generated once per module, ~10 s) and,
where present, the real fixture videos.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emoedit.data.alignment import CropTransform
from emoedit.data.cache_reader import CacheReader
from emoedit.data.datasets import read_mead
from emoedit.data.ffhq_filter import (
    FaceFilterConfig,
    assess_faces,
    estimate_head_pose,
    reject_reasons,
)
from emoedit.data.mouth import extract_mouths, polygon_mask, remove_region
from emoedit.data.preprocess import (
    PreprocessConfig,
    PreprocessError,
    ScaledDetector,
    plan_run,
    run_preprocess,
)
from emoedit.face_model import MorphableModel, PerspectiveCamera
from emoedit.video import VideoWriter, read_video

FAST_FITTER = {"pose_steps": 15, "shape_steps": 15, "photo_steps": 5}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emoedit.data.synthetic.world import generate_world

    root = tmp_path_factory.mktemp("world") / "tiny"
    generate_world(root, "tiny", 0, progress=False)
    return root


def _config(world: Path, out: Path, **changes) -> PreprocessConfig:
    base = dict(input_kind="mead", inputs=(str(world),), output_dir=str(out), stage="align", crop_size=64,
                texture_size=32, mouth_crop_size=32, max_frames=4, reconstructor="truth", views=("front",),
                progress=False, fail_fast=True, chunk_frames=4)
    base.update(changes)
    return PreprocessConfig(**base)


def _copy_world(world: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    return copy


# --------------------------------------------------------------------------- stage align
def test_align_writes_a_frames_cache_with_ids_and_true_coefficients(world: Path, tmp_path: Path) -> None:
    summary = run_preprocess(_config(world, tmp_path / "out", max_clips=3))
    assert (summary.clips_written, summary.clips_failed, summary.records_written) == (3, 0, 12)
    reader = CacheReader.open(tmp_path / "out" / "frames", kind="frames", version=1)
    model = MorphableModel.load(world / "truth" / "face_model.pt")
    spec = reader.spec
    assert spec.fields["crop"].dtype == "uint8" and spec.fields["crop"].shape == (3, 64, 64)
    assert spec.fields["landmarks"].shape == (68, 2) and spec.fields["transform"].shape == (8,)
    assert spec.fields["coeffs_true"].shape == (model.layout.size,)
    assert set(spec.meta) == {"subject", "emotion", "level", "view", "frame"}
    attrs = reader.attributes
    assert attrs["face_model"] == model.name and attrs["crop_size"] == 64
    assert attrs["face_model_info"]["num_vertices"] == model.num_vertices
    assert attrs["detector"]["name"] == "truth" and attrs["emoedit_version"]

    clips = [c for c in read_mead(world, views=["front"])][:3]
    assert list(reader.clips) == [c.clip_id for c in clips]
    data = reader.load_clip(clips[0].clip_id)
    assert data["subject"] == [clips[0].subject] * 4 and data["frame"] == [0, 1, 2, 3]
    assert data["emotion"][0] == clips[0].emotion and data["level"][0] == clips[0].level
    # The crop's landmarks are the true landmarks mapped by the stored transform ...
    from emoedit.data.synthetic.layout import ClipKey
    from emoedit.data.synthetic.truth_format import load_clip_truth

    key = ClipKey(clips[0].subject, clips[0].view, clips[0].emotion, clips[0].level, clips[0].name)
    truth = load_clip_truth(world / key.truth)
    transform = CropTransform.from_tensor(data["transform"])
    torch.testing.assert_close(transform.frame_to_crop(truth.landmarks[:4]), data["landmarks"], atol=1e-3, rtol=0)
    # ... and coeffs_true reproduces them with the crop camera (pose re-fitted for the crop camera).
    projected = model(data["coeffs_true"], PerspectiveCamera().scaled(64)).landmarks
    assert float((projected - data["landmarks"]).norm(dim=-1).max()) < 0.1
    layout = model.layout
    torch.testing.assert_close(layout.split(data["coeffs_true"]).exp_coeff, layout.split(truth.coeffs[:4]).exp_coeff)
    # The crop shows a face: brighter / more varied than the background at the landmarks.
    assert data["crop"].float().std() > 10
    # The frames DataModule accepts it.
    frames_module = pytest.importorskip("datamodules.frames")
    assert frames_module.check_frames_spec(reader) == 64


def test_resume_skips_finished_clips(world: Path, tmp_path: Path) -> None:
    config = _config(world, tmp_path / "out", max_clips=2, max_frames=2)
    first = run_preprocess(config)
    assert first.clips_written == 2 and first.clips_already_done == 0
    second = run_preprocess(dataclasses.replace(config, max_clips=3))
    assert (second.clips_already_done, second.clips_written, second.frames_used) == (2, 1, 2)
    third = run_preprocess(dataclasses.replace(config, max_clips=3))
    assert (third.clips_already_done, third.clips_written, third.frames_used) == (3, 0, 0)
    assert len(CacheReader.open(tmp_path / "out" / "frames").clips) == 3
    from emoedit.data.cache_format import CacheSpecMismatchError

    with pytest.raises(CacheSpecMismatchError):  # another crop size is another cache
        run_preprocess(dataclasses.replace(config, crop_size=48))


def test_frames_without_a_face_are_reported_not_crashed(world: Path, tmp_path: Path) -> None:
    from emoedit.data.synthetic.layout import ClipKey
    from emoedit.data.synthetic.truth_format import load_clip_truth, save_clip_truth

    copy = _copy_world(world, tmp_path)
    clips = read_mead(copy, views=["front"])
    for clip, blank in ((clips[0], [2, 3, 6, 7]), (clips[1], list(range(8)))):
        frames, info = read_video(clip.path)
        frames = frames.copy()
        frames[blank] = 128  # a grey frame: no face
        with VideoWriter(clip.path, fps=info.fps) as writer:
            writer.write(frames)
        key = ClipKey(clip.subject, clip.view, clip.emotion, clip.level, clip.name)
        truth = load_clip_truth(copy / key.truth)
        landmarks = truth.landmarks.clone()
        landmarks[blank] = float("nan")
        save_clip_truth(dataclasses.replace(truth, landmarks=landmarks), copy / key.truth)

    summary = run_preprocess(_config(copy, tmp_path / "out", max_clips=2, max_frames=None))
    assert summary.clips_failed == 0 and summary.clips_written == 1 and summary.clips_skipped == 1
    assert summary.frames_interpolated == 2 and summary.frames_without_face == 2 + 8
    reader = CacheReader.open(tmp_path / "out" / "frames")
    assert reader.clip_meta(clips[0].clip_id)["frame"] == [0, 1, 2, 3, 4, 5]  # 2-3 interpolated, 6-7 at the end
    report = reader.reports[clips[0].clip_id].report
    assert report["status"] == "partial" and not reader.reports[clips[0].clip_id].skipped
    assert report["tracking"]["interpolated_ranges"] == [[2, 3]]
    assert report["tracking"]["unfilled_ranges"] == [[6, 7]]
    skipped = reader.reports[clips[1].clip_id]
    assert skipped.skipped and skipped.report["status"] == "no_face"


def test_corrupt_video_is_reported_as_failed_and_the_run_continues(world: Path, tmp_path: Path) -> None:
    copy = _copy_world(world, tmp_path)
    clips = read_mead(copy, views=["front"])[:3]
    data = clips[1].path.read_bytes()
    clips[1].path.write_bytes(data[: len(data) // 2])  # truncated download
    config = _config(copy, tmp_path / "out", max_clips=3, max_frames=2)
    summary = run_preprocess(config)
    assert summary.clips_written == 2 and summary.clips_failed == 1
    (clip_id, message), = summary.failed
    assert clip_id == clips[1].clip_id and str(clips[1].path) in message
    reader = CacheReader.open(tmp_path / "out" / "frames")
    assert clips[1].clip_id not in reader.clips
    report = reader.reports[clips[1].clip_id]
    assert report.report["status"] == "failed" and not report.skipped
    again = run_preprocess(config)  # a failed clip is not done: it is tried again
    assert (again.clips_already_done, again.clips_failed) == (2, 1)
    clips[1].path.write_bytes(data)  # repaired
    fixed = run_preprocess(config)
    assert (fixed.clips_already_done, fixed.clips_written, fixed.clips_failed) == (2, 1, 0)
    reader = CacheReader.open(tmp_path / "out" / "frames")
    assert clips[1].clip_id in reader.clips and reader.reports[clips[1].clip_id].report["status"] == "ok"


@pytest.mark.timeout(300)
def test_two_worker_processes_write_the_same_content_as_one(world: Path, tmp_path: Path) -> None:
    config = _config(world, tmp_path / "one", max_clips=4, max_frames=2)
    run_preprocess(config)
    summary = run_preprocess(dataclasses.replace(config, output_dir=str(tmp_path / "two"), workers=2,
                                                 devices=("cpu",), torch_threads=1))
    assert summary.clips_written == 4 and summary.workers == 2
    one = CacheReader.open(tmp_path / "one" / "frames")
    two = CacheReader.open(tmp_path / "two" / "frames")
    assert sorted(one.clips) == sorted(two.clips) and two.num_records == one.num_records == 8
    assert {entry.rank for entry in two.shards} == {0, 1}
    for clip in one.clips:
        a, b = one.load_clip(clip), two.load_clip(clip)
        for name in one.spec.fields:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
        assert a["frame"] == b["frame"] and a["subject"] == b["subject"]


# --------------------------------------------------------------------------- stage reconstruct
def test_reconstruct_writes_textures_and_mouths(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_preprocess(_config(world, out, max_clips=2, stage="align"))
    config = _config(world, out, max_clips=2, stage="reconstruct")
    plan, _ = plan_run(config)
    assert plan.reuse_frames  # the landmarks come from the frames cache
    summary = run_preprocess(config)
    assert summary.clips_written == 2 and summary.records_written == 8 and summary.clips_failed == 0
    readers = {k: CacheReader.open(out / k) for k in ("coeffs", "textures", "mouths")}
    frames = CacheReader.open(out / "frames")
    textures = readers["textures"]
    assert textures.spec.fields["uv_texture"].shape == (3, 32, 32)
    assert textures.attributes["reconstructor"]["kind"] == "truth"
    assert textures.attributes["texture"]["texture_size"] == 32
    for clip in frames.clips:
        coeffs = readers["coeffs"].load_clip(clip)
        frame_data = frames.load_clip(clip)
        torch.testing.assert_close(coeffs["landmarks_detected"], frame_data["landmarks"])
        torch.testing.assert_close(coeffs["coeffs"], frame_data["coeffs_true"])
        assert float((coeffs["landmarks"] - frame_data["landmarks"]).norm(dim=-1).max()) < 0.1
        tex = textures.load_clip(clip)
        assert tex["uv_texture"].dtype == torch.uint8 and tex["visibility"].dtype == torch.bool
        assert float(tex["visibility"].float().mean()) > 0.5  # frontal faces: most texels seen
        visible_colour = tex["uv_texture"].float().mean(1, keepdim=True)[tex["visibility"]]
        assert float(visible_colour.mean()) > 30  # a lit face, not black
        mouths = readers["mouths"].load_clip(clip)
        assert mouths["crop"].shape == (4, 3, 32, 32) and mouths["mask"].dtype == torch.bool
        differs = (mouths["crop"] != mouths["crop_removed"]).any(dim=1, keepdim=True)
        assert not bool((differs & ~mouths["mask"]).any())  # only inside the teeth region
        assert bool((mouths["crop_removed"][mouths["mask"].expand(-1, 3, -1, -1)] == 0).all())
        assert mouths["frame"] == frame_data["frame"] == coeffs["frame"] == tex["frame"]
    again = run_preprocess(config)
    assert again.clips_already_done == 2 and again.clips_written == 0


@pytest.mark.timeout(300)
def test_reconstruct_with_the_fitter(world: Path, tmp_path: Path) -> None:
    config = _config(world, tmp_path / "out", max_clips=1, max_frames=3, stage="all", reconstructor="fitter",
                     fitter=FAST_FITTER)
    summary = run_preprocess(config)
    assert summary.clips_written == 1 and summary.clips_failed == 0
    reader = CacheReader.open(tmp_path / "out" / "coeffs")
    identity = reader.attributes["reconstructor"]
    assert identity["kind"] == "fitter" and identity["fitter"]["pose_steps"] == 15
    data = reader.load_clip(reader.clips[0])
    error = (data["landmarks"] - data["landmarks_detected"]).norm(dim=-1).mean()
    assert float(error) < 3.0  # crop pixels of a 64-px crop after a short fit
    textures = CacheReader.open(tmp_path / "out" / "textures").load_clip(reader.clips[0])
    assert float(textures["visibility"].float().mean()) > 0.5


def test_config_from_plain_values() -> None:
    config = PreprocessConfig.from_dict({"inputs": ["a", "b"], "output_dir": "out", "views": ["front"],
                                         "filter": {"max_abs_yaw_deg": 20.0}, "fitter": {"pose_steps": 3}})
    assert config.inputs == ("a", "b") and config.views == ("front",)
    assert config.filter == FaceFilterConfig(max_abs_yaw_deg=20.0) and config.fitter == {"pose_steps": 3}
    assert PreprocessConfig.from_dict(config.to_json()) == config
    with pytest.raises(PreprocessError, match="unknown settings"):
        PreprocessConfig.from_dict({"crop": 3})
    with pytest.raises(PreprocessError, match="unknown thresholds"):
        PreprocessConfig.from_dict({"filter": {"yaw": 3}})


def test_texture_region_setting_is_checked_and_recorded_only_when_set() -> None:
    with pytest.raises(PreprocessError, match="texture_region_min_cos"):
        PreprocessConfig.from_dict({"texture_region_min_cos": 1.5})
    plain = PreprocessConfig.from_dict({"inputs": ["a"], "output_dir": "out"})
    # caches written before the option still fit a run without it: the key is left out when unset
    assert "texture_region_min_cos" not in plain.content_settings("textures")
    region = PreprocessConfig.from_dict({"inputs": ["a"], "output_dir": "out", "texture_region_min_cos": 0.45})
    assert region.content_settings("textures")["texture_region_min_cos"] == 0.45
    assert "texture_region_min_cos" not in region.content_settings("frames")  # a reconstruction setting
    assert "texture_region_margin" not in region.content_settings("textures")  # 0, the default
    with_margin = PreprocessConfig.from_dict({"texture_region_min_cos": 0.45, "texture_region_margin": 2})
    assert with_margin.content_settings("textures")["texture_region_margin"] == 2
    with pytest.raises(PreprocessError, match="texture_region_margin"):
        PreprocessConfig.from_dict({"texture_region_margin": -1})


def test_reconstructor_choices_are_checked(world: Path, tmp_path: Path) -> None:
    with pytest.raises(PreprocessError, match="needs reconstructor_path"):
        _config(world, tmp_path, reconstructor="deep3d", stage="reconstruct")
    with pytest.raises(PreprocessError, match="not found"):
        plan_run(_config(world, tmp_path, reconstructor="checkpoint", reconstructor_path=str(tmp_path / "x.ckpt"),
                         stage="reconstruct"))
    with pytest.raises(PreprocessError, match="stage must be"):
        _config(world, tmp_path, stage="everything")


# --------------------------------------------------------------------------- FFHQ filter
def test_ffhq_filter_rejects_the_worlds_bad_stills(world: Path, tmp_path: Path) -> None:
    config = _config(world, tmp_path / "out", input_kind="ffhq", stage="reconstruct", views=None, max_frames=None)
    summary = run_preprocess(config)
    flags = json.loads((world / "truth" / "ffhq.json").read_text())["bad_images"]
    reader = CacheReader.open(tmp_path / "out" / "textures")
    rejected = {clip: entry.report["reasons"] for clip, entry in reader.reports.items() if entry.skipped}
    expected = {Path(rel).relative_to("ffhq/images64x64").with_suffix("").as_posix(): kind
                for rel, kind in flags.items()}
    for clip, kind in expected.items():
        assert kind in rejected.get(clip, []), (clip, rejected)
    assert set(rejected) == set(expected)  # every good still kept
    assert summary.filter_counts["rejected"] == 3 and summary.filter_counts["kept"] == 9
    assert summary.filter_counts["large_pose"] == 1 and summary.filter_counts["occluded"] == 1
    assert len(reader.clips) == 9 and reader.attributes["quality_filter"]["max_abs_yaw_deg"] == 30.0
    measures = json.loads((tmp_path / "out" / "quality_filter.json").read_text())
    assert measures["counts"]["rejected"] == 3 and len(measures["images"]) == 12
    occlusion = {clip: entry["quality"][0]["occluded_fraction"] for clip, entry in measures["images"].items()}
    (occluded,) = [clip for clip, kind in expected.items() if kind == "occluded"]
    assert max(occlusion, key=occlusion.get) == occluded  # the photometric residual singles it out
    assert sorted(occlusion.values())[-2] < 0.5 * occlusion[occluded]
    assert len(reader.shards) == 1  # images are grouped into shards


def _render(model: MorphableModel, *, yaw_deg: float = 0.0, light: float = 0.8, size: int = 96) -> tuple:
    from emoedit.render import MeshRenderer

    layout = model.layout
    coeffs = layout.zeros(1) if hasattr(layout, "zeros") else torch.zeros(1, layout.size)
    parts = layout.split(coeffs)
    gamma = torch.zeros(1, 27)
    gamma[:, 0::9] = light - 0.8  # the DC band of each colour (Deep3D adds 0.8)
    coeffs = layout.join(dataclasses.replace(parts, angle=torch.tensor([[0.0, math.radians(yaw_deg), 0.0]]), gamma=gamma))
    face = model(coeffs, PerspectiveCamera().scaled(size))
    image = MeshRenderer(image_size=size, backend="torch", background=0.3)(
        face.vertices_screen, model.triangles, vertex_colors=face.vertex_colors).image
    return image, face.landmarks


def test_filter_rejects_a_large_pose_and_a_dark_face() -> None:
    model = MorphableModel.procedural()
    template3d = model.mean_shape[model.landmark_ids]
    config = FaceFilterConfig()
    for kwargs, reason in (({}, None), ({"yaw_deg": 50.0}, "large_pose"), ({"light": 0.1}, "dark")):
        image, landmarks = _render(model, **kwargs)
        (quality,) = assess_faces(image, landmarks, template3d)  # pose from the landmarks alone
        reasons = reject_reasons(quality, config)
        assert (reason in reasons) if reason else reasons == (), (kwargs, quality)
    # the pose fit is a known-answer estimate
    image, landmarks = _render(model, yaw_deg=20.0)
    pose = estimate_head_pose(landmarks, template3d)
    assert abs(math.degrees(float(pose.angle[0, 1])) - 20.0) < 3.0


# --------------------------------------------------------------------------- mouths
def test_polygon_mask_and_region_removal_known_answer() -> None:
    square = torch.tensor([[[2.0, 2.0], [5.0, 2.0], [5.0, 5.0], [2.0, 5.0]]])
    mask = polygon_mask(square, (8, 8))[0, 0]
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:5, 2:5] = True  # pixel centres 2, 3, 4 (edges at 5 belong to the outside)
    assert torch.equal(mask, inside)
    line = torch.tensor([[[1.0, 4.0], [6.0, 4.0], [6.0, 4.0], [1.0, 4.0]]])  # a closed mouth: no area
    assert not bool(polygon_mask(line, (8, 8)).any())
    assert int(polygon_mask(line, (8, 8), dilate_px=1.0).sum()) == 3 * 6 + 2  # rows 3-5 of x 1..6, and (0, 4), (7, 4)
    image = torch.rand(1, 3, 8, 8)
    removed = remove_region(image, mask[None, None], fill=0.0)
    assert torch.equal(removed[:, :, ~mask], image[:, :, ~mask]) and float(removed[:, :, mask].abs().max()) == 0


def test_extract_mouths_aligns_the_mouth_and_masks_the_open_lips() -> None:
    model = MorphableModel.procedural()
    layout = model.layout
    names = model.expression_names or ()
    exp = torch.zeros(1, layout.exp)
    for au, value in (("AU25", 1.0), ("AU26", 0.8)):
        if au in names:
            exp[0, names.index(au)] = value
    coeffs = layout.join(dataclasses.replace(layout.split(torch.zeros(1, layout.size)), exp_coeff=exp))
    face = model(coeffs, PerspectiveCamera().scaled(128))
    image = torch.rand(1, 3, 128, 128)
    mouths = extract_mouths(image, face.landmarks, crop_size=48)
    corners = mouths.landmarks[0, [0, 6]]  # iBUG 49 and 55
    assert abs(float(corners[0, 1] - corners[1, 1])) < 0.5  # mouth-corner line horizontal
    assert float(corners[1, 0] - corners[0, 0]) > 10.0  # left corner left of the right one, mouth a good size
    torch.testing.assert_close(mouths.landmarks[0].mean(0), torch.tensor([23.5, 23.5]), atol=0.5, rtol=0)  # centred
    assert int(mouths.mask.sum()) > 20  # the open inner lips enclose a region
    differs = (mouths.crop != mouths.crop_removed).any(dim=1, keepdim=True)
    assert not bool((differs & ~mouths.mask).any())


def test_scaled_detector_maps_detections_back() -> None:
    from emoedit.data.detection import GivenLandmarksDetector

    points = np.array([[x, y] for x, y in zip(np.linspace(100, 300, 68), np.linspace(150, 350, 68))], np.float32)

    class Halving(GivenLandmarksDetector):  # knows the landmarks of the downscaled frame
        def _detect(self, image, frame_index):
            assert image.shape[:2] == (200, 200)
            return super()._detect(image, frame_index)

    small = (points + 0.5) / 2.0 - 0.5
    detector = ScaledDetector(Halving(small[None]), max_side=200)
    (found,) = detector.detect(np.zeros((400, 400, 3), np.uint8), frame_index=0)
    np.testing.assert_allclose(found.landmarks68, points, atol=1e-4)


# --------------------------------------------------------------------------- real videos
def _fixture_videos(fixtures_dir: Path) -> tuple[Path, ...]:
    videos = tuple(sorted((fixtures_dir / "videos").glob("*.mp4")))
    if not videos:
        pytest.skip(f"no fixture videos in {fixtures_dir / 'videos'}")
    return videos


@pytest.mark.timeout(600)
def test_real_fixture_videos(fixtures_dir: Path, tmp_path: Path) -> None:
    videos = _fixture_videos(fixtures_dir)
    config = PreprocessConfig(input_kind="videos", inputs=tuple(map(str, videos)), output_dir=str(tmp_path / "out"),
                              stage="align", max_frames=25, crop_size=112, progress=False, fail_fast=True)
    summary = run_preprocess(config)
    assert summary.clips_failed == 0 and summary.frames_used == 25 * len(videos)
    assert summary.records_written >= 0.95 * summary.frames_used  # faces found in >= 95 % of the frames
    recon = dataclasses.replace(config, stage="reconstruct", max_frames=2, texture_size=64, mouth_crop_size=48,
                                reconstructor="fitter", fitter={"pose_steps": 10, "shape_steps": 10, "photo_steps": 3})
    summary = run_preprocess(recon)
    assert summary.clips_written == len(videos) and summary.clips_failed == 0
    textures = CacheReader.open(tmp_path / "out" / "textures")
    for clip in textures.clips:
        data = textures.load_clip(clip)
        assert float(data["visibility"].float().mean()) > 0.5
        assert 40 < float(data["uv_texture"].float().mean()) < 230


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_real_fixture_videos_full_clips(fixtures_dir: Path, tmp_path: Path) -> None:
    videos = _fixture_videos(fixtures_dir)
    config = PreprocessConfig(input_kind="videos", inputs=tuple(map(str, videos)), output_dir=str(tmp_path / "out"),
                              stage="all", crop_size=224, texture_size=128, progress=False, fail_fast=True,
                              fitter=FAST_FITTER)
    summary = run_preprocess(config)
    assert summary.clips_failed == 0 and summary.records_written >= 0.95 * summary.frames_used
    assert len(CacheReader.open(tmp_path / "out" / "mouths").clips) == len(videos)
