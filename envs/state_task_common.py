"""Shared wrapper and dataset generator for the state-based benchmark tasks (AntMaze, Kitchen, Adroit binary).

Every task env built here presents the project's contract (docs/DESIGN.md):

- observation space ``Dict({"state": Box(-inf, inf, (D,), float32)})``, the flat vector built by the domain's
  ``flatten_obs`` (the same function the Minari converter uses, so env and dataset rows have one layout);
- action space ``Box(-1, 1, (A,), float32)`` (all three domains already take actions in [-1, 1]; actions are clipped);
- ``info["success"]`` (bool) after every ``reset`` and ``step``;
- reward by the domain's Cal-QL convention (docs/tasks.md) and truncation at the task horizon.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from calql_robot.datasets.episode_recorder import EpisodeRecorder
from calql_robot.progress import progress_iter

STATE_KEY = "state"


def make_inner_env(env_id: str, render: bool, render_size: int = 256, **kwargs: Any) -> gym.Env:
    """``gym.make`` a gymnasium-robotics env without its TimeLimit / checker wrappers (the task keeps the horizon).

    With ``render`` the env renders ``(render_size, render_size, 3)`` uint8 frames (``rgb_array``), headless through
    EGL unless ``MUJOCO_GL`` says otherwise.
    """
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    if render:
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
        kwargs.update(render_mode="rgb_array", width=int(render_size), height=int(render_size))
    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    return env.unwrapped


class StateTaskEnv(gym.Env):
    """Base wrapper: flat float32 ``state`` observation, [-1, 1] actions, ``info["success"]``, horizon truncation.

    Subclasses implement :meth:`flatten_obs` (raw obs -> (D,) float32) and :meth:`task_step`
    (raw step result -> reward, success, terminated).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}

    def __init__(self, inner: gym.Env, state_dim: int, horizon: int, control_freq: float):
        self.inner = inner
        self.horizon = int(horizon)
        self.control_freq = float(control_freq)
        self.observation_space = spaces.Dict(
            {STATE_KEY: spaces.Box(-np.inf, np.inf, shape=(state_dim,), dtype=np.float32)}
        )
        inner_space = inner.action_space
        assert isinstance(inner_space, spaces.Box)
        if not (np.allclose(inner_space.low, -1.0) and np.allclose(inner_space.high, 1.0)):
            raise ValueError(f"{type(inner).__name__}: native action range is not [-1, 1]; add a rescale")
        self.action_space = spaces.Box(-1.0, 1.0, shape=inner_space.shape, dtype=np.float32)
        self.render_mode = "rgb_array" if getattr(inner, "render_mode", None) == "rgb_array" else None
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(self.control_freq))}
        self._steps = 0

    @abstractmethod
    def flatten_obs(self, raw_obs: Any) -> np.ndarray:
        """Raw inner observation -> ``(D,)`` float32 state vector."""

    @abstractmethod
    def task_step(self, raw_obs: Any, raw_reward: float, raw_terminated: bool, info: dict) -> tuple[float, bool, bool]:
        """Map one inner step to ``(reward, success, terminated)`` by the task's convention."""

    def task_reset(self, raw_obs: Any, info: dict) -> bool:
        """Success flag right after reset (default: the inner env's ``info['success']`` or False)."""
        return bool(info.get("success", False))

    def _obs(self, raw_obs: Any) -> dict[str, np.ndarray]:
        return {STATE_KEY: self.flatten_obs(raw_obs)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        raw_obs, info = self.inner.reset(seed=seed, options=options)
        self._steps = 0
        info = dict(info)
        info["success"] = self.task_reset(raw_obs, info)
        return self._obs(raw_obs), info

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        raw_obs, raw_reward, raw_terminated, _raw_truncated, info = self.inner.step(action)
        info = dict(info)
        reward, success, terminated = self.task_step(raw_obs, float(raw_reward), bool(raw_terminated), info)
        self._steps += 1
        truncated = (not terminated) and self._steps >= self.horizon
        info["success"] = bool(success)
        return self._obs(raw_obs), float(reward), bool(terminated), bool(truncated), info

    def render(self):
        return self.inner.render()

    def close(self):
        self.inner.close()


def correlated_noise_policy(action_dim: int, rng: np.random.Generator, theta: float = 0.15, sigma: float = 0.4):
    """A random policy with temporally correlated (Ornstein-Uhlenbeck) actions in [-1, 1]; returns ``act(obs)``."""
    state = np.zeros(action_dim)

    def act(_obs: dict[str, np.ndarray]) -> np.ndarray:
        nonlocal state
        state = state - theta * state + sigma * rng.standard_normal(action_dim)
        return np.clip(state, -1.0, 1.0).astype(np.float32)

    return act


AfterReset = Callable[[int, np.random.Generator], "dict[str, np.ndarray] | None"]


def rollout_episode(
    env: StateTaskEnv, act: Callable[[dict[str, np.ndarray]], np.ndarray], seed: int,
    after_reset: Callable[[], dict[str, np.ndarray] | None] | None = None, max_steps: int | None = None,
) -> dict[str, Any]:
    """Run one episode; returns ``observations={"state": (N+1, D)}``, ``actions (N, A)``, ``rewards``, ``terminals``,
    ``truncations`` (N,) and ``success`` (any step succeeded). ``after_reset`` may change the start state and return
    the new first observation; ``max_steps`` cuts earlier than the horizon (marked truncated)."""
    obs, _info = env.reset(seed=seed)
    if after_reset is not None:
        obs = after_reset() or obs
    recorder = EpisodeRecorder()
    recorder.start({STATE_KEY: obs[STATE_KEY]})
    limit = env.horizon if max_steps is None else min(env.horizon, int(max_steps))
    for t in range(limit):
        action = act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        truncated = truncated or (t + 1 == limit and not terminated)
        recorder.step({STATE_KEY: obs[STATE_KEY]}, action, reward, terminated, truncated, bool(info["success"]))
        if terminated or truncated:
            break
    return recorder.finish()


def write_generated_dataset(
    path: str | Path, env: StateTaskEnv, episodes: int, seed: int, task: str,
    reward_success: float, reward_failure: float, source: dict[str, Any],
    after_reset_fn: AfterReset | None = None,
    max_steps: int | None = None, overwrite: bool = True,
) -> str:
    """Roll out ``episodes`` noisy random episodes of ``env`` and write them as a zarr store at ``path``.

    The store is written under a temporary sibling and renamed when complete. Returns the store path.
    """
    from calql_robot.datasets.format import DatasetWriter
    from calql_robot.datasets.spec import obs_spec_from_space
    from calql_robot.datasets.staging import staged_store

    rng = np.random.default_rng(seed)
    n_success = 0
    with staged_store(path, overwrite=overwrite) as tmp:
        writer = DatasetWriter.create(
            str(tmp), obs_spec_from_space(env.observation_space), env.action_space.low, env.action_space.high,
            task=task, control_freq=env.control_freq, reward_success=reward_success, reward_failure=reward_failure,
            source={**source, "seed": int(seed), "episodes": int(episodes)}, overwrite=True,
        )
        with writer:
            for ep in progress_iter(range(episodes), desc=f"generate {task}", unit="ep"):
                act = correlated_noise_policy(env.action_space.shape[0], rng)
                hook = (lambda ep=ep: after_reset_fn(ep, rng)) if after_reset_fn is not None else None
                episode = rollout_episode(env, act, seed=seed * 100_003 + ep, after_reset=hook, max_steps=max_steps)
                n_success += int(episode["success"])
                writer.add_episode(
                    observations=episode["observations"], actions=episode["actions"], rewards=episode["rewards"],
                    terminals=episode["terminals"], truncations=episode["truncations"],
                )
    print(f"generated {episodes} noisy random episodes of {task} ({n_success} successful)\n"

          f"note: a small plumbing dataset, not benchmark data; for the paper's data convert the task's Minari dataset "
          f"(docs/tasks.md: python -m calql_robot.convert source=minari input=<task.dataset.minari_id> ...)")
    return str(path)
