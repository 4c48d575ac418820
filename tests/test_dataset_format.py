"""Zarr dataset format v1: writer/reader round trip, final-obs rule, lazy reading, commit rule and crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import zarr

from calql_robot.datasets.format import (
    FORMAT_NAME,
    DatasetWriter,
    ZarrDataset,
    obs_spec_from_space,
    staged_store,
)
from calql_robot.errors import UserError

SPEC = {
    "state": {"shape": [4], "dtype": "float32", "kind": "low_dim"},
    "cam_rgb": {"shape": [8, 8, 3], "dtype": "uint8", "kind": "rgb"},
}
ACTION_DIM = 2


def make_episode(rng: np.random.Generator, n_steps: int, success: bool) -> dict:
    """One episode with N + 1 observations; the reward is 1 at the last step if ``success``."""
    rewards = np.zeros(n_steps, dtype=np.float32)
    rewards[-1] = 1.0 if success else 0.0
    terminals = np.zeros(n_steps, dtype=bool)
    terminals[-1] = success
    truncations = np.zeros(n_steps, dtype=bool)
    truncations[-1] = not success
    return {
        "observations": {
            "state": rng.normal(size=(n_steps + 1, 4)),  # float64 on purpose: the writer casts to float32
            "cam_rgb": rng.integers(0, 256, size=(n_steps + 1, 8, 8, 3), dtype=np.uint8),
        },
        "actions": rng.uniform(-1, 1, size=(n_steps, ACTION_DIM)).astype(np.float32),
        "rewards": rewards,
        "terminals": terminals,
        "truncations": truncations,
    }


def create_writer(path: Path, **kwargs) -> DatasetWriter:
    return DatasetWriter.create(
        path, SPEC, -np.ones(ACTION_DIM), np.ones(ACTION_DIM), task="unit_test", control_freq=20.0,
        reward_success=1.0, reward_failure=0.0, source={"kind": "test", "seed": 0}, **kwargs,
    )


def write_store(path: Path, lengths: list[int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    episodes = [make_episode(rng, n, success=i % 2 == 0) for i, n in enumerate(lengths)]
    with create_writer(path) as writer:
        for ep in episodes:
            writer.add_episode(**ep)
    return episodes


def test_round_trip_episodes_attrs_and_final_obs(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    lengths = [5, 1, 70, 3]  # 70 crosses the 64-frame image chunk
    episodes = write_store(path, lengths)
    ds = ZarrDataset(path)
    assert ds.n_episodes == 4 and ds.n_transitions == sum(lengths)
    np.testing.assert_array_equal(ds.episode_ends, np.cumsum(lengths))
    assert ds.episode_ends.dtype == np.int64
    assert ds.action_dim == ACTION_DIM and ds.obs_spec == SPEC
    np.testing.assert_array_equal(ds.action_low, [-1, -1])
    assert ds.attrs["format"] == FORMAT_NAME and ds.attrs["format_version"] == 1
    assert ds.attrs["task"] == "unit_test" and ds.attrs["source"] == {"kind": "test", "seed": 0}
    assert ds.attrs["reward"] == {"success": 1.0, "failure": 0.0} and ds.attrs["control_freq"] == 20.0
    for i, ep in enumerate(episodes):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["obs"]["cam_rgb"], ep["observations"]["cam_rgb"])
        np.testing.assert_array_equal(got["obs"]["state"], ep["observations"]["state"].astype(np.float32))
        assert got["obs"]["state"].dtype == np.float32
        for short, given in (("action", "actions"), ("reward", "rewards"), ("terminal", "terminals")):
            np.testing.assert_array_equal(got[short], ep[given])
    arrays = ds.arrays()
    assert arrays["obs"]["cam_rgb"].shape == (sum(lengths), 8, 8, 3)
    assert arrays["final_obs"]["state"].shape == (4, 4)
    # next-obs rule: obs[t+1] inside an episode, final_obs[e] at its last step
    ends = ds.episode_ends
    for e, ep in enumerate(episodes):
        start = 0 if e == 0 else ends[e - 1]
        for t in range(start, ends[e]):
            nxt = arrays["obs"]["cam_rgb"][t + 1] if t + 1 < ends[e] else arrays["final_obs"]["cam_rgb"][e]
            np.testing.assert_array_equal(nxt, ep["observations"]["cam_rgb"][t - start + 1])
    np.testing.assert_array_equal(ds.success_mask(), [True, False, True, False])
    np.testing.assert_allclose(ds.episode_returns(), [1, 0, 1, 0])
    assert ds.size_in_ram_bytes() > 0 and ds.size_on_disk_bytes() > 0


def test_chunking_and_compression_of_arrays(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    write_store(path, [10])
    group = zarr.open_group(str(path), mode="r")
    img = group["data/obs/cam_rgb"]
    assert img.chunks == (64, 8, 8, 3) and str(img.dtype) == "uint8"
    assert type(img.compressors[0]).__name__ == "ZstdCodec"
    assert type(group["data/action"].compressors[0]).__name__ == "BloscCodec"
    assert group["data/obs/state"].chunks[1:] == (4,)
    assert str(group["data/terminal"].dtype) == "bool"


def test_lazy_matches_eager_and_cache_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    write_store(path, [100, 90, 80])
    eager = ZarrDataset(path).arrays()
    chunk_bytes = 64 * 8 * 8 * 3
    lazy_ds = ZarrDataset(path, lazy=True, cache_bytes=2 * chunk_bytes)
    lazy = lazy_ds.arrays()
    rng = np.random.default_rng(1)
    for _ in range(5):
        idx = rng.integers(0, lazy_ds.n_transitions, size=37)
        got = lazy["obs"]["cam_rgb"][idx]
        assert isinstance(got, np.ndarray) and got.shape == (37, 8, 8, 3)
        np.testing.assert_array_equal(got, eager["obs"]["cam_rgb"][idx])
        np.testing.assert_array_equal(lazy["action"][idx], eager["action"][idx])
        assert lazy_ds.cache.bytes_used <= 2 * chunk_bytes
    assert len(lazy["obs"]["cam_rgb"]) == 270 and lazy["obs"]["cam_rgb"].shape == (270, 8, 8, 3)
    assert lazy["obs"]["cam_rgb"].dtype == np.uint8
    np.testing.assert_array_equal(lazy["obs"]["state"][-1], eager["obs"]["state"][-1])
    np.testing.assert_array_equal(lazy["final_obs"]["state"][np.array([2, 0])], eager["final_obs"]["state"][[2, 0]])
    np.testing.assert_array_equal(lazy["reward"][5:200:7], eager["reward"][5:200:7])
    with pytest.raises(IndexError):
        lazy["obs"]["state"][np.array([270])]
    # a repeated read of one chunk is served by the cache
    hits = lazy_ds.cache.hits
    lazy["obs"]["cam_rgb"][[0, 1]]
    lazy["obs"]["cam_rgb"][[2]]
    assert lazy_ds.cache.hits > hits
    ep = lazy_ds.episode(1)
    np.testing.assert_array_equal(ep["obs"]["cam_rgb"], ZarrDataset(path).episode(1)["obs"]["cam_rgb"])


def test_create_refuses_existing_path_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    write_store(path, [3])
    with pytest.raises(UserError, match="already exists"):
        create_writer(path)
    assert ZarrDataset(path).n_episodes == 1
    create_writer(path, overwrite=True).close()
    assert ZarrDataset(path).n_episodes == 0
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a zarr store"):
        create_writer(precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_reopen_appends(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    episodes = write_store(path, [4, 6])
    extra = make_episode(np.random.default_rng(5), 7, success=True)
    with DatasetWriter.open(path) as writer:
        assert writer.n_episodes == 2 and writer.n_transitions == 10
        assert writer.add_episode(**extra) == 2
    ds = ZarrDataset(path)
    np.testing.assert_array_equal(ds.episode_ends, [4, 10, 17])
    np.testing.assert_array_equal(ds.episode(2)["obs"]["cam_rgb"], extra["observations"]["cam_rgb"])
    np.testing.assert_array_equal(ds.episode(0)["action"], episodes[0]["actions"])


def _write_uncommitted_rows(path: Path, episode: dict, also_grow_episode_ends: bool) -> None:
    """Do what add_episode does up to (not including) the commit, as a crash would leave it."""
    group = zarr.open_group(str(path), mode="r+")
    n = len(episode["actions"])
    start = group["data/action"].shape[0]
    rows = {"data/action": episode["actions"], "data/reward": episode["rewards"],
            "data/terminal": episode["terminals"], "data/truncated": episode["truncations"]}
    for key, obs in episode["observations"].items():
        rows[f"data/obs/{key}"] = obs[:-1].astype(SPEC[key]["dtype"])
    for name, values in rows.items():
        group[name].resize((start + n, *group[name].shape[1:]))
        group[name][start:] = values
    for key, obs in episode["observations"].items():
        arr = group[f"data/final_obs/{key}"]
        arr.resize((arr.shape[0] + 1, *arr.shape[1:]))
        arr[-1:] = obs[-1:].astype(SPEC[key]["dtype"])
    if also_grow_episode_ends:  # metadata resized, value never written
        group["meta/episode_ends"].resize((group["meta/episode_ends"].shape[0] + 1,))


@pytest.mark.parametrize("also_grow_episode_ends", [False, True])
def test_interrupted_episode_is_ignored_then_truncated(tmp_path: Path, also_grow_episode_ends: bool) -> None:
    path = tmp_path / "d.zarr"
    episodes = write_store(path, [5, 6])
    rng = np.random.default_rng(9)
    _write_uncommitted_rows(path, make_episode(rng, 20, success=True), also_grow_episode_ends)
    assert zarr.open_group(str(path), mode="r")["data/action"].shape[0] == 31
    ds = ZarrDataset(path)
    assert ds.n_episodes == 2 and ds.n_transitions == 11
    assert ds.arrays()["action"].shape == (11, ACTION_DIM) and ds.arrays()["final_obs"]["state"].shape == (2, 4)
    np.testing.assert_array_equal(ds.episode(1)["obs"]["cam_rgb"], episodes[1]["observations"]["cam_rgb"])
    new = make_episode(rng, 3, success=False)
    with DatasetWriter.open(path) as writer:
        writer.add_episode(**new)
    group = zarr.open_group(str(path), mode="r")
    assert group["data/action"].shape[0] == 14 and group["meta/episode_ends"].shape[0] == 3
    ds = ZarrDataset(path)
    np.testing.assert_array_equal(ds.episode_ends, [5, 11, 14])
    np.testing.assert_array_equal(ds.episode(2)["obs"]["cam_rgb"], new["observations"]["cam_rgb"])
    np.testing.assert_array_equal(ds.episode(2)["reward"], new["rewards"])


CRASH_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from calql_robot.datasets.format import DatasetWriter
    writer = DatasetWriter.open(sys.argv[1])
    rng = np.random.default_rng(0)
    n = 0
    while True:
        steps = int(rng.integers(1, 90))
        writer.add_episode(
            observations={"state": rng.normal(size=(steps + 1, 4)),
                          "cam_rgb": np.full((steps + 1, 8, 8, 3), n % 251, dtype=np.uint8)},
            actions=np.zeros((steps, 2)), rewards=np.full(steps, n, dtype=np.float32),
            terminals=np.zeros(steps, bool), truncations=np.zeros(steps, bool))
        n += 1
        print(n, flush=True)
    """
)


def test_killed_writer_leaves_readable_store(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    create_writer(path).close()
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # let it commit a few episodes, then kill it somewhere inside a later one
            assert proc.stdout.readline(), "writer subprocess died early"
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ds = ZarrDataset(path)
    assert ds.n_episodes >= 3
    for e in range(ds.n_episodes):  # each committed episode is whole: its rewards and frames carry its index
        ep = ds.episode(e)
        assert (ep["reward"] == e).all() and (ep["obs"]["cam_rgb"] == e % 251).all()
    committed = ds.n_episodes
    with DatasetWriter.open(path) as writer:
        writer.add_episode(**make_episode(np.random.default_rng(2), 4, success=True))
    assert ZarrDataset(path).n_episodes == committed + 1


def test_staged_store_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    with staged_store(out, overwrite=False) as tmp:
        assert tmp.parent == out.parent and tmp != out
        write_store(tmp, [3])
    assert ZarrDataset(out).n_episodes == 1
    with pytest.raises(UserError, match="already exists"):
        with staged_store(out, overwrite=False):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with staged_store(out, overwrite=True) as tmp:
            write_store(tmp, [2, 2])
            raise RuntimeError("boom")
    assert ZarrDataset(out).n_episodes == 1  # old output untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # temp removed
    with staged_store(out, overwrite=True) as tmp:
        write_store(tmp, [2, 2])
    assert ZarrDataset(out).n_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_obs_spec_from_space() -> None:
    space = gym.spaces.Dict(
        {
            "agentview_rgb": gym.spaces.Box(0, 255, (64, 48, 3), np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (29,), np.float64),
            "mask": gym.spaces.Box(0, 1, (5, 5), np.uint8),
        }
    )
    spec = obs_spec_from_space(space)
    assert spec["agentview_rgb"] == {"shape": [64, 48, 3], "dtype": "uint8", "kind": "rgb"}
    assert spec["state"] == {"shape": [29], "dtype": "float32", "kind": "low_dim"}
    assert spec["mask"]["kind"] == "low_dim"
    with pytest.raises(UserError, match="Box"):
        obs_spec_from_space(gym.spaces.Dict({"d": gym.spaces.Discrete(3)}))


@pytest.mark.parametrize("lazy", [False, True])
def test_empty_store_reads_as_zero_episodes(tmp_path: Path, lazy: bool) -> None:
    path = tmp_path / "d.zarr"
    create_writer(path).close()
    ds = ZarrDataset(path, lazy=lazy)
    assert ds.n_episodes == 0 and ds.n_transitions == 0
    assert ds.success_mask().shape == (0,) and ds.episode_returns().shape == (0,)
    assert ds.arrays()["obs"]["cam_rgb"].shape == (0, 8, 8, 3) and len(ds.arrays()["action"]) == 0
    with pytest.raises(IndexError):
        ds.episode(0)


def test_chunk_cache_evicts_least_recently_used() -> None:
    from calql_robot.datasets.format import ChunkCache

    chunk = np.zeros(100, dtype=np.uint8)
    cache = ChunkCache(max_bytes=250)  # room for two chunks
    cache.put(("a", 0), chunk)
    cache.put(("a", 1), chunk)
    assert cache.get(("a", 0)) is not None  # 0 is now more recent than 1
    cache.put(("a", 2), chunk)
    assert cache.get(("a", 1)) is None and cache.get(("a", 0)) is not None and cache.get(("a", 2)) is not None
    assert cache.bytes_used == 200 and len(cache) == 2
    cache.put(("b", 0), np.zeros(300, dtype=np.uint8))  # larger than the budget: not kept, nothing evicted
    assert cache.get(("b", 0)) is None and len(cache) == 2


def test_reader_opens_while_a_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    create_writer(path).close()
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline(), "writer subprocess died early"
        seen = []
        for _ in range(15):
            ds = ZarrDataset(path, lazy=len(seen) % 2 == 1)
            last = ds.n_episodes - 1
            ep = ds.episode(last)
            assert (ep["reward"] == last).all() and (ep["obs"]["cam_rgb"] == last % 251).all()
            seen.append(ds.n_episodes)
        assert seen[-1] > seen[0]  # the store really grew while being read
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
