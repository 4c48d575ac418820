"""The robot interface every robot in calql_robot implements (real arm, simulation, remote client, safety wrapper).

It follows the convention users know from LeRobot's ``Robot``::

    with SomeRobot(...) as robot:               # connect() on enter; stop() + disconnect() on exit
        obs = robot.home()                      # move to the home pose; returns an observation
        sent = robot.send_action(action)        # returns the action actually sent (after any clipping)
        obs = robot.get_observation()           # dict[str, np.ndarray] matching robot.observation_spec

``observation_spec`` is the obs spec of docs/DESIGN.md (``{key: {"shape", "dtype", "kind"}}``). ``action_spec`` is
an :class:`ActionSpec`: dimension, bounds, the "hold" command, and, for robots commanded by end-effector position
deltas or velocities, where the end-effector position lives in the observation, how an action maps to metres and
whether a command is a displacement done within one period (``ee_command="delta"``) or a velocity that keeps running
until the next command or stop (``ee_command="velocity"``), which is what the workspace layers of
:mod:`calql_robot.envs.robot.bounds` need to keep the end effector inside an explicit box.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calql_robot.errors import UserError

EE_COMMANDS = ("delta", "velocity")


@dataclass(frozen=True)
class SafetyEvent:
    """Something a safety layer did: ``kind`` in {"nonfinite", "watchdog", "estop", "workspace", "workspace_stop",
    "workspace_exit", "client_timeout", "overrun", ...}, a one-line ``message`` and the wall-clock ``time``
    (``time.time()``)."""

    kind: str
    message: str
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "time": self.time}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SafetyEvent:
        return SafetyEvent(kind=str(d["kind"]), message=str(d["message"]), time=float(d["time"]))


@dataclass(frozen=True)
class TaskSignal:
    """What the robot side knows about the task after the last action: ``reward`` and ``success``, or None where it
    has no opinion (a real arm without a reward classifier returns ``TaskSignal(None, None)``)."""

    reward: float | None = None
    success: bool | None = None


@dataclass(frozen=True)
class ActionSpec:
    """Action description.

    Attributes:
        dim: action dimension A.
        low, high: (A,) float32 bounds.
        hold: (A,) float32 command meaning "do not move" (zeros for delta / velocity commands); what the safety
            layers report as sent when they refuse an action.
        ee_obs_key: for end-effector delta robots, the observation key holding the end-effector position.
        ee_obs_index: the 3 indices of (x, y, z) in ``obs[ee_obs_key]``.
        ee_action_index: the 3 action indices that are the (dx, dy, dz) command.
        ee_delta_scale: metres of commanded displacement per unit of action (target = eef + a[idx] * scale).
        ee_command: how the robot executes the (dx, dy, dz) command. ``"delta"``: a displacement of a[idx] * scale
            completed within one command (position controllers, the simulation). ``"velocity"``: a velocity of
            a[idx] * scale / ee_period_s m/s that keeps running until the next command or ``stop()`` (velocity and
            torque-style controllers), so a pause between commands keeps the robot moving.
        ee_period_s: for ``ee_command="velocity"``, the control period (s) over which one command covers
            a[idx] * scale metres.
    """

    dim: int
    low: np.ndarray
    high: np.ndarray
    hold: np.ndarray
    ee_obs_key: str | None = None
    ee_obs_index: tuple[int, ...] = (0, 1, 2)
    ee_action_index: tuple[int, ...] = (0, 1, 2)
    ee_delta_scale: float | None = None
    ee_command: str = "delta"
    ee_period_s: float | None = None

    def __post_init__(self) -> None:
        if self.ee_command not in EE_COMMANDS:
            raise UserError(f"action spec ee_command is {self.ee_command!r}; expected one of {', '.join(EE_COMMANDS)}")
        if self.ee_command == "velocity":
            period = self.ee_period_s
            if not self.is_ee_delta or period is None or not np.isfinite(period) or period <= 0:
                raise UserError("an action spec with ee_command='velocity' needs ee_obs_key, ee_delta_scale and a "
                                f"control period ee_period_s > 0 seconds; got ee_period_s={period}")

    @staticmethod
    def create(dim: int, low: float | np.ndarray = -1.0, high: float | np.ndarray = 1.0,
               hold: np.ndarray | None = None, **ee: Any) -> ActionSpec:
        """Build a spec with broadcast bounds; ``ee`` takes the ``ee_*`` fields."""
        low_arr = np.broadcast_to(np.asarray(low, dtype=np.float32), (dim,)).copy()
        high_arr = np.broadcast_to(np.asarray(high, dtype=np.float32), (dim,)).copy()
        hold_arr = np.zeros(dim, np.float32) if hold is None else np.asarray(hold, dtype=np.float32).reshape(dim)
        if not np.all(low_arr <= high_arr):
            raise UserError(f"action spec bounds are inverted: low={low_arr.tolist()} high={high_arr.tolist()}")
        hold_arr = np.clip(hold_arr, low_arr, high_arr)
        return ActionSpec(dim=dim, low=low_arr, high=high_arr, hold=hold_arr, **ee)

    @property
    def is_ee_delta(self) -> bool:
        """True when actions command the end-effector position (as deltas or velocities): a workspace box applies."""
        return self.ee_obs_key is not None and self.ee_delta_scale is not None

    @property
    def is_ee_velocity(self) -> bool:
        """True when a command is a velocity that keeps running until the next command or stop."""
        return self.ee_command == "velocity"

    def ee_position(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(3,) float64 end-effector position read from an observation of this robot."""
        if not self.is_ee_delta:
            raise UserError("this robot's action spec has no end-effector mapping (ee_obs_key / ee_delta_scale)")
        return np.asarray(obs[self.ee_obs_key], dtype=np.float64)[list(self.ee_obs_index)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by the remote handshake)."""
        return {"dim": self.dim, "low": self.low.tolist(), "high": self.high.tolist(), "hold": self.hold.tolist(),
                "ee_obs_key": self.ee_obs_key, "ee_obs_index": list(self.ee_obs_index),
                "ee_action_index": list(self.ee_action_index), "ee_delta_scale": self.ee_delta_scale,
                "ee_command": self.ee_command, "ee_period_s": self.ee_period_s}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ActionSpec:
        return ActionSpec.create(
            int(d["dim"]), np.asarray(d["low"]), np.asarray(d["high"]), np.asarray(d["hold"]),
            ee_obs_key=d.get("ee_obs_key"), ee_obs_index=tuple(int(i) for i in d.get("ee_obs_index", (0, 1, 2))),
            ee_action_index=tuple(int(i) for i in d.get("ee_action_index", (0, 1, 2))),
            ee_delta_scale=None if d.get("ee_delta_scale") is None else float(d["ee_delta_scale"]),
            ee_command=str(d.get("ee_command", "delta")),
            ee_period_s=None if d.get("ee_period_s") is None else float(d["ee_period_s"]))


class RobotInterface(ABC):
    """A robot: connect, observe, act, stop, go home, disconnect. Subclasses implement the abstract members.

    ``is_real`` marks hardware: :func:`~calql_robot.envs.robot.safety.make_safe_robot` refuses a real robot whose
    config states no workspace box. Implementations must make ``stop()`` safe to call at any time, from any thread,
    repeatedly, and before ``connect()``.
    """

    name: str = "robot"
    is_real: bool = False

    @abstractmethod
    def connect(self) -> None:
        """Open the connection (drivers, cameras, sockets). Idempotent."""

    @abstractmethod
    def disconnect(self) -> None:
        """Stop the robot and release the connection. Idempotent."""

    @property
    @abstractmethod
    def is_connected(self) -> bool:
        """True between ``connect()`` and ``disconnect()``."""

    @property
    @abstractmethod
    def observation_spec(self) -> dict[str, dict[str, Any]]:
        """Obs spec ``{key: {"shape": [...], "dtype": "float32"|"uint8", "kind": "low_dim"|"rgb"}}``."""

    @property
    @abstractmethod
    def action_spec(self) -> ActionSpec:
        """Action dimension, bounds, hold command and end-effector mapping."""

    @abstractmethod
    def get_observation(self) -> dict[str, np.ndarray]:
        """Current observation, one array per ``observation_spec`` key, no batch dim."""

    @abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Command ``action`` (A,); return the (A,) float32 command actually sent to the hardware."""

    @abstractmethod
    def stop(self) -> None:
        """Hold position / zero velocity now."""

    @abstractmethod
    def home(self) -> dict[str, np.ndarray]:
        """Move to the home pose (the reset of an episode) and return the observation there."""

    def task_signal(self) -> TaskSignal:
        """Reward / success known on the robot side after the last action (simulation); real arms: unknown."""
        return TaskSignal()

    def drain_safety_events(self) -> list[SafetyEvent]:
        """Safety events recorded since the last call (wrappers collect them down the chain)."""
        return []

    def reset_targets(self) -> dict[str, np.ndarray]:
        """End-effector positions (3,) that ``home()`` moves to, keyed by the driver argument that sets them (e.g.
        ``{"home_pose": ...}``); ``make_safe_robot`` checks each against the workspace box before the first motion.
        Default: none known (the position ``home()`` reaches is still checked after every ``home()``)."""
        return {}

    def ee_position(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(3,) end-effector position from an observation, via ``action_spec``."""
        return self.action_spec.ee_position(obs)

    def get_ee_position(self) -> np.ndarray:
        """(3,) end-effector position now; override with a cheap proprioceptive read (no cameras) where possible."""
        return self.action_spec.ee_position(self.get_observation())

    def __enter__(self) -> RobotInterface:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.disconnect()


class RobotWrapper(RobotInterface):
    """Base of the safety layers: forwards everything to ``self.robot``; subclasses override what they guard."""

    def __init__(self, robot: RobotInterface) -> None:
        self.robot = robot
        self._events: list[SafetyEvent] = []

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.robot.name

    @property
    def is_real(self) -> bool:  # type: ignore[override]
        return self.robot.is_real

    @property
    def unwrapped(self) -> RobotInterface:
        """The innermost robot."""
        inner = self.robot
        return inner.unwrapped if isinstance(inner, RobotWrapper) else inner

    def record(self, kind: str, message: str) -> SafetyEvent:
        event = SafetyEvent(kind, message)
        self._events.append(event)
        return event

    def connect(self) -> None:
        self.robot.connect()

    def disconnect(self) -> None:
        self.robot.disconnect()

    @property
    def is_connected(self) -> bool:
        return self.robot.is_connected

    @property
    def observation_spec(self) -> dict[str, dict[str, Any]]:
        return self.robot.observation_spec

    @property
    def action_spec(self) -> ActionSpec:
        return self.robot.action_spec

    def get_observation(self) -> dict[str, np.ndarray]:
        return self.robot.get_observation()

    def get_ee_position(self) -> np.ndarray:
        return self.robot.get_ee_position()

    def send_action(self, action: np.ndarray) -> np.ndarray:
        return self.robot.send_action(action)

    def stop(self) -> None:
        self.robot.stop()

    def home(self) -> dict[str, np.ndarray]:
        return self.robot.home()

    def task_signal(self) -> TaskSignal:
        return self.robot.task_signal()

    def drain_safety_events(self) -> list[SafetyEvent]:
        mine, self._events = self._events, []
        return self.robot.drain_safety_events() + mine

    def reset_targets(self) -> dict[str, np.ndarray]:
        return self.robot.reset_targets()


def find_wrapper(robot: RobotInterface, kind: type) -> Any | None:
    """The first layer of type ``kind`` in a wrapper chain (outermost first), or None."""
    layer: RobotInterface | None = robot
    while layer is not None:
        if isinstance(layer, kind):
            return layer
        layer = layer.robot if isinstance(layer, RobotWrapper) else None
    return None
