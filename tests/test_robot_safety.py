"""Safety layers: fuzzed action streams never leave the bounds, the watchdog stops a silent robot in time, e-stop
latches, real robot configs without a workspace are refused, reset targets outside the box and ill-typed safety keys
are refused with a UserError naming the key (issue 11, items 3 and 10). Pauses on velocity robots:
tests/test_workspace_fuzz.py."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from calql_robot.envs.robot.interface import ActionSpec, find_wrapper
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.robot_env import build_robot
from calql_robot.envs.robot.safety import ControlRate, EStop, Watchdog, make_safe_robot, validate_safety_cfg
from calql_robot.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "robot"
BOX_LOW, BOX_HIGH = np.array([-0.2, -0.15, 0.1]), np.array([0.25, 0.2, 0.45])
MAX_DELTA = 0.4
EPS = 1e-6
STOP_LATENCY_S = 0.05  # the default robot.safety.stop_latency_s


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
                action = fuzz_action(rng)
                returned = safe.send_action(action)
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
                    # PointRobot is velocity-commanded: the velocity toward a face needs >= 2 periods + stop latency
                    reach = eef + sent[:3].astype(np.float64) * 0.05 * (2.0 + STOP_LATENCY_S * 20.0)
                    assert np.all(reach >= BOX_LOW - EPS) and np.all(reach <= BOX_HIGH + EPS), reach
                    rate_limited = np.clip(np.clip(np.asarray(action, np.float32), -1, 1), reference - MAX_DELTA,
                                           reference + MAX_DELTA)
                    assert abs(sent[3] - rate_limited[3]) <= EPS  # gripper: clip and rate limit only
                    as_rate_limited = np.abs(sent[:3] - rate_limited[:3]) <= EPS
                    shrunk_by_workspace = (sent[:3] * rate_limited[:3] >= 0) & (np.abs(sent[:3]) < np.abs(
                        rate_limited[:3]))
                    assert np.all(as_rate_limited | shrunk_by_workspace), (sent, rate_limited)
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
            trips_before = watchdog.trips  # a loaded machine may oversleep period / 2 above: a legitimate trip
            assert np.linalg.norm(robot.velocity) > 0
            time.sleep(4 * period)
            stops_after = [t for t in robot.stop_times if t > last_command]
            assert stops_after, f"trial {trial}: the watchdog never stopped the robot"
            assert stops_after[0] - last_command <= 2 * period, stops_after[0] - last_command
            assert np.all(robot.velocity == 0)
            assert watchdog.trips == trips_before + 1 and watchdog.last_trip_silence_s <= 2 * period
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
    safe = make_safe_robot(robot, {"workspace": {"low": [-1, -1, 0], "high": [1, 1, 1]}, "watchdog_timeout_s": 5.0})
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


def point_cfg(**driver: object) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "point.yaml"))
    cfg["driver"].update(driver)
    return cfg


def test_issue11_home_pose_outside_workspace_refused_at_build() -> None:
    """Issue 11 item 3: robot.driver.home_pose=[0.9,0.9,0.9] with a +-0.3 box homed outside the box."""
    with pytest.raises(UserError, match=r"robot\.driver\.home_pose = \[0\.9, 0\.9, 0\.9\].*robot\.safety\.workspace "
                       r"low=\[-0\.3, -0\.3, 0\.05\] high=\[0\.3, 0\.3, 0\.6\]"):
        build_robot(point_cfg(home_pose=[0.9, 0.9, 0.9]), "robot")
    robot = PointRobot(home_pose=(0.0, 0.0, 0.7))  # beyond the box top only
    with pytest.raises(UserError, match=r"robot\.driver\.home_pose"):
        make_safe_robot(robot, {"workspace": {"low": BOX_LOW, "high": BOX_HIGH}, "watchdog_timeout_s": 0.5})
    assert not robot.command_log and not robot.is_connected  # refused before anything moved
    safe = build_robot(point_cfg(home_pose=[0.3, -0.3, 0.6]), "robot")  # on the box corner: fine
    with safe:
        safe.home()
        np.testing.assert_array_equal(safe.send_action(np.zeros(4)), np.zeros(4))  # hold is sent as hold


class JointHomedPointRobot(PointRobot):
    """A robot that homes in joint space: it declares no reset target, so only the reached pose can be checked."""

    def reset_targets(self) -> dict[str, np.ndarray]:
        return {}


def test_home_that_reaches_outside_the_box_is_refused() -> None:
    robot = JointHomedPointRobot(home_pose=(0.0, 0.0, 0.9))
    safe = make_safe_robot(robot, {"workspace": {"low": BOX_LOW, "high": BOX_HIGH}, "watchdog_timeout_s": 0.5},
                           "robot.safety")
    with safe:
        with pytest.raises(UserError, match=r"after home\(\).*outside the workspace box.*robot\.driver\.home_pose"):
            safe.home()
        assert robot.stop_times and np.all(robot.velocity == 0) and not robot.command_log


def test_measured_exit_stops_robot_and_allows_only_the_way_back() -> None:
    clock = StepClock()
    robot = PointRobot(control_hz=20.0, home_pose=(0.0, 0.0, 0.4), clock=clock)
    safe = make_safe_robot(robot, {"workspace": {"low": BOX_LOW, "high": BOX_HIGH}, "watchdog_timeout_s": 5.0})
    with safe:
        safe.home()
        robot.send_action(np.array([0.0, 0.0, 1.0, 0.0]))  # behind the safety layers' back (a drifting driver)
        clock.t += 0.2
        assert robot.position()[2] > BOX_HIGH[2] + 0.1
        n_stops = len(robot.stop_times)
        sent = safe.send_action(np.array([0.5, 0.0, 1.0, 0.0]))
        assert len(robot.stop_times) == n_stops + 1 and sent[2] == 0.0 and sent[0] > 0  # no further up
        assert [e.kind for e in safe.drain_safety_events()].count("workspace_exit") == 1
        sent = safe.send_action(np.array([0.0, 0.0, -1.0, 0.0]))
        assert sent[2] < 0 and robot.velocity[2] < 0  # back toward the box is allowed
        assert not any(e.kind == "workspace_exit" for e in safe.drain_safety_events())  # one event per excursion


def test_velocity_robot_box_needs_a_watchdog_and_spec_says_controller_type() -> None:
    with pytest.raises(UserError, match=r"robot\.safety\.watchdog_timeout_s is not set.*velocities"):
        make_safe_robot(PointRobot(), {"workspace": {"low": BOX_LOW, "high": BOX_HIGH}})
    spec = PointRobot(control_hz=10.0).action_spec
    assert spec.is_ee_velocity and spec.ee_period_s == pytest.approx(0.1)
    again = ActionSpec.from_dict(spec.to_dict())
    assert again.ee_command == "velocity" and again.ee_period_s == pytest.approx(0.1)
    old_peer = {k: v for k, v in spec.to_dict().items() if k not in ("ee_command", "ee_period_s")}
    assert ActionSpec.from_dict(old_peer).ee_command == "delta"
    with pytest.raises(UserError, match="ee_period_s"):
        ActionSpec.create(4, ee_obs_key="robot_state", ee_delta_scale=0.05, ee_command="velocity")
    with pytest.raises(UserError, match="ee_command"):
        ActionSpec.create(4, ee_command="torque")


ILL_TYPED = [
    ("watchdog_timeout_s", "abc"), ("watchdog_timeout_s", -1), ("watchdog_timeout_s", 0), ("watchdog_timeout_s", True),
    ("watchdog_timeout_s", float("nan")), ("watchdog_timeout_s", [0.5]), ("watchdog_timeout_s", 1e308),
    ("control_hz", "fast"), ("control_hz", 0), ("control_hz", 1e9),
    ("control_hz", float("inf")), ("stop_latency_s", "abc"), ("stop_latency_s", -0.1), ("max_delta_per_step", "abc"),
    ("max_delta_per_step", 0), ("max_delta_per_step", [0.5, -1]), ("max_delta_per_step", []),
    ("max_delta_per_step", [0.5, 0.5]), ("max_delta_per_step", True), ("action_clip", "abc"), ("action_clip", "false"),
    ("estop", 0), ("real_robot", "yes"), ("workspace", "abc"), ("workspace", {"low": [0, 0], "high": [1, 1, 1]}),
    ("workspace", {"low": ["a", 0, 0], "high": [1, 1, 1]}), ("workspace", {"low": [0, 0, 0], "high": [1, 1, True]}),
    ("workspace", {"low": [-1, -1, 0], "high": [1, 1, 1], "margin": 1}), ("watchdog_timout_s", 0.5),
]


@pytest.mark.parametrize(("key", "value"), ILL_TYPED, ids=[f"{k}={v!r}" for k, v in ILL_TYPED])
def test_ill_typed_safety_key_names_the_key(key: str, value: object) -> None:
    safety = point_cfg()["safety"]
    safety[key] = value
    with pytest.raises(UserError, match=rf"robot\.safety\.{key}\b"):
        make_safe_robot(PointRobot(), safety)


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(), st.text(max_size=5),
                      st.lists(st.one_of(st.floats(), st.integers(-3, 3), st.text(max_size=2)), max_size=5),
                      st.dictionaries(st.sampled_from(["low", "high", "x"]),
                                      st.lists(st.floats(-2, 2), max_size=4), max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["real_robot", "action_clip", "estop", "workspace", "max_delta_per_step",
                                        "control_hz", "watchdog_timeout_s", "stop_latency_s"]), ANY_VALUE,
                       min_size=1, max_size=4))
def test_safety_config_fuzz_clear_error_or_working_robot(overrides: dict) -> None:
    safety = point_cfg()["safety"]
    safety.update(overrides)
    robot = PointRobot()
    try:
        safe = make_safe_robot(robot, safety)
    except UserError as err:
        assert "robot.safety." in str(err) and "\n" not in str(err)
        return
    with safe:
        safe.home()
        sent = safe.send_action(np.array([0.2, 0.0, 0.0, 0.0]))
        assert sent.shape == (4,) and np.all(np.isfinite(sent))


def test_robot_server_ill_typed_safety_key_exits_2_without_traceback() -> None:
    """Issue 11 item 10: robot.safety.watchdog_timeout_s=abc gave a traceback."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "calql_robot.robot_server", "robot=point", "port=5998",
                           "robot.safety.watchdog_timeout_s=abc"], cwd=CONFIGS.parent.parent, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "robot.safety.watchdog_timeout_s" in done.stderr and "Traceback" not in done.stderr
