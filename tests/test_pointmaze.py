"""PointMaze task (envs/pointmaze.py, envs/pointmaze_data.py, configs/task/pointmaze_umaze.yaml): the env contract,
sparse reward with termination at the goal, truncation, the scripted controller, and the generated dataset.
Real gymnasium-robotics MuJoCo env and real zarr stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces
from hydra import compose, initialize_config_dir

from calql_robot.datasets.format import ZarrDataset, obs_spec_from_space
from calql_robot.envs import generate_task_dataset, make_task_env
from calql_robot.envs.pointmaze import SUCCESS_DISTANCE, make_pointmaze_env, shortest_cell_path
from calql_robot.envs.pointmaze_data import rollout, scripted_policy
from calql_robot.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def env():
    env = make_pointmaze_env("umaze", horizon=100)
    yield env
    env.close()


@pytest.fixture(scope="module")
def task_cfg():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=["task=pointmaze_umaze"])
    return cfg.task


def test_spaces_follow_the_contract(env):
    assert isinstance(env.observation_space, spaces.Dict) and list(env.observation_space.spaces) == ["state"]
    box = env.observation_space["state"]
    assert box.shape == (6,) and box.dtype == np.float32
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    assert obs_spec_from_space(env.observation_space) == {"state": {"shape": [6], "dtype": "float32",
                                                                    "kind": "low_dim"}}


def test_reset_places_ball_at_start_and_goal_at_goal_cell(env):
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        state = obs["state"]
        assert state.shape == (6,) and state.dtype == np.float32 and np.isfinite(state).all()
        # layout: x, y, vx, vy, goal x, goal y; gymnasium-robotics adds +-0.25 m noise to start and goal
        assert np.abs(state[:2] - env.cell_xy(env.start_cell)).max() <= 0.25 + 1e-6
        assert np.allclose(state[2:4], 0.0)
        assert np.abs(state[4:6] - env.cell_xy(env.goal_cell)).max() <= 0.25 + 1e-6
        assert np.allclose(state[4:6], env.goal_xy())
        assert info["success"] is False


def test_same_seed_gives_same_reset(env):
    a = env.reset(seed=7)[0]["state"]
    b = env.reset(seed=7)[0]["state"]
    c = env.reset(seed=8)[0]["state"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_step_away_from_goal_gives_zero_reward(env):
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert reward == 0.0 and not terminated and not truncated and info["success"] is False
    assert obs["state"][2] > 0.0  # pushed in +x: the ball moves that way


def test_reaching_goal_rewards_and_terminates(env):
    env.reset(seed=1)
    env.set_ball_xy(env.goal_xy() + np.array([SUCCESS_DISTANCE * 0.5, 0.0]))
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert reward == 1.0 and terminated and not truncated and info["success"] is True
    assert np.linalg.norm(obs["state"][:2] - obs["state"][4:6]) <= SUCCESS_DISTANCE


def test_truncates_at_horizon_without_success():
    env = make_pointmaze_env("umaze", horizon=5)
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(2, dtype=np.float32))[3] for _ in range(5)]
        assert flags == [False, False, False, False, True]
    finally:
        env.close()


def test_actions_are_clipped_and_repeated():
    fast = make_pointmaze_env("umaze", action_repeat=4)
    slow = make_pointmaze_env("umaze", action_repeat=1)
    try:
        fast.reset(seed=0)
        slow.reset(seed=0)
        big = fast.step(np.array([5.0, 0.0]))[0]["state"]          # clipped to 1.0
        unit = slow.step(np.array([1.0, 0.0]))[0]["state"]
        assert big[2] > unit[2] > 0.0                               # 4 simulation steps accelerate more than 1
        assert fast.control_freq == 25.0 and slow.control_freq == 100.0
    finally:
        fast.close()
        slow.close()


def test_unknown_arguments_are_rejected():
    with pytest.raises(TypeError, match="horizn"):
        make_pointmaze_env("umaze", horizn=10)
    with pytest.raises(ValueError, match="unknown maze"):
        make_pointmaze_env("spiral")


def test_cell_path_goes_around_the_wall(env):
    path = shortest_cell_path(env.maze_map, env.start_cell, env.goal_cell)
    assert path[0] == (3, 1) and path[-1] == (1, 1)
    assert (2, 1) not in path and (2, 3) in path                    # (2, 1) is the U's wall
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(path, path[1:], strict=False))


def test_noise_free_scripted_controller_reaches_the_goal(env):
    rng = np.random.default_rng(0)
    for seed in range(3):
        episode = rollout(env, scripted_policy(env, "scripted", rng, noise=0.0), seed, None)
        assert episode["terminals"][-1] and episode["rewards"][-1] == 1.0
        assert len(episode["actions"]) < 60                         # a direct path takes ~36 steps


def test_wander_episode_never_reaches_the_goal(env):
    rng = np.random.default_rng(3)
    for seed in range(2):
        episode = rollout(env, scripted_policy(env, "wander", rng, noise=0.0), seed, None)
        assert not episode["terminals"].any() and episode["truncations"][-1]
        assert len(episode["actions"]) == env.horizon


def test_generated_dataset_is_valid_and_suboptimal(tmp_path):
    from calql_robot.envs.pointmaze import generate_dataset

    path = tmp_path / "pm.zarr"
    assert generate_dataset(path, episodes=24, seed=0, horizon=60) == str(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pm.zarr"]    # no temporary sibling left
    ds = ZarrDataset(path)
    assert ds.n_episodes == 24 and ds.action_dim == 2
    assert ds.obs_spec == {"state": {"shape": [6], "dtype": "float32", "kind": "low_dim"}}
    assert ds.attrs["task"] == "pointmaze_umaze" and ds.attrs["control_freq"] == 25.0
    successes = []
    for i in range(ds.n_episodes):
        ep = ds.episode(i)
        n = len(ep["action"])
        assert ep["obs"]["state"].shape == (n + 1, 6) and 1 <= n <= 60
        assert np.all(np.abs(ep["action"]) <= 1.0)
        assert set(np.unique(ep["reward"])) <= {0.0, 1.0}
        assert np.array_equal(ep["terminal"], ep["reward"] == 1.0)      # reward 1 exactly on the terminal step
        assert not ep["terminal"][:-1].any() and not ep["truncated"][:-1].any()
        assert ep["terminal"][-1] != ep["truncated"][-1]                # every episode ends one way or the other
        assert np.linalg.norm(ep["obs"]["state"][-1, :2] - ep["obs"]["state"][-1, 4:6]) <= SUCCESS_DISTANCE \
            or not ep["terminal"][-1]
        successes.append(bool(ep["terminal"][-1]))
    rate = float(np.mean(successes))
    assert 0.1 <= rate <= 0.9, rate                                     # sub-optimal, but with successes to learn from
    assert ds.attrs["source"]["summary"]["success_rate"] == pytest.approx(rate)


def test_generator_is_deterministic_per_seed(tmp_path):
    from calql_robot.envs.pointmaze import generate_dataset

    arrays = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_dataset(tmp_path / f"{name}.zarr", episodes=4, seed=seed, horizon=30)
        arrays.append(ZarrDataset(tmp_path / f"{name}.zarr").arrays()["action"])
    assert np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[0], arrays[2])


def test_bad_generator_arguments_raise_user_error_and_write_nothing(tmp_path):
    from calql_robot.envs.pointmaze import generate_dataset

    with pytest.raises(UserError, match="wander_fraction"):
        generate_dataset(tmp_path / "bad.zarr", episodes=3, wander_fraction=0.8, give_up_fraction=0.5)
    with pytest.raises(UserError, match="episodes"):
        generate_dataset(tmp_path / "bad.zarr", episodes=0)
    assert list(tmp_path.iterdir()) == []


def test_task_config_builds_env_and_dataset(task_cfg, tmp_path):
    assert task_cfg.name == "pointmaze_umaze" and task_cfg.sparse_reward is True
    assert task_cfg.reward_scale * task_cfg.reward_success + task_cfg.reward_bias == 5.0
    assert task_cfg.reward_scale * task_cfg.reward_failure + task_cfg.reward_bias == -5.0
    env = make_task_env(task_cfg, seed=0)
    try:
        assert env.horizon == task_cfg.horizon and env.control_freq == task_cfg.control_freq
        assert env.observation_space["state"].shape == (6,)
    finally:
        env.close()
    path = generate_task_dataset(task_cfg, tmp_path / "cfg.zarr", episodes=3, seed=1)
    ds = ZarrDataset(path)
    assert ds.n_episodes == 3 and ds.attrs["source"]["env"]["horizon"] == task_cfg.horizon
