"""AntMaze tasks of the Cal-QL paper (umaze, medium, large) on gymnasium-robotics ``AntMaze_*-v4``.

``AntMaze_*-v4`` is the version the Minari ``D4RL/antmaze/*-v1`` datasets were recorded with (v5 adds contact
forces to the observation, 105 values instead of 27); the data were recorded with ``continuing_task=True``,
``reset_target=False``. Evaluation: a fixed start cell and a fixed goal cell per maze (``MAZES``), sparse reward 1.0
when the ant's torso (x, y) is within 0.45 of the goal, else 0.0, and the episode *terminates* on success
(``continuing_task=False``, ``reset_target=False``). Horizon 700 (umaze) / 1000. Start and goal cells: medium and
large as in the Minari datasets' evaluation env specs (start (1, 1); goal (6, 6) / (7, 9)); umaze as in the
Minari umaze data (start (3, 1), goal (1, 1): D4RL's layout, whose row axis points the other way) because the
umaze evaluation spec stored in Minari has left-right mirrored walls (Minari issue #304).

State layout (31 float32), the order ``gymnasium.spaces.flatten`` gives the Dict the Minari datasets store
(keys sorted): ``achieved_goal`` (torso x, y; 2) | ``desired_goal`` (goal x, y; 2) | ``observation`` (27: torso z,
torso quaternion, 8 joint angles, 14 velocities). Dropping ``desired_goal`` (``include_goal=False``, 29 values)
gives the original D4RL ``antmaze-*`` observation (qpos 15 + qvel 14).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium_robotics.envs.maze.maps import LARGE_MAZE, MEDIUM_MAZE, U_MAZE, G, R

from calql_robot.envs.state_task_common import StateTaskEnv, make_inner_env, write_generated_dataset

SUCCESS_DISTANCE = 0.45
CONTROL_FREQ = 20.0  # ant frame_skip 5 x timestep 0.01 s


def _with_cells(walls: list[list[Any]], start: tuple[int, int], goal: tuple[int, int]) -> list[list[Any]]:
    """Copy of ``walls`` with the start cell marked R and the goal cell marked G (an evaluation layout)."""
    maze = [list(row) for row in walls]
    maze[start[0]][start[1]] = R
    maze[goal[0]][goal[1]] = G
    return maze


#: maze name -> (env id, evaluation map with fixed start R and goal G, horizon)
MAZES: dict[str, tuple[str, list[list[Any]], int]] = {
    "umaze": ("AntMaze_UMaze-v4", _with_cells(U_MAZE, (3, 1), (1, 1)), 700),
    "medium": ("AntMaze_Medium-v4", _with_cells(MEDIUM_MAZE, (1, 1), (6, 6)), 1000),
    "large": ("AntMaze_Large-v4", _with_cells(LARGE_MAZE, (1, 1), (7, 9)), 1000),
}
#: task variants (dataset flavours) share the evaluation maze of their size
VARIANT_MAZE = {
    "umaze": "umaze", "umaze_diverse": "umaze", "medium_play": "medium", "medium_diverse": "medium",
    "large_play": "large", "large_diverse": "large",
}


def flatten_antmaze_obs(raw_obs: dict[str, np.ndarray], include_goal: bool = True) -> np.ndarray:
    """AntMaze Dict obs (single step or batch (N, .)) -> (..., 31) float32, or (..., 29) without the goal."""
    parts = [raw_obs["achieved_goal"], raw_obs["desired_goal"], raw_obs["observation"]]
    if not include_goal:
        parts = [raw_obs["achieved_goal"], raw_obs["observation"]]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=-1)


def antmaze_state_dim(include_goal: bool = True) -> int:
    return 31 if include_goal else 29


class AntMazeTaskEnv(StateTaskEnv):
    """AntMaze with the Cal-QL conventions: reward 1/0, terminal on success, ``info['success']``."""

    def __init__(
        self, maze: str, render: bool, horizon: int | None, include_goal: bool, position_noise_range: float,
        render_size: int = 256,
    ):
        if maze not in VARIANT_MAZE:
            raise ValueError(f"unknown maze '{maze}'; expected one of {sorted(VARIANT_MAZE)}")
        self.maze_name = VARIANT_MAZE[maze]
        env_id, maze_map, default_horizon = MAZES[self.maze_name]
        inner = make_inner_env(
            env_id, render, render_size, maze_map=maze_map, continuing_task=False, reset_target=False
        )
        inner.position_noise_range = float(position_noise_range)  # v4's constructor does not pass it through
        self.include_goal = include_goal
        super().__init__(inner, antmaze_state_dim(include_goal), horizon or default_horizon, CONTROL_FREQ)

    def flatten_obs(self, raw_obs: dict[str, np.ndarray]) -> np.ndarray:
        return flatten_antmaze_obs(raw_obs, self.include_goal)

    def task_step(self, raw_obs, raw_reward, raw_terminated, info) -> tuple[float, bool, bool]:
        success = bool(np.linalg.norm(raw_obs["achieved_goal"] - raw_obs["desired_goal"]) <= SUCCESS_DISTANCE)
        return (1.0 if success else 0.0), success, success

    def goal_xy(self) -> np.ndarray:
        """Current goal (x, y) in world coordinates."""
        return np.asarray(self.inner.goal, dtype=np.float64).copy()

    def set_torso_xy(self, xy: np.ndarray) -> dict[str, np.ndarray]:
        """Move the ant's torso to ``xy`` in the MuJoCo state and return the new observation (tests, generators)."""
        ant = self.inner.ant_env
        qpos, qvel = ant.data.qpos.copy(), ant.data.qvel.copy()
        qpos[:2] = xy
        ant.set_state(qpos, qvel)
        return self._obs(self.inner._get_obs(ant._get_obs()))


def make_antmaze_env(
    maze: str, render: bool = False, horizon: int | None = None, include_goal: bool = True,
    position_noise_range: float = 0.25, render_size: int = 256, **kwargs: Any,
) -> AntMazeTaskEnv:
    """Build an AntMaze task env. ``maze``: umaze | umaze_diverse | medium_play | medium_diverse | large_play |
    large_diverse. ``position_noise_range`` (x maze cell size 4) is gymnasium-robotics' uniform noise on start
    and goal; ``render_size`` the side of rendered frames. Unknown ``kwargs`` are rejected so that a typo in a task
    config fails loudly."""
    if kwargs:
        raise TypeError(f"make_antmaze_env: unexpected arguments {sorted(kwargs)}")
    return AntMazeTaskEnv(maze, render, horizon, include_goal, position_noise_range, render_size)


def generate_dataset(
    path: str | Path, episodes: int = 20, seed: int = 0, maze: str = "umaze", max_steps: int | None = 200,
    **task_kwargs: Any,
) -> str:
    """Write a small local AntMaze dataset of noisy random episodes (a plumbing dataset, not a benchmark one).

    Every second episode starts 0.3-0.8 m from the goal (the torso is placed there right after reset, before the
    first observation), so some episodes succeed and terminate; the others start at the maze's start cell and
    wander. ``max_steps`` cuts episodes (truncated) to keep generation fast; ``None`` runs to the horizon.
    """
    env = make_antmaze_env(maze, **task_kwargs)

    def start_near_goal(episode: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        if episode % 2:
            return None
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.8)
        return env.set_torso_xy(env.goal_xy() + radius * np.array([np.cos(angle), np.sin(angle)]))

    try:
        return write_generated_dataset(
            path, env, episodes, seed, task=f"antmaze_{maze}", reward_success=1.0, reward_failure=0.0,
            source={"kind": "generated", "generator": "calql_robot.envs.antmaze.generate_dataset", "maze": maze},
            after_reset_fn=start_near_goal, max_steps=max_steps,
        )
    finally:
        env.close()
