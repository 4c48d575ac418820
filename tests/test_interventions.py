"""Interventions: devices' mappings, the data/intervention store extension, the demonstration side of the buffer,
and human actions going through the same safety layers as the policy's (a fuzzed human stays in the workspace)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from calql_robot.datasets.format import DatasetWriter, ZarrDataset
from calql_robot.deployment.interventions import InterventionStats
from calql_robot.envs.robot.interface import ActionSpec
from calql_robot.envs.robot.robot_env import build_robot, make_robot_env
from calql_robot.envs.robot.teleop import FirstEpisodes, InterventionDevice, TeleopMapping, make_intervention_device
from calql_robot.envs.robot.teleop.gamepad import stick_translation
from calql_robot.envs.robot.teleop.keyboard import KeyboardIntervention
from calql_robot.envs.robot.teleop.spacemouse import puck_command
from calql_robot.errors import UserError
from calql_robot.training.replay import ReplayBuffer, RewardTransform

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "robot"
SIM_SPEC = ActionSpec.create(4, -1.0, 1.0, ee_obs_key="robot_state", ee_delta_scale=0.05)


def test_teleop_mapping_scales_translation_and_sets_the_gripper() -> None:
    mapping = TeleopMapping.from_cfg(SIM_SPEC, {"speed": 0.5})
    assert mapping.gripper_index == 3  # the last non-translation dimension
    np.testing.assert_allclose(mapping.action(np.array([1.0, -1.0, 0.0]), True), [0.5, -0.5, 0.0, 1.0])
    np.testing.assert_allclose(mapping.action(np.array([9.0, 0.0, -9.0]), False), [0.5, 0.0, -0.5, -1.0])
    with pytest.raises(UserError, match=r"deploy.intervention.speed"):
        TeleopMapping.from_cfg(SIM_SPEC, {"speed": 2})
    with pytest.raises(UserError, match=r"gripper_index"):
        TeleopMapping.from_cfg(SIM_SPEC, {"gripper_index": 1})  # a translation dimension


def test_keyboard_state_holds_to_take_over_and_latches_the_gripper() -> None:
    device = KeyboardIntervention(TeleopMapping.from_cfg(SIM_SPEC, {"speed": 1.0}), listen=False)
    obs, policy = {}, np.zeros(4, np.float32)
    assert device.action(obs, policy, 0) is None  # nothing held: the policy acts
    for key in ("up", "left", "e", "z"):
        device.state.press(key)
    assert device.action(obs, policy, 1) is None  # axes alone do not take over
    device.state.press("i")
    np.testing.assert_allclose(device.action(obs, policy, 2), [1.0, 1.0, 1.0, 1.0])
    device.state.release("z")  # the gripper stays closed after its key is released
    device.state.press("down")
    np.testing.assert_allclose(device.action(obs, policy, 3), [0.0, 1.0, 1.0, 1.0])
    device.state.release("i")
    assert device.action(obs, policy, 4) is None


def test_gamepad_and_spacemouse_commands() -> None:
    np.testing.assert_allclose(stick_translation(-1.0, 0.05, 0.5, deadzone=0.1), [1.0, 0.0, -0.5])
    takeover, move, closed = puck_command(0.02, 0.0, 0.0, [0, 0], deadzone=0.05, gripper_closed=False)
    assert not takeover and not closed and not move.any()
    takeover, move, closed = puck_command(0.3, -0.2, 0.0, [1, 0], deadzone=0.05, gripper_closed=False)
    assert takeover and closed and move.tolist() == pytest.approx([0.3, -0.2, 0.0])


def test_device_factory_refuses_bad_values_and_missing_hardware(monkeypatch) -> None:
    with pytest.raises(UserError, match=r"deploy.intervention.kind is 'joystick'.*none \| keyboard"):
        make_intervention_device({"kind": "joystick"}, SIM_SPEC)
    with pytest.raises(UserError, match=r"deploy.intervention.episodes"):
        make_intervention_device({"kind": "scripted", "episodes": -1}, SIM_SPEC)
    with pytest.raises(UserError, match=r"scripted has unknown keys \['after'\]"):
        make_intervention_device({"kind": "scripted", "scripted": {"after": 3}}, SIM_SPEC)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    for kind, needle in (("keyboard", "pynput"), ("gamepad", "gamepad"), ("spacemouse", "SpaceMouse|spacemouse")):
        with pytest.raises(UserError, match=needle):  # no display / joystick / HID device on this machine
            make_intervention_device({"kind": kind}, SIM_SPEC)


def test_intervention_flags_round_trip_through_the_store(tmp_path: Path) -> None:
    spec = {"state": {"shape": [2], "dtype": "float32", "kind": "low_dim"}}
    common = dict(obs_spec=spec, action_low=[-1.0], action_high=[1.0], task="t", control_freq=10.0,
                  reward_success=1.0, reward_failure=0.0)
    episode = dict(observations={"state": np.zeros((4, 2), np.float32)}, actions=np.zeros((3, 1), np.float32),
                   rewards=np.zeros(3, np.float32), terminals=np.zeros(3, bool), truncations=np.array([0, 0, 1], bool))
    with DatasetWriter.create(tmp_path / "hil.zarr", step_extensions=("intervention",), **common) as writer:
        writer.add_episode(**episode, interventions=np.array([False, True, True]))
        writer.add_episode(**episode)  # no flags given: all False
    store = ZarrDataset(tmp_path / "hil.zarr", verify=True)
    assert store.episode(0)["intervention"].tolist() == [False, True, True]
    assert store.arrays()["intervention"].tolist() == [False, True, True, False, False, False]
    with DatasetWriter.create(tmp_path / "plain.zarr", **common) as writer:
        with pytest.raises(UserError, match=r"no data/intervention array"):
            writer.add_episode(**episode, interventions=np.array([True, False, False]))
        writer.add_episode(**episode)
    assert "intervention" not in ZarrDataset(tmp_path / "plain.zarr").episode(0)
    with pytest.raises(UserError, match=r"unknown step_extensions \['human'\]"):
        DatasetWriter.create(tmp_path / "bad.zarr", step_extensions=("human",), **common)
    assert not (tmp_path / "bad.zarr").exists()


def test_demo_side_keeps_only_intervention_steps_with_whole_episode_returns() -> None:
    spec = {"state": {"shape": [1], "dtype": "float32"}}
    transform = RewardTransform(scale=1.0, bias=0.0, gamma=0.5, sparse=False, failure_reward=0.0)
    full, demo = ReplayBuffer(spec, 1, transform), ReplayBuffer(spec, 1, transform)
    obs = {"state": np.arange(5, dtype=np.float32).reshape(5, 1)}
    args = (obs, np.arange(4, dtype=np.float32).reshape(4, 1), np.array([0, 0, 0, 1], np.float32),
            np.array([0, 0, 0, 1], bool))
    returns = full.add_episode(*args)
    demo.add_episode(*args, keep=np.array([False, False, True, True]))
    assert len(demo) == 2
    batch = demo.get(np.arange(2))
    np.testing.assert_allclose(batch["mc_return"], returns[2:])  # returns of the whole episode, not of the kept part
    np.testing.assert_allclose(batch["obs"]["state"][:, 0], [2, 3])
    np.testing.assert_allclose(batch["next_obs"]["state"][:, 0], [3, 4])


def test_stats_split_success_by_intervention() -> None:
    stats = InterventionStats()
    row = stats.episode({"actions": np.zeros((4, 1)), "interventions": np.array([0, 1, 1, 0], bool), "success": True})
    assert row["intervention_steps"] == 2 and row["intervention_rate"] == 0.5
    assert row["success_rate_with_intervention"] == 1.0 and np.isnan(row["success_rate_without_intervention"])
    row = stats.episode({"actions": np.zeros((2, 1)), "success": False})
    assert row["intervention_steps"] == 0 and row["success_rate_without_intervention"] == 0.0
    restored = InterventionStats()
    restored.restore(stats.state())
    assert restored.counts == {"with": [1, 1], "without": [1, 0]}


class FuzzedHuman(InterventionDevice):
    """A hostile "person": huge, NaN and infinite commands, always taking over after the first steps."""

    name = "fuzz"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def action(self, obs, policy_action, step):
        if step < 2:
            return None
        command = self.rng.uniform(-50.0, 50.0, 4)
        if step % 7 == 0:
            command[self.rng.integers(4)] = self.rng.choice([np.nan, np.inf, -np.inf])
        return command


def test_fuzzed_human_actions_go_through_the_safety_layers_on_the_sim() -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "sim.yaml"))
    cfg["driver"]["image_size"] = 32
    low, high = (np.asarray(cfg["safety"]["workspace"][k]) for k in ("low", "high"))
    env = make_robot_env(cfg, horizon=20, robot=build_robot(cfg), intervention=FuzzedHuman(0))
    try:
        obs, _ = env.reset(seed=0)
        flags, positions = [], []
        for _ in range(20):
            obs, _, terminated, truncated, info = env.step(np.zeros(4, np.float32))
            flags.append(info["intervention"])
            sent = info["action_sent"]
            assert np.all(np.isfinite(sent)) and np.all(np.abs(sent) <= 1.0)  # clipped / refused, never NaN
            assert np.array_equal(info["policy_action"], np.zeros(4))
            positions.append(obs["robot_state"][:3].copy())
            if terminated or truncated:
                break
    finally:
        env.close()
    assert flags[:2] == [False, False] and all(flags[2:])
    positions = np.array(positions)
    assert np.all(positions >= low - 0.01) and np.all(positions <= high + 0.01), (positions.min(0), positions.max(0))
    assert np.ptp(positions, axis=0).max() > 0.05  # the fuzzed human did move the arm


def test_first_episodes_limits_the_device() -> None:
    class Always(InterventionDevice):
        def action(self, obs, policy_action, step):
            return np.ones(4, np.float32)

    device = FirstEpisodes(Always(), 1)
    device.start_episode(0, robot=None)  # type: ignore[arg-type]
    assert device.action({}, np.zeros(4), 0) is not None
    device.start_episode(1, robot=None)  # type: ignore[arg-type]
    assert device.action({}, np.zeros(4), 0) is None
