"""Workspace bounds that hold for any controller: the end effector stays inside an explicit box (metres, robot base
frame), whether a command is a displacement done within one period or a velocity that runs until the next command.

* :class:`WorkspaceClip` (``ee_command="delta"``): target = eef + delta * scale is clipped to the box and converted
  back to the delta actually sent; a pause between commands cannot move the robot.
* :class:`VelocityWorkspaceLimit` (``ee_command="velocity"``): the command keeps the robot moving until the next
  command or a stop, so clipping one period's displacement is not enough (issue 11: from z=0.494 one in-bounds
  command and a 0.45 s pause ended at z=0.72 against a box top of 0.6). Per axis, the velocity toward a face is
  limited so that reaching the face takes at least ``CLEARANCE_PERIODS`` control periods plus ``stop_latency_s``,
  and every command gets a stop deadline: the time its velocity would reach the nearest face, less
  ``stop_latency_s``, or the watchdog timeout if that is sooner. The Watchdog directly inside this layer stops the
  robot at that deadline, so no pause, however long, carries the end effector past a face, as long as the stop
  takes effect within ``stop_latency_s`` of the deadline and a new command takes effect within ``stop_latency_s``
  of the end-effector read it was computed from (the previous command's motion during that gap is budgeted too).

Both layers stop the robot and record a ``workspace_exit`` SafetyEvent when the measured end effector is more than
``WORKSPACE_EXIT_TOLERANCE_M`` outside the box (after which only motion back toward the box is sent), and both check
the position ``home()`` reaches. :func:`check_reset_targets` checks the robot's declared reset targets (e.g.
``home_pose``) against the box before the first motion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from calql_robot.envs.robot.interface import RobotInterface, RobotWrapper
from calql_robot.envs.robot.watchdog import Watchdog
from calql_robot.errors import UserError

WORKSPACE_EPS_M = 1e-6  # float32 rounding of the delta may leave a target this far past the box face
WORKSPACE_EXIT_TOLERANCE_M = 1e-3  # a measured end effector further outside than this has left the box
CLEARANCE_PERIODS = 2.0  # a velocity robot needs at least this many periods (+ stop latency) to reach a face
DEFAULT_STOP_LATENCY_S = 0.05


@dataclass(frozen=True)
class Workspace:
    """The box ``[low, high]`` (3,) in metres; ``config_key`` names it in messages (e.g. robot.safety.workspace)."""

    low: np.ndarray
    high: np.ndarray
    config_key: str = "robot.safety.workspace"

    @staticmethod
    def create(low: np.ndarray, high: np.ndarray, config_key: str = "robot.safety.workspace") -> Workspace:
        return Workspace(np.asarray(low, np.float64).reshape(3).copy(), np.asarray(high, np.float64).reshape(3).copy(),
                         config_key)

    def excess(self, position: np.ndarray) -> float:
        """How far (metres) ``position`` lies outside the box; 0.0 inside."""
        p = np.asarray(position, np.float64).reshape(3)
        return float(max(np.max(self.low - p), np.max(p - self.high), 0.0))

    def describe(self) -> str:
        return f"{self.config_key} low={np.round(self.low, 4).tolist()} high={np.round(self.high, 4).tolist()}"


def check_reset_targets(robot: RobotInterface, workspace: Workspace, driver_key: str = "robot.driver") -> None:
    """Raise a UserError naming ``driver_key.<name>`` for a declared reset target outside ``workspace``."""
    for name, target in robot.reset_targets().items():
        try:
            arr = np.asarray(target, np.float64).reshape(-1)
        except (TypeError, ValueError):
            arr = np.zeros(0)
        if arr.shape != (3,) or not np.all(np.isfinite(arr)):
            raise UserError(f"{driver_key}.{name} is {target!r}; expected an end-effector position [x, y, z] of "
                            "three finite numbers in metres")
        if workspace.excess(arr) > WORKSPACE_EPS_M:
            raise UserError(f"{driver_key}.{name} = {np.round(arr, 4).tolist()} is outside the workspace box "
                            f"{workspace.describe()}: every episode would start outside the bounds and the first "
                            f"'hold' would be sent as a jump back into the box. Move {driver_key}.{name} inside the "
                            "box or widen the box")


class _WorkspaceLayer(RobotWrapper):
    """What both workspace layers share: the box, the exit check and the check of the position home() reaches."""

    def __init__(self, robot: RobotInterface, workspace: Workspace, driver_key: str) -> None:
        super().__init__(robot)
        if not self.action_spec.is_ee_delta:
            raise UserError(f"robot '{robot.name}' does not command the end-effector position (its action spec has "
                            "no ee_obs_key / ee_delta_scale), so a workspace box cannot be enforced")
        self.workspace = workspace
        self.driver_key = driver_key
        self.clipped_steps = 0
        self.exits = 0
        self._clipping = False
        self._outside = False

    @property
    def low(self) -> np.ndarray:
        return self.workspace.low

    @property
    def high(self) -> np.ndarray:
        return self.workspace.high

    def _check_inside(self, eef: np.ndarray) -> None:
        """Stop the robot and record ``workspace_exit`` (once per excursion) when ``eef`` has left the box."""
        excess = self.workspace.excess(eef)
        if excess <= WORKSPACE_EXIT_TOLERANCE_M:
            self._outside = False
            return
        if not self._outside:
            self.robot.stop()
            self.exits += 1
            self.record("workspace_exit", f"measured end effector {np.round(eef, 4).tolist()} is {excess * 1000:.1f} "
                        f"mm outside the workspace box {self.workspace.describe()}; robot stopped, only motion back "
                        "into the box is sent")
        self._outside = True

    def _note_clipped(self, clipped: bool, target: np.ndarray) -> None:
        if clipped:
            self.clipped_steps += 1
            if not self._clipping:
                self.record("workspace", f"end-effector command toward {np.round(target, 4).tolist()} limited by "
                            f"the workspace box {self.workspace.describe()}")
        self._clipping = clipped

    def home(self) -> dict[str, np.ndarray]:
        obs = self.robot.home()
        eef = self.action_spec.ee_position(obs)
        excess = self.workspace.excess(eef)
        if excess > WORKSPACE_EXIT_TOLERANCE_M:
            self.robot.stop()
            raise UserError(f"after home() the end effector is at {np.round(eef, 4).tolist()}, {excess * 1000:.1f} "
                            f"mm outside the workspace box {self.workspace.describe()}; the home pose "
                            f"({self.driver_key}.home_pose or home_joints) must lie inside the box")
        self._outside = False
        return obs


class WorkspaceClip(_WorkspaceLayer):
    """Delta robots: keep end-effector targets eef + delta * scale inside the box."""

    def __init__(self, robot: RobotInterface, low: np.ndarray, high: np.ndarray,
                 config_key: str = "robot.safety.workspace", driver_key: str = "robot.driver") -> None:
        super().__init__(robot, Workspace.create(low, high, config_key), driver_key)

    def send_action(self, action: np.ndarray) -> np.ndarray:
        spec = self.action_spec
        idx = list(spec.ee_action_index)
        scale = float(spec.ee_delta_scale or 0.0)
        requested = np.asarray(action, np.float32).copy()
        eef = np.asarray(self.robot.get_ee_position(), np.float64).reshape(3)
        self._check_inside(eef)
        target = eef + requested[idx].astype(np.float64) * scale
        safe_target = np.clip(target, self.low, self.high)
        delta = np.clip((safe_target - eef) / scale, spec.low[idx], spec.high[idx])
        out = requested.copy()
        out[idx] = delta.astype(np.float32)
        self._note_clipped(bool(np.any(np.abs(out - requested) > 1e-7)), target)
        return self.robot.send_action(out)


class VelocityWorkspaceLimit(_WorkspaceLayer):
    """Velocity robots: limit the velocity toward each face and give every command a stop deadline (module doc).

    ``robot`` must be the :class:`Watchdog` that stops the robot at the deadline. ``last_hold_s`` is the longest the
    last command may run, counted from the end-effector read it was computed from (inf: it moves nowhere).
    """

    def __init__(self, robot: Watchdog, workspace: Workspace, stop_latency_s: float = DEFAULT_STOP_LATENCY_S,
                 driver_key: str = "robot.driver") -> None:
        if not isinstance(robot, Watchdog):
            raise UserError("the workspace box of a velocity-commanded robot needs a watchdog directly inside it: "
                            "set robot.safety.watchdog_timeout_s")
        super().__init__(robot, workspace, driver_key)
        if not self.action_spec.is_ee_velocity:
            raise UserError(f"robot '{robot.name}' does not command end-effector velocities; use WorkspaceClip")
        if not np.isfinite(stop_latency_s) or stop_latency_s <= 0:
            raise UserError(f"stop_latency_s must be > 0 seconds, got {stop_latency_s}")
        self.watchdog = robot
        self.stop_latency_s = float(stop_latency_s)
        self.last_hold_s = float("inf")
        self._velocity = np.zeros(3)  # end-effector velocity (m/s) of the last command sent

    def send_action(self, action: np.ndarray) -> np.ndarray:
        spec = self.action_spec
        idx = list(spec.ee_action_index)
        scale, period = float(spec.ee_delta_scale or 0.0), float(spec.ee_period_s or 0.0)
        latency = self.stop_latency_s
        requested = np.asarray(action, np.float32).copy()
        read_at = time.monotonic()
        eef = np.asarray(self.robot.get_ee_position(), np.float64).reshape(3)
        self._check_inside(eef)
        # The previous command may keep moving the robot for up to `latency` after the read: budget that distance.
        carried = np.abs(self._velocity) * latency if self.watchdog.armed else np.zeros(3)
        room_up = np.maximum(self.high - eef - carried, 0.0)
        room_down = np.maximum(eef - self.low - carried, 0.0)
        horizon = CLEARANCE_PERIODS * period + latency
        velocity = np.clip(requested[idx].astype(np.float64) * scale / period, -room_down / horizon, room_up / horizon)
        out = requested.copy()
        out[idx] = np.clip(velocity * period / scale, spec.low[idx], spec.high[idx]).astype(np.float32)
        self._note_clipped(bool(np.any(np.abs(out - requested) > 1e-7)), eef + requested[idx] * scale)
        sent_velocity = out[idx].astype(np.float64) * scale / period
        with np.errstate(divide="ignore", invalid="ignore"):
            time_to_face = np.where(sent_velocity > 0, room_up / sent_velocity,
                                    np.where(sent_velocity < 0, room_down / -sent_velocity, np.inf))
        self.last_hold_s = float(np.min(time_to_face)) - latency
        if np.isfinite(self.last_hold_s):
            sent = self.watchdog.send_action_until(out, read_at + self.last_hold_s)
        else:
            sent = self.watchdog.send_action(out)
        self._velocity = np.asarray(sent, np.float64)[idx] * scale / period
        return sent

    def stop(self) -> None:
        self._velocity = np.zeros(3)
        self.robot.stop()

    def home(self) -> dict[str, np.ndarray]:
        self._velocity = np.zeros(3)
        return super().home()
