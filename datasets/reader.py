"""ZarrDataset: read and validate a zarr dataset store (format version 1), eagerly into RAM or lazily by chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calql_robot.datasets.action_scaling import ActionScaling
from calql_robot.datasets.integrity import read_rows
from calql_robot.datasets.lazy import DEFAULT_CACHE_BYTES, ChunkCache, LazyArray
from calql_robot.datasets.store_validation import (
    assert_finite,
    assert_within_bounds,
    committed_rows,
    final_obs_array_name,
    finite_checked_names,
    obs_array_name,
    open_store_layout,
    verify_layout,
)

ArrayLike = Any  # np.ndarray (eager) or LazyArray (lazy)


class ZarrDataset:
    """A validated dataset store.

    Opening checks the format name and version, attributes, every array's presence, dtype and shape, that the
    arrays hold the rows ``meta/episode_ends`` commits, that every chunk file of those rows exists (full chunks with
    their recorded size), that actions, rewards and low-dim observations are finite (NaN/inf) and that actions lie
    within the store's action bounds. Rows past ``episode_ends[-1]`` (an interrupted write) are ignored. Any problem,
    including a chunk that cannot be decoded, raises UserError naming the store, the array and the chunk file.
    ``verify=True`` also decodes every chunk and compares it with the digest recorded when it was written
    (:attr:`integrity` holds the counts).

    ``lazy=False`` loads every array into RAM as numpy. ``lazy=True`` keeps :class:`LazyArray` views that read whole
    time-chunks on demand through one LRU cache of at most ``cache_bytes``; the finite check then streams the low-dim
    arrays chunk by chunk once at open (images are uint8 and cannot hold NaN, so they are not read at open).

    ``path`` may be a URL (``s3://bucket/store.zarr``, any fsspec URL; ``storage_options`` go to its backend): the
    store is then read-only, :attr:`path` is a :class:`~calql_robot.datasets.remote_store.RemotePath` whose ``str``
    is the URL, the checks and messages are those of a local store, and :meth:`transfer` counts what was fetched.
    """

    def __init__(self, path: str | Path, lazy: bool = False, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 verify: bool = False, storage_options: dict[str, Any] | None = None) -> None:
        self._layout = open_store_layout(path, mode="r", storage_options=storage_options)
        self.path = self._layout.path
        self.lazy = bool(lazy)
        self.cache = ChunkCache(cache_bytes) if self.lazy else None
        #: the counts of :func:`verify_layout` when opened with ``verify=True``, else None
        self.integrity: dict[str, Any] | None = verify_layout(self._layout) if verify else None
        self._data: dict[str, ArrayLike] = {}
        for name, arr in self._layout.arrays.items():
            if name == "meta/episode_ends":
                continue
            rows = committed_rows(self._layout, name)
            if self.lazy:
                self._data[name] = LazyArray(arr, name, rows, self.cache, store_path=self.path)
            else:
                self._data[name] = read_rows(self.path, name, arr, 0, rows)
        for name in finite_checked_names(self._layout):
            values = self._data[name]
            chunks = values.iter_chunks() if isinstance(values, LazyArray) else [(0, values)]
            for start, rows in chunks:
                assert_finite(self.path, name, rows, row_offset=start)
                if name == "data/action":
                    assert_within_bounds(self._layout, rows, row_offset=start)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def n_episodes(self) -> int:
        return self._layout.n_episodes

    @property
    def n_transitions(self) -> int:
        return self._layout.n_transitions

    @property
    def obs_spec(self) -> dict[str, dict[str, Any]]:
        return self._layout.obs_spec

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes: format, format_version, obs_spec, action_low/high, task, control_freq, reward, source."""
        return self._layout.attrs

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 cumulative episode ends (exclusive), committed episodes only."""
        return self._layout.episode_ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        """(E,) int64 first row of each episode."""
        ends = self._layout.episode_ends
        return np.concatenate([[0], ends[:-1]]).astype(np.int64) if len(ends) else ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        """(E,) int64 steps per episode."""
        return self._layout.episode_ends - self.episode_starts

    @property
    def action_dim(self) -> int:
        return int(len(self._layout.action_low))

    @property
    def action_low(self) -> np.ndarray:
        """(A,) float32."""
        return self._layout.action_low.copy()

    @property
    def action_high(self) -> np.ndarray:
        """(A,) float32."""
        return self._layout.action_high.copy()

    @property
    def action_scaling(self) -> ActionScaling | None:
        """The map from the stored (policy) actions to the source's units (attribute action_scaling), or None."""
        return ActionScaling.from_store_attrs(self.attrs, f"dataset {self.path}")

    @property
    def reward_success(self) -> float:
        return float(self.attrs["reward"]["success"])

    @property
    def reward_failure(self) -> float:
        return float(self.attrs["reward"]["failure"])

    # ----------------------------------------------------------------------------------------------- data
    def arrays(self) -> dict[str, Any]:
        """``{"obs": {key: (T, ...)}, "final_obs": {key: (E, ...)}, "action": (T, A), "reward": (T,),
        "terminal": (T,), "truncated": (T,)}`` as numpy arrays (eager) or LazyArray (lazy); do not modify them. A store
        with the ``data/intervention`` extension also gives ``"intervention": (T,)`` bool."""
        return {
            "obs": {key: self._data[obs_array_name(key)] for key in self.obs_spec},
            "final_obs": {key: self._data[final_obs_array_name(key)] for key in self.obs_spec},
            "action": self._data["data/action"],
            "reward": self._data["data/reward"],
            "terminal": self._data["data/terminal"],
            "truncated": self._data["data/truncated"],
            **({"intervention": self._data["data/intervention"]} if "data/intervention" in self._data else {}),
        }

    def episode(self, index: int) -> dict[str, Any]:
        """Episode ``index`` as numpy: ``{"obs": {key: (N+1, ...)}, "action": (N, A), "reward": (N,),
        "terminal": (N,), "truncated": (N,)}`` (the last observation row is the episode's final_obs), plus
        ``"intervention": (N,)`` when the store has that extension."""
        n_eps = self.n_episodes
        if not -n_eps <= index < n_eps:
            raise IndexError(f"episode {index} out of range: {self.path} has {n_eps} episodes")
        index %= n_eps
        start, end = int(self.episode_starts[index]), int(self._layout.episode_ends[index])
        obs = {
            key: np.concatenate(
                [self._data[obs_array_name(key)][start:end], self._data[final_obs_array_name(key)][index : index + 1]]
            )
            for key in self.obs_spec
        }
        out: dict[str, Any] = {"obs": obs}
        for short in ("action", "reward", "terminal", "truncated", "intervention"):
            if f"data/{short}" in self._data:
                out[short] = np.array(self._data[f"data/{short}"][start:end])
        return out

    def _rewards(self) -> np.ndarray:
        rewards = self._data["data/reward"]
        return np.asarray(rewards[:]) if isinstance(rewards, LazyArray) else rewards

    def episode_returns(self) -> np.ndarray:
        """(E,) float64 undiscounted sum of raw rewards per episode."""
        if self.n_episodes == 0:
            return np.zeros(0, dtype=np.float64)
        return np.add.reduceat(self._rewards().astype(np.float64), self.episode_starts)

    def success_mask(self) -> np.ndarray:
        """(E,) bool: an episode succeeded if any of its steps has raw reward >= attrs reward["success"].

        (reward_success > reward_failure is required by the writer, so a terminal success step counts too.)
        """
        if self.n_episodes == 0:
            return np.zeros(0, dtype=bool)
        best = np.maximum.reduceat(self._rewards(), self.episode_starts)
        return best >= np.float32(self.reward_success)

    def transfer(self) -> dict[str, int] | None:
        """``{"requests", "bytes_read"}`` fetched from a store at a URL since it was opened; None for a local store."""
        remote = self._layout.remote
        return None if remote is None else {"requests": remote.requests, "bytes_read": remote.bytes_read}

    def size_on_disk_bytes(self) -> int:
        """Bytes of all files in the store directory (for a URL: of all objects under it, from its listing)."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def size_in_ram_bytes(self) -> int:
        """Bytes the committed rows take uncompressed in RAM (what lazy=False holds)."""
        return int(sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape, dtype=np.int64)) for v in self._data.values()))

    def __repr__(self) -> str:
        return (
            f"ZarrDataset({str(self.path)!r}, episodes={self.n_episodes}, transitions={self.n_transitions}, "
            f"lazy={self.lazy})"
        )
