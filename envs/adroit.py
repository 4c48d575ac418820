"""Adroit binary tasks of the Cal-QL paper (pen, door, relocate) on gymnasium-robotics ``AdroitHand*-v1`` (the envs
the Minari ``D4RL/{pen,door,relocate}/*-v2`` datasets were recorded with).

Binary reward (the AWAC / Cal-QL "binary" Adroit convention): 0.0 on a step where the env reports
``goal_achieved`` (gymnasium-robotics' ``info["success"]``), else -1.0; no termination (the tasks continue to the
horizon: pen 100, door 200, relocate 200 steps). Episode success = any step succeeded.

State layout = the env's flat observation as float32: pen 45, door 39, relocate 39 values (the D4RL layout).
Actions: 24 (pen), 28 (door), 30 (relocate), already in [-1, 1] (the env maps them onto the actuator ranges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calql_robot.envs.state_task_common import StateTaskEnv, make_inner_env, write_generated_dataset

CONTROL_FREQ = 100.0  # frame_skip 5 x timestep 0.002 s
#: task -> (env id, horizon, state dim, action dim)
ADROIT_TASKS: dict[str, tuple[str, int, int, int]] = {
    "pen": ("AdroitHandPen-v1", 100, 45, 24),
    "door": ("AdroitHandDoor-v1", 200, 39, 28),
    "relocate": ("AdroitHandRelocate-v1", 200, 39, 30),
}
REWARD_SUCCESS = 0.0
REWARD_FAILURE = -1.0


def flatten_adroit_obs(raw_obs: np.ndarray) -> np.ndarray:
    """Adroit flat observation (single step or batch) -> float32 copy."""
    return np.asarray(raw_obs, dtype=np.float32)


def binary_reward(success: np.ndarray | bool) -> np.ndarray | float:
    """Binary Adroit reward: 0 where the goal is achieved, -1 elsewhere (works on arrays and scalars)."""
    if isinstance(success, np.ndarray):
        return np.where(success, REWARD_SUCCESS, REWARD_FAILURE).astype(np.float32)
    return REWARD_SUCCESS if success else REWARD_FAILURE


class AdroitBinaryTaskEnv(StateTaskEnv):
    """Adroit hand task with the binary reward and ``info['success']`` = goal achieved on this step."""

    def __init__(self, task: str, render: bool, horizon: int | None, render_size: int = 256):
        if task not in ADROIT_TASKS:
            raise ValueError(f"unknown Adroit task '{task}'; expected one of {sorted(ADROIT_TASKS)}")
        env_id, default_horizon, state_dim, _ = ADROIT_TASKS[task]
        self.task = task
        inner = make_inner_env(env_id, render, render_size)
        super().__init__(inner, state_dim, horizon or default_horizon, CONTROL_FREQ)

    def flatten_obs(self, raw_obs: np.ndarray) -> np.ndarray:
        return flatten_adroit_obs(raw_obs)

    def task_reset(self, raw_obs, info) -> bool:
        return False

    def task_step(self, raw_obs, raw_reward, raw_terminated, info) -> tuple[float, bool, bool]:
        success = bool(info.get("success", False))
        return float(binary_reward(success)), success, False


def make_adroit_env(
    task: str, render: bool = False, horizon: int | None = None, render_size: int = 256, **kwargs: Any
) -> AdroitBinaryTaskEnv:
    """Build an Adroit binary task env; ``task``: pen | door | relocate; ``render_size``: side of rendered frames."""
    if kwargs:
        raise TypeError(f"make_adroit_env: unexpected arguments {sorted(kwargs)}")
    return AdroitBinaryTaskEnv(task, render, horizon, render_size)


def generate_dataset(
    path: str | Path, episodes: int = 10, seed: int = 0, task: str = "pen", max_steps: int | None = None,
    **task_kwargs: Any,
) -> str:
    """Write a small local Adroit binary dataset of noisy random episodes (a plumbing dataset: successes are rare)."""
    env = make_adroit_env(task, **task_kwargs)
    try:
        return write_generated_dataset(
            path, env, episodes, seed, task=f"adroit_{task}_binary", reward_success=REWARD_SUCCESS,
            reward_failure=REWARD_FAILURE, max_steps=max_steps,
            source={"kind": "generated", "generator": "calql_robot.envs.adroit.generate_dataset"},
        )
    finally:
        env.close()
