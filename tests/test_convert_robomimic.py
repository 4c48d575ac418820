"""source=robomimic: robomimic HDF5 with stored obs, and a robosuite demo (states + actions) replayed in robosuite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from calql_robot.convert import load_config, run_conversion
from calql_robot.datasets.format import ZarrDataset
from calql_robot.errors import UserError

os.environ.setdefault("MUJOCO_GL", "egl")
CAM_SIZE = 32
STEPS = [6, 4]


def convert(src: Path, out: Path, *extra: str) -> dict:
    return run_conversion(load_config(["source=robomimic", f"input={src}", f"output={out}", *extra]))


@pytest.fixture(scope="module")
def robosuite_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Record random-action rollouts in Lift the way robosuite's demo collection stores them, with the direct
    rollout's observations kept as ground truth."""
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    controller = load_composite_controller_config(controller="BASIC", robot="Panda")
    env_info = {"env_name": "Lift", "robots": "Panda", "controller_configs": controller}
    env = robosuite.make(**env_info, has_renderer=False, has_offscreen_renderer=True, use_camera_obs=True,
                         camera_names=["agentview"], camera_heights=CAM_SIZE, camera_widths=CAM_SIZE,
                         ignore_done=True, control_freq=20)
    rng = np.random.default_rng(0)
    truth = []
    path = tmp_path_factory.mktemp("rs") / "demo.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env"] = "Lift"
        data.attrs["env_info"] = json.dumps(env_info)
        for i, n_steps in enumerate(STEPS):
            env.reset()
            obs = env._get_observations(force_update=True)  # observables at exactly the recorded state
            xml = env.sim.model.get_xml()
            states, actions, seen = [], [], [obs]
            for t in range(n_steps):
                if i == 1 and t == n_steps - 1:  # lift the cube by hand before the last step: Lift succeeds
                    joint = env.cube.joints[0]
                    qpos = env.sim.data.get_joint_qpos(joint).copy()
                    qpos[2] += 0.2
                    env.sim.data.set_joint_qpos(joint, qpos)
                    env.sim.forward()
                    seen[-1] = env._get_observations(force_update=True)
                states.append(env.sim.get_state().flatten())
                action = rng.uniform(-1, 1, size=env.action_dim)
                actions.append(action)
                env.step(action)
                env.sim.forward()  # kinematics of the state reached (mj_step leaves them one substep behind)
                seen.append(env._get_observations(force_update=True))
            demo = data.create_group(f"demo_{i + 1}")
            demo.attrs["model_file"] = xml
            demo.create_dataset("states", data=np.array(states))
            demo.create_dataset("actions", data=np.array(actions))
            truth.append({"actions": np.array(actions, dtype=np.float32),
                          "eef_pos": np.stack([o["robot0_eef_pos"] for o in seen]),
                          "object": np.stack([o["object-state"] for o in seen]),
                          "image": np.stack([o["agentview_image"][::-1] for o in seen])})
    env.close()
    return path, truth


def test_replayed_robosuite_demo_matches_direct_rollout(robosuite_demo, tmp_path):
    path, truth = robosuite_demo
    summary = convert(path, tmp_path / "o.zarr", f"image_size={CAM_SIZE}", "reward.rule=task")
    assert summary["episodes"] == 2 and summary["transitions"] == sum(STEPS)
    assert summary["successes"] == 1
    ds = ZarrDataset(tmp_path / "o.zarr")
    assert ds.attrs["task"] == "Lift" and ds.attrs["control_freq"] == 20.0
    assert ds.obs_spec["agentview_image"] == {"shape": [CAM_SIZE, CAM_SIZE, 3], "dtype": "uint8", "kind": "rgb"}
    for i, gt in enumerate(truth):
        ep = ds.episode(i)
        np.testing.assert_allclose(ep["action"], gt["actions"], atol=1e-6)
        # observations rendered from the recorded states equal the rollout's (the last one re-simulated by a step)
        # observations rendered from recorded states are exact; the last one is re-simulated from the last state
        # (MuJoCo's solver warm start is not part of the state, hence a small tolerance)
        np.testing.assert_allclose(ep["obs"]["robot0_eef_pos"][:-1], gt["eef_pos"][:-1], atol=1e-6)
        np.testing.assert_allclose(ep["obs"]["object"][:-1], gt["object"][:-1], atol=1e-6)
        np.testing.assert_allclose(ep["obs"]["robot0_eef_pos"][-1], gt["eef_pos"][-1], atol=5e-4)
        np.testing.assert_allclose(ep["obs"]["object"][-1], gt["object"][-1], atol=5e-4)
        diff = np.abs(ep["obs"]["agentview_image"].astype(int) - gt["image"].astype(int))
        assert diff.mean() < 1.0, diff.mean()
        # right side up: the flipped-back frame would differ from the rollout frame
        upside = np.abs(ep["obs"]["agentview_image"][0][::-1].astype(int) - gt["image"][0].astype(int)).mean()
        assert upside > 5.0
        # the env's success check on the replayed states: demo 1 reaches a lifted cube with its last two steps
        expected = [0.0] * STEPS[i] if i == 0 else [0.0] * (STEPS[i] - 2) + [1.0, 1.0]
        assert ep["reward"].tolist() == expected
        assert bool(ep["terminal"][-1]) == (i == 1) and bool(ep["truncated"][-1]) == (i == 0)


def test_replayed_obs_list_joins_rendered_fields(robosuite_demo, tmp_path):
    path, truth = robosuite_demo
    convert(path, tmp_path / "o.zarr", "keys.obs={state:[robot0_eef_pos,object-state]}", "keys.cameras={}")
    ds = ZarrDataset(tmp_path / "o.zarr")
    assert sorted(ds.obs_spec) == ["state"]
    for i, gt in enumerate(truth):
        joined = np.concatenate([gt["eef_pos"], gt["object"]], axis=-1)
        np.testing.assert_allclose(ds.episode(i)["obs"]["state"][:-1], joined[:-1], atol=1e-6)
    with pytest.raises(UserError, match=r"episode demo_1, field robot0_eef_vel: missing \(keys.obs.state\)"):
        convert(path, tmp_path / "x.zarr", "keys.obs={state:[robot0_eef_pos,robot0_eef_vel]}", "keys.cameras={}")

def test_robomimic_hdf5_with_obs(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "low_dim.hdf5"
    truth = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PickPlaceCan", "type": 1,
                                             "env_kwargs": {"control_freq": 20}})
        for i, n in enumerate([3, 5, 4]):
            demo = data.create_group(f"demo_{i * 5}")  # demo_0, demo_5, demo_10: numeric order
            pos = rng.normal(size=(n + 1, 3)).astype(np.float32)
            img = rng.integers(0, 255, size=(n + 1, 10, 10, 3), dtype=np.uint8)
            for group, rows in (("obs", slice(0, n)), ("next_obs", slice(1, n + 1))):
                demo.create_dataset(f"{group}/robot0_eef_pos", data=pos[rows])
                demo.create_dataset(f"{group}/agentview_image", data=img[rows])
            actions = rng.uniform(-1, 1, size=(n, 7))
            demo.create_dataset("actions", data=actions)
            rewards = np.zeros(n)
            rewards[-1] = float(i != 1)
            demo.create_dataset("rewards", data=rewards)
            demo.create_dataset("dones", data=rewards.astype(np.int64))
            truth[i] = (pos, img, actions, bool(i != 1))
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_10"]))
    summary = convert(path, tmp_path / "o.zarr", "keys.cameras={agentview:front_rgb}")
    assert summary["successes"] == 2 and summary["episodes"] == 3
    ds = ZarrDataset(tmp_path / "o.zarr")
    assert sorted(ds.obs_spec) == ["front_rgb", "robot0_eef_pos"] and ds.attrs["task"] == "PickPlaceCan"
    for i in range(3):
        pos, img, actions, success = truth[i]
        ep = ds.episode(i)
        np.testing.assert_array_equal(ep["obs"]["robot0_eef_pos"], pos)
        np.testing.assert_array_equal(ep["obs"]["front_rgb"], img)
        np.testing.assert_allclose(ep["action"], actions, atol=1e-6)
        assert ep["reward"][-1] == float(success) and bool(ep["terminal"][-1]) == success
    summary = convert(path, tmp_path / "f.zarr", "robomimic.filter_key=train", "reward.rule=column",
                      "image_size=[6,8]")
    ds = ZarrDataset(tmp_path / "f.zarr")
    assert summary["episodes"] == 2 and ds.obs_spec["agentview_image"]["shape"] == [6, 8, 3]
    np.testing.assert_array_equal(ds.episode(1)["reward"], [0, 0, 0, 1])
    with h5py.File(path, "a") as f:
        f["data/demo_5/next_obs/robot0_eef_pos"][1, 0] = np.nan
    with pytest.raises(UserError, match=r"episode demo_5, field next_obs/robot0_eef_pos: step 1 disagrees"):
        convert(path, tmp_path / "bad.zarr")
    summary = convert(path, tmp_path / "skip.zarr", "skip_bad=true")
    assert [d["episode"] for d in summary["dropped"]] == ["demo_5"] and summary["episodes"] == 2


def write_split_proprio(path: Path, lengths: tuple[int, ...] = (4, 6)) -> list[dict[str, np.ndarray]]:
    """robomimic HDF5 storing proprioception split like real files (robot0_eef_pos (3), robot0_gripper_qpos (2)) and
    two cameras; returns each demo's (N+1, ...) observations."""
    rng = np.random.default_rng(3)
    truth = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PickPlaceCan", "type": 1, "env_kwargs": {"control_freq": 20}})
        for i, n in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            obs = {"robot0_eef_pos": rng.normal(size=(n + 1, 3)).astype(np.float32),
                   "robot0_gripper_qpos": rng.normal(size=(n + 1, 2)).astype(np.float64),
                   "agentview_image": rng.integers(0, 255, size=(n + 1, 8, 8, 3), dtype=np.uint8),
                   "robot0_eye_in_hand_image": rng.integers(0, 255, size=(n + 1, 8, 8, 3), dtype=np.uint8)}
            for name, values in obs.items():
                demo.create_dataset(f"obs/{name}", data=values[:-1])
                demo.create_dataset(f"next_obs/{name}", data=values[1:])
            demo.create_dataset("actions", data=rng.uniform(-1, 1, size=(n, 7)))
            demo.create_dataset("dones", data=np.eye(n, dtype=np.int64)[-1])
            truth.append(obs)
    return truth


def test_robomimic_obs_list_joins_fields_and_cameras_apply_with_obs(tmp_path):
    path = tmp_path / "split.hdf5"
    truth = write_split_proprio(path)
    convert(path, tmp_path / "o.zarr", "keys.obs={robot_state:[robot0_eef_pos,robot0_gripper_qpos]}",
            "keys.cameras={agentview:agentview_rgb}")
    ds = ZarrDataset(tmp_path / "o.zarr")
    # keys.cameras applies together with keys.obs: the renamed camera is kept, the unnamed one is not selected
    assert sorted(ds.obs_spec) == ["agentview_rgb", "robot_state"]
    assert ds.obs_spec["robot_state"] == {"shape": [5], "dtype": "float32", "kind": "low_dim"}
    for i, gt in enumerate(truth):
        ep = ds.episode(i)
        joined = np.concatenate([gt["robot0_eef_pos"], gt["robot0_gripper_qpos"]], axis=-1).astype(np.float32)
        np.testing.assert_array_equal(ep["obs"]["robot_state"], joined)
        np.testing.assert_array_equal(ep["obs"]["agentview_rgb"], gt["agentview_image"])
    # the list order is the concatenation order; keys.cameras=null keeps every camera under its field name
    convert(path, tmp_path / "r.zarr", "keys.obs={grip_then_pos:[robot0_gripper_qpos,robot0_eef_pos]}")
    ds = ZarrDataset(tmp_path / "r.zarr")
    assert sorted(ds.obs_spec) == ["agentview_image", "grip_then_pos", "robot0_eye_in_hand_image"]
    ep = ds.episode(1)
    np.testing.assert_array_equal(ep["obs"]["grip_then_pos"][:, :2], truth[1]["robot0_gripper_qpos"].astype(np.float32))
    np.testing.assert_array_equal(ep["obs"]["grip_then_pos"][:, 2:], truth[1]["robot0_eef_pos"])
    np.testing.assert_array_equal(ep["obs"]["robot0_eye_in_hand_image"], truth[1]["robot0_eye_in_hand_image"])


def test_robomimic_obs_list_errors_name_the_field(tmp_path):
    path = tmp_path / "split.hdf5"
    write_split_proprio(path)
    missing = r"episode demo_0, field obs/robot0_gripper_pos: missing \(keys.obs.robot_state\); have \[.*'robot0_eef_"
    with pytest.raises(UserError, match=missing):
        convert(path, tmp_path / "a.zarr", "keys.obs={robot_state:[robot0_eef_pos,robot0_gripper_pos]}")
    with pytest.raises(UserError, match=r"keys.obs.robot_state=.*obs/agentview_image holds camera images"):
        convert(path, tmp_path / "b.zarr", "keys.obs={robot_state:[robot0_eef_pos,agentview_image]}")
    with pytest.raises(UserError, match=r"keys.cameras.agentview=.*one key"):
        convert(path, tmp_path / "c.zarr", "keys.cameras={agentview:[a_rgb,b_rgb]}")
    with pytest.raises(UserError, match=r"keys.obs.robot_state=\[\]"):
        convert(path, tmp_path / "d.zarr", "keys.obs={robot_state:[]}")
    with pytest.raises(UserError, match=r"episode demo_0, field obs/wrist_image: keys.cameras names camera 'wrist'"):
        convert(path, tmp_path / "e.zarr", "keys.cameras={wrist:wrist_rgb}")
    assert not list(tmp_path.glob("*.zarr*"))


def test_observation_from_fields_checks_lengths_shapes_and_numbers():
    from calql_robot.datasets.converters.common import observation_from_fields

    arrays = {"a": np.arange(8.0).reshape(4, 2), "b": np.arange(4), "short": np.zeros((3, 1)),
              "cube": np.zeros((4, 2, 2)), "text": np.array(["x", "y", "z", "w"])}
    joined = observation_from_fields("k", ["a", "b"], arrays.get, "ep7")
    np.testing.assert_array_equal(joined, np.concatenate([arrays["a"], arrays["b"][:, None]], axis=-1))
    assert joined.dtype == np.float32
    with pytest.raises(UserError, match=r"episode ep7, field short: 3 rows but a has 4"):
        observation_from_fields("k", ["a", "short"], arrays.get, "ep7")
    with pytest.raises(UserError, match=r"episode ep7, field cube: shape \(2, 2\) cannot be joined"):
        observation_from_fields("k", ["a", "cube"], arrays.get, "ep7")
    with pytest.raises(UserError, match=r"episode ep7, field text: values are not numbers"):
        observation_from_fields("k", ["a", "text"], arrays.get, "ep7")
    with pytest.raises(UserError, match=r"episode ep7, field nope: missing \(keys.obs.k\); have \['a', 'b'\]"):
        observation_from_fields("k", ["a", "nope"], arrays.get, "ep7", have=["b", "a"])


def _replace_with_dataset(f: h5py.File, name: str) -> None:
    del f[name]
    f.create_dataset(name, data=np.zeros((3, 3)))


def _ragged_obs(f: h5py.File) -> None:
    demo = f["data/demo_0"]
    for group in ("obs", "next_obs"):
        del demo[f"{group}/robot0_eef_pos"]
        ragged = demo.create_dataset(f"{group}/robot0_eef_pos", (4,), dtype=h5py.vlen_dtype(np.float32))
        for row, size in enumerate((3, 2, 3, 3)):
            ragged[row] = np.zeros(size, dtype=np.float32)


BROKEN_HDF5 = {
    "env_args not JSON": (lambda f: f["data"].attrs.__setitem__("env_args", "{not json"),
                          r"attribute data.env_args is not valid JSON"),
    "env_args a list": (lambda f: f["data"].attrs.__setitem__("env_args", "[1]"),
                        r"attribute data.env_args is '\[1\]'; expected a JSON object"),
    "obs a dataset": (lambda f: _replace_with_dataset(f, "data/demo_0/obs"),
                      r"^episode demo_0, field obs: is an HDF5 Dataset; expected a group"),
    "next_obs a dataset": (lambda f: _replace_with_dataset(f, "data/demo_0/next_obs"),
                           r"^episode demo_0, field next_obs: is an HDF5 Dataset; expected a group"),
    "ragged vlen obs": (_ragged_obs, r"^episode demo_0, field obs/robot0_eef_pos: dtype object is not numeric"),
    "actions a group": (lambda f: (f["data/demo_0"].__delitem__("actions"), f["data/demo_0"].create_group("actions")),
                        r"^episode demo_0, field actions: is an HDF5 Group; expected a dataset of numbers"),
    "dones 2-D": (lambda f: (f["data/demo_0"].__delitem__("dones"),
                             f["data/demo_0"].create_dataset("dones", data=np.zeros((4, 2)))),
                  r"^episode demo_0, field dones: shape \(4, 2\); expected one value per step"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_HDF5))
def test_robomimic_broken_files_are_named(tmp_path, case):
    """Issue 11, item 12: each of these gave a traceback; now one paragraph naming the attribute or the demo and
    field, and no output."""
    path = tmp_path / "split.hdf5"
    write_split_proprio(path)
    breaker, message = BROKEN_HDF5[case]
    with h5py.File(path, "a") as f:
        breaker(f)
    with pytest.raises(UserError, match=message) as info:
        convert(path, tmp_path / "o.zarr", "keys.cameras={}")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("o.zarr*"))


def test_short_reward_column_names_the_field_and_config_errors_blame_no_episode(tmp_path):
    path = tmp_path / "split.hdf5"
    write_split_proprio(path)
    with h5py.File(path, "a") as f:
        f["data/demo_0"].create_dataset("rewards", data=np.zeros(1))
    with pytest.raises(UserError, match=r"^episode demo_0, field rewards: 1 rewards for 4 steps"):
        convert(path, tmp_path / "o.zarr", "reward.rule=column")
    # a list joining an image field is a config error: no 'episode demo_0:' prefix, no skip_bad hint
    with pytest.raises(UserError) as info:
        convert(path, tmp_path / "b.zarr", "keys.obs={robot_state:[robot0_eef_pos,agentview_image]}", "skip_bad=true")
    assert str(info.value).startswith("keys.obs.robot_state=") and "skip_bad" not in str(info.value)
    assert not list(tmp_path.glob("*.zarr*"))
