"""Safety layers around a RobotInterface, each with one job, and ``make_safe_robot`` that composes them.

Order, outermost first (an action passes them top to bottom)::

    EStop -> NonFiniteGuard -> ActionClip -> RateLimit -> WorkspaceClip -> Watchdog -> robot

* EStop: a latch; once triggered every command is refused (robot stopped) until ``clear()``.
* NonFiniteGuard: NaN / inf never reach the robot: stop, record a ``nonfinite`` SafetyEvent, report ``hold`` as sent.
* ActionClip: clip to the action bounds.
* RateLimit: the command may change by at most ``max_delta_per_step`` (action units, per dimension) from the last
  command actually sent (from ``hold`` after stop / home), i.e. an acceleration limit for delta commands.
* WorkspaceClip: for end-effector delta robots, target = eef + delta * scale is clipped to an explicit box and
  converted back to the delta actually sent. Safety outranks smoothness: it may undo part of RateLimit.
* Watchdog: a thread that calls ``stop()`` when no command arrived for ``timeout_s`` (armed by a command, disarmed
  by stop / home).

A layer that refuses an action never raises: it stops the robot, records a SafetyEvent (``drain_safety_events``)
and returns ``action_spec.hold`` as the action sent. ``ControlRate`` is the fixed-rate loop helper.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from calql_robot.envs.robot.interface import RobotInterface, RobotWrapper, find_wrapper
from calql_robot.errors import UserError

WORKSPACE_EPS_M = 1e-6  # float32 rounding of the delta may leave a target this far past the box face


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


class WorkspaceClip(RobotWrapper):
    """Keep end-effector targets inside the box [low, high] (metres, robot base frame)."""

    def __init__(self, robot: RobotInterface, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__(robot)
        spec = self.action_spec
        if not spec.is_ee_delta:
            raise UserError(f"robot '{robot.name}' does not command end-effector deltas (its action spec has no "
                            "ee_obs_key / ee_delta_scale), so a workspace box cannot be enforced")
        self.low = np.asarray(low, np.float64).reshape(3)
        self.high = np.asarray(high, np.float64).reshape(3)
        self.clipped_steps = 0
        self._clipping = False

    def send_action(self, action: np.ndarray) -> np.ndarray:
        spec = self.action_spec
        idx = list(spec.ee_action_index)
        scale = float(spec.ee_delta_scale or 0.0)
        requested = np.asarray(action, np.float32).copy()
        eef = np.asarray(self.robot.get_ee_position(), np.float64).reshape(3)
        target = eef + requested[idx].astype(np.float64) * scale
        safe_target = np.clip(target, self.low, self.high)
        delta = np.clip((safe_target - eef) / scale, spec.low[idx], spec.high[idx])
        out = requested.copy()
        out[idx] = delta.astype(np.float32)
        clipped = bool(np.any(np.abs(out - requested) > 1e-7))
        if clipped:
            self.clipped_steps += 1
            if not self._clipping:
                self.record("workspace", f"end-effector target {np.round(target, 4).tolist()} clipped to the "
                            f"workspace box low={self.low.tolist()} high={self.high.tolist()}")
        self._clipping = clipped
        return self.robot.send_action(out)


class Watchdog(RobotWrapper):
    """Stop the robot when no command arrived for ``timeout_s``; a background thread waits on the exact deadline."""

    def __init__(self, robot: RobotInterface, timeout_s: float) -> None:
        super().__init__(robot)
        if timeout_s <= 0:
            raise UserError(f"watchdog_timeout_s must be > 0 seconds, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.trips = 0
        self.last_trip_silence_s: float | None = None
        self._cond = threading.Condition()
        self._io = threading.RLock()  # serialises the robot calls of this thread and the watchdog thread
        self._deadline: float | None = None
        self._last_command = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="robot-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Lock order everywhere: _io (robot calls) before _cond (deadline). The deadline is re-checked under both
        # locks, so a command that lands while this thread waits for _io is never stopped by a stale deadline.
        while True:
            with self._cond:
                if self._closed:
                    return
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                expired = self._deadline
            with self._io:
                with self._cond:
                    if self._closed or self._deadline != expired:
                        continue  # re-armed by a fresh command, disarmed, or closing
                    self._deadline = None
                    silence = time.monotonic() - self._last_command
                self.robot.stop()
            self.trips += 1
            self.last_trip_silence_s = silence
            self.record("watchdog", f"no command for {silence * 1000:.0f} ms (timeout "
                        f"{self.timeout_s * 1000:.0f} ms); robot stopped")

    def _arm(self, armed: bool) -> None:
        """Caller holds ``_io``."""
        with self._cond:
            now = time.monotonic()
            self._last_command = now
            self._deadline = now + self.timeout_s if armed else None
            self._cond.notify_all()

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._ensure_thread()
        with self._io:
            sent = self.robot.send_action(action)
            self._arm(True)
        return sent

    def stop(self) -> None:
        with self._io:
            self._arm(False)
            self.robot.stop()

    def home(self) -> dict[str, np.ndarray]:
        with self._io:
            self._arm(False)
            return self.robot.home()

    def get_observation(self) -> dict[str, np.ndarray]:
        with self._io:
            return self.robot.get_observation()

    def get_ee_position(self) -> np.ndarray:
        with self._io:
            return self.robot.get_ee_position()

    def disconnect(self) -> None:
        with self._cond:
            self._closed = True
            self._deadline = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._io:
            self.robot.disconnect()


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


def _cfg_get(cfg: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    try:
        value = cfg.get(key, default)
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


def validate_safety_cfg(safety_cfg: Mapping[str, Any] | None, config_key: str = "robot.safety",
                        robot_is_real: bool = False) -> dict[str, Any]:
    """Check a ``safety:`` block and return it as a plain dict; a real robot without bounds is refused."""
    cfg = safety_cfg if safety_cfg is not None else {}
    real = bool(_cfg_get(cfg, "real_robot", False)) or robot_is_real
    workspace = _cfg_get(cfg, "workspace", None)
    out: dict[str, Any] = {
        "real_robot": real,
        "action_clip": bool(_cfg_get(cfg, "action_clip", True)),
        "estop": bool(_cfg_get(cfg, "estop", True)),
        "max_delta_per_step": _cfg_get(cfg, "max_delta_per_step", None),
        "control_hz": _cfg_get(cfg, "control_hz", None),
        "watchdog_timeout_s": _cfg_get(cfg, "watchdog_timeout_s", None),
        "workspace": None,
    }
    if workspace is not None:
        low, high = _cfg_get(workspace, "low", None), _cfg_get(workspace, "high", None)
        try:
            low_arr, high_arr = np.asarray(list(low), np.float64), np.asarray(list(high), np.float64)
        except (TypeError, ValueError):
            low_arr = high_arr = np.zeros(0)
        if low_arr.shape != (3,) or high_arr.shape != (3,) or not np.all(np.isfinite(low_arr)) \
                or not np.all(np.isfinite(high_arr)) or not np.all(low_arr < high_arr):
            raise UserError(f"{config_key}.workspace must be {{low: [x, y, z], high: [x, y, z]}} in metres with "
                            f"finite low < high on every axis; got low={low} high={high}")
        out["workspace"] = {"low": low_arr, "high": high_arr}
    if real:
        missing = [k for k in ("workspace", "watchdog_timeout_s", "control_hz") if out[k] is None]
        if missing:
            raise UserError(f"{config_key}.{missing[0]} is not set, and this is a real robot (real_robot: true): a "
                            f"real robot refuses to start without an explicit workspace box ({config_key}.workspace: "
                            f"{{low: [x, y, z], high: [x, y, z]}} in metres), a watchdog timeout and a control rate. "
                            f"Missing: {', '.join(config_key + '.' + k for k in missing)}")
        if not out["action_clip"] or not out["estop"]:
            raise UserError(f"{config_key}.action_clip and {config_key}.estop cannot be turned off for a real robot")
    return out


def make_safe_robot(robot: RobotInterface, safety_cfg: Mapping[str, Any] | None,
                    config_key: str = "robot.safety") -> RobotInterface:
    """Wrap ``robot`` in the safety layers its config asks for (order in the module docstring).

    NonFiniteGuard is always on. ``config_key`` names the config block in error messages.
    """
    cfg = validate_safety_cfg(safety_cfg, config_key, robot_is_real=robot.is_real)
    layer: RobotInterface = robot
    if cfg["watchdog_timeout_s"] is not None:
        layer = Watchdog(layer, float(cfg["watchdog_timeout_s"]))
    if cfg["workspace"] is not None:
        layer = WorkspaceClip(layer, cfg["workspace"]["low"], cfg["workspace"]["high"])
    if cfg["max_delta_per_step"] is not None:
        layer = RateLimit(layer, np.asarray(cfg["max_delta_per_step"], np.float32))
    if cfg["action_clip"]:
        layer = ActionClip(layer)
    layer = NonFiniteGuard(layer)
    if cfg["estop"]:
        layer = EStop(layer)
    return layer


def find_estop(robot: RobotInterface) -> EStop | None:
    """The EStop layer of a wrapped robot, if any."""
    return find_wrapper(robot, EStop)
