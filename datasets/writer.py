"""DatasetWriter: create or append to a zarr dataset store (format version 1), one validated episode at a time.

Commit rule: an episode's rows (observations, action, reward, terminal, truncated) are written first, then its
final observation, and ``meta/episode_ends`` is extended last. A crash before that last step leaves rows past
``episode_ends[-1]`` which readers ignore and :meth:`DatasetWriter.open` truncates.

Integrity records (:mod:`calql_robot.datasets.integrity`): after each array's rows are written its record (chunk
sizes and digests of the rows) is updated, before the commit; that of ``meta/episode_ends`` right after it. Every
chunk is stored, even an all-zero one, so a missing chunk file always means a lost one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calql_robot.datasets import integrity
from calql_robot.datasets.action_scaling import ATTR, ActionScaling
from calql_robot.datasets.integrity import ChunkDigests
from calql_robot.datasets.spec import (
    EPISODE_CHUNK_LEN,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_CHUNK_LEN,
    KIND_RGB,
    LOW_DIM_CHUNK_LEN,
    OPTIONAL_STEP_ARRAYS,
    STEP_ARRAYS,
    image_compressor,
    low_dim_compressor,
    validate_obs_spec,
)
from calql_robot.datasets.store_validation import (
    ACTION_BOUND_ABS_TOLERANCE,
    ACTION_BOUND_REL_TOLERANCE,
    StoreLayout,
    committed_rows,
    final_obs_array_name,
    obs_array_name,
    open_store_layout,
)
from calql_robot.errors import UserError


def _create_array(group: zarr.Group, name: str, trailing: tuple[int, ...], dtype: str, chunk_len: int) -> zarr.Array:
    image = dtype == "uint8" and len(trailing) == 3
    compressor = image_compressor() if image else low_dim_compressor(np.dtype(dtype).itemsize)
    return group.create_array(
        name, shape=(0, *trailing), dtype=dtype, chunks=(chunk_len, *trailing), compressors=compressor, fill_value=0,
        attributes={integrity.ATTR: []}, config={"write_empty_chunks": True},
    )


def _as_flags(values: Any, name: str, n_steps: int, where: str) -> np.ndarray:
    """(N,) bool from bools or 0/1 numbers."""
    arr = np.asarray(values)
    if arr.shape != (n_steps,):
        raise UserError(f"{where}: {name} has shape {arr.shape}, expected ({n_steps},) like actions")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise UserError(f"{where}: {name} must be booleans (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


class DatasetWriter:
    """Appends episodes to a dataset store. Use :meth:`create` or :meth:`open`, then :meth:`add_episode`."""

    def __init__(self, layout: StoreLayout, digests: dict[str, ChunkDigests] | None = None) -> None:
        self._layout = layout
        self._arrays = layout.arrays
        self._n_episodes = layout.n_episodes
        self._n_transitions = layout.n_transitions
        self._closed = False
        self._digests = digests if digests is not None else {
            name: ChunkDigests(layout.path, name, arr, layout.records.get(name), committed_rows(layout, name))
            for name, arr in layout.arrays.items()
        }

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        path: str | Path,
        obs_spec: dict[str, dict[str, Any]],
        action_low: Any,
        action_high: Any,
        task: str,
        control_freq: float,
        reward_success: float,
        reward_failure: float,
        source: dict[str, Any] | None = None,
        overwrite: bool = False,
        action_scaling: dict[str, Any] | None = None,
        step_extensions: tuple[str, ...] = (),
    ) -> DatasetWriter:
        """Create an empty store at ``path``; ``action_low``/``action_high`` are (A,) bounds of the action space.

        An existing ``path`` raises UserError unless ``overwrite`` (then it is deleted first). ``action_scaling``
        (:meth:`ActionScaling.to_json`, bounds -1 / +1 then) is stored as the attribute of that name.
        ``step_extensions`` names optional per-step arrays to create (``OPTIONAL_STEP_ARRAYS``: ``"intervention"``).
        """
        path = Path(path).expanduser()
        where = f"DatasetWriter.create({path})"
        spec = validate_obs_spec(obs_spec, where)
        low = np.asarray(action_low, dtype=np.float64).reshape(-1)
        high = np.asarray(action_high, dtype=np.float64).reshape(-1)
        if low.size == 0 or low.shape != high.shape or not np.isfinite(low).all() or not np.isfinite(high).all():
            raise UserError(f"{where}: action_low / action_high must be equally long finite vectors, got {low}, {high}")
        if not (low < high).all():
            raise UserError(f"{where}: action_low must be below action_high in every dimension, got {low}, {high}")
        if not float(reward_success) > float(reward_failure):
            raise UserError(
                f"{where}: reward_success ({reward_success}) must be greater than reward_failure ({reward_failure}); "
                "success is detected as reward >= reward_success"
            )
        if not float(control_freq) > 0:
            raise UserError(f"{where}: control_freq must be positive (Hz), got {control_freq}")
        source = dict(source or {})
        try:
            json.dumps(source)
        except (TypeError, ValueError) as err:
            raise UserError(f"{where}: source must be JSON-serialisable provenance ({err})") from None
        unknown = sorted(set(step_extensions) - set(OPTIONAL_STEP_ARRAYS))
        if unknown:
            raise UserError(f"{where}: unknown step_extensions {unknown}; expected some of "
                            f"{sorted(OPTIONAL_STEP_ARRAYS)}")
        if action_scaling is not None:
            ActionScaling.from_store_attrs({ATTR: action_scaling, "action_low": low, "action_high": high}, where)
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise UserError(f"{where}: {path} already exists; pass overwrite=True to replace it")
            if path.is_dir() and not path.is_symlink():
                if not (path / "zarr.json").is_file() and any(path.iterdir()):
                    raise UserError(f"{where}: {path} is a non-empty directory but not a zarr store; not deleting it")
                shutil.rmtree(path)
            else:
                path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(path), mode="w")
        for key, entry in spec.items():
            trailing = tuple(entry["shape"])
            chunk = IMAGE_CHUNK_LEN if entry["kind"] == KIND_RGB else LOW_DIM_CHUNK_LEN
            _create_array(group, obs_array_name(key), trailing, entry["dtype"], chunk)
            final_chunk = IMAGE_CHUNK_LEN if entry["kind"] == KIND_RGB else EPISODE_CHUNK_LEN
            _create_array(group, final_obs_array_name(key), trailing, entry["dtype"], final_chunk)
        for short, dtype in STEP_ARRAYS.items():
            trailing = (low.size,) if short == "action" else ()
            _create_array(group, f"data/{short}", trailing, dtype, LOW_DIM_CHUNK_LEN)
        for short in step_extensions:
            _create_array(group, f"data/{short}", (), OPTIONAL_STEP_ARRAYS[short], LOW_DIM_CHUNK_LEN)
        _create_array(group, "meta/episode_ends", (), "int64", EPISODE_CHUNK_LEN)
        group.attrs.update(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "obs_spec": spec,
                "action_low": low.tolist(),
                "action_high": high.tolist(),
                "task": str(task),
                "control_freq": float(control_freq),
                "reward": {"success": float(reward_success), "failure": float(reward_failure)},
                "source": source,
                "integrity": integrity.ALGORITHM,
                **({ATTR: dict(action_scaling)} if action_scaling is not None else {}),
            }
        )
        return cls(open_store_layout(path, mode="r+"))

    @classmethod
    def open(cls, path: str | Path) -> DatasetWriter:
        """Open an existing store for appending; rows of an interrupted write (past episode_ends[-1]) are dropped.

        The last, partial chunk of every array is checked against its integrity record first (a corrupt one is a
        UserError and nothing is changed); the records are then cut to the rows kept.
        """
        layout = open_store_layout(path, mode="r+")
        digests = {name: ChunkDigests(layout.path, name, arr, layout.records.get(name), committed_rows(layout, name))
                   for name, arr in layout.arrays.items()}
        for name, arr in layout.arrays.items():
            digests[name].save()  # the record first: an array is never shorter than its record says
            keep = committed_rows(layout, name)
            if arr.shape[0] > keep:
                arr.resize((keep, *arr.shape[1:]))
        return cls(layout, digests)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def path(self) -> Path:
        return self._layout.path

    @property
    def obs_spec(self) -> dict[str, dict[str, Any]]:
        return self._layout.obs_spec

    @property
    def n_episodes(self) -> int:
        return self._n_episodes

    @property
    def n_transitions(self) -> int:
        return self._n_transitions

    # ----------------------------------------------------------------------------------------------- writing
    @property
    def step_extensions(self) -> tuple[str, ...]:
        """The optional per-step arrays this store holds (e.g. ``("intervention",)``)."""
        return tuple(short for short in OPTIONAL_STEP_ARRAYS if f"data/{short}" in self._arrays)

    def _validate_episode(
        self, observations: Any, actions: Any, rewards: Any, terminals: Any, truncations: Any,
        interventions: Any = None,
    ) -> dict[str, np.ndarray]:
        """Check one episode and return {array name: values} ready to write (observations split N + final)."""
        where = f"dataset {self.path}: episode {self._n_episodes}"
        act = np.asarray(actions)
        action_dim = len(self._layout.action_low)
        if act.ndim != 2 or act.shape[1] != action_dim or act.shape[0] < 1:
            raise UserError(f"{where}: actions has shape {act.shape}, expected (N, {action_dim}) with N >= 1")
        if not np.issubdtype(act.dtype, np.number):
            raise UserError(f"{where}: actions must be numbers, got dtype {act.dtype}")
        act = act.astype(np.float32)
        if not np.isfinite(act).all():
            raise UserError(f"{where}: actions hold NaN or inf")
        self._check_bounds(act, where)
        n_steps = act.shape[0]
        rew = np.asarray(rewards)
        if rew.shape != (n_steps,) or not np.issubdtype(rew.dtype, np.number):
            raise UserError(f"{where}: rewards has shape {rew.shape} dtype {rew.dtype}, expected ({n_steps},) numbers")
        rew = rew.astype(np.float32)
        if not np.isfinite(rew).all():
            raise UserError(f"{where}: rewards hold NaN or inf")
        out = {
            "data/action": act,
            "data/reward": rew,
            "data/terminal": _as_flags(terminals, "terminals", n_steps, where),
            "data/truncated": _as_flags(truncations, "truncations", n_steps, where),
        }
        if "intervention" in self.step_extensions:
            flags = np.zeros(n_steps, bool) if interventions is None else interventions
            out["data/intervention"] = _as_flags(flags, "interventions", n_steps, where)
        elif interventions is not None and np.asarray(interventions).astype(bool).any():
            raise UserError(f"{where}: the episode has intervention steps but the store has no data/intervention "
                            "array (it was created without step_extensions=('intervention',)); they would be lost")
        if not isinstance(observations, dict) or set(observations) != set(self.obs_spec):
            got = sorted(observations) if isinstance(observations, dict) else type(observations).__name__
            raise UserError(f"{where}: observations must have exactly the keys {sorted(self.obs_spec)}, got {got}")
        for key, entry in self.obs_spec.items():
            obs = np.asarray(observations[key])
            expected = (n_steps + 1, *entry["shape"])
            if obs.shape != expected:
                raise UserError(
                    f"{where}: observations['{key}'] has shape {obs.shape}, expected {expected} (N + 1 observations "
                    f"for N = {n_steps} actions)"
                )
            if entry["kind"] == KIND_RGB:
                if obs.dtype != np.uint8:
                    raise UserError(f"{where}: observations['{key}'] (rgb) has dtype {obs.dtype}, expected uint8")
            else:
                if not (np.issubdtype(obs.dtype, np.number) or obs.dtype == np.bool_):
                    raise UserError(f"{where}: observations['{key}'] must be numbers, got dtype {obs.dtype}")
                obs = obs.astype(np.float32)
                if not np.isfinite(obs).all():
                    raise UserError(f"{where}: observations['{key}'] hold NaN or inf (as float32)")
            out[obs_array_name(key)] = obs[:-1]
            out[final_obs_array_name(key)] = obs[-1:]
        return out

    def _check_bounds(self, act: np.ndarray, where: str) -> None:
        low, high = self._layout.action_low.astype(np.float64), self._layout.action_high.astype(np.float64)
        slack = ACTION_BOUND_REL_TOLERANCE * (high - low) + ACTION_BOUND_ABS_TOLERANCE
        outside = (act < low - slack) | (act > high + slack)
        if outside.any():
            step, dim = (int(i) for i in np.argwhere(outside)[0])
            raise UserError(f"{where}: action {float(act[step, dim]):.6g} at step {step}, dimension {dim} lies outside "
                            f"the store's action bounds [{low[dim]:.6g}, {high[dim]:.6g}]")

    def _write(self, name: str, start: int, rows: np.ndarray) -> None:
        """Grow array ``name`` to ``start + len(rows)`` rows, write ``rows`` there and update its record."""
        arr = self._arrays[name]
        arr.resize((start + len(rows), *arr.shape[1:]))
        arr[start : start + len(rows)] = rows
        self._digests[name].append(start, rows)
        self._digests[name].save()

    def add_episode(
        self, observations: dict[str, Any], actions: Any, rewards: Any, terminals: Any, truncations: Any,
        interventions: Any = None,
    ) -> int:
        """Validate and append one episode; returns its index.

        ``observations[key]`` is (N+1, *shape) (the last row becomes ``data/final_obs/<key>``); ``actions`` (N, A);
        ``rewards``, ``terminals``, ``truncations`` (N,); ``interventions`` (N,) bool or None (all False) for a store
        with ``data/intervention``. Raises UserError naming the key on bad input; nothing is written then.
        """
        if self._closed:
            raise RuntimeError(f"DatasetWriter for {self.path} is closed")
        values = self._validate_episode(observations, actions, rewards, terminals, truncations, interventions)
        start, n_steps = self._n_transitions, len(values["data/action"])
        end = start + n_steps
        for name, rows in values.items():
            if not name.startswith("data/final_obs/"):
                self._write(name, start, rows)
        episode = self._n_episodes
        for name, rows in values.items():
            if name.startswith("data/final_obs/"):
                self._write(name, episode, rows)
        self._write("meta/episode_ends", episode, np.array([end], dtype=np.int64))  # the commit point
        self._n_episodes, self._n_transitions = episode + 1, end
        return episode

    def close(self) -> None:
        """Finish writing (every add_episode is already durable; this only forbids further appends)."""
        self._closed = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
