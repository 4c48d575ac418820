"""Checkpoints (safetensors + JSON, atomic 'latest') and the CSV/TensorBoard logger."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from calql_robot.errors import UserError
from calql_robot.training.checkpoint import find_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from calql_robot.training.logger import MetricsLogger


def test_checkpoint_round_trip_and_rng(tmp_path):
    tensors = {"agent/w": torch.randn(3, 4), "agent/step": torch.tensor(7)}
    torch.manual_seed(3)
    np.random.seed(3)
    save_checkpoint(tmp_path, 10, tensors, {"counters": {"episodes": 2}}, counter="update")
    save_checkpoint(tmp_path, 20, tensors, {"counters": {"episodes": 4}}, keep=1, counter="update")
    expected_torch, expected_np = torch.rand(2), np.random.rand(2)
    assert [p.name for p in (tmp_path / "checkpoints").glob("update_*")] == ["update_000000020"]
    assert find_checkpoint(tmp_path).name == "update_000000020"
    loaded, state = load_checkpoint(tmp_path)
    assert state["counters"] == {"episodes": 4} and state["step"] == 20 and state["counter"] == "update"
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)
    restore_rng_state(loaded, state["rng"])
    assert torch.equal(torch.rand(2), expected_torch) and np.allclose(np.random.rand(2), expected_np)
    # no file in the checkpoint is a pickle: the state is JSON
    json.loads((find_checkpoint(tmp_path) / "state.json").read_text())


def test_missing_or_corrupt_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint found"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(1)}, {}, counter="update")
    (find_checkpoint(tmp_path) / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path)


def test_logger_widens_csv_and_truncates_on_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=True)
    log.log("train", 1, {"a": 1.0})
    log.log("train", 2, {"a": 2.0, "b": 5.0})
    log.log("train", 3, {"a": 3.0, "b": 6.0})
    log.close()
    rows = list(csv.DictReader((tmp_path / "train.csv").open()))
    assert [r["a"] for r in rows] == ["1.0", "2.0", "3.0"] and rows[0]["b"] == "" and rows[2]["b"] == "6.0"
    assert any((tmp_path / "tb").iterdir())
    resumed = MetricsLogger(tmp_path, resume_step=2, tensorboard=False)
    resumed.log("train", 3, {"a": 30.0})
    rows = list(csv.DictReader((tmp_path / "train.csv").open()))
    assert [r["a"] for r in rows] == ["1.0", "2.0", "30.0"]


def test_resave_same_step_and_broken_latest_fall_back(tmp_path):
    save_checkpoint(tmp_path, 5, {"x": torch.zeros(1)}, {}, counter="env_step")
    save_checkpoint(tmp_path, 9, {"x": torch.ones(1)}, {}, counter="env_step")
    save_checkpoint(tmp_path, 9, {"x": torch.full((1,), 2.0)}, {}, counter="env_step")  # same step: replaced
    assert load_checkpoint(tmp_path)[0]["x"].item() == 2.0
    (tmp_path / "checkpoints" / "latest").write_text("env_step_000000099\n")  # names a folder that is gone
    assert find_checkpoint(tmp_path).name == "env_step_000000009"
