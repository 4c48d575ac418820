"""inspect_dataset app, run as users run it: a subprocess on a store made by the writer, and on broken input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from calql_robot.datasets.format import DatasetWriter

REPO = Path(__file__).resolve().parent.parent
SPEC = {
    "eef": {"shape": [3], "dtype": "float32", "kind": "low_dim"},
    "front_rgb": {"shape": [16, 16, 3], "dtype": "uint8", "kind": "rgb"},
}


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calql_robot.inspect_dataset", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def make_store(path: Path) -> None:
    """Three episodes of 4, 10 and 7 steps; episodes 0 and 2 reach the success reward 1 (raw returns 1, 0, 2.5)."""
    rng = np.random.default_rng(0)
    rewards = [np.r_[0, 0, 0, 1.0], np.zeros(10), np.r_[0.5, 0, 0, 0, 0, 1, 1.0]]
    with DatasetWriter.create(path, SPEC, [-1, -2], [1, 2], task="pick_place", control_freq=20.0,
                              reward_success=1.0, reward_failure=0.0, source={"kind": "test"}) as writer:
        for rew in rewards:
            n = len(rew)
            writer.add_episode(
                observations={"eef": rng.normal(size=(n + 1, 3)),
                              "front_rgb": rng.integers(0, 256, (n + 1, 16, 16, 3), dtype=np.uint8)},
                actions=rng.uniform(-1, 1, (n, 2)), rewards=rew,
                terminals=np.r_[np.zeros(n - 1, bool), rew[-1] == 1], truncations=np.r_[np.zeros(n - 1, bool), False],
            )


def test_prints_summary(tmp_path: Path) -> None:
    store = tmp_path / "demo.zarr"
    make_store(store)
    result = run_app(f"dataset={store}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"episodes:\s+3\n", out) and re.search(r"transitions:\s+21\n", out)
    assert "success rate:   0.667 (2 of 3" in out
    assert "episode length: min 4 / mean 7.0 / max 10" in out
    assert "mean 1.167 / min 0 / max 2.5" in out
    assert re.search(r"obs/eef\s+\(3,\)\s+float32\s+low_dim", out)
    assert re.search(r"obs/front_rgb\s+\(16, 16, 3\)\s+uint8\s+rgb", out)
    assert re.search(r"action\s+\(2,\)\s+float32", out)
    assert "low [-1, -2]" in out and "high [1, 2]" in out
    assert "pick_place" in out and '"kind": "test"' in out
    assert "size on disk:" in out and "size in RAM:" in out


def test_missing_dataset_argument_is_a_short_error() -> None:
    result = run_app()
    assert result.returncode == 2
    assert "error: dataset=PATH is required" in result.stderr and "Traceback" not in result.stderr


def test_broken_store_names_the_array(tmp_path: Path) -> None:
    store = tmp_path / "demo.zarr"
    make_store(store)
    zarr.open_group(str(store), mode="r+")["data/reward"][3] = np.nan
    result = run_app(f"dataset={store}")
    assert result.returncode == 2
    assert "error:" in result.stderr and "data/reward" in result.stderr and "Traceback" not in result.stderr
    result = run_app(f"dataset={tmp_path / 'absent.zarr'}")
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


def test_verify_checks_every_chunk_digest(tmp_path: Path) -> None:
    store = tmp_path / "demo.zarr"
    make_store(store)
    result = run_app(f"dataset={store}", "verify=true")
    assert result.returncode == 0, result.stderr
    assert "integrity:      verified 9 chunks (blake2b-128)" in result.stdout
    path = store / "data/obs/eef/c/0/0"  # a flipped bit that Blosc decodes without noticing
    data = bytearray(path.read_bytes())
    for position in range(len(data) - 1, 16, -1):
        data[position] ^= 1
        path.write_bytes(bytes(data))
        result = run_app(f"dataset={store}", "verify=true")
        if "digest mismatch" in result.stderr or "cannot be decoded" in result.stderr:
            break
        data[position] ^= 1
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "chunk file data/obs/eef/c/0/0 of array 'data/obs/eef'" in result.stderr


def test_lost_chunk_and_absurd_shape_are_short_errors(tmp_path: Path) -> None:
    """Repros 6 and 7 as users meet them: a deleted chunk read as zeros, a shape of 1e9 hung for minutes."""
    store = tmp_path / "demo.zarr"
    make_store(store)
    (store / "data/reward/c/0").unlink()
    result = run_app(f"dataset={store}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "chunk file data/reward/c/0 of array 'data/reward' is missing" in result.stderr
    make_store(tmp_path / "big.zarr")
    meta_path = tmp_path / "big.zarr/meta/episode_ends/zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [10**9]
    meta_path.write_text(json.dumps(meta))
    started = time.perf_counter()
    result = run_app(f"dataset={tmp_path / 'big.zarr'}", "verify=true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "array 'meta/episode_ends' declares 1000000000 rows" in result.stderr
    assert time.perf_counter() - started < 60  # was > 120 s


def test_summary_of_a_store_written_before_digests(tmp_path: Path) -> None:
    from calql_robot.inspect_dataset import format_summary, summarize

    store = tmp_path / "old.zarr"
    make_store(store)
    for meta_path in store.rglob("zarr.json"):
        meta = json.loads(meta_path.read_text())
        meta.get("attributes", {}).pop("integrity", None)
        meta_path.write_text(json.dumps(meta))
    assert "integrity:      chunk files present (verify=true" in format_summary(summarize(store))
    text = format_summary(summarize(store, verify=True))
    assert "verified 0 chunks" in text and "9 chunks without a digest decoded only" in text
