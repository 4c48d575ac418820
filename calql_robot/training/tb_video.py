"""Evaluation videos in TensorBoard, without moviepy.

``SummaryWriter.add_video`` needs moviepy to make the animated GIF that TensorBoard shows (in its Images tab, under
the video's tag). This module makes the same summary itself: the GIF is encoded with Pillow (already installed with
matplotlib) and written as an image summary holding the GIF bytes, which is all ``add_video`` writes.

Long or large videos are thinned to keep event files small: at most :data:`MAX_FRAMES` frames (every k-th frame,
played k times slower per frame so the clip keeps its real duration) and :data:`MAX_SIDE` pixels on the longer side.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary

MAX_FRAMES = 300
MAX_SIDE = 256


def gif_bytes(frames: Sequence[np.ndarray] | np.ndarray, fps: float) -> tuple[bytes, int, int]:
    """An animated GIF (looping) of RGB uint8 frames (K, H, W, 3) -> (bytes, height, width) after thinning."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.dtype != np.uint8:
        raise ValueError(f"gif_bytes: frames must be uint8 (K, H, W, 3), got {frames.dtype}{list(frames.shape)}")
    step = max(1, math.ceil(frames.shape[0] / MAX_FRAMES))
    frames = frames[::step, ..., :3]
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    h, w = frames.shape[1:3]
    scale = min(1.0, MAX_SIDE / max(h, w))
    if scale < 1.0:
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        images = [im.resize((w, h), Image.Resampling.BILINEAR) for im in images]
    buffer = io.BytesIO()
    duration_ms = max(20, round(1000.0 * step / float(fps)))  # GIF delays are in 10 ms units; browsers clamp < 20
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return buffer.getvalue(), h, w


def add_video(writer: Any, tag: str, frames: Sequence[np.ndarray] | np.ndarray, step: int, fps: float) -> None:
    """Add ``frames`` (K, H, W, 3) uint8 to TensorBoard ``writer`` (a ``SummaryWriter``) as an animated image."""
    data, h, w = gif_bytes(frames, fps)
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=data)
    # the file writer add_video itself writes through (SummaryWriter has no public call for a prepared summary)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def add_video_file(writer: Any, tag: str, path: str | Path, step: int) -> None:
    """Add an MP4 written by :func:`calql_robot.datasets.video_io.write_mp4` to TensorBoard at its own frame rate."""
    from calql_robot.datasets.video_io import VideoReader

    with VideoReader(path) as reader:
        frames = reader.read(np.arange(reader.n_frames))
        fps = reader.fps or 10.0
    add_video(writer, tag, frames, step, fps)
