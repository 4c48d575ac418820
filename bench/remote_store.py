"""Training from a dataset store in object storage (S3) versus the same store on local disk.

Usage::

    .venv/bin/python bench/remote_store.py [--updates 300] [--seconds 5] [--episodes 12]

A local S3-compatible server (moto's server mode, ``moto[server]``) is started on 127.0.0.1 and the stores are
uploaded to it with s3fs; "S3" below is therefore a loopback server with no network latency: the numbers show the
cost of the client and request path, not of a WAN link.

- ``pretrain``: ``calql_robot.pretrain`` on a PointMaze store (state, 12 episodes) with ``data.lazy=true``,
  ``threads=1``, ``--updates`` updates, from the local path and from ``s3://``; prints the run's ``updates_per_s``
  (train.csv, the last log row) and the wall time of the whole call (open + updates).
- ``sampling``: a 64x64 RGB + state store (synthetic gradient + noise images, ``--episodes`` x 200 steps, zstd
  chunks of 64 frames), ``ZarrDataset(lazy=True)`` with a chunk cache of 25% and of 100% of the uncompressed frames,
  ``MixedSampler`` batches of 256 for ``--seconds``: batches/s, cache hit rate, and what was fetched from S3
  (``ZarrDataset.transfer()``: requests and bytes, at open and while sampling).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import calql_robot
from calql_robot.datasets.format import DatasetWriter, ZarrDataset
from calql_robot.training.replay import MixedSampler, ReplayBuffer, RewardTransform

KEYS = {"key": "bench", "secret": "bench"}
TRANSFORM = RewardTransform(gamma=0.99, scale=1.0, bias=0.0, sparse=True, failure_reward=0.0)


def start_server() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def image_store(path: Path, episodes: int, steps: int = 200) -> None:
    """Moving-gradient 64x64x3 frames with pixel noise (they compress about like camera images) + a 4-d state."""
    spec = {"state": {"shape": [4], "dtype": "float32", "kind": "low_dim"},
            "cam_rgb": {"shape": [64, 64, 3], "dtype": "uint8", "kind": "rgb"}}
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    with DatasetWriter.create(path, spec, -np.ones(2), np.ones(2), task="bench", control_freq=10.0,
                              reward_success=1.0, reward_failure=0.0, source={"kind": "bench"}) as writer:
        for e in range(episodes):
            t = np.arange(steps + 1)[:, None, None]
            base = (xx[None] * 2 + yy[None] + 3 * t + 17 * e) % 256
            frames = np.stack([base, (base + 85) % 256, (255 - base)], axis=-1)
            frames = (frames + rng.integers(0, 4, frames.shape)).clip(0, 255).astype(np.uint8)  # sensor noise
            rewards = np.zeros(steps, np.float32)
            rewards[-1] = float(e % 2 == 0)
            writer.add_episode(observations={"state": rng.normal(size=(steps + 1, 4)), "cam_rgb": frames},
                               actions=rng.uniform(-1, 1, (steps, 2)).astype(np.float32), rewards=rewards,
                               terminals=np.eye(steps, dtype=bool)[-1] & (e % 2 == 0),
                               truncations=np.eye(steps, dtype=bool)[-1] & (e % 2 == 1))


def sample_case(where: str, options: dict[str, Any] | None, seconds: float, cache_fraction: float) -> dict[str, Any]:
    probe = ZarrDataset(where, storage_options=options, lazy=True)
    frames = probe.arrays()["obs"]["cam_rgb"].nbytes
    t0 = time.perf_counter()
    ds = ZarrDataset(where, lazy=True, cache_bytes=int(frames * cache_fraction) + 2**20, storage_options=options)
    buffer = ReplayBuffer.from_dataset(ds, TRANSFORM)
    open_s = time.perf_counter() - t0
    at_open = ds.transfer() or {"requests": 0, "bytes_read": 0}
    sampler = MixedSampler(buffer, None, 1.0, seed=0)
    for _ in range(5):
        sampler.sample(256)
    hits, misses = ds.cache.hits, ds.cache.misses
    before = ds.transfer() or {"requests": 0, "bytes_read": 0}
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sampler.sample(256)
        n += 1
    wall = time.perf_counter() - t0
    after = ds.transfer() or {"requests": 0, "bytes_read": 0}
    looked = ds.cache.hits - hits + ds.cache.misses - misses
    return {"open_s": open_s, "batches_per_s": n / wall, "hit_rate": (ds.cache.hits - hits) / max(looked, 1),
            "open_requests": at_open["requests"], "open_bytes": at_open["bytes_read"],
            "requests_per_batch": (after["requests"] - before["requests"]) / n,
            "bytes_per_batch": (after["bytes_read"] - before["bytes_read"]) / n, "frames_bytes": frames}


def pretrain_case(dataset: str, overrides: list[str], updates: int, run_dir: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    result = calql_robot.pretrain(["task=pointmaze_umaze", "task.horizon=100", "device=cpu", "threads=1",
                                   "progress=false", "data.lazy=true", "eval.every=0", "eval.video=false",
                                   f"pretrain.steps={updates}", f"pretrain.log_every={updates}",
                                   f"dataset={dataset}", f"run_dir={run_dir}", *overrides])
    return {"updates_per_s": float(result.csv()[-1]["updates_per_s"]), "wall_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--episodes", type=int, default=12)
    args = parser.parse_args()

    import s3fs

    from calql_robot.envs.pointmaze import generate_dataset

    server, endpoint = start_server()
    options = {"endpoint_url": endpoint, **KEYS}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("bench")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(str(root / "pm.zarr"), episodes=12, seed=0, horizon=100)
        image_store(root / "img.zarr", args.episodes)
        for name in ("pm.zarr", "img.zarr"):
            fs.put(str(root / name), f"bench/{name}", recursive=True)
        opts = "data.storage_options={" + ",".join(f"{k}:'{v}'" for k, v in options.items()) + "}"
        print(f"pretrain (PointMaze state, lazy, threads=1, {args.updates} updates):")
        for label, where, extra in (("local", str(root / "pm.zarr"), []), ("s3", "s3://bench/pm.zarr", [opts])):
            r = pretrain_case(where, extra, args.updates, root / f"run_{label}")
            print(f"  {label:5s}  {r['updates_per_s']:7.1f} updates/s   whole call {r['wall_s']:5.1f} s")
        size = ZarrDataset(root / "img.zarr").size_on_disk_bytes()
        print(f"sampling (64x64 RGB + state, {args.episodes} x 200 steps, {size / 2**20:.1f} MiB on disk; batch 256):")
        for (label, where, o), fraction in itertools.product(
                (("local", str(root / "img.zarr"), None), ("s3", "s3://bench/img.zarr", options)), (0.25, 1.0)):
            r = sample_case(where, o, args.seconds, fraction)
            print(f"  {label:5s} cache {fraction:4.0%}  open {r['open_s']:5.2f} s ({r['open_requests']} requests, "
                  f"{r['open_bytes'] / 2**10:.0f} KiB)   {r['batches_per_s']:6.1f} batches/s   cache hits "
                  f"{r['hit_rate']:.2f}   fetched per batch: {r['requests_per_batch']:.1f} requests, "
                  f"{r['bytes_per_batch'] / 2**10:.0f} KiB")
    server.stop()


if __name__ == "__main__":
    main()
