"""The scripted intervener: a controller that takes over when a rule fires, so the intervention path runs unattended.

``deploy.intervention.kind=scripted`` on ``robot=sim``: the pick-and-place waypoint controller
(:class:`calql_robot.envs.pick_place_scripted.ScriptedPickPlace`, mode ``full``, reading the simulator's cube
position) takes the arm over when the policy has not lifted the cube by step ``takeover_after_steps`` of an episode,
and keeps it until the episode ends (by success or the horizon): the "human" fixes the attempt, as a person does in
HIL-SERL. ``takeover_after_steps: 0`` takes over from the first step (a demonstration).

"Lifted" is the simulator's own state: the cube's centre at least ``lift_m`` above where it rested at the reset,
or already in the bin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from calql_robot.envs.robot.interface import RobotInterface, find_wrapper
from calql_robot.envs.robot.teleop.base import InterventionDevice
from calql_robot.errors import UserError


class ScriptedIntervener(InterventionDevice):
    """Takes over with the scripted pick-and-place controller when the cube is not lifted by a given step."""

    name = "scripted"

    def __init__(self, takeover_after_steps: int = 20, lift_m: float = 0.02, action_noise: float = 0.05,
                 seed: int = 0) -> None:
        if isinstance(takeover_after_steps, bool) or not isinstance(takeover_after_steps, int) \
                or takeover_after_steps < 0:
            raise UserError(f"deploy.intervention.scripted.takeover_after_steps is {takeover_after_steps!r}; "
                            "expected a whole number of steps >= 0")
        for key, value in (("lift_m", lift_m), ("action_noise", action_noise)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < 1:
                raise UserError(f"deploy.intervention.scripted.{key} is {value!r}; expected a number in [0, 1)")
        self.takeover_after_steps = int(takeover_after_steps)
        self.lift_m, self.action_noise, self.seed = float(lift_m), float(action_noise), int(seed)
        self.env: Any = None
        self.controller: Any = None
        self.rest_z = 0.0
        self.episode = -1

    def start_episode(self, episode: int, robot: RobotInterface) -> None:
        from calql_robot.envs.robot.sim_robot import SimRobot

        sim = find_wrapper(robot, SimRobot)
        if sim is None or sim.sim_env is None:
            raise UserError(f"deploy.intervention.kind=scripted needs robot=sim (the pick-and-place simulation, whose "
                            f"cube position the scripted controller reads); robot '{robot.name}' is not one. Use "
                            "kind=keyboard|gamepad|spacemouse on a real robot")
        self.env, self.controller, self.episode = sim.sim_env, None, int(episode)
        self.rest_z = float(self.env.task.cube_pos[2])

    def _lifted(self) -> bool:
        task = self.env.task
        return bool(task.cube_pos[2] - self.rest_z >= self.lift_m or task.cube_in_bin())

    def action(self, obs: Mapping[str, np.ndarray], policy_action: np.ndarray, step: int) -> np.ndarray | None:
        if self.env is None:
            return None
        if self.controller is None:
            if step < self.takeover_after_steps or self._lifted():
                return None
            from calql_robot.envs.pick_place_scripted import ScriptedPickPlace

            rng = np.random.default_rng([self.seed, self.episode])
            self.controller = ScriptedPickPlace(self.env, "full", rng, action_noise=self.action_noise)
        return self.controller.act(np.asarray(obs["robot_state"]))
