"""Observation normalisation: statistics from the dataset, applied in the encoder, carried by checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calql_robot.encoders import build_encoder
from calql_robot.encoders.normalize import CLIP, STD_FLOOR, low_dim_statistics
from calql_robot.errors import UserError
from calql_robot.training.checkpoint import find_checkpoint, load_checkpoint
from tests.test_train_apps import SMALL, TASK, run_app

SPEC = {"state": {"shape": [3], "dtype": "float32", "kind": "low_dim"},
        "cam": {"shape": [16, 16, 3], "dtype": "uint8", "kind": "rgb"}}


def test_statistics_and_normalised_values() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal([1.0, -2.0, 0.93], [0.5, 2.0, 0.0], size=(1000, 3)).astype(np.float32)
    stats = low_dim_statistics({"state": values}, ["state"])
    np.testing.assert_allclose(stats["state"][0], values.mean(0), rtol=1e-5, atol=1e-6)
    encoder = build_encoder({"name": "conv", "normalize": True, "feature_dim": 8}, SPEC)
    assert not bool(encoder.normalizer.fitted)
    encoder.normalizer.fit(stats)
    assert bool(encoder.normalizer.fitted)
    out = encoder.normalizer("state", torch.as_tensor(values))
    np.testing.assert_allclose(out[:, :2].mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(out[:, :2].std(0).numpy(), 1.0, atol=1e-2)
    assert float(encoder.normalizer.std_0[2]) == pytest.approx(STD_FLOOR)  # a constant column is not blown up
    far = encoder.normalizer("state", torch.tensor([[1e6, 0.0, 0.93]]))
    assert float(far[0, 0]) == CLIP


def test_non_finite_data_is_refused() -> None:
    with pytest.raises(UserError, match="NaN"):
        low_dim_statistics({"state": np.array([[0.0], [np.nan]])}, ["state"])


def test_normalizer_is_off_by_default_and_changes_features_when_on() -> None:
    assert build_encoder({"name": "low_dim"}, {"state": SPEC["state"]}).normalizer is None
    encoder = build_encoder({"name": "low_dim", "normalize": True}, {"state": SPEC["state"]})
    encoder.normalizer.fit({"state": (np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))})
    out = encoder({"state": torch.tensor([[3.0, 2.0, 1.0]])})
    np.testing.assert_allclose(out.numpy(), [[1.0, 0.0, -1.0]])


def test_statistics_round_trip_through_a_checkpoint(tmp_path) -> None:
    data = tmp_path / "tiny.zarr"
    run_app("collect", *TASK, "episodes=3", f"output={data}", "+task.generate.max_steps=20")
    run_dir = tmp_path / "run"
    run_app("pretrain", *TASK, *SMALL, f"dataset={data}", "pretrain.steps=4", "eval.every=0",
            "agent.encoder.normalize=true", f"run_dir={run_dir}")
    tensors, state = load_checkpoint(find_checkpoint(run_dir))
    from calql_robot.datasets.format import ZarrDataset

    obs = ZarrDataset(data).arrays()["obs"]["state"]
    mean = np.asarray(obs[:]).mean(0)
    np.testing.assert_allclose(tensors["agent/encoder.normalizer.mean_0"].numpy(), mean, rtol=1e-4, atol=1e-5)
    assert bool(tensors["agent/encoder.normalizer.fitted"])
    assert state["config"]["agent"]["encoder"]["normalize"] is True
    # fine-tuning starts from the checkpoint: the same statistics, not refitted on other data
    fine = tmp_path / "fine"
    # (no agent.* overrides: the agent, normaliser included, comes from the checkpoint)
    small = [s.replace("pretrain.", "finetune.") for s in SMALL if not s.startswith("agent.")]
    run_app("finetune", *TASK, *small, f"checkpoint={run_dir}",
            "finetune.env_steps=3", "eval.every=0", f"run_dir={fine}")
    fine_tensors, _ = load_checkpoint(find_checkpoint(fine))
    key = "agent/encoder.normalizer.std_0"
    torch.testing.assert_close(fine_tensors[key], tensors[key])
