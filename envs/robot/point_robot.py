"""PointRobot: a small kinematic, real-time, velocity-commanded arm tip implementing RobotInterface in pure Python.

The end effector is a point in a box of hardware limits. ``send_action(a)`` with ``a = (dx, dy, dz, grip)`` in
[-1, 1] sets a velocity ``a[:3] * ee_delta_scale * control_hz`` (so one control period moves ``a[:3] *
ee_delta_scale`` metres, like an end-effector delta controller) that **keeps running until the next command or
stop()**, exactly the behaviour that makes a watchdog necessary on real velocity-controlled robots (LeKiwi's base).
Its action spec says so (``ee_command="velocity"``, ``ee_period_s = 1 / control_hz``), which makes ``make_safe_robot``
bound its workspace with :class:`~calql_robot.envs.robot.bounds.VelocityWorkspaceLimit`; ``reset_targets()``
reports the configured ``home_pose`` so it is checked against the workspace box before the first motion.
Position integrates against a clock (``time.monotonic`` or an injected one), so no thread is needed.

Its task is "reach the goal": ``task_signal()`` gives reward 1 and success when the tip is within
``goal_tolerance`` of ``goal``. Observations match the pick-and-place layout: ``robot_state`` = [eef_pos(3),
gripper_qpos(2)] float32 and, when ``image_size`` is set, a top-down ``agentview_rgb`` uint8 (S, S, 3) image.
Every command that reaches it is kept in ``command_log`` (time, sent action, eef position when sent) for audits.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from calql_robot.envs.robot.interface import ActionSpec, RobotInterface, TaskSignal
from calql_robot.errors import UserError

GRIPPER_OPEN_M = 0.04


class PointRobot(RobotInterface):
    """Kinematic point robot (see module docstring). All lengths in metres."""

    name = "point"
    is_real = False

    def __init__(self, control_hz: float = 20.0, ee_delta_scale: float = 0.05,
                 limits_low: Sequence[float] = (-1.0, -1.0, 0.0), limits_high: Sequence[float] = (1.0, 1.0, 1.0),
                 home_pose: Sequence[float] = (0.0, 0.0, 0.3), goal: Sequence[float] = (0.1, 0.1, 0.2),
                 goal_tolerance: float = 0.03, image_size: int | None = None,
                 clock: Callable[[], float] | None = None, log_size: int = 100_000) -> None:
        if control_hz <= 0 or ee_delta_scale <= 0:
            raise UserError(f"point robot: control_hz ({control_hz}) and ee_delta_scale ({ee_delta_scale}) must be > 0")
        self.control_hz = float(control_hz)
        self.ee_delta_scale = float(ee_delta_scale)
        self.limits_low = np.asarray(limits_low, np.float64)
        self.limits_high = np.asarray(limits_high, np.float64)
        self.configured_home_pose = np.asarray(home_pose, np.float64).copy()
        self.home_pose = np.clip(self.configured_home_pose, self.limits_low, self.limits_high)  # hardware saturates
        self.goal = np.asarray(goal, np.float64)
        self.goal_tolerance = float(goal_tolerance)
        self.image_size = image_size
        self.clock = clock or time.monotonic
        self.command_log: deque[tuple[float, np.ndarray, np.ndarray]] = deque(maxlen=log_size)
        self.stop_times: list[float] = []
        self._lock = threading.Lock()
        self._connected = False
        self._pos = self.home_pose.copy()
        self._vel = np.zeros(3)
        self._grip = GRIPPER_OPEN_M
        self._t = self.clock()
        self._spec = ActionSpec.create(4, -1.0, 1.0, ee_obs_key="robot_state", ee_obs_index=(0, 1, 2),
                                       ee_action_index=(0, 1, 2), ee_delta_scale=self.ee_delta_scale,
                                       ee_command="velocity", ee_period_s=1.0 / self.control_hz)

    # -- connection -------------------------------------------------------------------------------------------------
    def connect(self) -> None:
        with self._lock:
            self._connected = True
            self._t = self.clock()

    def disconnect(self) -> None:
        self.stop()
        with self._lock:
            self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def _require_connected(self) -> None:
        if not self._connected:
            raise UserError(f"robot '{self.name}' is not connected; call connect() or use it as a context manager")

    # -- specs ------------------------------------------------------------------------------------------------------
    @property
    def observation_spec(self) -> dict[str, dict[str, Any]]:
        spec: dict[str, dict[str, Any]] = {"robot_state": {"shape": [5], "dtype": "float32", "kind": "low_dim"}}
        if self.image_size:
            spec["agentview_rgb"] = {"shape": [self.image_size, self.image_size, 3], "dtype": "uint8", "kind": "rgb"}
        return spec

    @property
    def action_spec(self) -> ActionSpec:
        return self._spec

    # -- motion -----------------------------------------------------------------------------------------------------
    def _integrate(self) -> None:
        """Advance the position to now (caller holds the lock)."""
        now = self.clock()
        dt = max(0.0, now - self._t)
        self._pos = np.clip(self._pos + self._vel * dt, self.limits_low, self.limits_high)
        self._t = now

    @property
    def velocity(self) -> np.ndarray:
        """(3,) current commanded velocity in m/s."""
        with self._lock:
            return self._vel.copy()

    def position(self) -> np.ndarray:
        """(3,) end-effector position now."""
        with self._lock:
            self._integrate()
            return self._pos.copy()

    def get_ee_position(self) -> np.ndarray:
        return self.position()

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._require_connected()
        sent = np.asarray(action, np.float32).reshape(self._spec.dim)
        if not np.all(np.isfinite(sent)):
            raise UserError(f"point robot received a non-finite action {sent.tolist()}; wrap it with make_safe_robot")
        sent = np.clip(sent, self._spec.low, self._spec.high)  # the motor driver saturates
        with self._lock:
            self._integrate()
            self.command_log.append((self._t, sent.copy(), self._pos.copy()))
            self._vel = sent[:3].astype(np.float64) * self.ee_delta_scale * self.control_hz
            self._grip = GRIPPER_OPEN_M * (1.0 - float(sent[3])) / 2.0
        return sent

    def stop(self) -> None:
        with self._lock:
            self._integrate()
            self._vel = np.zeros(3)
            self.stop_times.append(self._t)

    def home(self) -> dict[str, np.ndarray]:
        self._require_connected()
        with self._lock:
            self._vel = np.zeros(3)
            self._pos = self.home_pose.copy()
            self._grip = GRIPPER_OPEN_M
            self._t = self.clock()
        return self.get_observation()

    def reset_targets(self) -> dict[str, np.ndarray]:
        """``{"home_pose": the configured home pose}`` (before saturation at the hardware limits)."""
        return {"home_pose": self.configured_home_pose.copy()}

    # -- observation and task ---------------------------------------------------------------------------------------
    def get_observation(self) -> dict[str, np.ndarray]:
        self._require_connected()
        with self._lock:
            self._integrate()
            pos, grip = self._pos.copy(), self._grip
        state = np.array([*pos, grip / 2.0, -grip / 2.0], np.float32)
        obs = {"robot_state": state}
        if self.image_size:
            obs["agentview_rgb"] = self._render(pos)
        return obs

    def _render(self, pos: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 top-down view: goal in green, tip in red (brightness = height)."""
        size = int(self.image_size or 0)
        img = np.zeros((size, size, 3), np.uint8)
        span = self.limits_high[:2] - self.limits_low[:2]

        def pixel(p: np.ndarray) -> tuple[int, int]:
            uv = np.clip((p[:2] - self.limits_low[:2]) / np.maximum(span, 1e-9), 0.0, 1.0) * (size - 1)
            return int(round(uv[1])), int(round(uv[0]))

        gr, gc = pixel(self.goal)
        img[gr, gc, 1] = 255
        r, c = pixel(pos)
        height = (pos[2] - self.limits_low[2]) / max(self.limits_high[2] - self.limits_low[2], 1e-9)
        img[r, c, 0] = int(80 + 175 * np.clip(height, 0.0, 1.0))
        return img

    def task_signal(self) -> TaskSignal:
        success = bool(np.linalg.norm(self.position() - self.goal) <= self.goal_tolerance)
        return TaskSignal(reward=1.0 if success else 0.0, success=success)
