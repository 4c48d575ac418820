"""Intervention devices: a person (or a scripted controller) takes the arm over from the policy.

:class:`calql_robot.envs.robot.robot_env.RobotEnv` asks its device once per step, before sending anything::

    human = device.action(obs, policy_action, step)     # (A,) in robot units while taking over, else None

While ``human`` is not None it is what the robot is sent, through the same safety layers as the policy's action,
and the step is recorded as an intervention (``data/intervention`` in ``online.zarr``). Every device maps what it
reads (keys, sticks, a 6-DoF puck, a controller) to the same command with :class:`TeleopMapping`: a 3-D
end-effector translation in [-1, 1] per axis and a gripper state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from calql_robot.envs.robot.interface import ActionSpec, RobotInterface
from calql_robot.errors import UserError


class InterventionDevice(ABC):
    """Where a human action comes from. ``action`` never blocks."""

    name = "device"

    def start_episode(self, episode: int, robot: RobotInterface) -> None:  # noqa: B027 (optional hook)
        """Called at each reset (``episode`` counts from 0), after the robot is homed."""

    @abstractmethod
    def action(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray, step: int) -> np.ndarray | None:
        """The human's (A,) action in robot units while taking over this step, else None (the policy acts)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the input device."""


class NoIntervention(InterventionDevice):
    """``deploy.intervention.kind=none``: the policy always acts."""

    name = "none"

    def action(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray, step: int) -> None:
        return None


class FirstEpisodes(InterventionDevice):
    """Lets ``device`` intervene only in the first ``episodes`` episodes of the run (then the policy acts alone)."""

    def __init__(self, device: InterventionDevice, episodes: int) -> None:
        self.device, self.episodes, self.active = device, int(episodes), True
        self.name = device.name

    def start_episode(self, episode: int, robot: RobotInterface) -> None:
        self.active = episode < self.episodes
        if self.active:
            self.device.start_episode(episode, robot)

    def action(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray, step: int) -> np.ndarray | None:
        return self.device.action(obs, policy_action, step) if self.active else None

    def close(self) -> None:
        self.device.close()


@dataclass
class TeleopMapping:
    """Turns a device's (3,) translation command and gripper state into the robot's (A,) action.

    ``translation`` (3,) in [-1, 1] per axis (x, y, z in the robot's end-effector frame) is scaled by ``speed`` and
    written into the action's ``ee_action_index`` dimensions; the gripper dimension (``gripper_index``; default:
    the last dimension when it is not a translation one) gets ``gripper_close`` or ``gripper_open``; every other
    dimension keeps the spec's ``hold`` value. The result is clipped to the action bounds; the safety layers then
    treat it like any policy action.
    """

    spec: ActionSpec
    speed: float = 0.5
    gripper_index: int | None = None
    gripper_open: float = -1.0
    gripper_close: float = 1.0

    @classmethod
    def from_cfg(cls, spec: ActionSpec, cfg: Mapping[str, Any], key: str = "deploy.intervention") -> TeleopMapping:
        speed = cfg.get("speed", 0.5)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0 < float(speed) <= 1:
            raise UserError(f"{key}.speed is {speed!r}; expected a number in (0, 1]: the fraction of the action "
                            "range a full key press or stick deflection commands")
        index = cfg.get("gripper_index", "auto")
        if index == "auto" or index is None:
            rest = [i for i in range(spec.dim) if i not in spec.ee_action_index]
            index = rest[-1] if rest else None
        elif isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < spec.dim \
                or index in spec.ee_action_index:
            raise UserError(f"{key}.gripper_index is {index!r}; expected auto or an action dimension in "
                            f"0..{spec.dim - 1} that is not a translation one {list(spec.ee_action_index)}")
        values = {}
        for name in ("gripper_open", "gripper_close"):
            value = cfg.get(name, -1.0 if name == "gripper_open" else 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise UserError(f"{key}.{name} is {value!r}; expected the finite action value of that gripper state")
            values[name] = float(value)
        return cls(spec, float(speed), index, values["gripper_open"], values["gripper_close"])

    def action(self, translation: np.ndarray, gripper_closed: bool) -> np.ndarray:
        """(A,) float32 robot action for a (3,) translation command and the gripper state."""
        out = self.spec.hold.astype(np.float32).copy()
        move = np.clip(np.asarray(translation, np.float64).reshape(3), -1.0, 1.0) * self.speed
        for axis, dim in enumerate(self.spec.ee_action_index):
            span = self.spec.high[dim] if move[axis] >= 0 else -self.spec.low[dim]
            out[dim] = move[axis] * span
        if self.gripper_index is not None:
            out[self.gripper_index] = self.gripper_close if gripper_closed else self.gripper_open
        return np.clip(out, self.spec.low, self.spec.high).astype(np.float32)
