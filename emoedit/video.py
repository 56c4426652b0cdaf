"""Video and audio file I/O with PyAV: probe, read in chunks, write H.264 with audio passthrough.

Frames at this boundary are uint8 RGB, HWC (``(H, W, 3)``; chunks ``(N, H, W, 3)``), as
numpy arrays (``as_tensor=True`` gives CPU torch tensors sharing the memory).

Reading
    ``probe_video(path) -> VideoInfo`` (size, exact rational fps, frame count, audio);
    ``VideoReader`` (context manager) streams frames in chunks so long videos are never
    held in memory; ``read_video`` / ``read_audio`` decode a whole (short) clip.
    Colour: YUV→RGB uses the matrix and range the stream is tagged with; untagged streams
    use FFmpeg's default (BT.601, limited range). Rotation metadata is ignored.

Writing
    ``VideoWriter`` (context manager) encodes H.264 (libx264, CRF, preset) at the exact
    rational fps given (pass the source's ``VideoInfo.fps``). RGB→YUV uses BT.709, limited
    range, and the stream is tagged so (players and ``VideoReader`` then agree).
    ``audio_from=src`` copies the source's first audio stream packet by packet (no
    re-encode; timestamps are rescaled into the output stream's time base, shifted only by
    the source video's start time so that A/V sync is kept); ``audio_samples=(array, rate)``
    encodes new AAC audio. Audio packets are interleaved with video as frames arrive.
    The file is written to a temporary file in the destination folder and moved into place
    with ``os.replace`` on success; on error the temporary file is removed.

Odd frame sizes: 4:2:0 (``yuv420p``, the default: plays everywhere) needs even width and
height. We never change the resolution silently: odd sizes raise ``ValueError`` unless
``pix_fmt="yuv444p"`` is chosen (exact size, H.264 High 4:4:4, not every player decodes
it), or the caller crops/pads explicitly.

Every failure to open, demux or decode a file (missing, truncated, corrupt, not a video)
raises ``VideoError`` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Iterator, Sequence

import av
import av.error
import numpy as np
import torch
from av.video.reformatter import ColorRange, Colorspace
from torch import Tensor

from emoedit.atomic_io import atomic_path

PathLike = str | os.PathLike

# Tags written on encoded streams (values of FFmpeg's AVColorSpace / AVColorPrimaries /
# AVColorTransferCharacteristic / AVColorRange enums): BT.709, limited ("MPEG") range.
_BT709 = 1
_RANGE_LIMITED = 1
_RANGE_FULL = 2

# Chroma subsampling (horizontal, vertical) of the pixel formats the writer accepts.
_CHROMA_SUBSAMPLING: dict[str, tuple[int, int]] = {"yuv420p": (2, 2), "yuv422p": (2, 1), "yuv444p": (1, 1)}

# Channel layouts used when encoding C-channel audio (AAC channel configurations 1..7).
_AUDIO_LAYOUTS: dict[int, str] = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}

# Audio is encoded in blocks of this many seconds (bounded memory for long clips).
_AUDIO_BLOCK_S = 1.0


class VideoError(RuntimeError):
    """A video file is missing, truncated, corrupt, not a video, or could not be written."""


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` found out about a file (first video stream, first audio stream)."""

    path: str  # the probed file
    width: int  # frame width in pixels
    height: int  # frame height in pixels
    fps: Fraction  # exact frame rate (frames per second) of the video stream, e.g. 25 or 30000/1001
    num_frames: int  # number of video frames (counted from the demuxed packets)
    duration_s: float  # video duration in seconds, num_frames / fps
    video_codec: str  # e.g. "h264", "mpeg4"
    audio_codec: str | None  # e.g. "aac"; None without audio
    audio_sample_rate: int | None  # Hz; None without audio
    audio_channels: int | None  # None without audio
    audio_duration_s: float | None  # from the stream header; None if unknown or without audio

    @property
    def fps_float(self) -> float:
        """Frame rate as a float."""
        return float(self.fps)

    @property
    def has_audio(self) -> bool:
        """Whether the file has an audio stream."""
        return self.audio_codec is not None

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.height, self.width)


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: file not found")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty")
    return path


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise VideoError(f"{path}: cannot open as a video file ({error})") from error


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{path}: has no video stream")
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream, path: Path) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    raise VideoError(f"{path}: video stream has no usable frame rate")


def probe_video(path: PathLike) -> VideoInfo:
    """Describe the video at ``path``; raises ``VideoError`` for anything that is not a readable video.

    The frame count is the number of video packets that are actually present (demuxed,
    not decoded: cheap), so a file whose header promises more frames than it holds (a
    truncated download) raises ``VideoError``.
    """
    path = _existing_file(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise VideoError(f"{path}: video stream has no frame size (corrupt header?)")
        fps = _stream_fps(stream, path)
        declared = stream.frames
        audio = container.streams.audio[0] if container.streams.audio else None
        num_frames, discarded, audio_packets = 0, 0, 0
        try:
            for packet in container.demux(*([stream] if audio is None else [stream, audio])):
                if packet.size == 0:  # the demuxer's final flush packet
                    continue
                if packet.is_corrupt:  # e.g. cut short by the end of the file
                    kind = packet.stream.type
                    raise VideoError(
                        f"{path}: truncated or corrupt: an incomplete {kind} packet after {num_frames} video frames"
                    )
                if packet.stream.type != "video":
                    audio_packets += 1
                    continue
                if packet.is_discard:
                    discarded += 1
                    continue
                num_frames += 1
        except (av.error.FFmpegError, OSError) as error:
            raise VideoError(f"{path}: corrupt or truncated after {num_frames} video packets ({error})") from error
        if num_frames == 0:
            raise VideoError(f"{path}: the video stream holds no frames")
        if audio is not None and audio.frames > 0 and audio_packets < audio.frames:
            raise VideoError(
                f"{path}: truncated: the header lists {audio.frames} audio packets but only {audio_packets} are present"
            )
        if declared > 0 and discarded == 0 and num_frames < declared:
            raise VideoError(
                f"{path}: truncated: the header lists {declared} video frames but only {num_frames} are present"
            )
        audio_duration = None
        if audio is not None and audio.duration is not None and audio.time_base is not None:
            audio_duration = float(audio.duration * audio.time_base)
        return VideoInfo(
            path=str(path),
            width=width,
            height=height,
            fps=fps,
            num_frames=num_frames,
            duration_s=float(num_frames / fps),
            video_codec=stream.codec_context.name,
            audio_codec=None if audio is None else audio.codec_context.name,
            audio_sample_rate=None if audio is None else audio.codec_context.sample_rate,
            audio_channels=None if audio is None else audio.codec_context.layout.nb_channels,
            audio_duration_s=audio_duration,
        )


def _frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """Decoded frame -> (H, W, 3) uint8 RGB, honouring the frame's colour matrix and range tags."""
    color_range = frame.color_range if frame.color_range in (_RANGE_LIMITED, _RANGE_FULL) else None
    return frame.to_ndarray(format="rgb24", src_color_range=color_range)


def _stack(frames: list[np.ndarray], as_tensor: bool) -> np.ndarray | Tensor:
    chunk = np.stack(frames)
    return torch.from_numpy(chunk) if as_tensor else chunk


class VideoReader:
    """Decode the first video stream of a file in chunks (context manager).

    ```
    with VideoReader(path) as reader:
        reader.info.num_frames, reader.info.fps
        for chunk in reader.iter_chunks(64):      # (n <= 64, H, W, 3) uint8 RGB
            ...
    ```
    Entering probes the file (``VideoError`` if unreadable). Each ``iter_chunks`` /
    iteration decodes from the first frame; a stream that ends before ``info.num_frames``
    frames raises ``VideoError``.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._info: VideoInfo | None = None
        self._container: av.container.InputContainer | None = None

    def __enter__(self) -> VideoReader:
        self._info = probe_video(self.path)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the decoder (iterators still running stop working)."""
        if self._container is not None:
            self._container.close()
            self._container = None

    @property
    def info(self) -> VideoInfo:
        """The probed ``VideoInfo`` (available inside the ``with`` block)."""
        if self._info is None:
            raise RuntimeError("VideoReader.info is available only inside 'with VideoReader(path) as reader:'")
        return self._info

    def _decoded_frames(self) -> Iterator[np.ndarray]:
        info = self.info
        self.close()  # a new pass starts from the first frame
        container = _open_input(self.path)
        self._container = container
        stream = _video_stream(container, self.path)
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                yield _frame_to_rgb(frame)
                index += 1
        except (av.error.FFmpegError, OSError) as error:
            raise VideoError(f"{self.path}: cannot decode frame {index} ({error})") from error
        if index < info.num_frames:
            raise VideoError(f"{self.path}: decoded only {index} of {info.num_frames} frames (corrupt stream)")

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames one by one: (H, W, 3) uint8 RGB numpy arrays."""
        return self._decoded_frames()

    def iter_chunks(
        self,
        chunk_size: int,  # frames per chunk (the last chunk may be shorter)
        *,
        as_tensor: bool = False,  # yield CPU torch uint8 tensors instead of numpy arrays
    ) -> Iterator[np.ndarray | Tensor]:
        """Consecutive chunks of (n <= chunk_size, H, W, 3) uint8 RGB frames."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk: list[np.ndarray] = []
        for frame in self._decoded_frames():
            chunk.append(frame)
            if len(chunk) == chunk_size:
                yield _stack(chunk, as_tensor)
                chunk = []
        if chunk:
            yield _stack(chunk, as_tensor)


def read_video(path: PathLike, *, as_tensor: bool = False) -> tuple[np.ndarray | Tensor, VideoInfo]:
    """Decode a whole clip: ((T, H, W, 3) uint8 RGB, info). For short clips; else use ``VideoReader``."""
    with VideoReader(path) as reader:
        frames = list(reader)
        info = reader.info
    return _stack(frames, as_tensor), info


def read_frame_rows(
    path: PathLike,  # a video file
    rows: Sequence[int] | Tensor,  # (N,) frame indices to keep, in this order
    *,
    min_frames: int = 0,  # the clip must have at least this many frames
) -> Tensor:
    """Frames ``rows`` of a whole decoded clip: ``(N, 3, H, W)`` float32 RGB in [0, 1].

    Raises ``ValueError`` naming the file when it has fewer than ``min_frames`` frames or
    no frame ``max(rows)``.
    """
    frames, _ = read_video(path, as_tensor=True)
    count = int(frames.shape[0])
    if count < min_frames:
        raise ValueError(f"{path}: has {count} frames, the evaluation needs {min_frames}")
    index = torch.as_tensor(rows, dtype=torch.long)
    if index.numel() and int(index.max()) >= count:
        raise ValueError(f"{path}: has {count} frames, the evaluation needs frame {int(index.max())}")
    return frames[index].permute(0, 3, 1, 2).float().div(255.0)


def read_audio(path: PathLike) -> tuple[np.ndarray, int]:
    """Decode the first audio stream: (samples (C, N) float32, nominally in [-1, 1]; sample rate in Hz).

    Encoder priming samples are dropped as the container says (MP4 edit lists).
    """
    path = _existing_file(path)
    with _open_input(path) as container:
        if not container.streams.audio:
            raise VideoError(f"{path}: has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        layout = stream.codec_context.layout
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        blocks: list[np.ndarray] = []
        num_packets = 0
        try:
            for packet in container.demux(stream):
                num_packets += packet.size > 0
                if packet.is_corrupt:
                    raise VideoError(
                        f"{path}: truncated or corrupt: an incomplete audio packet after {num_packets - 1} packets"
                    )
                for frame in packet.decode():  # the final empty packet flushes the decoder
                    blocks.extend(planar.to_ndarray() for planar in resampler.resample(frame))
            blocks.extend(planar.to_ndarray() for planar in resampler.resample(None))
        except (av.error.FFmpegError, OSError) as error:
            raise VideoError(f"{path}: cannot decode audio ({error})") from error
        if stream.frames > 0 and num_packets < stream.frames:
            raise VideoError(
                f"{path}: truncated: the header lists {stream.frames} audio packets but only {num_packets} are present"
            )
    channels = layout.nb_channels
    samples = np.concatenate(blocks, axis=1) if blocks else np.zeros((channels, 0), dtype=np.float32)
    return samples.astype(np.float32, copy=False), rate


def _as_fps(fps: Fraction | int | float | str) -> Fraction:
    if isinstance(fps, float):
        # Floats are rounded to the usual rates: 25.0 -> 25, 29.97 -> 30000/1001, 23.976 ->
        # 24000/1001; anything else to the nearest fraction with denominator <= 1001.
        # Pass a Fraction (VideoInfo.fps) to keep a source's exact rate.
        if not math.isfinite(fps):
            raise ValueError(f"fps must be finite, got {fps}")
        ntsc = Fraction(round(fps * 1.001) * 1000, 1001)
        if fps == round(fps):
            value = Fraction(round(fps))
        elif abs(float(ntsc) - fps) < 5e-3:
            value = ntsc
        else:
            value = Fraction(fps).limit_denominator(1001)
    else:
        value = Fraction(fps)
    if value <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return value


def _as_frames(frames: np.ndarray | Tensor) -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3) uint8 -> (N, H, W, 3) uint8 numpy."""
    if isinstance(frames, Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames: expected a numpy array or torch tensor, got {type(frames).__name__}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected (H, W, 3) or (N, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 RGB in [0, 255], got {frames.dtype}")
    return frames


class _AudioSource:
    """Lazily produced output audio packets, interleaved by time with the video."""

    def __init__(self, packets: Iterator[av.Packet], on_close: contextlib.ExitStack) -> None:
        self._packets = packets
        self._pending: av.Packet | None = None
        self._done = False
        self._closer = on_close

    def _peek(self) -> av.Packet | None:
        if self._pending is None and not self._done:
            self._pending = next(self._packets, None)
            self._done = self._pending is None
        return self._pending

    def take_until(self, time_s: float | None) -> Iterator[av.Packet]:
        """Packets whose timestamp is <= ``time_s`` seconds (all remaining ones for None)."""
        while (packet := self._peek()) is not None:
            stamp = packet.dts if packet.dts is not None else packet.pts
            if time_s is not None and stamp is not None and float(stamp * packet.time_base) > time_s:
                return
            self._pending = None
            yield packet

    def close(self) -> None:
        self._closer.close()


class VideoWriter:
    """Encode RGB frames to an H.264 file, optionally with audio (context manager).

    ```
    with VideoWriter(out_path, fps=info.fps, audio_from=src_path) as writer:
        for chunk in chunks:                       # (n, H, W, 3) uint8 RGB
            writer.write(chunk)
    ```
    The frame size is taken from ``width``/``height`` or else from the first frame; all
    frames must have that size. The file appears at ``path`` only when the block exits
    without an exception.
    """

    def __init__(
        self,
        path: PathLike,  # output file; the container format follows the extension (.mp4, .mkv, .mov)
        *,
        fps: Fraction | int | float | str,  # frame rate; pass the source's exact Fraction to keep it
        width: int | None = None,  # frame width in pixels (None: from the first frame)
        height: int | None = None,  # frame height in pixels (None: from the first frame)
        crf: float = 18.0,  # x264 constant rate factor, 0 (lossless) .. 51; 18 ~ visually lossless
        preset: str = "medium",  # x264 speed/size trade-off: ultrafast .. veryslow
        pix_fmt: str = "yuv420p",  # yuv420p (even sizes; plays everywhere), yuv422p, yuv444p (any size)
        audio_from: PathLike | None = None,  # copy this file's first audio stream unchanged (no re-encode)
        audio_samples: tuple[np.ndarray | Tensor, int] | None = None,  # ((C, N) float in [-1, 1], rate Hz) -> AAC
        audio_bitrate: int = 128_000,  # AAC bit rate in bit/s (for audio_samples)
        faststart: bool = True,  # mp4/mov: put the index first so players can start before the download ends
    ) -> None:
        self.path = Path(path)
        self.fps = _as_fps(fps)
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must lie in [0, 51], got {crf}")
        if pix_fmt not in _CHROMA_SUBSAMPLING:
            raise ValueError(f"pix_fmt must be one of {sorted(_CHROMA_SUBSAMPLING)}, got {pix_fmt!r}")
        if audio_from is not None and audio_samples is not None:
            raise ValueError("give at most one of audio_from and audio_samples")
        self.crf = crf
        self.preset = preset
        self.pix_fmt = pix_fmt
        self.audio_from = None if audio_from is None else Path(audio_from)
        self.audio_samples = None if audio_samples is None else self._check_samples(*audio_samples)
        self.audio_bitrate = audio_bitrate
        self.faststart = faststart
        self._size: tuple[int, int] | None = None
        if (width is None) != (height is None):
            raise ValueError("give both width and height, or neither")
        if width is not None and height is not None:
            self._size = self._check_size(width, height)
        self._stack: contextlib.ExitStack | None = None
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: _AudioSource | None = None
        self._frames_written = 0

    # ---- validation -------------------------------------------------------------------------

    def _check_size(self, width: int, height: int) -> tuple[int, int]:
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: frame size must be positive, got {width}x{height}")
        sub_w, sub_h = _CHROMA_SUBSAMPLING[self.pix_fmt]
        if width % sub_w or height % sub_h:
            raise ValueError(
                f"{self.path}: {self.pix_fmt} needs a width divisible by {sub_w} and a height divisible by "
                f"{sub_h}, got {width}x{height}; crop or pad the frames, or use pix_fmt='yuv444p' (exact size, "
                "less widely playable)"
            )
        return (width, height)

    @staticmethod
    def _check_samples(samples: np.ndarray | Tensor, rate: int) -> tuple[np.ndarray, int]:
        if isinstance(samples, Tensor):
            samples = samples.detach().cpu().numpy()
        samples = np.asarray(samples)
        if samples.ndim != 2 or not 1 <= samples.shape[0] <= 8:
            raise ValueError(f"audio_samples: expected (C, N) with 1 <= C <= 8 channels, got shape {samples.shape}")
        if not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"audio_samples: expected float samples in [-1, 1], got {samples.dtype}")
        if not np.isfinite(samples).all():
            raise ValueError("audio_samples: contains NaN or inf")
        if samples.size and np.abs(samples).max() > 1.0 + 1e-6:
            raise ValueError(f"audio_samples: values must lie in [-1, 1], got max |x| = {np.abs(samples).max():.4g}")
        if int(rate) <= 0:
            raise ValueError(f"audio sample rate must be > 0, got {rate}")
        return np.ascontiguousarray(samples, dtype=np.float32), int(rate)

    # ---- context management -----------------------------------------------------------------

    def __enter__(self) -> VideoWriter:
        if self._stack is not None:
            raise RuntimeError(f"{self.path}: VideoWriter is already open")
        if self.audio_from is not None:
            _existing_file(self.audio_from)
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path))
            is_mp4 = self.path.suffix.lower() in (".mp4", ".mov", ".m4v")
            options = {"movflags": "+faststart"} if self.faststart and is_mp4 else {}
            try:
                self._container = av.open(str(tmp), mode="w", options=options)
            except (av.error.FFmpegError, ValueError) as error:
                raise VideoError(f"{self.path}: cannot create an output file of this type ({error})") from error
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        if self._size is not None:
            try:
                self._setup(*self._size)
            except BaseException as error:
                self._abort(type(error), error, error.__traceback__)
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                self._finish()
                self._release()  # closing the muxer writes the index
            except BaseException as error:
                self._abort(type(error), error, error.__traceback__)
                if isinstance(error, av.error.FFmpegError):
                    raise VideoError(f"{self.path}: cannot finish writing ({error})") from error
                raise
            assert self._stack is not None
            stack, self._stack = self._stack, None
            stack.__exit__(None, None, None)  # os.replace(tmp, path)
        else:
            self._abort(exc_type, exc, tb)

    def _release(self) -> None:
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        if self._container is not None:
            container, self._container = self._container, None
            container.close()

    def _abort(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with contextlib.suppress(Exception):
            self._release()
        self._container = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.__exit__(exc_type, exc, tb)  # removes the temporary file

    # ---- streams ----------------------------------------------------------------------------

    def _setup(self, width: int, height: int) -> None:
        container = self._container
        assert container is not None
        self._size = self._check_size(width, height)
        try:
            video = container.add_stream("libx264", rate=self.fps)
            video.width, video.height = width, height
            video.pix_fmt = self.pix_fmt
            video.options = {"crf": f"{self.crf:g}", "preset": self.preset}
            context = video.codec_context
            context.colorspace = _BT709
            context.color_primaries = _BT709
            context.color_trc = _BT709
            context.color_range = _RANGE_LIMITED
            self._video = video
            if self.audio_from is not None:
                self._audio = self._copied_audio(container)
            elif self.audio_samples is not None:
                self._audio = self._encoded_audio(container, *self.audio_samples)
        except (av.error.FFmpegError, ValueError) as error:
            raise VideoError(f"{self.path}: cannot set up the output streams ({error})") from error

    def _copied_audio(self, container: av.container.OutputContainer) -> _AudioSource | None:
        assert self.audio_from is not None
        stack = contextlib.ExitStack()
        source = stack.enter_context(_open_input(self.audio_from))
        if not source.streams.audio:
            stack.close()
            return None  # nothing to copy: the output has no audio, like the source
        in_audio = source.streams.audio[0]
        try:
            out_audio = container.add_stream_from_template(in_audio)
        except ValueError as error:
            stack.close()
            raise VideoError(
                f"{self.path}: cannot copy the {in_audio.codec_context.name} audio of {self.audio_from} into "
                f"a {self.path.suffix} file ({error})"
            ) from error
        # Our first frame is shown at t = 0; the source's first frame at its video start time.
        shift_s = Fraction(0)
        if source.streams.video:
            source_video = source.streams.video[0]
            if source_video.start_time is not None and source_video.time_base is not None:
                shift_s = source_video.start_time * source_video.time_base
        shift = round(shift_s / in_audio.time_base) if in_audio.time_base else 0
        audio_path = self.audio_from

        def packets() -> Iterator[av.Packet]:
            try:
                for packet in source.demux(in_audio):
                    if packet.size == 0:  # the demuxer's final flush packet
                        continue
                    if shift:
                        if packet.pts is not None:
                            packet.pts -= shift
                        if packet.dts is not None:
                            packet.dts -= shift
                    packet.stream = out_audio  # time base stays the source's; mux rescales it
                    yield packet
            except (av.error.FFmpegError, OSError) as error:
                raise VideoError(f"{audio_path}: cannot read audio packets ({error})") from error

        return _AudioSource(packets(), stack)

    def _encoded_audio(self, container: av.container.OutputContainer, samples: np.ndarray, rate: int) -> _AudioSource:
        channels = samples.shape[0]
        out_audio = container.add_stream("aac", rate=rate)
        out_audio.layout = _AUDIO_LAYOUTS[channels]
        out_audio.bit_rate = self.audio_bitrate
        block = max(1, int(rate * _AUDIO_BLOCK_S))
        layout_name = out_audio.layout.name

        def packets() -> Iterator[av.Packet]:
            for start in range(0, samples.shape[1], block):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, start : start + block]), format="fltp", layout=layout_name
                )
                frame.sample_rate = rate
                frame.pts = start
                frame.time_base = Fraction(1, rate)
                yield from out_audio.encode(frame)
            yield from out_audio.encode(None)

        return _AudioSource(packets(), contextlib.ExitStack())

    # ---- writing ----------------------------------------------------------------------------

    @property
    def frames_written(self) -> int:
        """Number of frames passed to ``write`` so far."""
        return self._frames_written

    def _mux_video(self, packets: list[av.Packet]) -> None:
        container = self._container
        assert container is not None
        for packet in packets:
            container.mux(packet)
            if self._audio is not None:
                stamp = packet.dts if packet.dts is not None else packet.pts
                until = None if stamp is None else float(stamp * packet.time_base)
                if until is not None:
                    for audio_packet in self._audio.take_until(until):
                        container.mux(audio_packet)

    def write(self, frames: np.ndarray | Tensor) -> None:
        """Append frames: (H, W, 3) or (N, H, W, 3) uint8 RGB (numpy or torch)."""
        if self._container is None:
            raise RuntimeError(f"{self.path}: write() only inside 'with VideoWriter(...) as writer:'")
        frames = _as_frames(frames)
        if self._video is None:
            self._setup(frames.shape[2], frames.shape[1])
        assert self._video is not None and self._size is not None
        width, height = self._size
        if frames.shape[1:3] != (height, width):
            raise ValueError(
                f"{self.path}: frames are {frames.shape[2]}x{frames.shape[1]}, the video is {width}x{height}"
            )
        time_base = Fraction(1) / self.fps
        try:
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame = frame.reformat(
                    format=self.pix_fmt, dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
                )
                frame.pts = self._frames_written
                frame.time_base = time_base
                self._mux_video(self._video.encode(frame))
                self._frames_written += 1
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.path}: cannot encode frame {self._frames_written} ({error})") from error

    def _finish(self) -> None:
        if self._video is None or self._frames_written == 0:
            raise VideoError(f"{self.path}: no frames were written")
        container = self._container
        assert container is not None
        try:
            self._mux_video(self._video.encode(None))
            if self._audio is not None:
                for audio_packet in self._audio.take_until(None):
                    container.mux(audio_packet)
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.path}: cannot finish writing ({error})") from error


def write_video(
    path: PathLike,  # output file (.mp4, .mkv, .mov)
    frames: np.ndarray | Tensor,  # (T, H, W, 3) uint8 RGB
    *,
    fps: Fraction | int | float | str,  # frame rate
    crf: float = 18.0,  # x264 constant rate factor
    preset: str = "medium",  # x264 preset
    pix_fmt: str = "yuv420p",  # see VideoWriter
    audio_from: PathLike | None = None,  # copy this file's audio unchanged
    audio_samples: tuple[np.ndarray | Tensor, int] | None = None,  # ((C, N) float in [-1, 1], rate Hz)
) -> Path:
    """Write a whole clip held in memory with ``VideoWriter``; returns ``path``."""
    with VideoWriter(
        path, fps=fps, crf=crf, preset=preset, pix_fmt=pix_fmt, audio_from=audio_from, audio_samples=audio_samples
    ) as writer:
        writer.write(frames)
    return Path(path)
