"""Replay robosuite demonstrations (MuJoCo states + actions) to render observations, like robomimic's
states-to-obs step: observation t is rendered from state t, the last step's next observation comes from stepping the
last action from the last state, and the environment's own success check gives per-step success. Every recorded
action is also stepped (then overwritten by the next recorded state) so the controller's internal state matches the
recording when the last action is re-simulated.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from calql_robot.errors import UserError

# what the converter forces on the environment, whatever the file says
_FORCED = ("has_renderer", "has_offscreen_renderer", "use_camera_obs", "camera_names", "camera_heights",
           "camera_widths", "ignore_done", "render_camera", "renderer")


def env_kwargs_from_attrs(attrs: dict[str, Any], where: str) -> dict[str, Any]:
    """robosuite.make kwargs from the file's attributes: robomimic ``env_args`` or robosuite's ``env``/``env_info``."""
    import json

    if "env_args" in attrs:
        args = json.loads(attrs["env_args"])
        kwargs = dict(args.get("env_kwargs", {}))
        kwargs["env_name"] = args.get("env_name", kwargs.get("env_name"))
    elif "env_info" in attrs:
        kwargs = dict(json.loads(attrs["env_info"]))
        kwargs.setdefault("env_name", attrs.get("env"))
    else:
        raise UserError(f"{where}: no 'env_args' (robomimic) or 'env_info' (robosuite) attribute on data/; cannot "
                        "rebuild the environment to replay the states")
    if not kwargs.get("env_name"):
        raise UserError(f"{where}: the environment attributes name no env_name")
    return kwargs


def default_control_freq(env_name: str) -> float | None:
    """The control frequency (Hz) robosuite's environment ``env_name`` runs at when its kwargs give none: the default
    of the ``control_freq`` argument of the nearest ``__init__`` in its class hierarchy, read from the installed
    robosuite (20 Hz for every environment of robosuite 1.5.2). None when robosuite registers no such environment."""
    import inspect

    import robosuite  # noqa: F401 (registers the environments)
    from robosuite.environments.base import REGISTERED_ENVS

    env_class = REGISTERED_ENVS.get(str(env_name))
    for cls in env_class.__mro__ if env_class is not None else ():
        if "__init__" in vars(cls):
            param = inspect.signature(cls.__init__).parameters.get("control_freq")
            if param is not None:
                default = param.default
                ok = isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0
                return float(default) if ok else None
    return None


class RobosuiteReplayer:
    """A robosuite environment built once, used to render observations for demo states.

    cameras: robosuite camera names to render (``<cam>_image`` observations), size: (H, W).
    """

    def __init__(self, env_kwargs: dict[str, Any], cameras: list[str], size: tuple[int, int]) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import robosuite
        from robosuite.controllers.composite.composite_controller_factory import (
            refactor_composite_controller_config,
        )

        kwargs = {k: v for k, v in env_kwargs.items() if k not in _FORCED}
        robots = kwargs.get("robots", "Panda")
        first_robot = robots if isinstance(robots, str) else robots[0]
        if kwargs.get("controller_configs") is not None:  # robosuite <= 1.4 files hold per-arm controller configs
            kwargs["controller_configs"] = refactor_composite_controller_config(
                kwargs["controller_configs"], first_robot, ["right", "left"] if "TwoArm" in kwargs["env_name"] else
                ["right"])
        kwargs.update(has_renderer=False, has_offscreen_renderer=bool(cameras), use_camera_obs=bool(cameras),
                      ignore_done=True, camera_heights=size[0], camera_widths=size[1])
        if cameras:
            kwargs["camera_names"] = list(cameras)
        try:
            self.env = robosuite.make(**kwargs)
        except Exception as err:  # robosuite raises many types for bad env kwargs
            raise UserError(f"cannot build robosuite env {kwargs.get('env_name')!r} to replay the demos "
                            f"({type(err).__name__}: {err})") from None
        self.cameras = list(cameras)
        self.flip = robosuite.macros.IMAGE_CONVENTION == "opengl"
        self.control_freq = float(self.env.control_freq)
        self.env.reset()

    def _observe(self) -> dict[str, np.ndarray]:
        obs = dict(self.env._get_observations(force_update=True))
        return self._fix_images(obs)

    def _fix_images(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v) for k, v in obs.items()}
        if self.flip:
            for cam in self.cameras:
                out[f"{cam}_image"] = out[f"{cam}_image"][::-1].copy()
        return out

    def replay(self, model_xml: str, states: np.ndarray, actions: np.ndarray,
               episode: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Render one demo: states (N, S), actions (N, A) -> ({robosuite obs key: (N+1, ...)}, success (N,) bool)."""
        env = self.env
        env.reset()
        try:
            env.reset_from_xml_string(env.edit_model_xml(model_xml))
        except Exception as err:  # MuJoCo compile errors
            raise UserError(f"episode {episode}, field model_file: the MJCF model does not load "
                            f"({type(err).__name__}: {err})") from None
        env.sim.reset()
        expected = env.sim.get_state().flatten().shape[0]
        if states.ndim != 2 or states.shape[1] != expected:
            raise UserError(f"episode {episode}, field states: expected (N, {expected}) MuJoCo states for this "
                            f"model, got {states.shape}")
        frames: list[dict[str, np.ndarray]] = []
        success = np.zeros(actions.shape[0], dtype=bool)
        for t in range(states.shape[0]):
            env.sim.set_state_from_flattened(states[t])
            env.sim.forward()
            if t > 0:
                success[t - 1] = bool(env._check_success())
            frames.append(self._observe())
            # stepping every recorded action keeps the controller's internal state (e.g. an OSC goal) as it was in
            # the recording, so that the final step below re-simulates the demo's last transition faithfully
            env.step(actions[t])
        env.sim.forward()  # mj_step leaves positions one substep stale: observe the state after the step exactly
        frames.append(self._observe())
        success[-1] = bool(env._check_success())
        keys = set(frames[0])
        return {k: np.stack([f[k] for f in frames]) for k in keys}, success

    def close(self) -> None:
        self.env.close()
