"""Video I/O: real-clip round trips with audio passthrough, synthetic clips, broken files."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from emoedit.video import (
    VideoError,
    VideoReader,
    VideoWriter,
    probe_video,
    read_audio,
    read_frame_rows,
    read_video,
    write_video,
)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def audio_packets(path: Path) -> list[tuple[bytes, Fraction | None, Fraction]]:
    """(payload, pts in seconds, duration in seconds) of every audio packet of ``path``."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [
            (bytes(p), None if p.pts is None else p.pts * p.time_base, p.duration * p.time_base)
            for p in container.demux(stream)
            if p.size
        ]


def fixture_videos(fixtures_dir: Path) -> list[Path]:
    videos = sorted((fixtures_dir / "videos").glob("*.mp4"))
    if not videos:
        pytest.skip(f"no fixture videos in {fixtures_dir / 'videos'}")
    return videos


def synthetic_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving colour gradients (compress well, so H.264 keeps them accurately)."""
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    frames = []
    for t in range(num_frames):
        phase = 2 * np.pi * t / max(num_frames, 1)
        r = 0.5 + 0.4 * np.sin(2 * np.pi * x + phase)
        g = 0.5 + 0.4 * np.cos(2 * np.pi * y - phase)
        b = 0.5 + 0.4 * np.sin(2 * np.pi * (x + y) / 2 + 2 * phase)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.round(np.stack(frames) * 255).astype(np.uint8)


def test_fixture_round_trip_keeps_frames_fps_and_audio(fixtures_dir: Path, tmp_path: Path):
    for source in fixture_videos(fixtures_dir):
        info = probe_video(source)
        assert info.has_audio and info.audio_codec == "aac"
        out = tmp_path / f"copy_{source.name}"
        num_decoded = 0
        with VideoReader(source) as reader, VideoWriter(
            out, fps=reader.info.fps, crf=18, preset="veryfast", audio_from=source
        ) as writer:
            for chunk in reader.iter_chunks(48):
                assert chunk.dtype == np.uint8 and chunk.shape[1:] == (info.height, info.width, 3)
                num_decoded += chunk.shape[0]
                writer.write(chunk)
        assert num_decoded == info.num_frames  # probe count == decoded count

        copy_info = probe_video(out)
        assert copy_info.num_frames == info.num_frames, source.name
        assert copy_info.fps == info.fps, source.name
        assert (copy_info.width, copy_info.height) == (info.width, info.height)
        assert copy_info.video_codec == "h264"
        assert (copy_info.audio_codec, copy_info.audio_sample_rate, copy_info.audio_channels) == (
            info.audio_codec,
            info.audio_sample_rate,
            info.audio_channels,
        )
        one_audio_frame_s = 1024 / info.audio_sample_rate  # AAC frame
        assert abs(copy_info.audio_duration_s - info.audio_duration_s) <= one_audio_frame_s

        # audio remuxed, not re-encoded: identical payloads at identical times
        src_packets, out_packets = audio_packets(source), audio_packets(out)
        assert len(out_packets) == len(src_packets)
        assert [p[0] for p in out_packets] == [p[0] for p in src_packets]
        assert [p[1] for p in out_packets] == [p[1] for p in src_packets]
        src_audio, src_rate = read_audio(source)
        out_audio, out_rate = read_audio(out)
        assert out_rate == src_rate and np.array_equal(out_audio, src_audio)

        # H.264 is lossy: compare the decoded copy with the decoded source frame by frame
        squared_error, num_values, num_compared = 0.0, 0, 0
        with VideoReader(source) as src_reader, VideoReader(out) as out_reader:
            for src_frame, out_frame in zip(src_reader, out_reader, strict=True):
                diff = src_frame.astype(np.float32) - out_frame.astype(np.float32)
                squared_error += float(np.square(diff).sum())
                num_values += diff.size
                num_compared += 1
        assert num_compared == info.num_frames
        quality = 10.0 * math.log10(255.0**2 / (squared_error / num_values))
        assert quality >= 33.0, f"{source.name}: PSNR {quality:.1f} dB"


def test_synthetic_clip_with_generated_audio(tmp_path: Path):
    fps = Fraction(30000, 1001)
    frames = synthetic_frames(12, 48, 64)
    rate = 16000
    t = np.arange(int(rate * 12 / float(fps))) / rate
    tone = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    samples = np.stack([tone, 0.5 * tone])  # (2, N)
    path = tmp_path / "synthetic.mp4"
    with VideoWriter(path, fps=fps, preset="ultrafast", audio_samples=(torch.from_numpy(samples), rate)) as writer:
        writer.write(torch.from_numpy(frames[:5]))  # torch chunk
        writer.write(frames[5])  # a single (H, W, 3) frame
        writer.write(frames[6:])
        assert writer.frames_written == 12
    assert not list(tmp_path.glob(".synthetic*")), "temporary file left behind"

    info = probe_video(path)
    assert (info.width, info.height, info.num_frames, info.fps) == (64, 48, 12, fps)
    assert info.fps_float == pytest.approx(29.97, abs=1e-3)
    assert info.duration_s == pytest.approx(12 / float(fps))
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", rate, 2)

    back, _ = read_video(path, as_tensor=True)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.uint8 and back.shape == (12, 48, 64, 3)
    assert psnr(frames, back.numpy()) >= 30.0

    audio, audio_rate = read_audio(path)
    assert audio_rate == rate and audio.dtype == np.float32 and audio.shape[0] == 2
    assert abs(audio.shape[1] - samples.shape[1]) <= 1024  # AAC pads to whole 1024-sample frames
    n = samples.shape[1]
    err = audio[:, 1000 : n - 1000] - samples[:, 1000 : n - 1000]
    snr = 10 * math.log10(float(np.mean(samples**2)) / float(np.mean(err**2)))
    assert snr >= 15.0, f"AAC tone SNR {snr:.1f} dB"


def test_reader_chunks_and_single_frames(tmp_path: Path):
    frames = synthetic_frames(7, 32, 32)
    path = write_video(tmp_path / "clip.mkv", frames, fps=25, crf=0, preset="ultrafast", pix_fmt="yuv444p")
    with VideoReader(path) as reader:
        chunks = list(reader.iter_chunks(3, as_tensor=True))
        assert [c.shape[0] for c in chunks] == [3, 3, 1]
        singles = list(reader)  # a second pass starts from the first frame again
    assert len(singles) == 7 and singles[0].shape == (32, 32, 3)
    np.testing.assert_array_equal(torch.cat(chunks).numpy(), np.stack(singles))
    # crf 0 is lossless in YUV and 4:4:4 keeps full chroma: only RGB->YUV->RGB rounding remains
    assert np.abs(np.stack(singles).astype(int) - frames).max() <= 3


def test_read_frame_rows_picks_rows_as_nchw_unit_floats(tmp_path: Path):
    frames = synthetic_frames(6, 16, 24)
    path = write_video(tmp_path / "clip.mkv", frames, fps=25, crf=0, preset="ultrafast", pix_fmt="yuv444p")
    decoded, _ = read_video(path, as_tensor=True)
    for rows in ([4, 0, 2], torch.tensor([4, 0, 2])):
        picked = read_frame_rows(path, rows, min_frames=6)
        assert picked.shape == (3, 3, 16, 24) and picked.dtype == torch.float32
        assert torch.equal(picked, decoded[[4, 0, 2]].permute(0, 3, 1, 2).float() / 255.0)
    with pytest.raises(ValueError, match=r"clip\.mkv: has 6 frames, the evaluation needs 7"):
        read_frame_rows(path, [0], min_frames=7)
    with pytest.raises(ValueError, match=r"clip\.mkv: has 6 frames, the evaluation needs frame 6"):
        read_frame_rows(path, [1, 6])


def test_no_audio_source_and_rational_fps(tmp_path: Path):
    silent = write_video(tmp_path / "silent.mp4", synthetic_frames(4, 16, 16), fps=24000 / 1001, preset="ultrafast")
    info = probe_video(silent)
    assert info.fps == Fraction(24000, 1001) and not info.has_audio
    # audio_from a file without audio writes a file without audio
    copy = write_video(
        tmp_path / "copy.mp4", synthetic_frames(4, 16, 16), fps=info.fps, audio_from=silent, preset="ultrafast"
    )
    assert not probe_video(copy).has_audio
    with pytest.raises(VideoError, match="no audio stream"):
        read_audio(silent)


def test_odd_sizes(tmp_path: Path):
    frames = synthetic_frames(3, 17, 21)
    with pytest.raises(ValueError, match="yuv420p needs .* got 21x17"):
        write_video(tmp_path / "odd.mp4", frames, fps=25)
    assert not (tmp_path / "odd.mp4").exists()
    assert not list(tmp_path.iterdir()), "temporary file left behind"
    path = write_video(tmp_path / "odd444.mp4", frames, fps=25, pix_fmt="yuv444p", preset="ultrafast")
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (21, 17, 3)


def test_failed_write_leaves_no_file(tmp_path: Path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(target, fps=25, preset="ultrafast") as writer:
            writer.write(synthetic_frames(2, 16, 16))
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    with pytest.raises(ValueError, match="the video is 16x16"):
        with VideoWriter(target, fps=25, preset="ultrafast") as writer:
            writer.write(synthetic_frames(1, 16, 16))
            writer.write(synthetic_frames(1, 16, 18))
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(target, fps=25) as writer:
            writer.write(np.zeros((1, 16, 16, 3), dtype=np.float32))
    with pytest.raises(VideoError, match="no frames"):
        with VideoWriter(target, fps=25):
            pass
    assert target.read_bytes() == b"old"


def test_broken_files_raise_video_error(fixtures_dir: Path, tmp_path: Path):
    source = fixture_videos(fixtures_dir)[0]
    data = source.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(0.3 * len(data))])
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    missing = tmp_path / "missing.mp4"
    for path in (truncated, text, missing):
        for load in (probe_video, read_video, read_audio):
            with pytest.raises(VideoError, match=str(path.name)):
                load(path)


def test_truncated_faststart_file_raises(tmp_path: Path):
    # Our writer puts the index first, so a cut file still opens: the missing frames must be noticed.
    path = write_video(tmp_path / "full.mp4", synthetic_frames(30, 64, 64), fps=25, preset="ultrafast")
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    for fraction in (0.5, 0.98):
        cut = tmp_path / f"cut_{fraction}.mp4"
        cut.write_bytes(data[: int(fraction * len(data))])
        with pytest.raises(VideoError, match="truncated"):
            probe_video(cut)
        with pytest.raises(VideoError, match=cut.name):
            read_video(cut)
