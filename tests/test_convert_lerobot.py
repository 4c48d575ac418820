"""source=lerobot: small LeRobot v3.0 and v2.1 datasets written with pyarrow + OpenCV MP4, converted and compared."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from calql_robot.convert import load_config, run_conversion
from calql_robot.datasets.format import ZarrDataset
from calql_robot.errors import UserError

FPS = 10
LENGTHS = [5, 7, 4]
GREY = 10  # video frame g (global within its file) is a solid grey of level g * GREY
FRONT = "observation.images.front"
WRIST = "observation.images.wrist"


def episode_truth() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate(LENGTHS):
        reward = np.zeros(n, dtype=np.float32)
        reward[-1] = float(i != 1)
        wrist = rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8)
        out.append({"state": rng.normal(size=(n, 3)).astype(np.float32),
                    "action": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32), "reward": reward,
                    "wrist": wrist, "timestamp": np.arange(n, dtype=np.float32) / FPS})
    return out


def write_mp4(path: Path, levels: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (32, 32))
    for level in levels:
        writer.write(np.full((32, 32, 3), level * GREY, dtype=np.uint8))
    writer.release()


def frames_table(eps: list[tuple[int, dict]], start_index: int) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("observation.state", "action", "next.reward", "next.done", WRIST,
                                             "timestamp", "frame_index", "episode_index", "index", "task_index")}
    index = start_index
    for ep_index, ep in eps:
        n = ep["state"].shape[0]
        for t in range(n):
            cols["observation.state"].append(ep["state"][t].tolist())
            cols["action"].append(ep["action"][t].tolist())
            cols["next.reward"].append(float(ep["reward"][t]))
            cols["next.done"].append(t == n - 1)
            cols[WRIST].append({"bytes": cv2.imencode(".png", ep["wrist"][t][..., ::-1])[1].tobytes(), "path": None})
            cols["timestamp"].append(float(ep["timestamp"][t]))
            cols["frame_index"].append(t)
            cols["episode_index"].append(ep_index)
            cols["index"].append(index)
            cols["task_index"].append(0)
            index += 1
    table = pa.table({k: v for k, v in cols.items() if k not in ("observation.state", "action")})
    table = table.append_column("observation.state", pa.array(cols["observation.state"], pa.list_(pa.float32(), 3)))
    return table.append_column("action", pa.array(cols["action"], pa.list_(pa.float32(), 2)))


def info_json(version: str) -> dict:
    return {"codebase_version": version, "fps": FPS, "robot_type": "so100", "chunks_size": 1000, "features": {
        "observation.state": {"dtype": "float32", "shape": [3]}, "action": {"dtype": "float32", "shape": [2]},
        FRONT: {"dtype": "video", "shape": [32, 32, 3], "info": {"video.fps": FPS}},
        WRIST: {"dtype": "image", "shape": [8, 8, 3]},
        "next.reward": {"dtype": "float32", "shape": [1]}, "next.done": {"dtype": "bool", "shape": [1]},
        "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
        "episode_index": {"dtype": "int64", "shape": [1]}}}


def write_v3(root: Path, truth: list[dict]) -> list[list[int]]:
    """Episodes 0 and 1 share data/video file-000, episode 2 is in file-001. Returns the grey level per frame."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = info_json("v3.0")
    info["data_path"] = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    info["video_path"] = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    files = [[0, 1], [2]]
    rows, levels = [], []
    for file_index, eps in enumerate(files):
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        start = sum(LENGTHS[: eps[0]])
        pq.write_table(frames_table([(e, truth[e]) for e in eps], start),
                       root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet")
        n_file = sum(LENGTHS[e] for e in eps)
        write_mp4(root / "videos" / FRONT / "chunk-000" / f"file-{file_index:03d}.mp4", list(range(n_file)))
        offset = 0
        for e in eps:
            rows.append({"episode_index": e, "tasks": ["fold the towel"], "length": LENGTHS[e],
                         "data/chunk_index": 0, "data/file_index": file_index, "dataset_from_index": start + offset,
                         "dataset_to_index": start + offset + LENGTHS[e], f"videos/{FRONT}/chunk_index": 0,
                         f"videos/{FRONT}/file_index": file_index, f"videos/{FRONT}/from_timestamp": offset / FPS,
                         f"videos/{FRONT}/to_timestamp": (offset + LENGTHS[e]) / FPS})
            levels.append(list(range(offset, offset + LENGTHS[e])))
            offset += LENGTHS[e]
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return levels


def write_v21(root: Path, truth: list[dict]) -> list[list[int]]:
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v2.1")))
    (root / "data" / "chunk-000").mkdir(parents=True)
    lines = []
    for e, ep in enumerate(truth):
        pq.write_table(frames_table([(e, ep)], sum(LENGTHS[:e])),
                       root / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
        write_mp4(root / "videos" / "chunk-000" / FRONT / f"episode_{e:06d}.mp4", list(range(LENGTHS[e])))
        lines.append(json.dumps({"episode_index": e, "tasks": ["fold the towel"], "length": LENGTHS[e]}))
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return [list(range(n)) for n in LENGTHS]


def convert(src: Path, out: Path, *extra: str) -> dict:
    return run_conversion(load_config(["source=lerobot", f"input={src}", f"output={out}", *extra]))


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_lerobot_values(tmp_path, version):
    truth = episode_truth()
    src = tmp_path / "ds"
    levels = (write_v3 if version == "v3.0" else write_v21)(src, truth)
    summary = convert(src, tmp_path / "o.zarr", "keys.cameras={front:front_rgb,wrist:wrist_rgb}", "image_size=16")
    assert summary["episodes"] == 3 and summary["transitions"] == sum(LENGTHS) - 3
    assert summary["successes"] == 2
    ds = ZarrDataset(tmp_path / "o.zarr")
    assert ds.attrs["control_freq"] == FPS and ds.attrs["task"] == "fold the towel"
    assert ds.attrs["source"]["codebase_version"] == version and ds.attrs["source"]["robot_type"] == "so100"
    assert sorted(ds.obs_spec) == ["front_rgb", "state", "wrist_rgb"]
    assert ds.obs_spec["front_rgb"]["shape"] == [16, 16, 3]
    for i, gt in enumerate(truth):
        ep = ds.episode(i)
        np.testing.assert_array_equal(ep["obs"]["state"], gt["state"])
        np.testing.assert_array_equal(ep["action"], gt["action"][:-1])
        decoded = np.rint(ep["obs"]["front_rgb"].reshape(LENGTHS[i], -1).mean(axis=1) / GREY).astype(int)
        np.testing.assert_array_equal(decoded, levels[i])  # frame-accurate: each step got its own frame
        wrist = [cv2.resize(f, (16, 16), interpolation=cv2.INTER_LINEAR) for f in gt["wrist"]]
        np.testing.assert_array_equal(ep["obs"]["wrist_rgb"], np.stack(wrist))
        assert ep["reward"][-1] == (1.0 if i != 1 else 0.0)


def test_lerobot_bad_video_named_and_skipped(tmp_path):
    truth = episode_truth()
    src = tmp_path / "ds"
    write_v21(src, truth)
    write_mp4(src / "videos" / "chunk-000" / FRONT / "episode_000001.mp4", [0, 1, 2])  # 3 frames for 7 steps
    with pytest.raises(UserError, match=r"^episode 1: video .*episode_000001.mp4: frame 3 cannot be decoded"):
        convert(src, tmp_path / "o.zarr")
    summary = convert(src, tmp_path / "o.zarr", "skip_bad=true", "reward.rule=column")
    assert [d["episode"] for d in summary["dropped"]] == ["1"] and summary["episodes"] == 2
    np.testing.assert_array_equal(ZarrDataset(tmp_path / "o.zarr").episode(1)["reward"], truth[2]["reward"][:-1])


def test_lerobot_obs_list_joins_columns(tmp_path):
    truth = episode_truth()
    src = tmp_path / "ds"
    write_v21(src, truth)
    convert(src, tmp_path / "o.zarr", "keys.cameras={}", "keys.obs={proprio:[observation.state,timestamp]}")
    ds = ZarrDataset(tmp_path / "o.zarr")
    assert sorted(ds.obs_spec) == ["proprio"] and ds.obs_spec["proprio"]["shape"] == [4]
    for i, gt in enumerate(truth):
        expected = np.concatenate([gt["state"], gt["timestamp"][:, None]], axis=-1)
        np.testing.assert_array_equal(ds.episode(i)["obs"]["proprio"], expected)
    with pytest.raises(UserError, match=r"episode 0, field observation.velocity: missing"):
        convert(src, tmp_path / "x.zarr", "keys.cameras={}", "keys.obs={proprio:[observation.state,"
                "observation.velocity]}")


def _edit_info(root: Path, **changes) -> None:
    info = json.loads((root / "meta" / "info.json").read_text())
    info.update(changes)
    (root / "meta" / "info.json").write_text(json.dumps(info))


def _ragged_state(root: Path) -> None:
    path = root / "data" / "chunk-000" / "episode_000000.parquet"
    table = pq.read_table(path)
    state = table.column("observation.state").to_pylist()
    state[2] = state[2][:2]
    column = table.column_names.index("observation.state")
    pq.write_table(table.set_column(column, "observation.state", pa.array(state, pa.list_(pa.float32()))), path)


BROKEN_V21 = {
    "info.json not JSON": (lambda r: (r / "meta" / "info.json").write_text("{broken"),
                           r"info.json is not valid JSON"),
    "info.json a list": (lambda r: (r / "meta" / "info.json").write_text("[1, 2]"),
                         r"info.json holds a JSON list; expected an object"),
    "fps fast": (lambda r: _edit_info(r, fps="fast"), r"info.json: fps='fast'; expected a positive number"),
    "features a list": (lambda r: _edit_info(r, features=[1]), r"info.json: features must be an object"),
    "chunks_size text": (lambda r: _edit_info(r, chunks_size="x"), r"chunks_size='x'; expected a positive whole"),
    "data_path template": (lambda r: _edit_info(r, data_path="data/{nope}.parquet"),
                           r"data_path='data/\{nope\}.parquet' cannot be filled in"),
    "episodes.jsonl broken": (lambda r: (r / "meta" / "episodes.jsonl").write_text('{"episode_index": 0\n'),
                              r"episodes.jsonl, line 1: not valid JSON"),
    "episode_index missing": (lambda r: (r / "meta" / "episodes.jsonl").write_text('{"length": 5}\n'),
                              r"episodes.jsonl, row 1: episode_index=None; expected a non-negative whole number"),
    "episode row a list": (lambda r: (r / "meta" / "episodes.jsonl").write_text("[1]\n"),
                           r"episodes.jsonl, row 1: expected an object with episode_index"),
    "corrupt parquet": (lambda r: (r / "data" / "chunk-000" / "episode_000001.parquet").write_bytes(b"PAR1junk"),
                        r"^episode 1, field data: parquet file .*episode_000001.parquet cannot be read"),
    "ragged state": (_ragged_state, r"^episode 0, field observation.state: rows are lists of different lengths"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_V21))
def test_lerobot_broken_metadata_and_data_are_named(tmp_path, case):
    """Issue 11, item 12: each of these gave a traceback; now a UserError naming the file (or episode and field),
    and no output."""
    src = tmp_path / "ds"
    write_v21(src, episode_truth())
    breaker, message = BROKEN_V21[case]
    breaker(src)
    with pytest.raises(UserError, match=message) as info:
        convert(src, tmp_path / "o.zarr")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_lerobot_v3_broken_episode_tables_are_named(tmp_path):
    src = tmp_path / "ds"
    write_v3(src, episode_truth())
    path = src / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["episode_index"]), path)
    with pytest.raises(UserError, match=r"meta/episodes, row 1: episode_index=None"):
        convert(src, tmp_path / "o.zarr")
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"file-000.parquet cannot be read as parquet"):
        convert(src, tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_lerobot_corrupt_episode_is_skipped_with_skip_bad(tmp_path):
    src = tmp_path / "ds"
    write_v21(src, episode_truth())
    (src / "data" / "chunk-000" / "episode_000001.parquet").write_bytes(b"PAR1junk")
    summary = convert(src, tmp_path / "o.zarr", "skip_bad=true")
    assert [d["episode"] for d in summary["dropped"]] == ["1"] and summary["episodes"] == 2
