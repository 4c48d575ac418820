"""Workspace bounds on a velocity-commanded robot (issue 11, item 2): a command keeps PointRobot moving until the next
command or a stop, so pauses between commands must not carry the end effector past a box face.

Stated tolerance: the measured end effector never leaves the box by more than ``TOLERANCE_M`` (1 mm), provided the
watchdog's stop takes effect within ``stop_latency_s`` of its deadline (the budget the safety layer plans with).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from calql_robot.envs.robot.bounds import VelocityWorkspaceLimit, Workspace
from calql_robot.envs.robot.interface import find_wrapper
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.robot_env import build_robot
from calql_robot.envs.robot.safety import Watchdog, make_safe_robot

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "robot"
TOLERANCE_M = 1e-3
BOX_LOW, BOX_HIGH = np.array([-0.2, -0.15, 0.1]), np.array([0.25, 0.2, 0.45])


class StepClock:
    """Deterministic time source advanced by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def box_excess(position: np.ndarray, low: np.ndarray = BOX_LOW, high: np.ndarray = BOX_HIGH) -> float:
    return Workspace.create(low, high).excess(position)


def test_issue11_in_bounds_command_then_pause_stays_in_box() -> None:
    """Issue 11 item 2: from z=0.494, [0, 0, 0.5, 0] then a 0.45 s pause reached z=0.720 (0.744 after the watchdog)
    against the box top 0.6 of configs/robot/point.yaml."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "point.yaml"))
    cfg["driver"]["home_pose"] = [0.0, 0.0, 0.494]
    top = cfg["safety"]["workspace"]["high"][2]
    safe = build_robot(cfg, "robot")
    robot = safe.unwrapped
    with safe:
        safe.home()
        safe.send_action(np.array([0.0, 0.0, 0.5, 0.0]))
        assert robot.velocity[2] > 0.2  # the command was not simply refused: it moves up
        time.sleep(0.45)
        z_pause = robot.position()[2]
        time.sleep(0.15)  # past the 0.5 s watchdog
        z_end = robot.position()[2]
        kinds = [e.kind for e in safe.drain_safety_events()]
    assert z_pause <= top + TOLERANCE_M and z_end <= top + TOLERANCE_M, (z_pause, z_end)
    assert z_end > 0.494 + 0.05  # it did travel most of the way to the face
    assert np.all(robot.velocity == 0) and "workspace_stop" in kinds


@st.composite
def episodes(draw: st.DrawFn) -> tuple[np.ndarray, list[tuple[np.ndarray, float, bool]]]:
    home = np.array([draw(st.floats(lo, hi)) for lo, hi in zip(BOX_LOW, BOX_HIGH, strict=True)])
    unit = st.floats(-1.5, 1.5, allow_nan=False)
    step = st.tuples(st.lists(unit, min_size=4, max_size=4).map(np.array), st.floats(0.0, 1.0),
                     st.booleans())
    return home, draw(st.lists(step, min_size=1, max_size=25))


@settings(max_examples=60, deadline=None)
@given(episodes())
def test_planned_stop_keeps_velocity_robot_in_box(episode: tuple[np.ndarray, list]) -> None:
    """Simulated time: each command runs for a random share of (its stop deadline + the stop latency), the worst
    the safety layer allows, then either a new command comes or the watchdog stops it; never outside the box."""
    home, steps = episode
    clock = StepClock()
    robot = PointRobot(control_hz=20.0, ee_delta_scale=0.05, home_pose=home, clock=clock)
    safe = make_safe_robot(robot, {"workspace": {"low": BOX_LOW, "high": BOX_HIGH}, "watchdog_timeout_s": 60.0,
                                   "max_delta_per_step": 2.0, "stop_latency_s": 0.05})
    limit = find_wrapper(safe, VelocityWorkspaceLimit)
    watchdog = find_wrapper(safe, Watchdog)
    with safe:
        safe.home()
        for action, share, next_command_late in steps:
            sent = safe.send_action(action)
            velocity = sent[:3].astype(np.float64) * 0.05 * 20.0
            if not np.any(velocity):
                clock.t += share
                continue
            assert limit.last_hold_s >= 2 * 0.05 - 1e-6  # a command on time never meets its stop deadline
            # the stop deadline, or the watchdog timeout if sooner, plus the latency the layer budgets for
            worst_run = min(limit.last_hold_s, watchdog.timeout_s) + limit.stop_latency_s
            if next_command_late:  # the watchdog stops it at the deadline, as late as the latency budget allows
                clock.t += worst_run
                watchdog.stop()
                assert box_excess(robot.position()) <= 1e-9, robot.position()
                clock.t += share
            else:
                clock.t += share * worst_run
            assert box_excess(robot.position()) <= 1e-9, robot.position()


def hostile_command(rng: np.random.Generator, face: tuple[int, float]) -> np.ndarray:
    """Mostly a push straight at ``face`` (axis, sign) at full speed or beyond, plus noise; sometimes anything."""
    if rng.random() < 0.2:
        return rng.choice([-1.0, 1.0], 4) * rng.choice([1.0, 50.0])
    a = rng.uniform(-0.3, 0.3, 4)
    axis, sign = face
    a[axis] = sign * rng.choice([1.0, 1.5, 50.0])
    return a


def test_point_robot_fuzz_random_commands_and_pauses_real_time() -> None:
    """Real clock, real watchdog thread: random commands pushing at random faces, with random pauses up to the
    watchdog timeout (every 6th beyond it); the measured end effector stays within TOLERANCE_M of the box."""
    timeout_s, stop_latency_s = 0.12, 0.06
    worst, near_face, samples = 0.0, 0, 0
    kinds: list[str] = []
    for seed in range(2):
        rng = np.random.default_rng(seed)
        robot = PointRobot(control_hz=20.0, ee_delta_scale=0.05, home_pose=(BOX_LOW + BOX_HIGH) / 2)
        safe = make_safe_robot(robot, {"workspace": {"low": BOX_LOW, "high": BOX_HIGH},
                                       "watchdog_timeout_s": timeout_s, "stop_latency_s": stop_latency_s,
                                       "max_delta_per_step": 2.0})
        with safe:
            safe.home()
            face = (0, 1.0)
            for step in range(24):
                if step % 6 == 0:
                    face = (int(rng.integers(3)), float(rng.choice([-1.0, 1.0])))
                safe.send_action(hostile_command(rng, face))
                time.sleep(rng.uniform(0.0, timeout_s) if step % 6 != 5 else rng.uniform(timeout_s, 2 * timeout_s))
                pos = robot.position()
                worst = max(worst, box_excess(pos))
                near_face += int(np.min(np.minimum(pos - BOX_LOW, BOX_HIGH - pos)) < 0.01)
                samples += 1
                kinds += [e.kind for e in safe.drain_safety_events()]
            for _, _, eef in robot.command_log:  # where every command started: the ends of the straight segments
                worst = max(worst, box_excess(eef))
    assert worst <= TOLERANCE_M, f"end effector left the box by {worst * 1000:.2f} mm"
    assert near_face >= samples // 5, (near_face, samples)  # the commands really pushed it against the faces
    assert {"workspace_stop", "workspace"} <= set(kinds), set(kinds)  # deadline stops and velocity limits acted
