"""Open a zarr dataset store and check its structure against the format (version 1).

:func:`open_store_layout` checks everything that can be checked from metadata plus ``meta/episode_ends``:
format name and version, attributes, presence, dtype and shape of every array, and that every array holds at least
the committed rows. Values (NaN / inf) are checked by :func:`assert_finite`, which the reader calls on the rows it
loads (eager) or chunk by chunk (lazy). Every failure raises :class:`UserError` naming the store and the array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calql_robot.datasets.spec import FORMAT_NAME, KIND_LOW_DIM, STEP_ARRAYS, SUPPORTED_VERSIONS, validate_obs_spec
from calql_robot.errors import UserError


@dataclass
class StoreLayout:
    """An opened, structurally valid store.

    ``episode_ends`` (E,) int64 holds only committed episodes; ``n_transitions`` = episode_ends[-1] (0 if E = 0).
    ``arrays`` maps in-store names (``data/obs/<key>``, ``data/final_obs/<key>``, ``data/action``, ...) to zarr arrays,
    which may hold extra rows past the committed ones (an interrupted write).
    """

    path: Path
    group: zarr.Group
    attrs: dict[str, Any]
    obs_spec: dict[str, dict[str, Any]]
    episode_ends: np.ndarray
    arrays: dict[str, zarr.Array]
    action_low: np.ndarray
    action_high: np.ndarray

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


def open_group_checked(path: Path, mode: str) -> zarr.Group:
    """Open the zarr group at ``path`` (mode "r" or "r+"), or raise UserError if there is none."""
    if not path.exists():
        raise UserError(f"dataset {path}: no such file or directory; expected a zarr dataset store (a directory)")
    if not path.is_dir() or not (path / "zarr.json").is_file():
        raise UserError(f"dataset {path}: not a zarr v3 store (expected a directory with zarr.json at its root)")
    try:
        group = zarr.open_group(str(path), mode=mode)
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
    reward = attrs["reward"]
    if not isinstance(reward, dict) or not {"success", "failure"} <= set(reward):
        raise UserError(f"dataset {path}: attribute 'reward' must be {{'success': float, 'failure': float}}")
    return obs_spec, low, high


def _get_array(path: Path, group: zarr.Group, name: str) -> zarr.Array:
    try:
        node = group[name]
    except KeyError:
        raise UserError(f"dataset {path}: array '{name}' is missing") from None
    if not isinstance(node, zarr.Array):
        raise UserError(f"dataset {path}: '{name}' is a group, expected an array")
    return node


def _expect(path: Path, name: str, arr: zarr.Array, dtype: str, trailing: tuple[int, ...]) -> None:
    if str(arr.dtype) != dtype:
        raise UserError(f"dataset {path}: array '{name}' has dtype {arr.dtype}, expected {dtype}")
    if tuple(arr.shape[1:]) != trailing:
        expected = ("rows", *trailing)
        raise UserError(f"dataset {path}: array '{name}' has shape {tuple(arr.shape)}, expected {expected}")


def _committed_episode_ends(path: Path, ends_arr: zarr.Array) -> np.ndarray:
    """Read meta/episode_ends, drop a trailing unwritten entry (value 0: an interrupted commit) and check order."""
    ends = np.asarray(ends_arr[:], dtype=np.int64)
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


def open_store_layout(path: str | Path, mode: str = "r") -> StoreLayout:
    """Open and structurally validate the store at ``path``; see the module docstring for what is checked."""
    path = Path(path).expanduser()
    group = open_group_checked(path, mode)
    attrs = dict(group.attrs)
    obs_spec, low, high = _check_attrs(path, attrs)
    # episode_ends first: a writer appending concurrently grows the data arrays before it commits, so arrays opened
    # after this read always hold at least the rows committed here
    ends_arr = _get_array(path, group, "meta/episode_ends")
    _expect(path, "meta/episode_ends", ends_arr, "int64", ())
    episode_ends = _committed_episode_ends(path, ends_arr)
    arrays: dict[str, zarr.Array] = {}
    for key, entry in obs_spec.items():
        for name in (obs_array_name(key), final_obs_array_name(key)):
            arrays[name] = _get_array(path, group, name)
            _expect(path, name, arrays[name], entry["dtype"], tuple(entry["shape"]))
    for short, dtype in STEP_ARRAYS.items():
        name = f"data/{short}"
        arrays[name] = _get_array(path, group, name)
        _expect(path, name, arrays[name], dtype, (len(low),) if short == "action" else ())
    n_rows = int(episode_ends[-1]) if len(episode_ends) else 0
    for name, arr in arrays.items():
        needed = len(episode_ends) if name.startswith("data/final_obs/") else n_rows
        what = "episodes in meta/episode_ends" if name.startswith("data/final_obs/") else "meta/episode_ends[-1]"
        if arr.shape[0] < needed:
            raise UserError(
                f"dataset {path}: array '{name}' has {arr.shape[0]} rows but {what} needs {needed}; "
                "the store is truncated or corrupt"
            )
    arrays["meta/episode_ends"] = ends_arr
    return StoreLayout(path, group, attrs, obs_spec, episode_ends, arrays, low, high)


def finite_checked_names(layout: StoreLayout) -> list[str]:
    """Names of the arrays whose values must be finite: action, reward and low-dim observations (+ final obs)."""
    names = ["data/action", "data/reward"]
    for key, entry in layout.obs_spec.items():
        if entry["kind"] == KIND_LOW_DIM:
            names += [obs_array_name(key), final_obs_array_name(key)]
    return names


def assert_finite(path: Path, name: str, values: np.ndarray, row_offset: int = 0) -> None:
    """Raise UserError naming the store, array and first bad row if ``values`` (rows, ...) holds NaN or inf."""
    finite = np.isfinite(values)
    if finite.all():
        return
    bad_rows = ~finite.reshape(len(values), -1).all(axis=1)
    row = int(np.argmax(bad_rows)) + row_offset
    raise UserError(f"dataset {path}: array '{name}' holds NaN or inf (first at row {row}); expected finite values")
