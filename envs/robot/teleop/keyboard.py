"""Keyboard intervention: hold a key to take the arm over, steer with the arrows and two letter pairs.

Keys (read globally through pynput, so they work while the deploy terminal is not focused; it needs a desktop
session: an X11 / Wayland-with-XWayland display on Linux, accessibility permission on macOS)::

    hold i        take over (release: the policy acts again)
    up / down     +x / -x        left / right   +y / -y        e / d   +z / -z   (end-effector frame of the robot)
    z             close the gripper (stays closed)              x       open the gripper

None of these keys is one of the terminal event keys (s f r p q c, space), so labels and the e-stop keep working
beside it. :class:`KeyboardState` holds the logic and is driven by key names, so it runs without a display.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from calql_robot.envs.robot.interface import RobotInterface
from calql_robot.envs.robot.teleop.base import InterventionDevice, TeleopMapping
from calql_robot.errors import UserError

TAKEOVER_KEY = "i"
AXIS_KEYS = {"up": (0, 1.0), "down": (0, -1.0), "left": (1, 1.0), "right": (1, -1.0), "e": (2, 1.0), "d": (2, -1.0)}
GRIPPER_KEYS = {"z": True, "x": False}


class KeyboardState:
    """Held keys -> (takeover, (3,) translation, gripper closed). Key names: letters, or up/down/left/right."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.gripper_closed = False
        self._lock = threading.Lock()

    def press(self, key: str) -> None:
        with self._lock:
            self.held.add(key)
            if key in GRIPPER_KEYS:
                self.gripper_closed = GRIPPER_KEYS[key]

    def release(self, key: str) -> None:
        with self._lock:
            self.held.discard(key)

    def command(self) -> tuple[bool, np.ndarray, bool]:
        with self._lock:
            move = np.zeros(3)
            for key in self.held:
                if key in AXIS_KEYS:
                    axis, sign = AXIS_KEYS[key]
                    move[axis] += sign
            return TAKEOVER_KEY in self.held, np.clip(move, -1.0, 1.0), self.gripper_closed


def _key_name(key: object) -> str | None:
    """pynput key object -> the names above (``Key.up`` -> "up", ``KeyCode(char='I')`` -> "i")."""
    char = getattr(key, "char", None)
    if char:
        return str(char).lower()
    name = getattr(key, "name", None)
    return str(name) if name else None


class KeyboardIntervention(InterventionDevice):
    """``deploy.intervention.kind=keyboard`` (see the module docstring for the keys)."""

    name = "keyboard"

    def __init__(self, mapping: TeleopMapping, listen: bool = True) -> None:
        self.mapping, self.state, self._listener = mapping, KeyboardState(), None
        if listen:
            self._listener = self._start_listener()

    def _start_listener(self) -> object:
        try:
            from pynput import keyboard
        except ImportError as err:  # not installed, or no display: pynput raises ImportError naming its backend
            raise UserError(
                "deploy.intervention.kind=keyboard reads keys through pynput, which could not start here "
                f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}). Install it with "
                "`pip install calql_robot[teleop]` and run deploy inside a desktop session (DISPLAY set on Linux); "
                "on a headless machine use kind=gamepad, kind=spacemouse or kind=scripted (simulation)") from None

        def on_press(key: object) -> None:
            name = _key_name(key)
            if name:
                self.state.press(name)

        def on_release(key: object) -> None:
            name = _key_name(key)
            if name:
                self.state.release(name)

        listener = keyboard.Listener(on_press=on_press, on_release=on_release)
        listener.daemon = True
        listener.start()
        print("keyboard intervention: hold i to take over; arrows x/y, e/d z, z close / x open the gripper")
        return listener

    def start_episode(self, episode: int, robot: RobotInterface) -> None:
        self.state.held.clear()  # a key held across the reset does not carry into the new episode

    def action(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray, step: int) -> np.ndarray | None:
        takeover, move, closed = self.state.command()
        return self.mapping.action(move, closed) if takeover else None

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()  # type: ignore[attr-defined]
            self._listener = None
