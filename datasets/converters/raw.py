"""source=raw: a lab's own teleoperation logs, one folder per episode (format in docs/converters.md).

    INPUT/<episode>/episode.json               {"success": true|false, "task": "optional text"}
    INPUT/<episode>/<table>.csv|.jsonl|.npz    tables with a `timestamp` column (s) + state / action fields
    INPUT/<episode>/cameras/<cam>.mp4          video (+ optional cameras/<cam>.timestamps.txt, one line per frame)
    INPUT/<episode>/cameras/<cam>/             or image frames *.png|*.jpg (name order) + timestamps.txt

The reference stream (``align.reference``: 'actions' = the table holding the action field, a table name or a camera
name) defines the steps: T reference times give T observations and T actions, hence T-1 transitions (the last
action has no next observation and is dropped). Every other stream is aligned to the reference times by
``align.method`` (nearest / linear; images always nearest); ``align.tolerance_s`` bounds the gap to a sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
)
from calql_robot.datasets.converters.raw_tables import read_table, table_paths
from calql_robot.datasets.converters.timestamps import align_stream, check_timestamps, nearest_indices
from calql_robot.datasets.converters.video import VideoReader, read_image_files
from calql_robot.datasets.converters.writing import write_episodes
from calql_robot.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
EPISODE_FILE = "episode.json"


def _read_timestamps_txt(path: Path, where: str) -> np.ndarray:
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as err:
        raise UserError(f"{where}: {path} must hold one timestamp (s) per line ({err})") from None
    except OSError as err:
        raise UserError(f"{where}: {path} cannot be read ({err}); expected one timestamp (s) per line") from None
    return check_timestamps(values, f"{where}, {path.name}")


class Camera:
    """One camera stream of an episode: frame timestamps (M,) and a way to read frames by index."""

    def __init__(self, folder: Path, name: str, episode: str, start_time: float) -> None:
        self.name = name
        self.where = f"episode {episode}, camera {name}"
        video = folder / "cameras" / f"{name}.mp4"
        if video.is_file():
            self.video: Path | None = video
            self.files: list[Path] = []
            with VideoReader(video) as reader:
                n_frames, fps = reader.n_frames, reader.fps
            stamps = video.with_name(f"{name}.timestamps.txt")
            if stamps.is_file():
                self.times = _read_timestamps_txt(stamps, self.where)
            else:
                if fps <= 0:
                    raise UserError(f"{self.where}: {video} states no frame rate; add {stamps.name}")
                self.times = start_time + np.arange(n_frames, dtype=np.float64) / fps
            if self.times.shape[0] > n_frames:
                raise UserError(f"{self.where}: {self.times.shape[0]} timestamps but the video holds {n_frames} "
                                "frames")
        else:
            frame_dir = folder / "cameras" / name
            self.video = None
            self.files = sorted(p for p in frame_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.times = _read_timestamps_txt(frame_dir / "timestamps.txt", self.where)
            if self.times.shape[0] != len(self.files):
                raise UserError(f"{self.where}: {len(self.files)} image files but {self.times.shape[0]} timestamps")

    def frames(self, indices: np.ndarray) -> np.ndarray:
        """Frames (K, H, W, 3) RGB uint8 at the given frame indices."""
        if self.video is not None:
            with VideoReader(self.video) as reader:
                return reader.read(indices)
        return read_image_files([self.files[i] for i in indices])


def camera_names(folder: Path) -> list[str]:
    """Cameras of an episode folder: cameras/<cam>.mp4 files and cameras/<cam>/ image folders."""
    cams = folder / "cameras"
    if not cams.is_dir():
        return []
    names = {p.stem for p in cams.glob("*.mp4")} | {p.name for p in cams.iterdir() if p.is_dir()}
    return sorted(names)


class RawEpisodeReader:
    """Reads one episode folder into a :class:`SourceEpisode` by the key mapping and alignment options."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.root = Path(str(cfg.input)).expanduser()
        self.size = parse_image_size(cfg.image_size)
        self.action_field = str(cfg["keys"].action or "action")
        self.method = str(cfg.align.method)
        self.tolerance = cfg.align.tolerance_s

    def tables(self, folder: Path) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
        paths = table_paths(folder)
        if not paths:
            raise episode_error(folder.name, "tables", f"no .csv/.jsonl/.npz table in {folder}")
        return {p.stem: read_table(p) for p in paths}

    def find_field(self, tables: dict[str, Any], field: str, episode: str) -> tuple[str, str]:
        """(table, field) for a field reference 'field' or 'table:field'."""
        if ":" in field:
            table, name = field.split(":", 1)
            if table in tables and name in tables[table][1]:
                return table, name
            raise episode_error(episode, field, f"no such table/field; tables {sorted(tables)}")
        owners = [t for t, (_, fields) in tables.items() if field in fields]
        if len(owners) != 1:
            have = sorted(f"{t}:{f}" for t, (_, fs) in tables.items() for f in fs)
            problem = "missing" if not owners else f"found in several tables {owners}; write table:field"
            raise episode_error(episode, field, f"{problem} (fields: {have})")
        return owners[0], field

    def reference_times(self, folder: Path, tables: dict[str, Any]) -> np.ndarray:
        ref = str(self.cfg.align.reference)
        if ref == "actions":
            return tables[self.find_field(tables, self.action_field, folder.name)[0]][0]
        if ref in tables:
            return tables[ref][0]
        if ref in camera_names(folder):
            return Camera(folder, ref, folder.name, 0.0).times
        raise episode_error(folder.name, "align.reference", f"{ref!r} is neither 'actions', a table {sorted(tables)} "
                                                            f"nor a camera {camera_names(folder)}")

    def load(self, folder: Path) -> SourceEpisode:
        episode = folder.name
        tables = self.tables(folder)
        ref = self.reference_times(folder, tables)
        if ref.shape[0] < 2:
            raise episode_error(episode, "align.reference", f"{ref.shape[0]} reference steps; need at least 2")

        def aligned(field: str) -> np.ndarray:
            table, name = self.find_field(tables, field, episode)
            times, fields = tables[table]
            return align_stream(ref, times, fields[name], self.method, f"episode {episode}, field {field}",
                                self.tolerance)

        skip = {self.action_field, str(self.cfg.reward.column)}
        default_obs = {f: f for _, fields in tables.values() for f in fields if f not in skip}
        obs = {key: observation_from_fields(key, fields, aligned, episode)
               for key, fields in obs_mapping_from_cfg(self.cfg["keys"].obs, default_obs).items()}
        cams = mapping_from_cfg(self.cfg["keys"].cameras, {c: c for c in camera_names(folder)}, "keys.cameras")
        start = min(times[0] for times, _ in tables.values())
        for cam, key in cams.items():
            if cam not in camera_names(folder):
                raise episode_error(episode, f"camera {cam}", f"missing; have {camera_names(folder)}")
            camera = Camera(folder, cam, episode, start)
            idx = nearest_indices(ref, camera.times, camera.where, self.tolerance)
            obs[key] = resize_frames(camera.frames(idx), self.size)
        actions = as_low_dim(aligned(self.action_field), episode, self.action_field)[:-1]
        reward_column = None
        if self.cfg.reward.rule == "column":
            reward_column = aligned(str(self.cfg.reward.column or "reward"))[:-1]
        outcome = read_outcome(folder)
        return SourceEpisode(episode, obs, actions, success=outcome.get("success"), reward_column=reward_column,
                             info={"task": outcome.get("task"),
                                   "reward_field": str(self.cfg.reward.column or "reward")})


def read_outcome(folder: Path) -> dict[str, Any]:
    """The episode file: {"success": bool (or absent), "task": str (optional)}."""
    path = folder / EPISODE_FILE
    if not path.is_file():
        raise episode_error(folder.name, EPISODE_FILE, f"missing: each episode folder needs {EPISODE_FILE} with "
                                                       '{"success": true|false}')
    try:
        outcome = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise episode_error(folder.name, EPISODE_FILE, f"not valid JSON ({err.msg})") from None
    if not isinstance(outcome, dict):
        raise episode_error(folder.name, EPISODE_FILE, "expected a JSON object")
    if "success" in outcome and not isinstance(outcome["success"], bool):
        raise episode_error(folder.name, f"{EPISODE_FILE}:success", f"expected true or false, got "
                                                                    f"{outcome['success']!r}")
    return outcome


def episode_folders(root: Path) -> list[Path]:
    """The episode folders of a raw input (sub-folders holding an episode file or a table), sorted by name."""
    if not root.is_dir():
        raise UserError(f"input {root}: expected a folder with one sub-folder per episode")
    return sorted(p for p in root.iterdir() if p.is_dir() and ((p / EPISODE_FILE).exists() or table_paths(p)))


def convert(cfg: DictConfig) -> dict:
    """Convert a raw log folder into ``cfg.output``; returns the summary dict."""
    reader = RawEpisodeReader(cfg)
    folders = {p.name: p for p in episode_folders(reader.root)}
    control_freq, task = None, cfg.task
    for folder in folders.values():  # the first readable episode states the rate and the task
        try:
            ref = reader.reference_times(folder, reader.tables(folder))
            outcome = read_outcome(folder)
        except UserError:
            continue
        control_freq = 1.0 / float(np.median(np.diff(ref))) if ref.shape[0] > 1 else None
        task = task or outcome.get("task")
        break
    task = task or reader.root.name
    source = {"kind": "raw", "input": str(reader.root),
              "align": {"method": reader.method, "reference": str(cfg.align.reference),
                        "tolerance_s": None if reader.tolerance is None else float(reader.tolerance),
                        "images": "nearest frame"},
              "steps": "T reference times -> T-1 transitions; the last action is dropped"}
    return write_episodes(cfg, list(folders), lambda name: reader.load(folders[name]), task=str(task),
                          control_freq=control_freq, source=source)
