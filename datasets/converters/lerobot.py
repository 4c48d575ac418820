"""source=lerobot: LeRobot datasets, v3.0 (many episodes per parquet / MP4 file) and v2.1 (one file per episode).

v3.0: meta/info.json, meta/episodes/chunk-*/file-*.parquet (episode_index, length, tasks, data/chunk_index,
data/file_index, videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}), data/chunk-*/file-*.parquet,
videos/<key>/chunk-*/file-*.mp4. v2.1: meta/info.json, meta/episodes.jsonl, data/chunk-*/episode_*.parquet,
videos/chunk-*/<key>/episode_*.mp4. Paths follow info.json's data_path / video_path templates.

Each frame row holds observation t, action t, next.reward / next.done / next.success after action t. An episode of L
frames gives L-1 transitions (the last action has no next observation and is dropped); the outcome is next.success at
the last frame, else whether any next.reward reaches reward.success_value. Video frames (AV1, H.264, ...) are decoded
with PyAV at presentation time from_timestamp + timestamp, as LeRobot does: seek by pts to the key frame before it,
decode forward, take the frame whose pts is nearest (within half a frame period, else the episode is named as bad).
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
    read_json_lines,
    resize_frames,
)
from calql_robot.datasets.converters.video import VideoReader, decode_image_bytes
from calql_robot.datasets.converters.writing import write_episodes
from calql_robot.errors import ConfigError, UserError

IMAGE_PREFIX = "observation.images."
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def _column(table: pa.Table, name: str, episode: str) -> np.ndarray:
    """A parquet column as numpy: scalars (L,), lists (L, D) (nested lists stack); ragged lists are an error."""
    column = table.column(name)
    try:
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(
                column.type):
            return np.asarray(column.to_pylist())
        return column.to_numpy(zero_copy_only=False)
    except (ValueError, pa.ArrowException) as err:
        raise episode_error(episode, name, f"rows are lists of different lengths or not numbers ({_first_line(err)})"
                            ) from None


def _per_frame_values(table: pa.Table, name: str, episode: str) -> np.ndarray:
    """A column holding one finite number per frame (reward, success, timestamp) as float64 (L,)."""
    try:
        values = np.asarray(_column(table, name, episode), dtype=np.float64)
    except (TypeError, ValueError):
        raise episode_error(episode, name, "values are not numbers") from None
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise episode_error(episode, name, f"expected one number per frame, got shape {values.shape[1:]} per frame")
    if not np.all(np.isfinite(values)):
        raise episode_error(episode, name, f"NaN or infinite value at frame {int(np.argmin(np.isfinite(values)))}")
    return values


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _read_json(path: Path, what: str) -> Any:
    """The JSON value of one metadata file; UserError naming the file if it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"input {path} cannot be read ({err}); expected LeRobot's {what}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"input {path} is not valid JSON ({err.msg} at line {err.lineno}); expected LeRobot's "
                        f"{what}") from None


def _whole(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _checked_episodes(rows: list[Any], where: str) -> list[dict[str, Any]]:
    """Episode rows sorted by episode_index, each an object with a unique non-negative whole episode_index."""
    seen: set[int] = set()
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UserError(f"input {where}, row {number}: expected an object with episode_index, got {row!r:.60}")
        index = _whole(row.get("episode_index"))
        if index is None or index < 0:
            raise UserError(f"input {where}, row {number}: episode_index={row.get('episode_index')!r}; expected a "
                            "non-negative whole number on every episode row")
        if index in seen:
            raise UserError(f"input {where}: episode_index {index} appears twice")
        seen.add(index)
        row["episode_index"] = index
    return sorted(rows, key=lambda r: r["episode_index"])


class LeRobotDataset:
    """The metadata and file layout of one LeRobot dataset folder (v3.0 or v2.1)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        info_path = root / "meta" / "info.json"
        if not info_path.is_file():
            raise UserError(f"input {root}: no meta/info.json (expected a LeRobot dataset folder, v3.0 or v2.1)")
        self.info_path = info_path
        self.info = _read_json(info_path, "meta/info.json object (codebase_version, fps, features)")
        if not isinstance(self.info, dict):
            raise UserError(f"input {info_path} holds a JSON {type(self.info).__name__}; expected an object with "
                            "codebase_version, fps and features")
        self.version = str(self.info.get("codebase_version", ""))
        self.features: dict[str, Any] = self.info.get("features", {})
        if not isinstance(self.features, dict) or not all(isinstance(f, dict) for f in self.features.values()):
            raise UserError(f"input {info_path}: features must be an object {{name: {{dtype, shape, ...}}}}, got "
                            f"{self.features!r:.80}")
        self.fps = self._positive_number(self.info.get("fps"), "fps")
        self.chunks_size = _whole(self.info.get("chunks_size", 1000))
        if self.chunks_size is None or self.chunks_size < 1:
            raise UserError(f"input {info_path}: chunks_size={self.info.get('chunks_size')!r}; expected a positive "
                            "whole number of episodes per chunk")
        if self.version.startswith("v3"):
            self.episodes = self._v3_episodes()
        elif self.version.startswith("v2"):
            self.episodes = self._v2_episodes()
        else:
            raise UserError(f"input {info_path}: codebase_version {self.version!r} is not supported (v3.0, v2.1)")
        self._table_cache: tuple[Path, pa.Table] | None = None
        self._videos: dict[Path, VideoReader] = {}

    def _positive_number(self, value: Any, field: str) -> float | None:
        """A frame rate from info.json: None when absent or 0, else a positive number (UserError otherwise)."""
        if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise UserError(f"input {self.info_path}: {field}={value!r}; expected a positive number of frames per "
                            "second")
        return float(value)

    def _v3_episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise UserError(f"input {self.root}: no meta/episodes/chunk-*/file-*.parquet (LeRobot v3.0)")
        rows = []
        for path in files:
            try:
                rows.extend(pq.read_table(path).to_pylist())
            except (pa.ArrowException, OSError) as err:
                raise UserError(f"input {path} cannot be read as parquet ({_first_line(err)}); expected LeRobot "
                                "v3.0's episodes table") from None
        return _checked_episodes(rows, str(self.root / "meta" / "episodes"))

    def _v2_episodes(self) -> list[dict[str, Any]]:
        path = self.root / "meta" / "episodes.jsonl"
        if not path.is_file():
            raise UserError(f"input {self.root}: no meta/episodes.jsonl (LeRobot v2.1)")
        rows = read_json_lines(path, "input", "; expected one episode object per line")
        return _checked_episodes(rows, str(path))

    def _path(self, key: str, default: str, **fields: Any) -> str:
        """info.json's ``data_path`` / ``video_path`` template filled in; UserError if the template does not fit."""
        template = self.info.get(key, default)
        try:
            return str(template).format(**fields)
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(f"input {self.info_path}: {key}={template!r} cannot be filled in ({type(err).__name__}: "
                            f"{err}); expected a template using {sorted(fields)}") from None

    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]

    def frames_table(self, ep: dict[str, Any]) -> pa.Table:
        """The parquet rows of one episode, in frame order."""
        index = int(ep["episode_index"])
        if self.version.startswith("v3"):
            rel = self._path("data_path", V3_DATA, chunk_index=_episode_int(ep, "data/chunk_index"),
                             file_index=_episode_int(ep, "data/file_index"))
        else:
            rel = self._path("data_path", V2_DATA, episode_chunk=index // self.chunks_size, episode_index=index)
        path = self.root / rel
        if self._table_cache is None or self._table_cache[0] != path:
            if not path.is_file():
                raise episode_error(str(index), "data", f"parquet file {path} is missing")
            try:
                self._table_cache = (path, pq.read_table(path))
            except (pa.ArrowException, OSError) as err:
                raise episode_error(str(index), "data", f"parquet file {path} cannot be read ({_first_line(err)})"
                                    ) from None
        table = self._table_cache[1]
        try:
            if "episode_index" in table.column_names:
                table = table.filter(pc.equal(table.column("episode_index"), index))
            if "frame_index" in table.column_names:
                table = table.sort_by("frame_index")
        except pa.ArrowException as err:
            raise episode_error(str(index), "episode_index/frame_index", f"columns of {path} cannot select and order "
                                f"the episode's frames ({_first_line(err)}); expected whole numbers") from None
        return table

    def video_frames(self, ep: dict[str, Any], key: str, timestamps: np.ndarray) -> np.ndarray:
        """Decoded frames (L, H, W, 3) RGB uint8 of video feature ``key`` at the episode's frame timestamps (L,)."""
        index = int(ep["episode_index"])
        info = self.features[key].get("info")
        fps = info.get("video.fps") if isinstance(info, dict) and "video.fps" in info else self.fps
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
            raise UserError(f"input {self.info_path}: video feature {key} states no usable frame rate (info.video.fps "
                            f"or fps = {fps!r}); expected a positive number")
        if self.version.startswith("v3"):
            rel = self._path("video_path", V3_VIDEO, video_key=key,
                             chunk_index=_episode_int(ep, f"videos/{key}/chunk_index"),
                             file_index=_episode_int(ep, f"videos/{key}/file_index"))
            offset = ep.get(f"videos/{key}/from_timestamp")
            if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not np.isfinite(offset):
                raise episode_error(str(index), f"videos/{key}/from_timestamp", f"{offset!r} in the episodes table; "
                                    "expected the episode's start time (s) in the video file")
            offset = float(offset)
        else:
            rel = self._path("video_path", V2_VIDEO, episode_chunk=index // self.chunks_size, video_key=key,
                             episode_index=index)
            offset = 0.0
        path = self.root / rel
        if path not in self._videos:
            self._videos[path] = VideoReader(path)
        times = offset + np.asarray(timestamps, dtype=np.float64)
        return self._videos[path].read_times(times, tolerance=0.5 / float(fps))

    def close(self) -> None:
        for reader in self._videos.values():
            reader.close()


def _episode_int(ep: dict[str, Any], field: str) -> int:
    """A whole-number field of an episode row (chunk / file index); an episode error if missing or not whole."""
    value = _whole(ep.get(field))
    if value is None or value < 0:
        raise episode_error(str(ep["episode_index"]), field, f"{ep.get(field)!r} in the episodes table; expected a "
                                                             "non-negative whole number")
    return value


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
                raise ConfigError(f"keys.cameras names {cam!r}, which is no camera of {self.ds.root}; have "
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
        if "length" in ep and _whole(ep["length"]) != n_frames:
            raise episode_error(name, "length", f"the episodes table says {ep['length']!r} frames, the data has "
                                                f"{n_frames}")

        def column(field: str) -> np.ndarray:
            if field not in table.column_names:
                raise episode_error(name, field, f"missing from the data; columns {table.column_names}")
            return _column(table, field, name)

        obs = {key: observation_from_fields(key, fields, column, name) for key, fields in self.obs_map.items()}
        timestamps = _per_frame_values(table, "timestamp", name) if "timestamp" in table.column_names else (
            np.arange(n_frames) / (self.ds.fps or 1.0))
        for feature, key in self.cam_map.items():
            if self.ds.features[feature].get("dtype") == "video":
                frames = self.ds.video_frames(ep, feature, timestamps)
            else:
                if feature not in table.column_names:
                    raise episode_error(name, feature, f"missing from the data; columns {table.column_names}")
                frames = np.stack([decode_image_bytes(_image_bytes(v, name, feature), f"episode {name}, field "
                                                      f"{feature}") for v in table.column(feature).to_pylist()])
            obs[key] = resize_frames(frames, self.size)
        actions = as_low_dim(column(self.action_key), name, self.action_key)[:-1]
        reward_field = str(self.cfg.reward.column or "next.reward")
        rewards = _per_frame_values(table, reward_field, name) if reward_field in table.column_names else None
        success = None
        if "next.success" in table.column_names:
            success = bool(_per_frame_values(table, "next.success", name)[-1])
        elif rewards is not None:
            success = bool(np.max(rewards) >= float(self.cfg.reward.success_value))
        reward_column = None if rewards is None else rewards[:-1]
        return SourceEpisode(name, obs, actions, success=success, reward_column=reward_column,
                             info={"reward_field": reward_field})


def _image_bytes(value: Any, episode: str, feature: str) -> bytes:
    """The encoded bytes of one image cell ({"bytes": ..., "path": ...})."""
    data = value.get("bytes") if isinstance(value, dict) else None
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise episode_error(episode, feature, "an image cell holds no encoded bytes; expected {bytes: PNG/JPEG, path}")
    return bytes(data)


def convert(cfg: DictConfig) -> dict:
    """Convert a LeRobot dataset folder into ``cfg.output``; returns the summary dict."""
    reader = LeRobotReader(cfg)
    try:
        tasks = reader.ds.episodes[0].get("tasks") if reader.ds.episodes else None
        first_task = tasks if isinstance(tasks, str) else tasks[0] if isinstance(tasks, list) and tasks else None
        task = cfg.task or first_task or reader.ds.root.name
        source = {"kind": "lerobot", "input": str(reader.ds.root), "codebase_version": reader.ds.version,
                  "robot_type": reader.ds.info.get("robot_type"),
                  "steps": "L frames -> L-1 transitions; the last action is dropped"}
        return write_episodes(cfg, reader.names, reader.load, task=str(task), control_freq=reader.ds.fps,
                              source=source)
    finally:
        reader.ds.close()
