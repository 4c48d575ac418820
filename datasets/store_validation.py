"""Open a zarr dataset store and check its structure against the format (version 1).

:func:`open_store_layout` checks everything that can be checked from metadata plus ``meta/episode_ends``:
format name and version, attributes, presence, dtype and shape of every array, that every array holds at least
the committed rows, and the cheap integrity checks of :mod:`calql_robot.datasets.integrity` (declared lengths fit
the chunk files, every chunk file of a committed row exists, full chunks have their recorded size). Values (NaN /
inf, actions outside the bounds) are checked by :func:`assert_finite` and :func:`assert_within_bounds`, which the
reader calls on the rows it loads (eager) or chunk by chunk (lazy); :func:`verify_layout` decodes every chunk and
compares its digest. Every failure raises :class:`UserError` naming the store and the array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calql_robot.datasets import integrity
from calql_robot.datasets.action_scaling import ActionScaling
from calql_robot.datasets.integrity import ChunkRecord
from calql_robot.datasets.remote_store import CountingStore, RemotePath, is_url, local_path_text, open_remote
from calql_robot.datasets.spec import (
    FORMAT_NAME,
    KIND_LOW_DIM,
    OPTIONAL_STEP_ARRAYS,
    STEP_ARRAYS,
    SUPPORTED_VERSIONS,
    validate_obs_spec,
)
from calql_robot.errors import UserError

#: how far an action may lie outside the store's bounds (rounding of float32 actions): this fraction of the range,
#: plus ACTION_BOUND_ABS_TOLERANCE
ACTION_BOUND_REL_TOLERANCE = 1e-4
ACTION_BOUND_ABS_TOLERANCE = 1e-6


@dataclass
class StoreLayout:
    """An opened, structurally valid store.

    ``episode_ends`` (E,) int64 holds only committed episodes; ``n_transitions`` = episode_ends[-1] (0 if E = 0).
    ``arrays`` maps in-store names (``data/obs/<key>``, ``data/final_obs/<key>``, ``data/action``, ...) to zarr arrays,
    which may hold extra rows past the committed ones (an interrupted write).
    """

    path: Path | RemotePath  # str() of a RemotePath is the store's URL
    group: zarr.Group
    attrs: dict[str, Any]
    obs_spec: dict[str, dict[str, Any]]
    episode_ends: np.ndarray
    arrays: dict[str, zarr.Array]
    action_low: np.ndarray
    action_high: np.ndarray
    #: per array name: its integrity record, or None for an array written before the records existed
    records: dict[str, list[ChunkRecord] | None]
    #: the zarr store of a store at a URL (its requests / bytes read), None for a local store
    remote: CountingStore | None = None

    @property
    def n_episodes(self) -> int:
        return int(len(self.episode_ends))

    @property
    def n_transitions(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0


def obs_array_name(key: str) -> str:
    return f"data/obs/{key}"


def final_obs_array_name(key: str) -> str:
    return f"data/final_obs/{key}"


def open_group_checked(path: Path | RemotePath, mode: str, store: CountingStore | None = None) -> zarr.Group:
    """Open the zarr group at ``path`` (mode "r" or "r+"), or raise UserError if there is none; ``store``: the zarr
    store of a :class:`RemotePath`."""
    if not path.exists():
        raise UserError(f"dataset {path}: no such file or directory; expected a zarr dataset store (a directory)")
    if not path.is_dir() or not (path / "zarr.json").is_file():
        raise UserError(f"dataset {path}: not a zarr v3 store (expected a directory with zarr.json at its root)")
    try:
        # a store at a URL: zarr_format=3 saves the requests probing for zarr v2 metadata (zarr.json was found)
        group = (zarr.open_group(store, mode=mode, zarr_format=3) if store is not None
                 else zarr.open_group(str(path), mode=mode))
        dict(group.attrs)
    except Exception as err:  # zarr raises several types for corrupt metadata
        raise UserError(f"dataset {path}: cannot be opened as a zarr group ({type(err).__name__}: {err})") from None
    return group


def _check_attrs(path: Path, attrs: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], np.ndarray, np.ndarray]:
    fmt = attrs.get("format")
    if fmt != FORMAT_NAME:
        raise UserError(f"dataset {path}: attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
    version = attrs.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise UserError(
            f"dataset {path}: attribute 'format_version' is {version!r}; this calql_robot reads versions "
            f"{list(SUPPORTED_VERSIONS)} (a newer store needs a newer calql_robot)"
        )
    for name in ("obs_spec", "action_low", "action_high", "reward", "task", "control_freq", "source"):
        if name not in attrs:
            raise UserError(f"dataset {path}: root attribute '{name}' is missing")
    obs_spec = validate_obs_spec(attrs["obs_spec"], f"dataset {path}: attribute obs_spec")
    try:
        low = np.asarray(attrs["action_low"], dtype=np.float32)
        high = np.asarray(attrs["action_high"], dtype=np.float32)
    except (TypeError, ValueError):
        raise UserError(f"dataset {path}: attributes action_low / action_high must be lists of numbers") from None
    if low.ndim != 1 or low.shape != high.shape or low.size == 0 or not (low < high).all():
        raise UserError(
            f"dataset {path}: attributes action_low {low.tolist()} / action_high {high.tolist()} must be equally "
            "long non-empty lists with low < high"
        )
    if not np.isfinite(low).all() or not np.isfinite(high).all():
        raise UserError(f"dataset {path}: attributes action_low {low.tolist()} / action_high {high.tolist()} must be "
                        "finite")
    reward = attrs["reward"]
    if not isinstance(reward, dict) or not {"success", "failure"} <= set(reward) \
            or not all(_is_number(reward[k]) for k in ("success", "failure")):
        raise UserError(f"dataset {path}: attribute 'reward' must be {{'success': number, 'failure': number}}, got "
                        f"{reward!r}")
    if not float(reward["success"]) > float(reward["failure"]):
        raise UserError(
            f"dataset {path}: attribute 'reward' has success {reward['success']} <= failure {reward['failure']}; "
            "success must be the larger raw reward (an episode succeeded if a step reaches it)"
        )
    if not _is_number(attrs["control_freq"]) or not float(attrs["control_freq"]) > 0:
        raise UserError(f"dataset {path}: attribute 'control_freq' must be a positive number (Hz), got "
                        f"{attrs['control_freq']!r}")
    ActionScaling.from_store_attrs(attrs, f"dataset {path}")  # the optional extension: well-formed if present
    if "integrity" in attrs and attrs["integrity"] != integrity.ALGORITHM:
        raise UserError(f"dataset {path}: attribute 'integrity' is {attrs['integrity']!r}; this calql_robot "
                        f"checks {integrity.ALGORITHM!r} records")
    return obs_spec, low, high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _get_array(path: Path, group: zarr.Group, name: str) -> zarr.Array:
    try:
        with zarr.config.set({"array.write_empty_chunks": True}):  # a missing chunk then always means a lost one
            node = group[name]
    except KeyError:
        raise UserError(f"dataset {path}: array '{name}' is missing") from None
    except Exception as err:  # a zarr.json that is not JSON, or not valid array metadata
        raise UserError(f"dataset {path}: the metadata {name}/zarr.json of array '{name}' cannot be read "
                        f"({type(err).__name__}: {err}); expected zarr v3 array metadata") from None
    if not isinstance(node, zarr.Array):
        raise UserError(f"dataset {path}: '{name}' is a group, expected an array")
    try:  # zarr reads some nonsense (a list as fill_value, attributes that are a list) it cannot write back
        node.metadata.to_dict()
        if not isinstance(node.metadata.attributes, dict):
            raise TypeError(f"attributes must be a JSON object, got {type(node.metadata.attributes).__name__}")
    except Exception as err:
        raise UserError(f"dataset {path}: the metadata {name}/zarr.json of array '{name}' is not valid "
                        f"({type(err).__name__}: {err}); expected zarr v3 array metadata") from None
    return node


def _expect(path: Path, name: str, arr: zarr.Array, dtype: str, trailing: tuple[int, ...]) -> None:
    if str(arr.dtype) != dtype:
        raise UserError(f"dataset {path}: array '{name}' has dtype {arr.dtype}, expected {dtype}")
    if tuple(arr.shape[1:]) != trailing:
        expected = ("rows", *trailing)
        raise UserError(f"dataset {path}: array '{name}' has shape {tuple(arr.shape)}, expected {expected}")
    fill = np.asarray(arr.fill_value)
    if fill.shape != () or fill.item() != 0:
        raise UserError(f"dataset {path}: array '{name}' has fill_value {arr.fill_value!r}, expected 0")


def _committed_episode_ends(path: Path, ends_arr: zarr.Array, records: list[ChunkRecord] | None) -> np.ndarray:
    """Read meta/episode_ends, drop a trailing unwritten entry (value 0: an interrupted commit) and check order.

    Before reading, its declared length is checked against its chunk files and record (an edited shape must not
    make this read allocate or scan for ever), and every chunk but that of a possibly unwritten last entry must exist.
    """
    name = "meta/episode_ends"
    integrity.check_declared_rows(path, name, ends_arr)
    declared = int(ends_arr.shape[0])
    if records is not None and declared > integrity.covered_rows(records) + 1:
        raise UserError(
            f"dataset {path}: array '{name}' declares {declared} entries, but its integrity record covers "
            f"{integrity.covered_rows(records)}; the metadata {name}/zarr.json is corrupt"
        )
    integrity.check_presence(path, name, ends_arr, max(declared - 1, 0), records)
    ends = integrity.read_rows(path, name, ends_arr, 0, declared).astype(np.int64)
    if len(ends) and ends[-1] == 0:
        ends = ends[:-1]
    if len(ends) == 0:
        return ends
    if ends[0] < 1:
        raise UserError(
            f"dataset {path}: array 'meta/episode_ends' starts with {ends[0]}; every episode needs at least 1 step"
        )
    steps = np.diff(ends)
    if (steps <= 0).any():
        bad = int(np.argmax(steps <= 0)) + 1
        raise UserError(
            f"dataset {path}: array 'meta/episode_ends' must be strictly increasing, but entry {bad} is {ends[bad]} "
            f"after {ends[bad - 1]}"
        )
    return ends


def open_store_layout(path: str | Path, mode: str = "r",
                      storage_options: dict[str, Any] | None = None) -> StoreLayout:
    """Open and structurally validate the store at ``path``; see the module docstring for what is checked.

    ``path`` may be a URL (``s3://bucket/store.zarr``, any fsspec URL; ``storage_options`` go to its backend, see
    :mod:`~calql_robot.datasets.remote_store`): such a store is opened read-only, so ``mode="r+"`` is refused.
    """
    remote: CountingStore | None = None
    if is_url(path):
        if mode != "r":
            raise UserError(f"dataset {path}: a store at a URL is read-only here; appending to it or writing it is "
                            "not supported (write a local store, then upload it)")
        path, remote = open_remote(str(path), storage_options)
    else:
        path = Path(local_path_text(path)).expanduser()
    group = open_group_checked(path, mode, remote)
    attrs = dict(group.attrs)
    obs_spec, low, high = _check_attrs(path, attrs)
    with_records = "integrity" in attrs
    records: dict[str, list[ChunkRecord] | None] = {}
    # episode_ends first: a writer appending concurrently grows the data arrays before it commits, so arrays opened
    # after this read always hold at least the rows committed here
    ends_arr = _get_array(path, group, "meta/episode_ends")
    _expect(path, "meta/episode_ends", ends_arr, "int64", ())
    records["meta/episode_ends"] = _records(path, "meta/episode_ends", ends_arr, with_records)
    episode_ends = _committed_episode_ends(path, ends_arr, records["meta/episode_ends"])
    if records["meta/episode_ends"] is not None:
        integrity.check_covered(path, "meta/episode_ends", records["meta/episode_ends"], len(episode_ends), slack=1)
    arrays: dict[str, zarr.Array] = {}
    for key, entry in obs_spec.items():
        for name in (obs_array_name(key), final_obs_array_name(key)):
            arrays[name] = _get_array(path, group, name)
            _expect(path, name, arrays[name], entry["dtype"], tuple(entry["shape"]))
    for short, dtype in STEP_ARRAYS.items():
        name = f"data/{short}"
        arrays[name] = _get_array(path, group, name)
        _expect(path, name, arrays[name], dtype, (len(low),) if short == "action" else ())
    for short, dtype in OPTIONAL_STEP_ARRAYS.items():  # extensions: checked like the others when present
        name = f"data/{short}"
        if name in group:
            arrays[name] = _get_array(path, group, name)
            _expect(path, name, arrays[name], dtype, ())
    n_rows = int(episode_ends[-1]) if len(episode_ends) else 0
    for name, arr in arrays.items():
        needed = len(episode_ends) if name.startswith("data/final_obs/") else n_rows
        what = "episodes in meta/episode_ends" if name.startswith("data/final_obs/") else "meta/episode_ends[-1]"
        if arr.shape[0] < needed:
            raise UserError(
                f"dataset {path}: array '{name}' has {arr.shape[0]} rows but {what} needs {needed}; "
                "the store is truncated or corrupt"
            )
        integrity.check_declared_rows(path, name, arr)
        records[name] = _records(path, name, arr, with_records)
        if records[name] is not None:
            integrity.check_covered(path, name, records[name], needed)
        integrity.check_presence(path, name, arr, needed, records[name])
    arrays["meta/episode_ends"] = ends_arr
    return StoreLayout(path, group, attrs, obs_spec, episode_ends, arrays, low, high, records, remote)


def _records(path: Path, name: str, arr: zarr.Array, with_records: bool) -> list[ChunkRecord] | None:
    found = integrity.load_records(path, name, arr)
    if found is None and with_records:
        raise UserError(f"dataset {path}: array '{name}' has no '{integrity.ATTR}' attribute in {name}/zarr.json, "
                        "though the store records one for every array; the metadata is corrupt")
    if found is not None and arr.shape[0] < integrity.covered_rows(found):
        # the writer grows an array before it records rows and cuts the record before it shrinks the array
        raise UserError(
            f"dataset {path}: array '{name}' declares {arr.shape[0]} rows in {name}/zarr.json, but "
            f"{integrity.covered_rows(found)} were written to it (its integrity record); the metadata is corrupt"
        )
    return found


def committed_rows(layout: StoreLayout, name: str) -> int:
    """Rows of array ``name`` that hold committed data."""
    if name.startswith("data/final_obs/") or name == "meta/episode_ends":
        return layout.n_episodes
    return layout.n_transitions


def verify_layout(layout: StoreLayout) -> dict[str, Any]:
    """Decode every chunk of committed rows and compare its digest with the record written with it.

    Returns ``{"algorithm", "chunks_verified", "chunks_decoded" (no record to compare: older stores),
    "arrays_without_records": [names]}``; a difference raises UserError naming the array and the chunk file.
    """
    verified = decoded = 0
    for name, arr in layout.arrays.items():
        done, only_decoded = integrity.verify_array(layout.path, name, arr, committed_rows(layout, name),
                                                    layout.records.get(name))
        verified, decoded = verified + done, decoded + only_decoded
    return {"algorithm": integrity.ALGORITHM, "chunks_verified": verified, "chunks_decoded": decoded,
            "arrays_without_records": sorted(n for n, r in layout.records.items() if r is None)}


def finite_checked_names(layout: StoreLayout) -> list[str]:
    """Names of the arrays whose values must be finite: action, reward and low-dim observations (+ final obs)."""
    names = ["data/action", "data/reward"]
    for key, entry in layout.obs_spec.items():
        if entry["kind"] == KIND_LOW_DIM:
            names += [obs_array_name(key), final_obs_array_name(key)]
    return names


def assert_within_bounds(layout: StoreLayout, values: np.ndarray, row_offset: int = 0) -> None:
    """Raise UserError naming the first action (rows, A) outside the store's action bounds (plus the tolerance)."""
    low, high = layout.action_low.astype(np.float64), layout.action_high.astype(np.float64)
    slack = ACTION_BOUND_REL_TOLERANCE * (high - low) + ACTION_BOUND_ABS_TOLERANCE
    outside = (values < low - slack) | (values > high + slack)
    if not outside.any():
        return
    row, dim = (int(i) for i in np.argwhere(outside)[0])
    raise UserError(
        f"dataset {layout.path}: array 'data/action' holds {float(values[row, dim]):.6g} at row {row + row_offset}, "
        f"dimension {dim}, outside the store's action bounds [{low[dim]:.6g}, {high[dim]:.6g}] (attributes "
        "action_low / action_high); the data or the bounds are wrong"
    )


def assert_finite(path: Path, name: str, values: np.ndarray, row_offset: int = 0) -> None:
    """Raise UserError naming the store, array and first bad row if ``values`` (rows, ...) holds NaN or inf."""
    finite = np.isfinite(values)
    if finite.all():
        return
    bad_rows = ~finite.reshape(len(values), -1).all(axis=1)
    row = int(np.argmax(bad_rows)) + row_offset
    raise UserError(f"dataset {path}: array '{name}' holds NaN or inf (first at row {row}); expected finite values")
