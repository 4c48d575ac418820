"""Gamepad intervention through pygame's joystick API (Xbox / PlayStation layouts; the ``teleop`` extra).

Controls (SDL's standard mapping; button and axis numbers can be changed in ``deploy.intervention.gamepad``)::

    hold the right bumper (button 5)   take over       left stick   x (up: +x) / y (left: +y)
    right stick up / down              +z / -z         A (button 0) close the gripper; B (button 1) open it

Stick values inside ``deadzone`` count as zero. Reads never block: pygame's event queue is pumped each step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from calql_robot.envs.robot.teleop.base import InterventionDevice, TeleopMapping
from calql_robot.errors import UserError

DEFAULTS = {"takeover_button": 5, "close_button": 0, "open_button": 1, "axis_x": 1, "axis_y": 0, "axis_z": 3,
            "deadzone": 0.1}


def stick_translation(raw_x: float, raw_y: float, raw_z: float, deadzone: float) -> np.ndarray:
    """(3,) translation from SDL stick values (up and left are negative in SDL, so they are negated here)."""
    move = -np.array([raw_x, raw_y, raw_z], dtype=np.float64)
    move[np.abs(move) < deadzone] = 0.0
    return np.clip(move, -1.0, 1.0)


class GamepadIntervention(InterventionDevice):
    """``deploy.intervention.kind=gamepad``: the first joystick pygame finds (see the module docstring)."""

    name = "gamepad"

    def __init__(self, mapping: TeleopMapping, cfg: Mapping[str, Any] | None = None) -> None:
        self.mapping, self.gripper_closed = mapping, False
        self.cfg = {**DEFAULTS, **dict(cfg or {})}
        try:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # joysticks need no window
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
            import pygame
        except ImportError:
            raise UserError("deploy.intervention.kind=gamepad needs pygame: `pip install calql_robot[teleop]` "
                            "(or pip install pygame==2.6.1)") from None
        self.pygame = pygame
        pygame.init()
        pygame.joystick.init()
        if pygame.joystick.get_count() == 0:
            pygame.quit()
            raise UserError("deploy.intervention.kind=gamepad: no gamepad found (pygame sees 0 joysticks). Plug one "
                            "in (on Linux the user needs read access to /dev/input/event*), or use "
                            "kind=keyboard / spacemouse / scripted")
        self.stick = pygame.joystick.Joystick(0)
        self.stick.init()
        print(f"gamepad intervention: {self.stick.get_name()}; hold button {self.cfg['takeover_button']} to take over")

    def action(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray, step: int) -> np.ndarray | None:
        self.pygame.event.pump()
        button = self.stick.get_button
        if button(int(self.cfg["close_button"])):
            self.gripper_closed = True
        elif button(int(self.cfg["open_button"])):
            self.gripper_closed = False
        if not button(int(self.cfg["takeover_button"])):
            return None
        axis = self.stick.get_axis
        move = stick_translation(axis(int(self.cfg["axis_x"])), axis(int(self.cfg["axis_y"])),
                                 axis(int(self.cfg["axis_z"])), float(self.cfg["deadzone"]))
        return self.mapping.action(move, self.gripper_closed)

    def close(self) -> None:
        self.pygame.quit()
