"""Writing a preprocessed cache, from one process or from every rank of a data-parallel job.

The on-disk layout, the JSON schemas and the resume / multi-rank rules are in
:mod:`emoedit.data.cache_format`. Typical use in a preprocessing loop::

    writer = CacheWriter.open(root, spec, rank=rank, world_size=world_size)
    for clip_id, frames in clips_of_this_rank:
        if writer.is_done(clip_id):
            continue
        records, meta, problems = preprocess(frames)      # records: {field: (N, *shape)}
        writer.write_clip(clip_id, records, meta)
        if problems:
            writer.write_report(clip_id, problems)
    # ... barrier: every rank has finished ...
    if rank == 0:
        writer.finalize()
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from emoedit.atomic_io import atomic_write_bytes, atomic_write_text
from emoedit.data.cache_format import (
    CLIP_COLUMN,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PARTS_DIR,
    PREVIOUS_MANIFEST_FILE,
    SHARD_FORMAT_NAME,
    SHARD_SUFFIX,
    SHARDS_DIR,
    SPEC_FILE,
    CacheContents,
    CacheCorruptError,
    CacheError,
    CacheSpec,
    CacheSpecMismatchError,
    ClipEntry,
    ReportEntry,
    ShardEntry,
    dump_json,
    encode_meta_column,
    fragment_ranks,
    is_meta_value,
    json_normalise,
    manifest_json,
    merge_entries,
    parse_spec_file,
    rank_name,
    read_all_entries,
    read_json,
    shard_file_problem,
    shard_stem,
    spec_file_json,
)
from emoedit.shape_checks import assert_finite, assert_shape

STALE_TEMP_SECONDS = 3600.0  # temporary files of this rank older than this are leftovers of a crash


@dataclass(frozen=True)
class FinalizeSummary:
    """What ``CacheWriter.finalize`` wrote."""

    manifest: Path  # path of manifest.json
    num_shards: int  # shard files referenced
    num_clips: int  # clips with records
    num_records: int  # records in all clips
    num_reports: int  # clips with a report (skipped or not)
    num_duplicates: int  # copies of clips dropped (written by several ranks or rewritten)


class CacheWriter:
    """Writes clips of one rank into a cache folder; see the module docstring.

    Build with :meth:`open` (creates the cache or reopens it with the same spec). The
    writer holds no open files; each ``write_*`` call is complete (and crash-safe) when
    it returns.
    """

    def __init__(
        self,
        *,
        root: Path,  # the cache folder
        spec: CacheSpec,  # the cache's spec (equal to spec.json)
        rank: int,  # this process's rank, 0 <= rank < world_size
        world_size: int,  # number of writer processes of the job
        contents: CacheContents,  # what the cache held when opened (merged entries)
    ) -> None:
        self._root = root
        self._spec = spec
        self._rank = rank
        self._world_size = world_size
        self._shards: dict[str, ShardEntry] = {c.clip: s for s in contents.shards for c in s.clips}
        self._reports: dict[str, ReportEntry] = dict(contents.reports)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        root: str | os.PathLike,  # cache folder; created when absent
        spec: CacheSpec,  # what this writer writes; must equal the spec of an existing cache
        *,
        rank: int = 0,  # this process's rank
        world_size: int = 1,  # number of writer processes
    ) -> CacheWriter:
        """Create the cache at ``root`` or reopen it for resuming/extending.

        Raises :class:`CacheSpecMismatchError` (listing every difference) when the cache
        exists with another spec, :class:`CacheVersionError` for another major format
        version, :class:`CacheError` when ``root`` is a non-empty folder that is not a cache.
        """
        root = Path(root)
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise CacheError(f"{root}: rank {rank!r} / world_size {world_size!r}: need 0 <= rank < world_size")
        if not isinstance(spec, CacheSpec):
            raise CacheError(f"{root}: spec must be a CacheSpec, got {type(spec).__name__}")
        spec_path = root / SPEC_FILE
        if not spec_path.is_file():
            if (root / MANIFEST_FILE).exists():
                raise CacheError(f"{root}: has {MANIFEST_FILE} but no {SPEC_FILE}; the cache is damaged")
            if root.is_dir():
                foreign = sorted(
                    p.name
                    for p in root.iterdir()
                    if not p.name.startswith(".") and p.name not in (SPEC_FILE, MANIFEST_FILE, SHARDS_DIR, PARTS_DIR)
                )
                if foreign:
                    raise CacheError(f"{root}: not an emoedit cache (no {SPEC_FILE}) and not empty: {foreign[:5]}")
            atomic_write_text(spec_path, dump_json(spec_file_json(spec)))
        # Re-read even after creating it: another rank may have created it at the same time.
        on_disk = parse_spec_file(read_json(spec_path), source=str(spec_path))
        differences = on_disk.differences(spec)
        if differences:
            raise CacheSpecMismatchError(
                f"{root}: the cache was created with another spec (on disk vs requested):\n  "
                + "\n  ".join(differences)
            )
        rank_parts = root / PARTS_DIR / rank_name(rank)
        for folder in (rank_parts / "shards", rank_parts / "reports", root / SHARDS_DIR / rank_name(rank)):
            folder.mkdir(parents=True, exist_ok=True)
            _remove_stale_temp_files(folder)
        shards, reports, ranks = read_all_entries(root)
        contents = merge_entries(root, shards, reports, ranks)
        return cls(root=root, spec=on_disk, rank=rank, world_size=world_size, contents=contents)

    # ------------------------------------------------------------------ properties

    @property
    def root(self) -> Path:
        return self._root

    @property
    def spec(self) -> CacheSpec:
        return self._spec

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # ------------------------------------------------------------------ resume

    def is_done(self, clip_id: str, *, verify_checksum: bool = False) -> bool:
        """True when ``clip_id`` needs no (re)writing.

        Done = an entry lists the clip and its shard file exists with the recorded size
        (and SHA-256 when ``verify_checksum``), or a report marked it ``skipped``. Entries
        are those present when the writer was opened plus this writer's own writes
        (entries other ranks write meanwhile are not seen; ``finalize`` resolves duplicates).
        """
        entry = self._shards.get(clip_id)
        if entry is not None and shard_file_problem(self._root, entry, verify_checksum=verify_checksum) is None:
            return True
        report = self._reports.get(clip_id)
        return report is not None and report.skipped

    # ------------------------------------------------------------------ writing

    def write_clip(
        self,
        clip_id: str,  # unique id of the clip in the cache, e.g. "M003/front/angry/level_3/001"
        records: Mapping[str, torch.Tensor],  # every spec field: (N, *shape) of the spec's dtype
        meta: Mapping[str, Any],  # every spec meta name: a list of N str/int, or one value for all N
        *,
        overwrite: bool = False,  # allow rewriting a clip that is already done
    ) -> ShardEntry:
        """Write one clip as one shard, then its manifest fragment entry (each atomically)."""
        return self.write_clips([(clip_id, records, meta)], overwrite=overwrite)

    def write_clips(
        self,
        clips: Sequence[tuple[str, Mapping[str, torch.Tensor], Mapping[str, Any]]],  # (clip_id, records, meta) each
        *,
        overwrite: bool = False,  # allow rewriting clips that are already done
    ) -> ShardEntry:
        """Write several clips (e.g. a group of images) into one shard; see :meth:`write_clip`.

        Validates every field's dtype and shape and every metadata value against the spec
        (float fields must be finite) and raises :class:`CacheError` naming the clip and
        field. The shard is written first, the fragment entry second, so a crash in between
        leaves the clips not done.
        """
        if not clips:
            raise CacheError(f"{self._root}: write_clips needs at least one clip")
        clip_ids = [item[0] for item in clips]
        for clip_id in clip_ids:
            if not isinstance(clip_id, str) or not clip_id:
                raise CacheError(f"{self._root}: clip id must be a non-empty str, got {clip_id!r}")
        repeated = sorted({c for c in clip_ids if clip_ids.count(c) > 1})
        if repeated:
            raise CacheError(f"{self._root}: clip ids repeated in one shard: {repeated}")
        if not overwrite:
            for clip_id in clip_ids:
                if self.is_done(clip_id):
                    raise CacheError(
                        f"{self._root}: clip {clip_id!r} is already in the cache; check is_done() first "
                        "or pass overwrite=True"
                    )
        validated = [self._validate_clip(clip_id, records, meta) for clip_id, records, meta in clips]

        fields = {name: torch.cat([tensors[name] for tensors, _ in validated]) for name in self._spec.fields}
        meta_lists: dict[str, list[str | int]] = {name: [] for name in self._spec.meta}
        clip_table: list[list[str | int]] = []
        clip_entries: list[ClipEntry] = []
        start = 0
        for clip_id, (tensors, meta_values) in zip(clip_ids, validated):
            count = next(iter(tensors.values())).shape[0]
            for name, values in meta_values.items():
                meta_lists[name].extend(values)
            clip_table.append([clip_id, start, count])
            clip_entries.append(
                ClipEntry(clip_id, start, count, {name: encode_meta_column(v) for name, v in meta_values.items()})
            )
            start += count
        shard = {
            "format": SHARD_FORMAT_NAME,
            "format_version": list(FORMAT_VERSION),
            "kind": self._spec.kind,
            "fields": fields,
            "meta": meta_lists,
            "clips": clip_table,
        }
        buffer = io.BytesIO()
        torch.save(shard, buffer)
        data = buffer.getvalue()

        stem = shard_stem(clip_ids)
        relative = f"{SHARDS_DIR}/{rank_name(self._rank)}/{stem}{SHARD_SUFFIX}"
        self._move_manifest_aside()
        atomic_write_bytes(self._root / relative, data)
        entry = ShardEntry(
            path=relative,
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
            num_records=start,
            rank=self._rank,
            written_at=time.time(),
            clips=tuple(clip_entries),
        )
        atomic_write_text(self._rank_parts / "shards" / f"{stem}.json", dump_json(entry.to_json()))
        for clip_id in clip_ids:
            self._shards[clip_id] = entry
        return entry

    def write_report(
        self,
        clip_id: str,  # the clip the report is about
        report: Mapping[str, Any],  # free JSON, e.g. {"frames_without_face": [12, 13]}
        *,
        skipped: bool = False,  # True: the clip has no records on purpose and counts as done
    ) -> ReportEntry:
        """Record per-clip problems (kept in the manifest under ``reports``); atomic."""
        if not isinstance(clip_id, str) or not clip_id:
            raise CacheError(f"{self._root}: clip id must be a non-empty str, got {clip_id!r}")
        if not isinstance(report, Mapping):
            raise CacheError(f"{self._root}: report of clip {clip_id!r} must be a mapping, got {type(report).__name__}")
        body = json_normalise(dict(report), f"{self._root}: report of clip {clip_id!r}")
        entry = ReportEntry(clip=clip_id, rank=self._rank, written_at=time.time(), skipped=bool(skipped), report=body)
        self._move_manifest_aside()
        atomic_write_text(self._rank_parts / "reports" / f"{shard_stem([clip_id])}.json", dump_json(entry.to_json()))
        self._reports[clip_id] = entry
        return entry

    # ------------------------------------------------------------------ finalising

    def finalize(self, *, verify_checksums: bool = False) -> FinalizeSummary:
        """Merge every rank's fragments into ``manifest.json`` (rank 0, after all ranks finished).

        Checks that every rank ``0 .. world_size-1`` opened the cache and that every shard
        file is present with its recorded size (and SHA-256 when ``verify_checksums``);
        otherwise raises (:class:`CacheCorruptError` lists every bad shard; running the
        writers again rewrites those clips, since they are not done).
        """
        if self._rank != 0:
            raise CacheError(
                f"{self._root}: finalize() runs on rank 0 only (this is rank {self._rank}), "
                "after every rank has finished"
            )
        opened = fragment_ranks(self._root)
        missing = [r for r in range(self._world_size) if r not in opened]
        if missing:
            raise CacheError(
                f"{self._root}: ranks {missing} of world size {self._world_size} never opened this cache; "
                "call finalize() after every rank has finished writing"
            )
        shards, reports, ranks = read_all_entries(self._root)
        contents = merge_entries(self._root, shards, reports, ranks)
        problems = [
            problem
            for entry in contents.shards
            if (problem := shard_file_problem(self._root, entry, verify_checksum=verify_checksums)) is not None
        ]
        if problems:
            raise CacheCorruptError(
                problems,
                hint="the manifest was not written; run the writers again (clips with a bad shard are not done "
                "and are rewritten), then finalize().",
            )
        manifest = self._root / MANIFEST_FILE
        atomic_write_text(manifest, dump_json(manifest_json(self._spec, contents, finalized_at=time.time())))
        self._shards = {c.clip: s for s in contents.shards for c in s.clips}
        self._reports = dict(contents.reports)
        return FinalizeSummary(
            manifest=manifest,
            num_shards=len(contents.shards),
            num_clips=contents.num_clips,
            num_records=contents.num_records,
            num_reports=len(contents.reports),
            num_duplicates=len(contents.duplicates),
        )

    # ------------------------------------------------------------------ internals

    @property
    def _rank_parts(self) -> Path:
        return self._root / PARTS_DIR / rank_name(self._rank)

    def _move_manifest_aside(self) -> None:
        """Before every write: a finalised cache becomes unfinalised (one syscall when it is not)."""
        try:
            os.replace(self._root / MANIFEST_FILE, self._root / PREVIOUS_MANIFEST_FILE)
        except FileNotFoundError:
            pass  # not finalised, or another rank moved it first

    def _validate_clip(
        self, clip_id: str, records: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[str | int]]]:
        where = f"{self._root}: clip {clip_id!r}"
        if not isinstance(records, Mapping):
            raise CacheError(f"{where}: records must be a mapping field -> tensor, got {type(records).__name__}")
        if not isinstance(meta, Mapping):
            raise CacheError(f"{where}: meta must be a mapping name -> values, got {type(meta).__name__}")
        for label, given, expected in (("field", records, self._spec.fields), ("metadata", meta, self._spec.meta)):
            missing = sorted(set(expected) - set(given))
            extra = sorted(set(given) - set(expected))
            if missing:
                raise CacheError(f"{where}: {label} {missing[0]!r} is missing (spec {label}s: {sorted(expected)})")
            if extra:
                note = f" ({CLIP_COLUMN!r} is filled in by the writer)" if CLIP_COLUMN in extra else ""
                raise CacheError(
                    f"{where}: {label} {extra[0]!r} is not in the spec (spec {label}s: {sorted(expected)}){note}"
                )
        tensors: dict[str, torch.Tensor] = {}
        count: int | None = None
        first = ""
        for name, field_spec in self._spec.fields.items():
            tensor = records[name]
            field_where = f"{where} field {name!r}"
            if not isinstance(tensor, torch.Tensor):
                raise CacheError(f"{field_where}: expected a torch.Tensor, got {type(tensor).__name__}")
            if tensor.dtype != field_spec.torch_dtype:
                raise CacheError(f"{field_where}: dtype {tensor.dtype}, but the spec says {field_spec.dtype}")
            try:
                assert_shape(tensor, (None, *field_spec.shape), field_where)
                if tensor.is_floating_point():
                    assert_finite(tensor, field_where)
            except ValueError as err:
                raise CacheError(str(err)) from None
            if count is None:
                count, first = tensor.shape[0], name
            elif tensor.shape[0] != count:
                raise CacheError(f"{field_where}: {tensor.shape[0]} records, but field {first!r} has {count}")
            tensors[name] = tensor.detach().to("cpu")
        assert count is not None  # the spec has at least one field
        if count == 0:
            raise CacheError(
                f"{where}: no records; use write_report(..., skipped=True) for a clip without usable records"
            )
        meta_values: dict[str, list[str | int]] = {}
        for name, kind in self._spec.meta.items():
            value = meta[name]
            meta_where = f"{where} metadata {name!r}"
            if is_meta_value(value, kind):
                values = [value] * count
            elif (
                isinstance(value, torch.Tensor)
                and kind == "int"
                and value.ndim == 1
                and not value.is_floating_point()
            ):
                values = [int(v) for v in value.tolist()]
            elif isinstance(value, (list, tuple, range)):
                values = list(value)
            else:
                raise CacheError(f"{meta_where}: expected one {kind} or a list of {count}, got {type(value).__name__}")
            if len(values) != count:
                raise CacheError(f"{meta_where}: {len(values)} values for {count} records")
            bad = [v for v in values if not is_meta_value(v, kind)]
            if bad:
                raise CacheError(f"{meta_where}: values must be {kind}, got {bad[0]!r} ({type(bad[0]).__name__})")
            meta_values[name] = values
        return tensors, meta_values


def _remove_stale_temp_files(folder: Path) -> None:
    """Remove this rank's temporary files (names starting with '.') left by a crash."""
    now = time.time()
    for path in folder.iterdir():
        if path.name.startswith(".") and path.is_file():
            try:
                if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    path.unlink()
            except FileNotFoundError:
                pass
