"""source=robomimic: robomimic HDF5 files and robosuite's raw demonstration files.

robomimic: ``data/demo_i/{obs/<key>, next_obs/<key>, actions, rewards, dones}``, attribute ``data.env_args`` (JSON).
Observation t is obs[t]; the next observation of the last step is next_obs[-1] (without next_obs, the last action
is dropped). Outcome: dones[-1] (else rewards[-1] >= reward.success_value).

robosuite demos: ``data/demo_i/{states, actions}`` with attribute ``model_file`` (MJCF) and ``data.env_info``
(JSON env kwargs): replayed in robosuite (:mod:`robosuite_replay`) to render ``keys.cameras`` at ``image_size``;
the outcome and the task rule come from the environment's success check.
"""

from __future__ import annotations

import json
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
from calql_robot.datasets.converters.robosuite_replay import (
    RobosuiteReplayer,
    default_control_freq,
    env_kwargs_from_attrs,
)
from calql_robot.datasets.converters.writing import write_episodes
from calql_robot.errors import ConfigError, UserError
from calql_robot.progress import print_line

DEFAULT_REPLAY_OBS = {"robot0_eef_pos": "robot0_eef_pos", "robot0_eef_quat": "robot0_eef_quat",
                      "robot0_gripper_qpos": "robot0_gripper_qpos", "object": "object-state"}
DEFAULT_REPLAY_CAMERAS = {"agentview": "agentview_image"}
DEFAULT_REPLAY_SIZE = (84, 84)


def demo_names(f: h5py.File, filter_key: str | None, path: Path) -> list[str]:
    """Demo group names in numeric order (demo_2 before demo_10), optionally those of mask/<filter_key>."""
    if "data" not in f or not isinstance(f["data"], h5py.Group):
        raise UserError(f"input {path}: no 'data' group (expected data/demo_0, data/demo_1, ...)")
    names = [n for n in f["data"] if isinstance(f["data"][n], h5py.Group)]
    if filter_key is not None:
        mask = f.get(f"mask/{filter_key}")
        if mask is None:
            raise UserError(f"input {path}: robomimic.filter_key={filter_key!r} but there is no mask/{filter_key}")
        if not isinstance(mask, h5py.Dataset) or mask.ndim != 1 or mask.dtype.kind not in "SOU":
            raise UserError(f"input {path}: mask/{filter_key} is not a 1-D list of demo names (e.g. b'demo_0')")
        wanted = {n.decode() if isinstance(n, bytes) else str(n) for n in mask[()]}
        names = [n for n in names if n in wanted]

    def order(name: str) -> tuple[int, str]:
        match = re.search(r"(\d+)$", name)
        return (int(match.group(1)) if match else -1, name)

    return sorted(names, key=order)


def check_env_attrs(attrs: dict[str, Any], path: Path) -> None:
    """``data`` attributes env_args (robomimic) / env_info (robosuite), when present, must be JSON objects."""
    for name in ("env_args", "env_info"):
        if name not in attrs:
            continue
        raw = attrs[name]
        raw = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        try:
            value = json.loads(raw) if isinstance(raw, str) else None
        except json.JSONDecodeError as err:
            raise UserError(f"input {path}: attribute data.{name} is not valid JSON ({err.msg}); expected a JSON "
                            "object naming env_name and env_kwargs") from None
        if not isinstance(value, dict) or not isinstance(value.get("env_kwargs", {}), dict):
            raise UserError(f"input {path}: attribute data.{name} is {raw!r:.80}; expected a JSON object naming "
                            "env_name, with env_kwargs an object")


def numeric_values(node: Any, episode: str, label: str) -> np.ndarray:
    """The values of an HDF5 dataset of numbers; an episode error naming ``label`` for a group, a ragged
    (variable-length) or string dataset, or one that cannot be read."""
    if not isinstance(node, h5py.Dataset):
        raise episode_error(episode, label, f"is an HDF5 {type(node).__name__}; expected a dataset of numbers")
    if node.dtype.kind not in "biuf":
        raise episode_error(episode, label, f"dtype {node.dtype} is not numeric (ragged variable-length or string "
                                            "values); expected an (N, ...) array of numbers")
    try:
        return np.asarray(node[()])
    except (OSError, ValueError, TypeError) as err:
        raise episode_error(episode, label, f"cannot be read ({err})") from None


def _group(demo: h5py.Group, key: str, episode: str) -> h5py.Group:
    """``demo[key]`` (obs / next_obs), which must be a group of per-field datasets."""
    node = demo[key]
    if not isinstance(node, h5py.Group):
        raise episode_error(episode, key, f"is an HDF5 {type(node).__name__}; expected a group holding one dataset per "
                                          f"observation field ({key}/<field>)")
    return node


def _is_image_field(field: str, dataset: h5py.Dataset) -> bool:
    """A robomimic obs field holding camera images: ``<cam>_image``, or uint8 (N, H, W, C)."""
    return field.endswith("_image") or (isinstance(dataset, h5py.Dataset) and dataset.ndim == 4
                                        and dataset.dtype == np.uint8)


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
        check_env_attrs(self.attrs, self.path)
        self.names = demo_names(self.file, self.cfg.robomimic.filter_key, self.path)
        mode = str(cfg.robomimic.replay).lower()
        if mode not in ("auto", "true", "false"):
            raise ConfigError(f"robomimic.replay={cfg.robomimic.replay!r}: expected auto, true or false")
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
        return numeric_values(demo[field], name, field)

    def _per_step(self, demo: h5py.Group, name: str, field: str) -> np.ndarray | None:
        """A per-step 1-D column (rewards, dones) or None when the demo has no such field."""
        if field not in demo:
            return None
        values = numeric_values(demo[field], name, field)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise episode_error(name, field, f"shape {values.shape}; expected one value per step (N,)")
        return values

    def load(self, name: str) -> SourceEpisode:
        demo = self.file["data"][name]
        action_field = str(self.cfg["keys"].action or "actions")
        actions = as_low_dim(self._read(demo, name, action_field), name, action_field)
        reward_field = str(self.cfg.reward.column or "rewards")
        rewards = self._per_step(demo, name, reward_field)
        dones = self._per_step(demo, name, "dones")
        success = None
        if dones is not None and dones.shape[0]:
            success = bool(dones[-1])
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
                             step_success=step_success, info={"reward_field": reward_field})

    def _stored_obs(self, demo: h5py.Group, name: str, actions: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
        """Observations from ``obs``/``next_obs``: keys.obs (default: every low-dim field under its own name) and,
        independently, keys.cameras (default: every image field keys.obs does not map, under its own name)."""
        if "obs" not in demo:
            raise episode_error(name, "obs", "missing and robomimic.replay=false (states can be replayed with "
                                             "robomimic.replay=true)")
        obs_group = _group(demo, "obs", name)
        next_group = _group(demo, "next_obs", name) if "next_obs" in demo else None
        fields = sorted(obs_group.keys())
        images = [f for f in fields if _is_image_field(f, obs_group[f])]
        obs_map = obs_mapping_from_cfg(self.cfg["keys"].obs, {f: f for f in fields if f not in images})
        mapped = {f for group in obs_map.values() for f in group}
        cams = mapping_from_cfg(self.cfg["keys"].cameras, {f: f for f in images if f not in mapped}, "keys.cameras")
        has_next = next_group is not None
        n_steps = actions.shape[0] if has_next else actions.shape[0] - 1

        def stored(field: str) -> np.ndarray | None:
            """(n_steps + 1, ...) values of obs/<field>, the last row from next_obs; None when there is no field."""
            if field not in obs_group:
                return None
            values = numeric_values(obs_group[field], name, f"obs/{field}")
            if next_group is not None:
                if field not in next_group:
                    raise episode_error(name, f"next_obs/{field}", "missing")
                following = numeric_values(next_group[field], name, f"next_obs/{field}")
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
                raise ConfigError(f"keys.cameras.{cam}={key!r}: key {key!r} is already an observation key from "
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
        if control_freq is None and cfg.get("control_freq") is None and kwargs.get("env_name"):
            control_freq = default_control_freq(kwargs["env_name"])  # robomimic's tools keep only the kwargs given
            if control_freq is not None:
                print_line(f"input {reader.path}: env_kwargs give no control_freq; using robosuite's default for "
                           f"{kwargs['env_name']}, {control_freq:g} Hz (pass control_freq=HZ if the demos ran at "
                           "another rate)")
        task = cfg.task or kwargs.get("env_name") or reader.path.stem
        source = {"kind": "robomimic", "input": str(reader.path), "env_name": kwargs.get("env_name"),
                  "replay": str(cfg.robomimic.replay)}
        return write_episodes(cfg, reader.names, reader.load, task=str(task),
                              control_freq=None if control_freq is None else float(control_freq), source=source)
    finally:
        reader.close()
