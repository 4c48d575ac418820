"""Replay sampling throughput on pick-and-place data: batches/s in RAM and lazily read, memory per transition.

Usage::

    .venv/bin/python bench/sampling_speed.py --store /tmp/pp/quick.zarr                 # existing store
    .venv/bin/python bench/sampling_speed.py --store /tmp/pp/new.zarr --episodes 30     # generated if missing

The store is a real pick_place dataset (``calql_robot.envs.pick_place_scripted.generate_dataset``: scripted
episodes rendered by the env, 64x64 agent view + robot_state, written by DatasetWriter with zstd image chunks of
64 frames). If ``--store`` does not exist it is generated first (``--episodes``, ``--image-size``, seed 0).

Cases (each builds ``ReplayBuffer.from_dataset`` and samples through ``MixedSampler`` at ``--batch``):
- ``ram``: ``ZarrDataset(lazy=False)``: frames in RAM, each kept once in uint8, next observations by index;
- ``ram+online``: the same offline buffer mixed 50/50 with an online buffer filled by ``add_episode`` (the
  fine-tuning case);
- ``lazy cache X%``: ``ZarrDataset(lazy=True, cache_bytes=X% of the uncompressed size)``: frames decoded from the
  store chunk by chunk through the LRU chunk cache (a cache smaller than the data stands for a dataset larger
  than RAM). Shows the cache hit rate over the timed batches.
Each case times ``--seconds`` of ``sampler.sample(batch)`` after ``--warmup`` batches (which fill the cache);
"MB/s" is the bytes of the batches returned; "cpu" the process's CPU time over wall time and "batches/cpu-s"
batches per CPU second (sampling is single-threaded, so that estimates the rate on an idle core).
Also printed: the buffer's ``bytes_per_transition()`` (what it holds in RAM: for a lazy buffer only the
transition arrays, the frames stay on disk) and the store's size on disk and uncompressed in RAM.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from calql_robot.datasets.format import ZarrDataset
from calql_robot.training.replay import MixedSampler, ReplayBuffer, RewardTransform

TRANSFORM = RewardTransform(gamma=0.99, scale=1.0, bias=0.0, sparse=True, failure_reward=0.0)  # pick_place.yaml


def batch_bytes(batch: dict[str, Any]) -> int:
    """Bytes of the numpy arrays in a sampled batch (obs / next_obs dicts included)."""
    total = 0
    for value in batch.values():
        total += sum(v.nbytes for v in value.values()) if isinstance(value, dict) else value.nbytes
    return total


def time_sampler(sampler: MixedSampler, batch: int, seconds: float, warmup: int) -> tuple[float, float, float]:
    """(batches/s, MB/s, CPU share) of sampler.sample(batch) over >= ``seconds`` after ``warmup`` batches."""
    for _ in range(warmup):
        sampler.sample(batch)
    count, nbytes = 0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or count < 3:
        nbytes += batch_bytes(sampler.sample(batch))
        count += 1
    wall = time.perf_counter() - start
    return count / wall, nbytes / wall / 1e6, (time.process_time() - cpu_start) / wall


def online_buffer(dataset: ZarrDataset, episodes: int) -> ReplayBuffer:
    """A ReplayBuffer filled episode by episode (as fine-tuning does) with the dataset's first ``episodes``."""
    buf = ReplayBuffer(dataset.obs_spec, dataset.action_dim, TRANSFORM)
    for i in range(min(episodes, dataset.n_episodes)):
        ep = dataset.episode(i)
        buf.add_episode(ep["obs"], ep["action"], ep["reward"], ep["terminal"])
    return buf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="pick_place zarr store (generated if it does not exist)")
    parser.add_argument("--episodes", type=int, default=30, help="episodes to generate when --store is missing")
    parser.add_argument("--image-size", type=int, default=64, help="image size when generating")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches per case")
    parser.add_argument("--cache-fractions", type=float, nargs="+", default=[0.1, 1.0],
                        help="lazy chunk cache sizes as fractions of the uncompressed dataset")
    args = parser.parse_args()
    store = Path(args.store)
    if not store.exists():
        from calql_robot.envs.pick_place_scripted import generate_dataset

        print(f"generating {args.episodes} episodes ({args.image_size}x{args.image_size}) into {store}")
        generate_dataset(store, episodes=args.episodes, seed=0, image_size=args.image_size)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    eager = ZarrDataset(store)
    ram_bytes, disk_bytes = eager.size_in_ram_bytes(), eager.size_on_disk_bytes()
    print(f"store {store}: {eager.n_episodes} episodes, {eager.n_transitions} transitions, obs "
          f"{ {k: v['shape'] for k, v in eager.obs_spec.items()} }; {disk_bytes / 1e6:.1f} MB on disk, "
          f"{ram_bytes / 1e6:.1f} MB uncompressed ({ram_bytes / disk_bytes:.1f}x)")
    print(f"\n{'case':<18} {'batches/s':>9} {'MB/s':>7} {'cpu':>5} {'batches/cpu-s':>13} "
          f"{'bytes/transition in RAM':>24} {'cache hits':>10}")

    def report(name: str, sampler: MixedSampler, bytes_per_transition: float, hits: str = "") -> None:
        rate, mbps, cpu = time_sampler(sampler, args.batch, args.seconds, args.warmup)
        print(f"{name:<18} {rate:>9.1f} {mbps:>7.0f} {cpu:>5.0%} {rate / cpu:>13.1f} {bytes_per_transition:>24,.0f} "
              f"{hits:>10}")

    offline = ReplayBuffer.from_dataset(eager, TRANSFORM)
    report("ram", MixedSampler(offline, None, 0.5, seed=0), offline.bytes_per_transition())
    online = online_buffer(eager, eager.n_episodes // 2)
    report("ram+online 50/50", MixedSampler(offline, online, 0.5, seed=0), online.bytes_per_transition())
    for fraction in args.cache_fractions:
        lazy = ZarrDataset(store, lazy=True, cache_bytes=int(fraction * ram_bytes))
        buf = ReplayBuffer.from_dataset(lazy, TRANSFORM)
        sampler = MixedSampler(buf, None, 0.5, seed=0)
        for _ in range(args.warmup):
            sampler.sample(args.batch)
        hits0, misses0 = lazy.cache.hits, lazy.cache.misses
        rate, mbps, cpu = time_sampler(sampler, args.batch, args.seconds, 0)
        hits, misses = lazy.cache.hits - hits0, lazy.cache.misses - misses0
        hit_rate = f"{hits / max(hits + misses, 1):.0%}"
        name = f"lazy cache {fraction:.0%}"
        print(f"{name:<18} {rate:>9.1f} {mbps:>7.0f} {cpu:>5.0%} {rate / cpu:>13.1f} "
              f"{buf.bytes_per_transition():>24,.0f} {hit_rate:>10}")
    frame_bytes = sum(int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize for s in eager.obs_spec.values())
    print(f"\none observation: {frame_bytes:,} bytes; a transition storing obs and next_obs separately would hold "
          f"{2 * frame_bytes:,} bytes of observations")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
