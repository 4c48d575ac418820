"""Frames for the converters: video files through PyAV (:mod:`calql_robot.datasets.video_io`), image files and
encoded image bytes through OpenCV.

:class:`VideoReader` reads AV1 (LeRobot v3.0's default), H.264, HEVC, VP9 and MPEG-4 Part 2 frame-accurately: by
presentation time (LeRobot) or by frame ordinal (lab logs); see :mod:`calql_robot.datasets.video_io`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from calql_robot.datasets.video_io import VideoReader
from calql_robot.errors import UserError

__all__ = ["VideoReader", "decode_image_bytes", "read_image_files"]


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
