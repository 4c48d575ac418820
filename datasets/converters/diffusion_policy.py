"""source=diffusion_policy: a diffusion_policy / UMI zarr ReplayBuffer (``data/<key>``, ``meta/episode_ends``).

An episode of L rows (L observations, L actions) becomes L-1 transitions: the last action has no next observation
and is dropped. ReplayBuffers store no rewards or outcomes, so the reward comes from a task rule
(``reward.rule=task``), a reward array (``reward.rule=column reward.column=<data key>``), a per-step success array
(``diffusion_policy.success=<data key>``, its last value is the outcome) or ``reward.unknown_outcome``.
Images (N, H, W, C) (uint8, or float in [0, 1] / [0, 255]) become uint8 camera keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from omegaconf import DictConfig

from calql_robot.datasets.converters.common import (
    SourceEpisode,
    as_low_dim,
    episode_error,
    is_image_array,
    mapping_from_cfg,
    obs_mapping_from_cfg,
    observation_from_fields,
    parse_image_size,
    resize_frames,
    to_uint8_images,
)
from calql_robot.datasets.converters.writing import write_episodes
from calql_robot.errors import UserError


def open_replay_buffer(path: Path) -> zarr.Group:
    """Open a ReplayBuffer zarr (folder, v2 or v3, or a .zip) read-only and check data/ and meta/episode_ends."""
    if not path.exists():
        raise UserError(f"input {path} does not exist")
    try:
        store = zarr.storage.ZipStore(str(path), mode="r") if path.suffix == ".zip" else str(path)
        root = zarr.open_group(store, mode="r")
    except Exception as err:  # zarr raises several types for a folder that is not a store
        raise UserError(f"input {path} cannot be opened as a zarr ReplayBuffer ({type(err).__name__}: {err})") from None
    for name in ("data", "meta/episode_ends"):
        if name not in root:
            raise UserError(f"input {path}: no '{name}' (a diffusion_policy ReplayBuffer has data/<key> arrays and "
                            "meta/episode_ends)")
    return root


class ReplayBufferReader:
    """Reads episodes of a ReplayBuffer into :class:`SourceEpisode` records by the key mapping options."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.path = Path(str(cfg.input)).expanduser()
        self.root = open_replay_buffer(self.path)
        self.data = self.root["data"]
        ends = np.asarray(self.root["meta/episode_ends"][:], dtype=np.int64)
        n_rows = {name: self.data[name].shape[0] for name in self.data.array_keys()}
        if ends.size and (np.any(np.diff(ends) <= 0) or ends[0] <= 0):
            raise UserError(f"input {self.path}: meta/episode_ends must be increasing positive ends, got {ends[:10]}")
        for name, rows in n_rows.items():
            if ends.size and rows < ends[-1]:
                raise UserError(f"input {self.path}: data/{name} has {rows} rows, episode_ends says {ends[-1]}")
        self.ends = ends
        self.action_key = str(self.cfg["keys"].action or "action")
        if self.action_key not in n_rows:
            raise UserError(f"input {self.path}: no action array data/{self.action_key}; have {sorted(n_rows)} "
                            "(set keys.action)")
        self.success_key = cfg.diffusion_policy.success
        # defaults leave out the action, reward and outcome arrays (keys.obs can still name them)
        skip = {self.action_key, str(cfg.reward.column), str(self.success_key), "reward", "rewards", "done", "dones"}
        images = {k for k in n_rows if k not in skip and is_image_array(self.data[k][:1])}
        self.obs_map = obs_mapping_from_cfg(cfg["keys"].obs, {k: k for k in n_rows if k not in skip | images})
        obs_fields = [f for fields in self.obs_map.values() for f in fields]
        # default cameras: the image arrays keys.obs does not already map
        default_cams = {k: k for k in sorted(images) if k not in obs_fields}
        self.cam_map = mapping_from_cfg(cfg["keys"].cameras, default_cams, "keys.cameras")
        for field in obs_fields + list(self.cam_map):
            if field not in n_rows:
                raise UserError(f"input {self.path}: no array data/{field}; have {sorted(n_rows)}")
        self.size = parse_image_size(cfg.image_size)

    @property
    def names(self) -> list[str]:
        return [f"episode_{i}" for i in range(self.ends.shape[0])]

    def load(self, name: str) -> SourceEpisode:
        index = int(name.split("_")[1])
        start = int(self.ends[index - 1]) if index > 0 else 0
        end = int(self.ends[index])
        if end - start < 2:
            raise episode_error(name, "meta/episode_ends", f"{end - start} rows; need at least 2 for one transition")

        def rows(field: str) -> np.ndarray:
            return np.asarray(self.data[field][start:end])

        def image(field: str, values: np.ndarray) -> np.ndarray | None:
            if not is_image_array(values):
                return None
            return resize_frames(to_uint8_images(values, name, field), self.size)

        obs = {key: observation_from_fields(key, fields, rows, name, image=image)
               for key, fields in self.obs_map.items()}
        for field, key in self.cam_map.items():
            obs[key] = resize_frames(to_uint8_images(rows(field), name, field), self.size)
        actions = as_low_dim(rows(self.action_key), name, self.action_key)[:-1]
        reward_column = None
        if self.cfg.reward.rule == "column":
            column = str(self.cfg.reward.column or "reward")
            if column not in self.data:
                raise episode_error(name, column, f"reward.column names no array data/{column}")
            reward_column = rows(column)[:-1]
        success = None
        if self.success_key is not None:
            if str(self.success_key) not in self.data:
                raise episode_error(name, str(self.success_key), "diffusion_policy.success names no array in data/")
            success = bool(rows(str(self.success_key))[-1])
        return SourceEpisode(name, obs, actions, success=success, reward_column=reward_column)


def convert(cfg: DictConfig) -> dict:
    """Convert a ReplayBuffer into ``cfg.output``; returns the summary dict."""
    reader = ReplayBufferReader(cfg)
    attrs = dict(reader.root.attrs)
    freq = attrs.get("control_freq", attrs.get("fps"))
    source = {"kind": "diffusion_policy", "input": str(reader.path),
              "steps": "L rows -> L-1 transitions; the last action is dropped"}
    task = cfg.task or reader.path.name.split(".")[0]
    return write_episodes(cfg, reader.names, reader.load, task=str(task),
                          control_freq=None if freq is None else float(freq), source=source)
