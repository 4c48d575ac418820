"""Environments: state-based benchmark tasks, visual pick-and-place, and robot interfaces.

Task configs (``configs/task/*.yaml``) name a factory in ``task.env`` and a dataset generator in ``task.generate``;
the helpers here instantiate them so that runners never import a task module by name.
"""

from __future__ import annotations

import os

# Headless rendering by default (MuJoCo reads this when it first creates a context); a user's choice is kept.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from pathlib import Path  # noqa: E402
from typing import Any

import gymnasium as gym
from omegaconf import DictConfig

from calql_robot.errors import UserError


def _drop_adroit_reward_notice() -> None:
    """Keep gymnasium_robotics from printing its Adroit *Dense-v1* reward notice on import (to stderr, on every
    command that imports it, PointMaze included). No task here uses those rewards (the Adroit tasks compute their
    binary reward from ``goal_achieved``), so only that notice is removed from ``farama_notifications`` before the
    first import; any other notice still prints."""
    try:
        from farama_notifications import notifications
    except ImportError:
        return
    versions = notifications.get("gymnasium_robotics", {})
    for version, message in list(versions.items()):
        if "AdroitHand" in str(message) and "reward functions were updated" in str(message):
            del versions[version]


_drop_adroit_reward_notice()


PICK_PLACE_ID = "calql_robot/PickPlace-v0"
if PICK_PLACE_ID not in gym.registry:
    gym.register(id=PICK_PLACE_ID, entry_point="calql_robot.envs.pick_place:PickPlaceEnv")


def make_task_env(task_cfg: DictConfig, seed: int | None = None, render: bool = False, **overrides: Any) -> gym.Env:
    """Instantiate ``task_cfg.env`` (a hydra ``_target_`` block) and seed it; extra kwargs override the config."""
    from hydra.utils import instantiate

    if "env" not in task_cfg:
        raise UserError(f"task '{task_cfg.get('name')}' has no 'env' block; expected env: {{_target_: ...}}")
    kwargs = dict(overrides)
    if render:
        kwargs["render"] = True
    env = _unwrap_user_error(lambda: instantiate(task_cfg.env, **kwargs))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def generate_task_dataset(task_cfg: DictConfig, path: str | Path, episodes: int | None = None, seed: int = 0) -> Path:
    """Write a small local dataset for the task with its ``task_cfg.generate`` generator; returns the store path."""
    from hydra.utils import instantiate

    if "generate" not in task_cfg:
        raise UserError(f"task '{task_cfg.get('name')}' has no 'generate' block, so no local dataset can be made")
    kwargs: dict[str, Any] = {"path": str(path), "seed": seed}
    if episodes is not None:
        kwargs["episodes"] = episodes
    generator = _unwrap_user_error(lambda: instantiate(task_cfg.generate, _partial_=True))
    return Path(generator(**kwargs))


def _unwrap_user_error(build: Any) -> Any:
    """Run a hydra ``instantiate`` call; a UserError raised inside it is re-raised as is (hydra wraps it)."""
    try:
        return build()
    except Exception as err:  # hydra.errors.InstantiationException wraps the factory's own error
        cause = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
