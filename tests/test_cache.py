"""Tests of the preprocessed-cache format: writer, reader, resume, corruption, ranks, dataset."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from emoedit.data.cache import (
    CacheCorruptError,
    CacheDataset,
    CacheError,
    CacheReader,
    CacheSpec,
    CacheSpecMismatchError,
    CacheVersionError,
    CacheWriter,
    FieldSpec,
    ShardLocalSampler,
)

SPEC = CacheSpec(
    kind="frames",
    version=1,
    fields={
        "crop": FieldSpec("uint8", (3, 8, 8)),
        "coeffs": FieldSpec("float32", (7,)),
        "landmarks": FieldSpec("float32", (68, 2)),
        "visibility": FieldSpec("bool", (4, 4)),
        "transform": FieldSpec("float64", ()),
    },
    meta={"subject": "str", "emotion": "str", "level": "int", "frame": "int"},
    attributes={"face_model": "procedural", "texture_size": 8, "recon": {"sha256": "ab" * 8}},
)


def make_records(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "crop": torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
        "coeffs": torch.randn(n, 7, generator=g),
        "landmarks": torch.rand(n, 68, 2, generator=g) * 224,
        "visibility": torch.rand(n, 4, 4, generator=g) > 0.5,
        "transform": torch.randn(n, generator=g, dtype=torch.float64),
    }


def make_meta(n: int, subject: str = "M003", emotion: str = "angry", level: int = 3) -> dict[str, object]:
    return {"subject": subject, "emotion": emotion, "level": level, "frame": list(range(n))}


def write_two(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    writer = CacheWriter.open(root, SPEC)
    a, b = make_records(5, 1), make_records(3, 2)
    writer.write_clip("M003/front/angry/level_3/001", a, make_meta(5))
    writer.write_clip("W009/front/happy/level_1/002", b, {**make_meta(3, "W009", "happy", 1), "frame": [4, 9, 2]})
    writer.finalize()
    return {"M003/front/angry/level_3/001": a, "W009/front/happy/level_1/002": b}


def shard_of(root: Path, clip: str) -> Path:
    reader = CacheReader.open(root)
    return next(root / s.path for s in reader.shards if clip in s.clip_ids)


def edit_manifest(root: Path, change) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- round trip


def test_round_trip_two_clips_and_grouped_shard(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    written = write_two(root)
    writer = CacheWriter.open(root, SPEC)
    group = {f"ffhq/{i:05d}": make_records(2, 10 + i) for i in range(3)}
    entry = writer.write_clips([(cid, rec, make_meta(2, "ffhq", "neutral", 0)) for cid, rec in group.items()])
    assert entry.num_records == 6 and entry.clip_ids == tuple(group)
    writer.write_report("M003/front/angry/level_3/001", {"frames_without_face": [7, 8]})
    summary = writer.finalize()
    assert (summary.num_clips, summary.num_records, summary.num_shards, summary.num_reports) == (5, 14, 3, 1)

    reader = CacheReader.open(root, kind="frames", version=1)
    assert reader.spec == SPEC and reader.attributes["recon"] == {"sha256": "ab" * 8}
    assert sorted(reader.clips) == sorted([*written, *group]) and reader.num_records == 14
    for clip_id, records in {**written, **group}.items():
        loaded = reader.load_clip(clip_id)
        for name, tensor in records.items():
            assert loaded[name].dtype == tensor.dtype
            assert torch.equal(loaded[name], tensor), (clip_id, name)
    loaded = reader.load_clip("W009/front/happy/level_1/002")
    assert loaded["frame"] == [4, 9, 2] and loaded["subject"] == ["W009"] * 3 and loaded["level"] == [1] * 3
    only_coeffs = reader.load_clip("ffhq/00001", fields=["coeffs"])
    assert only_coeffs.keys() == {"coeffs", "subject", "emotion", "level", "frame"}
    assert reader.reports["M003/front/angry/level_3/001"].report == {"frames_without_face": [7, 8]}

    # Shards are plain weights_only dicts; metadata columns are stored compactly.
    shard = torch.load(shard_of(root, "ffhq/00000"), weights_only=True)
    assert shard["clips"] == [["ffhq/00000", 0, 2], ["ffhq/00001", 2, 2], ["ffhq/00002", 4, 2]]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format_version"] == [1, 0] and manifest["num_records"] == 14
    first = next(s for s in manifest["shards"] if s["clips"][0]["clip"].startswith("M003"))
    assert first["clips"][0]["meta"] == {"subject": "M003", "emotion": "angry", "level": 3, "frame": {"range": [0, 1]}}
    assert reader.verify_all() == []

    index = reader.records(emotion=("angry", "happy"))
    assert len(index) == 8 and index.unique("subject") == ["M003", "W009"]
    assert len(reader.records(subject="W009", frame=lambda f: f > 3)) == 2
    assert len(reader.records(clip="ffhq/00002")) == 2
    with pytest.raises(CacheError, match="'level' holds int"):
        reader.records(level="3")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda r, m: r.update(coeffs=r["coeffs"].double()), r"clip 'bad/1' field 'coeffs': dtype torch.float64"),
        (lambda r, m: r.update(landmarks=torch.zeros(4, 68, 3)), r"clip 'bad/1' field 'landmarks': axis 2 is 3"),
        (lambda r, m: r.pop("crop"), r"clip 'bad/1': field 'crop' is missing"),
        (lambda r, m: r.update(extra=torch.zeros(4)), r"clip 'bad/1': field 'extra' is not in the spec"),
        (lambda r, m: r.update(transform=torch.zeros(3, dtype=torch.float64)), r"field 'transform': 3 records"),
        (lambda r, m: r["coeffs"].__setitem__((1, 2), float("nan")), r"clip 'bad/1' field 'coeffs': contains NaN"),
        (lambda r, m: m.update(level="3"), r"clip 'bad/1' metadata 'level': .*int"),
        (lambda r, m: m.update(frame=[0, 1]), r"clip 'bad/1' metadata 'frame': 2 values for 4 records"),
        (lambda r, m: m.update(clip="x"), r"'clip' is filled in by the writer"),
    ],
)
def test_write_validation_names_clip_and_field(tmp_path: Path, change, pattern: str) -> None:
    writer = CacheWriter.open(tmp_path, SPEC)
    records, meta = make_records(4, 0), make_meta(4)
    change(records, meta)
    with pytest.raises(CacheError, match=pattern):
        writer.write_clip("bad/1", records, meta)
    assert not any((tmp_path / "shards").rglob("*.pt")) and not writer.is_done("bad/1")


def test_reopen_with_a_different_spec_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    CacheWriter.open(root, SPEC)
    other = CacheSpec(
        kind="frames",
        version=1,
        fields={**SPEC.fields, "coeffs": FieldSpec("float32", (257,))},
        meta=SPEC.meta,
        attributes={**SPEC.attributes, "texture_size": 16},
    )
    with pytest.raises(CacheSpecMismatchError) as err:
        CacheWriter.open(root, other)
    assert "fields.coeffs" in str(err.value) and "attributes.texture_size: 8 vs 16" in str(err.value)
    CacheWriter.open(root, SPEC)  # the same spec reopens fine
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(CacheError, match="not an emoedit cache"):
        CacheWriter.open(foreign, SPEC)


# --------------------------------------------------------------------------- resume


def test_resume_skips_done_clips_and_rewrites_an_orphan_shard(tmp_path: Path) -> None:
    writer = CacheWriter.open(tmp_path, SPEC)
    a = writer.write_clip("A", make_records(4, 1), make_meta(4))
    b = writer.write_clip("B", make_records(4, 2), make_meta(4))
    writer.write_report("C", {"reason": "no face"}, skipped=True)

    reopened = CacheWriter.open(tmp_path, SPEC)
    assert reopened.is_done("A") and reopened.is_done("B", verify_checksum=True) and reopened.is_done("C")
    assert not reopened.is_done("D")
    with pytest.raises(CacheError, match="clip 'A' is already in the cache"):
        reopened.write_clip("A", make_records(4, 1), make_meta(4))

    # Crash between shard write and fragment append: the shard exists, no entry lists it.
    fragment = tmp_path / "parts" / "rank-0000" / "shards" / (Path(b.path).stem + ".json")
    fragment.unlink()
    (tmp_path / b.path).write_bytes(b"half-written garbage")
    # A listed shard whose file vanished is not done either.
    (tmp_path / a.path).unlink()
    resumed = CacheWriter.open(tmp_path, SPEC)
    assert not resumed.is_done("B") and not resumed.is_done("A") and resumed.is_done("C")
    new_b = make_records(4, 22)
    resumed.write_clip("B", new_b, make_meta(4))
    resumed.write_clip("A", make_records(4, 11), make_meta(4))
    resumed.finalize()
    reader = CacheReader.open(tmp_path)
    assert torch.equal(reader.load_clip("B")["coeffs"], new_b["coeffs"])
    assert sorted(reader.clips) == ["A", "B"] and reader.reports["C"].skipped
    assert reader.verify_all() == []


# --------------------------------------------------------------------------- corruption


def test_corrupt_shard_is_detected_and_named(tmp_path: Path) -> None:
    write_two(tmp_path)
    bad = shard_of(tmp_path, "M003/front/angry/level_3/001")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))

    reader = CacheReader.open(tmp_path)
    with pytest.raises(CacheCorruptError, match="checksum mismatch") as err:
        reader.load_clip("M003/front/angry/level_3/001")
    assert err.value.shard == bad and bad.name in str(err.value)
    assert err.value.clips == ("M003/front/angry/level_3/001",)
    reader.load_clip("W009/front/happy/level_1/002")  # the other shard is fine
    problems = reader.verify_all()
    assert [p.shard for p in problems] == [bad] and "checksum" in problems[0].problem
    # Raised inside a DataLoader worker, it still arrives as a CacheCorruptError naming the shard.
    loader = DataLoader(CacheDataset(CacheReader.open(tmp_path), filter={"subject": "M003"}), num_workers=1)
    batches = iter(loader)
    with pytest.raises(CacheCorruptError, match=bad.name):
        next(batches)
    batches._shutdown_workers()  # now, not when the iterator is garbage-collected

    # Without checksum verification, damage that keeps the size still fails loudly.
    bad.write_bytes(b"\0" * len(data))
    unverified = CacheReader.open(tmp_path, verify_checksums=False)
    with pytest.raises(CacheCorruptError, match="not a readable shard") as err:
        unverified.load_clip("M003/front/angry/level_3/001")
    assert err.value.shard == bad


def test_missing_shard_is_named(tmp_path: Path) -> None:
    write_two(tmp_path)
    gone = shard_of(tmp_path, "W009/front/happy/level_1/002")
    gone.unlink()
    reader = CacheReader.open(tmp_path)
    with pytest.raises(CacheCorruptError, match="shard file is missing") as err:
        reader.load_clip("W009/front/happy/level_1/002")
    assert err.value.shard == gone and gone.name in str(err.value)
    with pytest.raises(CacheCorruptError, match="missing") as err:
        CacheWriter.open(tmp_path, SPEC).finalize()
    assert gone.name in str(err.value)


@pytest.mark.parametrize(
    "bad_path, pattern", [("../x.pt", r"'\.\.'"), ("shards/../../x.pt", r"'\.\.'"), ("/etc/passwd", "absolute")]
)
def test_manifest_paths_must_stay_inside_the_root(tmp_path: Path, bad_path: str, pattern: str) -> None:
    write_two(tmp_path)
    edit_manifest(tmp_path, lambda m: m["shards"][0].update(path=bad_path))
    with pytest.raises(CacheError, match=pattern):
        CacheReader.open(tmp_path)


def test_symlink_escaping_the_root_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    write_two(root)
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"x")
    (root / "shards" / "link.pt").symlink_to(outside)
    edit_manifest(root, lambda m: m["shards"][0].update(path="shards/link.pt"))
    with pytest.raises(CacheError, match="outside the cache root"):
        CacheReader.open(root)


def test_version_mismatch_names_both_versions(tmp_path: Path) -> None:
    write_two(tmp_path)
    with pytest.raises(CacheVersionError, match=r"version 1, expected version 2") as err:
        CacheReader.open(tmp_path, version=2)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(CacheSpecMismatchError, match="kind is 'frames', expected 'textures'"):
        CacheReader.open(tmp_path, kind="textures")
    edit_manifest(tmp_path, lambda m: m.update(format_version=[2, 0]))
    with pytest.raises(CacheVersionError, match=r"format version 2\.0 .* format version 1\.x") as err:
        CacheReader.open(tmp_path)
    assert "manifest.json" in str(err.value)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec_file.read_text().replace('"format_version":[1,0]', '"format_version":[2,3]'))
    with pytest.raises(CacheVersionError, match=r"2\.3"):
        CacheWriter.open(tmp_path, SPEC)


def test_reader_checks_attributes(tmp_path: Path) -> None:
    write_two(tmp_path)
    reader = CacheReader.open(tmp_path)
    reader.check(attributes={"texture_size": 8, "recon": {"sha256": "ab" * 8}})
    with pytest.raises(CacheSpecMismatchError, match="texture_size: 8 in the cache, 16 expected"):
        reader.check(attributes={"texture_size": 16, "face_model": "procedural"})


# --------------------------------------------------------------------------- ranks


def _rank_job(root: str, rank: int, clips: list[str], barrier) -> None:
    writer = CacheWriter.open(root, SPEC, rank=rank, world_size=2)
    barrier.wait()  # both ranks write at the same time
    for clip in clips:
        if not writer.is_done(clip):
            writer.write_clip(clip, make_records(3, hash((clip, rank)) % 1000), make_meta(3, subject=f"S{rank}"))


def test_two_ranks_write_concurrently_then_finalize(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    jobs = {0: ["c0", "c2", "c4", "dup"], 1: ["c1", "c3", "c5", "dup"]}  # "dup": sampler padding
    processes = [
        context.Process(target=_rank_job, args=(str(tmp_path), rank, clips, barrier)) for rank, clips in jobs.items()
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0]

    with pytest.raises(CacheError, match="not finalised"):
        CacheReader.open(tmp_path)
    partial = CacheReader.open(tmp_path, allow_unfinalized=True)
    assert sorted(partial.clips) == ["c0", "c1", "c2", "c3", "c4", "c5", "dup"]
    with pytest.raises(CacheError, match="rank 0 only"):
        CacheWriter.open(tmp_path, SPEC, rank=1, world_size=2).finalize()
    summary = CacheWriter.open(tmp_path, SPEC, rank=0, world_size=2).finalize()
    assert (summary.num_clips, summary.num_records, summary.num_duplicates) == (7, 21, 1)
    reader = CacheReader.open(tmp_path)
    assert sorted(reader.clips) == ["c0", "c1", "c2", "c3", "c4", "c5", "dup"]
    for clip in reader.clips:
        assert reader.load_clip(clip)["coeffs"].shape == (3, 7)
    by_rank = [set(reader.records(subject=f"S{rank}").unique("clip")) for rank in (0, 1)]
    assert by_rank[0] - {"dup"} == {"c0", "c2", "c4"} and by_rank[1] - {"dup"} == {"c1", "c3", "c5"}
    assert len(reader.records(clip="dup")) == 3  # one copy kept
    assert reader.verify_all() == []


def test_finalize_refuses_before_every_rank_opened(tmp_path: Path) -> None:
    writer = CacheWriter.open(tmp_path, SPEC, rank=0, world_size=3)
    writer.write_clip("a", make_records(2, 0), make_meta(2))
    with pytest.raises(CacheError, match=r"ranks \[1, 2\] of world size 3 never opened"):
        writer.finalize()


def test_writing_after_finalize_unfinalises_without_losing_clips(tmp_path: Path) -> None:
    write_two(tmp_path)
    writer = CacheWriter.open(tmp_path, SPEC)
    writer.write_clip("late", make_records(2, 5), make_meta(2))
    with pytest.raises(CacheError, match="not finalised"):
        CacheReader.open(tmp_path)
    writer.finalize()
    assert len(CacheReader.open(tmp_path).clips) == 3


# --------------------------------------------------------------------------- dataset


def test_dataset_filter_lru_and_dataloader_workers(tmp_path: Path) -> None:
    writer = CacheWriter.open(tmp_path, SPEC)
    expected: dict[tuple[str, int], torch.Tensor] = {}
    clips = [("M003", "angry"), ("M003", "happy"), ("W009", "angry"), ("W011", "angry")]
    for i, (subject, emotion) in enumerate(clips):
        records = make_records(4, i)
        clip = f"{subject}/{emotion}"
        writer.write_clip(clip, records, make_meta(4, subject, emotion, level=1 + i % 3))
        for frame in range(4):
            expected[(clip, frame)] = records["coeffs"][frame]
    writer.finalize()
    reader = CacheReader.open(tmp_path)

    dataset = CacheDataset(reader, fields=("coeffs", "crop"), filter={"emotion": "angry"}, max_cached_shards=1)
    assert len(dataset) == 12
    sample = dataset[5]
    assert set(sample) == {"coeffs", "crop", "clip", "subject", "emotion", "level", "frame"}
    assert sample["crop"].dtype == torch.uint8 and sample["crop"].shape == (3, 8, 8)
    assert torch.equal(sample["coeffs"], expected[(sample["clip"], sample["frame"])])
    # LRU of one shard + a shard-local order: each shard is loaded exactly once.
    dataset = CacheDataset(reader, fields=("coeffs",), filter={"emotion": "angry"}, max_cached_shards=1)
    order = list(ShardLocalSampler(dataset.index, shards_per_block=1, seed=3))
    assert sorted(order) == list(range(12))
    for position in order:
        dataset[position]
    assert dataset.shard_loads == 3

    loader = DataLoader(dataset, batch_size=5, num_workers=2, shuffle=True)
    seen = []
    for batch in loader:
        assert batch["coeffs"].shape[1:] == (7,)
        for clip, frame, coeffs in zip(batch["clip"], batch["frame"].tolist(), batch["coeffs"]):
            assert torch.equal(coeffs, expected[(clip, frame)])
            seen.append((clip, frame))
    assert sorted(seen) == sorted(k for k in expected if not k[0].endswith("happy"))
    assert dataset.shard_loads == 3  # workers loaded into their own copies


def test_dataset_pickles_without_loaded_shards(tmp_path: Path) -> None:
    write_two(tmp_path)
    dataset = CacheDataset(CacheReader.open(tmp_path), max_cached_shards=4)
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._cache == {} and torch.equal(clone[0]["crop"], dataset[0]["crop"])
