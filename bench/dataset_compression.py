"""Measure image-chunk codecs for the zarr dataset format: write speed, read speed, compression ratio.

    MUJOCO_GL=egl .venv/bin/python bench/dataset_compression.py [--episodes 4] [--repeats 3]

Frames are real renders: 64x64x3 agentview images of scripted episodes of the pick_place task (robosuite/MuJoCo).
Each codec writes the same frames to a (T, 64, 64, 3) uint8 array chunked (64, 64, 64, 3), then reads it back
sequentially (whole array) and randomly (256 random rows, a fresh array view per read so nothing is cached).
Times are CPU seconds of this process (time.process_time, all threads), not wall time, so that other programs
sharing the machine disturb them less; speeds are MB of raw frames per CPU second. Prints a markdown table
(median of --repeats runs); docs/dataset_format.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

CODECS = {
    "blosc lz4 noshuffle": lambda: zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle", typesize=1),
    "blosc lz4 bitshuffle": lambda: zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=1),
    "blosc zstd-3 noshuffle": lambda: zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle", typesize=1),
    "blosc zstd-3 bitshuffle": lambda: zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle",
                                                              typesize=1),
    "blosc zstd-1 noshuffle": lambda: zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle", typesize=1),
    "blosc zstd-3 noshuffle 256 KiB blocks": lambda: zarr.codecs.BloscCodec(
        cname="zstd", clevel=3, shuffle="noshuffle", typesize=1, blocksize=256 * 1024
    ),
    "zstd-3 (no blosc)": lambda: zarr.codecs.ZstdCodec(level=3),
}


def render_frames(episodes: int) -> np.ndarray:
    """(T, 64, 64, 3) uint8 agentview frames from scripted pick_place episodes."""
    from calql_robot.envs.pick_place import make_pick_place_env
    from calql_robot.envs.pick_place_scripted import MODES, run_episode

    env = make_pick_place_env(image_size=64, seed=0)
    image_key = next(k for k, v in env.observation_space.spaces.items() if len(v.shape) == 3)
    frames = []
    for i in range(episodes):
        ep = run_episode(env, MODES[i % len(MODES)], seed=i)
        frames.append(ep["observations"][image_key])
    env.close()
    return np.concatenate(frames)


def measure(
    frames: np.ndarray, make_codec, workdir: Path, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Returns (write MB/s, sequential read MB/s, random-256 read ms, compression ratio) for one run."""
    path = workdir / "bench.zarr"
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w")
    arr = group.create_array("img", shape=frames.shape, dtype="uint8", chunks=(64, *frames.shape[1:]),
                             compressors=make_codec(), fill_value=0)
    start = time.process_time()
    arr[:] = frames
    write_s = time.process_time() - start
    disk = sum(f.stat().st_size for f in (path / "img").rglob("*") if f.is_file() and f.name != "zarr.json")
    start = time.process_time()
    back = zarr.open_group(str(path), mode="r")["img"][:]
    read_s = time.process_time() - start
    assert np.array_equal(back, frames)
    idx = np.sort(rng.integers(0, len(frames), 256))
    start = time.process_time()
    zarr.open_group(str(path), mode="r")["img"].get_orthogonal_selection((idx,))
    random_s = time.process_time() - start
    mb = frames.nbytes / 1e6
    return mb / write_s, mb / read_s, random_s * 1e3, frames.nbytes / disk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    frames = render_frames(args.episodes)
    print(f"{len(frames)} frames {frames.shape[1:]} uint8 = {frames.nbytes / 1e6:.1f} MB raw")
    rng = np.random.default_rng(0)
    print("| codec | write MB/s | read MB/s (sequential) | 256 random rows, CPU ms | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make_codec in CODECS.items():
            runs = np.array([measure(frames, make_codec, Path(tmp), rng) for _ in range(args.repeats)])
            w, r, rand, ratio = np.median(runs, axis=0)
            print(f"| {name} | {w:.0f} | {r:.0f} | {rand:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
