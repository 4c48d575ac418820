"""Minari -> zarr converter on Minari datasets recorded here with ``minari.DataCollector`` on the real
gymnasium-robotics envs (AntMaze_UMaze-v4 as the D4RL data were recorded, FrankaKitchen-v1, AdroitHandDoor-v1).
Values are checked episode by episode against the Minari episodes, independently of the converter's code."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import gymnasium_robotics
import numpy as np
import pytest
from gymnasium import spaces
from minari import DataCollector, StepDataCallback
from omegaconf import OmegaConf

from calql_robot.datasets.converters.minari import convert
from calql_robot.datasets.format import ZarrDataset
from calql_robot.envs.adroit import make_adroit_env
from calql_robot.envs.antmaze import make_antmaze_env
from calql_robot.envs.kitchen import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES, TASK_SETS, make_kitchen_env
from calql_robot.errors import UserError

gym.register_envs(gymnasium_robotics)
ANT_ID = "test/antmaze/umaze-v0"
KITCHEN_ID = "test/kitchen/complete-v0"
DOOR_ID = "test/door/binary-v0"


class SuccessInfoOnly(StepDataCallback):
    """Keep only ``info['success']`` (reset infos lack the per-step keys), as the D4RL generation scripts do."""

    def __call__(self, env, obs, info, action=None, rew=None, terminated=None, truncated=None):
        data = super().__call__(env, obs, info, action, rew, terminated, truncated)
        data["info"] = {"success": bool(data["info"].get("success", False))}
        return data


def _record_antmaze(steps: int = 40) -> None:
    env = gym.make("AntMaze_UMaze-v4", continuing_task=True, reset_target=False, max_episode_steps=steps)
    collector = DataCollector(env, step_data_callback=SuccessInfoOnly, record_infos=True)
    rng = np.random.default_rng(0)
    for ep in range(3):
        collector.reset(seed=ep)
        for t in range(steps):
            if ep == 1 and 10 <= t < 14:  # hold the ant at the goal for a few steps: reach, linger, leave
                ant = env.unwrapped.ant_env
                qpos = ant.data.qpos.copy()
                qpos[:2] = env.unwrapped.goal
                ant.set_state(qpos, ant.data.qvel.copy())
            if ep == 1 and t == 14:
                ant = env.unwrapped.ant_env
                qpos = ant.data.qpos.copy()
                qpos[:2] = env.unwrapped.goal + 2.0
                ant.set_state(qpos, np.zeros_like(ant.data.qvel))
            _, _, terminated, truncated, _ = collector.step(rng.uniform(-1, 1, 8).astype(np.float32))
            if terminated or truncated:
                break
    collector.create_dataset(ANT_ID, algorithm_name="random+teleport")
    collector.close()


def _record_kitchen(steps: int = 12) -> None:
    # the settings of the D4RL/kitchen/*-v2 recordings: tasks not removed when done, no termination
    env = gym.make("FrankaKitchen-v1", tasks_to_complete=TASK_SETS["complete"], max_episode_steps=steps,
                   remove_task_when_completed=False, terminate_on_tasks_completed=False)
    collector = DataCollector(env, record_infos=False)
    rng = np.random.default_rng(1)
    for ep in range(2):
        collector.reset(seed=ep)
        for t in range(steps):
            done_now = {3: ["microwave"], 6: TASK_SETS["complete"][1:]}.get(t, []) if ep == 1 else []
            for task in done_now:
                data = env.unwrapped.robot_env.data
                data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
            _, _, terminated, truncated, _ = collector.step(rng.uniform(-0.1, 0.1, 9))
            if terminated or truncated:
                break
    collector.create_dataset(KITCHEN_ID, algorithm_name="random+placed")
    collector.close()


def _record_door(steps: int = 15) -> None:
    env = gym.make("AdroitHandDoor-v1", max_episode_steps=steps)
    collector = DataCollector(env, step_data_callback=SuccessInfoOnly, record_infos=True)
    rng = np.random.default_rng(2)
    for ep in range(2):
        collector.reset(seed=ep)
        for t in range(steps):
            if ep == 1 and t in (4, 7):  # door open at steps 4 and 7 (last success) only
                inner = env.unwrapped
                inner.data.qpos[inner.door_hinge_addrs] = 1.5
            if ep == 1 and t in (5, 8):
                inner = env.unwrapped
                inner.data.qpos[inner.door_hinge_addrs] = 0.0
                inner.data.qvel[:] = 0.0
            collector.step(rng.uniform(-1, 1, 28).astype(np.float32))
    collector.create_dataset(DOOR_ID, algorithm_name="random+placed")
    collector.close()


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        _record_antmaze()
        _record_kitchen()
        _record_door()
        yield root
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _load(dataset_id: str):
    import minari

    return minari.load_dataset(dataset_id)


def _cfg(**kwargs):
    base = {"input": None, "output": None, "overwrite": False, "download": False, "task": None, "skip_bad": False}
    return OmegaConf.create({**base, **kwargs})


def _expected_antmaze_segments(ep) -> list[dict]:
    """Independent reference: terminal at each goal arrival, steps starting inside the goal dropped."""
    space = _load(ANT_ID).observation_space
    obs = [spaces.flatten(space, {k: ep.observations[k][t] for k in ep.observations})
           for t in range(len(ep.rewards) + 1)]
    segments, current = [], None
    for t, reward in enumerate(ep.rewards):
        if t > 0 and ep.rewards[t - 1] == 1.0:
            if current is not None:
                current["truncated"][-1] = True
                segments.append(current)
                current = None
            continue
        if current is None:
            current = {"obs": [obs[t]], "action": [], "reward": [], "terminal": [], "truncated": []}
        current["obs"].append(obs[t + 1])
        current["action"].append(ep.actions[t])
        current["reward"].append(reward)
        current["terminal"].append(reward == 1.0)
        current["truncated"].append(bool(ep.truncations[t]) and reward != 1.0)
        if reward == 1.0:
            segments.append(current)
            current = None
    if current is not None:
        segments.append(current)
    return segments


def test_antmaze_values_match_episode_by_episode(minari_root, tmp_path):
    out = tmp_path / "ant.zarr"
    summary = convert(_cfg(input=ANT_ID, output=str(out), task="antmaze_umaze"))
    dataset = _load(ANT_ID)
    expected = [seg for ep in dataset.iterate_episodes() for seg in _expected_antmaze_segments(ep)]
    store = ZarrDataset(out)
    assert store.n_episodes == len(expected) == summary["episodes"] > dataset.total_episodes  # the success split one
    assert summary["transitions"] == store.n_transitions == sum(len(s["action"]) for s in expected)
    assert summary["success_rate"] == pytest.approx(1 / 3) and summary["dropped"] == []
    assert summary["dropped_steps"] == sum(len(ep.rewards) for ep in dataset.iterate_episodes()) - store.n_transitions
    for i, seg in enumerate(expected):
        got = store.episode(i)
        np.testing.assert_allclose(got["obs"]["state"], np.asarray(seg["obs"], dtype=np.float32))
        np.testing.assert_allclose(got["action"], np.asarray(seg["action"], dtype=np.float32))
        np.testing.assert_array_equal(got["reward"], np.asarray(seg["reward"], dtype=np.float32))
        np.testing.assert_array_equal(got["terminal"], seg["terminal"])
        np.testing.assert_array_equal(got["truncated"], seg["truncated"])
    assert store.arrays()["terminal"].sum() >= 1
    assert store.attrs["task"] == "antmaze_umaze" and store.attrs["reward"] == {"success": 1.0, "failure": 0.0}
    assert store.attrs["source"]["env_id"] == "AntMaze_UMaze-v4" and store.attrs["source"]["dataset_id"] == ANT_ID


def test_antmaze_rows_have_the_env_observation_layout(minari_root, tmp_path):
    """The env's flattening of a raw AntMaze obs equals gymnasium's flatten of the dataset's Dict space."""
    env = make_antmaze_env("umaze")
    try:
        obs, _ = env.reset(seed=0)
        raw = env.inner._get_obs(env.inner.ant_env._get_obs())
        space = _load(ANT_ID).observation_space
        np.testing.assert_allclose(obs["state"], spaces.flatten(space, raw).astype(np.float32))
        assert env.observation_space["state"].shape == (spaces.flatdim(space),)
    finally:
        env.close()


def test_kitchen_reward_is_completed_count_and_terminal_when_all_done(minari_root, tmp_path):
    out = tmp_path / "kitchen.zarr"
    summary = convert(_cfg(input=KITCHEN_ID, output=str(out)))  # task name from the id: kitchen_complete
    store = ZarrDataset(out)
    dataset = _load(KITCHEN_ID)
    episodes = list(dataset.iterate_episodes())
    assert store.attrs["task"] == "kitchen_complete" and store.attrs["reward"]["success"] == 4.0
    assert summary["success_rate"] == pytest.approx(0.5)
    assert len(episodes[1].rewards) == 12 and summary["dropped_steps"] == 12 - 7  # steps after all 4 are dropped
    quiet, placed = store.episode(0), store.episode(1)
    assert np.all(quiet["reward"] == 0) and not quiet["terminal"].any() and quiet["truncated"][-1]
    np.testing.assert_allclose(quiet["obs"]["state"], episodes[0].observations["observation"].astype(np.float32))
    np.testing.assert_array_equal(placed["reward"], [0, 0, 0, 1, 1, 1, 4])
    assert placed["terminal"].tolist() == [False] * 6 + [True]
    np.testing.assert_allclose(placed["action"], episodes[1].actions[:7].astype(np.float32))
    np.testing.assert_allclose(placed["obs"]["state"], episodes[1].observations["observation"][:8].astype(np.float32))
    env = make_kitchen_env("complete")
    try:  # the converted rows have the task env's layout: its state is the raw observation entry too
        obs, _ = env.reset(seed=0)
        raw = env.inner._get_obs(env.inner.robot_env._get_obs())
        assert store.obs_spec["state"]["shape"] == list(obs["state"].shape) == [raw["observation"].shape[0]]
        np.testing.assert_allclose(obs["state"], raw["observation"].astype(np.float32), atol=1e-2)  # obs noise
    finally:
        env.close()


def test_adroit_binary_rule_drops_failures_and_cuts_after_last_success(minari_root, tmp_path):
    out = tmp_path / "door.zarr"
    summary = convert(_cfg(input=DOOR_ID, output=str(out), task="adroit_door_binary"))
    store = ZarrDataset(out)
    episodes = list(_load(DOOR_ID).iterate_episodes())
    success = np.asarray(episodes[1].infos["success"])[1:]
    last = int(np.nonzero(success)[0][-1])
    assert summary["dropped"] == [{"episode": 0, "reason": "never succeeds (binary Adroit rule)"}]
    assert store.n_episodes == 1 and store.n_transitions == last + 1
    got = store.episode(0)
    np.testing.assert_array_equal(got["reward"], np.where(success[: last + 1], 0.0, -1.0))
    assert got["truncated"].tolist() == [False] * last + [True] and not got["terminal"].any()
    np.testing.assert_allclose(got["obs"]["state"], episodes[1].observations[: last + 2].astype(np.float32))
    assert store.attrs["reward"] == {"success": 0.0, "failure": -1.0}
    env = make_adroit_env("door")
    try:
        obs, _ = env.reset(seed=0)
        np.testing.assert_allclose(obs["state"], env.inner._get_obs().astype(np.float32))
        assert store.obs_spec["state"]["shape"] == list(obs["state"].shape)
    finally:
        env.close()


def test_local_folder_input_and_overwrite(minari_root, tmp_path):
    out = tmp_path / "ant.zarr"
    folder = Path(os.environ["MINARI_DATASETS_PATH"]) / ANT_ID
    first = convert(_cfg(input=str(folder), output=str(out)))
    assert first["episodes"] == ZarrDataset(out).n_episodes
    with pytest.raises(UserError, match="already exists"):
        convert(_cfg(input=str(folder), output=str(out)))
    again = convert(_cfg(input=str(folder), output=str(out), overwrite=True))
    assert again["transitions"] == first["transitions"]


def test_remote_id_without_download_names_the_fetch_command(minari_root, tmp_path):
    with pytest.raises(UserError, match="not available locally") as err:
        convert(_cfg(input="D4RL/antmaze/umaze-v1", output=str(tmp_path / "x.zarr")))
    assert "download=true" in str(err.value) and "minari download D4RL/antmaze/umaze-v1" in str(err.value)
    assert not (tmp_path / "x.zarr").exists()


def test_failed_conversion_leaves_nothing_and_skip_bad_lists_episodes(minari_root, tmp_path):
    out = tmp_path / "bad.zarr"
    with pytest.raises(UserError, match="episode 0 observations are not the kitchen Dict"):
        convert(_cfg(input=ANT_ID, output=str(out), task="kitchen_complete"))
    with pytest.raises(UserError, match="no episode could be converted"):
        convert(_cfg(input=ANT_ID, output=str(out), task="kitchen_complete", skip_bad=True))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="expected kitchen_<complete"):
        convert(_cfg(input=KITCHEN_ID, output=str(out), task="kitchen_bogus"))


def test_convert_app_dispatches_source_minari(minari_root, tmp_path):
    from calql_robot.convert import load_config, run_conversion

    out = tmp_path / "app.zarr"
    # `task=NAME` selects configs/task/NAME.yaml, whose name the converter takes
    cfg = load_config(["source=minari", f"input={ANT_ID}", f"output={out}", "task=antmaze_umaze"])
    summary = run_conversion(cfg)
    store = ZarrDataset(out)
    assert summary["episodes"] == store.n_episodes and summary["output"] == str(out)
    assert store.attrs["task"] == "antmaze_umaze"
