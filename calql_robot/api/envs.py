"""``make_env(task)``: a task's gymnasium environment built as the apps build it, closed when done.

The env is built from the task's config (``configs/task/<name>.yaml`` composed by hydra, or the task config saved
with a checkpoint) by :func:`calql_robot.envs.make_task_env`, the function pretrain, finetune and evaluate use. A
gymnasium env is its own context manager (``with make_env(...) as env:`` closes it on leaving the block, also on an
exception). Envs made here that are still open when the interpreter exits are closed at exit before MuJoCo's EGL
display is terminated: that teardown order is what prints ``EGLError`` tracebacks at the end of a script that never
called ``env.close()``.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
from omegaconf import DictConfig, OmegaConf

from calql_robot.errors import UserError

_OPEN_ENVS: weakref.WeakSet[gym.Env] = weakref.WeakSet()


def make_env(task: Any, seed: int | None = None, render: bool = False, **env_kwargs: Any) -> gym.Env:
    """Build the environment of ``task`` and seed it (``env.reset(seed=seed)``, ``action_space.seed(seed)``).

    ``task``: a task name (``configs/task/``), a task config mapping (e.g. ``policy.metadata["task_config"]``, the
    task a checkpoint was trained on with its overrides), or a loaded :class:`~calql_robot.api.policy.Policy`
    (its saved task config). ``render=True`` renders RGB frames (``env.render()``). ``env_kwargs`` go to the task's
    env factory over its config values, e.g. ``horizon=30``.
    """
    from calql_robot.app import _setup_process
    from calql_robot.envs import make_task_env

    _setup_process()
    task_cfg = task_config(task)
    try:
        env = make_task_env(task_cfg, seed=seed, render=render, **env_kwargs)
    except Exception as err:
        if isinstance(err, UserError):
            raise
        cause = err.__cause__ or err
        raise UserError(f"make_env: the env of task '{task_cfg.get('name')}' could not be built with "
                        f"{sorted(env_kwargs)} over its config {OmegaConf.to_container(task_cfg.env, resolve=True)}: "
                        f"{type(cause).__name__}: {' '.join(str(cause).split())}") from err
    _OPEN_ENVS.add(env)
    return env


def task_config(task: Any) -> DictConfig:
    """The task config of a task name, a task config mapping or a policy; UserError naming the valid choices."""
    from calql_robot.api.policy import Policy

    if isinstance(task, Policy):
        saved = task.metadata.get("task_config")
        if not isinstance(saved, Mapping):
            raise UserError(f"make_env: policy {task!r} carries no task config; pass the task name instead")
        task = saved
    if isinstance(task, Mapping | DictConfig):
        cfg = OmegaConf.create(OmegaConf.to_container(task, resolve=True) if isinstance(task, DictConfig)
                               else dict(task))
        if "env" not in cfg:
            raise UserError(f"make_env: the task config {sorted(cfg)} has no 'env' block; expected a task config "
                            "as in configs/task/*.yaml (its task: block) or a task name")
        return cfg
    if not isinstance(task, str) or not task:
        raise UserError(f"make_env: task must be a task name, a task config or a Policy, got {task!r}")
    return named_task_config(task)


def named_task_config(name: str) -> DictConfig:
    """``configs/task/<name>.yaml``'s ``task:`` block, composed as the training apps compose it."""
    from calql_robot import app
    from calql_robot.api.app_config import compose_app_config

    choices = sorted(p.stem for p in (app.CONFIG_DIR / "task").glob("*.yaml"))
    if name not in choices:
        raise UserError(f"make_env: unknown task '{name}'; expected one of {choices} (configs in "
                        f"{app.CONFIG_DIR / 'task'})")
    return compose_app_config("pretrain", [f"task={name}"]).task


def close_open_envs() -> None:
    """Close every env made by :func:`make_env` that is still alive (closing twice is harmless for these envs)."""
    for env in list(_OPEN_ENVS):
        try:
            env.close()
        except Exception:  # noqa: BLE001 - the interpreter is exiting; a failed close must not hide the real exit
            pass
    _OPEN_ENVS.clear()


def _close_before_egl_teardown() -> None:
    """Run :func:`close_open_envs` at exit before MuJoCo's ``atexit`` hook terminates the EGL display.

    MuJoCo registers ``eglTerminate`` with ``atexit`` when the first render context is made, i.e. after this module
    is imported, so a plain ``atexit`` hook of ours would run after it (last in, first out) and close too late.
    Callbacks of ``threading._register_atexit`` (stdlib, used by ``concurrent.futures``) run before any ``atexit``
    callback; where it is missing, a plain ``atexit`` hook still closes the envs of a non-rendering script.
    """
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("threading._register_atexit is not available")
        register(close_open_envs)
    except RuntimeError:
        atexit.register(close_open_envs)


_close_before_egl_teardown()
