"""Generating a synthetic world on disk: :func:`generate_world`.

Stages (each with a tqdm progress bar): write the world description and split, the face
model and every subject's truth; render the MEAD clips; render the ground-truth edits of
every neutral evaluation clip (every emotion, every level); render the FFHQ-like stills
and their truth. See :mod:`~emoedit.data.synthetic.layout` for the files.

Generation is resumable: an item whose files are all present is skipped (and not
rendered); every file is written atomically (a temporary file, then ``os.replace``), and a
clip's video is written after its truth, so a present video means a finished clip.
Re-running with another preset or seed into the same folder is refused.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import numpy as np
import torch
from PIL import Image

from emoedit.atomic_io import atomic_path, atomic_torch_save, atomic_write_text
from emoedit.data.synthetic.clip_renderer import RenderedClip, WorldRenderer
from emoedit.data.synthetic.emotions import AU_LIMITS, DEFAULT_AU_LIMIT, EMFACS_RECIPES
from emoedit.data.synthetic.ffhq import FFHQ_FORMAT, FFHQ_FORMAT_VERSION, StillRenderer, still_spec
from emoedit.data.synthetic.layout import (
    FACE_MODEL_FILE,
    FFHQ_DIR,
    FFHQ_JSON_FILE,
    FFHQ_TRUTH_FILE,
    MEAD_DIR,
    SPLIT_FILE,
    TRUTH_DIR,
    WORLD_FILE,
    confined,
    ffhq_image_file,
    ffhq_texture_file,
    subject_albedo_png,
    subject_json_file,
    subject_truth_file,
)
from emoedit.data.synthetic.plan import SubjectPlan
from emoedit.data.synthetic.presets import VIEW_YAW_DEGREES, WorldPreset, get_preset
from emoedit.data.synthetic.scene import camera_tensor
from emoedit.data.synthetic.texture_effects import EFFECT_AU_WEIGHTS, EFFECT_NAMES
from emoedit.data.synthetic.truth_format import save_clip_truth
from emoedit.video import VideoWriter

WORLD_FORMAT = "emoedit.synthetic_world"
WORLD_FORMAT_VERSION = 1
INDEX_FILE = f"{TRUTH_DIR}/index.json"
STAGES: tuple[str, ...] = ("subjects", "mead", "edited", "ffhq")

T = TypeVar("T")


@dataclass(frozen=True)
class WorldSummary:
    """What :func:`generate_world` did."""

    root: Path  # the world folder
    preset: str  # preset name
    seed: int  # world seed
    num_train_subjects: int  # subjects seen in training
    num_unseen_subjects: int  # subjects held out
    num_clips: int  # MEAD clips in the world
    num_edited_clips: int  # ground-truth edits in the world
    num_ffhq: int  # FFHQ-like stills in the world
    rendered: dict[str, int] = field(default_factory=dict)  # stage -> items rendered by this run
    skipped: dict[str, int] = field(default_factory=dict)  # stage -> items found done and skipped
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time of this run

    @property
    def total_seconds(self) -> float:
        """Wall time of all stages."""
        return float(sum(self.seconds.values()))


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def _camera_json(camera: Any) -> dict[str, Any]:
    return {
        "focal": camera.focal,
        "center": camera.center,
        "camera_distance": camera.camera_distance,
        "image_size": camera.image_size,
    }


def _subject_json(subject: SubjectPlan) -> dict[str, Any]:
    """A subject's entry in ``truth/world.json`` (``family`` only in a families world)."""
    entry: dict[str, Any] = {"name": subject.name, "split": subject.split, "sex": subject.sex}
    if subject.family is not None:
        entry["family"] = subject.family
    return entry


def world_description(renderer: WorldRenderer, still_camera: Any, *, complete: bool) -> dict[str, Any]:
    """The ``truth/world.json`` content."""
    preset, plan, model = renderer.preset, renderer.plan, renderer.model
    layout = model.layout
    return {
        "format": WORLD_FORMAT,
        "format_version": WORLD_FORMAT_VERSION,
        "complete": complete,
        "preset": preset.to_json(),
        "preset_name": preset.name,
        "seed": renderer.seed,
        "subjects": [_subject_json(s) for s in plan.subjects],
        "layout": {
            "mead": MEAD_DIR,
            "ffhq": FFHQ_DIR,
            "truth": TRUTH_DIR,
            "mead_video": "mead/<subject>/video/<view>/<emotion>/level_<n>/<clip>.mp4",
            "mead_truth": "truth/mead/<subject>/<view>/<emotion>/level_<n>/<clip>.pt",
            "edited_video": "truth/edited/<subject>/<view>/<emotion>/level_<n>/<clip>.mp4",
            "edited_truth": "truth/edited/<subject>/<view>/<emotion>/level_<n>/<clip>.pt",
            "subject_truth": "truth/subjects/<subject>.pt",
            "ffhq_image": f"ffhq/images{preset.ffhq_size}x{preset.ffhq_size}/<block>/<index>.png",
            "ffhq_truth": FFHQ_TRUTH_FILE,
            "face_model": FACE_MODEL_FILE,
            "split": SPLIT_FILE,
            "index": INDEX_FILE,
        },
        "camera": _camera_json(renderer.camera),
        "ffhq_camera": _camera_json(still_camera),
        "views": dict(VIEW_YAW_DEGREES),
        "fps": preset.fps,
        "num_frames": preset.num_frames,
        "image_size": preset.image_size,
        "texture_size": preset.texture_size,
        "ffhq_size": preset.ffhq_size,
        "audio_rate": preset.audio_rate,
        "coeff_layout": {name: getattr(layout, name) for name in ("id", "exp", "tex", "angle", "gamma", "trans")},
        "expression_names": list(renderer.expression_names),
        "effect_names": list(EFFECT_NAMES),
        "effect_au_weights": EFFECT_AU_WEIGHTS,
        "emfacs_recipes": EMFACS_RECIPES,
        "au_limits": {"default": DEFAULT_AU_LIMIT, **AU_LIMITS},
        "counts": {"mead_clips": len(plan.clips), "edited_clips": len(plan.edits), "ffhq_images": len(plan.ffhq)},
    }


def split_description(renderer: WorldRenderer) -> dict[str, Any]:
    """The ``truth/split.json`` content."""
    plan = renderer.plan
    train_neutral: dict[str, list[str]] = {}
    held_out: dict[str, list[str]] = {}
    for c in plan.clips:
        if c.key.emotion != "neutral" or c.key.view != "front":
            continue
        target = train_neutral if c.role == "train" else held_out
        target.setdefault(c.key.subject, []).append(c.key.clip)
    return {
        "train_subjects": list(plan.train_subjects),
        "unseen_subjects": list(plan.unseen_subjects),
        "train_neutral_clips": train_neutral,
        "held_out_neutral_clips": {s: held_out.get(s, []) for s in plan.train_subjects},
        "eval_clips": [k.as_json() for k in plan.eval_clips()],
    }


def index_description(renderer: WorldRenderer) -> dict[str, Any]:
    """The ``truth/index.json`` content: every clip with its role, every edit."""
    plan = renderer.plan
    return {
        "clips": [{**c.key.as_json(), "role": c.role} for c in plan.clips],
        "edits": [{"source": e.source.as_json(), "emotion": e.emotion, "level": e.level} for e in plan.edits],
        "ffhq": [{"index": f.index, "bad": f.bad, "image": str(ffhq_image_file(f.index, renderer.preset.ffhq_size))} for f in plan.ffhq],
    }


def described_as(description: Mapping[str, Any], preset: WorldPreset, seed: int) -> bool:
    """Whether a ``truth/world.json`` body describes ``preset`` with ``seed``.

    Presets are compared as :class:`WorldPreset` values, not as JSON dicts, so a world written
    before a field with a default existed (its JSON lacks the key) still matches.
    """
    try:
        stored = WorldPreset.from_json(description.get("preset") or {})
    except ValueError:
        return False
    return stored == preset and description.get("seed") == seed


def _check_existing(root: Path, preset: WorldPreset, seed: int) -> None:
    path = confined(root, WORLD_FILE)
    if not path.exists():
        return
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable world description ({error}); remove the folder to regenerate") from error
    if existing.get("format") != WORLD_FORMAT:
        raise ValueError(f"{path}: not a synthetic world description")
    if not described_as(existing, preset, seed):
        raise ValueError(
            f"{root} already holds a world with preset {existing.get('preset_name')!r} and seed {existing.get('seed')!r}; "
            f"refusing to mix it with preset {preset.name!r} seed {seed} (use another folder)"
        )


def _progress(items: Iterable[T], *, total: int, desc: str, enabled: bool) -> Iterable[T]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="item", leave=True, dynamic_ncols=True)


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _write_still(texture_path: Path, texture: np.ndarray, image_path: Path, image: np.ndarray) -> None:
    _write_png(texture_path, texture)
    _write_png(image_path, image)


def _texture_png(texture: torch.Tensor) -> np.ndarray:
    return (texture.clamp(0, 1) * 255.0 + 0.5).floor().to(torch.uint8).permute(1, 2, 0).numpy()


class _BackgroundWriter:
    """Runs file writes (video encoding, PNG, torch.save) in one worker thread while the
    next item renders; at most ``max_pending`` writes wait. Errors surface on the next
    :meth:`submit` or on :meth:`drain`."""

    def __init__(self, max_pending: int = 2) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-writer")
        self._pending: list[Future[None]] = []
        self._max_pending = max_pending

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        while len(self._pending) >= self._max_pending:
            self._pending.pop(0).result()
        self._pending.append(self._executor.submit(job, *args))

    def drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        """Finish every pending write (raising the first error) and stop the thread."""
        try:
            self.drain()
        finally:
            self._executor.shutdown(wait=True)

    def abort(self) -> None:
        """Wait for the pending writes, ignoring their errors (another error is on its way)."""
        for future in self._pending:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - the caller's exception takes precedence
                pass
        self._pending.clear()
        self._executor.shutdown(wait=True)


def write_clip(root: Path, clip: RenderedClip, video_rel: str, truth_rel: str, preset: WorldPreset) -> None:
    """Write a clip's truth, then its video (H.264 + AAC), both atomically."""
    save_clip_truth(clip.truth, confined(root, truth_rel))
    with VideoWriter(
        confined(root, video_rel),
        fps=preset.fps,
        crf=preset.crf,
        preset=preset.x264_preset,
        audio_samples=(clip.audio, preset.audio_rate),
    ) as writer:
        writer.write(clip.frames)


def generate_world(
    out_dir: str | os.PathLike[str],  # the world folder (created if missing)
    preset: str | WorldPreset,  # "tiny", "demo", "full" or a custom WorldPreset
    seed: int,  # world seed
    *,
    progress: bool = True,  # show a tqdm progress bar per stage
    torch_threads: int | None = 1,  # torch intra-op threads while generating (None: leave as is)
    renderer: WorldRenderer | None = None,  # reuse an existing renderer of the same preset and seed
    on_render: Callable[[str, object], None] | None = None,  # called (stage, item) for every rendered item
) -> WorldSummary:
    """Generate (or finish generating) the synthetic world ``(preset, seed)`` in ``out_dir``.

    Returns a :class:`WorldSummary` with per-stage counts of rendered and skipped items
    and wall times. Raises ``ValueError`` if ``out_dir`` holds a world of another preset
    or seed.

    Rendering runs in small batches; one torch thread (the default) is fastest there: on a
    busy CPU, torch's extra threads spin and slow the small operations down several-fold,
    and the video encoder has threads of its own.
    """
    previous_threads = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(int(torch_threads))
    try:
        return _generate(out_dir, preset, seed, progress=progress, renderer=renderer, on_render=on_render)
    finally:
        torch.set_num_threads(previous_threads)


def _generate(
    out_dir: str | os.PathLike[str],
    preset: str | WorldPreset,
    seed: int,
    *,
    progress: bool,
    renderer: WorldRenderer | None,
    on_render: Callable[[str, object], None] | None,
) -> WorldSummary:
    preset = get_preset(preset)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    _check_existing(root, preset, seed)
    if renderer is None:
        renderer = WorldRenderer(preset, seed)
    elif renderer.preset != preset or renderer.seed != seed:
        raise ValueError("generate_world: the given renderer belongs to another preset or seed")
    stills = StillRenderer(model=renderer.model, factory=renderer.factory, image_size=preset.ffhq_size)
    plan = renderer.plan
    rendered = {stage: 0 for stage in STAGES}
    skipped = {stage: 0 for stage in STAGES}
    seconds: dict[str, float] = {}

    def note(stage: str, item: object) -> None:
        rendered[stage] += 1
        if on_render is not None:
            on_render(stage, item)

    # Stage 0: world description, split, index, face model, subjects.
    start = time.perf_counter()
    if not confined(root, WORLD_FILE).exists():
        atomic_write_text(confined(root, WORLD_FILE), _json_text(world_description(renderer, stills.camera, complete=False)))
    for rel, content in ((SPLIT_FILE, split_description(renderer)), (INDEX_FILE, index_description(renderer))):
        if not confined(root, rel).exists():
            atomic_write_text(confined(root, rel), _json_text(content))
    if not confined(root, FACE_MODEL_FILE).exists():
        renderer.model.save(confined(root, FACE_MODEL_FILE))
    names = renderer.expression_names
    for subject_plan in _progress(plan.subjects, total=len(plan.subjects), desc="subjects", enabled=progress):
        files = [subject_truth_file(subject_plan.name), subject_json_file(subject_plan.name), subject_albedo_png(subject_plan.name)]
        if all(confined(root, f).exists() for f in files):
            skipped["subjects"] += 1
            continue
        subject = renderer.subject(subject_plan.name)
        atomic_torch_save(subject.truth_dict(names), confined(root, files[0]))
        atomic_write_text(confined(root, files[1]), _json_text(subject.metadata()))
        _write_png(confined(root, files[2]), _texture_png(subject.albedo))
        note("subjects", subject_plan.name)
    seconds["subjects"] = time.perf_counter() - start

    writer = _BackgroundWriter()
    try:
        _render_stages(root, renderer, stills, writer, progress=progress, note=note, skipped=skipped, seconds=seconds)
    except BaseException:
        writer.abort()
        raise
    writer.close()

    atomic_write_text(confined(root, WORLD_FILE), _json_text(world_description(renderer, stills.camera, complete=True)))
    return WorldSummary(
        root=root,
        preset=preset.name,
        seed=seed,
        num_train_subjects=len(plan.train_subjects),
        num_unseen_subjects=len(plan.unseen_subjects),
        num_clips=len(plan.clips),
        num_edited_clips=len(plan.edits),
        num_ffhq=len(plan.ffhq),
        rendered=rendered,
        skipped=skipped,
        seconds=seconds,
    )


def _render_stages(
    root: Path,
    renderer: WorldRenderer,
    stills: StillRenderer,
    writer: _BackgroundWriter,
    *,
    progress: bool,
    note: Callable[[str, object], None],
    skipped: dict[str, int],
    seconds: dict[str, float],
) -> None:
    """Stages 1-3: MEAD clips, ground-truth edits, FFHQ stills (writes go to ``writer``)."""
    preset, plan, seed = renderer.preset, renderer.plan, renderer.seed
    names = renderer.expression_names
    # Stage 1: MEAD clips.
    start = time.perf_counter()
    for clip_plan in _progress(plan.clips, total=len(plan.clips), desc="mead clips", enabled=progress):
        key = clip_plan.key
        if confined(root, key.video).exists() and confined(root, key.truth).exists():
            skipped["mead"] += 1
            continue
        writer.submit(write_clip, root, renderer.render_mead_clip(key), str(key.video), str(key.truth), preset)
        note("mead", key)
    writer.drain()
    seconds["mead"] = time.perf_counter() - start

    # Stage 2: ground-truth edits of the neutral evaluation clips.
    start = time.perf_counter()
    for edit in _progress(plan.edits, total=len(plan.edits), desc="ground-truth edits", enabled=progress):
        if confined(root, edit.video).exists() and confined(root, edit.truth).exists():
            skipped["edited"] += 1
            continue
        writer.submit(write_clip, root, renderer.render_edit_key(edit), str(edit.video), str(edit.truth), preset)
        note("edited", edit)
    writer.drain()
    seconds["edited"] = time.perf_counter() - start

    # Stage 3: FFHQ-like stills.
    start = time.perf_counter()
    specs = [still_spec(renderer.model, renderer.factory, seed, item, preset.ffhq_size) for item in plan.ffhq]
    truth_path = confined(root, FFHQ_TRUTH_FILE)
    for spec in _progress(specs, total=len(specs), desc="ffhq stills", enabled=progress):
        image_path = confined(root, ffhq_image_file(spec.index, preset.ffhq_size))
        texture_path = confined(root, ffhq_texture_file(spec.index))
        if image_path.exists() and texture_path.exists():
            skipped["ffhq"] += 1
            continue
        image, texture, _ = stills.render(spec)
        writer.submit(_write_still, texture_path, _texture_png(texture), image_path, image)
        note("ffhq", spec.index)
    writer.drain()
    if specs:
        with torch.no_grad():
            coeffs = torch.stack([s.coeffs for s in specs])
            landmarks = renderer.model(coeffs, stills.camera).landmarks
        payload = {
            "format": FFHQ_FORMAT,
            "format_version": FFHQ_FORMAT_VERSION,
            "images": [str(ffhq_image_file(s.index, preset.ffhq_size)) for s in specs],
            "textures": [str(ffhq_texture_file(s.index)) for s in specs],
            "bad": torch.tensor([bool(s.bad) for s in specs]),
            "bad_reason": [s.bad for s in specs],
            "emotion": [s.emotion for s in specs],
            "level": torch.tensor([s.level for s in specs], dtype=torch.float32),
            "coeffs": coeffs,
            "landmarks": landmarks,
            "occluder_box": torch.stack([s.occluder_box for s in specs]),
            "camera": camera_tensor(stills.camera),
            "expression_names": list(names),
            "coeff_sizes": [getattr(renderer.model.layout, n) for n in ("id", "exp", "tex", "angle", "gamma", "trans")],
        }
        atomic_torch_save(payload, truth_path)
        summary = {
            "images": len(specs),
            "bad": {kind: sum(1 for s in specs if s.bad == kind) for kind in ("large_pose", "dark", "occluded")},
            "bad_images": {payload["images"][i]: s.bad for i, s in enumerate(specs) if s.bad},
        }
        atomic_write_text(confined(root, FFHQ_JSON_FILE), _json_text(summary))
    seconds["ffhq"] = time.perf_counter() - start
