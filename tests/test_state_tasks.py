"""State-based benchmark tasks (AntMaze, Kitchen, Adroit binary): configs, env contract, rewards, success, horizon,
and the small local dataset generators. Real gymnasium-robotics MuJoCo envs; each heavy env is built once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces
from omegaconf import OmegaConf

from calql_robot.datasets.format import ZarrDataset
from calql_robot.envs import generate_task_dataset, make_task_env
from calql_robot.envs.adroit import make_adroit_env
from calql_robot.envs.antmaze import make_antmaze_env
from calql_robot.envs.kitchen import TASK_SETS, make_kitchen_env

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "task"
AGENT_KEYS = {"cql_alpha", "cql_lagrange", "cql_target_action_gap", "cql_importance_sample", "actor_hidden",
              "critic_hidden", "cql_max_target_backup"}
#: task -> (state dim, action dim, horizon, reward_success, reward_failure)
EXPECTED = {
    **{f"antmaze_{m}": (31, 8, 700 if m.startswith("umaze") else 1000, 1.0, 0.0)
       for m in ("umaze", "umaze_diverse", "medium_play", "medium_diverse", "large_play", "large_diverse")},
    **{f"kitchen_{k}": (59, 9, 280, 4.0, 0.0) for k in ("complete", "partial", "mixed")},
    "adroit_pen_binary": (45, 24, 100, 0.0, -1.0),
    "adroit_door_binary": (39, 28, 200, 0.0, -1.0),
    "adroit_relocate_binary": (39, 30, 200, 0.0, -1.0),
}


def load_task(name: str):
    return OmegaConf.load(CONFIG_DIR / f"{name}.yaml")


def assert_contract(env, state_dim: int, action_dim: int) -> None:
    assert isinstance(env.observation_space, spaces.Dict) and list(env.observation_space.spaces) == ["state"]
    box = env.observation_space["state"]
    assert box.shape == (state_dim,) and box.dtype == np.float32
    assert env.action_space.shape == (action_dim,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)


@pytest.fixture(scope="module")
def umaze():
    env = make_antmaze_env("umaze")
    yield env
    env.close()


@pytest.fixture(scope="module")
def kitchen_env():
    env = make_kitchen_env("complete")
    yield env
    env.close()


@pytest.fixture(scope="module")
def door():
    env = make_adroit_env("door")
    yield env
    env.close()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_config_builds_env_with_the_documented_layout(name):
    cfg = load_task(name)
    state_dim, action_dim, horizon, r_succ, r_fail = EXPECTED[name]
    assert cfg.task.name == name
    assert cfg.task.horizon == horizon and cfg.task.gamma == 0.99
    assert (cfg.task.reward_success, cfg.task.reward_failure) == (r_succ, r_fail)
    assert cfg.task.score in ("success_rate", "normalized_score")
    assert cfg.task.dataset.path == f"data/{name}.zarr" and cfg.task.dataset.minari_id.startswith("D4RL/")
    assert set(cfg.agent) <= AGENT_KEYS
    assert cfg.pretrain.steps > 0 and cfg.finetune.env_steps > 0 and 0 < cfg.finetune.mixing_ratio <= 1
    env = make_task_env(cfg.task, seed=0)
    try:
        assert_contract(env, state_dim, action_dim)
        assert env.horizon == horizon and env.control_freq == cfg.task.control_freq
        obs, info = env.reset(seed=1)
        assert obs["state"].shape == (state_dim,) and obs["state"].dtype == np.float32
        assert info["success"] is False
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert isinstance(info["success"], bool) and isinstance(reward, float)
        assert reward in (r_fail, r_succ) or (r_fail <= reward <= r_succ)
    finally:
        env.close()


def test_antmaze_reward_zero_away_from_goal_and_terminal_success_at_goal(umaze):
    obs, info = umaze.reset(seed=3)
    goal = umaze.goal_xy()
    np.testing.assert_allclose(obs["state"][2:4], goal, rtol=1e-6)  # desired_goal sits at state[2:4]
    assert np.linalg.norm(obs["state"][:2] - goal) > 0.45
    for _ in range(5):
        obs, reward, terminated, truncated, info = umaze.step(umaze.action_space.sample())
        assert reward == 0.0 and not terminated and not truncated and info["success"] is False
    umaze.set_torso_xy(goal)
    obs, reward, terminated, truncated, info = umaze.step(np.zeros(8, dtype=np.float32))
    assert np.linalg.norm(obs["state"][:2] - goal) <= 0.45  # achieved_goal = torso x, y at state[0:2]
    assert reward == 1.0 and terminated and not truncated and info["success"] is True


def test_antmaze_umaze_start_and_goal_cells_match_the_minari_umaze_data(umaze):
    starts, goals = [], []
    for seed in range(5):
        obs, _ = umaze.reset(seed=seed)
        starts.append(obs["state"][:2])
        goals.append(umaze.goal_xy())
    maze = umaze.inner.maze
    start_xy = maze.cell_rowcol_to_xy(np.array([3, 1]))  # R and G cells of the D4RL/antmaze/umaze-v1 data map
    goal_xy = maze.cell_rowcol_to_xy(np.array([1, 1]))
    noise = 0.25 * maze.maze_size_scaling
    assert np.all(np.abs(np.array(starts) - start_xy) <= noise + 1e-6)
    assert np.all(np.abs(np.array(goals) - goal_xy) <= noise + 1e-6)
    assert np.ptp(np.array(goals), axis=0).max() > 0  # the goal is noisy, not fixed


def test_horizon_truncates_without_terminating():
    env = make_antmaze_env("umaze", horizon=4)
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(8, dtype=np.float32))[2:4] for _ in range(4)]
        assert flags[:3] == [(False, False)] * 3 and flags[3] == (False, True)
    finally:
        env.close()


def test_kitchen_reward_counts_completed_subtasks_and_terminates_when_all_done(kitchen_env):
    kitchen_env.reset(seed=0)
    still = np.zeros(9, dtype=np.float32)
    _, reward, terminated, _, info = kitchen_env.step(still)
    assert reward == 0.0 and not terminated and info["success"] is False
    kitchen_env.place_task_done("microwave")
    _, reward, terminated, _, info = kitchen_env.step(still)
    assert reward == 1.0 and not terminated and info["success"] is False and info["tasks_completed"] == ["microwave"]
    _, reward, _, _, _ = kitchen_env.step(still)
    assert reward == 1.0  # counts subtasks done so far, not per-step completions
    for task in TASK_SETS["complete"][1:]:
        kitchen_env.place_task_done(task)
    _, reward, terminated, truncated, info = kitchen_env.step(still)
    assert reward == 4.0 and terminated and not truncated and info["success"] is True
    kitchen_env.reset(seed=1)
    assert kitchen_env.step(still)[1] == 0.0  # the count starts again after reset


def test_adroit_binary_reward_follows_goal_achieved(door):
    door.reset(seed=0)
    rewards = [door.step(door.action_space.sample())[1] for _ in range(5)]
    assert rewards == [-1.0] * 5
    inner = door.inner
    inner.data.qpos[inner.door_hinge_addrs] = 1.5  # door swung open past the 1.35 rad success angle
    _, reward, terminated, truncated, info = door.step(np.zeros(28, dtype=np.float32))
    assert info["success"] is True and reward == 0.0 and not terminated and not truncated


def test_adroit_pen_reward_matches_success_flag_and_horizon_is_100():
    env = make_adroit_env("pen")
    try:
        env.reset(seed=0)
        steps = [env.step(env.action_space.sample()) for _ in range(100)]
        assert all(r == (0.0 if i["success"] else -1.0) for _, r, _, _, i in steps)
        assert [s[3] for s in steps] == [False] * 99 + [True] and not any(s[2] for s in steps)
    finally:
        env.close()


@pytest.mark.parametrize(
    ("name", "overrides", "episodes"),
    [("antmaze_umaze", {"max_steps": 60}, 6), ("kitchen_complete", {"max_steps": 15}, 2),
     ("adroit_door_binary", {"max_steps": 30}, 2)],
)
def test_generator_writes_a_valid_store(tmp_path, name, overrides, episodes):
    cfg = load_task(name)
    task_cfg = OmegaConf.merge(cfg.task, {"generate": overrides})
    path = generate_task_dataset(task_cfg, tmp_path / f"{name}.zarr", episodes=episodes, seed=0)
    ds = ZarrDataset(path)
    state_dim, action_dim, _, r_succ, r_fail = EXPECTED[name]
    assert ds.n_episodes == episodes and ds.action_dim == action_dim
    assert ds.obs_spec == {"state": {"shape": [state_dim], "dtype": "float32", "kind": "low_dim"}}
    assert ds.attrs["task"] == name and ds.attrs["reward"] == {"success": r_succ, "failure": r_fail}
    arrays = ds.arrays()
    assert np.all((arrays["reward"] >= r_fail) & (arrays["reward"] <= r_succ))
    ends = np.asarray(ds.episode_ends)
    last = np.zeros(len(arrays["reward"]), dtype=bool)
    last[ends - 1] = True
    assert not (arrays["terminal"] & ~last).any() and not (arrays["truncated"] & ~last).any()
    assert np.all(arrays["terminal"][ends - 1] | arrays["truncated"][ends - 1])
    assert np.all(arrays["terminal"] <= (arrays["reward"] == r_succ))  # terminal only on success
    if name.startswith("antmaze"):
        assert arrays["terminal"].any(), "episodes started in the goal cell should reach it"
    env = make_task_env(cfg.task)
    try:
        first_obs = env.reset(seed=0)[0]["state"]
    finally:
        env.close()
    assert first_obs.shape == arrays["obs"]["state"].shape[1:]


def test_render_returns_square_frames_of_the_requested_size():
    env = make_adroit_env("door", render=True, render_size=64)
    try:
        env.reset(seed=0)
        env.step(env.action_space.sample())
        frame = env.render()
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
        assert env.metadata["render_fps"] == 100
    finally:
        env.close()
