"""Readers of the input layouts: MEAD, FFHQ, video lists (emoedit.data.datasets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emoedit.data.datasets import (
    DatasetLayoutError,
    ffhq_root_of,
    parse_mead_relative,
    read_ffhq,
    read_inputs,
    read_mead,
    read_video_list,
)


def _touch(root: Path, relative: str, content: bytes = b"x") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _mead_tree(root: Path) -> Path:
    for rel in (
        "M003/video/front/angry/level_3/001.mp4",
        "M003/video/front/neutral/level_1/002.mp4",
        "W009/video/left_30/happy/level_1/010.mp4",
        "M003/audio/angry/level_3/001.m4a",  # not ours: ignored
        "README.txt",  # ignored
    ):
        _touch(root, rel)
    return root


def test_read_mead_parses_ids(tmp_path: Path) -> None:
    clips = read_mead(_mead_tree(tmp_path / "mead"))
    assert [c.clip_id for c in clips] == [
        "M003/front/angry/level_3/001",
        "M003/front/neutral/level_1/002",
        "W009/left_30/happy/level_1/010",
    ]
    first = clips[0]
    assert (first.subject, first.view, first.emotion, first.level, first.name) == ("M003", "front", "angry", 3, "001")
    assert first.media == "video" and first.path.name == "001.mp4"
    assert first.meta() == {"subject": "M003", "emotion": "angry", "level": 3, "view": "front"}
    # filters
    assert [c.clip_id for c in read_mead(tmp_path / "mead", views=["left_30"])] == ["W009/left_30/happy/level_1/010"]
    assert len(read_mead(tmp_path / "mead", subjects=["M003"], levels=[3])) == 1
    with pytest.raises(ValueError, match="unknown emotions"):
        read_mead(tmp_path / "mead", emotions=["joy"])


def test_read_mead_accepts_a_synthetic_world_folder(tmp_path: Path) -> None:
    _mead_tree(tmp_path / "world" / "mead")
    _touch(tmp_path / "world", "truth/world.json", b"{}")
    assert len(read_mead(tmp_path / "world")) == 3
    assert len(read_inputs("mead", [tmp_path / "world"])) == 3


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("M003/video/front/joyful/level_1/001.mp4", "unknown emotion 'joyful'"),
        ("M003/video/side/angry/level_1/001.mp4", "unknown view 'side'"),
        ("M003/video/front/angry/level_x/001.mp4", "'level_<n>'"),
        ("M003/video/front/angry/001.mp4", "not in the MEAD layout"),
        ("M003/video/front/angry/level_1/extra/001.mp4", "not in the MEAD layout"),
        ("M003/video/front/angry/level_1/notes.txt", "non-video file"),
        ("clip.mp4", "a video at the MEAD root"),
    ],
)
def test_read_mead_rejects_bad_layouts_naming_the_path(tmp_path: Path, relative: str, message: str) -> None:
    root = _mead_tree(tmp_path / "mead")
    bad = _touch(root, relative)
    with pytest.raises(DatasetLayoutError, match=message) as info:
        read_mead(root)
    assert str(bad) in str(info.value)


def test_read_mead_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no videos in the MEAD layout"):
        read_mead(tmp_path / "empty")
    with pytest.raises(DatasetLayoutError, match="not found"):
        read_mead(tmp_path / "missing")


def test_parse_mead_relative_known_answer() -> None:
    ids = parse_mead_relative("M030/video/down/surprised/level_2/027.mp4", source="x")
    assert ids == {"subject": "M030", "view": "down", "emotion": "surprised", "level": 2, "name": "027",
                   "clip_id": "M030/down/surprised/level_2/027"}


def test_read_ffhq_flat_and_numbered_folders(tmp_path: Path) -> None:
    for rel in ("00000/00000.png", "00000/00001.jpg", "01000/01000.PNG", "LICENSE.txt", "00000/meta.json"):
        _touch(tmp_path / "ffhq", rel)
    clips = read_ffhq(tmp_path / "ffhq")
    assert [c.clip_id for c in clips] == ["00000/00000", "00000/00001", "01000/01000"]
    assert all(c.media == "image" for c in clips)
    assert clips[1].subject == "00001" and clips[1].level == 0 and clips[1].emotion == "unknown"
    _touch(tmp_path / "flat", "a.png")
    assert [c.clip_id for c in read_ffhq(tmp_path / "flat")] == ["a"]
    _touch(tmp_path / "ffhq", "00000/deeper/x.png")
    with pytest.raises(DatasetLayoutError, match="nested 2 folders deep"):
        read_ffhq(tmp_path / "ffhq")
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images"):
        read_ffhq(tmp_path / "none")


def test_ffhq_root_of_finds_the_images_folder(tmp_path: Path) -> None:
    _touch(tmp_path / "world", "ffhq/images64x64/00000/00003.png")
    _touch(tmp_path / "world", "truth/world.json", b"{}")
    assert ffhq_root_of(tmp_path / "world") == tmp_path / "world" / "ffhq" / "images64x64"
    assert [c.clip_id for c in read_ffhq(tmp_path / "world")] == ["00000/00003"]
    _touch(tmp_path / "world", "ffhq/images128x128/00000/00003.png")
    with pytest.raises(DatasetLayoutError, match="several image folders"):
        read_ffhq(tmp_path / "world")


def test_video_list_entries_are_confined_to_the_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _touch(root, "talks/a.mp4")
    _touch(root, "M003/video/front/happy/level_2/005.mp4")
    outside = _touch(tmp_path, "secret/b.mp4")
    listing = root / "list.txt"
    listing.write_text("# my clips\ntalks/a.mp4\n\nM003/video/front/happy/level_2/005.mp4\n")
    clips = read_video_list([listing])
    assert [c.clip_id for c in clips] == ["M003/front/happy/level_2/005", "talks/a"]
    assert clips[0].emotion == "happy" and clips[0].level == 2 and clips[1].subject == "unknown"

    for entry in ("../secret/b.mp4", str(outside)):
        listing.write_text(entry + "\n")
        with pytest.raises(DatasetLayoutError, match="outside the dataset root") as info:
            read_video_list([listing])
        assert f"{listing}:1" in str(info.value)
    os.symlink(outside, root / "link.mp4")
    listing.write_text("link.mp4\n")
    with pytest.raises(DatasetLayoutError, match="outside the dataset root"):
        read_video_list([listing])
    listing.write_text("talks/notes.doc\n")
    with pytest.raises(DatasetLayoutError, match="not a video file"):
        read_video_list([listing])


def test_video_list_direct_paths_and_duplicates(tmp_path: Path) -> None:
    a = _touch(tmp_path, "x/clip.mp4")
    b = _touch(tmp_path, "y/clip.mp4")
    assert [c.clip_id for c in read_video_list([a])] == ["clip"]
    with pytest.raises(DatasetLayoutError, match="given by two files"):
        read_video_list([a, b])
    assert [c.clip_id for c in read_video_list([a, b], root=tmp_path)] == ["x/clip", "y/clip"]
    with pytest.raises(DatasetLayoutError, match="neither a video"):
        read_video_list([tmp_path / "notes.doc"])
    with pytest.raises(DatasetLayoutError, match="no videos"):
        read_video_list([])
    with pytest.raises(ValueError, match="input kind"):
        read_inputs("celeba", [tmp_path])
