"""Speed of ``emoedit edit``: per-stage and end-to-end frames/s, and peak memory against video length.

Builds the frozen parts of an edit at a named size preset (or loads a bundle), makes a
talking-head video of N frames, runs :meth:`VideoEditor.edit` on it and prints, per video
length, a table of every stage of :data:`~emoedit.pipeline.stage_timer.EDIT_STAGES`
(ms/frame, share of the stage sum, frames/s), the end-to-end figure (wall time of the
whole ``edit`` call), the time spent inside the networks (forward hooks on the
reconstruction regressor, texture encoder, classifier, t-GAN synthesis, geometry editor and
the teeth encoder / generator) and the peak memory, with the machine it ran on.

Presets (weights are random with a fixed seed: speed does not depend on training):

- ``demo``: the CPU sizes of ``configs/experiment/demo.yaml`` on the synthetic ``demo``
  world (128-px frames, 25 fps): t-GAN 64-px textures, W+ 10 × 64 (channel_max 64);
  encoder / classifier IR-SE10 widths 16-32-64-128 at 64 px; teeth t-GAN 32 px (W+ 8 × 64)
  with an IR-SE10 encoder at 32 px; reconstruction ``resnet_tiny`` on 128-px crops;
  geometry MLP 256 × 4; the world's face model (procedural, 2,957 vertices); textures
  sampled from 128-px crops (the preprocess default 2 × texture size).
- ``paper``: the paper's sizes, for a GPU: 512² textures (StyleGAN2 W+ 16 × 512,
  channel_max 512), IR-SE50 encoder at 256 px, IR-SE18 classifier at 128 px, ResNet-50
  reconstruction at 224², 128-px teeth t-GAN (W+ 12 × 512) with an IR-SE50 encoder, a
  procedural face at the BFM09 front face's size (≈ 35,700 vertices, 80 identity / 80
  albedo coefficients), 512² frames, textures sampled from 1024-px crops.

The video: ``--video`` (any clip, looped back and forth to N frames and resized to the
preset's frame size; its audio looped alike), else a neutral front clip of the demo world
at ``outputs/results/texture/world`` when present, else one rendered on the fly
(:class:`~emoedit.data.synthetic.clip_renderer.WorldRenderer`, demo preset, seed 0).

Memory: a sampler thread reads the resident set size every 5 ms during each edit (its
maximum is the run's peak RSS; ``ru_maxrss`` is the process high-water mark), and on CUDA
``torch.cuda.max_memory_allocated`` is reset before each run. Run the shorter video first:
equal peaks for 100 and 400 frames mean memory does not grow with video length.

Detection: dlib HOG + the 68-point predictor, as ``emoedit edit`` runs it, except that the
``demo`` preset upsamples once (``--detect-upsample 1``): the demo world's faces are ~64 px
and HOG at upsample 0 (the editor's default) finds none below ~80 px. The ``paper`` preset
detects on frames downscaled to 256 px (``--detect-max-side``, as ``emoedit edit
--detect-max-side 256``). ``--detector given`` runs dlib once before the timing and replays
its landmarks (no detection cost: the pipeline alone).

Usage (from the repository root):
    .venv/bin/python benchmarks/edit.py [--preset demo|paper] [--bundle DIR] [--device cpu|cuda]
        [--frames 100,400] [--repeats 2] [--threads 1] [--batch-size 16] [--bf16] [--no-teeth]
        [--detector dlib|given] [--detect-upsample N] [--detect-max-side N] [--video CLIP] [--json OUT.json]
    # the GPU figure:  .venv/bin/python benchmarks/edit.py --preset paper --device cuda --frames 200
    # a dry CPU check: .venv/bin/python benchmarks/edit.py --preset paper --device cpu --frames 4 --repeats 1

On the CPU the default is one torch thread (on a shared 2-core machine two threads made the
edit 4× slower, docs/PERFORMANCE.md). Each frame count is edited ``--repeats`` times after
one short warm-up edit (dlib's model load and first-call allocations are not charged); the
table shows the fastest repeat (the least disturbed one on a shared CPU) and the median
end-to-end figure beside it. The stage times are the editor's own
(:attr:`~emoedit.pipeline.editor.EditReport.seconds`): decoding runs ahead and encoding
behind the editing thread, so "decode" and "encode" are the time the editor waited for them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from emoedit.data.detection import FaceDetector  # noqa: E402
from emoedit.editing.emotion_code import EMOTIONS, EmotionSchedule  # noqa: E402
from emoedit.editing.teeth_completion import TeethCompleter  # noqa: E402
from emoedit.editing.texture_editor import TextureEditor  # noqa: E402
from emoedit.face_model import MorphableModel  # noqa: E402
from emoedit.machine import cores_available, machine_info  # noqa: E402
from emoedit.networks.geometry_editor import GeometryGenerator  # noqa: E402
from emoedit.networks.psp_encoder import PSPEncoder  # noqa: E402
from emoedit.networks.recon_regressor import ReconRegressor  # noqa: E402
from emoedit.networks.stylegan2 import StyleGAN2Generator  # noqa: E402
from emoedit.networks.subject_classifier import SubjectClassifier  # noqa: E402
from emoedit.pipeline.editor import DEFAULT_DLIB_MIN_FACE_PX, EditOptions, VideoEditor  # noqa: E402
from emoedit.pipeline.parts import EditParts, PipelineSettings  # noqa: E402
from emoedit.pipeline.stage_timer import EDIT_STAGES  # noqa: E402
from emoedit.reconstruction.reconstructor import RegressorReconstructor  # noqa: E402
from emoedit.video import VideoReader, VideoWriter, read_audio  # noqa: E402

DEMO_WORLD = REPO_ROOT / "outputs" / "results" / "texture" / "world"
DEMO_CLIP = Path("mead/M002/video/front/neutral/level_1/001.mp4")  # a neutral front clip of the demo world


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class GanSize:
    """A StyleGAN2 generator's size (the t-GAN or the teeth t-GAN)."""

    resolution: int  # output side R, pixels
    w_dim: int  # W width (= z_dim here)
    mapping_layers: int  # mapping network depth
    channel_base: int  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int  # widest synthesis block


@dataclass(frozen=True)
class TrunkSize:
    """An IR-SE trunk's size (pSp encoders, subject classifier)."""

    input_size: int  # side the images are resized to, pixels
    depth: int  # ResNet-IR depth (10, 18, 50, ...)
    widths: tuple[int, int, int, int]  # stage widths


@dataclass(frozen=True)
class EditPreset:
    """Sizes of every part of an edit (see the module docstring)."""

    name: str
    frame_size: int  # side of the square benchmark video, pixels
    face_resolution: int  # procedural face grid columns (48: 2,957 vertices; 169: ≈ 35,700)
    num_identity: int  # K_id of the procedural face
    num_albedo: int  # K_tex of the procedural face
    settings: PipelineSettings  # crop / texture / mouth sides
    recon_backbone: str  # ReconRegressor backbone (input side = settings.crop_size)
    tgan: GanSize  # texture t-GAN (resolution = settings.texture_size)
    encoder: TrunkSize  # texture encoder trunk
    classifier: TrunkSize  # subject classifier trunk
    teeth_tgan: GanSize  # teeth t-GAN
    teeth_encoder: TrunkSize  # teeth encoder trunk (input = the mouth crop side)
    geometry_hidden: int  # geometry MLP width
    geometry_layers: int  # geometry MLP depth
    num_subjects: int  # training subjects (classifier outputs, direction rows)
    detect_upsample: int  # dlib HOG upsampling ×2 steps (0 finds faces of ≳ 80 px, 1 of ≳ 40 px)
    detect_max_side: int | None  # default --detect-max-side (None: detect at full size)


PRESETS: dict[str, EditPreset] = {
    "demo": EditPreset(
        name="demo", frame_size=128, face_resolution=48, num_identity=40, num_albedo=40,
        settings=PipelineSettings(crop_size=128, texture_size=64, texture_crop_size=128, mouth_crop_size=32,
                                  mouth_width=0.5, smoothing_half_window=2),
        recon_backbone="resnet_tiny",
        tgan=GanSize(resolution=64, w_dim=64, mapping_layers=4, channel_base=1024, channel_max=64),
        encoder=TrunkSize(input_size=64, depth=10, widths=(16, 32, 64, 128)),
        classifier=TrunkSize(input_size=64, depth=10, widths=(16, 32, 64, 128)),
        teeth_tgan=GanSize(resolution=32, w_dim=64, mapping_layers=4, channel_base=1024, channel_max=64),
        teeth_encoder=TrunkSize(input_size=32, depth=10, widths=(16, 32, 64, 128)),
        geometry_hidden=256, geometry_layers=4, num_subjects=12, detect_upsample=1, detect_max_side=None,
    ),
    "paper": EditPreset(
        name="paper", frame_size=512, face_resolution=169, num_identity=80, num_albedo=80,
        settings=PipelineSettings(crop_size=224, texture_size=512, texture_crop_size=1024, mouth_crop_size=128,
                                  mouth_width=0.5, smoothing_half_window=2),
        recon_backbone="resnet50",
        tgan=GanSize(resolution=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512),
        encoder=TrunkSize(input_size=256, depth=50, widths=(64, 128, 256, 512)),
        classifier=TrunkSize(input_size=128, depth=18, widths=(64, 128, 256, 512)),
        teeth_tgan=GanSize(resolution=128, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512),
        teeth_encoder=TrunkSize(input_size=128, depth=50, widths=(64, 128, 256, 512)),
        geometry_hidden=256, geometry_layers=4, num_subjects=30, detect_upsample=0, detect_max_side=256,
    ),
}


def _generator(size: GanSize) -> StyleGAN2Generator:
    return StyleGAN2Generator(z_dim=size.w_dim, w_dim=size.w_dim, img_resolution=size.resolution, img_channels=3,
                              channel_base=size.channel_base, channel_max=size.channel_max,
                              mapping_layers=size.mapping_layers)


def _face_model(preset: EditPreset) -> MorphableModel:
    """The demo world's own face model when it is there (what a demo bundle holds), else the procedural one."""
    world_model = DEMO_WORLD / "truth" / "face_model.pt"
    if preset.name == "demo" and world_model.is_file():
        return MorphableModel.load(world_model)
    return MorphableModel.procedural(resolution=preset.face_resolution, num_identity=preset.num_identity,
                                     num_albedo=preset.num_albedo)


def build_parts(preset: EditPreset, *, device: torch.device, seed: int = 0) -> EditParts:
    """Randomly initialised (seeded) parts of ``preset``, frozen, in eval mode, on ``device``."""
    torch.manual_seed(seed)
    settings = preset.settings
    model = _face_model(preset).to(device).eval().requires_grad_(False)
    layout = model.layout
    regressor = ReconRegressor(backbone=preset.recon_backbone, id_size=layout.id, exp_size=layout.exp,
                               tex_size=layout.tex, input_size=settings.crop_size)
    for head in regressor.heads.values():  # small random heads: varied coefficients (trained heads are not zero)
        nn.init.normal_(head.weight, std=1e-3)
    reconstructor = RegressorReconstructor(regressor=regressor, face_model=model)
    reconstructor.regressor.requires_grad_(False)
    reconstructor.to(device)
    generator = _generator(preset.tgan)
    encoder = PSPEncoder(num_ws=generator.num_ws, w_dim=generator.w_dim, input_size=preset.encoder.input_size,
                         depth=preset.encoder.depth, widths=preset.encoder.widths)
    subjects = tuple(f"S{i:03d}" for i in range(preset.num_subjects))
    classifier = SubjectClassifier(subjects=subjects, input_size=preset.classifier.input_size,
                                   depth=preset.classifier.depth, widths=preset.classifier.widths)
    directions = 0.1 * torch.randn(len(subjects), len(EMOTIONS), generator.num_ws, generator.w_dim)
    texture_editor = TextureEditor(directions=directions, subjects=subjects)
    geometry = GeometryGenerator(id_dim=layout.id, exp_dim=layout.exp, hidden_dim=preset.geometry_hidden,
                                 num_layers=preset.geometry_layers, zero_init_output=False)
    teeth_generator = _generator(preset.teeth_tgan)
    teeth_encoder = PSPEncoder(num_ws=teeth_generator.num_ws, w_dim=teeth_generator.w_dim,
                               input_size=preset.teeth_encoder.input_size, depth=preset.teeth_encoder.depth,
                               widths=preset.teeth_encoder.widths)
    teeth = TeethCompleter(encoder=teeth_encoder, generator=teeth_generator, crop_size=settings.mouth_crop_size,
                           mouth_width=settings.mouth_width, dilate_px=settings.teeth_dilate_px,
                           fill=settings.teeth_fill)
    for module in (generator, encoder, classifier, texture_editor, geometry, teeth):
        module.to(device).eval().requires_grad_(False)
    return EditParts(face_model=model, reconstructor=reconstructor, generator=generator, encoder=encoder,
                     classifier=classifier, texture_editor=texture_editor, geometry=geometry, teeth=teeth,
                     settings=settings, provenance={"benchmark": {"preset": preset.name, "seed": seed}})


def network_modules(parts: EditParts) -> dict[str, nn.Module]:
    """The networks whose forward time is 'inside the networks' (none of them calls another)."""
    modules: dict[str, nn.Module] = {"encoder": parts.encoder, "classifier": parts.classifier,
                                     "generator": parts.generator.synthesis, "geometry": parts.geometry}
    regressor = getattr(parts.reconstructor, "regressor", None)
    if isinstance(regressor, nn.Module):
        modules["recon"] = regressor
    if parts.teeth is not None:
        modules["teeth_encoder"] = parts.teeth.encoder
        modules["teeth_generator"] = parts.teeth.generator.synthesis
    return modules


class NetworkClock:
    """Forward hooks that add up the wall time spent inside each network (CUDA synchronised)."""

    def __init__(self, modules: dict[str, nn.Module], device: torch.device) -> None:
        self.seconds: dict[str, float] = {name: 0.0 for name in modules}
        self.device = device
        self._started: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._sync()
            self._started[name] = time.perf_counter()
        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._sync()
            self.seconds[name] += time.perf_counter() - self._started.pop(name)
        return hook

    def reset(self) -> None:
        self.seconds = {name: 0.0 for name in self.seconds}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a thread while the ``with`` block runs; ``.peak`` in bytes."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


# --------------------------------------------------------------------------- the video
def _source_clip(explicit: str | None, workdir: Path) -> Path:
    """The clip the benchmark video is made of (see the module docstring)."""
    if explicit is not None:
        return Path(explicit)
    clip = DEMO_WORLD / DEMO_CLIP
    if clip.is_file():
        return clip
    from emoedit.data.synthetic.clip_renderer import WorldRenderer
    from emoedit.data.synthetic.presets import get_preset

    renderer = WorldRenderer(get_preset("demo"), 0)
    key = next(c.key for c in renderer.plan.clips if c.key.emotion == "neutral" and c.key.view == "front")
    rendered = renderer.render_mead_clip(key)
    out = workdir / "rendered_clip.mp4"
    with VideoWriter(out, fps=renderer.preset.fps, audio_samples=(rendered.audio, renderer.preset.audio_rate)) as w:
        w.write(rendered.frames)
    return out


def _ping_pong(count: int, length: int) -> Iterator[int]:
    """Frame indices 0, 1, ..., L−1, L−2, ..., 1, 0, 1, ... (no jump where the loop turns)."""
    period = max(1, 2 * length - 2)
    for i in range(count):
        k = i % period
        yield k if k < length else period - k


def make_video(source: Path, out: Path, *, num_frames: int, frame_size: int) -> Path:
    """``num_frames`` frames of ``source`` looped back and forth, resized to ``frame_size``², with its audio looped."""
    with VideoReader(source) as reader:
        info = reader.info
        frames = np.concatenate(list(reader.iter_chunks(64)))
    if frames.shape[1:3] != (frame_size, frame_size):
        tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        tensor = F.interpolate(tensor, size=(frame_size, frame_size), mode="bicubic", align_corners=False,
                               antialias=tensor.shape[-1] > frame_size)
        frames = tensor.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    audio = None
    if info.has_audio:
        samples, rate = read_audio(source)
        need = int(round(num_frames / float(info.fps) * rate))
        reps = -(-need // max(1, samples.shape[1]))
        audio = (np.tile(samples, (1, reps))[:, :need], rate)
    order = list(_ping_pong(num_frames, frames.shape[0]))
    with VideoWriter(out, fps=info.fps, crf=12, preset="fast", audio_samples=audio) as writer:
        for start in range(0, num_frames, 64):
            writer.write(frames[order[start : start + 64]])
    return out


# --------------------------------------------------------------------------- machine
def machine_description(device: torch.device) -> dict[str, Any]:
    """:func:`emoedit.machine.machine_info` with the cores this process may use and the device."""
    info: dict[str, Any] = {**machine_info(), "cores": cores_available(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunResult:
    """One timed edit."""

    frames: int  # frames in the video
    frames_with_face: int  # frames edited
    wall_s: float  # the whole edit() call
    seconds: dict[str, float]  # EditReport.seconds
    network_seconds: dict[str, float]  # time inside each network (forward hooks)
    peak_rss_mib: float  # peak resident set size during the run
    cuda_peak_mib: float | None  # torch.cuda.max_memory_allocated during the run
    load_average: float  # 1-minute load average right after the run

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s


def run_once(editor: VideoEditor, video: Path, out: Path, schedule: EmotionSchedule, clock: NetworkClock,
             device: torch.device) -> RunResult:
    clock.reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as rss:
        began = time.perf_counter()
        report = editor.edit(video, schedule, out)
        wall = time.perf_counter() - began
    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return RunResult(frames=report.num_frames, frames_with_face=report.frames_with_face, wall_s=wall,
                     seconds=dict(report.seconds), network_seconds=dict(clock.seconds),
                     peak_rss_mib=rss.peak / 2**20, cuda_peak_mib=cuda_peak, load_average=os.getloadavg()[0])


def format_table(best: RunResult, runs: list[RunResult]) -> str:
    """Per-stage table of the fastest run, then end to end, networks and memory."""
    n = best.frames
    total = sum(best.seconds.values())
    lines = [f"{'stage':<12} {'ms/frame':>9} {'share':>7} {'frames/s':>9}"]
    for stage in EDIT_STAGES:
        sec = best.seconds.get(stage, 0.0)
        fps = f"{n / sec:9.1f}" if sec > 0 else f"{'-':>9}"
        lines.append(f"{stage:<12} {1000 * sec / n:9.2f} {100 * sec / total:6.1f}% {fps}")
    lines.append(f"{'sum':<12} {1000 * total / n:9.2f} {100.0:6.1f}% {n / total:9.2f}")
    median = statistics.median(r.fps for r in runs)
    lines.append(f"{'end to end':<12} {1000 * best.wall_s / n:9.2f} {'':>7} {best.fps:9.2f}   "
                 f"(median of {len(runs)}: {median:.2f} frames/s)")
    inside = sum(best.network_seconds.values())
    lines.append(f"inside networks: {1000 * inside / n:.2f} ms/frame = {100 * inside / best.wall_s:.1f}% of the wall "
                 f"time; outside: {100 * (1 - inside / best.wall_s):.1f}%  ("
                 + ", ".join(f"{k} {1000 * v / n:.2f}" for k, v in best.network_seconds.items()) + " ms/frame)")
    memory = f"peak RSS {best.peak_rss_mib:.0f} MiB"
    if best.cuda_peak_mib is not None:
        memory += f", CUDA max allocated {best.cuda_peak_mib:.0f} MiB"
    lines.append(memory + f"; load average after the run {best.load_average:.2f}")
    return "\n".join(lines)


def build_detector(kind: str, video: Path, *, upsample: int, max_side: int | None) -> tuple[FaceDetector, float]:
    """``(detector, min_face_size)`` for VideoEditor: dlib HOG + 68 points, or the same landmarks found beforehand."""
    from emoedit.data.detection import DlibFaceDetector

    dlib: FaceDetector = DlibFaceDetector(detector="hog", upsample=upsample)
    if max_side is not None:
        from emoedit.data.preprocess import ScaledDetector

        dlib = ScaledDetector(dlib, max_side=max_side)
    if kind == "dlib":
        return dlib, DEFAULT_DLIB_MIN_FACE_PX
    from emoedit.data.detection import GivenLandmarksDetector

    landmarks = []  # "given": dlib once here, outside the timing, then replayed (no detection cost)
    with VideoReader(video) as reader:
        for chunk in reader.iter_chunks(64):
            for faces in dlib.detect_batch(chunk):
                landmarks.append(faces[0].landmarks68 if faces else None)
    return GivenLandmarksDetector(landmarks), 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="part and frame sizes")
    parser.add_argument("--bundle", help="load the parts from this bundle folder instead of random weights")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--frames", default="100,400", help="comma-separated video lengths, frames")
    parser.add_argument("--repeats", type=int, default=2, help="timed edits per video length")
    parser.add_argument("--warmup-frames", type=int, default=8, help="frames of the untimed warm-up edit (0: none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 on the CPU, the robust choice on a shared machine; "
                             "torch's default on CUDA)")
    parser.add_argument("--batch-size", type=int, default=16, help="EditOptions.batch_size")
    parser.add_argument("--detector", choices=["dlib", "given"], default="dlib",
                        help="dlib HOG (the real one) or landmarks found beforehand (no detection cost)")
    parser.add_argument("--detect-max-side", type=int, default=-1,
                        help="dlib on frames downscaled to this side (default: the preset's; 0: full size)")
    parser.add_argument("--detect-upsample", type=int, default=None,
                        help="dlib HOG upsampling (default: the preset's; 1 finds the demo world's 64-px faces)")
    parser.add_argument("--no-teeth", action="store_true", help="EditOptions.teeth = False")
    parser.add_argument("--texture-mode", default="replace", help="EditOptions.texture_mode: replace, residual, warp")
    parser.add_argument("--bf16", action="store_true", help="EditOptions.bf16: the networks under bfloat16 autocast")
    parser.add_argument("--emotion", default="happy", help="target emotion (strength 1)")
    parser.add_argument("--video", help="source clip (default: the demo world's, else one rendered on the fly)")
    parser.add_argument("--frame-size", type=int, default=None, help="video side (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--json", help="write every run and the machine as JSON here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    preset = PRESETS[args.preset]
    frame_counts = [int(x) for x in args.frames.split(",") if x.strip()]
    max_side = preset.detect_max_side if args.detect_max_side < 0 else (args.detect_max_side or None)
    upsample = preset.detect_upsample if args.detect_upsample is None else args.detect_upsample
    frame_size = args.frame_size or preset.frame_size

    began = time.perf_counter()
    if args.bundle:
        from emoedit.pipeline.bundle import load_bundle

        parts = load_bundle(args.bundle, device=device)
        parts_text = f"bundle {args.bundle}"
    else:
        parts = build_parts(preset, device=device, seed=args.seed)
        parts_text = f"preset {preset.name}, random weights (seed {args.seed})"
    print(f"parts: {parts_text}, built in {time.perf_counter() - began:.1f} s; {parts.settings}")
    extra = {"bf16": True} if args.bf16 else {}  # (only when asked: the script also runs against older editors)
    if args.texture_mode != "replace":
        extra["texture_mode"] = args.texture_mode
    options = EditOptions(batch_size=args.batch_size, progress=False, teeth=not args.no_teeth, **extra)
    setup = (f"preset {preset.name}, {device}, {torch.get_num_threads()} torch thread(s), batch {args.batch_size}, "
             f"{'bf16 autocast' if args.bf16 else 'float32'}, texture mode {args.texture_mode}, "
             f"{'no teeth, ' if args.no_teeth else ''}"
             f"detector {args.detector} (dlib HOG upsample {upsample}"
             f"{'' if max_side is None else f', max side {max_side}'}), {frame_size}² frames")
    machine = machine_description(device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    rss_before = _rss_bytes() / 2**20
    print(f"resident memory before the first edit: {rss_before:.0f} MiB")

    with tempfile.TemporaryDirectory(prefix="emoedit_bench_edit_") as tmp:
        results = run_lengths(parts, options, workdir=Path(tmp), source=args.video, frame_counts=frame_counts,
                              repeats=args.repeats, warmup_frames=args.warmup_frames, frame_size=frame_size,
                              detector_kind=args.detector, upsample=upsample, max_side=max_side,
                              schedule=EmotionSchedule.parse(args.emotion), device=device, setup=setup)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = {count: min(r.peak_rss_mib for r in runs) for count, runs in results.items()}
    print("peak RSS per video length: " + ", ".join(f"{c} frames {p:.0f} MiB" for c, p in peaks.items())
          + f" (before the first edit {rss_before:.0f} MiB); process ru_maxrss {max_rss:.0f} MiB; "
          f"load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if device.type == "cuda":
        cuda = {count: max(r.cuda_peak_mib or 0.0 for r in runs) for count, runs in results.items()}
        print("CUDA max allocated per video length: " + ", ".join(f"{c} frames {p:.0f} MiB" for c, p in cuda.items()))
    if args.json:
        from emoedit.atomic_io import atomic_write_text

        data = {
            "machine": machine, "preset": asdict(preset), "parts": parts_text, "setup": setup, "args": vars(args),
            "detect_max_side": max_side, "detect_upsample": upsample, "frame_size": frame_size,
            "rss_before_mib": rss_before, "ru_maxrss_mib": max_rss,
            "runs": {str(c): [{**asdict(r), "fps": r.fps} for r in runs] for c, runs in results.items()},
        }
        atomic_write_text(args.json, json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def run_lengths(
    parts: EditParts,  # the frozen parts
    options: EditOptions,  # the edit switches
    *,
    workdir: Path,  # scratch folder for the videos
    source: str | None,  # --video
    frame_counts: list[int],  # video lengths, frames
    repeats: int,  # timed edits per length
    warmup_frames: int,  # frames of the untimed warm-up edit (0: none)
    frame_size: int,  # video side, pixels
    detector_kind: str,  # "dlib" or "given"
    upsample: int,  # dlib HOG upsampling
    max_side: int | None,  # ScaledDetector side (None: full size)
    schedule: EmotionSchedule,  # the edit
    device: torch.device,  # the parts' device
    setup: str,  # one line describing the settings, printed above each table
) -> dict[int, list[RunResult]]:
    """Edit a video of every length ``repeats`` times; prints a table per length."""
    clock = NetworkClock(network_modules(parts), device)
    clip = _source_clip(source, workdir)
    print(f"source clip: {clip} → {frame_size}² frames")

    def editor_for(video: Path) -> VideoEditor:
        detector, min_face = build_detector(detector_kind, video, upsample=upsample, max_side=max_side)
        return VideoEditor(parts=parts, options=options, detector=detector, min_face_size=min_face)

    results: dict[int, list[RunResult]] = {}
    try:
        if warmup_frames > 0:
            video = make_video(clip, workdir / "warmup.mp4", num_frames=warmup_frames, frame_size=frame_size)
            run_once(editor_for(video), video, workdir / "warmup_out.mp4", schedule, clock, device)
        for count in frame_counts:
            video = make_video(clip, workdir / f"in_{count}.mp4", num_frames=count, frame_size=frame_size)
            editor = editor_for(video)
            runs = []
            for repeat in range(repeats):
                runs.append(run_once(editor, video, workdir / f"out_{count}.mp4", schedule, clock, device))
                print(f"  {count} frames, repeat {repeat + 1}: {runs[-1].fps:.2f} frames/s end to end, "
                      f"peak RSS {runs[-1].peak_rss_mib:.0f} MiB", flush=True)
            results[count] = runs
            best = min(runs, key=lambda r: r.wall_s)
            print(f"\n{count} frames ({best.frames_with_face} with a face); {setup}:")
            print(format_table(best, runs) + "\n", flush=True)
    finally:
        clock.remove()
    return results


if __name__ == "__main__":
    raise SystemExit(main())
