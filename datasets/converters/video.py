"""Frame-accurate video decoding with OpenCV for the converters (MP4 from LeRobot datasets and lab logs).

Seeking in compressed video is not frame-accurate with every codec, so :class:`VideoReader` never seeks: it reads
forward from its current position (grabbing and discarding frames it does not need) and re-opens the file only to go
back. Episodes stored one after another in one file (LeRobot v3.0) therefore cost one pass over the file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from calql_robot.errors import UserError


class VideoReader:
    """Sequential frame reader for one video file; frames come back RGB uint8 (H, W, 3)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"video {self.path} does not exist")
        self._cap: cv2.VideoCapture | None = None
        self._next = 0
        self._open()
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self.n_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))

    def _open(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise UserError(f"video {self.path} cannot be opened by OpenCV (corrupt file or unsupported codec)")
        self._next = 0

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at the given non-decreasing frame indices (K,) -> (K, H, W, 3) RGB uint8."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            raise UserError(f"video {self.path}: no frames requested")
        if np.any(np.diff(indices) < 0) or indices[0] < 0:
            raise UserError(f"video {self.path}: frame indices must be non-negative and non-decreasing")
        if indices[0] < self._next:
            self._open()
        frames: list[np.ndarray] = []
        last: np.ndarray | None = None
        last_index = -1
        for index in indices:
            if index == last_index and last is not None:
                frames.append(last)
                continue
            while self._next < index:
                if not self._cap.grab():
                    raise self._short(int(index))
                self._next += 1
            ok, bgr = self._cap.read()
            if not ok:
                raise self._short(int(index))
            self._next += 1
            last, last_index = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), int(index)
            frames.append(last)
        return np.stack(frames)

    def _short(self, index: int) -> UserError:
        return UserError(f"video {self.path}: frame {index} cannot be decoded (the file holds {self._next} readable "
                         f"frames; it is shorter than its timestamps say, or corrupt)")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_image_files(paths: list[Path]) -> np.ndarray:
    """Read image files (PNG/JPG) -> (K, H, W, 3) RGB uint8; every file must have the same size."""
    frames = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"image {path} cannot be read (missing, corrupt or not an image)")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise UserError(f"images {paths[0].parent}: frames have different sizes {sorted(shapes)}")
    return np.stack(frames)


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode one encoded image (PNG/JPG bytes) -> (H, W, 3) RGB uint8."""
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except (TypeError, ValueError, cv2.error):
        bgr = None
    if bgr is None:
        raise UserError(f"{where}: image bytes cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
