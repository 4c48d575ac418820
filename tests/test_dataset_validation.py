"""Validation: bad episodes are refused by the writer; broken stores are refused by the reader, naming the array."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from calql_robot.datasets.format import DatasetWriter, ZarrDataset
from calql_robot.errors import UserError

SPEC = {
    "state": {"shape": [3], "dtype": "float32", "kind": "low_dim"},
    "cam_rgb": {"shape": [4, 4, 3], "dtype": "uint8", "kind": "rgb"},
}


def episode(n: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observations": {
            "state": rng.normal(size=(n + 1, 3)).astype(np.float32),
            "cam_rgb": rng.integers(0, 256, (n + 1, 4, 4, 3), dtype=np.uint8),
        },
        "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": np.zeros(n, np.float32),
        "terminals": np.zeros(n, bool),
        "truncations": np.r_[np.zeros(n - 1, bool), True],
    }


def new_writer(path: Path) -> DatasetWriter:
    return DatasetWriter.create(path, SPEC, [-1, -1], [1, 1], task="t", control_freq=10.0, reward_success=1.0,
                                reward_failure=0.0, source={"kind": "test"})


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    path = tmp_path / "d.zarr"
    with new_writer(path) as w:
        w.add_episode(**episode(5, 0))
        w.add_episode(**episode(7, 1))
    return path


# ------------------------------------------------------------------------------------------------------ writer side
def array_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    members = zarr.open_group(str(path), mode="r").members(max_depth=None)
    shapes = {name: node.shape for name, node in members if isinstance(node, zarr.Array)}
    assert "data/obs/cam_rgb" in shapes and "meta/episode_ends" in shapes
    return shapes


def _bad(field: str, value) -> dict:
    ep = episode()
    if field.startswith("obs:"):
        ep["observations"][field[4:]] = value
    else:
        ep[field] = value
    return ep


WRITER_CASES = [
    (lambda: _bad("obs:state", np.zeros((5, 3))), r"observations\['state'\] has shape \(5, 3\)"),
    (lambda: _bad("obs:cam_rgb", np.zeros((6, 4, 4, 3), np.float32)), r"observations\['cam_rgb'\].*uint8"),
    (lambda: _bad("obs:cam_rgb", np.zeros((6, 4, 5, 3), np.uint8)), r"observations\['cam_rgb'\] has shape"),
    (lambda: _bad("obs:state", np.full((6, 3), np.nan)), r"observations\['state'\] hold NaN"),
    (lambda: _bad("actions", np.zeros((5, 3))), r"actions has shape \(5, 3\), expected \(N, 2\)"),
    (lambda: _bad("actions", np.full((5, 2), np.inf)), "actions hold NaN or inf"),
    (lambda: _bad("rewards", np.r_[np.zeros(4), np.nan]), "rewards hold NaN"),
    (lambda: _bad("rewards", np.zeros(4)), r"rewards has shape \(4,\)"),
    (lambda: _bad("terminals", np.full(5, 2)), "terminals must be booleans"),
    (lambda: _bad("truncations", np.zeros(6, bool)), r"truncations has shape \(6,\)"),
    (lambda: {**episode(), "observations": {"state": episode()["observations"]["state"]}}, "exactly the keys"),
    (lambda: {**episode(), "actions": np.zeros((0, 2)), "rewards": np.zeros(0), "terminals": np.zeros(0, bool),
              "truncations": np.zeros(0, bool)}, "N >= 1"),
]


@pytest.mark.parametrize("make_bad, message", WRITER_CASES)
def test_writer_refuses_bad_episode_and_writes_nothing(store: Path, make_bad: Callable, message: str) -> None:
    before = array_shapes(store)
    with DatasetWriter.open(store) as writer, pytest.raises(UserError, match=message):
        writer.add_episode(**make_bad())
    ds = ZarrDataset(store)
    assert ds.n_episodes == 2 and ds.n_transitions == 12
    assert array_shapes(store) == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"obs_spec": {"cam": {"shape": [4, 4, 3], "dtype": "float32", "kind": "rgb"}}}, "rgb key 'cam'"),
        ({"obs_spec": {"s": {"shape": [3], "dtype": "float32", "kind": "depth"}}}, "kind must be one of"),
        ({"obs_spec": {"a/b": {"shape": [3], "dtype": "float32", "kind": "low_dim"}}}, "observation key"),
        ({"action_low": [1, -1]}, "action_low must be below"),
        ({"action_high": [1]}, "equally long"),
        ({"reward_success": 0.0}, "reward_success"),
        ({"control_freq": 0.0}, "control_freq"),
        ({"source": {"x": object()}}, "JSON"),
    ],
)
def test_create_refuses_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = dict(obs_spec=SPEC, action_low=[-1, -1], action_high=[1, 1], task="t", control_freq=10.0,
                reward_success=1.0, reward_failure=0.0, source={})
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        DatasetWriter.create(tmp_path / "x.zarr", **args)
    assert not (tmp_path / "x.zarr").exists()


# ------------------------------------------------------------------------------------------------------ reader side
def set_attr(path: Path, name: str, value) -> None:
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"][name] = value
    meta_path.write_text(json.dumps(meta))


def replace_array(path: Path, name: str, values: np.ndarray) -> None:
    group = zarr.open_group(str(path), mode="r+")
    del group[name]
    group.create_array(name, data=values, chunks=(max(1, len(values)), *values.shape[1:]))


def truncate(path: Path, name: str, rows: int) -> None:
    arr = zarr.open_group(str(path), mode="r+")[name]
    arr.resize((rows, *arr.shape[1:]))


def poke(path: Path, name: str, row: int, value) -> None:
    arr = zarr.open_group(str(path), mode="r+")[name]
    arr[row] = value


READER_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("wrong format", lambda p: set_attr(p, "format", "other.format"), "attribute 'format'"),
    ("future version", lambda p: set_attr(p, "format_version", 2), "format_version"),
    ("missing attr", lambda p: set_attr(p, "obs_spec", "nonsense"), "obs_spec"),
    ("missing array", lambda p: shutil.rmtree(p / "data" / "action"), "'data/action' is missing"),
    ("missing obs array", lambda p: shutil.rmtree(p / "data" / "obs" / "cam_rgb"), "'data/obs/cam_rgb' is missing"),
    ("short rows", lambda p: truncate(p, "data/reward", 10), "'data/reward' has 10 rows"),
    ("short obs", lambda p: truncate(p, "data/obs/state", 3), "'data/obs/state' has 3 rows"),
    ("short final obs", lambda p: truncate(p, "data/final_obs/cam_rgb", 1), "'data/final_obs/cam_rgb' has 1 rows"),
    ("non-increasing ends", lambda p: poke(p, "meta/episode_ends", 1, 5), "strictly increasing"),
    ("negative ends", lambda p: poke(p, "meta/episode_ends", 0, -3), "meta/episode_ends"),
    ("wrong dtype", lambda p: replace_array(p, "data/action", np.zeros((12, 2))), "'data/action' has dtype float64"),
    ("wrong shape", lambda p: replace_array(p, "data/obs/cam_rgb", np.zeros((12, 4, 4, 1), np.uint8)),
     "'data/obs/cam_rgb' has shape"),
    ("terminal not bool", lambda p: replace_array(p, "data/terminal", np.zeros(12, np.int8)), "'data/terminal'"),
    ("nan action", lambda p: poke(p, "data/action", 7, [np.nan, 0]), "'data/action' holds NaN or inf .*row 7"),
    ("inf reward", lambda p: poke(p, "data/reward", 11, np.inf), "'data/reward' holds NaN or inf .*row 11"),
    ("nan state", lambda p: poke(p, "data/obs/state", 2, np.nan), "'data/obs/state' holds NaN"),
    ("nan final state", lambda p: poke(p, "data/final_obs/state", 1, np.nan), "'data/final_obs/state' holds NaN"),
]


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("case, corrupt, message", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_reader_refuses_broken_store(store: Path, case: str, corrupt: Callable, message: str, lazy: bool) -> None:
    ZarrDataset(store, lazy=lazy)  # valid before
    corrupt(store)
    with pytest.raises(UserError, match=message) as info:
        ZarrDataset(store, lazy=lazy)
    assert str(store) in str(info.value)
    with pytest.raises(UserError):  # a writer refuses it too (structure) or a reader after it (values)
        DatasetWriter.open(store).close()
        ZarrDataset(store, lazy=lazy)


def test_missing_path_and_non_store(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        ZarrDataset(tmp_path / "nothing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a zarr v3 store"):
        ZarrDataset(tmp_path / "plain")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(UserError, match="not a zarr v3 store"):
        ZarrDataset(tmp_path / "file.zarr")
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be opened"):
        ZarrDataset(broken)


def test_extra_rows_past_last_end_are_ignored(store: Path) -> None:
    group = zarr.open_group(str(store), mode="r+")
    rewards = group["data/reward"]
    rewards.resize((20,))
    rewards[12:] = np.nan  # garbage of an interrupted write: not committed, so not checked
    ds = ZarrDataset(store)
    assert ds.n_transitions == 12 and len(ds.arrays()["reward"]) == 12
