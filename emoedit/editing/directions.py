"""Edit directions in the t-GAN's W+ space (METHOD.md §3.5, eq. 5; training step 8 of §4).

For every training subject ``i`` and emotion ``j`` (``EMOTIONS`` order)::

    d[i, j] = mean(W+ latents of subject i's textures at emotion j, level L)
            − mean(W+ latents of subject i's neutral textures)            (eq. 5)

with ``L = MAX_LEVEL`` (MEAD's strongest level, strength α = 1) unless configured. Neutral
textures of any level count. Latents of other levels are ignored.

Pieces:

- :func:`solve_directions` — eq. 5 on given latents and labels;
- :class:`DirectionAccumulator` — the same, streaming: per-subject float64 sums, so a whole
  MEAD cache never has to be held in memory;
- :func:`encode_cache` — encodes a ``textures`` cache with a :class:`PSPEncoder` in batches;
- :func:`run_directions` — the ``emoedit directions`` entry: cache + encoder checkpoint →
  ``directions.pt`` (optionally with eq. 4's τ, given or calibrated with the subject classifier);
- :class:`EditDirections` — the result with its subject / emotion names, the level, the
  per-pair counts, the encoder checkpoint's SHA-256 and eq. 4's softmax temperature τ
  (``subject_temperature``: 1 = the paper; :mod:`emoedit.editing.subject_temperature`);
  ``save`` / ``load`` (atomic, ``weights_only``).

A subject without textures of some emotion at level L (or without neutral textures) is an
error by default (``missing="error"``, naming the subjects and emotions). With
``missing="mean"`` the missing ``d[i, j]`` is filled with the mean of the other subjects'
``d[·, j]`` (recorded: ``counts[i, j] == 0``, ``EditDirections.filled``); an emotion that no
subject has is an error either way. To solve fewer emotions on purpose (a dataset or a
synthetic world with a subset of MEAD's), pass ``emotions=``: the directions tensor still
has every emotion of ``EMOTIONS`` (code order), the others are zero and not in
``EditDirections.solved`` (the texture editor refuses to apply them).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from emoedit.atomic_io import atomic_torch_save, sha256_file
from emoedit.editing.emotion_code import EMOTIONS, MAX_LEVEL, NEUTRAL, canonical_emotion
from emoedit.shape_checks import assert_finite, assert_shape

DIRECTIONS_FORMAT = "emoedit-edit-directions"
DIRECTIONS_VERSION = 1
MISSING_POLICIES: tuple[str, ...] = ("error", "mean")
#: ``run_directions(subject_temperature=CALIBRATE)``: pick eq. 4's τ leave-one-subject-out.
CALIBRATE = "calibrate"
#: Key of ``EditDirections.extra`` holding the calibration record of ``subject_temperature``.
TEMPERATURE_RECORD_KEY = "subject_temperature"


class DirectionsError(ValueError):
    """Edit directions that cannot be solved or a directions file that cannot be read."""


# --------------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class EditDirections:
    """``d[i, j]`` of eq. 5 for N subjects × E emotions, with where they came from."""

    directions: Tensor  # (N, E, num_ws, w_dim) float32: d[i, j]
    subjects: tuple[str, ...]  # N subject names (row order)
    emotions: tuple[str, ...]  # E emotion names (column order; EMOTIONS for solved directions)
    level: int  # intensity level L the emotional means were taken at
    counts: Tensor  # (N, E) int64: latents averaged at (subject, emotion, L); 0 = filled by the fallback
    neutral_counts: Tensor  # (N,) int64: neutral latents averaged per subject (0 = every row filled)
    encoder_sha256: str | None = None  # SHA-256 of the encoder checkpoint file the latents came from
    missing: str = "error"  # policy used for missing pairs ("error" or "mean")
    solved: tuple[str, ...] | None = None  # emotions with directions; None = all of ``emotions``
    extra: dict[str, Any] = field(default_factory=dict)  # free plain data (e.g. the cache path, views)
    subject_temperature: float = 1.0  # τ of eq. 4's softmax(f(I) / τ); 1 = the paper (> 0, finite)

    def __post_init__(self) -> None:
        n, e = len(self.subjects), len(self.emotions)
        dims = assert_shape(self.directions, (n, e, "K", "C"), "EditDirections.directions")
        assert_shape(self.counts, (n, e), "EditDirections.counts", dims)
        assert_shape(self.neutral_counts, (n,), "EditDirections.neutral_counts", dims)
        assert_finite(self.directions, "EditDirections.directions")
        if len(set(self.subjects)) != n or len(set(self.emotions)) != e:
            raise DirectionsError("EditDirections: subject and emotion names must be unique")
        if self.missing not in MISSING_POLICIES:
            raise DirectionsError(f"EditDirections: missing must be one of {MISSING_POLICIES}, got {self.missing!r}")
        solved = tuple(self.emotions) if self.solved is None else tuple(self.solved)
        unknown = [name for name in solved if name not in self.emotions]
        if unknown:
            raise DirectionsError(f"EditDirections: solved emotions {unknown} are not among {list(self.emotions)}")
        object.__setattr__(self, "solved", solved)
        object.__setattr__(self, "subject_temperature", check_subject_temperature(self.subject_temperature))

    @property
    def num_subjects(self) -> int:
        return len(self.subjects)

    @property
    def num_ws(self) -> int:
        return int(self.directions.shape[2])

    @property
    def w_dim(self) -> int:
        return int(self.directions.shape[3])

    @property
    def solved_mask(self) -> Tensor:
        """(E,) bool: emotions that have directions (``solved``)."""
        return torch.tensor([name in self.solved for name in self.emotions], dtype=torch.bool)

    @property
    def filled(self) -> Tensor:
        """(N, E) bool: directions of solved emotions filled by the ``mean`` fallback (no data)."""
        return (self.counts == 0) & self.solved_mask

    def mean_directions(self) -> Tensor:
        """(E, num_ws, w_dim): one direction per emotion, averaged over the subjects (the
        "without classifier" ablation). Filled rows hold the mean already, so they do not move it."""
        return self.directions.mean(dim=0)

    def direction(self, subject: str, emotion: str) -> Tensor:
        """``d[subject, emotion]``: (num_ws, w_dim)."""
        name = canonical_emotion(emotion)
        if subject not in self.subjects:
            raise DirectionsError(f"subject {subject!r} has no directions; subjects: {list(self.subjects)[:8]}...")
        if name not in (self.solved or ()):
            raise DirectionsError(f"no direction for emotion {name!r}; solved emotions: {list(self.solved or ())}")
        return self.directions[self.subjects.index(subject), self.emotions.index(name)]

    def describe(self) -> str:
        """A few lines for the command line: sizes, level, counts, filled pairs, encoder hash."""
        solved = self.solved_mask
        counts = self.counts[:, solved]
        lines = [
            f"{self.num_subjects} subjects × {len(self.emotions)} emotions, W+ {self.num_ws}×{self.w_dim}, "
            f"level {self.level}",
            f"solved emotions: {', '.join(self.solved or ()) or 'none'}",
            f"latents per (subject, emotion): {int(counts.min()) if counts.numel() else 0}"
            f"–{int(counts.max()) if counts.numel() else 0}; neutral per subject: "
            f"{int(self.neutral_counts.min())}–{int(self.neutral_counts.max())}",
            f"filled by the mean of other subjects: {int(self.filled.sum())} pairs",
            f"direction norms: mean {float(self.directions[:, solved].flatten(2).norm(dim=-1).mean()):.4g}",
        ]
        if self.encoder_sha256:
            lines.append(f"encoder checkpoint sha256: {self.encoder_sha256[:16]}…")
        if self.subject_temperature != 1.0:
            how = "calibrated leave-one-subject-out" if TEMPERATURE_RECORD_KEY in self.extra else "set by hand"
            lines.append(f"eq. 4 subject softmax temperature: τ = {self.subject_temperature:g} ({how}; 1 = the paper)")
        return "\n".join(lines)

    def with_subject_temperature(
        self,
        temperature: float,  # τ of eq. 4's softmax(f(I) / τ) (> 0, finite; 1 = the paper)
        calibration: Mapping[str, Any] | None = None,  # plain-data record of how τ was chosen; None = by hand
    ) -> EditDirections:
        """A copy with ``subject_temperature = temperature``. The record is stored under
        ``extra["subject_temperature"]``; without one, a stale record of an earlier calibration is
        dropped. A record holding a ``"temperature"`` must agree with ``temperature``."""
        tau = check_subject_temperature(temperature)
        extra = {k: v for k, v in self.extra.items() if k != TEMPERATURE_RECORD_KEY}
        if calibration is not None:
            if not isinstance(calibration, Mapping):
                raise DirectionsError(f"calibration must be a dict of plain data, got {type(calibration).__name__}")
            record = dict(calibration)
            if "temperature" in record and float(record["temperature"]) != tau:
                raise DirectionsError(f"calibration record chose τ = {record['temperature']!r}, "
                                      f"but the temperature given is {tau!r}")
            extra[TEMPERATURE_RECORD_KEY] = record
        return replace(self, subject_temperature=tau, extra=extra)

    def reorder(self, subjects: Sequence[str]) -> EditDirections:
        """The same directions with rows in the order of ``subjects`` (e.g. a classifier's)."""
        names = tuple(subjects)
        unknown = [s for s in names if s not in self.subjects]
        if unknown:
            raise DirectionsError(
                f"subjects {unknown[:5]} have no directions (directions cover {len(self.subjects)} subjects)"
            )
        if len(set(names)) != len(names):
            raise DirectionsError("reorder: subject names repeated")
        rows = torch.tensor([self.subjects.index(s) for s in names], dtype=torch.int64)
        return EditDirections(
            directions=self.directions[rows], subjects=names, emotions=self.emotions, level=self.level,
            counts=self.counts[rows], neutral_counts=self.neutral_counts[rows], encoder_sha256=self.encoder_sha256,
            missing=self.missing, solved=self.solved, extra=dict(self.extra),
            subject_temperature=self.subject_temperature,
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write a plain dict (``weights_only``-loadable) atomically."""
        body = {
            "format": DIRECTIONS_FORMAT,
            "version": DIRECTIONS_VERSION,
            "directions": self.directions.detach().cpu().float().contiguous(),
            "subjects": list(self.subjects),
            "emotions": list(self.emotions),
            "level": int(self.level),
            "counts": self.counts.detach().cpu().to(torch.int64),
            "neutral_counts": self.neutral_counts.detach().cpu().to(torch.int64),
            "encoder_sha256": self.encoder_sha256,
            "missing": self.missing,
            "solved": list(self.solved or ()),
            "extra": dict(self.extra),
            "subject_temperature": float(self.subject_temperature),
        }
        return atomic_torch_save(body, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EditDirections:
        """Read a file written by :meth:`save` (``weights_only=True``); clear errors for bad files."""
        path = Path(path)
        if not path.is_file():
            raise DirectionsError(f"{path}: directions file not found")
        try:
            body = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DirectionsError(f"{path}: not a readable directions file ({type(err).__name__}: {err})") from None
        if not isinstance(body, dict) or body.get("format") != DIRECTIONS_FORMAT:
            raise DirectionsError(f"{path}: not an emoedit directions file (no 'format': {DIRECTIONS_FORMAT!r})")
        if body.get("version") != DIRECTIONS_VERSION:
            raise DirectionsError(
                f"{path}: directions file version {body.get('version')!r}, expected {DIRECTIONS_VERSION}"
            )
        try:
            return cls(
                directions=body["directions"], subjects=tuple(body["subjects"]), emotions=tuple(body["emotions"]),
                level=int(body["level"]), counts=body["counts"], neutral_counts=body["neutral_counts"],
                encoder_sha256=body.get("encoder_sha256"), missing=body.get("missing", "error"),
                solved=tuple(body["solved"]), extra=dict(body.get("extra") or {}),
                subject_temperature=float(body.get("subject_temperature", 1.0)),  # absent in older files: the paper
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DirectionsError(f"{path}: invalid directions file ({type(err).__name__}: {err})") from None


def check_subject_temperature(value: Any) -> float:
    """``value`` as a float τ > 0, finite; :class:`DirectionsError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DirectionsError(f"subject_temperature must be a positive finite number, got {value!r}")
    tau = float(value)
    if not (tau > 0 and math.isfinite(tau)):
        raise DirectionsError(f"subject_temperature must be a positive finite number, got {value!r}")
    return tau


def without_clips(
    reader: Any,  # the opened cache the index comes from (named in errors)
    index: Any,  # its records, possibly already filtered
    exclude_clips: Sequence[str],  # clip ids (the cache's "clip" metadata) to leave out
) -> Any:
    """``index`` without the records of ``exclude_clips``. :class:`DirectionsError` when the cache
    has no clip ids or does not hold one of them (a mistyped or stale id would otherwise leave a
    held-out clip in silently)."""
    if not exclude_clips:
        return index
    if "clip" not in index.names:
        raise DirectionsError(f"{reader.root}: the cache has no 'clip' metadata, so clips cannot be excluded")
    unknown = sorted({str(c) for c in exclude_clips} - {str(c) for c in reader.records().unique("clip")})
    if unknown:
        raise DirectionsError(f"{reader.root}: clips to exclude that the cache does not hold: {unknown[:5]}"
                              + (f" ... ({len(unknown)} in all)" if len(unknown) > 5 else ""))
    return index.select(~index.mask("clip", [str(c) for c in exclude_clips]))


# --------------------------------------------------------------------------- solving
class DirectionAccumulator:
    """Streaming eq. 5: add labelled latents batch by batch, then :meth:`solve`.

    Keeps per subject a float64 sum of neutral latents and one per emotion at ``level``.
    """

    def __init__(
        self,
        *,
        num_ws: int,  # W+ entries
        w_dim: int,  # width of one W entry
        level: int = MAX_LEVEL,  # intensity level the emotional means are taken at
    ) -> None:
        self.num_ws, self.w_dim, self.level = int(num_ws), int(w_dim), int(level)
        self._neutral: dict[str, Tensor] = {}  # subject -> (num_ws, w_dim) float64 sum
        self._neutral_count: dict[str, int] = {}
        self._emotional: dict[str, Tensor] = {}  # subject -> (E, num_ws, w_dim) float64 sum
        self._emotional_count: dict[str, Tensor] = {}  # subject -> (E,) int64
        self.ignored = 0  # latents of another level

    def add(
        self,
        latents: Tensor,  # (B, num_ws, w_dim) float W+ latents
        subjects: Sequence[str],  # B subject names
        emotions: Sequence[str],  # B emotion names ("neutral" or one of EMOTIONS; aliases allowed)
        levels: Sequence[int] | Tensor,  # B intensity levels
    ) -> int:
        """Accumulate a batch; returns how many latents were used (the rest are of another level)."""
        assert_shape(latents, (None, self.num_ws, self.w_dim), "latents")
        assert_finite(latents, "latents")
        count = latents.shape[0]
        levels = [int(v) for v in (levels.tolist() if isinstance(levels, Tensor) else levels)]
        if not len(subjects) == len(emotions) == len(levels) == count:
            raise DirectionsError(
                f"labels do not match the latents: {count} latents, {len(subjects)} subjects, "
                f"{len(emotions)} emotions, {len(levels)} levels"
            )
        names = [canonical_emotion(e) for e in emotions]
        data = latents.detach().to("cpu", torch.float64)
        used = 0
        for subject in dict.fromkeys(subjects):
            rows = [k for k, s in enumerate(subjects) if s == subject]
            neutral = [k for k in rows if names[k] == NEUTRAL]
            if neutral:
                total = data[neutral].sum(0)
                self._neutral[subject] = self._neutral.get(subject, torch.zeros_like(total)) + total
                self._neutral_count[subject] = self._neutral_count.get(subject, 0) + len(neutral)
                used += len(neutral)
            emotional = [k for k in rows if names[k] != NEUTRAL and levels[k] == self.level]
            self.ignored += len(rows) - len(neutral) - len(emotional)
            if emotional:
                empty = torch.zeros(len(EMOTIONS), self.num_ws, self.w_dim, dtype=torch.float64)
                sums = self._emotional.setdefault(subject, empty)
                counts = self._emotional_count.setdefault(subject, torch.zeros(len(EMOTIONS), dtype=torch.int64))
                index = torch.tensor([EMOTIONS.index(names[k]) for k in emotional], dtype=torch.int64)
                sums.index_add_(0, index, data[emotional])
                counts.index_add_(0, index, torch.ones_like(index))
                used += len(emotional)
        return used

    @property
    def subjects(self) -> tuple[str, ...]:
        """Every subject seen so far (sorted)."""
        return tuple(sorted(set(self._neutral) | set(self._emotional)))

    def solve(
        self,
        *,
        subjects: Sequence[str] | None = None,  # rows, in order; None = every subject seen (sorted)
        emotions: Sequence[str] | None = None,  # emotions to solve; None = all of EMOTIONS
        missing: str = "error",  # "error" or "mean" (see the module docstring)
        encoder_sha256: str | None = None,  # recorded in the result
        extra: dict[str, Any] | None = None,  # free plain data recorded in the result
    ) -> EditDirections:
        """Eq. 5 for every (subject, solved emotion); raises :class:`DirectionsError` for missing data."""
        if missing not in MISSING_POLICIES:
            raise DirectionsError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        solved = EMOTIONS if emotions is None else tuple(dict.fromkeys(canonical_emotion(e) for e in emotions))
        if NEUTRAL in solved or not solved:
            raise DirectionsError(f"emotions to solve must be a non-empty subset of {EMOTIONS}, got {list(solved)}")
        wanted = torch.tensor([name in solved for name in EMOTIONS], dtype=torch.bool)
        names = tuple(self.subjects if subjects is None else subjects)
        if not names:
            raise DirectionsError("no latents: nothing to solve directions from")
        n, e = len(names), len(EMOTIONS)
        directions = torch.zeros(n, e, self.num_ws, self.w_dim, dtype=torch.float64)
        counts = torch.zeros(n, e, dtype=torch.int64)
        neutral_counts = torch.zeros(n, dtype=torch.int64)
        for row, subject in enumerate(names):
            neutral_n = self._neutral_count.get(subject, 0)
            neutral_counts[row] = neutral_n
            if neutral_n == 0:
                continue
            neutral_mean = self._neutral[subject] / neutral_n
            if subject in self._emotional:
                subject_counts = self._emotional_count[subject]
                present = subject_counts > 0
                present &= wanted
                means = self._emotional[subject][present] / subject_counts[present].to(torch.float64)[:, None, None]
                directions[row, present] = means - neutral_mean
                counts[row] = torch.where(wanted, subject_counts, torch.zeros_like(subject_counts))
        problems = _missing_pairs(names, counts, neutral_counts, self.level, solved)
        if problems and missing == "error":
            raise DirectionsError(
                "cannot solve eq. 5 for every training subject and emotion: " + "; ".join(problems[:10])
                + ("; ..." if len(problems) > 10 else "")
                + " (missing='mean' fills them with the mean of the other subjects' directions)"
            )
        if problems:
            have = counts > 0  # (N, E)
            for column in range(e):
                if not wanted[column]:
                    continue
                rows = have[:, column]
                if not rows.any():
                    raise DirectionsError(
                        f"no subject has textures of emotion {EMOTIONS[column]!r} at level {self.level}"
                    )
                directions[~rows, column] = directions[rows, column].mean(0)
        return EditDirections(
            directions=directions.float(), subjects=names, emotions=EMOTIONS, level=self.level, counts=counts,
            neutral_counts=neutral_counts, encoder_sha256=encoder_sha256, missing=missing,
            solved=tuple(name for name in EMOTIONS if name in solved), extra=dict(extra or {}),
        )


def _missing_pairs(
    names: Sequence[str], counts: Tensor, neutral_counts: Tensor, level: int, solved: Sequence[str]
) -> list[str]:
    problems = []
    for row, subject in enumerate(names):
        if int(neutral_counts[row]) == 0:
            problems.append(f"subject {subject!r} has no neutral textures")
            continue
        absent = [name for j, name in enumerate(EMOTIONS) if name in solved and int(counts[row, j]) == 0]
        if absent:
            problems.append(f"subject {subject!r} has no textures of {', '.join(absent)} at level {level}")
    return problems


def solve_directions(
    latents: Tensor,  # (M, num_ws, w_dim) float W+ latents of textures
    subjects: Sequence[str],  # M subject names
    emotions: Sequence[str],  # M emotion names ("neutral" or one of EMOTIONS; aliases allowed)
    levels: Sequence[int] | Tensor,  # M intensity levels (neutral: any)
    *,
    level: int = MAX_LEVEL,  # level the emotional means are taken at
    missing: str = "error",  # "error" or "mean"
    subject_order: Sequence[str] | None = None,  # rows of the result; None = sorted subjects
    solve_emotions: Sequence[str] | None = None,  # emotions to solve; None = all of EMOTIONS
    encoder_sha256: str | None = None,  # recorded in the result
) -> EditDirections:
    """Eq. 5 for every subject in the labels and every emotion of ``EMOTIONS`` (or ``solve_emotions``)."""
    dims = assert_shape(latents, (None, "K", "C"), "latents")
    accumulator = DirectionAccumulator(num_ws=dims["K"], w_dim=dims["C"], level=level)
    accumulator.add(latents, subjects, emotions, levels)
    return accumulator.solve(subjects=subject_order, emotions=solve_emotions, missing=missing,
                             encoder_sha256=encoder_sha256)


# --------------------------------------------------------------------------- encoding a cache
@dataclass(frozen=True)
class EncodedBatch:
    """W+ latents of a batch of cache records with their labels."""

    wplus: Tensor  # (B, num_ws, w_dim) float32, on the CPU
    subjects: tuple[str, ...]  # B subject names
    emotions: tuple[str, ...]  # B emotion names
    levels: tuple[int, ...]  # B intensity levels
    clips: tuple[str, ...]  # B clip ids


def texture_to_network(uv_texture: Tensor) -> Tensor:
    """uint8 ``(B, 3, T, T)`` textures → float ``[-1, 1]`` (the networks' convention)."""
    if uv_texture.dtype != torch.uint8:
        raise TypeError(f"uv_texture: expected uint8 textures from the cache, got {uv_texture.dtype}")
    return uv_texture.float().div_(127.5).sub_(1.0)


def encode_cache(
    reader: Any,  # an opened CacheReader of kind "textures"
    encoder: Any,  # a PSPEncoder (on ``device``; eval mode is set here)
    *,
    index: Any | None = None,  # RecordIndex of the records to encode (default: all)
    batch_size: int = 32,  # textures per forward pass
    device: str | torch.device = "cpu",  # where the encoder runs
    num_workers: int = 0,  # DataLoader worker processes reading shards
    max_cached_shards: int = 4,  # shards kept in memory per worker
) -> Iterator[EncodedBatch]:
    """Encode records in index order, ``batch_size`` at a time (no gradients)."""
    from torch.utils.data import DataLoader

    from emoedit.data.cache import CacheDataset, ShardLocalSampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = CacheDataset(reader, fields=("uv_texture",), index=index, max_cached_shards=max_cached_shards)
    for name in ("subject", "emotion", "level"):
        if name not in dataset.index.names:
            raise DirectionsError(f"{reader.root}: the cache has no {name!r} metadata (needed for eq. 5)")
    sampler = ShardLocalSampler(dataset.index, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    encoder.eval()
    device = torch.device(device)
    with torch.no_grad():
        for batch in loader:
            images = texture_to_network(batch["uv_texture"]).to(device)
            wplus = encoder(images).wplus.float().cpu()
            yield EncodedBatch(
                wplus=wplus,
                subjects=tuple(str(s) for s in batch["subject"]),
                emotions=tuple(str(s) for s in batch["emotion"]),
                levels=tuple(int(v) for v in batch["level"]),
                clips=tuple(str(c) for c in batch["clip"]),
            )


def _check_labels_before_encoding(
    index: Any, *, subjects: Sequence[str] | None, emotions: Sequence[str] | None, level: int, missing: str,
    where: str,
) -> None:
    """Fail fast (from the metadata alone, before encoding anything) when eq. 5 cannot be solved."""
    if missing not in MISSING_POLICIES:
        raise DirectionsError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    names = tuple(subjects) if subjects is not None else tuple(str(s) for s in index.unique("subject"))
    solved = EMOTIONS if emotions is None else tuple(dict.fromkeys(canonical_emotion(e) for e in emotions))
    if NEUTRAL in solved or not solved:
        raise DirectionsError(f"emotions to solve must be a non-empty subset of {EMOTIONS}, got {list(solved)}")
    counts = torch.zeros(len(names), len(EMOTIONS), dtype=torch.int64)
    neutral = torch.zeros(len(names), dtype=torch.int64)
    row_of = {s: i for i, s in enumerate(names)}
    for subject, emotion, record_level in zip(index.column("subject"), index.column("emotion"), index.column("level")):
        row = row_of.get(str(subject))
        if row is None:
            continue
        name = canonical_emotion(str(emotion))
        if name == NEUTRAL:
            neutral[row] += 1
        elif int(record_level) == level:
            counts[row, EMOTIONS.index(name)] += 1
    problems = _missing_pairs(names, counts, neutral, level, solved)
    if problems and missing == "error":
        raise DirectionsError(
            f"{where}: cannot solve eq. 5 for every training subject and emotion: " + "; ".join(problems[:10])
            + ("; ..." if len(problems) > 10 else "")
            + " (missing='mean' fills them with the mean of the other subjects' directions; emotions= solves fewer)"
        )
    absent = [name for j, name in enumerate(EMOTIONS) if name in solved and not bool((counts[:, j] > 0).any())]
    if absent:
        raise DirectionsError(f"{where}: no subject has textures of {', '.join(absent)} at level {level}")


def run_directions(
    cache: str | os.PathLike,  # folder of a "textures" cache
    encoder_ckpt: str | os.PathLike,  # texture_encoder checkpoint (train.py texture_encoder)
    out: str | os.PathLike,  # directions file to write (.pt)
    device: str | torch.device = "cpu",  # where the encoder runs
    batch_size: int = 32,  # textures per forward pass
    *,
    subjects: Sequence[str] | None = None,  # training subjects (rows, in order); None = every subject in the cache
    views: Sequence[str] | None = ("front",),  # keep only these views (None: all; ignored when the cache has no 'view')
    level: int = MAX_LEVEL,  # level the emotional means are taken at
    missing: str = "error",  # "error" or "mean"
    emotions: Sequence[str] | None = None,  # emotions to solve; None = all of EMOTIONS
    num_workers: int = 0,  # DataLoader workers reading shards
    verify_checksums: bool = True,  # verify each shard's SHA-256 on first load
    exclude_clips: Sequence[str] = (),  # clip ids (the cache's "clip" metadata) left out, e.g. held-out evaluation clips
    classifier: Any | None = None,  # SubjectClassifier or its checkpoint path: default subjects (its order), calibration
    subject_temperature: float | str = 1.0,  # eq. 4's τ: a number (1 = the paper) or "calibrate" (needs classifier)
) -> EditDirections:
    """``emoedit directions``: encode the cache's neutral and level-``level`` textures of
    ``subjects`` (minus ``exclude_clips``) and write eq. 5's directions to ``out``. Returns what was written.

    With a ``classifier`` (a loaded :class:`~emoedit.networks.subject_classifier.SubjectClassifier`,
    or a checkpoint path, loaded once here) and ``subjects=None``, the rows are its subjects in its
    order. ``subject_temperature`` is stored with the directions: a number as is, ``"calibrate"``
    picks τ leave-one-subject-out on the same neutral textures (same views, same excluded clips) with
    the classifier (moved to ``device``;
    :func:`~emoedit.editing.subject_temperature.calibrate_subject_temperature_on_cache`) and records
    the calibration under ``extra["subject_temperature"]``."""
    from emoedit.data.cache import CacheReader
    from emoedit.networks.psp_encoder import PSPEncoder

    calibrate = isinstance(subject_temperature, str)
    if calibrate and subject_temperature != CALIBRATE:
        raise DirectionsError(f"subject_temperature must be a positive number or {CALIBRATE!r}, "
                              f"got {subject_temperature!r}")
    if calibrate and classifier is None:
        raise DirectionsError(f"subject_temperature={CALIBRATE!r} needs the subject classifier (classifier=)")
    fixed_tau = None if calibrate else check_subject_temperature(subject_temperature)
    classifier_path: Path | None = None
    if isinstance(classifier, (str, os.PathLike)):
        from emoedit.networks.subject_classifier import SubjectClassifier

        classifier_path = Path(classifier)
        classifier = SubjectClassifier.from_checkpoint(classifier_path)
    if classifier is not None and subjects is None:
        subjects = list(classifier.subjects)
    if calibrate and subjects is not None:
        unknown = [s for s in subjects if s not in classifier.subjects]
        if unknown:
            raise DirectionsError(f"subjects {unknown[:5]} are not among the subject classifier's "
                                  f"{len(classifier.subjects)} subjects, so τ cannot be calibrated")
    reader = CacheReader.open(cache, kind="textures", verify_checksums=verify_checksums)
    encoder = PSPEncoder.from_checkpoint(encoder_ckpt).to(device)
    index = reader.records()
    for name in ("subject", "emotion", "level"):
        if name not in index.names:
            raise DirectionsError(f"{reader.root}: the cache has no {name!r} metadata (needed for eq. 5)")
    if views is not None and "view" in index.names:
        index = index.where(view=list(views))
    if subjects is not None:
        absent = sorted(set(subjects) - {str(s) for s in index.unique("subject")})
        if absent:
            raise DirectionsError(f"{reader.root}: subjects {absent[:5]} have no textures (views {views})")
        index = index.where(subject=list(subjects))
    index = without_clips(reader, index, exclude_clips)
    keep = index.mask("emotion", NEUTRAL) | index.mask("level", int(level))
    index = index.select(keep)
    if len(index) == 0:
        raise DirectionsError(f"{reader.root}: no neutral or level-{level} textures to encode")
    _check_labels_before_encoding(index, subjects=subjects, emotions=emotions, level=int(level), missing=missing,
                                  where=str(reader.root))
    accumulator = DirectionAccumulator(num_ws=encoder.num_ws, w_dim=encoder.w_dim, level=level)
    for batch in encode_cache(reader, encoder, index=index, batch_size=batch_size, device=device,
                              num_workers=num_workers):
        accumulator.add(batch.wplus, batch.subjects, batch.emotions, batch.levels)
    result = accumulator.solve(
        subjects=subjects, emotions=emotions, missing=missing, encoder_sha256=sha256_file(encoder_ckpt),
        extra={"cache": str(Path(cache).resolve()), "views": None if views is None else list(views),
               "encoder_checkpoint": str(Path(encoder_ckpt).resolve()), "excluded_clips": sorted(str(c) for c in exclude_clips)},
    )
    if calibrate:
        from emoedit.editing.subject_temperature import calibrate_subject_temperature_on_cache

        calibration = calibrate_subject_temperature_on_cache(  # the neutral records the directions used
            reader, classifier.to(device), result, index=index.select(index.mask("emotion", NEUTRAL)),
            batch_size=batch_size, num_workers=num_workers,
        )
        record: dict[str, Any] = {**calibration.as_dict(), "subjects": list(result.subjects)}  # per_subject's order
        if classifier_path is not None:
            record.update(classifier_checkpoint=str(classifier_path.resolve()),
                          classifier_sha256=sha256_file(classifier_path))
        result = result.with_subject_temperature(calibration.temperature, record)
    elif fixed_tau != 1.0:
        result = result.with_subject_temperature(fixed_tau)
    result.save(out)
    return result
