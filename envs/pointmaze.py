"""PointMaze: a small sparse-reward maze task (gymnasium-robotics ``PointMaze_*-v3``) that learns in minutes on a CPU.

A force-actuated ball (2 actions in [-1, 1]) must reach a goal cell of a maze. The evaluation layout is fixed like
D4RL's: one start cell and one goal cell per maze (``MAZES``), with gymnasium-robotics' uniform position noise
(+-``position_noise_range`` m) on both. Reward is sparse: 1.0 on the step the ball is within 0.45 m of the goal,
else 0.0, and that step *terminates* the episode (``continuing_task=False``). ``info["success"]`` is set after every
``reset`` and ``step``. Episodes are truncated at ``horizon`` decision steps.

Each decision step repeats the action ``action_repeat`` times on the 100 Hz simulation (stopping early on success),
so the default 4 gives 25 Hz control and a scripted path through the U-maze takes about 30-40 decision steps.

Observation: ``{"state": (6,) float32}`` = ``observation`` (ball x, y, vx, vy; 4) then ``desired_goal`` (goal x, y; 2).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium_robotics.envs.maze.maps import MEDIUM_MAZE, U_MAZE, G, R

STATE_KEY = "state"
STATE_DIM = 6
SUCCESS_DISTANCE = 0.45
SIM_FREQ = 100.0  # point.xml: timestep 0.01 s, frame_skip 1

#: maze name -> (wall map of 0/1, start cell (row, col), goal cell (row, col), env id)
MAZES: dict[str, tuple[list[list[Any]], tuple[int, int], tuple[int, int], str]] = {
    "umaze": (U_MAZE, (3, 1), (1, 1), "PointMaze_UMaze-v3"),
    "medium": (MEDIUM_MAZE, (1, 1), (6, 6), "PointMaze_Medium-v3"),
}


def maze_layout(maze: str) -> tuple[list[list[Any]], tuple[int, int], tuple[int, int]]:
    """``(map with R at the start and G at the goal, start cell, goal cell)`` for a maze name."""
    if maze not in MAZES:
        raise ValueError(f"unknown maze '{maze}'; expected one of {sorted(MAZES)}")
    walls, start, goal, _ = MAZES[maze]
    layout = [list(row) for row in walls]
    layout[start[0]][start[1]] = R
    layout[goal[0]][goal[1]] = G
    return layout, start, goal


def free_cells(maze_map: list[list[Any]]) -> list[tuple[int, int]]:
    """Every cell that is not a wall (value 1), as (row, col)."""
    return [(r, c) for r, row in enumerate(maze_map) for c, v in enumerate(row) if v != 1]


def shortest_cell_path(maze_map: list[list[Any]], start: tuple[int, int],
                       goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Cells from ``start`` to ``goal`` (both included) along a shortest 4-connected path through free cells."""
    free = set(free_cells(maze_map))
    previous: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt in free and nxt not in previous:
                previous[nxt] = cell
                queue.append(nxt)
    if goal not in previous:
        raise ValueError(f"no path from cell {start} to cell {goal}")
    path: list[tuple[int, int]] = []
    node: tuple[int, int] | None = goal
    while node is not None:
        path.append(node)
        node = previous[node]
    return path[::-1]


class PointMazeTaskEnv(gym.Env):
    """PointMaze with the project's contract: Dict obs ``{"state": (6,)}``, actions in [-1, 1], sparse terminal
    reward."""

    def __init__(self, maze: str = "umaze", horizon: int = 100, action_repeat: int = 4,
                 position_noise_range: float = 0.25, render: bool = False):
        import gymnasium_robotics

        if int(horizon) < 1 or int(action_repeat) < 1:
            raise ValueError(f"horizon ({horizon}) and action_repeat ({action_repeat}) must be at least 1")
        gym.register_envs(gymnasium_robotics)
        self.maze_name = maze
        self.maze_map, self.start_cell, self.goal_cell = maze_layout(maze)
        self.inner = gym.make(MAZES[maze][3], maze_map=self.maze_map, continuing_task=False, reset_target=False,
                              render_mode="rgb_array" if render else None, disable_env_checker=True).unwrapped
        self.inner.position_noise_range = float(position_noise_range)
        self.horizon = int(horizon)
        self.action_repeat = int(action_repeat)
        self.control_freq = SIM_FREQ / self.action_repeat
        self.observation_space = spaces.Dict(
            {STATE_KEY: spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.render_mode = "rgb_array" if render else None
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(self.control_freq))}
        self._steps = 0
        self._raw: dict[str, np.ndarray] = {}

    @staticmethod
    def flatten_obs(raw_obs: dict[str, np.ndarray]) -> np.ndarray:
        """gymnasium-robotics Dict obs -> (6,) float32: ``observation`` (x, y, vx, vy) then ``desired_goal`` (x, y)."""
        return np.concatenate([raw_obs["observation"], raw_obs["desired_goal"]]).astype(np.float32)

    def _success(self) -> bool:
        return bool(np.linalg.norm(self._raw["achieved_goal"] - self._raw["desired_goal"]) <= SUCCESS_DISTANCE)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset; ``options`` may hold ``reset_cell`` / ``goal_cell`` (row, col) to override the fixed layout."""
        super().reset(seed=seed)
        opts = {k: np.asarray(v, dtype=int) for k, v in (options or {}).items()}
        self._raw, info = self.inner.reset(seed=seed, options=opts or None)
        self._steps = 0
        return {STATE_KEY: self.flatten_obs(self._raw)}, {"success": self._success()}

    def step(self, action: np.ndarray):
        """Apply ``action`` (2,) for ``action_repeat`` simulation steps; reward 1.0 and termination on success."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        success = False
        for _ in range(self.action_repeat):
            self._raw = self.inner.step(action)[0]
            success = self._success()
            if success:
                break
        self._steps += 1
        truncated = not success and self._steps >= self.horizon
        obs = {STATE_KEY: self.flatten_obs(self._raw)}
        return obs, (1.0 if success else 0.0), success, truncated, {"success": success}

    def cell_xy(self, cell: tuple[int, int]) -> np.ndarray:
        """World (x, y) of the centre of maze cell (row, col)."""
        return np.asarray(self.inner.maze.cell_rowcol_to_xy(np.asarray(cell)), dtype=np.float64)

    def xy_cell(self, xy: np.ndarray) -> tuple[int, int]:
        """Maze cell (row, col) that holds world point ``xy``."""
        row, col = self.inner.maze.cell_xy_to_rowcol(np.asarray(xy, dtype=np.float64))
        return int(row), int(col)

    def goal_xy(self) -> np.ndarray:
        """Current goal (x, y)."""
        return np.asarray(self.inner.goal, dtype=np.float64).copy()

    def set_ball_xy(self, xy: np.ndarray) -> None:
        """Move the ball to ``xy`` at rest (tests and demos)."""
        point = self.inner.point_env
        qpos = point.data.qpos.copy()
        qpos[:2] = xy
        point.set_state(qpos, np.zeros_like(point.data.qvel))
        self._raw = {**self._raw, "observation": np.concatenate([qpos[:2], np.zeros(2)]),
                     "achieved_goal": np.asarray(xy, dtype=np.float64).copy()}

    def render(self):
        return self.inner.render()

    def close(self):
        self.inner.close()


def make_pointmaze_env(maze: str = "umaze", horizon: int = 100, action_repeat: int = 4,
                       position_noise_range: float = 0.25, render: bool = False, **kwargs: Any) -> PointMazeTaskEnv:
    """Build a PointMaze task env (``maze``: umaze | medium). Unknown ``kwargs`` are rejected so that a typo in a
    task config fails loudly."""
    if kwargs:
        raise TypeError(f"make_pointmaze_env: unexpected arguments {sorted(kwargs)}")
    return PointMazeTaskEnv(maze, horizon, action_repeat, position_noise_range, render)


def generate_dataset(path: str | Path, episodes: int = 200, seed: int = 0, noise: float = 0.5,
                     wander_fraction: float = 0.3, give_up_fraction: float = 0.25, random_start_fraction: float = 0.3,
                     overwrite: bool = True, **env_kwargs: Any) -> str:
    """Write noisy scripted PointMaze trajectories to a zarr store at ``path``; see :mod:`pointmaze_data`."""
    from calql_robot.envs.pointmaze_data import write_scripted_dataset

    return write_scripted_dataset(path, episodes, seed, noise=noise, wander_fraction=wander_fraction,
                                  give_up_fraction=give_up_fraction, random_start_fraction=random_start_fraction,
                                  overwrite=overwrite, **env_kwargs)
