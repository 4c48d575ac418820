"""Video in and out with PyAV (FFmpeg bundled in its PyPI wheel): frame-accurate reading and H.264 MP4 writing.

Reading decodes what LeRobot and lab logs hold (AV1, H.264, HEVC, VP9, MPEG-4 Part 2, ...). Frames are addressed in
one of two ways:

* :meth:`VideoReader.read_times`: by presentation time in seconds, as LeRobot refers to frames. The reader seeks to
  the key frame at or before the first time (by pts), decodes forward and returns, for each time, the decoded frame
  whose pts is nearest, failing when none lies within the tolerance (half a frame period by default).
* :meth:`VideoReader.read`: by ordinal (0 = the first frame in presentation order), as a lab log with a
  ``timestamps.txt`` line per frame does. It counts decoded frames forward, never seeking (so variable frame rate
  files stay exact) and re-opens the file only to go back.

Writing (:func:`write_mp4`) makes H.264 (libx264), yuv420p, MP4 with the index at the front (``+faststart``): what
browsers, notebook viewers and TensorBoard's users can play. Odd frame sizes are padded by one edge row/column.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from calql_robot.errors import UserError

H264_ENCODERS = ("libx264", "libopenh264")  # tried in order; the pinned av wheel ships libx264
SEEK_AHEAD_S = 2.0  # read_times seeks instead of decoding forward when the next time is this far ahead


def _sample_entry_tag(path: Path) -> str | None:
    """The codec tag (fourcc) of an MP4/MOV file's first sample description, read from its ``stsd`` box."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(b"stsd")
            if at < 0 or at + 20 > len(data):
                return None
            return data[at + 16: at + 20].decode("latin-1")
    except (OSError, ValueError):
        return None


class VideoReader:
    """Frame reader for the first video stream of one file; frames come back RGB uint8 (K, H, W, 3).

    Attributes: ``codec`` (e.g. ``av1``, ``h264``), ``width``, ``height``, ``pix_fmt``, ``fps`` (0.0 when the file
    states none) and ``n_frames``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"video {self.path} does not exist")
        self._container: Any = None
        self._open()
        ctx = self._stream.codec_context
        self.codec = str(ctx.codec.canonical_name)
        self.width, self.height = int(ctx.width), int(ctx.height)
        self.pix_fmt = ctx.format.name if ctx.format is not None else "unknown"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.n_frames = int(self._stream.frames) or self._count_packets()

    # -- opening and decoding -------------------------------------------------------------------------------------

    def _open(self) -> None:
        self.close()
        try:
            self._container = av.open(str(self.path), "r")
        except av.FFmpegError as err:
            raise UserError(f"video {self.path} cannot be opened ({err.strerror or err}); expected a video file "
                            "FFmpeg can read (MP4, MKV, WebM, AVI, ...), not a corrupt or truncated one") from None
        if not self._container.streams.video:
            self.close()
            raise UserError(f"video {self.path} holds no video stream")
        self._stream = self._container.streams.video[0]
        if self._stream.codec_context is None:
            tag = _sample_entry_tag(self.path)
            self.close()
            named = f"codec tag {tag!r}" if tag else "its codec"
            raise UserError(f"video {self.path}: {named} has no decoder in this FFmpeg build (PyAV {av.__version__}); "
                            "re-encode it to AV1, H.264 or VP9, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p "
                            "OUT.mp4`")
        self._stream.thread_type = "AUTO"
        self._decoded: Iterator[Any] = self._container.decode(self._stream)
        self._next = 0             # ordinal of the next frame self._decoded yields (None after a seek)
        self._window: list[tuple[float, Any]] = []  # read_times: (time, av frame, or its RGB once taken), oldest first
        self._ended = False

    def _count_packets(self) -> int:
        """Frames of a container that states no count (MKV, WebM): its video packets, without decoding them."""
        try:
            count = sum(1 for p in self._container.demux(self._stream) if p.size > 0)
        except av.FFmpegError as err:
            raise self._decode_error("its packets", err) from None
        self._open()
        return count

    def _decode_one(self, what: str) -> Any | None:
        """The next decoded frame, or None at the end of the stream."""
        try:
            return next(self._decoded)
        except StopIteration:
            return None
        except av.FFmpegError as err:
            raise self._decode_error(what, err) from None

    def _decode_error(self, what: str, err: Exception) -> UserError:
        return UserError(f"video {self.path} (codec {self.codec}): {what} cannot be decoded "
                         f"({getattr(err, 'strerror', None) or err}); the file is corrupt or truncated")

    @staticmethod
    def _rgb(frame: Any) -> np.ndarray:
        return frame.to_ndarray(format="rgb24")

    # -- by ordinal -----------------------------------------------------------------------------------------------

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at the given non-decreasing frame ordinals (K,) -> (K, H, W, 3) RGB uint8."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            raise UserError(f"video {self.path}: no frames requested")
        if np.any(np.diff(indices) < 0) or indices[0] < 0:
            raise UserError(f"video {self.path}: frame indices must be non-negative and non-decreasing")
        if self._next is None or indices[0] < self._next or self._window:
            self._open()
        frames: list[np.ndarray] = []
        last: np.ndarray | None = None
        last_index = -1
        for index in indices:
            if index == last_index and last is not None:
                frames.append(last)
                continue
            frame = None
            while self._next <= index:
                frame = self._decode_one(f"frame {self._next}")
                if frame is None:
                    raise self._short(int(index))
                self._next += 1
            last, last_index = self._rgb(frame), int(index)
            frames.append(last)
        return np.stack(frames)

    def _short(self, index: int) -> UserError:
        return UserError(f"video {self.path}: frame {index} cannot be decoded (the file holds {self._next} readable "
                         f"frames; it is shorter than its timestamps say, or corrupt)")

    # -- by presentation time -------------------------------------------------------------------------------------

    def read_times(self, times: Sequence[float] | np.ndarray, tolerance: float | None = None) -> np.ndarray:
        """Frames nearest to the given non-decreasing presentation times (K,) in seconds -> (K, H, W, 3) RGB uint8.

        ``tolerance`` (s): how far the nearest frame's pts may lie from the time asked for; default half a frame
        period (1 ms when the file states no frame rate).
        """
        times = np.asarray(times, dtype=np.float64)
        if times.size == 0:
            raise UserError(f"video {self.path}: no frames requested")
        if not np.all(np.isfinite(times)) or np.any(np.diff(times) < 0):
            raise UserError(f"video {self.path}: frame times must be finite and non-decreasing")
        tol = float(tolerance) if tolerance is not None else (0.5 / self.fps if self.fps > 0 else 1e-3)
        frames = []
        for t in times:
            if self._next is not None and self._next > 0 and not self._window:
                self._open()  # the ordinal reader moved on: start from a known place
            newest = self._window[-1][0] if self._window else None
            if newest is None or t < self._window[0][0] - tol or t > newest + SEEK_AHEAD_S:
                self._seek(float(t) - tol)
            while not self._ended and (not self._window or self._window[-1][0] < t):
                self._pull(t)
            best = min(range(len(self._window)), key=lambda i: abs(self._window[i][0] - t), default=None)
            if best is None or abs(self._window[best][0] - t) > tol:
                raise self._no_frame_at(float(t), tol)
            del self._window[:best]  # later times cannot pick an earlier frame
            time, frame = self._window[0]
            if not isinstance(frame, np.ndarray):  # converted only when taken: skipped frames cost no RGB copy
                frame = self._rgb(frame)
                self._window[0] = (time, frame)
            frames.append(frame)
        return np.stack(frames)

    def _seek(self, t: float) -> None:
        offset = max(0, math.floor(t / float(self._stream.time_base))) if self._stream.time_base else 0
        try:
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        except av.FFmpegError:
            self._open()  # a stream that cannot seek: decode from the start
        self._decoded = self._container.decode(self._stream)
        self._next, self._window, self._ended = None, [], False

    def _pull(self, t: float) -> None:
        frame = self._decode_one(f"the frame at {t:.6g} s")
        if frame is None:
            self._ended = True
            return
        if frame.pts is None:
            raise UserError(f"video {self.path} (codec {self.codec}): frames carry no timestamps (pts), so they "
                            "cannot be found by time")
        time = float(frame.pts * self._stream.time_base)
        self._window.append((time, frame))
        if len(self._window) > 2 and self._window[1][0] <= t:
            del self._window[0]  # keep only the frames around t

    def _no_frame_at(self, t: float, tol: float) -> UserError:
        index = round(t * self.fps) if self.fps > 0 else "at"
        near = (f"the nearest decoded frame is at {min(self._window, key=lambda w: abs(w[0] - t))[0]:.6g} s"
                if self._window else "no frame was decoded there")
        return UserError(f"video {self.path}: frame {index} cannot be decoded at t={t:.6g} s: no frame within "
                         f"{tol:.3g} s ({near}; the file holds {self.n_frames} frames at {self.fps:g} fps; it is "
                         "shorter than its timestamps say, or corrupt)")

    # -- lifetime -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_frames(path: str | Path, indices: Sequence[int] | np.ndarray | None = None,
                timestamps: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Frames of ``path`` (K, H, W, 3) RGB uint8: at frame ordinals ``indices``, at presentation ``timestamps`` (s),
    or every frame when neither is given."""
    if indices is not None and timestamps is not None:
        raise ValueError("read_frames takes indices or timestamps, not both")
    with VideoReader(path) as reader:
        if timestamps is not None:
            return reader.read_times(timestamps)
        return reader.read(np.arange(reader.n_frames) if indices is None else indices)


def _h264_encoder() -> str:
    for name in H264_ENCODERS:
        try:
            av.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):  # av.codec.codec.UnknownCodecError is a ValueError
            continue
    raise UserError(f"this FFmpeg build (PyAV {av.__version__}) has no H.264 encoder (tried {', '.join(H264_ENCODERS)})"
                    "; install the av version pinned in pyproject.toml")


def _even(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) padded by repeating its last row / column to even sides (yuv420p needs them)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(frames: Sequence[np.ndarray] | np.ndarray, path: str | Path, fps: float = 10.0) -> Path | None:
    """Write RGB(A) uint8 frames (H, W, 3|4) as an H.264 yuv420p MP4; returns the path, or None when there are none.

    The file appears only when complete (written next to it as ``<name>.tmp.mp4``, then renamed).
    """
    if len(frames) == 0:
        return None
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"write_mp4: fps must be a positive number, got {fps!r}")
    first = np.asarray(frames[0])
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[-1] not in (3, 4):
        raise ValueError(f"write_mp4: frames must be uint8 (H, W, 3|4), got {first.dtype}{list(first.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    h, w = first.shape[:2]
    container = av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"})
    try:
        stream = container.add_stream(_h264_encoder(), rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        for i, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.shape[:2] != (h, w) or frame.dtype != np.uint8:
                raise ValueError(f"write_mp4: frame {i} is {frame.dtype}{list(frame.shape)}, the first frame "
                                 f"uint8{list(first.shape)}")
            image = av.VideoFrame.from_ndarray(_even(np.ascontiguousarray(frame[..., :3])), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode(None))
        container.close()
    except BaseException:
        try:
            container.close()
        except av.FFmpegError:
            pass  # the error being raised says more
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path
