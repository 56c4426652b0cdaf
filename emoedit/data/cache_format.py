"""On-disk format of the preprocessed caches every DataModule reads.

A cache is a folder written by one preprocessing module through
:class:`emoedit.data.cache_writer.CacheWriter` (from one process, or from several at
once: the ranks of a data-parallel job) and read through
:class:`emoedit.data.cache_reader.CacheReader`. It holds *records* (one per video frame or
image), each made of named tensor *fields* whose dtype and per-record shape are declared
in a :class:`CacheSpec`, plus per-record *metadata* (``str`` or ``int``: subject, emotion,
level, view, frame index, ...). Records belong to *clips* (a video, or an item or a group
of items of an image dataset); a *shard* file holds one clip or several (the writer's
choice). Every clip id is unique in a cache.

On-disk layout
--------------
::

    <root>/
      spec.json                              the CacheSpec; written when the cache is created
      manifest.json                          the consolidated index; written by finalize() on rank 0
      shards/rank-<RRRR>/<stem>.pt           shard files written by rank RRRR (4 digits)
      parts/rank-<RRRR>/shards/<stem>.json   manifest fragment: one entry per shard of rank RRRR
      parts/rank-<RRRR>/reports/<stem>.json  manifest fragment: one entry per clip report of rank RRRR
      parts/manifest.previous.json           a manifest.json moved aside by a write after finalize()

``<stem>`` = the first clip id of the shard with every run of characters outside
``[A-Za-z0-9._-]`` replaced by ``_`` (leading dots stripped, at most 64 characters), then
``-`` and the first 12 hex digits of the SHA-256 of the JSON list of the shard's clip ids
(a report's stem uses its one clip id). Stems are deterministic, so rewriting a clip after
a crash replaces the same files. Every file is written atomically (temporary file in the
same folder, then ``os.replace``: :mod:`emoedit.atomic_io`); names starting with ``.`` are
such temporary files and are ignored (a writer removes its own rank's stale ones, older
than an hour). ``parts/`` is never deleted: it is the writers' journal, ``manifest.json``
its consolidated snapshot. A fragment is a folder of one-entry JSON files rather than one
appended ``.jsonl`` per rank: each entry is then a complete atomic file, and no append
rewrites (or can tear) the entries before it.
A writer that writes into a finalised cache first moves ``manifest.json`` to
``parts/manifest.previous.json`` (merged like a fragment), so nothing is lost.

Shard file
----------
``torch.save`` of a plain dict, loadable with ``torch.load(weights_only=True)``::

    {"format": "emoedit-cache-shard",
     "format_version": [1, 0],
     "kind": "<spec.kind>",
     "fields": {"<field>": Tensor (num_records, *shape) of the declared dtype, ...},
     "meta":   {"<meta>": [num_records str | int], ...},
     "clips":  [["<clip id>", start, count], ...]}   # rows start .. start+count-1

Its SHA-256 and byte size are recorded in the manifest; readers verify them.

``spec.json``
-------------
::

    {"format": "emoedit-cache",
     "format_version": [1, 0],                 # [major, minor] of this on-disk format
     "spec": {
       "kind": "frames",                       # what the cache holds, e.g. frames/textures/coeffs/mouths
       "version": 1,                           # the producer's version of this kind's content
       "fields": {"crop": {"dtype": "uint8", "shape": [3, 224, 224]},
                  "coeffs": {"dtype": "float32", "shape": [257]}, ...},
       "meta": {"subject": "str", "emotion": "str", "level": "int", "frame": "int", ...},
       "attributes": {...}}}                   # free JSON: face model, texture size, recon checkpoint hash, config

Fragment entries (``parts/rank-<RRRR>/shards/<stem>.json``, one per shard)::

    {"path": "shards/rank-0000/<stem>.pt",     # relative to the cache root, POSIX separators
     "sha256": "<64 hex>", "bytes": 123456,    # of the shard file
     "num_records": 40, "rank": 0,
     "written_at": 1718000000.5,               # time.time() when written; the newest entry wins
     "clips": [{"clip": "<clip id>", "start": 0, "count": 40,
                "meta": {"<meta>": <column>, ...}}, ...]}

A metadata ``<column>`` holds the clip's ``count`` values: a single ``str``/``int`` (all
records equal), ``{"range": [first, step]}`` (ints ``first + i*step``), or a list of
``count`` values.

Report entries (``parts/rank-<RRRR>/reports/<stem>.json``, one per reported clip)::

    {"clip": "<clip id>", "rank": 0, "written_at": 1718000000.5,
     "skipped": false,                         # true: the clip has no records and counts as done
     "report": {...}}                          # free JSON: frames without a face, ...

``manifest.json`` (written by ``CacheWriter.finalize()``)::

    {"format": "emoedit-cache",
     "format_version": [1, 0],
     "spec": {...},                            # as in spec.json
     "finalized_at": 1718000000.5,
     "ranks": [0, 1],                          # ranks that have fragments
     "num_clips": 2, "num_records": 80,
     "shards": [<shard entry>, ...],           # as in the fragments, sorted by path; each lists
                                               # only the clips it serves (see duplicates)
     "reports": {"<clip id>": <report entry>, ...},
     "duplicates": [{"clip": "<clip id>", "kept": "<shard path>", "dropped": "<shard path>"}, ...]}

Rules
-----
*Versioning.* ``format_version`` is ``[major, minor]`` of this layout (:data:`FORMAT_VERSION`).
A reader or writer refuses a cache of another major version (:class:`CacheVersionError`
naming the cache and both versions); a newer minor only adds optional keys. The spec's own
``version`` is the producer's version of the kind's content; a consumer states the version
it expects (``CacheReader.open(..., version=2)``) and a mismatch is refused the same way.

*Resume.* A clip is done when an entry (fragment or manifest) lists it and its shard file
exists with the recorded size (optionally the recorded SHA-256), or when a report entry
marks it ``skipped``. A shard on disk without an entry (a crash between the shard write and
the entry write) is not done: the clip is written again, replacing the same file. Reopening a
cache with a different spec is refused (:class:`CacheSpecMismatchError`, listing every
difference).

*Several ranks.* Rank ``r`` writes only ``shards/rank-r/`` and ``parts/rank-r/``, so ranks
never write the same file. A clip written by two ranks (a distributed sampler pads by
repeating items) or rewritten later keeps one copy: the entry whose shard file is present
with the right size, then the newest ``written_at``, then the lowest rank; the others are
listed under ``duplicates``. After every rank has finished (a barrier), rank 0 calls
``finalize()``, which merges the previous manifest (if any) with every fragment, checks every
shard is present with its size (optionally its checksum), and writes ``manifest.json``. A
writer that writes after finalisation moves ``manifest.json`` aside (the cache is
unfinalised again until the next ``finalize()``).

*Reading.* ``CacheReader.open`` requires ``manifest.json`` by default; with
``allow_unfinalized=True`` it merges the fragments by the same rule instead (for inspecting a
running or interrupted job). Every path read from a manifest or fragment must be relative,
without ``..``, and resolve inside the cache root, else it is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from emoedit.atomic_io import sha256_file

FORMAT_NAME = "emoedit-cache"
SHARD_FORMAT_NAME = "emoedit-cache-shard"
FORMAT_VERSION: tuple[int, int] = (1, 0)  # [major, minor] of the on-disk layout

SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
PREVIOUS_MANIFEST_FILE = "parts/manifest.previous.json"  # manifest.json moved aside by a later write
SHARDS_DIR = "shards"
PARTS_DIR = "parts"
SHARD_SUFFIX = ".pt"

CLIP_COLUMN = "clip"  # the reserved metadata column every record has: its clip id
META_TYPES = ("str", "int")

DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- errors


class CacheError(ValueError):
    """A cache that cannot be used as asked: bad input, missing files, not a cache."""


class CacheVersionError(CacheError):
    """A cache written in another major format version, or another version of its kind."""


class CacheSpecMismatchError(CacheError):
    """A cache whose spec differs from the one a writer or consumer expects."""


@dataclass(frozen=True)
class CacheProblem:
    """One problem with one shard file: ``shard`` path, the ``clips`` it holds, what is wrong."""

    shard: Path  # absolute path of the shard file
    clips: tuple[str, ...]  # clip ids the manifest says it holds
    problem: str  # e.g. "checksum mismatch (expected ..., got ...)", "shard file is missing"

    def __str__(self) -> str:
        clips = ", ".join(repr(c) for c in self.clips[:3]) + (", ..." if len(self.clips) > 3 else "")
        return f"{self.shard} (clips {clips}): {self.problem}"


class CacheCorruptError(CacheError):
    """One or more shards are missing, unreadable or fail their checksum.

    ``problems`` lists them all; ``shard``, ``clips`` and ``problem`` are the first one's.
    """

    def __init__(self, problems: Sequence[CacheProblem] | str, hint: str = "") -> None:
        if isinstance(problems, str):  # re-raised from a message only (e.g. by a DataLoader worker)
            self.problems, self.hint = (), hint
            self.shard, self.clips, self.problem = None, (), problems
            super().__init__(problems)
            return
        self.problems = tuple(problems)
        self.hint = hint
        if not self.problems:
            raise ValueError("CacheCorruptError needs at least one problem")
        first = self.problems[0]
        self.shard, self.clips, self.problem = first.shard, first.clips, first.problem
        if len(self.problems) == 1:
            message = f"corrupt cache shard {first}"
        else:
            message = f"{len(self.problems)} corrupt cache shards:\n  " + "\n  ".join(str(p) for p in self.problems)
        super().__init__(message + (f"\n{hint}" if hint else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.hint))


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class FieldSpec:
    """A tensor field: every record holds one tensor of ``dtype`` and ``shape``."""

    dtype: str  # a key of DTYPES, e.g. "uint8", "float32"
    shape: tuple[int, ...]  # per-record shape; records stack to (N, *shape); () for a scalar

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise CacheError(f"FieldSpec: dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        shape = tuple(self.shape)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise CacheError(f"FieldSpec: shape {self.shape!r} must be a tuple of positive ints")
        object.__setattr__(self, "shape", shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


def json_normalise(value: Any, what: str) -> Any:
    """``value`` as JSON gives it back (tuples become lists); error if not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise CacheError(f"{what} must be plain JSON (dict/list/str/int/float/bool/None, finite): {err}") from None


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds: its kind and version, tensor fields, metadata and attributes.

    ``fields`` maps a field name to a :class:`FieldSpec` (or a ``(dtype, shape)`` pair);
    ``meta`` maps a metadata name to ``"str"`` or ``"int"``; ``clip`` is reserved (every
    record's clip id). ``attributes`` is free JSON a consumer checks against its config
    (face model, texture size, reconstruction checkpoint hash, preprocessing config).
    """

    kind: str  # what the cache holds, e.g. "frames", "textures", "coeffs", "mouths"
    version: int  # the producer's version of this kind's content (bump when it changes)
    fields: Mapping[str, FieldSpec]  # tensor fields per record
    meta: Mapping[str, str] = field(default_factory=dict)  # metadata per record: "str" | "int"
    attributes: Mapping[str, Any] = field(default_factory=dict)  # free JSON

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise CacheError(f"CacheSpec: kind must be a non-empty str, got {self.kind!r}")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 0:
            raise CacheError(f"CacheSpec: version must be a non-negative int, got {self.version!r}")
        for section in ("fields", "meta", "attributes"):
            if not isinstance(getattr(self, section), Mapping):
                raise CacheError(f"CacheSpec: {section} must be a mapping, got {type(getattr(self, section)).__name__}")
        fields: dict[str, FieldSpec] = {}
        for name, spec in dict(self.fields).items():
            if not isinstance(spec, FieldSpec):
                try:
                    dtype, shape = spec
                except (TypeError, ValueError):
                    raise CacheError(
                        f"CacheSpec: field {name!r} must be a FieldSpec or (dtype, shape), got {spec!r}"
                    ) from None
                spec = FieldSpec(dtype, tuple(shape))
            fields[name] = spec
        if not fields:
            raise CacheError("CacheSpec: at least one tensor field is needed")
        meta = dict(self.meta)
        for name, kind in meta.items():
            if kind not in META_TYPES:
                raise CacheError(f"CacheSpec: metadata {name!r} has type {kind!r}, expected one of {META_TYPES}")
        for name in [*fields, *meta]:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise CacheError(f"CacheSpec: name {name!r} must be an identifier ([A-Za-z_][A-Za-z0-9_]*)")
            if name == CLIP_COLUMN:
                raise CacheError(f"CacheSpec: {CLIP_COLUMN!r} is reserved (every record's clip id)")
        shared = sorted(set(fields) & set(meta))
        if shared:
            raise CacheError(f"CacheSpec: names used both as field and metadata: {shared}")
        attributes = json_normalise(dict(self.attributes), "CacheSpec.attributes")
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "meta", meta)
        object.__setattr__(self, "attributes", attributes)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "fields": {name: spec.to_json() for name, spec in self.fields.items()},
            "meta": dict(self.meta),
            "attributes": self.attributes,
        }

    @classmethod
    def from_json(cls, data: Any, *, source: str) -> CacheSpec:
        """Parse the ``spec`` object of spec.json / manifest.json; errors name ``source``."""
        if not isinstance(data, dict):
            raise CacheError(f"{source}: 'spec' must be an object")
        missing = sorted({"kind", "version", "fields"} - set(data))
        if missing:
            raise CacheError(f"{source}: spec lacks {missing}")
        fields = data["fields"]
        if not isinstance(fields, dict):
            raise CacheError(f"{source}: spec 'fields' must be an object")
        try:
            parsed = {}
            for name, f in fields.items():
                if not isinstance(f, dict) or not isinstance(f.get("shape"), list):
                    raise CacheError(f"field {name!r} must be {{'dtype': str, 'shape': [int, ...]}}")
                parsed[name] = FieldSpec(f.get("dtype"), tuple(f["shape"]))
            return cls(
                kind=data["kind"],
                version=data["version"],
                fields=parsed,
                meta=data.get("meta", {}),
                attributes=data.get("attributes", {}),
            )
        except CacheError as err:
            raise CacheError(f"{source}: invalid spec: {err}") from None

    def differences(self, other: CacheSpec) -> list[str]:
        """Human-readable differences ``self`` → ``other`` (empty when equal)."""
        out: list[str] = []
        a, b = self.to_json(), other.to_json()
        for key in ("kind", "version"):
            if a[key] != b[key]:
                out.append(f"{key}: {a[key]!r} vs {b[key]!r}")
        for section in ("fields", "meta", "attributes"):
            for name in sorted(set(a[section]) | set(b[section])):
                va, vb = a[section].get(name, "<absent>"), b[section].get(name, "<absent>")
                if va != vb:
                    out.append(f"{section}.{name}: {va!r} vs {vb!r}")
        return out


def check_format_version(found: Any, *, source: str) -> tuple[int, int]:
    """Raise :class:`CacheVersionError` unless ``found`` is ``[major, minor]`` with our major."""
    if (
        not isinstance(found, list)
        or len(found) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in found)
    ):
        raise CacheError(f"{source}: 'format_version' must be [major, minor], got {found!r}")
    if found[0] != FORMAT_VERSION[0]:
        raise CacheVersionError(
            f"{source}: cache format version {found[0]}.{found[1]} cannot be read by this emoedit, "
            f"which reads format version {FORMAT_VERSION[0]}.x (writes {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}); "
            "re-create the cache or use the emoedit version that wrote it"
        )
    return found[0], found[1]


# --------------------------------------------------------------------------- metadata columns


def encode_meta_column(values: Sequence[str | int]) -> Any:
    """Compact JSON for one clip's values of one metadata column (see module docstring)."""
    values = list(values)
    if all(v == values[0] for v in values):
        return values[0]
    if all(isinstance(v, int) for v in values) and len(values) >= 2:
        step = values[1] - values[0]
        if all(values[i] == values[0] + i * step for i in range(len(values))):
            return {"range": [values[0], step]}
    return values


def is_meta_value(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, int) and not isinstance(value, bool)


def decode_meta_column(encoded: Any, count: int, kind: str, *, where: str) -> list[str | int]:
    """Inverse of :func:`encode_meta_column`: ``count`` values of type ``kind``."""
    if isinstance(encoded, dict):
        rng = encoded.get("range")
        if (
            kind != "int"
            or set(encoded) != {"range"}
            or not isinstance(rng, list)
            or len(rng) != 2
            or not all(is_meta_value(v, "int") for v in rng)
        ):
            raise CacheError(f"{where}: bad metadata column {encoded!r}")
        return [rng[0] + i * rng[1] for i in range(count)]
    if isinstance(encoded, list):
        if len(encoded) != count:
            raise CacheError(f"{where}: metadata column has {len(encoded)} values for {count} records")
        values = encoded
    else:
        values = [encoded] * count
    if not all(is_meta_value(v, kind) for v in values):
        raise CacheError(f"{where}: metadata values must be {kind}, got {values[:3]!r}...")
    return list(values)


# --------------------------------------------------------------------------- entries


def _require(data: Any, keys: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    if not isinstance(data, dict):
        raise CacheError(f"{where}: expected an object, got {type(data).__name__}")
    for key, types in keys.items():
        value = data.get(key)
        allowed = types if isinstance(types, tuple) else (types,)
        if key not in data or not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise CacheError(f"{where}: key {key!r} missing or not {types}, got {value!r}")


@dataclass(frozen=True)
class ClipEntry:
    """Where one clip's records are inside a shard, and their metadata (encoded columns)."""

    clip: str  # the clip id
    start: int  # first row inside the shard
    count: int  # number of records (rows start .. start+count-1)
    meta: Mapping[str, Any]  # metadata name -> encoded column (see module docstring)

    def to_json(self) -> dict[str, Any]:
        return {"clip": self.clip, "start": self.start, "count": self.count, "meta": dict(self.meta)}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> ClipEntry:
        _require(data, {"clip": str, "start": int, "count": int, "meta": dict}, where)
        if not data["clip"] or data["start"] < 0 or data["count"] < 1:
            raise CacheError(f"{where}: bad clip entry {data!r}")
        return cls(clip=data["clip"], start=data["start"], count=data["count"], meta=data["meta"])

    def decode_meta(self, spec: CacheSpec, *, where: str) -> dict[str, list[str | int]]:
        """Metadata lists (``count`` values each) for every name in ``spec.meta``."""
        missing = sorted(set(spec.meta) - set(self.meta))
        if missing:
            raise CacheError(f"{where}: clip {self.clip!r} lacks metadata {missing}")
        return {
            name: decode_meta_column(
                self.meta[name], self.count, kind, where=f"{where}: clip {self.clip!r} meta {name!r}"
            )
            for name, kind in spec.meta.items()
        }


@dataclass(frozen=True)
class ShardEntry:
    """One shard file: its path (relative, POSIX), checksum, size and the clips it serves."""

    path: str  # relative to the cache root, e.g. "shards/rank-0000/<stem>.pt"
    sha256: str  # hex digest of the file
    bytes: int  # file size
    num_records: int  # rows in the shard
    rank: int  # the writer rank that wrote it
    written_at: float  # time.time() of the write; the newest entry of a clip wins
    clips: tuple[ClipEntry, ...]  # clips served from this shard

    @property
    def clip_ids(self) -> tuple[str, ...]:
        return tuple(c.clip for c in self.clips)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "num_records": self.num_records,
            "rank": self.rank,
            "written_at": self.written_at,
            "clips": [c.to_json() for c in self.clips],
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> ShardEntry:
        _require(
            data,
            {
                "path": str,
                "sha256": str,
                "bytes": int,
                "num_records": int,
                "rank": int,
                "written_at": (int, float),
                "clips": list,
            },
            where,
        )
        if not re.fullmatch(r"[0-9a-f]{64}", data["sha256"]):
            raise CacheError(f"{where}: 'sha256' must be 64 lowercase hex digits")
        clips = tuple(ClipEntry.from_json(c, where=f"{where} ({data['path']})") for c in data["clips"])
        for c in clips:
            if c.start + c.count > data["num_records"]:
                raise CacheError(
                    f"{where}: clip {c.clip!r} rows {c.start}..{c.start + c.count - 1} exceed the shard's "
                    f"{data['num_records']} records"
                )
        return cls(
            path=data["path"],
            sha256=data["sha256"],
            bytes=data["bytes"],
            num_records=data["num_records"],
            rank=data["rank"],
            written_at=float(data["written_at"]),
            clips=clips,
        )


@dataclass(frozen=True)
class ReportEntry:
    """Per-clip problems found while preprocessing (free JSON); ``skipped`` clips count as done."""

    clip: str  # the clip id
    rank: int  # the writer rank that wrote it
    written_at: float  # time.time() of the write; the newest report of a clip wins
    skipped: bool  # True: the clip produced no records on purpose (e.g. no face found)
    report: Mapping[str, Any]  # free JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "rank": self.rank,
            "written_at": self.written_at,
            "skipped": self.skipped,
            "report": self.report,
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> ReportEntry:
        _require(data, {"clip": str, "rank": int, "written_at": (int, float), "skipped": bool, "report": dict}, where)
        return cls(
            clip=data["clip"],
            rank=data["rank"],
            written_at=float(data["written_at"]),
            skipped=data["skipped"],
            report=data["report"],
        )


# --------------------------------------------------------------------------- paths


def shard_stem(clip_ids: Sequence[str]) -> str:
    """Deterministic, filesystem-safe file stem for a shard holding ``clip_ids``."""
    readable = _UNSAFE_RE.sub("_", clip_ids[0]).lstrip(".")[:64] or "clip"
    digest = hashlib.sha256(json.dumps(list(clip_ids)).encode("utf-8")).hexdigest()[:12]
    return f"{readable}-{digest}"


def rank_name(rank: int) -> str:
    return f"rank-{rank:04d}"


class PathGuard:
    """Confines relative paths from manifests to a cache root (security).

    Refuses absolute paths, ``..`` components and paths whose folder or final symbolic
    link resolves outside the root. Resolved folders are remembered, so checking many
    paths costs about one ``lstat`` each.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._resolved_root = os.path.realpath(root)
        self._inside: dict[str, bool] = {}  # relative folder -> resolves inside the root

    def _within(self, resolved: str) -> bool:
        return resolved == self._resolved_root or resolved.startswith(self._resolved_root.rstrip(os.sep) + os.sep)

    def __call__(self, relative: Any, *, source: str) -> Path:
        """``root / relative``, or :class:`CacheError` naming ``source`` and the path."""
        if not isinstance(relative, str) or not relative:
            raise CacheError(f"{source}: path {relative!r} must be a non-empty relative path")
        if relative.startswith("/") or "\\" in relative or re.match(r"^[A-Za-z]:", relative) or os.path.isabs(relative):
            raise CacheError(f"{source}: path {relative!r} is absolute; cache paths must be relative to the cache root")
        parts = relative.split("/")
        if ".." in parts:
            raise CacheError(f"{source}: path {relative!r} contains '..'; cache paths must stay inside the cache root")
        folder = "/".join(parts[:-1])
        inside = self._inside.get(folder)
        if inside is None:
            inside = self._inside[folder] = self._within(os.path.realpath(os.path.join(self._root, folder)))
        full = self._root / relative
        if not inside or (os.path.islink(full) and not self._within(os.path.realpath(full))):
            raise CacheError(
                f"{source}: path {relative!r} resolves outside the cache root {self._root} (symbolic link?)"
            )
        return full


def confine(root: Path, relative: Any, *, source: str) -> Path:
    """``root / relative`` checked by a one-off :class:`PathGuard`."""
    return PathGuard(root)(relative, source=source)


def shard_file_problem(root: Path, entry: ShardEntry, *, verify_checksum: bool) -> CacheProblem | None:
    """``None`` if the shard file exists with the entry's size (and checksum), else the problem."""
    path = root / entry.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return CacheProblem(path, entry.clip_ids, "shard file is missing")
    except OSError as err:
        return CacheProblem(path, entry.clip_ids, f"shard file cannot be read ({err})")
    if size != entry.bytes:
        return CacheProblem(path, entry.clip_ids, f"size mismatch (manifest {entry.bytes} bytes, file {size} bytes)")
    if verify_checksum:
        try:
            digest = sha256_file(path)
        except OSError as err:
            return CacheProblem(path, entry.clip_ids, f"shard file cannot be read ({err})")
        if digest != entry.sha256:
            problem = f"checksum mismatch (manifest sha256 {entry.sha256}, file {digest})"
            return CacheProblem(path, entry.clip_ids, problem)
    return None


# --------------------------------------------------------------------------- JSON files


def read_json(path: Path) -> Any:
    """Parse a JSON file; :class:`CacheError` naming it when missing or invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CacheError(f"{path}: file not found") from None
    except OSError as err:
        raise CacheError(f"{path}: cannot be read ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CacheError(f"{path}: not valid JSON ({err})") from None


def dump_json(data: Any) -> str:
    return json.dumps(data, allow_nan=False, separators=(",", ":"), ensure_ascii=False) + "\n"


def spec_file_json(spec: CacheSpec) -> dict[str, Any]:
    return {"format": FORMAT_NAME, "format_version": list(FORMAT_VERSION), "spec": spec.to_json()}


def parse_spec_file(data: Any, *, source: str) -> CacheSpec:
    """Check the header of spec.json / manifest.json and parse its spec."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise CacheError(f"{source}: not an emoedit cache file ('format' is not {FORMAT_NAME!r})")
    check_format_version(data.get("format_version"), source=source)
    return CacheSpec.from_json(data.get("spec"), source=source)


def _visible_json(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))


def read_all_entries(root: Path) -> tuple[list[ShardEntry], list[ReportEntry], list[int]]:
    """Entries of ``manifest.json``, ``parts/manifest.previous.json`` and every fragment."""
    shards: list[ShardEntry] = []
    reports: list[ReportEntry] = []
    ranks: list[int] = []
    for path in (root / MANIFEST_FILE, root / PREVIOUS_MANIFEST_FILE):
        if path.is_file():
            _, contents = parse_manifest(root, read_json(path), source=str(path))
            shards.extend(contents.shards)
            reports.extend(contents.reports.values())
            ranks.extend(contents.ranks)
    f_shards, f_reports, f_ranks = read_fragments(root)
    return shards + f_shards, reports + f_reports, ranks + f_ranks


def fragment_ranks(root: Path) -> list[int]:
    """Ranks that have a fragment folder (every rank creates its own when it opens the cache)."""
    parts = root / PARTS_DIR
    if not parts.is_dir():
        return []
    matches = (re.fullmatch(r"rank-(\d{4,})", p.name) for p in parts.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in matches if m)


def read_fragments(root: Path) -> tuple[list[ShardEntry], list[ReportEntry], list[int]]:
    """Every fragment entry of every rank under ``root/parts`` and the ranks that have a folder."""
    shards: list[ShardEntry] = []
    reports: list[ReportEntry] = []
    ranks: list[int] = []
    parts = root / PARTS_DIR
    if not parts.is_dir():
        return shards, reports, ranks
    for rank_dir in sorted(parts.iterdir()):
        match = re.fullmatch(r"rank-(\d{4,})", rank_dir.name)
        if not match or not rank_dir.is_dir():
            continue
        ranks.append(int(match.group(1)))
        for path in _visible_json(rank_dir / "shards"):
            shards.append(ShardEntry.from_json(read_json(path), where=str(path)))
        for path in _visible_json(rank_dir / "reports"):
            reports.append(ReportEntry.from_json(read_json(path), where=str(path)))
    return shards, reports, ranks


# --------------------------------------------------------------------------- merging


@dataclass(frozen=True)
class CacheContents:
    """The consolidated index: each clip served by exactly one shard."""

    shards: tuple[ShardEntry, ...]  # sorted by path; each lists only the clips it serves
    reports: Mapping[str, ReportEntry]  # clip id -> newest report
    duplicates: tuple[Mapping[str, str], ...]  # {"clip", "kept", "dropped"} per dropped copy
    ranks: tuple[int, ...]  # ranks seen

    @property
    def num_records(self) -> int:
        return sum(c.count for s in self.shards for c in s.clips)

    @property
    def num_clips(self) -> int:
        return sum(len(s.clips) for s in self.shards)


def merge_entries(
    root: Path,
    shard_entries: Iterable[ShardEntry],
    report_entries: Iterable[ReportEntry],
    ranks: Iterable[int] = (),
) -> CacheContents:
    """Merge entries (manifest + fragments) by the rule of the module docstring."""
    by_path: dict[str, ShardEntry] = {}
    guard = PathGuard(root)
    for entry in shard_entries:
        guard(entry.path, source=f"{root}: shard entry")
        old = by_path.get(entry.path)
        if old is None or entry.written_at >= old.written_at:
            by_path[entry.path] = entry
    file_ok = {path: shard_file_problem(root, e, verify_checksum=False) is None for path, e in by_path.items()}

    def preference(entry: ShardEntry) -> tuple[bool, float, int]:
        return (file_ok[entry.path], entry.written_at, -entry.rank)

    candidates: dict[str, list[ShardEntry]] = {}
    for entry in by_path.values():
        for clip in entry.clips:
            candidates.setdefault(clip.clip, []).append(entry)
    winner: dict[str, str] = {}
    duplicates: list[dict[str, str]] = []
    for clip_id, entries in candidates.items():
        entries.sort(key=preference, reverse=True)
        winner[clip_id] = entries[0].path
        for other in entries[1:]:
            duplicates.append({"clip": clip_id, "kept": entries[0].path, "dropped": other.path})
    shards = []
    for path in sorted(by_path):
        entry = by_path[path]
        served = tuple(c for c in entry.clips if winner[c.clip] == path)
        if served:
            shards.append(dataclasses.replace(entry, clips=served))
    reports: dict[str, ReportEntry] = {}
    for report in report_entries:
        old = reports.get(report.clip)
        if old is None or (report.written_at, -report.rank) >= (old.written_at, -old.rank):
            reports[report.clip] = report
    seen_ranks = set(ranks) | {e.rank for e in by_path.values()} | {r.rank for r in reports.values()}
    duplicates.sort(key=lambda d: (d["clip"], d["dropped"]))
    return CacheContents(tuple(shards), dict(sorted(reports.items())), tuple(duplicates), tuple(sorted(seen_ranks)))


def manifest_json(spec: CacheSpec, contents: CacheContents, *, finalized_at: float) -> dict[str, Any]:
    if not math.isfinite(finalized_at):
        raise ValueError("finalized_at must be finite")
    return {
        **spec_file_json(spec),
        "finalized_at": finalized_at,
        "ranks": list(contents.ranks),
        "num_clips": contents.num_clips,
        "num_records": contents.num_records,
        "shards": [s.to_json() for s in contents.shards],
        "reports": {clip: r.to_json() for clip, r in contents.reports.items()},
        "duplicates": [dict(d) for d in contents.duplicates],
    }


def parse_manifest(root: Path, data: Any, *, source: str) -> tuple[CacheSpec, CacheContents]:
    """Validate a manifest.json object (header, version, entries, paths, unique clips)."""
    spec = parse_spec_file(data, source=source)
    _require(data, {"shards": list, "reports": dict, "duplicates": list, "ranks": list, "num_records": int}, source)
    shards = tuple(ShardEntry.from_json(s, where=f"{source}: shards[{i}]") for i, s in enumerate(data["shards"]))
    seen: dict[str, str] = {}
    guard = PathGuard(root)
    for entry in shards:
        guard(entry.path, source=source)
        for clip in entry.clips:
            if clip.clip in seen:
                raise CacheError(f"{source}: clip {clip.clip!r} listed in both {seen[clip.clip]} and {entry.path}")
            seen[clip.clip] = entry.path
    reports = {}
    for clip, report in data["reports"].items():
        reports[clip] = ReportEntry.from_json(report, where=f"{source}: reports[{clip!r}]")
    contents = CacheContents(shards, reports, tuple(data["duplicates"]), tuple(data["ranks"]))
    if contents.num_records != data["num_records"]:
        raise CacheError(
            f"{source}: 'num_records' is {data['num_records']}, the shard entries hold {contents.num_records}"
        )
    return spec, contents
