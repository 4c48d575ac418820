"""SpaceMouse intervention through pyspacemouse (3Dconnexion devices over HID; the ``teleop`` extra).

The puck's translation drives the end effector; touching it takes over (any axis beyond ``deadzone``), letting go
hands the arm back to the policy, as SERL's SpaceMouse intervention does. Left button: close the gripper; right
button: open it (the state stays until the other button is pressed; pressing either also takes over for that step).
Axes use pyspacemouse's right-handed z-up convention (x forward, y left, z up).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from calql_robot.envs.robot.teleop.base import InterventionDevice, TeleopMapping
from calql_robot.errors import UserError


def puck_command(x: float, y: float, z: float, buttons: list[int], deadzone: float,
                 gripper_closed: bool) -> tuple[bool, np.ndarray, bool]:
    """(takeover, (3,) translation, gripper closed) from one SpaceMouse state."""
    move = np.clip(np.array([x, y, z], dtype=np.float64), -1.0, 1.0)
    move[np.abs(move) < deadzone] = 0.0
    pressed = [bool(b) for b in buttons[:2]] + [False] * max(0, 2 - len(buttons))
    if pressed[0]:
        gripper_closed = True
    elif pressed[1]:
        gripper_closed = False
    return bool(np.any(move != 0.0) or any(pressed)), move, gripper_closed


class SpaceMouseIntervention(InterventionDevice):
    """``deploy.intervention.kind=spacemouse`` (see the module docstring)."""

    name = "spacemouse"

    def __init__(self, mapping: TeleopMapping, cfg: Mapping[str, Any] | None = None) -> None:
        self.mapping, self.gripper_closed = mapping, False
        self.deadzone = float(dict(cfg or {}).get("deadzone", 0.05))
        try:
            import pyspacemouse
        except ImportError:
            raise UserError("deploy.intervention.kind=spacemouse needs pyspacemouse: `pip install "
                            "calql_robot[teleop]` (and the system's hidapi library: apt install libhidapi-hidraw0)"
                            ) from None
        try:
            convention = getattr(getattr(pyspacemouse, "AxisConvention", None), "HID_Z_UP", None)
            self.device = pyspacemouse.open(axis_convention=convention) if convention else pyspacemouse.open()
        except (RuntimeError, OSError, ValueError) as err:
            raise UserError(f"deploy.intervention.kind=spacemouse: no SpaceMouse could be opened ({err}). Plug one "
                            "in and give the user access to its /dev/hidraw* node (a udev rule), or use "
                            "kind=keyboard / gamepad / scripted") from None
        print(f"spacemouse intervention: {getattr(self.device, 'name', 'SpaceMouse')}; touch the puck to take over")

    def action(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray, step: int) -> np.ndarray | None:
        state = self.device.read()
        takeover, move, self.gripper_closed = puck_command(state.x, state.y, state.z, list(state.buttons),
                                                           self.deadzone, self.gripper_closed)
        return self.mapping.action(move, self.gripper_closed) if takeover else None

    def close(self) -> None:
        self.device.close()
