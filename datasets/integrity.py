"""Chunk integrity of a dataset store: which chunk files must exist, their sizes, and digests of their rows.

:class:`~calql_robot.datasets.writer.DatasetWriter` gives every array an attribute ``integrity``: one entry per
time-chunk, ``[rows, nbytes, digest]`` = how many leading rows of the chunk the digest covers, the size of the chunk
file when it was last written, and the BLAKE2b-128 hex digest of those rows' values (C order, the array's dtype).
The root attribute ``integrity`` names the algorithm; a store that has it must have a record on every array.

Digests cover the decoded values of a prefix of rows, not the compressed bytes: an append that rewrites the last
(partial) chunk, or a crash in the middle of one, leaves the rows already recorded and their digest unchanged.

Checks, cheapest first (all raise :class:`UserError` naming the store, the array and the chunk file):

- :func:`check_declared_rows`: an array's declared length must fit the chunk files on disk (one directory listing),
  so an edited ``zarr.json`` shape cannot make a reader allocate or scan for ever;
- :func:`check_presence`: every chunk holding committed rows exists (``stat``), and a full chunk has the size
  recorded for it (a truncated or replaced file); stores written before the records (no ``integrity``
  attribute) get the presence check only, and not for reward / terminal / truncated, whose all-zero chunks older
  writers did not store;
- :func:`verify_array`: decode every chunk and compare its digest (``inspect_dataset verify=true``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calql_robot.errors import UserError

ALGORITHM = "blake2b-128"
ATTR = "integrity"
#: arrays whose all-fill-value chunks writers before the integrity records did not store (zarr's default)
FILL_OPTIONAL = ("data/reward", "data/terminal", "data/truncated")
#: time-chunks an array may declare past its last chunk file (an episode resized but not yet written by a crash)
MAX_UNWRITTEN_CHUNKS = 4096
_HEX = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ChunkRecord:
    """What was written into one time-chunk: ``rows`` leading rows with ``digest``, file of ``nbytes`` bytes."""

    rows: int
    nbytes: int
    digest: str

    def to_json(self) -> list[Any]:
        return [self.rows, self.nbytes, self.digest]


def new_hasher() -> Any:
    return hashlib.blake2b(digest_size=16)


def row_bytes(values: np.ndarray, dtype: Any) -> bytes:
    """The bytes a digest covers: ``values`` as ``dtype`` in C order."""
    return np.ascontiguousarray(np.asarray(values), dtype=np.dtype(dtype)).tobytes()


def chunk_len(arr: zarr.Array) -> int:
    return int(arr.chunks[0])


def n_chunks(rows: int, length: int) -> int:
    """Time-chunks of ``length`` rows needed to hold ``rows`` rows."""
    return -(-int(rows) // int(length))


def chunk_key(arr: zarr.Array, index: int, rest: tuple[int, ...] | None = None) -> str:
    """The store key of time-chunk ``index`` (e.g. ``c/3/0/0/0``; ``rest``: its position along the other axes)."""
    return arr.metadata.encode_chunk_key((int(index), *(rest if rest is not None else (0,) * (arr.ndim - 1))))


def time_only(arr: zarr.Array) -> bool:
    """Whether a chunk holds whole rows (how DatasetWriter chunks; other tools may split rows too)."""
    return tuple(arr.chunks[1:]) == tuple(arr.shape[1:])


def _row_parts(arr: zarr.Array) -> list[tuple[int, ...]]:
    """The chunk positions along the non-time axes (one, (0, ..., 0), for time-only chunking)."""
    counts = [max(n_chunks(size, chunk), 1) for size, chunk in zip(arr.shape[1:], arr.chunks[1:], strict=True)]
    return [tuple(int(i) for i in pos) for pos in np.ndindex(*counts)] if counts else [()]


def chunk_path(store: Path, arr: zarr.Array, index: int) -> Path:
    return store / arr.path / chunk_key(arr, index)


def chunk_label(arr: zarr.Array, index: int, rest: tuple[int, ...] | None = None) -> str:
    """The chunk file relative to the store root, for messages."""
    return f"{arr.path}/{chunk_key(arr, index, rest)}"


def _rows_text(arr: zarr.Array, index: int) -> str:
    length = chunk_len(arr)
    last = min((index + 1) * length, max(int(arr.shape[0]), index * length + 1)) - 1
    return f"rows {index * length}..{last}"


def chunk_error(store: Path, name: str, arr: zarr.Array, index: int, err: BaseException) -> UserError:
    """The UserError for a chunk that cannot be decoded."""
    return UserError(
        f"dataset {store}: chunk file {chunk_label(arr, index)} of array '{name}' ({_rows_text(arr, index)}) cannot "
        f"be decoded ({type(err).__name__}: {err}); the file is truncated or corrupt. Restore the store from a "
        "backup or write it again from its source (convert / collect)"
    )


def read_rows(store: Path, name: str, arr: zarr.Array, start: int, stop: int) -> np.ndarray:
    """``arr[start:stop]`` as numpy; a chunk that cannot be decoded is a UserError naming the array and the file."""
    try:
        return np.asarray(arr[start:stop])
    except MemoryError:
        raise
    except Exception as err:  # blosc / zstd raise RuntimeError, a wrong chunk size ValueError, ...
        length = chunk_len(arr)
        for index in range(start // length, n_chunks(stop, length)):
            try:
                arr[max(start, index * length) : min(stop, (index + 1) * length)]
            except MemoryError:
                raise
            except Exception as chunk_err:
                raise chunk_error(store, name, arr, index, chunk_err) from None
        raise UserError(
            f"dataset {store}: array '{name}' rows {start}..{stop - 1} cannot be read ({type(err).__name__}: {err})"
        ) from None


def load_records(store: Path, name: str, arr: zarr.Array) -> list[ChunkRecord] | None:
    """The array's integrity record, or None for an array written before the records existed."""
    raw = arr.attrs.get(ATTR)
    if raw is None:
        return None
    length = chunk_len(arr)
    problem = f"dataset {store}: attribute '{ATTR}' of array '{name}' ({arr.path}/zarr.json)"
    if not time_only(arr):
        raise UserError(f"{problem} describes chunks of whole rows, but the array is chunked {tuple(arr.chunks)}; "
                        "it was rechunked without its record (drop the attribute to read it unverified)")
    if not isinstance(raw, list):
        raise UserError(f"{problem} must be a list of [rows, nbytes, digest] per chunk, got {type(raw).__name__}")
    records = []
    for index, entry in enumerate(raw):
        ok = (isinstance(entry, list) and len(entry) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
              for v in entry[:2]) and isinstance(entry[2], str) and _HEX.match(entry[2]) is not None)
        if not ok or not 1 <= entry[0] <= length or entry[1] < 0:
            raise UserError(f"{problem}: entry {index} is {entry!r}; expected [rows in 1..{length}, nbytes >= 0, "
                            "32 hex digits]; the metadata is corrupt")
        if index < len(raw) - 1 and entry[0] != length:
            raise UserError(f"{problem}: entry {index} covers {entry[0]} rows, but every chunk before the last one "
                            f"must be full ({length} rows); the metadata is corrupt")
        records.append(ChunkRecord(int(entry[0]), int(entry[1]), str(entry[2])))
    return records


def covered_rows(records: list[ChunkRecord]) -> int:
    return sum(r.rows for r in records)


def check_declared_rows(store: Path, name: str, arr: zarr.Array) -> None:
    """Refuse a declared length that the array's chunk files cannot hold (an edited or corrupt ``zarr.json``)."""
    key = chunk_key(arr, 0)
    if "/" not in key:
        return  # not the default "c/<i>/..." layout: nothing cheap to list
    top = store / arr.path / key.split("/")[0]
    present = [int(entry) for entry in _listdir(top) if entry.isdigit()]
    last = max(present, default=-1)
    declared = n_chunks(arr.shape[0], chunk_len(arr))
    if declared > last + 1 + MAX_UNWRITTEN_CHUNKS:
        raise UserError(
            f"dataset {store}: array '{name}' declares {arr.shape[0]} rows ({declared} chunks) in "
            f"{arr.path}/zarr.json, but its chunk files hold at most {(last + 1) * chunk_len(arr)} rows; the "
            "metadata is corrupt"
        )


def _listdir(path: Path) -> list[str]:
    try:
        return [entry.name for entry in path.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def check_presence(store: Path, name: str, arr: zarr.Array, n_rows: int, records: list[ChunkRecord] | None) -> None:
    """Every chunk file holding rows ``[0, n_rows)`` exists; a fully written chunk has its recorded size."""
    length = chunk_len(arr)
    required = records is not None or name not in FILL_OPTIONAL
    parts = _row_parts(arr)
    for index in range(n_chunks(n_rows, length)):
        for rest in parts:
            try:
                size = (store / arr.path / chunk_key(arr, index, rest)).stat().st_size
            except (FileNotFoundError, NotADirectoryError):
                if not required:
                    continue
                raise UserError(
                    f"dataset {store}: chunk file {chunk_label(arr, index, rest)} of array '{name}' is missing, so "
                    f"{_rows_text(arr, index)} would read as zeros; the store is incomplete. Restore the store from "
                    "a backup or write it again from its source (convert / collect)"
                ) from None
        if records is not None and index < len(records) and records[index].rows == length \
                and size != records[index].nbytes:
            raise UserError(
                f"dataset {store}: chunk file {chunk_label(arr, index)} of array '{name}' has {size} bytes, but "
                f"{records[index].nbytes} were written; the file is truncated or was replaced"
            )


def check_covered(store: Path, name: str, records: list[ChunkRecord], n_rows: int, slack: int = 0) -> None:
    """The record must cover the committed rows (``slack``: rows it may lag, 1 for ``meta/episode_ends``)."""
    covered = covered_rows(records)
    if covered + slack < n_rows:
        raise UserError(
            f"dataset {store}: the integrity record of array '{name}' covers {covered} rows, but {n_rows} are "
            "committed; the store was changed by a program that does not keep the records, or its metadata is corrupt"
        )


def verify_array(store: Path, name: str, arr: zarr.Array, n_rows: int,
                 records: list[ChunkRecord] | None) -> tuple[int, int]:
    """Decode every chunk holding rows ``[0, n_rows)`` and compare its digest; returns (verified, decoded only)."""
    length = chunk_len(arr)
    verified = decoded = 0
    for index in range(n_chunks(n_rows, length)):
        start = index * length
        if records is None or index >= len(records):
            if records is None and name in FILL_OPTIONAL and not chunk_path(store, arr, index).exists():
                continue  # an all-zero chunk an older writer did not store
            read_rows(store, name, arr, start, min(n_rows, start + length))
            decoded += 1
            continue
        record = records[index]
        if start + record.rows > arr.shape[0]:
            raise UserError(f"dataset {store}: the integrity record of array '{name}' covers rows up to "
                            f"{start + record.rows}, past its {arr.shape[0]} rows; the metadata is corrupt")
        values = read_rows(store, name, arr, start, start + record.rows)
        hasher = new_hasher()
        hasher.update(row_bytes(values, arr.dtype))
        if hasher.hexdigest() != record.digest:
            raise UserError(
                f"dataset {store}: chunk file {chunk_label(arr, index)} of array '{name}' ({_rows_text(arr, index)}) "
                "holds values that differ from those written (digest mismatch); the file is corrupt"
            )
        verified += 1
    return verified, decoded


class ChunkDigests:
    """Keeps one array's integrity record current while :class:`DatasetWriter` appends rows to it.

    ``records`` None (an array written before the records) disables it. ``n_rows`` are the rows kept: the record
    is cut to them, and the digest of the last, partial chunk is rebuilt from disk (after checking the chunk
    against its record) so that appends continue it.
    """

    def __init__(self, store: Path, name: str, arr: zarr.Array, records: list[ChunkRecord] | None,
                 n_rows: int) -> None:
        self._store, self._name, self._arr = store, name, arr
        self.enabled = records is not None
        self._length = chunk_len(arr)
        self._records = list(records or [])[: n_chunks(n_rows, self._length)]
        self._rows = int(n_rows)
        self._hasher: Any = None
        if self.enabled:
            self._resume_tail()

    def _resume_tail(self) -> None:
        index, tail = divmod(self._rows, self._length)
        if tail == 0:
            return
        start = index * self._length
        record = self._records[index] if index < len(self._records) else None
        if record is not None and record.rows >= tail and start + record.rows <= self._arr.shape[0]:
            values = read_rows(self._store, self._name, self._arr, start, start + record.rows)
            check = new_hasher()
            check.update(row_bytes(values, self._arr.dtype))
            if check.hexdigest() != record.digest:
                raise UserError(
                    f"dataset {self._store}: chunk file {chunk_label(self._arr, index)} of array '{self._name}' holds "
                    "values that differ from those written (digest mismatch); the file is corrupt, so nothing is "
                    "appended to the store"
                )
            values = values[:tail]
        else:  # the record lags the committed rows (meta/episode_ends right after its commit)
            values = read_rows(self._store, self._name, self._arr, start, start + tail)
        self._hasher = new_hasher()
        self._hasher.update(row_bytes(values, self._arr.dtype))
        self._set(index, tail)

    def _set(self, index: int, rows: int) -> None:
        try:
            nbytes = chunk_path(self._store, self._arr, index).stat().st_size
        except FileNotFoundError:
            nbytes = 0
        record = ChunkRecord(rows, nbytes, self._hasher.hexdigest())
        if index < len(self._records):
            self._records[index] = record
        else:
            self._records.append(record)

    def append(self, start: int, values: np.ndarray) -> None:
        """Account for ``values`` (rows, ...) just written at rows ``[start, start + len(values))``."""
        if not self.enabled:
            return
        if start != self._rows:
            raise RuntimeError(f"{self._name}: rows appended at {start}, but the record ends at {self._rows}")
        data = np.ascontiguousarray(np.asarray(values), dtype=self._arr.dtype)
        done = 0
        while done < len(data):
            index, offset = divmod(self._rows, self._length)
            take = min(self._length - offset, len(data) - done)
            if offset == 0:
                self._hasher = new_hasher()
            self._hasher.update(data[done : done + take].tobytes())
            self._rows += take
            done += take
            self._set(index, offset + take)

    def save(self) -> None:
        """Write the record into the array's ``zarr.json``."""
        if self.enabled:
            self._arr.update_attributes({ATTR: [r.to_json() for r in self._records]})
