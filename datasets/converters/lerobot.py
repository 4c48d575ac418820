"""source=lerobot: LeRobot datasets, v3.0 (many episodes per parquet / MP4 file) and v2.1 (one file per episode).

v3.0: meta/info.json, meta/episodes/chunk-*/file-*.parquet (episode_index, length, tasks, data/chunk_index,
data/file_index, videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}), data/chunk-*/file-*.parquet,
videos/<key>/chunk-*/file-*.mp4. v2.1: meta/info.json, meta/episodes.jsonl, data/chunk-*/episode_*.parquet,
videos/chunk-*/<key>/episode_*.mp4. Paths follow info.json's data_path / video_path templates.

Each frame row holds observation t, action t, next.reward / next.done / next.success after action t. An episode of L
frames gives L-1 transitions (the last action has no next observation and is dropped); the outcome is next.success at
the last frame, else whether any next.reward reaches reward.success_value. Video frames are decoded with OpenCV at
index round((from_timestamp + timestamp) * fps), reading forward through the file (frame-accurate, no seeking).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
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
)
from calql_robot.datasets.converters.video import VideoReader, decode_image_bytes
from calql_robot.datasets.converters.writing import write_episodes
from calql_robot.errors import UserError

IMAGE_PREFIX = "observation.images."
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A parquet column as numpy: scalars (L,), lists (L, D) (nested lists stack)."""
    column = table.column(name)
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(
            column.type):
        return np.asarray(column.to_pylist())
    return column.to_numpy(zero_copy_only=False)


class LeRobotDataset:
    """The metadata and file layout of one LeRobot dataset folder (v3.0 or v2.1)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        info_path = root / "meta" / "info.json"
        if not info_path.is_file():
            raise UserError(f"input {root}: no meta/info.json (expected a LeRobot dataset folder, v3.0 or v2.1)")
        self.info = json.loads(info_path.read_text())
        self.version = str(self.info.get("codebase_version", ""))
        self.features: dict[str, Any] = self.info.get("features", {})
        self.fps = float(self.info.get("fps", 0)) or None
        if self.version.startswith("v3"):
            self.episodes = self._v3_episodes()
        elif self.version.startswith("v2"):
            self.episodes = self._v2_episodes()
        else:
            raise UserError(f"input {info_path}: codebase_version {self.version!r} is not supported (v3.0, v2.1)")
        self._table_cache: tuple[Path, pa.Table] | None = None
        self._videos: dict[Path, VideoReader] = {}

    def _v3_episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise UserError(f"input {self.root}: no meta/episodes/chunk-*/file-*.parquet (LeRobot v3.0)")
        rows = [row for path in files for row in pq.read_table(path).to_pylist()]
        return sorted(rows, key=lambda r: int(r["episode_index"]))

    def _v2_episodes(self) -> list[dict[str, Any]]:
        path = self.root / "meta" / "episodes.jsonl"
        if not path.is_file():
            raise UserError(f"input {self.root}: no meta/episodes.jsonl (LeRobot v2.1)")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sorted(rows, key=lambda r: int(r["episode_index"]))

    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]

    def frames_table(self, ep: dict[str, Any]) -> pa.Table:
        """The parquet rows of one episode, in frame order."""
        index = int(ep["episode_index"])
        if self.version.startswith("v3"):
            rel = self.info.get("data_path", V3_DATA).format(chunk_index=int(ep["data/chunk_index"]),
                                                             file_index=int(ep["data/file_index"]))
        else:
            chunk = index // int(self.info.get("chunks_size", 1000))
            rel = self.info.get("data_path", V2_DATA).format(episode_chunk=chunk, episode_index=index)
        path = self.root / rel
        if self._table_cache is None or self._table_cache[0] != path:
            if not path.is_file():
                raise episode_error(str(index), "data", f"parquet file {path} is missing")
            self._table_cache = (path, pq.read_table(path))
        table = self._table_cache[1]
        if "episode_index" in table.column_names:
            table = table.filter(pc.equal(table.column("episode_index"), index))
        if "frame_index" in table.column_names:
            table = table.sort_by("frame_index")
        return table

    def video_frames(self, ep: dict[str, Any], key: str, timestamps: np.ndarray) -> np.ndarray:
        """Decoded frames (L, H, W, 3) RGB uint8 of video feature ``key`` at the episode's frame timestamps (L,)."""
        index = int(ep["episode_index"])
        fps = float(self.features[key].get("info", {}).get("video.fps", self.fps or 0))
        if self.version.startswith("v3"):
            rel = self.info.get("video_path", V3_VIDEO).format(
                video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                file_index=int(ep[f"videos/{key}/file_index"]))
            offset = float(ep[f"videos/{key}/from_timestamp"])
        else:
            chunk = index // int(self.info.get("chunks_size", 1000))
            rel = self.info.get("video_path", V2_VIDEO).format(episode_chunk=chunk, video_key=key,
                                                               episode_index=index)
            offset = 0.0
        path = self.root / rel
        if path not in self._videos:
            self._videos[path] = VideoReader(path)
        frame_idx = np.rint((offset + timestamps) * fps).astype(np.int64)
        return self._videos[path].read(frame_idx)

    def close(self) -> None:
        for reader in self._videos.values():
            reader.close()


class LeRobotReader:
    """Turns LeRobot episodes into :class:`SourceEpisode` records by the key mapping options."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.ds = LeRobotDataset(Path(str(cfg.input)).expanduser())
        images = self.ds.image_keys()
        default_obs = {k[len("observation."):].replace(".", "_"): k for k in self.ds.features
                       if k.startswith("observation.") and k not in images}
        self.obs_map = obs_mapping_from_cfg(cfg["keys"].obs, default_obs)
        default_cams = {k[len(IMAGE_PREFIX):] if k.startswith(IMAGE_PREFIX) else k: k for k in images}
        cams = mapping_from_cfg(cfg["keys"].cameras, {c: c for c in default_cams}, "keys.cameras")
        self.cam_map: dict[str, str] = {}  # feature -> our key
        for cam, key in cams.items():
            feature = default_cams.get(cam, cam)
            if feature not in images:
                raise UserError(f"keys.cameras names {cam!r}, which is no camera of {self.ds.root}; have "
                                f"{sorted(default_cams)}")
            self.cam_map[feature] = key
        self.action_key = str(cfg["keys"].action or "action")
        self.size = parse_image_size(cfg.image_size)
        self.names = [str(int(ep["episode_index"])) for ep in self.ds.episodes]
        self._by_name = dict(zip(self.names, self.ds.episodes))

    def load(self, name: str) -> SourceEpisode:
        ep = self._by_name[name]
        table = self.ds.frames_table(ep)
        n_frames = table.num_rows
        if n_frames < 2:
            raise episode_error(name, "frames", f"{n_frames} frames; need at least 2 for one transition")
        if "length" in ep and int(ep["length"]) != n_frames:
            raise episode_error(name, "length", f"the episodes table says {ep['length']} frames, the data has "
                                                f"{n_frames}")

        def column(field: str) -> np.ndarray:
            if field not in table.column_names:
                raise episode_error(name, field, f"missing from the data; columns {table.column_names}")
            return _column(table, field)

        obs = {key: observation_from_fields(key, fields, column, name) for key, fields in self.obs_map.items()}
        timestamps = column("timestamp").astype(np.float64) if "timestamp" in table.column_names else (
            np.arange(n_frames) / (self.ds.fps or 1.0))
        for feature, key in self.cam_map.items():
            if self.ds.features[feature].get("dtype") == "video":
                frames = self.ds.video_frames(ep, feature, timestamps)
            else:
                frames = np.stack([decode_image_bytes(v["bytes"], f"episode {name}, field {feature}")
                                   for v in table.column(feature).to_pylist()])
            obs[key] = resize_frames(frames, self.size)
        actions = as_low_dim(column(self.action_key), name, self.action_key)[:-1]
        reward_field = str(self.cfg.reward.column or "next.reward")
        rewards = _column(table, reward_field) if reward_field in table.column_names else None
        success = None
        if "next.success" in table.column_names:
            success = bool(_column(table, "next.success")[-1])
        elif rewards is not None:
            success = bool(np.max(rewards) >= float(self.cfg.reward.success_value))
        reward_column = None if rewards is None else rewards[:-1]
        return SourceEpisode(name, obs, actions, success=success, reward_column=reward_column)


def convert(cfg: DictConfig) -> dict:
    """Convert a LeRobot dataset folder into ``cfg.output``; returns the summary dict."""
    reader = LeRobotReader(cfg)
    try:
        tasks = reader.ds.episodes[0].get("tasks") if reader.ds.episodes else None
        task = cfg.task or (tasks[0] if tasks else None) or reader.ds.root.name
        source = {"kind": "lerobot", "input": str(reader.ds.root), "codebase_version": reader.ds.version,
                  "robot_type": reader.ds.info.get("robot_type"),
                  "steps": "L frames -> L-1 transitions; the last action is dropped"}
        return write_episodes(cfg, reader.names, reader.load, task=str(task), control_freq=reader.ds.fps,
                              source=source)
    finally:
        reader.ds.close()
