"""`VideoEditor` end to end on a tiny rendered talking head with tiny freshly initialised parts.

The parts are untrained (so the *look* of an edit means nothing here); the tests check
what the pipeline guarantees whatever the weights: the output's frames, fps, size and audio,
the render round trip with every edit off, faceless frames passing through bit for bit,
what each switch changes (through ``save_intermediates``), schedules, chunking and errors.
Frames handed to the encoder are captured (``CapturingWriter``) so comparisons are exact
and not blurred by the codec.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emoedit.data.detection import GivenLandmarksDetector
from emoedit.editing.emotion_code import EMOTIONS, EmotionSchedule
from emoedit.editing.smoothing import temporal_smooth
from emoedit.editing.teeth_completion import TeethCompleter
from emoedit.editing.texture_editor import TextureEditor
from emoedit.face_model import MorphableModel, PerspectiveCamera
from emoedit.networks.geometry_editor import GeometryGenerator
from emoedit.networks.psp_encoder import PSPEncoder
from emoedit.networks.stylegan2 import StyleGAN2Generator
from emoedit.networks.subject_classifier import SubjectClassifier
from emoedit.pipeline import editor as editor_module
from emoedit.pipeline.editor import EditError, EditOptions, VideoEditor
from emoedit.pipeline.intermediates import EDIT_DATA_FILE
from emoedit.pipeline.parts import EditParts, PipelineSettings
from emoedit.pipeline.stage_timer import EDIT_STAGES
from emoedit.reconstruction import FitterConfig, FittingReconstructor
from emoedit.reconstruction.reconstructor import Reconstructor
from emoedit.render.renderer import MeshRenderer
from emoedit.video import VideoError, VideoWriter, probe_video, read_video, write_video

SUBJECTS = ("s1", "s2", "s3")
HEIGHT, WIDTH, RENDER, X_OFFSET = 96, 80, 96, 8  # frames are a 96×80 window of a 96×96 render
FPS = 10
AUDIO_RATE = 16000
W_DIM = 16


# --------------------------------------------------------------------------- tiny parts
class PerFrameFitter(Reconstructor):
    """The project's fitter run on every frame alone (landmark stages only): results do not depend on chunking."""

    def __init__(self, face_model: MorphableModel, crop_size: int) -> None:
        self.inner = FittingReconstructor(face_model=face_model, crop_size=crop_size,
                                          config=FAST_FIT)
        self.face_model = face_model
        self.camera = self.inner.camera

    def reconstruct_clip(self, crops: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        self._check_inputs(crops, landmarks)
        return torch.cat([self.inner.reconstruct_clip(crops[i : i + 1], landmarks[i : i + 1])
                          for i in range(crops.shape[0])])


def tiny_model() -> MorphableModel:
    return MorphableModel.procedural(resolution=24, num_identity=4, num_albedo=2)


FAST_FIT = FitterConfig(pose_steps=12, shape_steps=12, photo_steps=0)


def tiny_parts(*, geometry_identity: bool = True, teeth: bool = True, solved: tuple[str, ...] | None = None,
               per_frame_fit: bool = False, seed: int = 0) -> EditParts:
    """Tiny untrained parts; ``geometry_identity``: the zero-initialised G (an exact no-op edit);
    ``per_frame_fit``: a reconstructor whose results do not depend on how frames are chunked."""
    torch.manual_seed(seed)
    model = tiny_model()
    layout = model.layout
    settings = PipelineSettings(crop_size=32, texture_size=32, texture_crop_size=64, mouth_crop_size=32,
                                smoothing_half_window=1)
    generator = StyleGAN2Generator(z_dim=W_DIM, w_dim=W_DIM, img_resolution=32, img_channels=3, channel_base=128,
                                   channel_max=16, mapping_layers=2).eval()
    tiny_trunk = dict(input_size=32, depth=10, widths=(8, 16, 32, 64))
    encoder = PSPEncoder(num_ws=generator.num_ws, w_dim=W_DIM, **tiny_trunk).eval()
    classifier = SubjectClassifier(subjects=SUBJECTS, **tiny_trunk).eval()
    directions = 0.5 * torch.randn(len(SUBJECTS), len(EMOTIONS), generator.num_ws, W_DIM)
    texture_editor = TextureEditor(directions=directions, subjects=SUBJECTS, solved=solved)
    geometry = GeometryGenerator(id_dim=layout.id, exp_dim=layout.exp, hidden_dim=16, num_layers=2,
                                 zero_init_output=geometry_identity).eval()
    completer = None
    if teeth:
        teeth_g = StyleGAN2Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=3, channel_base=64,
                                     channel_max=8, mapping_layers=1)
        teeth_e = PSPEncoder(num_ws=teeth_g.num_ws, w_dim=8, input_size=16, depth=10, widths=(8, 8, 8, 8))
        completer = TeethCompleter(encoder=teeth_e, generator=teeth_g, crop_size=32, feather_px=3.0)
    reconstructor = (PerFrameFitter(model, settings.crop_size) if per_frame_fit
                     else FittingReconstructor(face_model=model, crop_size=settings.crop_size, config=FAST_FIT))
    return EditParts(face_model=model, reconstructor=reconstructor, generator=generator,
                     encoder=encoder, classifier=classifier, texture_editor=texture_editor, geometry=geometry,
                     teeth=completer, settings=settings, provenance={"test": {"seed": seed}})


# --------------------------------------------------------------------------- tiny video
class TalkingHead:
    """A rendered clip: the file, its true landmarks and face masks (frame pixels)."""

    def __init__(self, path: Path, landmarks: torch.Tensor, masks: torch.Tensor) -> None:
        self.path = path
        self.landmarks = landmarks  # (T, 68, 2)
        self.masks = masks  # (T, H, W) bool: where the face was rendered

    def detector(self, faceless: tuple[int, ...] = ()) -> GivenLandmarksDetector:
        count = len(self.landmarks)
        return GivenLandmarksDetector([None if t in faceless else self.landmarks[t] for t in range(count)])


def render_talking_head(path: Path, *, num_frames: int = 10, audio: bool = True, width: int = WIDTH) -> TalkingHead:
    """A procedural face that opens its mouth and turns its head a little, over a noise background, with a tone."""
    model = tiny_model()
    layout = model.layout
    gen = torch.Generator().manual_seed(3)
    parts = layout.split(layout.zeros(num_frames))
    exp = torch.zeros(num_frames, layout.exp)
    names = list(model.expression_names or [])
    jaw = names.index("AU26") if "AU26" in names else 0
    exp[:, jaw] = 0.6 * torch.sin(torch.linspace(0, math.pi, num_frames)) ** 2
    angle = torch.zeros(num_frames, 3)
    angle[:, 1] = torch.linspace(-0.15, 0.15, num_frames)
    gamma = torch.zeros(num_frames, layout.gamma)
    gamma[:, [0, 9, 18]] = 0.3
    tex = torch.randn(num_frames, layout.tex, generator=gen).mean(0, keepdim=True).expand(num_frames, -1) * 0.5
    coeffs = layout.join(type(parts)(id_coeff=parts.id_coeff, exp_coeff=exp, tex_coeff=tex, angle=angle,
                                     gamma=gamma, trans=parts.trans))
    camera = PerspectiveCamera().scaled(RENDER)
    with torch.no_grad():
        face = model(coeffs, camera)
        out = MeshRenderer(image_size=RENDER, backend="torch")(face.vertices_screen, model.triangles,
                                                                 vertex_colors=face.vertex_colors)
    background = torch.rand(1, 3, RENDER // 8, RENDER // 8, generator=gen)
    background = torch.nn.functional.interpolate(background, size=(RENDER, RENDER), mode="bilinear")
    image = out.image * out.mask + background * (1 - out.mask)
    window = slice(X_OFFSET, X_OFFSET + width)
    frames = (image[..., window].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    landmarks = face.landmarks - torch.tensor([X_OFFSET, 0.0])
    t = np.arange(int(num_frames / FPS * AUDIO_RATE)) / AUDIO_RATE
    samples = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None]
    write_video(path, frames, fps=FPS, crf=12, preset="ultrafast", pix_fmt="yuv420p" if width % 2 == 0 else "yuv444p",
                audio_samples=(samples, AUDIO_RATE) if audio else None)
    return TalkingHead(path, landmarks.float(), out.mask[:, 0, :, window] > 0.5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> TalkingHead:
    return render_talking_head(tmp_path_factory.mktemp("clip") / "input.mp4")


class CapturingWriter(VideoWriter):
    """A VideoWriter that also keeps every frame and chunk size it is given."""

    frames: list[np.ndarray] = []
    chunk_sizes: list[int] = []

    def write(self, frames) -> None:  # noqa: ANN001
        CapturingWriter.frames.append(np.array(frames, copy=True))
        CapturingWriter.chunk_sizes.append(len(frames))
        super().write(frames)


@pytest.fixture
def capture(monkeypatch):
    CapturingWriter.frames, CapturingWriter.chunk_sizes = [], []
    monkeypatch.setattr(editor_module, "VideoWriter", CapturingWriter)
    return CapturingWriter


def quiet(**kw) -> EditOptions:
    kw.setdefault("preset", "ultrafast")
    return EditOptions(progress=False, **kw)


def run(clip: TalkingHead, out: Path, schedule: str = "happy 0.8", *, parts: EditParts | None = None,
        faceless: tuple[int, ...] = (), **options):
    editor = VideoEditor(parts=parts or tiny_parts(), options=quiet(**options), detector=clip.detector(faceless))
    return editor.edit(clip.path, EmotionSchedule.parse(schedule), out)


def edit_data(folder: Path) -> dict:
    return torch.load(folder / EDIT_DATA_FILE, weights_only=True)


# --------------------------------------------------------------------------- output format
def test_output_keeps_frames_fps_size_and_audio(clip, tmp_path, capture):
    out = tmp_path / "out.mp4"
    report = run(clip, out)
    source, result = probe_video(clip.path), probe_video(out)
    assert (result.num_frames, result.fps, result.width, result.height) == (
        source.num_frames, source.fps, source.width, source.height)
    assert result.audio_codec == source.audio_codec == "aac"
    assert result.audio_sample_rate == source.audio_sample_rate
    assert result.audio_duration_s == pytest.approx(source.audio_duration_s, abs=0.05)
    assert report.num_frames == 10 and report.frames_with_face == 10 and report.passthrough_frames == []
    assert report.fps == pytest.approx(FPS)
    assert tuple(report.seconds) == EDIT_STAGES and all(v >= 0 for v in report.seconds.values())
    for stage in ("decode", "detect", "align", "recon", "uv", "encoder", "classifier", "generator", "render",
                  "teeth", "paste", "encode"):
        assert report.seconds[stage] > 0, stage
    assert report.details["texture_edit_mode"] == "classifier" and report.details["teeth_completion"]
    json.dumps(report.to_json())
    assert sum(c.shape[0] for c in capture.frames) == 10
    assert not list(tmp_path.glob(".out*")), "no temporary file may be left behind"


def test_input_without_audio_gives_output_without_audio(tmp_path, capture):
    silent = render_talking_head(tmp_path / "silent.mp4", num_frames=4, audio=False)
    run(silent, tmp_path / "out.mp4", teeth=False)
    assert not probe_video(tmp_path / "out.mp4").has_audio


def test_odd_frame_sizes_are_kept_exactly(tmp_path, capture):
    odd = render_talking_head(tmp_path / "odd.mp4", num_frames=3, width=79)
    report = run(odd, tmp_path / "out.mp4", teeth=False)
    assert (probe_video(tmp_path / "out.mp4").width, probe_video(tmp_path / "out.mp4").height) == (79, HEIGHT)
    assert any("yuv444p" in w for w in report.warnings)


# --------------------------------------------------------------------------- round trip and pass-through
def test_every_edit_off_is_a_render_round_trip(clip, tmp_path, capture):
    run(clip, tmp_path / "out.mp4", edit_shape=False, edit_texture=False, teeth=False, smoothing=False)
    decoded, _ = read_video(clip.path)
    output = np.concatenate(capture.frames)
    assert output.shape == decoded.shape
    face = clip.masks.numpy()
    inner = torch.nn.functional.max_pool2d((~clip.masks).float()[:, None], 5, 1, 2)[:, 0].numpy() < 0.5  # eroded
    error = np.abs(output.astype(np.float32) - decoded.astype(np.float32)) / 255.0
    assert error[inner].mean() < 0.03, "the re-rendered face must match the input face"
    grown = torch.nn.functional.max_pool2d(clip.masks.float()[:, None], 9, 1, 4)[:, 0].numpy() > 0.5
    assert np.array_equal(output[~grown], decoded[~grown]), "pixels away from the face must be untouched"
    assert face.any() and (~grown).any()


def test_faceless_frames_pass_through_bit_exact_and_are_reported(clip, tmp_path, capture):
    faceless = (0, 1, 9)
    report = run(clip, tmp_path / "out.mp4", faceless=faceless, batch_size=4)
    decoded, _ = read_video(clip.path)
    output = np.concatenate(capture.frames)
    assert report.passthrough_frames == list(faceless) and report.frames_with_face == 7
    for t in faceless:
        assert np.array_equal(output[t], decoded[t]), t
    assert any("pass through unchanged" in w for w in report.warnings)
    assert report.details["tracking"]["unfilled_ranges"] == [[0, 1], [9, 9]]


def test_short_gaps_are_interpolated_and_edited(clip, tmp_path, capture):
    report = run(clip, tmp_path / "out.mp4", faceless=(4, 5), teeth=False)
    assert report.passthrough_frames == [] and report.frames_with_face == 10
    assert report.details["tracking"]["interpolated_ranges"] == [[4, 5]]


# --------------------------------------------------------------------------- switches
def test_shape_switch(clip, tmp_path, capture):
    parts = tiny_parts(geometry_identity=False)
    run(clip, tmp_path / "a.mp4", parts=parts, teeth=False, save_intermediates=str(tmp_path / "shape"))
    run(clip, tmp_path / "b.mp4", parts=parts, teeth=False, edit_shape=False,
        save_intermediates=str(tmp_path / "noshape"))
    shape, noshape = edit_data(tmp_path / "shape"), edit_data(tmp_path / "noshape")
    layout = parts.face_model.layout
    assert torch.equal(noshape["coeffs_edited"], noshape["coeffs"])
    moved = shape["coeffs_edited"] - shape["coeffs"]
    assert moved[:, layout.slices["exp"]].abs().max() > 1e-3
    for block in ("tex", "angle", "gamma", "trans"):  # the geometry editor never touches pose, albedo, light
        assert torch.equal(moved[:, layout.slices[block]], torch.zeros_like(moved[:, layout.slices[block]])), block


def test_texture_switches_and_modes(clip, tmp_path, capture):
    parts = tiny_parts()
    folders = {name: tmp_path / name for name in ("eq4", "mean", "subject", "notex")}
    run(clip, tmp_path / "1.mp4", parts=parts, teeth=False, save_intermediates=str(folders["eq4"]))
    run(clip, tmp_path / "2.mp4", parts=parts, teeth=False, use_classifier=False,
        save_intermediates=str(folders["mean"]))
    run(clip, tmp_path / "3.mp4", parts=parts, teeth=False, subject="s2", save_intermediates=str(folders["subject"]))
    run(clip, tmp_path / "4.mp4", parts=parts, teeth=False, edit_texture=False,
        save_intermediates=str(folders["notex"]))
    eq4, mean, subject, notex = (edit_data(folders[k]) for k in ("eq4", "mean", "subject", "notex"))
    half = 1
    code = torch.zeros(len(EMOTIONS))
    code[EMOTIONS.index("happy")] = 0.8
    directions = parts.texture_editor.directions
    # eq. 4: one identity per video, the softmax weights averaged over its frames
    assert eq4["texture_edit_mode"] == "classifier"
    weights = eq4["subject_weights_mean"]
    assert torch.allclose(weights, eq4["subject_weights"].mean(0) / eq4["subject_weights"].mean(0).sum())
    expected = torch.einsum("n,e,nekc->kc", weights, code, directions)
    x0 = temporal_smooth(eq4["wplus"], half)
    assert torch.allclose(eq4["wplus_edited"] - x0, expected.expand_as(x0), atol=1e-5)
    # the ablation: the mean direction, no classifier run
    assert mean["texture_edit_mode"] == "mean" and mean["subject_weights"] is None
    assert torch.allclose(mean["wplus_edited"] - x0, torch.einsum("e,ekc->kc", code, directions.mean(0)), atol=1e-5)
    # eq. 3 with a named subject
    assert subject["texture_edit_mode"] == "subject"
    assert torch.allclose(subject["wplus_edited"] - x0, torch.einsum("e,ekc->kc", code, directions[1]), atol=1e-5)
    # --no-texture: nothing encoded; the rendered texture is the frame's own
    assert notex["texture_edit_mode"] == "off" and notex["wplus"] is None and notex["wplus_edited"] is None
    rendered = sorted((folders["notex"] / "textures").glob("*.png"))
    extracted = sorted((folders["notex"] / "extracted").glob("*.png"))
    assert len(rendered) == len(extracted) == 10
    assert rendered[3].read_bytes() == extracted[3].read_bytes()
    assert len(list((folders["eq4"] / "renders").glob("*.png"))) == 10


def test_eq4_temperature_reaches_the_edit_and_the_record(clip, tmp_path, capture):
    from emoedit.editing.subject_temperature import temper_weights

    parts = tiny_parts()
    parts.texture_editor.subject_temperature = 4.0  # as TextureEditor.from_directions sets it from the file
    run(clip, tmp_path / "1.mp4", parts=parts, teeth=False, save_intermediates=str(tmp_path / "eq4"))
    eq4 = edit_data(tmp_path / "eq4")
    averaged = eq4["subject_weights"].mean(0)
    averaged = averaged / averaged.sum()
    used = temper_weights(averaged[None], 4.0)[0]
    assert torch.allclose(eq4["subject_weights_mean"], used, atol=1e-6)
    assert not torch.allclose(used, averaged, atol=1e-3)  # τ changed the mixture
    code = torch.zeros(len(EMOTIONS))
    code[EMOTIONS.index("happy")] = 0.8
    expected = torch.einsum("n,e,nekc->kc", used, code, parts.texture_editor.directions)
    x0 = temporal_smooth(eq4["wplus"], 1)
    assert torch.allclose(eq4["wplus_edited"] - x0, expected.expand_as(x0), atol=1e-5)


def test_smoothing_switch(clip, tmp_path, capture):
    parts = tiny_parts(geometry_identity=False)
    run(clip, tmp_path / "a.mp4", parts=parts, teeth=False, smoothing=False, save_intermediates=str(tmp_path / "raw"))
    run(clip, tmp_path / "b.mp4", parts=parts, teeth=False, smoothing_half_window=2,
        save_intermediates=str(tmp_path / "smooth"))
    raw, smooth = edit_data(tmp_path / "raw"), edit_data(tmp_path / "smooth")
    assert raw["smoothing_half_window"] == 0 and smooth["smoothing_half_window"] == 2
    exp = parts.face_model.layout.slices["exp"]
    ident = parts.face_model.layout.slices["id"]
    assert torch.allclose(smooth["coeffs_edited"][:, exp], temporal_smooth(raw["coeffs_edited"][:, exp], 2), atol=1e-5)
    assert torch.equal(smooth["coeffs_edited"][:, ident], raw["coeffs_edited"][:, ident])  # identity never smoothed
    assert torch.allclose(smooth["wplus_edited"], temporal_smooth(raw["wplus_edited"], 2), atol=1e-5)


def test_intensity_zero_edits_nothing(clip, tmp_path, capture):
    run(clip, tmp_path / "a.mp4", "neutral", teeth=False, smoothing=False, save_intermediates=str(tmp_path / "d"))
    data = edit_data(tmp_path / "d")
    assert torch.equal(data["emotion_codes"], torch.zeros(10, len(EMOTIONS)))
    assert torch.equal(data["wplus_edited"], data["wplus"])
    assert torch.equal(data["coeffs_edited"], data["coeffs"])  # the zero-initialised G is the identity


def test_residual_mode_at_intensity_zero_renders_the_extracted_texture(clip, tmp_path, capture):
    run(clip, tmp_path / "a.mp4", "happy 0", teeth=False, texture_mode="residual",
        save_intermediates=str(tmp_path / "d"))
    from PIL import Image

    for name in ("000002.png", "000007.png"):
        rendered = np.asarray(Image.open(tmp_path / "d" / "textures" / name), dtype=np.int16)
        extracted = np.asarray(Image.open(tmp_path / "d" / "extracted" / name), dtype=np.int16)
        assert np.abs(rendered - extracted).max() <= 1


def test_schedule_changes_the_code_over_time(clip, tmp_path, capture):
    report = run(clip, tmp_path / "a.mp4", "0s neutral; 0.5s happy 1.0; 0.8s 0.6 sad + 1.5 angry", teeth=False,
                 save_intermediates=str(tmp_path / "d"))
    codes = edit_data(tmp_path / "d")["emotion_codes"]
    happy, sad, angry = (EMOTIONS.index(n) for n in ("happy", "sad", "angry"))
    assert torch.equal(codes[0], torch.zeros(len(EMOTIONS)))
    assert codes[2, happy] == pytest.approx(0.4)  # frame 2 = 0.2 s: 40 % of the way to happy 1.0
    assert codes[5, happy] == pytest.approx(1.0)
    assert codes[9, sad] == pytest.approx(0.6) and codes[9, angry] == pytest.approx(1.5)
    assert any("beyond the trained range" in w for w in report.warnings)  # 1.5 > 1.0: warned, not refused
    data = edit_data(tmp_path / "d")
    change = (data["wplus_edited"] - data["wplus"]).flatten(1).norm(dim=1)
    assert change[9] > change[5] > change[0]


def test_feathered_face_mask_known_answer():
    from emoedit.pipeline.compositing import feathered_face_mask

    render = torch.zeros(1, 1, 64, 64)
    render[..., 16:48, 16:48] = 1.0
    render[..., 30:34, 26:38] = 0.0  # an open mouth: a hole in the mesh
    lips = torch.tensor([[[26.0, 30.0], [30, 29.5], [34, 29.5], [37, 30], [37, 33], [34, 33.5], [30, 33.5], [26, 33]]])
    hard = feathered_face_mask(render, lips, erode_px=3, feather_px=0)
    expected = torch.zeros_like(render)
    expected[..., 19:45, 19:45] = 1.0  # eroded at the outer border only: the closed mouth does not erode
    expected[..., 30:34, 26:38] = 0.0  # the hole itself is never pasted (the frame shows until teeth completion)
    assert torch.equal(hard, expected)
    soft = feathered_face_mask(render, lips, erode_px=4, feather_px=4)
    assert float(soft.min()) >= 0 and float(soft.max()) <= 1
    assert float(soft[..., 16, 32]) < 0.05 and float(soft[..., 27, 32]) > 0.99  # ~0 at the border, 1 inside
    assert float(soft[..., 29, 32]) > 0.99  # right next to the mouth hole: not feathered
    assert torch.equal(soft * (1 - render), torch.zeros_like(soft))  # nothing outside the mesh


# --------------------------------------------------------------------------- chunking
def test_pass_two_runs_chunk_by_chunk_with_the_same_result(clip, tmp_path, capture):
    parts = tiny_parts(geometry_identity=False, per_frame_fit=True)
    run(clip, tmp_path / "a.mp4", parts=parts, batch_size=3)
    small = np.concatenate(capture.frames)
    assert capture.chunk_sizes == [3, 3, 3, 1]
    capture.frames, capture.chunk_sizes = [], []
    run(clip, tmp_path / "b.mp4", parts=parts, batch_size=16)
    assert capture.chunk_sizes == [10]
    large = np.concatenate(capture.frames)
    assert np.abs(small.astype(np.int16) - large.astype(np.int16)).max() <= 2


@pytest.mark.slow
def test_real_clip_round_trip_with_dlib(fixtures_dir, tmp_path, capture):
    """A real 8 s talking head, dlib detection (the default detector), every edit off: the face is
    found in every frame, re-rendered close to the input, and the frame corners are untouched."""
    source = fixtures_dir / "videos" / "WDA_KatieHill_000.mp4"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    parts = tiny_parts(teeth=False)
    parts.settings = PipelineSettings(crop_size=64, texture_size=64, texture_crop_size=128)
    parts.reconstructor = FittingReconstructor(face_model=parts.face_model, crop_size=64, config=FAST_FIT)
    options = quiet(edit_shape=False, edit_texture=False, teeth=False, batch_size=32)
    report = VideoEditor(parts=parts, options=options).edit(source, "happy", tmp_path / "out.mp4")
    decoded, info = read_video(source)
    output = np.concatenate(capture.frames)
    assert report.frames_with_face == info.num_frames == output.shape[0]
    error = np.abs(output.astype(np.float32) - decoded.astype(np.float32))
    assert error.mean() < 8.0  # whole frames; the face is re-rendered from a 64² texture
    assert np.array_equal(output[:, :48, :48], decoded[:, :48, :48])


def move_parts(parts: EditParts, device: str) -> EditParts:
    """The same parts on ``device`` (modules moved in place)."""
    for module in (parts.face_model, parts.generator, parts.encoder, parts.classifier, parts.texture_editor,
                   parts.geometry, parts.teeth):
        if module is not None:
            module.to(device)
    parts.reconstructor.to(device)
    return parts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_edit_matches_cpu(clip, tmp_path, capture):
    run(clip, tmp_path / "cpu.mp4", parts=tiny_parts(geometry_identity=False, per_frame_fit=True), batch_size=4)
    on_cpu = np.concatenate(capture.frames)
    capture.frames = []
    parts = move_parts(tiny_parts(geometry_identity=False, per_frame_fit=True), "cuda")
    report = run(clip, tmp_path / "cuda.mp4", parts=parts, batch_size=4)
    on_cuda = np.concatenate(capture.frames)
    assert report.details["device"].startswith("cuda")
    difference = np.abs(on_cpu.astype(np.int16) - on_cuda.astype(np.int16))
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 8


# --------------------------------------------------------------------------- errors and warnings
def test_video_without_a_face_is_an_error_naming_the_file(clip, tmp_path):
    with pytest.raises(EditError, match="input.mp4: no usable face"):
        run(clip, tmp_path / "out.mp4", faceless=tuple(range(10)))
    assert not (tmp_path / "out.mp4").exists()


def test_missing_and_corrupt_videos_keep_the_video_error(clip, tmp_path):
    editor = VideoEditor(parts=tiny_parts(teeth=False), options=quiet(), detector=clip.detector())
    with pytest.raises(VideoError, match="nothing.mp4: file not found"):
        editor.edit(tmp_path / "nothing.mp4", "happy", tmp_path / "out.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.path.read_bytes()[:300])
    with pytest.raises(VideoError, match="broken.mp4"):
        editor.edit(broken, "happy", tmp_path / "out.mp4")


def test_bad_schedules_subjects_and_options(clip, tmp_path):
    parts = tiny_parts(teeth=False)
    with pytest.raises(ValueError, match="joyful"):
        editor = VideoEditor(parts=parts, options=quiet(), detector=clip.detector())
        editor.edit(clip.path, "joyful", tmp_path / "o.mp4")
    with pytest.raises(EditError, match="'nobody'.*s1, s2, s3"):
        VideoEditor(parts=parts, options=quiet(subject="nobody"), detector=clip.detector())
    with pytest.raises(EditError, match="texture_mode"):
        quiet(texture_mode="blend")
    with pytest.raises(EditError, match="exclude"):
        quiet(subject="s1", use_classifier=False)
    with pytest.raises(EditError, match="batch_size"):
        quiet(batch_size=0)
    with pytest.raises(EditError, match="overwrite"):
        VideoEditor(parts=parts, options=quiet(), detector=clip.detector()).edit(clip.path, "happy", clip.path)


def test_emotions_without_directions_are_refused_before_any_work(clip, tmp_path):
    parts = tiny_parts(teeth=False, solved=("happy",))
    editor = VideoEditor(parts=parts, options=quiet(), detector=clip.detector())
    with pytest.raises(EditError, match=r"no texture edit directions for \['sad'\]"):
        editor.edit(clip.path, "0s happy; 0.5s sad", tmp_path / "o.mp4")
    report = editor.edit(clip.path, "happy 0.5", tmp_path / "o.mp4")  # solved emotions still work
    assert report.frames_with_face == 10


def test_missing_teeth_part_is_a_warning(clip, tmp_path, capture):
    report = run(clip, tmp_path / "o.mp4", parts=tiny_parts(teeth=False), edit_texture=False)
    assert any("teeth" in w for w in report.warnings) and not report.details["teeth_completion"]
    assert report.seconds["teeth"] == 0.0 and report.seconds["encoder"] == 0.0


# --------------------------------------------------------------------------- warp compositing
def _warp_setup(size: int = 64, raster_side: int = 256):
    from emoedit.data.alignment import CropTransform
    from emoedit.pipeline.compositing import FaceCompositor

    model = tiny_model()
    compositor = FaceCompositor(face_model=model, crop_size=size, backend="torch", warp_raster_side=raster_side)
    coeffs = torch.zeros(2, model.layout.size)
    # The frame is the crop scaled by 2 and shifted: a similarity, as the editor's texture transforms are.
    transform = CropTransform(scale=torch.full((2,), 0.5), rotation=torch.zeros(2),
                              offset=torch.full((2, 2), -4.0), crop_size=(size, size), frame_size=(120, 136))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 136), indexing="ij")
    frames = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(40 * xx) * torch.cos(30 * yy)])[None].repeat(2, 1, 1, 1)
    return model, compositor, coeffs, transform, frames


@pytest.mark.parametrize("raster_side", [256, 24])  # the window rasterised at its own size / at a third of it
def test_warp_without_an_edit_returns_the_frames(raster_side):
    model, compositor, coeffs, transform, frames = _warp_setup(raster_side=raster_side)
    warped = compositor.warp(coeffs, coeffs, transform, frames)
    assert warped.frames.shape == frames.shape and warped.visible.any()
    # The same surface point is the same pixel. An upsampled identity field is still the identity inside the face
    # (bilinear upsampling of an affine field is exact); at the silhouette it averages fewer raster pixels.
    error = (warped.frames - frames).abs()
    y0, x0, h, w = warped.window
    inside = (warped.paste_mask > 0.99).expand(-1, 3, -1, -1)
    assert inside.any() and error[..., y0 : y0 + h, x0 : x0 + w][inside].max() < 1e-4
    assert error.max() < (1e-5 if raster_side == 256 else 0.03)
    assert warped.paste_mask.max() > 0.99  # ... although the face was pasted
    y0, x0, h, w = warped.window
    assert 0 <= y0 and 0 <= x0 and y0 + h <= 120 and x0 + w <= 136
    assert torch.allclose(warped.landmarks, warped.source_landmarks)


@pytest.mark.parametrize("raster_side", [256, 24])
def test_warp_moves_the_frame_pixels_with_the_mesh_and_adds_the_texture_change(raster_side):
    model, compositor, coeffs, transform, frames = _warp_setup(raster_side=raster_side)
    trans = model.layout.slices["trans"]
    moved = coeffs.clone()
    moved[:, trans.start] = 0.05  # the whole head 0.05 units to the right: a few frame pixels
    warped = compositor.warp(moved, coeffs, transform, frames)
    shift = (warped.landmarks - warped.source_landmarks).mean(dim=(0, 1))
    assert shift[0] > 2.0 and shift[1].abs() < 0.5 * shift[0]
    # Inside the face, output(p) = frame(p − shift): compare where the paste weight is 1.
    y0, x0, h, w = warped.window
    full = warped.paste_mask[0, 0] > 0.999
    assert full.sum() > 50
    ys, xs = torch.nonzero(full, as_tuple=True)
    grid = torch.stack([(xs + x0 - shift[0]) * 2 / 135 - 1, (ys + y0 - shift[1]) * 2 / 119 - 1], dim=-1)
    expected = torch.nn.functional.grid_sample(frames[:1], grid[None, None].float(), align_corners=True)[0, :, 0]
    got = warped.frames[0, :, ys + y0, xs + x0]
    moved_error = float((got - expected).abs().mean())
    unmoved_error = float((got - frames[0, :, ys + y0, xs + x0]).abs().mean())
    assert moved_error < 0.2 * unmoved_error, (moved_error, unmoved_error)  # the frame moved with the mesh
    # A constant texture change adds that constant inside the face (no geometry change).
    change = torch.full((2, 3, 8, 8), -0.1)
    tinted = compositor.warp(coeffs, coeffs, transform, frames, change_texture=change)
    inside = tinted.paste_mask > 0.999
    window = frames[..., y0 : y0 + tinted.window[2], x0 : x0 + tinted.window[3]]
    diff = (tinted.face - window).permute(1, 0, 2, 3)[:, inside[:, 0]]
    assert torch.allclose(diff, torch.full_like(diff, -0.1), atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        far = coeffs.clone()
        far[:, trans.start] = 50.0
        compositor.warp(far, far, transform, frames)


def test_teeth_gate_known_answer():
    from emoedit.pipeline.editor import teeth_gate

    source = torch.zeros(3, 68, 2)
    source[:, 54, 0] = 20.0  # a mouth 20 px wide
    moved = source.clone()
    moved[1, 60:68, 0] = 1.0  # inner lips 1 px = 0.05 mouth widths
    moved[2, 60:68, 1] = 3.0  # 3 px
    moved[:, :48] = 9.0  # other landmarks do not count
    assert torch.allclose(teeth_gate(moved, source, 0.1), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(teeth_gate(moved * 4, source * 4, 0.1), torch.tensor([0.0, 0.5, 1.0]))  # any resolution


def test_warp_mode_edits_off_leave_the_face_as_it_was(clip, tmp_path, capture):
    run(clip, tmp_path / "out.mp4", edit_shape=False, edit_texture=False, teeth=False, texture_mode="warp",
        preset="ultrafast", crf=0)
    decoded, _ = read_video(clip.path)
    output = np.concatenate(capture.frames).astype(np.int16)
    assert np.abs(output - decoded.astype(np.int16)).max() <= 1, "no edit: the frame's own pixels, not a re-render"
    report = run(clip, tmp_path / "edited.mp4", "happy 1.0", texture_mode="warp", teeth_gate=0.1,
                 save_intermediates=str(tmp_path / "d"))
    assert report.details["texture_mode"] == "warp" and report.frames_with_face == 10
    assert (tmp_path / "d" / "renders" / "000003.png").is_file()
    with pytest.raises(EditError, match="teeth_gate"):
        quiet(teeth_gate=0.1, texture_mode="residual")
    with pytest.raises(EditError, match="teeth_gate"):
        quiet(teeth_gate=-1.0, texture_mode="warp")


def test_teeth_gate_skips_frames_whose_lips_did_not_move(clip, tmp_path, capture):
    # Without a shape edit the lips stay put: the gate is 0 everywhere, so teeth completion changes nothing.
    run(clip, tmp_path / "gated.mp4", "happy 1.0", texture_mode="warp", edit_shape=False, teeth_gate=0.1, crf=0)
    gated = np.concatenate(capture.frames)
    capture.frames.clear()
    run(clip, tmp_path / "none.mp4", "happy 1.0", texture_mode="warp", edit_shape=False, teeth=False, crf=0)
    assert np.array_equal(gated, np.concatenate(capture.frames))
    capture.frames.clear()
    run(clip, tmp_path / "always.mp4", "happy 1.0", texture_mode="warp", edit_shape=False, crf=0)
    assert not np.array_equal(gated, np.concatenate(capture.frames)), "ungated completion does change the mouth"


@pytest.mark.parametrize("mode", ["residual", "replace"])
def test_face_region_edits_only_inside_and_feeds_the_networks_the_cache_view(clip, tmp_path, capture, mode):
    from PIL import Image

    from emoedit.texture.face_region import REGION_FILL_UINT8, face_region

    parts = tiny_parts()
    parts.settings = dataclasses.replace(parts.settings, texture_region_min_cos=0.45, texture_region_margin=1)
    editor = VideoEditor(parts=parts, options=quiet(teeth=False, texture_mode=mode,
                                                    save_intermediates=str(tmp_path / "d")),
                         detector=clip.detector())
    region = editor.analyzer.texture_region
    assert region is not None and 0.3 < region.float().mean() < 0.95
    assert torch.equal(region, face_region(parts.face_model, editor.analyzer.extractor.layout, 0.45, 1))
    # the networks see the rim filled, as the textures cache holds it; the input is not modified
    uv = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    view = editor.analyzer.cache_view(uv)
    assert torch.equal(view[:, :, region], uv[:, :, region])
    assert bool((view[:, :, ~region] == REGION_FILL_UINT8).all()) and not torch.equal(view, uv)
    editor.edit(clip.path, EmotionSchedule.parse("happy 1"), tmp_path / "out.mp4")
    inside_changed = False
    for name in ("000002.png", "000007.png"):
        rendered = np.asarray(Image.open(tmp_path / "d" / "textures" / name), dtype=np.int16)
        extracted = np.asarray(Image.open(tmp_path / "d" / "extracted" / name), dtype=np.int16)
        outside = ~region.numpy()
        assert np.abs(rendered - extracted)[outside].max() <= 1  # the rim is the frame's own texture
        inside_changed |= bool(np.abs(rendered - extracted)[region.numpy()].max() > 2)
    assert inside_changed  # while the face region is edited


def test_face_region_warp_mode_changes_nothing_on_the_rim(clip, tmp_path, capture):
    from PIL import Image

    parts = tiny_parts()
    parts.settings = dataclasses.replace(parts.settings, texture_region_min_cos=0.45)
    editor = VideoEditor(parts=parts, options=quiet(teeth=False, texture_mode="warp",
                                                    save_intermediates=str(tmp_path / "d")),
                         detector=clip.detector())
    region = editor.analyzer.texture_region.numpy()
    editor.edit(clip.path, EmotionSchedule.parse("happy 1"), tmp_path / "out.mp4")
    change = np.asarray(Image.open(tmp_path / "d" / "textures" / "000004.png"), dtype=np.int16)  # 128 = no change
    assert change.shape[:2] == region.shape
    assert np.abs(change - 128)[~region].max() <= 1 and np.abs(change - 128)[region].max() > 2
