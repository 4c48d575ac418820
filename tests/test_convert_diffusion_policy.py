"""source=diffusion_policy: a real zarr ReplayBuffer (v2 format like diffusion_policy's, and a .zip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from calql_robot.convert import load_config, run_conversion
from calql_robot.datasets.format import ZarrDataset
from calql_robot.errors import UserError

LENGTHS = [5, 8, 6]


def make_buffer(path: Path, zarr_format: int = 2) -> dict[str, np.ndarray]:
    """Write a ReplayBuffer with state, float image, action, reward and success arrays; return the arrays."""
    rng = np.random.default_rng(0)
    total = sum(LENGTHS)
    arrays = {
        "state": rng.normal(size=(total, 4)).astype(np.float32),
        "img": rng.uniform(0, 255, size=(total, 12, 12, 3)).astype(np.float32),  # pusht stores float 0..255
        "action": rng.uniform(-1, 1, size=(total, 2)).astype(np.float32),
        "reward": rng.uniform(0, 1, size=total).astype(np.float32),
        "success": np.zeros(total, dtype=bool),
    }
    ends = np.cumsum(LENGTHS).astype(np.int64)
    arrays["success"][ends[1] - 1] = True  # only the second episode ends in success
    arrays["state"][ends[2] - 1, 0] = 5.0  # the third reaches state[0] >= 4 at its last row
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    data = root.create_group("data")
    for name, value in arrays.items():
        data.create_array(name, data=value, chunks=(4,) + value.shape[1:])
    root.create_group("meta").create_array("episode_ends", data=ends)
    return arrays


@pytest.fixture(scope="module")
def buffer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("dp") / "pusht_replay.zarr"
    return path, make_buffer(path)


def convert(src: Path, out: Path, *extra: str) -> dict:
    return run_conversion(load_config(["source=diffusion_policy", f"input={src}", f"output={out}", "control_freq=10",
                                       *extra]))


def test_values_and_success_key(buffer, tmp_path):
    src, arrays = buffer
    summary = convert(src, tmp_path / "o.zarr", "diffusion_policy.success=success", "keys.cameras={img:image}")
    assert summary["episodes"] == 3 and summary["transitions"] == sum(LENGTHS) - 3
    assert summary["successes"] == 1
    ds = ZarrDataset(tmp_path / "o.zarr")
    assert ds.obs_spec["image"] == {"shape": [12, 12, 3], "dtype": "uint8", "kind": "rgb"}
    assert sorted(ds.obs_spec) == ["image", "state"]  # reward / success arrays are not observations
    start = 0
    for i, length in enumerate(LENGTHS):
        ep = ds.episode(i)
        rows = slice(start, start + length)
        np.testing.assert_array_equal(ep["obs"]["state"], arrays["state"][rows])
        np.testing.assert_array_equal(ep["obs"]["image"], np.rint(arrays["img"][rows]).astype(np.uint8))
        np.testing.assert_array_equal(ep["action"], arrays["action"][rows][:-1])
        assert ep["reward"].tolist() == [0.0] * (length - 2) + [1.0 if i == 1 else 0.0]
        assert bool(ep["terminal"][-1]) == (i == 1)
        start += length


def test_task_rule_and_column(buffer, tmp_path):
    src, arrays = buffer
    summary = convert(src, tmp_path / "t.zarr", "reward.rule=task", "reward.task.key=state", "reward.task.index=0",
                      "reward.task.threshold=4.0", "image_size=8")
    assert summary["successes"] == 1
    ds = ZarrDataset(tmp_path / "t.zarr")
    assert ds.obs_spec["img"]["shape"] == [8, 8, 3]
    expected = (arrays["state"][1:, 0] >= 4.0)
    start = 0
    for i, length in enumerate(LENGTHS):
        np.testing.assert_array_equal(ds.episode(i)["reward"], expected[start:start + length - 1].astype(np.float32))
        start += length
    convert(src, tmp_path / "c.zarr", "reward.rule=column", "reward.column=reward")
    ds = ZarrDataset(tmp_path / "c.zarr")
    np.testing.assert_array_equal(ds.episode(2)["reward"], arrays["reward"][13:18])


def test_zip_store_and_errors(tmp_path):
    folder = tmp_path / "buf.zarr"
    arrays = make_buffer(folder, zarr_format=3)
    zip_path = tmp_path / "buf.zarr.zip"
    store = zarr.storage.ZipStore(str(zip_path), mode="w")
    root = zarr.open_group(store, mode="w")
    for name in arrays:
        root.create_array(f"data/{name}", data=arrays[name])
    root.create_array("meta/episode_ends", data=np.cumsum(LENGTHS).astype(np.int64))
    store.close()
    summary = convert(zip_path, tmp_path / "z.zarr", "reward.unknown_outcome=success")
    assert summary["success_rate"] == 1.0 and summary["episodes"] == 3
    with pytest.raises(UserError, match="episode episode_0, field outcome"):
        convert(folder, tmp_path / "e.zarr")
    with pytest.raises(UserError, match="no action array data/act"):
        convert(folder, tmp_path / "e.zarr", "keys.action=act")
    zarr.open_group(str(folder), mode="r+")["data/state"][2, 1] = np.nan
    with pytest.raises(UserError, match="episode episode_0, field state: NaN"):
        convert(folder, tmp_path / "e.zarr", "reward.unknown_outcome=success")
    assert not (tmp_path / "e.zarr").exists()


def test_obs_list_joins_arrays_and_refuses_images(buffer, tmp_path):
    src, arrays = buffer
    convert(src, tmp_path / "o.zarr", "reward.unknown_outcome=failure", "keys.obs={robot_state:[state,reward]}",
            "keys.cameras={}")
    ds = ZarrDataset(tmp_path / "o.zarr")
    assert sorted(ds.obs_spec) == ["robot_state"] and ds.obs_spec["robot_state"]["shape"] == [5]
    expected = np.concatenate([arrays["state"], arrays["reward"][:, None]], axis=-1)
    start = 0
    for i, length in enumerate(LENGTHS):
        np.testing.assert_array_equal(ds.episode(i)["obs"]["robot_state"], expected[start:start + length])
        start += length
    with pytest.raises(UserError, match=r"keys.obs.robot_state=\['state', 'img'\]: img holds camera images"):
        convert(src, tmp_path / "x.zarr", "reward.unknown_outcome=failure", "keys.obs={robot_state:[state,img]}")
    # an image mapped through keys.obs is not also added again as a default camera
    convert(src, tmp_path / "i.zarr", "reward.unknown_outcome=failure", "keys.obs={pos:state,rgb:img}")
    assert sorted(ZarrDataset(tmp_path / "i.zarr").obs_spec) == ["pos", "rgb"]
