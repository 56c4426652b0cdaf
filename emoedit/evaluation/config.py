"""``EvaluateConfig``: what ``emoedit evaluate`` runs, typed, from YAML + ``key=value`` overrides.

```
cfg = load_evaluate_config("configs/evaluate/demo.yaml", ["max_items=7", "methods=ours,wo_texture"])
```

Order (later wins): the dataclass defaults → the YAML file → the overrides. Every key is
checked against the schema (a misspelled key is a :class:`~emoedit.config.ConfigError`
naming the source and the closest valid keys); the YAML reading, the key checks and the
merging are :mod:`emoedit.config.loading`'s, as for ``train.py``. Overrides use OmegaConf's
dotlist syntax (``judges.emotion=PATH``, ``sets=[seen]``); a list field also takes a
comma-separated value (``methods=ours,wo_shape``), which is what a W&B sweep passes with
``${args_no_hyphens}``. Relative paths are relative to the working directory (the
repository root, as for ``train.py``).

Optional networks are **optional**: a metric whose network is not configured is omitted
and the tables say so (FID without ``fid_weights``; LPIPS without ``lpips_backbone``;
ArcSim falls back to the identity judge's embedding without ``arcface_weights``, and the
table says that too). A method whose checkpoint is not configured is skipped and
reported as skipped, never faked.

The expression / vertex / lip-opening / landmark-jitter columns re-reconstruct every video:
``rereconstruct: regressor`` runs the bundle's (or ``recon_checkpoint``'s) reconstructor on
aligned crops; ``rereconstruct: fitter`` re-fits the world's face model to the whole frames
(``refit_steps`` photometric steps at ``refit_render_size`` px, from the input's true
coefficients with its identity and albedo fixed; :mod:`emoedit.metrics.refit`) and needs
no regressor. The choice is part of the resume fingerprint and is named in the tables.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from emoedit.config import (
    ConfigError,
    config_keys,
    dotlist_to_dict,
    load_yaml_mapping,
    merge_config,
    split_override,
    structured_config,
)
from emoedit.evaluation.splits import EVALUATION_SETS

#: Values of ``rereconstruct`` (how the geometry columns re-reconstruct a video).
RERECONSTRUCT_MODES: tuple[str, ...] = ("regressor", "fitter")
#: Every method the registry knows, in table order (``emoedit.evaluation.methods``).
ALL_METHODS: tuple[str, ...] = (
    "ours", "w/o classifier", "w/o shape", "w/o texture", "w/o smoothing", "w/o teeth", "StarGAN", "pSp", "ExprGAN",
)


@dataclass
class JudgeFiles:
    emotion: Optional[str] = None  # EmotionJudge checkpoint (train.py judge model.kind=emotion); None: no judged emotion metrics, no FED
    identity: Optional[str] = None  # IdentityJudge checkpoint (model.kind=identity); None: no identity similarity


@dataclass
class BaselineFiles:
    stargan: Optional[str] = None  # StarGANEditor checkpoint (emoedit.baselines); None: StarGAN skipped
    exprgan: Optional[str] = None  # ExprGANEditor checkpoint; None: ExprGAN skipped
    psp_tgan: Optional[str] = None  # pSp baseline: face-image StyleGAN2 checkpoint
    psp_encoder: Optional[str] = None  # pSp baseline: its encoder checkpoint
    psp_directions: Optional[str] = None  # pSp baseline: latent emotion directions; any of the three None: pSp skipped


@dataclass
class EditSettings:
    texture_mode: str = "replace"  # ours: "replace" (render G(x), the paper), "residual" or "warp" (EditOptions)
    teeth_gate: float = 0.0  # ours, warp mode: EditOptions.teeth_gate (fraction of the mouth width; 0: always)
    smoothing_half_window: Optional[int] = None  # ours: l of the Hann window; None: the bundle's
    batch_size: int = 16  # frames per network call (ours and the baselines)
    crf: float = 18.0  # x264 quality of every output video (0 lossless .. 51)
    preset: str = "veryfast"  # x264 speed preset of every output video


@dataclass
class MonotonicityConfig:
    enabled: bool = True  # run the intensity sweep (needs the emotion judge)
    set: str = "seen"  # the items come from this evaluation set
    items: int = 3  # how many items (the set's spread order)
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # strengths α
    methods: list[str] = field(default_factory=lambda: ["ours", "StarGAN"])  # methods run at every α (when available)
    truth: bool = True  # also judge the ground truth at every α (rendered by the world): the judge's own ceiling


@dataclass
class WandbSettings:
    enabled: bool = False  # log the results as a W&B table (keys evaluate/...)
    mode: str = "offline"  # offline | online | disabled
    project: str = "emoedit"  # W&B project
    entity: Optional[str] = None  # W&B entity; None: the user's default
    name: Optional[str] = None  # run name; None: the output folder's name
    group: Optional[str] = None  # W&B group


@dataclass
class EvaluateConfig:
    world: str = "???"  # the synthetic world folder (emoedit synth), required
    out: str = "outputs/evaluate"  # output folder: videos/, rows.jsonl, results.json, tables.md
    bundle: Optional[str] = None  # bundle of frozen parts (ours + ablations); None: those methods are skipped
    recon_checkpoint: Optional[str] = None  # recon .ckpt for re-reconstruction when no bundle is given
    judges: JudgeFiles = field(default_factory=JudgeFiles)
    baselines: BaselineFiles = field(default_factory=BaselineFiles)
    fid_weights: Optional[str] = None  # pt_inception-2015-12-05-6726825d.pth; None: no FID (noted in the tables)
    arcface_weights: Optional[str] = None  # InsightFace IR-SE50 .pth / .pt2 / .onnx; None: ArcSim from the identity judge (noted)
    lpips_backbone: Optional[str] = None  # torchvision alexnet/vgg16 state dict; None: no LPIPS (noted)
    lpips_net: str = "alex"  # LPIPS trunk: alex or vgg
    sets: list[str] = field(default_factory=lambda: list(EVALUATION_SETS))  # evaluation sets (seen = Table 1)
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))  # methods (names or slugs, e.g. wo_shape)
    references: bool = True  # also score "input (no edit)" and "ground truth" (floors and ceilings)
    max_items: Optional[int] = None  # per set (a spread over emotions and subjects); None: all
    items_per_set: dict[str, int] = field(default_factory=dict)  # set → item count, overriding max_items for that set
    max_frames: Optional[int] = None  # frames per clip (inputs are cut to their first N frames); None: all
    frame_stride: int = 1  # score every n-th frame of the (cut) clip
    crop_size: Optional[int] = None  # aligned crop side for the judges / FED; None: the emotion judge's input size (else 112)
    rereconstruct: str = "regressor"  # geometry columns' re-reconstruction: "regressor" (bundle's, aligned crops) or "fitter" (photometric re-fit of whole frames)
    refit_steps: int = 40  # rereconstruct=fitter: photometric fitter iterations per video
    refit_render_size: int = 64  # rereconstruct=fitter: side of the photometric render, pixels (clamped to the frame side)
    device: str = "cpu"  # cpu, cuda, cuda:1, ...
    seed: int = 0  # torch seed (noise-free parts: no effect on the numbers)
    strict: bool = False  # true: a configured file that is missing is an error (default: the method is skipped, reported)
    progress: bool = True  # tqdm bars
    edit: EditSettings = field(default_factory=EditSettings)
    monotonicity: MonotonicityConfig = field(default_factory=MonotonicityConfig)
    wandb: WandbSettings = field(default_factory=WandbSettings)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)


def _list_fields(cls: type, prefix: str = "") -> set[str]:
    """Dotted names of the ``list[...]`` fields of a (nested) dataclass schema."""
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            out |= _list_fields(type(default), name + ".")
        elif isinstance(default, list):
            out.add(name)
    return out


def evaluate_config_keys() -> list[str]:
    """Every valid dotted key of :class:`EvaluateConfig` (for messages and the sweep test)."""
    return config_keys(OmegaConf.structured(EvaluateConfig))


def _comma_items(value: str) -> list[str]:
    """``"a, b,c"`` → ``["a", "b", "c"]`` (empty items dropped)."""
    return [p.strip() for p in value.split(",") if p.strip()]


def _normalise_override(arg: str, lists: set[str]) -> str:
    """A ``key=a,b`` override of a list field as ``key=['a', 'b']``; any other override unchanged."""
    key, value = split_override(arg)
    stripped = value.strip()
    if key in lists and not stripped.startswith("["):
        quoted = ", ".join("'" + p.replace("'", "\\'") + "'" for p in _comma_items(stripped))
        return f"{key}=[{quoted}]"
    return arg


def _split_comma_lists(content: dict, lists: set[str]) -> dict:
    """``content`` (a YAML file's mapping) with a comma-separated string under a list field as a list."""
    for dotted in lists:
        *sections, leaf = dotted.split(".")
        node: Any = content
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = _comma_items(node[leaf])
    return content


def check_config(cfg: EvaluateConfig) -> EvaluateConfig:
    """Value checks the schema cannot express; ``ConfigError`` listing every problem."""
    from emoedit.evaluation.methods import canonical_method_name

    problems = []
    if not cfg.world or cfg.world == "???":
        problems.append("world: the synthetic world folder is required (world=PATH)")
    bad_sets = [s for s in cfg.sets if s not in EVALUATION_SETS]
    if bad_sets or not cfg.sets:
        problems.append(f"sets: must be a non-empty subset of {list(EVALUATION_SETS)}, got {list(cfg.sets)}")
    for where, names in (("methods", cfg.methods), ("monotonicity.methods", cfg.monotonicity.methods)):
        for position, name in enumerate(names):
            try:
                names[position] = canonical_method_name(name)
            except ValueError as err:
                problems.append(f"{where}: {err}")
    for name in ("max_items", "max_frames", "crop_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            problems.append(f"{name} must be >= 1 or null, got {value}")
    for set_name, count in cfg.items_per_set.items():
        if set_name not in EVALUATION_SETS or int(count) < 1:
            problems.append(f"items_per_set: {set_name!r}: {count} (sets {list(EVALUATION_SETS)}, counts >= 1)")
    if cfg.max_frames is not None and cfg.max_frames < 3:
        problems.append(f"max_frames must be >= 3 (jitter needs 3 frames), got {cfg.max_frames}")
    if cfg.frame_stride < 1:
        problems.append(f"frame_stride must be >= 1, got {cfg.frame_stride}")
    if cfg.rereconstruct not in RERECONSTRUCT_MODES:
        problems.append(f"rereconstruct must be one of {list(RERECONSTRUCT_MODES)}, got {cfg.rereconstruct!r}")
    if cfg.refit_steps < 1:
        problems.append(f"refit_steps must be >= 1, got {cfg.refit_steps}")
    if cfg.refit_render_size < 8:
        problems.append(f"refit_render_size must be >= 8 pixels, got {cfg.refit_render_size}")
    if cfg.lpips_net not in ("alex", "vgg"):
        problems.append(f"lpips_net must be alex or vgg, got {cfg.lpips_net!r}")
    from emoedit.pipeline.editor import TEXTURE_MODES

    if cfg.edit.texture_mode not in TEXTURE_MODES:
        problems.append(f"edit.texture_mode must be one of {list(TEXTURE_MODES)}, got {cfg.edit.texture_mode!r}")
    if not cfg.edit.teeth_gate >= 0 or (cfg.edit.teeth_gate > 0 and cfg.edit.texture_mode != "warp"):
        problems.append(f"edit.teeth_gate must be >= 0 and is for texture_mode warp only, got {cfg.edit.teeth_gate}")
    if cfg.edit.batch_size < 1:
        problems.append(f"edit.batch_size must be >= 1, got {cfg.edit.batch_size}")
    mono = cfg.monotonicity
    if mono.set not in EVALUATION_SETS:
        problems.append(f"monotonicity.set must be one of {list(EVALUATION_SETS)}, got {mono.set!r}")
    if mono.enabled and (len(mono.alphas) < 2 or len(set(mono.alphas)) != len(mono.alphas)
                         or any(a < 0 for a in mono.alphas)):
        problems.append(f"monotonicity.alphas must be >= 2 distinct values >= 0, got {list(mono.alphas)}")
    if mono.items < 1:
        problems.append(f"monotonicity.items must be >= 1, got {mono.items}")
    if cfg.wandb.mode not in ("offline", "online", "disabled"):
        problems.append(f"wandb.mode must be offline, online or disabled, got {cfg.wandb.mode!r}")
    if problems:
        raise ConfigError("evaluate config: " + "; ".join(problems))
    return cfg


def load_evaluate_config(
    path: str | os.PathLike | None,  # YAML file (None: defaults + overrides only)
    overrides: Sequence[str] = (),  # key=value strings (OmegaConf dotlist; lists also as a,b,c)
) -> EvaluateConfig:
    """Compose and check an :class:`EvaluateConfig` (see the module docstring)."""
    base = structured_config(EvaluateConfig)  # items_per_set (a dict field) takes any set name: check_config checks
    lists = _list_fields(EvaluateConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: evaluation config file not found")
        base = merge_config(base, _split_comma_lists(load_yaml_mapping(path), lists), str(path))
    if overrides:
        dotlist = [_normalise_override(arg, lists) for arg in overrides]
        base = merge_config(base, dotlist_to_dict(dotlist), "command line")
    if OmegaConf.is_missing(base, "world"):
        raise ConfigError("evaluate config: world: the synthetic world folder is required (world=PATH or --world)")
    try:
        cfg = OmegaConf.to_object(base)
    except OmegaConfBaseException as err:
        raise ConfigError(f"evaluate config: {err}") from None
    assert isinstance(cfg, EvaluateConfig)
    return check_config(cfg)


__all__ = [
    "ALL_METHODS",
    "RERECONSTRUCT_MODES",
    "BaselineFiles",
    "EditSettings",
    "EvaluateConfig",
    "JudgeFiles",
    "MonotonicityConfig",
    "WandbSettings",
    "check_config",
    "evaluate_config_keys",
    "load_evaluate_config",
]
