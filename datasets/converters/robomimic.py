"""source=robomimic: robomimic HDF5 files and robosuite's raw demonstration files.

robomimic: ``data/demo_i/{obs/<key>, next_obs/<key>, actions, rewards, dones}``, attribute ``data.env_args`` (JSON).
Observation t is obs[t]; the next observation of the last step is next_obs[-1] (without next_obs, the last action
is dropped). Outcome: dones[-1] (else rewards[-1] >= reward.success_value).

robosuite demos: ``data/demo_i/{states, actions}`` with attribute ``model_file`` (MJCF) and ``data.env_info``
(JSON env kwargs): replayed in robosuite (:mod:`robosuite_replay`) to render ``keys.cameras`` at ``image_size``;
the outcome and the task rule come from the environment's success check.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from omegaconf import DictConfig

from calql_robot.datasets.converters.common import (
    SourceEpisode,
    as_low_dim,
    episode_error,
    mapping_from_cfg,
    obs_mapping_from_cfg,
    observation_from_fields,
    parse_image_size,
    resize_frames,
    to_uint8_images,
)
from calql_robot.datasets.converters.robosuite_replay import RobosuiteReplayer, env_kwargs_from_attrs
from calql_robot.datasets.converters.writing import write_episodes
from calql_robot.errors import UserError

DEFAULT_REPLAY_OBS = {"robot0_eef_pos": "robot0_eef_pos", "robot0_eef_quat": "robot0_eef_quat",
                      "robot0_gripper_qpos": "robot0_gripper_qpos", "object": "object-state"}
DEFAULT_REPLAY_CAMERAS = {"agentview": "agentview_image"}
DEFAULT_REPLAY_SIZE = (84, 84)


def demo_names(f: h5py.File, filter_key: str | None, path: Path) -> list[str]:
    """Demo group names in numeric order (demo_2 before demo_10), optionally those of mask/<filter_key>."""
    if "data" not in f:
        raise UserError(f"input {path}: no 'data' group (expected data/demo_0, data/demo_1, ...)")
    names = [n for n in f["data"] if isinstance(f["data"][n], h5py.Group)]
    if filter_key is not None:
        if f"mask/{filter_key}" not in f:
            raise UserError(f"input {path}: robomimic.filter_key={filter_key!r} but there is no mask/{filter_key}")
        wanted = {n.decode() if isinstance(n, bytes) else str(n) for n in f[f"mask/{filter_key}"][:]}
        names = [n for n in names if n in wanted]

    def order(name: str) -> tuple[int, str]:
        match = re.search(r"(\d+)$", name)
        return (int(match.group(1)) if match else -1, name)

    return sorted(names, key=order)


def _is_image_field(field: str, dataset: h5py.Dataset) -> bool:
    """A robomimic obs field holding camera images: ``<cam>_image``, or uint8 (N, H, W, C)."""
    return field.endswith("_image") or (dataset.ndim == 4 and dataset.dtype == np.uint8)


def _camera_field(cam: str, fields: list[str], images: list[str], episode: str) -> str:
    """The obs field of a keys.cameras entry: ``<cam>_image`` (camera name) or the field name itself."""
    for field in (f"{cam}_image", cam):
        if field in fields:
            return field
    raise episode_error(episode, f"obs/{cam}_image", f"keys.cameras names camera {cam!r}, which is missing; image "
                                                     f"fields {images}")


def _check_next_obs(obs: np.ndarray, next_obs: np.ndarray, name: str, field: str) -> None:
    """next_obs[t] must equal obs[t + 1]: robomimic stores each observation twice."""
    if next_obs.shape != obs.shape:
        raise episode_error(name, f"next_obs/{field}", f"shape {next_obs.shape} differs from obs {obs.shape}")
    same = np.isclose(next_obs[:-1], obs[1:], rtol=1e-5, atol=1e-6) if next_obs.dtype.kind == "f" else (
        next_obs[:-1] == obs[1:])
    if not np.all(same):
        step = int(np.argwhere(~same.reshape(same.shape[0], -1))[0, 0])
        raise episode_error(name, f"next_obs/{field}", f"step {step} disagrees with obs/{field} at step {step + 1} "
                                                       "(NaN, or a file whose obs and next_obs do not line up)")


class RobomimicReader:
    """Reads demos from one HDF5 file, replaying robosuite states where needed."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.path = Path(str(cfg.input)).expanduser()
        if not self.path.is_file():
            raise UserError(f"input {self.path} does not exist (expected a robomimic / robosuite .hdf5 file)")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise UserError(f"input {self.path} cannot be opened as HDF5 ({err})") from None
        self.attrs = dict(self.file["data"].attrs) if "data" in self.file else {}
        self.names = demo_names(self.file, self.cfg.robomimic.filter_key, self.path)
        mode = str(cfg.robomimic.replay).lower()
        if mode not in ("auto", "true", "false"):
            raise UserError(f"robomimic.replay={cfg.robomimic.replay!r}: expected auto, true or false")
        self.replay_mode = mode
        self.size = parse_image_size(cfg.image_size)
        self._replayer: RobosuiteReplayer | None = None

    def env_kwargs(self) -> dict[str, Any] | None:
        try:
            return env_kwargs_from_attrs(self.attrs, f"input {self.path}")
        except UserError:
            return None

    def needs_replay(self, demo: h5py.Group) -> bool:
        return self.replay_mode == "true" or (self.replay_mode == "auto" and "obs" not in demo)

    def replayer(self) -> RobosuiteReplayer:
        if self._replayer is None:
            kwargs = env_kwargs_from_attrs(self.attrs, f"input {self.path}")
            cams = mapping_from_cfg(self.cfg["keys"].cameras, DEFAULT_REPLAY_CAMERAS, "keys.cameras")
            self._replayer = RobosuiteReplayer(kwargs, list(cams), self.size or DEFAULT_REPLAY_SIZE)
        return self._replayer

    def _read(self, demo: h5py.Group, name: str, field: str) -> np.ndarray:
        if field not in demo:
            raise episode_error(name, field, f"missing from data/{name}; has {sorted(demo.keys())}")
        return np.asarray(demo[field][()])

    def load(self, name: str) -> SourceEpisode:
        demo = self.file["data"][name]
        action_field = str(self.cfg["keys"].action or "actions")
        actions = as_low_dim(self._read(demo, name, action_field), name, action_field)
        reward_field = str(self.cfg.reward.column or "rewards")
        rewards = np.asarray(demo[reward_field][()]) if reward_field in demo else None
        success = None
        if "dones" in demo and demo["dones"].shape[0]:
            success = bool(demo["dones"][-1])
        elif rewards is not None and rewards.shape[0]:
            success = bool(rewards[-1] >= float(self.cfg.reward.success_value))
        step_success = None
        if self.needs_replay(demo):
            obs, step_success = self._replayed_obs(demo, name, actions)
            success = bool(step_success[-1])
        else:
            obs, actions = self._stored_obs(demo, name, actions)
        n_steps = actions.shape[0]
        reward_column = None if rewards is None else rewards[:n_steps]
        return SourceEpisode(name, obs, actions, success=success, reward_column=reward_column,
                             step_success=step_success)

    def _stored_obs(self, demo: h5py.Group, name: str, actions: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
        """Observations from ``obs``/``next_obs``: keys.obs (default: every low-dim field under its own name) and,
        independently, keys.cameras (default: every image field keys.obs does not map, under its own name)."""
        if "obs" not in demo:
            raise episode_error(name, "obs", "missing and robomimic.replay=false (states can be replayed with "
                                             "robomimic.replay=true)")
        fields = sorted(demo["obs"].keys())
        images = [f for f in fields if _is_image_field(f, demo["obs"][f])]
        obs_map = obs_mapping_from_cfg(self.cfg["keys"].obs, {f: f for f in fields if f not in images})
        mapped = {f for group in obs_map.values() for f in group}
        cams = mapping_from_cfg(self.cfg["keys"].cameras, {f: f for f in images if f not in mapped}, "keys.cameras")
        has_next = "next_obs" in demo
        n_steps = actions.shape[0] if has_next else actions.shape[0] - 1

        def stored(field: str) -> np.ndarray | None:
            """(n_steps + 1, ...) values of obs/<field>, the last row from next_obs; None when there is no field."""
            if field not in demo["obs"]:
                return None
            values = np.asarray(demo["obs"][field][()])
            if has_next:
                if field not in demo["next_obs"]:
                    raise episode_error(name, f"next_obs/{field}", "missing")
                following = np.asarray(demo["next_obs"][field][()])
                _check_next_obs(values, following, name, field)
                values = np.concatenate([values, following[-1:]], axis=0)
            if values.shape[0] != n_steps + 1:
                raise episode_error(name, f"obs/{field}", f"{values.shape[0] - int(has_next)} rows for "
                                                          f"{actions.shape[0]} actions")
            return values

        def image(field: str, values: np.ndarray) -> np.ndarray | None:
            if not (field.endswith("_image") or (values.ndim == 4 and values.dtype == np.uint8)):
                return None
            return resize_frames(to_uint8_images(values, name, f"obs/{field}"), self.size)

        obs = {key: observation_from_fields(key, group, stored, name, prefix="obs/", have=fields, image=image)
               for key, group in obs_map.items()}
        for cam, key in cams.items():
            field = _camera_field(cam, fields, images, name)
            if key in obs:
                raise UserError(f"keys.cameras.{cam}={key!r}: key {key!r} is already an observation key from "
                                "keys.obs; give the camera another key")
            values = stored(field)
            frames = None if values is None else image(field, values)
            if frames is None:
                raise episode_error(name, f"obs/{field}", "keys.cameras names it but it holds no images")
            obs[key] = frames
        return obs, actions[:n_steps]

    def _replayed_obs(self, demo: h5py.Group, name: str, actions: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
        if "model_file" not in demo.attrs:
            raise episode_error(name, "model_file", "attribute missing: replaying states needs the demo's MJCF model")
        states = self._read(demo, name, "states")
        if states.shape[0] != actions.shape[0]:
            raise episode_error(name, "states", f"{states.shape[0]} states for {actions.shape[0]} actions")
        replayer = self.replayer()
        rendered, step_success = replayer.replay(str(demo.attrs["model_file"]), states, actions, name)
        cams = mapping_from_cfg(self.cfg["keys"].cameras, DEFAULT_REPLAY_CAMERAS, "keys.cameras")
        obs_map = obs_mapping_from_cfg(self.cfg["keys"].obs, DEFAULT_REPLAY_OBS)
        obs = {key: observation_from_fields(key, group, rendered.get, name, have=list(rendered))
               for key, group in obs_map.items()}
        for cam, key in cams.items():
            obs[key] = to_uint8_images(rendered[f"{cam}_image"], name, f"{cam}_image")
        return obs, step_success

    def close(self) -> None:
        if self._replayer is not None:
            self._replayer.close()
        self.file.close()


def convert(cfg: DictConfig) -> dict:
    """Convert a robomimic / robosuite HDF5 file into ``cfg.output``; returns the summary dict."""
    reader = RobomimicReader(cfg)
    try:
        kwargs = reader.env_kwargs() or {}
        control_freq = kwargs.get("control_freq")
        if control_freq is None and any(reader.needs_replay(reader.file["data"][n]) for n in reader.names[:1]):
            control_freq = reader.replayer().control_freq
        task = cfg.task or kwargs.get("env_name") or reader.path.stem
        source = {"kind": "robomimic", "input": str(reader.path), "env_name": kwargs.get("env_name"),
                  "replay": str(cfg.robomimic.replay)}
        return write_episodes(cfg, reader.names, reader.load, task=str(task),
                              control_freq=None if control_freq is None else float(control_freq), source=source)
    finally:
        reader.close()
