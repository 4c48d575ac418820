"""The collect app end to end: a real subprocess writing a real zarr store with the scripted pick-and-place data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calql_robot.app import REPO_ROOT
from calql_robot.datasets.format import ZarrDataset
from calql_robot.envs.pick_place_scripted import generate_dataset
from calql_robot.errors import UserError


def _collect(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calql_robot.collect", *overrides], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_collect_writes_a_valid_store(tmp_path: Path) -> None:
    output = tmp_path / "pp.zarr"
    result = _collect("task=pick_place", "episodes=3", f"output={output}", "seed=5", "task.env.image_size=24")
    assert result.returncode == 0, result.stderr
    assert str(output) in result.stdout and "3 episodes" in result.stdout

    ds = ZarrDataset(output)
    assert ds.n_episodes == 3 and ds.action_dim == 4
    assert ds.obs_spec["agentview_rgb"] == {"shape": [24, 24, 3], "dtype": "uint8", "kind": "rgb"}
    assert ds.obs_spec["robot_state"]["shape"] == [5]
    assert ds.attrs["task"] == "pick_place" and ds.attrs["control_freq"] == 10.0
    assert ds.attrs["source"]["kind"] == "scripted" and ds.attrs["source"]["seed"] == 5
    arrays = ds.arrays()
    assert (ds.episode_lengths <= 80).all() and ds.n_transitions == int(ds.episode_lengths.sum())
    assert np.abs(arrays["action"]).max() <= 1.0
    # an episode succeeded exactly when it terminated, and the reward is 1 only on that last step
    ends = ds.episode_ends - 1
    np.testing.assert_array_equal(ds.success_mask(), arrays["terminal"][ends])
    assert arrays["reward"].sum() == ds.success_mask().sum()
    assert not (arrays["terminal"] & arrays["truncated"]).any()
    assert (arrays["terminal"][ends] | arrays["truncated"][ends]).all()
    assert f"{int(ds.success_mask().sum())} successful" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pp.zarr"], "no staging leftovers"

    # same seed and options in process -> the very same data (seeded episodes, deterministic physics and rendering)
    direct = ZarrDataset(generate_dataset(tmp_path / "direct.zarr", episodes=3, seed=5, image_size=24,
                                          show_progress=False)).arrays()
    for key in ("action", "reward", "terminal", "truncated"):
        np.testing.assert_array_equal(direct[key], arrays[key])
    np.testing.assert_array_equal(direct["obs"]["agentview_rgb"], arrays["obs"]["agentview_rgb"])
    shutil.rmtree(tmp_path / "direct.zarr")

    again = _collect("task=pick_place", "episodes=1", f"output={output}", "task.env.image_size=24")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert ZarrDataset(output).n_episodes == 3, "the existing store must be left untouched"


def test_collect_rejects_bad_episode_count(tmp_path: Path) -> None:
    result = _collect("task=pick_place", "episodes=0", f"output={tmp_path / 'x.zarr'}")
    assert result.returncode == 2 and "episodes" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.zarr").exists()
    result = _collect("task=pick_place", "episodes=1", f"output={tmp_path / 'y.zarr'}", "task.env.image_size=4")
    assert result.returncode == 2 and "image_size" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "a failed collect leaves nothing behind"


def test_generate_dataset_rejects_bad_modes_without_output(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="mode_probs"):
        generate_dataset(tmp_path / "bad.zarr", episodes=2, mode_probs={"teleport": 1.0})
    assert list(tmp_path.iterdir()) == []
