"""Franka Kitchen tasks of the Cal-QL paper on gymnasium-robotics ``FrankaKitchen-v1`` (the env the Minari
``D4RL/kitchen/*`` datasets were recorded with).

Target subtasks (the D4RL task sets, also those of the Minari ``D4RL/kitchen/*-v2`` recordings): ``complete`` and
``partial`` = microwave, kettle, light switch, slide cabinet; ``mixed`` = microwave, kettle, bottom burner, light
switch. Reward (D4RL evaluation / wsrl convention): the number of target subtasks completed so far in the episode
(0..4; a subtask counts once its joints came within 0.3 of the goal, gymnasium-robotics' BONUS_THRESH); the episode
*terminates* when all 4 have been done, and that step is the success. Horizon 280.

State layout (59 float32) = the env's ``observation`` entry: 9 robot joint positions, 9 robot joint velocities,
21 object positions, 20 object velocities. ``achieved_goal`` / ``desired_goal`` are left out: the goals are fixed
per task and the achieved values are already among the object positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from gymnasium_robotics.envs.franka_kitchen.kitchen_env import BONUS_THRESH, OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

from calql_robot.envs.state_task_common import StateTaskEnv, make_inner_env, write_generated_dataset

ENV_ID = "FrankaKitchen-v1"
CONTROL_FREQ = 12.5  # frame_skip 40 x timestep 0.002 s
HORIZON = 280
STATE_DIM = 59
TASK_SETS: dict[str, list[str]] = {
    "complete": ["microwave", "kettle", "light switch", "slide cabinet"],
    "partial": ["microwave", "kettle", "light switch", "slide cabinet"],
    "mixed": ["microwave", "kettle", "bottom burner", "light switch"],
}


def flatten_kitchen_obs(raw_obs: dict[str, Any]) -> np.ndarray:
    """Kitchen Dict obs (single step or batch) -> (..., 59) float32: the ``observation`` entry."""
    return np.asarray(raw_obs["observation"], dtype=np.float32)


def completed_tasks(achieved_goal: dict[str, np.ndarray], tasks: list[str]) -> set[str]:
    """Target subtasks whose achieved values are within BONUS_THRESH of their goal in this step."""
    return {t for t in tasks if np.linalg.norm(np.asarray(achieved_goal[t]) - OBS_ELEMENT_GOALS[t]) < BONUS_THRESH}


def cumulative_completion_counts(achieved_goal: dict[str, np.ndarray], tasks: list[str]) -> np.ndarray:
    """Per step of a batch ``achieved_goal`` {task: (N, k)}: number of target subtasks completed at or before it."""
    n = len(next(iter(achieved_goal.values())))
    done_at = np.zeros((n, len(tasks)), dtype=bool)
    for j, task in enumerate(tasks):
        dist = np.linalg.norm(np.asarray(achieved_goal[task]) - OBS_ELEMENT_GOALS[task], axis=-1)
        done_at[:, j] = np.logical_or.accumulate(dist < BONUS_THRESH)
    return done_at.sum(axis=1).astype(np.float32)


class KitchenTaskEnv(StateTaskEnv):
    """Franka Kitchen with reward = subtasks completed so far, terminal when all are done."""

    def __init__(self, tasks: list[str], render: bool, horizon: int, render_size: int = 256):
        unknown = [t for t in tasks if t not in OBS_ELEMENT_INDICES]
        if unknown:
            raise ValueError(f"unknown kitchen subtasks {unknown}; expected names from {sorted(OBS_ELEMENT_INDICES)}")
        inner = make_inner_env(
            ENV_ID, render, render_size, tasks_to_complete=list(tasks), terminate_on_tasks_completed=True
        )
        self.tasks = list(tasks)
        self._done: set[str] = set()
        super().__init__(inner, STATE_DIM, horizon, CONTROL_FREQ)

    def flatten_obs(self, raw_obs: dict[str, Any]) -> np.ndarray:
        return flatten_kitchen_obs(raw_obs)

    def task_reset(self, raw_obs, info) -> bool:
        self._done = set()
        return False

    def task_step(self, raw_obs, raw_reward, raw_terminated, info) -> tuple[float, bool, bool]:
        self._done |= completed_tasks(raw_obs["achieved_goal"], self.tasks)
        info["tasks_completed"] = sorted(self._done)
        all_done = len(self._done) == len(self.tasks)
        return float(len(self._done)), all_done, all_done

    def place_task_done(self, task: str) -> None:
        """Set the MuJoCo joints of ``task``'s object to their goal values (tests and demos)."""
        data, model = self.inner.robot_env.data, self.inner.robot_env.model
        data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
        data.qvel[:] = 0.0
        mujoco.mj_forward(model, data)


def make_kitchen_env(
    task_set: str = "complete", render: bool = False, horizon: int = HORIZON, tasks: list[str] | None = None,
    render_size: int = 256, **kwargs: Any,
) -> KitchenTaskEnv:
    """Build a kitchen task env; ``task_set``: complete | partial | mixed, or an explicit ``tasks`` list;
    ``render_size``: side of rendered frames."""
    if kwargs:
        raise TypeError(f"make_kitchen_env: unexpected arguments {sorted(kwargs)}")
    if tasks is None:
        if task_set not in TASK_SETS:
            raise ValueError(f"unknown kitchen task_set '{task_set}'; expected one of {sorted(TASK_SETS)}")
        tasks = TASK_SETS[task_set]
    return KitchenTaskEnv(list(tasks), render, horizon, render_size)


def generate_dataset(
    path: str | Path, episodes: int = 10, seed: int = 0, task_set: str = "complete", max_steps: int | None = 60,
    **task_kwargs: Any,
) -> str:
    """Write a small local kitchen dataset of noisy random episodes (a plumbing dataset: subtasks are rarely done).

    ``max_steps`` cuts episodes (truncated) to keep generation fast; ``None`` runs to the horizon.
    """
    env = make_kitchen_env(task_set, **task_kwargs)
    try:
        return write_generated_dataset(
            path, env, episodes, seed, task=f"kitchen_{task_set}", reward_success=float(len(env.tasks)),
            reward_failure=0.0, source={"kind": "generated", "generator": "calql_robot.envs.kitchen.generate_dataset"},
            max_steps=max_steps,
        )
    finally:
        env.close()
