"""Property-based fuzzing of store validation: random damage to a small real zarr store.

Each example copies a pristine store written by DatasetWriter, damages it (a chunk file deleted, truncated,
replaced by garbage or with one bit flipped; an array's zarr.json edited or replaced by non-JSON; a root attribute
set to a random JSON value) and then opens it the ways the package does: in RAM, lazily with every row read and the
inspect_dataset summary, with verify=true, and for appending. The property: a UserError naming the store (one
paragraph), or the original values; never another exception, a hang, or changed data. Without verify=true a bit
flip in a Blosc (low-dim) chunk may decode to other values (Blosc has no checksum); verify=true must then refuse.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calql_robot.datasets.format import DatasetWriter, ZarrDataset
from calql_robot.errors import UserError
from calql_robot.inspect_dataset import format_summary, summarize

SPEC = {
    "state": {"shape": [3], "dtype": "float32", "kind": "low_dim"},
    "cam_rgb": {"shape": [4, 4, 3], "dtype": "uint8", "kind": "rgb"},
}
SECONDS_PER_OPEN = 20  # a hang fails the example instead of the whole run
#: examples per test: bounded for CI (~10 s each here); CALQL_FUZZ_EXAMPLES=500 for a longer hunt
FUZZ = settings(max_examples=int(os.environ.get("CALQL_FUZZ_EXAMPLES", "25")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


class Hang(Exception):
    """Raised by the alarm when one open takes longer than SECONDS_PER_OPEN."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _episode(n: int, rng: np.random.Generator) -> dict:
    return {
        "observations": {"state": rng.normal(size=(n + 1, 3)).astype(np.float32),
                         "cam_rgb": rng.integers(0, 256, (n + 1, 4, 4, 3), dtype=np.uint8)},
        "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": np.r_[np.zeros(n - 1), 1.0].astype(np.float32),
        "terminals": np.r_[np.zeros(n - 1, bool), True],
        "truncations": np.zeros(n, bool),
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A 3-episode store (2 image chunks, one chunk per low-dim array) and its values."""
    path = tmp_path_factory.mktemp("fuzz") / "pristine.zarr"
    rng = np.random.default_rng(0)
    with DatasetWriter.create(path, SPEC, [-1, -1], [1, 1], task="t", control_freq=10.0, reward_success=1.0,
                              reward_failure=0.0, source={"kind": "fuzz"}) as writer:
        for n in (40, 50, 30):
            writer.add_episode(**_episode(n, rng))
    return path, flatten(ZarrDataset(path))


def flatten(ds: ZarrDataset) -> dict[str, np.ndarray]:
    arrays = ds.arrays()
    out = {f"obs/{k}": np.asarray(v[:]) for k, v in arrays["obs"].items()}
    out.update({f"final_obs/{k}": np.asarray(v[:]) for k, v in arrays["final_obs"].items()})
    out.update({k: np.asarray(arrays[k][:]) for k in ("action", "reward", "terminal", "truncated")})
    out["episode_ends"] = ds.episode_ends
    return out


def same_values(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> bool:
    return got.keys() == expected.keys() and all(
        got[k].shape == expected[k].shape and np.array_equal(got[k], expected[k]) for k in expected)


def fresh_copy(pristine_path: Path) -> Path:
    target = pristine_path.parent / f"case-{uuid.uuid4().hex[:10]}.zarr"
    shutil.copytree(pristine_path, target)
    return target


def assert_clear_error(err: UserError, store: Path) -> None:
    text = str(err)
    assert str(store) in text, text
    assert "\n" not in text and "Traceback" not in text, text


def open_every_way(store: Path, expected: dict[str, np.ndarray], silent_change_possible: bool) -> None:
    """The property, for one damaged store."""
    outcomes: dict[str, bool] = {}  # way -> opened with the original values
    for way in ("ram", "lazy", "verify"):
        try:
            with time_limit(SECONDS_PER_OPEN):
                ds = ZarrDataset(store, lazy=way == "lazy", verify=way == "verify")
                got = flatten(ds)
                if way == "lazy":
                    format_summary(summarize(store))
        except UserError as err:
            assert_clear_error(err, store)
            outcomes[way] = False
            continue
        same = same_values(got, expected)
        assert same or (silent_change_possible and way != "verify"), f"{way}: opened with changed values"
        outcomes[way] = same
    if silent_change_possible and not (outcomes["ram"] and outcomes["lazy"]):
        assert not outcomes["verify"] or all(outcomes.values())
    try:  # appending (a resumed finetune): refused, or the committed rows stay as they were
        with time_limit(SECONDS_PER_OPEN), DatasetWriter.open(store) as writer:
            writer.add_episode(**_episode(5, np.random.default_rng(1)))
    except UserError as err:
        assert_clear_error(err, store)
        return
    try:
        with time_limit(SECONDS_PER_OPEN):
            after = flatten(ZarrDataset(store, verify=True))
    except UserError as err:
        assert_clear_error(err, store)
        return
    rows = len(expected["action"])
    assert np.array_equal(after["action"][:rows], expected["action"]) and len(after["episode_ends"]) == 4


def chunk_files(store: Path) -> list[Path]:
    return sorted(f for f in store.rglob("*") if f.is_file() and f.name != "zarr.json")


def array_metas(store: Path) -> list[Path]:
    return sorted(f for f in store.rglob("zarr.json") if json.loads(f.read_text()).get("node_type") == "array")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_damaged_chunk_files(pristine: tuple[Path, dict], data: st.DataObject) -> None:
    source, expected = pristine
    store = fresh_copy(source)
    try:
        files = chunk_files(store)
        target = data.draw(st.sampled_from(files), label="chunk")
        payload = target.read_bytes()
        damage = data.draw(st.sampled_from(["delete", "truncate", "garbage", "flip", "append"]), label="damage")
        if damage == "delete":
            target.unlink()
        elif damage == "truncate":
            target.write_bytes(payload[: data.draw(st.integers(0, len(payload) - 1), label="keep")])
        elif damage == "garbage":
            size = data.draw(st.sampled_from([len(payload), 0, 1, 17, 3 * len(payload)]), label="size")
            target.write_bytes(data.draw(st.binary(min_size=size, max_size=size), label="bytes"))
        elif damage == "flip":
            position = data.draw(st.integers(0, len(payload) - 1), label="byte")
            flipped = bytearray(payload)
            flipped[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
            target.write_bytes(bytes(flipped))
        else:
            target.write_bytes(payload + data.draw(st.binary(min_size=1, max_size=64), label="tail"))
        image_chunk = "cam_rgb" in str(target)  # zstd with a frame checksum: any flip fails to decode
        open_every_way(store, expected, silent_change_possible=damage in ("flip", "garbage") and not image_chunk)
    finally:
        shutil.rmtree(store, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_edited_metadata(pristine: tuple[Path, dict], data: st.DataObject) -> None:
    source, expected = pristine
    store = fresh_copy(source)
    try:
        kind = data.draw(st.sampled_from(["array_field", "array_text", "root_attr", "shape"]), label="edit")
        if kind == "root_attr":
            meta_path = store / "zarr.json"
            meta = json.loads(meta_path.read_text())
            names = sorted(meta["attributes"])
            name = data.draw(st.sampled_from(names), label="attribute")
            if data.draw(st.booleans(), label="delete"):
                del meta["attributes"][name]
            else:
                meta["attributes"][name] = data.draw(JSON_VALUES, label="value")
            meta_path.write_text(json.dumps(meta))
        else:
            meta_path = data.draw(st.sampled_from(array_metas(store)), label="array")
            meta = json.loads(meta_path.read_text())
            if kind == "array_text":
                meta_path.write_text(data.draw(st.sampled_from(["", "{", "null", "[1, 2]", "not json", '{"a": 1}']),
                                               label="text"))
            elif kind == "shape":
                rows = data.draw(st.sampled_from([0, 1, 7, 119, 121, 4097, 10**6, 10**9, 10**15, -1]), label="rows")
                meta["shape"] = [rows, *meta["shape"][1:]]
                meta_path.write_text(json.dumps(meta))
            else:
                field = data.draw(st.sampled_from(sorted(meta)), label="field")
                meta[field] = data.draw(JSON_VALUES, label="value")
                meta_path.write_text(json.dumps(meta))
        open_every_way(store, expected, silent_change_possible=False)
    finally:
        shutil.rmtree(store, ignore_errors=True)
