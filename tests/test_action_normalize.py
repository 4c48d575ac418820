"""action_normalize=true: actions outside [-1, 1] are stored mapped to [-1, 1], the map is kept in the store's
attributes and in checkpoints, and evaluation sends the policy's actions back in the source's units.

Sources: a PushT-layout ReplayBuffer (pixel actions, tests/test_converter_examples.py) through the real convert app,
and a PointMaze store written with a scaling, trained by the real pretrain app and evaluated on the real env.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import zarr
from omegaconf import OmegaConf
from test_converter_examples import write_pusht_replay
from test_train_apps import SMALL, run_app

from calql_robot.convert import load_config, run_conversion
from calql_robot.datasets.action_scaling import ATTR, ActionScaling
from calql_robot.datasets.format import DatasetWriter, ZarrDataset
from calql_robot.errors import ConfigError, UserError
from calql_robot.training.checkpoint import find_checkpoint, load_checkpoint

LENGTHS = (6, 5, 7)


def convert(src: Path, out: Path, *extra: str) -> dict:
    return run_conversion(load_config(["source=diffusion_policy", f"input={src}", f"output={out}", "control_freq=10",
                                       "reward.unknown_outcome=success", *extra]))


@pytest.fixture(scope="module")
def pusht(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = write_pusht_replay(tmp_path_factory.mktemp("pusht") / "pusht_cchi_v7_replay.zarr", LENGTHS)
    return path, np.asarray(zarr.open_group(str(path), mode="r")["data/action"][:])


def _kept_rows(actions: np.ndarray) -> np.ndarray:
    """The rows that become transitions: every episode's last action is dropped."""
    ends = np.cumsum(LENGTHS)
    keep = np.ones(len(actions), dtype=bool)
    keep[ends - 1] = False
    return actions[keep]


def test_scaling_maps_bounds_to_unit_range_and_back():
    s = ActionScaling.from_bounds([0.0, -10.0], [512.0, 30.0])
    np.testing.assert_allclose(s.to_policy([[0.0, -10.0], [512.0, 30.0], [256.0, 10.0]]), [[-1, -1], [1, 1], [0, 0]])
    a = np.array([[36.17, 2.5]], dtype=np.float32)
    np.testing.assert_allclose(s.to_env(s.to_policy(a)), a, rtol=1e-5)
    back = ActionScaling.from_json(json.loads(json.dumps(s.to_json())))
    assert back.low.tolist() == s.low.tolist() and back.high.tolist() == s.high.tolist() and back.source == s.source
    flat = ActionScaling.from_data([3.0, 0.0], [3.0, 2.0])  # a constant dimension maps to 0
    assert flat.low.tolist() == [2.0, 0.0] and flat.high.tolist() == [4.0, 2.0]
    assert ActionScaling.from_json(None) is None
    with pytest.raises(UserError, match="below high"):
        ActionScaling.from_bounds([1.0], [1.0])
    with pytest.raises(UserError, match="3 dimensions"):
        ActionScaling.from_bounds([0, 0, 0], [1, 1, 1]).check_dim(2, "robot 'arm'")
    with pytest.raises(ValueError):
        s.to_env(np.zeros(3))


def test_pixel_actions_are_refused_without_and_normalised_with_the_option(pusht, tmp_path):
    src, raw = pusht
    with pytest.raises(UserError, match=r"value 36\.17 at step 0, dimension 0 lies outside the action bounds"):
        convert(src, tmp_path / "refused.zarr")
    assert not (tmp_path / "refused.zarr").exists()
    summary = convert(src, tmp_path / "o.zarr", "action_normalize=true")
    assert "normalised to [-1, 1] from the data's range" in summary["action_scaling"]
    store = ZarrDataset(tmp_path / "o.zarr")
    assert store.action_low.tolist() == [-1.0, -1.0] and store.action_high.tolist() == [1.0, 1.0]
    scaling = store.action_scaling
    assert store.attrs[ATTR]["source"] == "data"
    np.testing.assert_allclose(scaling.low, raw.min(axis=0), rtol=1e-6)  # the range over every row read
    np.testing.assert_allclose(scaling.high, raw.max(axis=0), rtol=1e-6)
    stored = store.arrays()["action"]
    assert stored.min() >= -1.0 and stored.max() <= 1.0
    np.testing.assert_allclose(scaling.to_env(stored), _kept_rows(raw), rtol=1e-5, atol=1e-3)


def test_given_bounds_are_used_and_checked(pusht, tmp_path):
    src, raw = pusht
    convert(src, tmp_path / "b.zarr", "action_normalize=true", "action_bounds=[[0,0],[512,512]]")
    store = ZarrDataset(tmp_path / "b.zarr")
    assert store.attrs[ATTR] == {"low": [0.0, 0.0], "high": [512.0, 512.0], "source": "action_bounds"}
    np.testing.assert_allclose(store.arrays()["action"], _kept_rows(raw) / 256.0 - 1.0, atol=1e-6)
    with pytest.raises(UserError, match=r"outside the action bounds \[0, 100\]"):
        convert(src, tmp_path / "c.zarr", "action_normalize=true", "action_bounds=[[0,0],[100,100]]")
    with pytest.raises(ConfigError, match="action_normalize"):
        convert(src, tmp_path / "d.zarr", "action_normalize=maybe")


def test_a_broken_scaling_attribute_is_refused_by_name(pusht, tmp_path):
    src, _ = pusht
    convert(src, tmp_path / "o.zarr", "action_normalize=true")
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="r+")
    group.attrs[ATTR] = {"low": [0.0, 5.0], "high": [1.0, 1.0]}
    with pytest.raises(UserError, match=r"o\.zarr: attribute action_scaling: low .* must be below high"):
        ZarrDataset(tmp_path / "o.zarr")
    group.attrs[ATTR] = {"low": [0.0], "high": [1.0]}
    with pytest.raises(UserError, match="action_scaling has 1 dimensions"):
        ZarrDataset(tmp_path / "o.zarr")


def _scaled_pointmaze_store(root: Path, scaling: ActionScaling) -> Path:
    """The real PointMaze generator's episodes, re-written with actions in policy units and ``scaling`` attached."""
    from calql_robot.envs.pointmaze_data import write_scripted_dataset

    plain = Path(write_scripted_dataset(root / "plain.zarr", episodes=3, seed=0, horizon=30))
    source = ZarrDataset(plain)
    out = root / "scaled.zarr"
    with DatasetWriter.create(out, source.obs_spec, [-1, -1], [1, 1], task="pointmaze_umaze", control_freq=25.0,
                              reward_success=1.0, reward_failure=0.0, source={"kind": "test"},
                              action_scaling=scaling.to_json()) as writer:
        for i in range(source.n_episodes):
            ep = source.episode(i)
            actions = np.clip(scaling.to_policy(np.clip(ep["action"], scaling.low, scaling.high)), -1, 1)
            writer.add_episode(ep["obs"], actions, ep["reward"], ep["terminal"], ep["truncated"])
    return out


class ActionLog(gym.Wrapper):
    """Records every action the env receives (the real PointMaze env underneath)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.sent: list[np.ndarray] = []

    def step(self, action):
        self.sent.append(np.asarray(action, dtype=np.float64))
        return self.env.step(action)


def test_checkpoint_keeps_the_scaling_and_evaluation_sends_env_units(tmp_path):
    from calql_robot.agent import build_agent
    from calql_robot.envs import make_task_env
    from calql_robot.training import session
    from calql_robot.training.evaluate import evaluate_agent

    scaling = ActionScaling.from_bounds([-0.25, -0.5], [0.25, 0.1])
    store = _scaled_pointmaze_store(tmp_path, scaling)
    run_dir = tmp_path / "pre"
    out = run_app("pretrain", "task=pointmaze_umaze", "task.horizon=30", *SMALL, "threads=1", f"dataset={store}",
                  "pretrain.steps=5", "eval.every=5", "eval.episodes=1", "eval.video=false",
                  f"run_dir={run_dir}").stdout
    assert "actions normalised to [-1, 1] from action_bounds" in out
    tensors, state = load_checkpoint(find_checkpoint(run_dir))
    assert state[ATTR] == scaling.to_json()
    restored = ActionScaling.from_checkpoint_state(state)  # without the store
    cfg = OmegaConf.create(state["config"])
    env = ActionLog(make_task_env(cfg.task, seed=0))
    agent = build_agent(session.agent_config(cfg), {"state": {"shape": [6], "dtype": "float32", "kind": "low_dim"}},
                        2, torch.device("cpu"))
    session.restore_agent(agent, tensors, state)
    evaluate_agent(agent, env, cfg.task, {"episodes": 1, "seed": 3}, action_scaling=restored)
    sent = np.stack(env.sent)
    assert np.all(sent >= scaling.low - 1e-5) and np.all(sent <= scaling.high + 1e-5)
    env.sent.clear()
    obs, _ = env.reset(seed=3)
    first = scaling.to_env(agent.act(obs, deterministic=True))
    evaluate_agent(agent, env, cfg.task, {"episodes": 1, "seed": 3}, action_scaling=restored)
    np.testing.assert_allclose(env.sent[0], first, rtol=1e-5)
