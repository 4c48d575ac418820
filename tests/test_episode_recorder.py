"""EpisodeRecorder: the one episode layout every generator and online loop writes."""

from __future__ import annotations

import numpy as np
import pytest

from calql_robot.datasets.episode_recorder import EpisodeRecorder, writer_fields
from calql_robot.datasets.format import DatasetWriter, ZarrDataset

SPEC = {"state": {"shape": [2], "dtype": "float32", "kind": "low_dim"}}


def record(n: int, terminal_at: int | None = None) -> dict:
    rec = EpisodeRecorder()
    rec.start({"state": np.zeros(2)})  # float64 in, float32 out
    for t in range(n):
        rec.step({"state": np.full(2, t + 1.0)}, np.array([0.1 * t]), float(t == terminal_at), t == terminal_at,
                 False, success=t == terminal_at)
    return rec.finish()


def test_layout_and_cut_episode_is_truncated(tmp_path):
    cut = record(3)
    assert cut["observations"]["state"].dtype == np.float32 and cut["observations"]["state"].shape == (4, 2)
    assert cut["truncations"].tolist() == [False, False, True] and not cut["success"]
    done = record(2, terminal_at=1)
    assert done["terminals"].tolist() == [False, True] and done["truncations"].tolist() == [False, False]
    assert done["success"] and done["rewards"].tolist() == [0.0, 1.0]
    with DatasetWriter.create(tmp_path / "r.zarr", SPEC, np.array([-1.0], np.float32), np.array([1.0], np.float32),
                              task="t", control_freq=1.0, reward_success=1.0, reward_failure=0.0, source={}) as w:
        w.add_episode(**writer_fields(cut))
        w.add_episode(**writer_fields(done))
    ds = ZarrDataset(tmp_path / "r.zarr")
    np.testing.assert_array_equal(ds.episode(0)["obs"]["state"][:, 0], [0, 1, 2, 3])
    assert ds.success_mask().tolist() == [False, True]


def test_finish_without_steps_is_an_error():
    rec = EpisodeRecorder()
    rec.start({"state": np.zeros(2)})
    with pytest.raises(RuntimeError, match="at least one step"):
        rec.finish()
