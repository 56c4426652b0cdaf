"""Preprocessed caches: the one format every preprocessing job writes and every DataModule reads.

The public API in one import; the pieces live in
:mod:`emoedit.data.cache_format` (on-disk layout, manifest JSON schema, versioning, resume
and multi-rank rules: read its docstring), :mod:`emoedit.data.cache_writer` (writing, one
process or several ranks) and :mod:`emoedit.data.cache_reader` (reading, record index,
``torch`` Dataset and a shard-local sampler).
"""

from __future__ import annotations

from emoedit.data.cache_format import (
    FORMAT_VERSION,
    CacheCorruptError,
    CacheError,
    CacheProblem,
    CacheSpec,
    CacheSpecMismatchError,
    CacheVersionError,
    ClipEntry,
    FieldSpec,
    ReportEntry,
    ShardEntry,
)
from emoedit.data.cache_reader import CacheDataset, CacheReader, RecordIndex, ShardLocalSampler
from emoedit.data.cache_writer import CacheWriter, FinalizeSummary

__all__ = [
    "FORMAT_VERSION",
    "CacheCorruptError",
    "CacheDataset",
    "CacheError",
    "CacheProblem",
    "CacheReader",
    "CacheSpec",
    "CacheSpecMismatchError",
    "CacheVersionError",
    "CacheWriter",
    "ClipEntry",
    "FieldSpec",
    "FinalizeSummary",
    "RecordIndex",
    "ReportEntry",
    "ShardEntry",
    "ShardLocalSampler",
]
