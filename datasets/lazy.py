"""Lazy array-likes over zarr arrays: whole time-chunks are read on demand and kept in a byte-bounded LRU cache.

This is what lets a dataset larger than RAM be sampled: only the chunks touched by recent batches stay in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calql_robot.datasets.integrity import read_rows

DEFAULT_CACHE_BYTES = 512 * 1024**2


class ChunkCache:
    """LRU cache of decoded chunks, bounded by total bytes (one cache may be shared by several arrays).

    A chunk bigger than the whole budget is returned but not kept.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._chunks)

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None:
                self.misses += 1
                return None
            self._chunks.move_to_end(key)
            self.hits += 1
            return chunk

    def put(self, key: tuple[str, int], chunk: np.ndarray) -> None:
        if chunk.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._chunks.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._chunks[key] = chunk
            self._bytes += chunk.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._chunks.popitem(last=False)
                self._bytes -= evicted.nbytes


class LazyArray:
    """Read-only view of the first ``n_rows`` rows of a zarr array, indexed along time like a numpy array.

    ``a[i]`` (int) returns one row ``(*shape)``; ``a[idx]`` (int array / list) and ``a[start:stop:step]`` return
    ``(len(idx), *shape)`` np.ndarray. Rows are read as whole time-chunks (``chunk_len`` rows, all trailing dims) via
    ``cache``. Rows past ``n_rows`` (an interrupted write) are out of range. A chunk that cannot be decoded raises
    UserError naming the array and the chunk file (``store_path``: the store root, for the message).
    """

    def __init__(self, array: zarr.Array, name: str, n_rows: int, cache: ChunkCache,
                 store_path: Any = None) -> None:
        self._array = array
        self.name = name
        # the store root for messages and chunk paths: a Path, or a RemotePath (a store at a URL) kept as it is
        root = store_path if store_path is not None else getattr(array.store_path.store, "root", ".")
        self._store: Any = Path(root) if isinstance(root, str) else root
        self._n_rows = int(n_rows)
        self._cache = cache
        self.chunk_len = int(array.chunks[0])
        self.shape: tuple[int, ...] = (self._n_rows, *array.shape[1:])
        self.dtype = np.dtype(array.dtype)

    def __len__(self) -> int:
        return self._n_rows

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the rows would take in RAM (uncompressed)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def _chunk(self, chunk_index: int) -> np.ndarray:
        key = (self.name, chunk_index)
        chunk = self._cache.get(key)
        if chunk is None:
            start = chunk_index * self.chunk_len
            stop = min(start + self.chunk_len, self._n_rows)
            chunk = read_rows(self._store, self.name, self._array, start, stop)
            chunk.flags.writeable = False
            self._cache.put(key, chunk)
        return chunk

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """Gather rows (K,) int64 already in [0, n_rows) -> (K, *shape)."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if len(rows) == 0:
            return out
        chunk_ids = rows // self.chunk_len
        order = np.argsort(chunk_ids, kind="stable")
        sorted_ids = chunk_ids[order]
        bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
        for group in np.split(order, bounds):
            chunk_index = int(chunk_ids[group[0]])
            out[group] = self._chunk(chunk_index)[rows[group] - chunk_index * self.chunk_len]
        return out

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -self._n_rows <= i < self._n_rows:
                raise IndexError(f"{self.name}: index {i} out of range for {self._n_rows} rows")
            return self._rows(np.array([i % self._n_rows], dtype=np.int64))[0]
        if isinstance(index, slice):
            return self._rows(np.arange(*index.indices(self._n_rows), dtype=np.int64))
        rows = np.asarray(index)
        if rows.dtype == np.bool_:
            if rows.shape != (self._n_rows,):
                raise IndexError(f"{self.name}: boolean index of shape {rows.shape} for {self._n_rows} rows")
            rows = np.flatnonzero(rows)
        if not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(f"{self.name}: only integer, slice, integer-array or boolean indexing is supported")
        flat = rows.reshape(-1).astype(np.int64)
        if len(flat) and (flat.min() < -self._n_rows or flat.max() >= self._n_rows):
            raise IndexError(f"{self.name}: index out of range for {self._n_rows} rows")
        flat = np.where(flat < 0, flat + self._n_rows, flat)
        return self._rows(flat).reshape(*rows.shape, *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def iter_chunks(self) -> Any:
        """Yield ``(start_row, rows)`` for every time-chunk in order, read directly (bypassing the cache)."""
        for start in range(0, self._n_rows, self.chunk_len):
            stop = min(start + self.chunk_len, self._n_rows)
            yield start, read_rows(self._store, self.name, self._array, start, stop)

    def __repr__(self) -> str:
        return f"LazyArray({self.name!r}, shape={self.shape}, dtype={self.dtype}, chunk_len={self.chunk_len})"
