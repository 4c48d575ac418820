"""Dataset stores at a URL (datasets/remote_store.py): a real S3-compatible server (moto's server mode on loopback,
started here) holds stores uploaded with s3fs; the lazy reader, pretraining with ``dataset=s3://...`` and the
validation errors must behave as for the same store on local disk."""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from safetensors.torch import load_file

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import calql_robot  # noqa: E402
from calql_robot.datasets.format import DatasetWriter, ZarrDataset  # noqa: E402
from calql_robot.errors import UserError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_dataset_format import write_store  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "calql-test"
KEYS = {"key": "testing", "secret": "testing"}
HORIZON = 30
TRAIN = ["task=pointmaze_umaze", f"task.horizon={HORIZON}", "pretrain.batch_size=16", "device=cpu", "threads=1",
         "progress=false", "agent.actor_hidden=[16,16]", "agent.critic_hidden=[16,16]", "agent.cql_n_actions=2",
         "pretrain.steps=2", "pretrain.log_every=1", "eval.every=0", "eval.video=false", "data.lazy=true"]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def options(endpoint: str) -> dict[str, str]:
    return {"endpoint_url": endpoint, **KEYS}


@pytest.fixture(scope="module")
def fs(options: dict[str, str]):
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(BUCKET)
    return fs


@pytest.fixture(scope="module")
def image_store(tmp_path_factory, fs) -> tuple[Path, str]:
    """A store with a low-dim and an 8x8 RGB key (5 image chunks), on disk and uploaded."""
    path = tmp_path_factory.mktemp("local") / "images.zarr"
    write_store(path, [100, 90, 80])
    fs.put(str(path), f"{BUCKET}/images.zarr", recursive=True)
    return path, f"s3://{BUCKET}/images.zarr"


@pytest.fixture(scope="module")
def pointmaze_store(tmp_path_factory, fs) -> tuple[Path, str]:
    from calql_robot.envs.pointmaze import generate_dataset

    path = tmp_path_factory.mktemp("local") / "pointmaze.zarr"
    generate_dataset(str(path), episodes=3, seed=0, horizon=HORIZON)
    fs.pipe({f"{BUCKET}/runs/pointmaze.zarr/{rel}": data for rel, data in _files(path).items()})  # one batch
    return path, f"s3://{BUCKET}/runs/pointmaze.zarr"


def test_lazy_reader_matches_the_local_store_and_counts_bytes(image_store, options) -> None:
    local_path, url = image_store
    local = ZarrDataset(local_path).arrays()
    remote_ds = ZarrDataset(url + "/", lazy=True, cache_bytes=2 * 64 * 8 * 8 * 3, storage_options=options)
    assert str(remote_ds.path) == url and remote_ds.n_episodes == 3 and remote_ds.n_transitions == 270
    assert remote_ds.size_on_disk_bytes() == ZarrDataset(local_path).size_on_disk_bytes()
    at_open = remote_ds.transfer()
    assert at_open is not None and at_open["requests"] > 0 and ZarrDataset(local_path).transfer() is None
    remote = remote_ds.arrays()
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = rng.integers(0, 270, size=40)
        np.testing.assert_array_equal(remote["obs"]["cam_rgb"][idx], local["obs"]["cam_rgb"][idx])
        np.testing.assert_array_equal(remote["obs"]["state"][idx], local["obs"]["state"][idx])
        np.testing.assert_array_equal(remote["action"][idx], local["action"][idx])
        assert remote_ds.cache.bytes_used <= 2 * 64 * 8 * 8 * 3
    np.testing.assert_array_equal(remote["final_obs"]["cam_rgb"][[2, 0]], local["final_obs"]["cam_rgb"][[2, 0]])
    np.testing.assert_array_equal(remote_ds.episode(1)["obs"]["cam_rgb"], ZarrDataset(local_path).episode(1)["obs"]
                                  ["cam_rgb"])
    after = remote_ds.transfer()
    assert after["bytes_read"] > at_open["bytes_read"] and after["requests"] > at_open["requests"]
    hits = remote_ds.cache.hits
    requests = remote_ds.transfer()["requests"]
    remote["obs"]["cam_rgb"][[0, 1]]
    remote["obs"]["cam_rgb"][[2]]
    assert remote_ds.cache.hits > hits and remote_ds.transfer()["requests"] - requests <= 1  # a cached chunk
    assert ZarrDataset(url, verify=True, storage_options=options).integrity["chunks_verified"] > 0


def test_a_store_at_a_url_is_never_written(image_store, options, fs) -> None:
    _, url = image_store
    before = fs.find(url, detail=True)
    with pytest.raises(UserError, match="read-only"):
        DatasetWriter.open(url)
    ZarrDataset(url, lazy=True, storage_options=options).arrays()["obs"]["cam_rgb"][:]
    fs.invalidate_cache()
    assert {k: v["ETag"] for k, v in fs.find(url, detail=True).items()} == {k: v["ETag"] for k, v in before.items()}


def _remove_chunk(path: Path) -> None:
    (path / "data" / "obs" / "cam_rgb" / "c" / "3" / "0" / "0" / "0").unlink()


def _truncate_chunk(path: Path) -> None:
    chunk = path / "data" / "obs" / "cam_rgb" / "c" / "0" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:50])


def _garble_chunk(path: Path) -> None:  # same size, other bytes: decoding (lazy) or the digest (verify) fails
    chunk = path / "data" / "obs" / "cam_rgb" / "c" / "2" / "0" / "0" / "0"
    chunk.write_bytes(bytes(len(chunk.read_bytes())))


def _nan_action(path: Path) -> None:
    arr = zarr.open_array(str(path / "data" / "action"), mode="r+")
    arr[7] = [np.nan, 0.0]


ERROR_CASES: list[tuple[str, Callable[[Path], None] | None, str]] = [
    ("missing key", None, "no such file or directory"),
    ("not a store", lambda p: (p / "zarr.json").unlink(), "not a zarr v3 store"),
    ("corrupt zarr.json", lambda p: (p / "zarr.json").write_text("{not json"), "cannot be opened as a zarr group"),
    ("missing chunk", _remove_chunk, "chunk file data/obs/cam_rgb/c/3/0/0/0 of array 'data/obs/cam_rgb' is missing"),
    ("truncated chunk", _truncate_chunk, "has 50 bytes"),
    ("garbled chunk", _garble_chunk, "cannot be decoded"),
    ("nan action", _nan_action, "'data/action' holds NaN or inf"),
]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@contextmanager
def corrupted_at_url(fs, good: Path, bad: Path, url: str) -> Iterator[None]:
    """Make the store at ``url`` (an upload of ``good``) equal to ``bad`` by writing only the objects that differ,
    then restore it."""
    before, after = _files(good), _files(bad)
    changed = [rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel)]
    assert changed
    for rel in changed:
        fs.pipe(f"{url}/{rel}", after[rel]) if rel in after else fs.rm(f"{url}/{rel}")
    try:
        yield
    finally:
        for rel in changed:
            fs.pipe(f"{url}/{rel}", before[rel]) if rel in before else fs.rm(f"{url}/{rel}")


@pytest.mark.parametrize("case, corrupt, message", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_broken_store_at_a_url_gives_the_local_message(image_store, options, fs, tmp_path: Path, case: str,
                                                       corrupt: Callable[[Path], None] | None, message: str) -> None:
    good, url = image_store
    local = tmp_path / "broken.zarr"
    if corrupt is None:
        url = f"s3://{BUCKET}/no-such-store.zarr"
        context: Any = nullcontext()
    else:
        shutil.copytree(good, local)
        corrupt(local)
        context = corrupted_at_url(fs, good, local, url)
    messages = []
    with context:
        for where, opts in ((local, None), (url, options)):
            with pytest.raises(UserError, match=message) as info:
                ds = ZarrDataset(where, lazy=True, storage_options=opts, verify=case == "garbled chunk")
                ds.arrays()["obs"]["cam_rgb"][:]
            messages.append(str(info.value))
    assert messages[1] == messages[0].replace(str(local), url)
    if corrupt is not None:
        ZarrDataset(url, lazy=True, storage_options=options)  # restored


def test_missing_bucket_and_unknown_scheme(options) -> None:
    with pytest.raises(UserError, match=r"s3://no-such-bucket/d\.zarr: no such file or directory"):
        ZarrDataset("s3://no-such-bucket/d.zarr", storage_options=options)
    with pytest.raises(UserError, match="scheme is not one fsspec knows"):
        ZarrDataset("nosuchscheme://b/d.zarr")
    with pytest.raises(UserError, match="storage options were refused"):
        ZarrDataset("s3://b/d.zarr", storage_options={"no_such_option": 1, **options})


def test_pretrain_from_s3_with_the_lazy_reader(pointmaze_store, options, tmp_path: Path, capsys) -> None:
    """Two updates through the real pretrain entry; the checkpoint records the URL (the data itself is compared
    with the local copy in test_lazy_reader_matches_the_local_store_and_counts_bytes)."""
    _, url = pointmaze_store
    opts = "data.storage_options={" + ",".join(f"{k}:'{v}'" for k, v in options.items()) + "}"
    result = calql_robot.pretrain([*TRAIN, f"dataset={url}", f"run_dir={tmp_path / 'run'}", opts])
    rows = result.csv()
    assert [row["update"] for row in rows] == [1.0, 2.0] and all(np.isfinite(row["critic_loss"]) for row in rows)
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["dataset"] == url and state["config"]["data"]["storage_options"]["endpoint_url"] == options[
        "endpoint_url"]
    assert f"offline data: {url} (3 episodes" in capsys.readouterr().out
    assert load_file(str(result.checkpoint / "tensors.safetensors"))


def test_pretrain_app_exits_2_for_a_missing_url_with_env_credentials(endpoint, tmp_path: Path, monkeypatch,
                                                                     capsys) -> None:
    """The endpoint and keys from the AWS_* variables alone; the app itself (its main, as the console script)."""
    app = importlib.import_module("calql_robot.pretrain")  # the module (calql_robot.pretrain is the API function)
    for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    url = f"s3://{BUCKET}/nothing-here.zarr"
    monkeypatch.setattr(sys, "argv", ["pretrain", *TRAIN, f"dataset={url}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as info:
        app.main()
    assert info.value.code == 2
    assert f"error: dataset '{url}' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_s3_url_without_s3fs_says_what_to_install(monkeypatch) -> None:
    registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is its read-only view)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now fails as if it were not installed
    monkeypatch.delitem(registry._registry, "s3", raising=False)  # fsspec's record of the loaded class
    with pytest.raises(UserError, match=r"dataset s3://bucket/store\.zarr: reading s3:// URLs needs an fsspec "
                       r"backend .*pip install 'calql_robot\[s3\]'"):
        ZarrDataset("s3://bucket/store.zarr")
