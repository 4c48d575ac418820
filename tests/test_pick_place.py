"""The visual pick-and-place env on real robosuite/MuJoCo (EGL rendering) and its scripted controller."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pytest

import calql_robot.envs  # noqa: F401  (registers calql_robot/PickPlace-v0)
from calql_robot.envs.pick_place import PickPlaceEnv, make_pick_place_env
from calql_robot.envs.pick_place_scene import TABLE_TOP_Z
from calql_robot.envs.pick_place_scripted import run_episode


@pytest.fixture(scope="module")
def env32() -> PickPlaceEnv:
    """Built once through gymnasium.make: 32x32 images with the wrist camera."""
    env = gym.make("calql_robot/PickPlace-v0", image_size=32, wrist_camera=True)
    yield env.unwrapped
    env.close()


@pytest.fixture(scope="module")
def env64() -> PickPlaceEnv:
    """The task config's factory with its defaults (64x64, agent view only) and video frames enabled."""
    env = make_pick_place_env(render=True, render_size=96)
    yield env
    env.close()


def _red_rows(image: np.ndarray) -> np.ndarray:
    """Row indices of the cube's red pixels in an (H, W, 3) uint8 image."""
    red = (image[..., 0] > 120) & (image[..., 1] < 70) & (image[..., 2] < 70)
    return np.nonzero(red)[0]


def test_spaces_and_observation_dtypes(env32: PickPlaceEnv, env64: PickPlaceEnv) -> None:
    for env, size, keys in ((env32, 32, {"agentview_rgb", "eye_in_hand_rgb", "robot_state"}),
                            (env64, 64, {"agentview_rgb", "robot_state"})):
        assert set(env.observation_space.spaces) == keys
        obs, info = env.reset(seed=0)
        assert set(obs) == keys and info["success"] is False
        for key in keys - {"robot_state"}:
            assert obs[key].shape == (size, size, 3) and obs[key].dtype == np.uint8
            assert obs[key].std() > 5, f"{key} looks blank"
        assert obs["robot_state"].shape == (5,) and obs["robot_state"].dtype == np.float32
        assert env.observation_space.contains(obs)
        assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        # the end effector starts above the table; finger joints open symmetrically
        assert obs["robot_state"][2] > TABLE_TOP_Z + 0.1
        assert obs["robot_state"][3] > 0 > obs["robot_state"][4]
    frame = env64.render()
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8


def test_image_is_right_side_up(env64: PickPlaceEnv) -> None:
    on_table = np.array([0.10, -0.15, TABLE_TOP_Z + 0.021, 1.0, 0.0, 0.0, 0.0])
    obs_low, _ = env64.reset(seed=1, options={"cube_pose": on_table})
    lifted = on_table.copy()
    lifted[:3] = [0.10, -0.15, TABLE_TOP_Z + 0.30]  # same spot, 30 cm higher (rendered before it can fall)
    obs_high, _ = env64.reset(seed=1, options={"cube_pose": lifted})
    rows_low, rows_high = _red_rows(obs_low["agentview_rgb"]), _red_rows(obs_high["agentview_rgb"])
    assert rows_low.size > 3 and rows_high.size > 3
    assert rows_high.mean() < rows_low.mean() - 5, "a higher cube must appear nearer the top of the image"
    # the white table fills the bottom rows; the top rows show the robot and the room behind it
    image = obs_low["agentview_rgb"].astype(np.float32)
    assert image[-8:].mean() > 180 and image[-8:].mean() > image[:8].mean() + 30


def test_success_in_bin_terminates_with_reward(env32: PickPlaceEnv) -> None:
    layout = env32.task.layout
    cx, cy = layout.bin_center_xy
    in_bin = np.array([cx, cy, layout.bin_floor_top_z + layout.cube_half_size + 0.002, 1.0, 0.0, 0.0, 0.0])
    env32.reset(seed=2, options={"cube_pose": in_bin})
    _, reward, terminated, truncated, info = env32.step(np.array([0.0, 0.0, 0.0, -1.0]))
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    with pytest.raises(RuntimeError):
        env32.step(np.zeros(4))

    beside_bin = in_bin.copy()
    beside_bin[1] = cy - layout.bin_inner_half - 0.05  # on the table just outside the bin wall
    beside_bin[2] = TABLE_TOP_Z + layout.cube_half_size + 0.002
    env32.reset(seed=2, options={"cube_pose": beside_bin})
    for _ in range(3):
        _, reward, terminated, truncated, info = env32.step(np.array([0.0, 0.0, 0.0, -1.0]))
        assert (reward, terminated, info["success"]) == (0.0, False, False)


def test_horizon_truncates(env32: PickPlaceEnv) -> None:
    saved = env32.horizon
    env32.horizon = 3
    try:
        env32.reset(seed=3)
        flags = [env32.step(np.zeros(4))[2:4] for _ in range(3)]
    finally:
        env32.horizon = saved
    assert flags == [(False, False), (False, False), (False, True)]


def test_reset_randomises_cube_without_rebuilding(env32: PickPlaceEnv) -> None:
    sim, model = env32.task.sim, env32.task.sim.model
    env32.reset(seed=4)
    started = time.perf_counter()
    poses = [env32.reset()[1]["cube_pos"] for _ in range(5)]
    per_reset = (time.perf_counter() - started) / 5
    assert env32.task.sim is sim and env32.task.sim.model is model
    assert per_reset < 0.5, f"reset took {per_reset:.3f} s: it should not rebuild the MuJoCo model"
    xy = np.array([pose[:2] for pose in poses])
    assert np.unique(xy.round(4), axis=0).shape[0] == 5
    layout = env32.task.layout
    assert (xy[:, 0] >= layout.spawn_x[0]).all() and (xy[:, 0] <= layout.spawn_x[1]).all()
    assert (xy[:, 1] >= layout.spawn_y[0]).all() and (xy[:, 1] <= layout.spawn_y[1]).all()


def test_seeded_reset_is_reproducible(env32: PickPlaceEnv) -> None:
    first, info_first = env32.reset(seed=11)
    env32.reset(seed=12)
    second, info_second = env32.reset(seed=11)
    np.testing.assert_array_equal(info_first["cube_pos"], info_second["cube_pos"])
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    other, _ = env32.reset(seed=12)
    assert not np.array_equal(other["robot_state"], first["robot_state"])


def test_scripted_modes(env32: PickPlaceEnv) -> None:
    full = [run_episode(env32, "full", seed) for seed in (100, 101, 102)]
    assert sum(ep["success"] for ep in full) >= 2
    for ep in full:
        if ep["success"]:
            assert ep["terminals"][-1] and ep["rewards"][-1] == 1.0 and ep["rewards"][:-1].sum() == 0
        assert len(ep["actions"]) <= env32.horizon
        assert ep["observations"]["agentview_rgb"].shape[0] == len(ep["actions"]) + 1
        assert np.abs(ep["actions"]).max() <= 1.0

    grasp_only = run_episode(env32, "grasp_only", 103)
    assert not grasp_only["success"] and grasp_only["truncations"][-1]
    assert env32.task.cube_pos[2] > TABLE_TOP_Z + 0.05, "grasp_only should end with the cube lifted"
    for mode, seed in (("drop", 104), ("miss", 105)):
        episode = run_episode(env32, mode, seed)
        assert not episode["success"] and episode["rewards"].sum() == 0 and not episode["terminals"].any()
        assert env32.task.cube_pos[2] < TABLE_TOP_Z + 0.03, f"{mode}: the cube should end on the table"


def test_passes_gymnasium_env_checker(env32: PickPlaceEnv) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(env32, skip_render_check=True)  # seeding determinism, space containment, step/reset signatures


def test_task_config_wires_env_and_generator() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_method

    from calql_robot.app import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="collect", overrides=["task=pick_place", "task.env.image_size=48"])
    task = cfg.task
    assert task.name == "pick_place" and task.env.horizon == task.horizon == 80
    assert task.generate.image_size == 48 and task.generate.horizon == 80  # the data follows the env options
    assert task.reward_success == 1.0 and task.reward_failure == 0.0 and task.sparse_reward
    assert get_method(task.env._target_) is make_pick_place_env
    assert callable(get_method(task.generate._target_))
    assert task.dataset.episodes == task.generate.episodes
