"""RobotEnv over safe robots: rewards from the env / human labels / both, pause, abort, e-stop, terminal keys, and
the pick-and-place simulation behind RobotInterface."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from calql_robot.envs.robot import human
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.robot_env import RobotEnv, make_robot_env
from calql_robot.envs.robot.safety import make_safe_robot
from calql_robot.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "robot"
POINT_SAFETY = {"workspace": {"low": [-0.3, -0.3, 0.05], "high": [0.3, 0.3, 0.6]}, "max_delta_per_step": 1.0,
                "watchdog_timeout_s": 0.5}
RESET_DONE = {"step": "reset", "event": "reset_done"}


def point_env(events: list[dict], horizon: int = 20, reward_source: str = "env", **kwargs) -> tuple[RobotEnv,
                                                                                                     PointRobot]:
    robot = PointRobot(control_hz=20.0, image_size=16)
    env = RobotEnv(make_safe_robot(robot, POINT_SAFETY), horizon=horizon, control_hz=20.0,
                   events=human.ScriptedEvents(events), reward_source=reward_source, wait_for_reset_done=True,
                   reset_timeout_s=2.0, **kwargs)
    return env, robot


def toward_goal(obs: dict[str, np.ndarray], goal: np.ndarray) -> np.ndarray:
    delta = (goal - obs["robot_state"][:3]) / 0.05
    return np.append(np.clip(delta, -1, 1), 0.0).astype(np.float32)


def test_env_reward_reaches_goal_and_terminates() -> None:
    env, robot = point_env([RESET_DONE])
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and not info["aborted"]
    for _ in range(env.horizon):
        obs, reward, terminated, truncated, info = env.step(toward_goal(obs, robot.goal))
        assert env.observation_space.contains(obs)
        if terminated or truncated:
            break
    assert terminated and not truncated and info["success"] and reward == 1.0
    assert 2 <= env.step_count <= 5  # 0.1 m per axis at 5 cm per step: two steps plus timing slack
    assert np.linalg.norm(robot.position() - robot.goal) <= robot.goal_tolerance
    assert info["action_sent"].shape == (4,) and isinstance(info["overruns"], int)
    env.close()
    assert not robot.is_connected


def test_human_labels_decide_reward_and_termination() -> None:
    events = [RESET_DONE, {"episode": 0, "step": 2, "event": "success"}, {"episode": 1, "step": 1, "event": "failure"}]
    env, _ = point_env(events, reward_source="human", reward_success=5.0, reward_failure=-1.0)
    results = []
    for _ in range(3):
        env.reset()
        for _ in range(env.horizon):
            _, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
            if terminated or truncated:
                results.append((env.step_count, reward, terminated, truncated, info["success"], info["failure"]))
                break
    env.close()
    assert results[0] == (3, 5.0, True, False, True, False)
    assert results[1] == (2, -1.0, True, False, False, True)
    assert results[2] == (env.horizon, -1.0, False, True, False, False)  # no label: truncated at the horizon


def test_both_rewards_label_overrides_env() -> None:
    env, robot = point_env([RESET_DONE, {"step": 0, "event": "failure"}], reward_source="both")
    obs, _ = env.reset()
    _, reward, terminated, _, info = env.step(toward_goal(obs, robot.goal))
    assert reward == 0.0 and terminated and info["failure"] and info["label"] == "failure"
    env.close()


def test_both_failure_label_overrides_robot_success() -> None:
    """Robot reports success, the human says failure: reward, success and failure all follow the label."""
    env, robot = point_env([RESET_DONE], reward_source="both")
    obs, _ = env.reset()
    for _ in range(env.horizon):  # reach the goal without a label first: the robot's success decides
        obs, reward, terminated, truncated, info = env.step(toward_goal(obs, robot.goal))
        if terminated or truncated:
            break
    assert info["success"] and reward == 1.0 and terminated
    env.events = human.ScriptedEvents([RESET_DONE, {"step": 0, "event": "failure"}])
    obs, _ = env.reset()
    robot.goal = robot.position()  # the robot already sits on its goal: it reports success on the first step
    _, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
    assert info["label"] == "failure" and not info["success"] and info["failure"] and reward == 0.0 and terminated
    env.close()


def test_env_source_ignores_labels_for_reward_but_cuts_episode() -> None:
    env, _ = point_env([RESET_DONE, {"step": 1, "event": "success"}], reward_source="env")
    env.reset()
    env.step(np.zeros(4, np.float32))
    _, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert reward == 0.0 and not terminated and truncated and not info["success"]
    env.close()


def test_pause_stops_robot_and_resumes() -> None:
    env, robot = point_env([RESET_DONE, {"step": 1, "event": "pause", "duration_s": 0.3}])
    env.reset()
    env.step(np.array([0.5, 0, 0, 0], np.float32))
    t_before = time.monotonic()
    _, _, _, _, info = env.step(np.array([0.5, 0, 0, 0], np.float32))
    assert info["paused_s"] >= 0.25 and time.monotonic() - t_before >= 0.25
    assert np.all(robot.velocity == 0) and not env.paused
    env.step(np.array([0.5, 0, 0, 0], np.float32))
    assert robot.velocity[0] > 0
    env.close()


def test_abort_and_estop_truncate_and_refuse_motion() -> None:
    env, robot = point_env([RESET_DONE, {"episode": 0, "step": 1, "event": "estop"},
                            {"episode": 1, "step": 0, "event": "abort"}])
    env.reset()
    env.step(np.array([1.0, 0, 0, 0], np.float32))
    _, _, terminated, truncated, info = env.step(np.array([1.0, 0, 0, 0], np.float32))
    assert truncated and not terminated and info["estop"] and np.all(robot.velocity == 0)
    assert any(e["kind"] == "estop" for e in info["safety_events"])
    n = len(robot.command_log)
    env.step(np.array([1.0, 0, 0, 0], np.float32))
    assert len(robot.command_log) == n
    with pytest.raises(UserError, match="e-stop is latched"):
        env.reset()
    env._handle([human.HumanEvent(human.CLEAR_ESTOP, "test")])
    _, reset_info = env.reset()
    assert "estop_cleared" in [e["kind"] for e in reset_info["safety_events"]]
    _, _, _, truncated, info = env.step(np.array([1.0, 0, 0, 0], np.float32))
    assert truncated and info["aborted"] and env.aborted and np.all(robot.velocity == 0)
    env.close()


def test_nonfinite_action_is_reported_in_info() -> None:
    env, robot = point_env([RESET_DONE])
    env.reset()
    _, _, _, _, info = env.step(np.array([np.nan, 0, 0, 0], np.float32))
    assert [e["kind"] for e in info["safety_events"]] == ["nonfinite"]
    assert len(robot.command_log) == 0 and np.all(info["action_sent"] == 0)
    env.close()


def test_reset_waits_for_reset_done() -> None:
    env, _ = point_env([])
    env.reset_timeout_s = 0.2
    with pytest.raises(UserError, match="reset done"):
        env.reset()
    env.close()


def test_terminal_keys_from_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        source = human.TerminalEvents(stream=stream, echo_help=False)
        os.write(write_fd, b"sF rx p\nqc")
        deadline, kinds = time.monotonic() + 2.0, []
        while len(kinds) < 8 and time.monotonic() < deadline:
            kinds += [e.kind for e in source.poll(0, 0)]
            time.sleep(0.01)
        source.close()
    os.close(write_fd)
    assert kinds == ["success", "failure", "estop", "reset_done", "estop", "pause", "abort", "clear_estop"]


def test_scripted_events_validation() -> None:
    with pytest.raises(UserError, match=r"events\[0\]\.event"):
        human.ScriptedEvents([{"step": 1, "event": "explode"}])
    with pytest.raises(UserError, match=r"events\[0\]\.step"):
        human.ScriptedEvents([{"step": -3, "event": "success"}])
    source = human.ScriptedEvents([{"episode": 1, "step": 2, "event": "success"}])
    assert source.poll(0, 2) == [] and [e.kind for e in source.poll(1, 2)] == ["success"] and source.poll(1, 2) == []


def test_sim_robot_env_episode_keeps_workspace() -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "sim.yaml"))
    env = make_robot_env(cfg, horizon=12, events=human.ScriptedEvents([RESET_DONE]))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and obs["agentview_rgb"].shape == (64, 64, 3)
    low_z = cfg["safety"]["workspace"]["low"][2]
    kinds: list[str] = []
    for _ in range(12):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0, -1.0, -1.0], np.float32))
        kinds += [e["kind"] for e in info["safety_events"]]
        assert obs["robot_state"][2] >= low_z - 0.01 and reward == 0.0 and not info["success"]
        if terminated or truncated:
            break
    assert truncated and env.step_count == 12 and "workspace" in kinds
    assert info["action_sent"][2] > -1.0  # the downward command was shrunk at the table
    env.close()


def test_make_robot_env_from_omegaconf_point_config() -> None:
    cfg = OmegaConf.load(CONFIGS / "point.yaml")  # a DictConfig, as the deploy app passes it
    cfg.safety.max_delta_per_step = [0.5, 0.5, 0.5, 1.0]
    env = make_robot_env(cfg, horizon=3, events=human.ScriptedEvents(None))
    assert env.rate.period_s == pytest.approx(1.0 / cfg.safety.control_hz)
    obs, _ = env.reset()
    assert set(obs) == {"robot_state", "agentview_rgb"} and env.observation_space.contains(obs)
    _, _, _, _, info = env.step(np.ones(4, np.float32))
    np.testing.assert_allclose(info["action_sent"], [0.5, 0.5, 0.5, 1.0])  # per-dimension rate limit from hold
    env.close()


def test_bad_driver_argument_is_a_user_error_naming_the_driver() -> None:
    from calql_robot.envs.robot.robot_env import build_robot

    cfg = OmegaConf.load(CONFIGS / "point.yaml")
    cfg.driver.home_pose = "abc"  # the driver's constructor fails inside hydra's instantiate
    with pytest.raises(UserError, match=r"robot\.driver could not be built \(.*PointRobot\).*could not convert"):
        build_robot(cfg)
