"""Safety layers: fuzzed action streams never leave the bounds, the watchdog stops a silent robot in time, e-stop
latches, real robot configs without a workspace are refused."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from calql_robot.envs.robot.interface import find_wrapper
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.robot_env import build_robot
from calql_robot.envs.robot.safety import ControlRate, EStop, Watchdog, make_safe_robot, validate_safety_cfg
from calql_robot.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "robot"
BOX_LOW, BOX_HIGH = np.array([-0.2, -0.15, 0.1]), np.array([0.25, 0.2, 0.45])
MAX_DELTA = 0.4
EPS = 1e-6


class StepClock:
    """Deterministic time source: the test advances it by exactly one control period per step."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def fuzz_action(rng: np.random.Generator) -> np.ndarray:
    """A hostile action: huge, tiny, at the bounds, NaN, +-inf, or the wrong shape."""
    choice = rng.integers(8)
    if choice == 0:
        return rng.normal(0.0, 50.0, 4)
    if choice == 1:
        a = rng.uniform(-1, 1, 4)
        a[rng.integers(4)] = rng.choice([np.nan, np.inf, -np.inf])
        return a
    if choice == 2:
        return rng.choice([-1.0, 1.0], 4) * rng.choice([1.0, 1e30])
    if choice == 3:
        return rng.uniform(-1, 1, int(rng.choice([0, 3, 5])))
    return rng.uniform(-1.5, 1.5, 4)


@pytest.mark.parametrize("seed_block", range(4))
def test_fuzzed_actions_never_leave_bounds(seed_block: int) -> None:
    spec_checked = 0
    for seed in range(seed_block * 50, seed_block * 50 + 50):
        rng = np.random.default_rng(seed)
        clock = StepClock()
        robot = PointRobot(control_hz=20.0, ee_delta_scale=0.05, clock=clock,
                           home_pose=rng.uniform(BOX_LOW, BOX_HIGH))
        safe = make_safe_robot(robot, {"workspace": {"low": BOX_LOW, "high": BOX_HIGH},
                                       "max_delta_per_step": MAX_DELTA, "watchdog_timeout_s": 5.0})
        with safe:
            safe.home()
            reference = np.zeros(4, np.float32)  # last command actually sent, or hold after a refusal
            for _ in range(150):
                n_before = len(robot.command_log)
                returned = safe.send_action(fuzz_action(rng))
                refused = any(e.kind == "nonfinite" for e in safe.drain_safety_events())
                assert np.all(np.isfinite(returned)) and returned.shape == (4,)
                if refused:
                    assert len(robot.command_log) == n_before, "a refused action reached the robot"
                    np.testing.assert_array_equal(returned, np.zeros(4))
                    reference = np.zeros(4, np.float32)
                else:
                    t, sent, eef = robot.command_log[-1]
                    assert len(robot.command_log) == n_before + 1
                    np.testing.assert_array_equal(sent, returned)
                    assert np.all(sent >= -1.0) and np.all(sent <= 1.0)
                    target = eef + sent[:3].astype(np.float64) * 0.05
                    assert np.all(target >= BOX_LOW - EPS) and np.all(target <= BOX_HIGH + EPS), target
                    assert abs(sent[3] - reference[3]) <= MAX_DELTA + EPS  # gripper: rate limit only
                    on_face = (np.abs(target - BOX_LOW) < EPS) | (np.abs(target - BOX_HIGH) < EPS)
                    within_rate = np.abs(sent[:3] - reference[:3]) <= MAX_DELTA + EPS
                    assert np.all(within_rate | on_face)
                    reference = sent.copy()
                    spec_checked += 1
                clock.t += 1.0 / 20.0
                pos = robot.position()
                assert np.all(pos >= BOX_LOW - EPS) and np.all(pos <= BOX_HIGH + EPS), pos
    assert spec_checked > 50 * 150 // 2  # most steps sent something, so the checks above really ran


def test_watchdog_stops_within_two_control_periods() -> None:
    period = 1.0 / 20.0
    for trial in range(4):
        robot = PointRobot(control_hz=20.0)
        safe = make_safe_robot(robot, {"watchdog_timeout_s": period})
        watchdog = find_wrapper(safe, Watchdog)
        with safe:
            safe.home()
            for _ in range(5):
                safe.send_action(np.array([0.5, 0.0, 0.0, 0.0]))
                time.sleep(period / 2)
            last_command = robot.command_log[-1][0]
            assert np.linalg.norm(robot.velocity) > 0
            time.sleep(4 * period)
            stops_after = [t for t in robot.stop_times if t > last_command]
            assert stops_after, f"trial {trial}: the watchdog never stopped the robot"
            assert stops_after[0] - last_command <= 2 * period, stops_after[0] - last_command
            assert np.all(robot.velocity == 0)
            assert watchdog.trips == 1 and watchdog.last_trip_silence_s <= 2 * period
            held = robot.position()
            time.sleep(period)
            np.testing.assert_allclose(robot.position(), held)
            assert any(e.kind == "watchdog" for e in safe.drain_safety_events())


def test_watchdog_quiet_while_commands_flow() -> None:
    robot = PointRobot(control_hz=20.0)
    safe = make_safe_robot(robot, {"watchdog_timeout_s": 0.2})
    with safe:
        safe.home()
        rate = ControlRate(20.0)
        for _ in range(10):
            safe.send_action(np.array([0.1, 0.0, 0.0, 0.0]))
            rate.sleep()
        assert find_wrapper(safe, Watchdog).trips == 0
        assert not robot.stop_times or robot.stop_times[-1] < robot.command_log[0][0]


def test_estop_latches_until_cleared() -> None:
    robot = PointRobot()
    safe = make_safe_robot(robot, {"workspace": {"low": [-1, -1, 0], "high": [1, 1, 1]}})
    estop = find_wrapper(safe, EStop)
    with safe:
        safe.home()
        safe.send_action(np.array([1.0, 0, 0, 0]))
        estop.trigger("test")
        assert np.all(robot.velocity == 0)
        n = len(robot.command_log)
        for _ in range(3):
            np.testing.assert_array_equal(safe.send_action(np.array([1.0, 1.0, 1.0, 1.0])), np.zeros(4))
        assert len(robot.command_log) == n and estop.refused == 3
        with pytest.raises(UserError, match="e-stop is latched"):
            safe.home()
        estop.clear()
        safe.send_action(np.array([1.0, 0, 0, 0]))
        assert len(robot.command_log) == n + 1 and robot.velocity[0] > 0
        kinds = [e.kind for e in safe.drain_safety_events()]
        assert "estop" in kinds and "estop_cleared" in kinds


def test_raw_robot_rejects_nonfinite_and_guard_stops() -> None:
    robot = PointRobot()
    with robot:
        robot.home()
        with pytest.raises(UserError, match="non-finite"):
            robot.send_action(np.array([np.nan, 0, 0, 0]))
        safe = make_safe_robot(robot, {})
        safe.send_action(np.array([1.0, 0, 0, 0]))
        safe.send_action(np.array([np.inf, 0, 0, 0]))
        assert np.all(robot.velocity == 0)
        assert [e.kind for e in safe.drain_safety_events()] == ["nonfinite"]


def test_real_robot_without_workspace_refuses_to_start() -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "lab_template.yaml"))
    with pytest.raises(UserError, match=r"robot\.safety\.workspace"):
        build_robot(cfg, "robot")
    with pytest.raises(UserError, match=r"robot\.safety\.workspace"):
        make_safe_robot(PointRobot(), {"real_robot": True, "watchdog_timeout_s": 0.5, "control_hz": 10})
    with pytest.raises(UserError, match="workspace"):
        validate_safety_cfg({"workspace": {"low": [0, 0, 1], "high": [1, 1, 0]}})
    ok = validate_safety_cfg({"real_robot": True, "workspace": {"low": [0, 0, 0], "high": [1, 1, 1]},
                              "watchdog_timeout_s": 0.5, "control_hz": 10})
    assert ok["real_robot"] and ok["workspace"]["high"].tolist() == [1, 1, 1]


@pytest.mark.parametrize("name", ["sim", "point", "lab_template"])
def test_robot_configs_state_every_safety_key(name: str) -> None:
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    keys = {"action_clip", "workspace", "max_delta_per_step", "control_hz", "watchdog_timeout_s", "estop",
            "real_robot"}
    assert keys <= set(cfg.safety.keys())
    assert cfg.driver._target_
    assert cfg.safety.real_robot == (name == "lab_template")


def test_control_rate_holds_period_and_reports_overruns() -> None:
    rate = ControlRate(50.0)
    start = time.monotonic()
    for _ in range(10):
        rate.sleep()
    assert time.monotonic() - start >= 9 * 0.02
    late = ControlRate(50.0)
    late.reset()
    overruns = []
    for _ in range(5):
        time.sleep(0.035)
        overruns.append(late.sleep())
    assert late.overruns == 5 and all(o > 0.01 for o in overruns)
    assert late.max_overrun_s == pytest.approx(max(overruns))


def test_robot_server_refuses_lab_template_without_traceback() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "calql_robot.robot_server", "robot=lab_template", "port=5999"],
                          cwd=CONFIGS.parent.parent, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "robot.safety.workspace" in done.stderr and "Traceback" not in done.stderr
