"""The state-based twin of pick-and-place (task=pick_place_state): spaces, observations, and the same episodes."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from calql_robot.datasets.format import ZarrDataset
from calql_robot.envs.pick_place import PickPlaceEnv, make_pick_place_env
from calql_robot.envs.pick_place_scripted import generate_dataset, run_episode
from calql_robot.errors import UserError


@pytest.fixture(scope="module")
def state_env() -> PickPlaceEnv:
    env = make_pick_place_env(observation="state")
    yield env
    env.close()


def test_state_spaces_and_values(state_env: PickPlaceEnv) -> None:
    assert set(state_env.observation_space.spaces) == {"robot_state", "object_state"}
    assert state_env.observation_space["object_state"].shape == (10,)
    obs, info = state_env.reset(seed=3)
    assert obs["object_state"].dtype == np.float32 and obs["object_state"].shape == (10,)
    cube, quat, rel = obs["object_state"][:3], obs["object_state"][3:7], obs["object_state"][7:]
    np.testing.assert_allclose(cube, info["cube_pos"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(quat), 1.0, atol=1e-4)
    np.testing.assert_allclose(rel, cube - obs["robot_state"][:3], atol=1e-5)
    obs2, reward, terminated, truncated, _ = state_env.step(np.array([0.0, 0.0, 1.0, -1.0], dtype=np.float32))
    assert obs2["robot_state"][2] > obs["robot_state"][2]  # moved up
    assert reward == 0.0 and not terminated and not truncated
    assert state_env.observation_space.contains(obs2)


def test_same_seed_gives_the_same_episode_as_the_image_task(state_env: PickPlaceEnv) -> None:
    image_env = make_pick_place_env(image_size=16)
    try:
        image_ep = run_episode(image_env, "full", seed=11)
    finally:
        image_env.close()
    state_ep = run_episode(state_env, "full", seed=11)
    np.testing.assert_array_equal(image_ep["actions"], state_ep["actions"])
    np.testing.assert_array_equal(image_ep["rewards"], state_ep["rewards"])
    np.testing.assert_array_equal(image_ep["observations"]["robot_state"], state_ep["observations"]["robot_state"])
    assert "object_state" in state_ep["observations"] and "agentview_rgb" not in state_ep["observations"]


def test_state_dataset_shapes(tmp_path) -> None:
    path = generate_dataset(tmp_path / "pps.zarr", episodes=2, seed=1, observation="state", horizon=20,
                            show_progress=False)
    ds = ZarrDataset(path)
    assert ds.attrs["task"] == "pick_place_state"
    assert set(ds.obs_spec) == {"robot_state", "object_state"}
    arrays = ds.arrays()
    assert arrays["obs"]["object_state"].shape == (ds.n_transitions, 10)
    assert arrays["final_obs"]["object_state"].shape == (2, 10)
    assert arrays["action"].shape == (ds.n_transitions, 4)


def test_task_config_and_bad_option() -> None:
    cfg = OmegaConf.load("configs/task/pick_place_state.yaml")
    assert cfg.task.env.observation == "state" and cfg.task.horizon == 80
    with pytest.raises(UserError, match="observation"):
        make_pick_place_env(observation="pixels")
