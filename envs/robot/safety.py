"""Safety layers around a RobotInterface, each with one job, and ``make_safe_robot`` that composes them.

Order, outermost first (an action passes them top to bottom)::

    EStop -> NonFiniteGuard -> ActionClip -> RateLimit -> WorkspaceClip | VelocityWorkspaceLimit -> Watchdog -> robot

* EStop: a latch; once triggered every command is refused (robot stopped) until ``clear()``. Outermost, so nothing
  reaches the robot while it is latched.
* NonFiniteGuard: NaN / inf never reach the robot: stop, record a ``nonfinite`` SafetyEvent, report ``hold`` as sent.
  Before every layer that computes with the action.
* ActionClip: clip to the action bounds.
* RateLimit: the command may change by at most ``max_delta_per_step`` (action units, per dimension) from the last
  command actually sent (from ``hold`` after stop / home), i.e. an acceleration limit for delta commands.
* Workspace layer (:mod:`calql_robot.envs.robot.bounds`), innermost of the action-shaping layers so that nothing
  after it can undo the bound; safety outranks smoothness (it may undo part of RateLimit). ``WorkspaceClip`` for
  robots whose command is a displacement done within one period (``ActionSpec.ee_command="delta"``);
  ``VelocityWorkspaceLimit`` for robots whose command is a velocity held until the next command
  (``ee_command="velocity"``): it limits the velocity toward each face and gives each command a stop deadline that
  the Watchdog enforces, so it needs ``watchdog_timeout_s``.
* Watchdog (:mod:`calql_robot.envs.robot.watchdog`): a thread that calls ``stop()`` when no command arrived for
  ``timeout_s`` or at the workspace deadline (armed by a command, disarmed by stop / home). Innermost, next to the
  robot, so every path that moves the robot passes it.

``make_safe_robot`` also checks the robot's reset targets (``RobotInterface.reset_targets()``, e.g. ``home_pose``)
against the workspace box before anything moves, and the workspace layers check the position each ``home()``
reaches.

A layer that refuses an action never raises: it stops the robot, records a SafetyEvent (``drain_safety_events``)
and returns ``action_spec.hold`` as the action sent. ``ControlRate`` is the fixed-rate loop helper.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from calql_robot.envs.robot.bounds import (
    WORKSPACE_EPS_M,
    VelocityWorkspaceLimit,
    Workspace,
    WorkspaceClip,
    check_reset_targets,
)
from calql_robot.envs.robot.interface import RobotInterface, RobotWrapper, find_wrapper
from calql_robot.envs.robot.safety_config import SAFETY_KEYS, validate_safety_cfg
from calql_robot.envs.robot.watchdog import Watchdog
from calql_robot.errors import UserError

__all__ = [
    "SAFETY_KEYS", "WORKSPACE_EPS_M", "ActionClip", "ControlRate", "EStop", "NonFiniteGuard", "RateLimit",
    "VelocityWorkspaceLimit", "Watchdog", "WorkspaceClip", "find_estop", "make_safe_robot", "validate_safety_cfg",
]


class EStop(RobotWrapper):
    """Emergency stop latch: ``trigger()`` stops the robot and refuses all motion until ``clear()``."""

    def __init__(self, robot: RobotInterface) -> None:
        super().__init__(robot)
        self._latched = threading.Event()
        self.refused = 0

    @property
    def latched(self) -> bool:
        return self._latched.is_set()

    def trigger(self, reason: str = "e-stop") -> None:
        """Stop now and latch (safe from any thread)."""
        self._latched.set()
        self.robot.stop()
        self.record("estop", f"e-stop triggered: {reason}")

    def clear(self) -> None:
        """Release the latch; the next command moves the robot again."""
        if self._latched.is_set():
            self._latched.clear()
            self.record("estop_cleared", "e-stop cleared")

    def send_action(self, action: np.ndarray) -> np.ndarray:
        if self._latched.is_set():
            self.refused += 1
            self.robot.stop()
            return self.action_spec.hold.copy()
        return self.robot.send_action(action)

    def home(self) -> dict[str, np.ndarray]:
        if self._latched.is_set():
            raise UserError("the e-stop is latched, so the robot will not move home; check the cell, then clear it "
                            "(EStop.clear(), or the 'c' key in the terminal event source)")
        return self.robot.home()


class NonFiniteGuard(RobotWrapper):
    """NaN / inf / wrong-shape actions never reach the robot: stop, record, report ``hold`` as sent."""

    def send_action(self, action: np.ndarray) -> np.ndarray:
        spec = self.action_spec
        arr = np.asarray(action, dtype=np.float64)
        if arr.shape != (spec.dim,) or not np.all(np.isfinite(arr)):
            self.robot.stop()
            self.record("nonfinite", f"refused action with shape {arr.shape} / non-finite values {arr.ravel()[:8]}; "
                        "robot stopped")
            return spec.hold.copy()
        return self.robot.send_action(arr.astype(np.float32))


class ActionClip(RobotWrapper):
    """Clip every action to ``action_spec.low/high``."""

    def send_action(self, action: np.ndarray) -> np.ndarray:
        spec = self.action_spec
        return self.robot.send_action(np.clip(np.asarray(action, np.float32), spec.low, spec.high))


class RateLimit(RobotWrapper):
    """Limit the per-step change of the command to ``max_delta`` (scalar or (A,) in action units)."""

    def __init__(self, robot: RobotInterface, max_delta: float | np.ndarray) -> None:
        super().__init__(robot)
        self.max_delta = np.broadcast_to(np.asarray(max_delta, np.float32), (self.action_spec.dim,)).copy()
        if not np.all(self.max_delta > 0):
            raise UserError(f"max_delta_per_step must be > 0, got {self.max_delta.tolist()}")
        self._previous = self.action_spec.hold.copy()

    def send_action(self, action: np.ndarray) -> np.ndarray:
        limited = np.clip(np.asarray(action, np.float32), self._previous - self.max_delta,
                          self._previous + self.max_delta)
        sent = self.robot.send_action(limited)
        self._previous = np.asarray(sent, np.float32).copy()
        return sent

    def stop(self) -> None:
        self._previous = self.action_spec.hold.copy()
        self.robot.stop()

    def home(self) -> dict[str, np.ndarray]:
        self._previous = self.action_spec.hold.copy()
        return self.robot.home()


class ControlRate:
    """Fixed-rate loop helper: ``sleep()`` waits for the next tick and reports overruns instead of bursting.

    ``hz=None`` runs as fast as possible (simulation). ``sleep()`` returns the overrun of this period in seconds
    (0.0 when on time); ``overruns`` counts late periods, ``max_overrun_s`` the worst one.
    """

    def __init__(self, hz: float | None) -> None:
        if hz is not None and hz <= 0:
            raise UserError(f"control_hz must be > 0 (or null for no rate), got {hz}")
        self.period_s = None if hz is None else 1.0 / float(hz)
        self.overruns = 0
        self.max_overrun_s = 0.0
        self._next: float | None = None

    def reset(self) -> None:
        """Start a new schedule from now (after a reset or a pause)."""
        self._next = None if self.period_s is None else time.monotonic() + self.period_s

    def sleep(self) -> float:
        if self.period_s is None:
            return 0.0
        now = time.monotonic()
        if self._next is None:
            self._next = now + self.period_s
        if now <= self._next:
            time.sleep(self._next - now)
            self._next += self.period_s
            return 0.0
        overrun = now - self._next
        self.overruns += 1
        self.max_overrun_s = max(self.max_overrun_s, overrun)
        self._next = now + self.period_s  # no catch-up burst
        return overrun


def _driver_key(config_key: str) -> str:
    """``robot.safety`` -> ``robot.driver`` (where reset targets such as ``home_pose`` are configured)."""
    parent, _, last = config_key.rpartition(".")
    return f"{parent}.driver" if last == "safety" and parent else "driver"


def make_safe_robot(robot: RobotInterface, safety_cfg: Mapping[str, Any] | None,
                    config_key: str = "robot.safety", driver_key: str | None = None) -> RobotInterface:
    """Wrap ``robot`` in the safety layers its config asks for (order and reasons in the module docstring).

    NonFiniteGuard is always on. ``config_key`` names the safety block and ``driver_key`` (default: its sibling
    ``driver``) the driver block in error messages. With a workspace box, the robot's reset targets are checked
    against it here, before anything moves; a velocity-commanded robot also needs ``watchdog_timeout_s``.
    """
    cfg = validate_safety_cfg(safety_cfg, config_key, robot_is_real=robot.is_real)
    driver_key = driver_key or _driver_key(config_key)
    workspace = None
    if cfg["workspace"] is not None:
        workspace = Workspace.create(cfg["workspace"]["low"], cfg["workspace"]["high"], f"{config_key}.workspace")
        check_reset_targets(robot, workspace, driver_key)
        velocity_robot = robot.action_spec.is_ee_velocity
        if velocity_robot and cfg["watchdog_timeout_s"] is None:
            raise UserError(f"{config_key}.watchdog_timeout_s is not set, but robot '{robot.name}' is commanded by "
                            "velocities that keep running until the next command: without a watchdog nothing stops "
                            f"it in a pause, so {config_key}.workspace cannot be enforced. Set "
                            f"{config_key}.watchdog_timeout_s (e.g. 0.5 seconds)")
    layer: RobotInterface = robot
    if cfg["watchdog_timeout_s"] is not None:
        layer = Watchdog(layer, cfg["watchdog_timeout_s"])
    if workspace is not None:
        if robot.action_spec.is_ee_velocity:
            layer = VelocityWorkspaceLimit(layer, workspace, cfg["stop_latency_s"], driver_key)  # type: ignore
        else:
            layer = WorkspaceClip(layer, workspace.low, workspace.high, workspace.config_key, driver_key)
    if cfg["max_delta_per_step"] is not None:
        max_delta = np.asarray(cfg["max_delta_per_step"], np.float32).reshape(-1)
        if max_delta.size not in (1, robot.action_spec.dim):
            raise UserError(f"{config_key}.max_delta_per_step has {max_delta.size} values; expected one number or "
                            f"{robot.action_spec.dim} (one per action dimension of robot '{robot.name}')")
        layer = RateLimit(layer, max_delta if max_delta.size > 1 else float(max_delta[0]))
    if cfg["action_clip"]:
        layer = ActionClip(layer)
    layer = NonFiniteGuard(layer)
    if cfg["estop"]:
        layer = EStop(layer)
    return layer


def find_estop(robot: RobotInterface) -> EStop | None:
    """The EStop layer of a wrapped robot, if any."""
    return find_wrapper(robot, EStop)
