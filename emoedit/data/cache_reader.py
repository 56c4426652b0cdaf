"""Reading a preprocessed cache: the one reader every DataModule goes through.

The on-disk layout and rules are in :mod:`emoedit.data.cache_format`. A DataModule opens
the cache, checks that it fits its config, builds its splits from the record index (no
shard is read for that: metadata lives in the manifest) and wraps them in datasets::

    reader = CacheReader.open(root, kind="textures", version=1)
    reader.check(attributes={"texture_size": 256, "face_model": "bfm09"})
    train = reader.records(view="front", subject=lambda s: s not in UNSEEN)
    dataset = CacheDataset(reader, fields=("uv_texture",), index=train, max_cached_shards=16)
    loader = DataLoader(dataset, batch_size=8, num_workers=4,
                        sampler=ShardLocalSampler(dataset.index, shards_per_block=16))

Checksums: each shard's SHA-256 is verified the first time a reader (in each process)
loads it. A :class:`CacheDataset` keeps the last ``max_cached_shards`` loaded shards
(selected fields only) in an LRU per process. Nothing holds an open file between calls,
so readers and datasets pickle to DataLoader workers without file handles (each worker
opens files itself and starts with an empty LRU).
"""

from __future__ import annotations

import hashlib
import io
import os
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from emoedit.data.cache_format import (
    CLIP_COLUMN,
    MANIFEST_FILE,
    SHARD_FORMAT_NAME,
    SPEC_FILE,
    CacheContents,
    CacheCorruptError,
    CacheError,
    CacheProblem,
    CacheSpec,
    CacheSpecMismatchError,
    CacheVersionError,
    ClipEntry,
    ReportEntry,
    ShardEntry,
    decode_meta_column,
    json_normalise,
    merge_entries,
    parse_manifest,
    parse_spec_file,
    read_all_entries,
    read_json,
)
from emoedit.shape_checks import assert_shape

# A metadata condition: one value (equality), a collection of values (membership) or a
# predicate called once per distinct value.
Condition = Any


# --------------------------------------------------------------------------- record index


@dataclass(frozen=True, eq=False)
class RecordIndex:
    """Where every record is (shard, row) and its metadata, as columns (no Python object per record).

    ``columns`` holds one (R,) int64 tensor per metadata name plus ``clip``: the value for
    ``int`` metadata, a code into ``vocab[name]`` for ``str`` metadata (and ``clip``). Built
    by :meth:`CacheReader.records`; filter with :meth:`where` or :meth:`select`.
    """

    shard: torch.Tensor  # (R,) int64 position in CacheReader.shards
    row: torch.Tensor  # (R,) int64 row inside that shard
    columns: Mapping[str, torch.Tensor]  # name -> (R,) int64 values (int meta) or vocab codes (str meta)
    vocab: Mapping[str, tuple[str, ...]]  # str column name -> its distinct values

    def __post_init__(self) -> None:
        dims = assert_shape(self.shard, ("R",), "RecordIndex.shard")
        assert_shape(self.row, ("R",), "RecordIndex.row", dims)
        for name, column in self.columns.items():
            assert_shape(column, ("R",), f"RecordIndex.columns[{name!r}]", dims)

    def __len__(self) -> int:
        return int(self.shard.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        """Column names: ``clip`` and every metadata name."""
        return tuple(self.columns)

    def _column(self, name: str) -> torch.Tensor:
        if name not in self.columns:
            raise CacheError(f"no metadata column {name!r}; columns: {sorted(self.columns)}")
        return self.columns[name]

    def value(self, name: str, position: int) -> str | int:
        """Metadata ``name`` of the record at ``position``."""
        code = int(self._column(name)[position])
        return self.vocab[name][code] if name in self.vocab else code

    def meta(self, position: int) -> dict[str, str | int]:
        """Every metadata value (and ``clip``) of the record at ``position``."""
        return {name: self.value(name, position) for name in self.columns}

    def column(self, name: str) -> list[str | int]:
        """All values of column ``name`` (a Python list: for small indices or inspection)."""
        values = self._column(name).tolist()
        if name in self.vocab:
            vocab = self.vocab[name]
            return [vocab[v] for v in values]
        return values

    def unique(self, name: str) -> list[str | int]:
        """Sorted distinct values of column ``name`` among these records."""
        codes = torch.unique(self._column(name)).tolist()
        if name in self.vocab:
            return sorted(self.vocab[name][c] for c in codes)
        return sorted(codes)

    def select(self, selection: torch.Tensor) -> RecordIndex:
        """The records picked by a (R,) bool mask or an int64 tensor of positions."""
        return RecordIndex(
            shard=self.shard[selection],
            row=self.row[selection],
            columns={name: column[selection] for name, column in self.columns.items()},
            vocab=self.vocab,
        )

    def mask(self, name: str, condition: Condition) -> torch.Tensor:
        """(R,) bool: records whose ``name`` satisfies ``condition`` (see :meth:`where`)."""
        column = self._column(name)
        is_str = name in self.vocab
        kind = "str" if is_str else "int"

        def check(value: Any) -> Any:
            ok = isinstance(value, str) if is_str else isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                raise CacheError(f"metadata {name!r} holds {kind} values; cannot compare with {value!r}")
            return value

        if is_str:
            vocab = self.vocab[name]
            if callable(condition):
                keep = torch.tensor([bool(condition(v)) for v in vocab] or [False], dtype=torch.bool)
                return keep[column] if len(vocab) else torch.zeros_like(column, dtype=torch.bool)
            lookup = {v: i for i, v in enumerate(vocab)}
            values = [check(v) for v in condition] if _is_collection(condition) else [check(condition)]
            codes = [lookup[v] for v in values if v in lookup]
            return torch.isin(column, torch.tensor(codes, dtype=torch.int64))
        if callable(condition):
            distinct = torch.unique(column)
            allowed = [v for v in distinct.tolist() if condition(v)]
        elif _is_collection(condition):
            allowed = [check(v) for v in condition]
        else:
            allowed = [check(condition)]
        return torch.isin(column, torch.tensor(allowed, dtype=torch.int64))

    def where(self, **conditions: Condition) -> RecordIndex:
        """Records satisfying every condition: ``name=value``, ``name=[values]`` or ``name=predicate``.

        Example: ``index.where(emotion=("angry", "happy"), level=3, subject=lambda s: s != "M003")``.
        A value of the wrong type for its column (an int for a str column) is an error,
        not an empty result.
        """
        keep = torch.ones(len(self), dtype=torch.bool)
        for name, condition in conditions.items():
            keep &= self.mask(name, condition)
        return self.select(keep)


def _is_collection(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset, range))


# --------------------------------------------------------------------------- reader


class CacheReader:
    """Read-only view of one cache; build with :meth:`open`. Holds no open files."""

    def __init__(
        self,
        *,
        root: Path,  # the cache folder
        spec: CacheSpec,  # the cache's spec
        contents: CacheContents,  # validated, merged index: each clip in exactly one shard
        finalized: bool,  # True when read from manifest.json
        verify_checksums: bool,  # verify each shard's SHA-256 on its first load
    ) -> None:
        self._root = root
        self._spec = spec
        self._contents = contents
        self._finalized = finalized
        self._verify = verify_checksums
        self._location: dict[str, tuple[int, ClipEntry]] = {
            clip.clip: (i, clip) for i, shard in enumerate(contents.shards) for clip in shard.clips
        }
        self._verified: set[int] = set()
        self._index: RecordIndex | None = None

    @classmethod
    def open(
        cls,
        root: str | os.PathLike,  # the cache folder
        *,
        kind: str | None = None,  # expected spec.kind (None: any)
        version: int | None = None,  # expected spec.version (None: any)
        allow_unfinalized: bool = False,  # without manifest.json, merge the writers' fragments
        verify_checksums: bool = True,  # verify each shard's SHA-256 on its first load
    ) -> CacheReader:
        """Open and validate a cache (manifest, format version, paths, unique clips).

        Raises :class:`CacheVersionError` for another major format version or another
        ``version`` than expected, :class:`CacheSpecMismatchError` for another ``kind``,
        :class:`CacheError` for a missing, unfinalised or invalid cache.
        """
        root = Path(root)
        if not root.is_dir():
            raise CacheError(f"{root}: cache folder not found")
        manifest = root / MANIFEST_FILE
        spec_path = root / SPEC_FILE
        if manifest.is_file():
            spec, contents = parse_manifest(root, read_json(manifest), source=str(manifest))
            if spec_path.is_file():
                differences = parse_spec_file(read_json(spec_path), source=str(spec_path)).differences(spec)
                if differences:
                    raise CacheSpecMismatchError(
                        f"{root}: {SPEC_FILE} and {MANIFEST_FILE} disagree:\n  " + "\n  ".join(differences)
                    )
            finalized = True
        elif not spec_path.is_file():
            raise CacheError(f"{root}: not an emoedit cache (neither {MANIFEST_FILE} nor {SPEC_FILE})")
        elif allow_unfinalized:
            spec = parse_spec_file(read_json(spec_path), source=str(spec_path))
            contents = merge_entries(root, *read_all_entries(root))
            finalized = False
        else:
            raise CacheError(
                f"{root}: the cache is not finalised (no {MANIFEST_FILE}); run CacheWriter.finalize() on rank 0 "
                "after every writer has finished, or open with allow_unfinalized=True to read what is written so far"
            )
        reader = cls(root=root, spec=spec, contents=contents, finalized=finalized, verify_checksums=verify_checksums)
        reader.check(kind=kind, version=version)
        return reader

    # ------------------------------------------------------------------ description

    @property
    def root(self) -> Path:
        return self._root

    @property
    def spec(self) -> CacheSpec:
        return self._spec

    @property
    def attributes(self) -> Mapping[str, Any]:
        return self._spec.attributes

    @property
    def finalized(self) -> bool:
        return self._finalized

    @property
    def clips(self) -> tuple[str, ...]:
        """Clip ids with records, in manifest order."""
        return tuple(self._location)

    @property
    def shards(self) -> tuple[ShardEntry, ...]:
        return self._contents.shards

    @property
    def reports(self) -> Mapping[str, ReportEntry]:
        """Per-clip reports (including ``skipped`` clips, which have no records)."""
        return self._contents.reports

    @property
    def num_records(self) -> int:
        return self._contents.num_records

    def __repr__(self) -> str:
        state = "finalised" if self._finalized else "unfinalised"
        return (
            f"CacheReader({str(self._root)!r}, kind={self._spec.kind!r}, version={self._spec.version}, "
            f"{len(self._location)} clips, {self.num_records} records, {len(self.shards)} shards, {state})"
        )

    def check(
        self,
        *,
        kind: str | None = None,  # expected spec.kind
        version: int | None = None,  # expected spec.version
        attributes: Mapping[str, Any] | None = None,  # expected values of some attributes
    ) -> None:
        """Raise unless the cache fits what a consumer expects; lists every differing attribute."""
        if kind is not None and kind != self._spec.kind:
            raise CacheSpecMismatchError(f"{self._root}: cache kind is {self._spec.kind!r}, expected {kind!r}")
        if version is not None and version != self._spec.version:
            raise CacheVersionError(
                f"{self._root}: cache of kind {self._spec.kind!r} has version {self._spec.version}, "
                f"expected version {version}; re-create it with the current preprocessing"
            )
        if attributes:
            expected = json_normalise(dict(attributes), "expected attributes")
            differences = [
                f"{key}: {self._spec.attributes.get(key, '<absent>')!r} in the cache, {value!r} expected"
                for key, value in expected.items()
                if self._spec.attributes.get(key, _ABSENT) != value
            ]
            if differences:
                raise CacheSpecMismatchError(
                    f"{self._root}: cache attributes do not fit:\n  " + "\n  ".join(differences)
                )

    # ------------------------------------------------------------------ loading

    def _locate(self, clip_id: str) -> tuple[int, ClipEntry]:
        try:
            return self._location[clip_id]
        except KeyError:
            skipped = " (it was skipped; see reports)" if clip_id in self._contents.reports else ""
            raise CacheError(f"{self._root}: no clip {clip_id!r} in this cache{skipped}") from None

    def clip_meta(self, clip_id: str) -> dict[str, list[str | int]]:
        """Metadata lists (one value per record) of a clip, from the manifest (no shard read)."""
        shard, clip = self._locate(clip_id)
        return clip.decode_meta(self._spec, where=f"{self._root / self.shards[shard].path}")

    def load_clip(self, clip_id: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """A clip's records: ``{field: Tensor (N, *shape)}`` plus ``{meta: list of N values}``.

        Raises :class:`CacheCorruptError` naming the shard file, its clips and the problem
        (missing, size or checksum mismatch, unreadable, wrong contents).
        """
        shard, clip = self._locate(clip_id)
        tensors = self.load_shard(shard, fields)
        whole = clip.start == 0 and clip.count == self.shards[shard].num_records
        out: dict[str, Any] = {
            name: t if whole else t[clip.start : clip.start + clip.count].clone() for name, t in tensors.items()
        }
        out.update(self.clip_meta(clip_id))
        return out

    def load_shard(self, shard: int, fields: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors ``{field: (num_records, *shape)}`` of shard number ``shard`` (all fields by default)."""
        if not 0 <= shard < len(self.shards):
            raise IndexError(f"{self._root}: shard {shard} out of range (0..{len(self.shards) - 1})")
        verify = self._verify and shard not in self._verified
        tensors = self._read_shard(shard, self.select_fields(fields), verify=verify)
        if verify:
            self._verified.add(shard)
        return tensors

    def verify_all(self, *, load: bool = True) -> list[CacheProblem]:
        """Check every shard: present, size, SHA-256, and (``load``) readable with the right contents.

        Returns the problems found (empty when the cache is sound); reads every shard fully.
        """
        problems: list[CacheProblem] = []
        for shard in range(len(self.shards)):
            try:
                self._read_shard(shard, tuple(self._spec.fields), verify=True, load=load)
                self._verified.add(shard)
            except CacheCorruptError as err:
                problems.extend(err.problems)
        return problems

    def records(self, **conditions: Condition) -> RecordIndex:
        """Index of every record (or those matching ``conditions``; see :meth:`RecordIndex.where`).

        Built from the manifest once per reader; filtering reads no shard.
        """
        if self._index is None:
            self._index = self._build_index()
        return self._index.where(**conditions) if conditions else self._index

    # ------------------------------------------------------------------ internals

    def select_fields(self, fields: Sequence[str] | None) -> tuple[str, ...]:
        """``fields`` checked against the spec (all fields for ``None``); error naming an unknown one."""
        if fields is None:
            return tuple(self._spec.fields)
        if isinstance(fields, str):
            fields = (fields,)
        unknown = [f for f in fields if f not in self._spec.fields]
        if unknown:
            raise CacheError(f"{self._root}: unknown field {unknown[0]!r}; the cache has {sorted(self._spec.fields)}")
        return tuple(fields)

    def _read_shard(
        self, shard: int, fields: tuple[str, ...], *, verify: bool, load: bool = True
    ) -> dict[str, torch.Tensor]:
        entry = self.shards[shard]
        path = self._root / entry.path

        def corrupt(problem: str) -> CacheCorruptError:
            return CacheCorruptError([CacheProblem(path, entry.clip_ids, problem)])

        try:
            if verify:
                data = path.read_bytes()
                size = len(data)
            else:
                size = path.stat().st_size
        except FileNotFoundError:
            raise corrupt("shard file is missing") from None
        except OSError as err:
            raise corrupt(f"shard file cannot be read ({err})") from None
        if size != entry.bytes:
            raise corrupt(f"size mismatch (manifest {entry.bytes} bytes, file {size} bytes)")
        if verify:
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry.sha256:
                raise corrupt(f"checksum mismatch (manifest sha256 {entry.sha256}, file {digest})")
        if not load:
            return {}
        try:
            obj = torch.load(io.BytesIO(data) if verify else path, map_location="cpu", weights_only=True)
        except Exception as err:  # zip errors, unpickling errors, truncation
            raise corrupt(f"not a readable shard ({type(err).__name__}: {err})") from None
        if not isinstance(obj, dict) or obj.get("format") != SHARD_FORMAT_NAME:
            raise corrupt(f"not an emoedit cache shard (no 'format': {SHARD_FORMAT_NAME!r})")
        stored = obj.get("fields")
        if not isinstance(stored, dict):
            raise corrupt("shard has no 'fields' dict")
        out: dict[str, torch.Tensor] = {}
        for name in fields:
            tensor, want = stored.get(name), self._spec.fields[name]
            if not isinstance(tensor, torch.Tensor):
                raise corrupt(f"field {name!r} is missing")
            if tensor.dtype != want.torch_dtype or tuple(tensor.shape) != (entry.num_records, *want.shape):
                raise corrupt(
                    f"field {name!r} is {tensor.dtype} {tuple(tensor.shape)}, expected "
                    f"{want.dtype} {(entry.num_records, *want.shape)}"
                )
            out[name] = tensor
        table = obj.get("clips")
        rows = {tuple(item) for item in table if isinstance(item, list)} if isinstance(table, list) else set()
        for clip in entry.clips:
            if (clip.clip, clip.start, clip.count) not in rows:
                raise corrupt(f"clip {clip.clip!r} rows {clip.start}+{clip.count} are not in the shard's clip table")
        if verify:  # once per shard: the shard's own metadata agrees with the manifest
            meta = obj.get("meta")
            for clip in entry.clips:
                expected = clip.decode_meta(self._spec, where=str(path))
                for name, values in expected.items():
                    stored_values = meta.get(name) if isinstance(meta, dict) else None
                    span = slice(clip.start, clip.start + clip.count)
                    if not isinstance(stored_values, list) or stored_values[span] != values:
                        raise corrupt(f"metadata {name!r} of clip {clip.clip!r} differs from the manifest")
        return out

    def _build_index(self) -> RecordIndex:
        # array('q') columns: compact while growing, one memcpy into a tensor at the end
        shard_ids, rows = array("q"), array("q")
        kinds = {CLIP_COLUMN: "str", **self._spec.meta}
        values: dict[str, array[int]] = {name: array("q") for name in kinds}
        lookups: dict[str, dict[str, int]] = {name: {} for name, kind in kinds.items() if kind == "str"}
        for position, entry in enumerate(self.shards):
            for clip in entry.clips:
                count = clip.count
                shard_ids.extend([position] * count)
                rows.extend(range(clip.start, clip.start + count))
                for name, kind in kinds.items():
                    encoded = clip.clip if name == CLIP_COLUMN else clip.meta.get(name)
                    column = values[name]
                    if isinstance(encoded, (str, int)) and not isinstance(encoded, bool) and _fits(encoded, kind):
                        # the common case, one value for the whole clip: no per-record Python work
                        code = lookups[name].setdefault(encoded, len(lookups[name])) if kind == "str" else encoded
                        column.extend([code] * count)
                        continue
                    decoded = decode_meta_column(
                        encoded, count, kind, where=f"{self._root / entry.path}: clip {clip.clip!r} meta {name!r}"
                    )
                    if kind == "str":
                        lookup = lookups[name]
                        column.extend(lookup.setdefault(v, len(lookup)) for v in decoded)
                    else:
                        column.extend(decoded)
        return RecordIndex(
            shard=_as_tensor(shard_ids),
            row=_as_tensor(rows),
            columns={name: _as_tensor(column) for name, column in values.items()},
            vocab={name: tuple(lookup) for name, lookup in lookups.items()},
        )


def _as_tensor(values: array[int]) -> torch.Tensor:
    """(R,) int64 tensor copied from the array (owning its storage, so it can be shared with workers)."""
    if len(values) == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.frombuffer(values, dtype=torch.int64).clone()


def _fits(value: str | int, kind: str) -> bool:
    return isinstance(value, str) if kind == "str" else isinstance(value, int)


_ABSENT = object()


# --------------------------------------------------------------------------- dataset


class CacheDataset(Dataset):
    """Map-style dataset of a cache's records: ``{field: Tensor (*shape), meta: value, "clip": id}``.

    Tensors keep their stored dtype (e.g. uint8 images); converting is the consumer's job.
    Shards are loaded on demand (checksum verified on first load per process) and the last
    ``max_cached_shards`` are kept per process (LRU, selected fields only), so memory stays
    bounded; pair with :class:`ShardLocalSampler` so random order still reuses loaded shards.
    Safe with DataLoader workers: no file stays open, and the LRU is not pickled.
    """

    def __init__(
        self,
        reader: CacheReader,  # an opened cache
        *,
        fields: Sequence[str] | None = None,  # fields to return (default: all)
        filter: Mapping[str, Condition] | None = None,  # metadata conditions (RecordIndex.where)
        index: RecordIndex | None = None,  # records to serve (default: reader.records())
        max_cached_shards: int = 8,  # LRU size, in shards, per process
        with_meta: bool = True,  # also return metadata values and "clip"
    ) -> None:
        if not isinstance(max_cached_shards, int) or max_cached_shards < 1:
            raise CacheError(f"max_cached_shards must be a positive int, got {max_cached_shards!r}")
        self._reader = reader
        self._fields = reader.select_fields(fields)
        base = reader.records() if index is None else index
        self._index = base.where(**filter) if filter else base
        self._max_cached = max_cached_shards
        self._with_meta = with_meta
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self.shard_loads = 0  # shards loaded by this process (LRU misses)

    @property
    def index(self) -> RecordIndex:
        return self._index

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, position: int) -> dict[str, Any]:
        if not -len(self) <= position < len(self):
            raise IndexError(f"record {position} out of range for {len(self)} records")
        shard = int(self._index.shard[position])
        row = int(self._index.row[position])
        tensors = self._load(shard)
        sample: dict[str, Any] = {name: tensors[name][row].clone() for name in self._fields}
        if self._with_meta:
            sample.update(self._index.meta(position))
        return sample

    def _load(self, shard: int) -> dict[str, torch.Tensor]:
        cached = self._cache.get(shard)
        if cached is not None:
            self._cache.move_to_end(shard)
            return cached
        tensors = self._reader.load_shard(shard, self._fields)
        self.shard_loads += 1
        self._cache[shard] = tensors
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return tensors

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # loaded shards stay in the process that loaded them
        state["shard_loads"] = 0
        return state


class ShardLocalSampler(Sampler[int]):
    """Random order that keeps reads local to a few shards at a time.

    Each epoch the shards are shuffled and taken ``shards_per_block`` at a time; the records
    of one block are shuffled together. With a dataset LRU of at least ``shards_per_block``
    shards (per worker), every shard is loaded about once per epoch per worker.
    """

    def __init__(
        self,
        index: RecordIndex,  # the dataset's records (CacheDataset.index)
        *,
        shards_per_block: int = 8,  # shards whose records are mixed together
        shuffle: bool = True,  # False: records in index order
        seed: int = 0,  # base seed; the epoch is added (set_epoch)
    ) -> None:
        if shards_per_block < 1:
            raise ValueError(f"shards_per_block must be >= 1, got {shards_per_block}")
        self._index = index
        self._shards_per_block = shards_per_block
        self._shuffle = shuffle
        self._seed = seed
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[int]:
        if not self._shuffle or len(self._index) == 0:
            yield from range(len(self._index))
            return
        generator = torch.Generator().manual_seed(self._seed + self._epoch)
        order = torch.argsort(self._index.shard, stable=True)
        shard_ids, counts = torch.unique_consecutive(self._index.shard[order], return_counts=True)
        groups = torch.split(order, counts.tolist())
        shard_order = torch.randperm(len(shard_ids), generator=generator).tolist()
        for start in range(0, len(shard_order), self._shards_per_block):
            block = torch.cat([groups[i] for i in shard_order[start : start + self._shards_per_block]])
            yield from block[torch.randperm(len(block), generator=generator)].tolist()

