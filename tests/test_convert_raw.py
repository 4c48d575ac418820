"""source=raw: per-episode folders with tables at different rates, an MP4 camera and an image-folder camera."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from calql_robot.convert import load_config, run_conversion
from calql_robot.datasets.format import ZarrDataset
from calql_robot.errors import UserError

STATE_HZ, ACTION_HZ, VIDEO_FPS, WRIST_HZ = 50.0, 10.0, 20.0, 15.0
GREY_STEP = 9  # frame i of a camera is a solid grey of level i * GREY_STEP


def state_of(t: np.ndarray) -> np.ndarray:
    """State (M, 3) as a known function of time: linear in t, so linear interpolation is exact."""
    return np.stack([t, 2.0 * t - 1.0, 0.5 - t], axis=1)


def write_episode(folder: Path, t0: float, duration: float, success: bool, action_seed: int) -> dict:
    """Write one raw episode; return the ground truth streams."""
    (folder / "cameras" / "wrist").mkdir(parents=True)
    state_t = t0 + np.arange(int(duration * STATE_HZ) + 1) / STATE_HZ
    header = "timestamp,state.0,state.1,state.2,gripper"
    gripper = (np.arange(state_t.shape[0]) % 2).astype(float)
    rows = np.column_stack([state_t, state_of(state_t), gripper])
    np.savetxt(folder / "state.csv", rows, delimiter=",", header=header, comments="", fmt="%.9f")
    action_t = t0 + 0.013 + np.arange(int(duration * ACTION_HZ)) / ACTION_HZ
    actions = np.random.default_rng(action_seed).uniform(-1, 1, size=(action_t.shape[0], 2))
    with (folder / "actions.jsonl").open("w") as fh:
        for t, a in zip(action_t, actions):
            fh.write(json.dumps({"timestamp": float(t), "action": a.tolist()}) + "\n")
    n_video = int(duration * VIDEO_FPS) + 1
    writer = cv2.VideoWriter(str(folder / "cameras" / "front.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS,
                             (32, 24))
    for i in range(n_video):
        writer.write(np.full((24, 32, 3), i * GREY_STEP, dtype=np.uint8))
    writer.release()
    wrist_t = t0 + 0.004 + np.arange(int(duration * WRIST_HZ) + 1) / WRIST_HZ
    for i in range(wrist_t.shape[0]):
        frame = np.zeros((20, 20, 3), dtype=np.uint8)
        frame[..., 1] = i * GREY_STEP
        cv2.imwrite(str(folder / "cameras" / "wrist" / f"{i:05d}.png"), frame)
    np.savetxt(folder / "cameras" / "wrist" / "timestamps.txt", wrist_t, fmt="%.9f")
    (folder / "episode.json").write_text(json.dumps({"success": success, "task": "stack cups"}))
    return {"action_t": action_t, "actions": actions, "state_t": state_t, "wrist_t": wrist_t, "t0": t0,
            "gripper": gripper, "success": success}


@pytest.fixture(scope="module")
def raw_logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("raw") / "logs"
    truth = [write_episode(root / "ep_000", 100.0, 1.0, True, 0), write_episode(root / "ep_001", 7.5, 1.2, False, 1)]
    return root, truth


def convert(raw: Path, out: Path, *extra: str) -> dict:
    cfg = load_config(["source=raw", f"input={raw}", f"output={out}", "image_size=[16,16]", *extra])
    return run_conversion(cfg)


def grey_index(frames: np.ndarray, channel: int) -> np.ndarray:
    return np.rint(frames[..., channel].reshape(frames.shape[0], -1).mean(axis=1) / GREY_STEP).astype(int)


@pytest.mark.parametrize("method", ["linear", "nearest"])
def test_raw_alignment_values(raw_logs, tmp_path, method):
    root, truth = raw_logs
    summary = convert(root, tmp_path / "out.zarr", f"align.method={method}")
    assert summary["episodes"] == 2 and summary["dropped"] == []
    assert summary["success_rate"] == pytest.approx(0.5)
    ds = ZarrDataset(tmp_path / "out.zarr")
    assert ds.attrs["source"]["align"]["method"] == method
    assert ds.attrs["control_freq"] == pytest.approx(ACTION_HZ)
    assert ds.attrs["task"] == "stack cups"
    assert ds.obs_spec["front"] == {"shape": [16, 16, 3], "dtype": "uint8", "kind": "rgb"}
    for i, gt in enumerate(truth):
        ep = ds.episode(i)
        ref = gt["action_t"]
        n = ref.shape[0] - 1
        np.testing.assert_allclose(ep["action"], gt["actions"][:n], atol=1e-6)
        if method == "linear":
            expected_state = state_of(ref)
        else:
            nearest = np.argmin(np.abs(gt["state_t"][None, :] - ref[:, None]), axis=1)
            expected_state = state_of(gt["state_t"][nearest])
            np.testing.assert_array_equal(ep["obs"]["gripper"][:, 0], gt["gripper"][nearest])
        np.testing.assert_allclose(ep["obs"]["state"], expected_state, atol=1e-5)
        video_idx = np.argmin(np.abs((gt["t0"] + np.arange(64) / VIDEO_FPS)[None, :] - ref[:, None]), axis=1)
        np.testing.assert_array_equal(grey_index(ep["obs"]["front"], 0), video_idx)
        wrist_idx = np.argmin(np.abs(gt["wrist_t"][None, :] - ref[:, None]), axis=1)
        np.testing.assert_array_equal(grey_index(ep["obs"]["wrist"], 1), wrist_idx)
        expected_reward = np.zeros(n, dtype=np.float32)
        expected_reward[-1] = 1.0 if gt["success"] else 0.0
        np.testing.assert_array_equal(ep["reward"], expected_reward)
        assert bool(ep["terminal"][-1]) == gt["success"] and bool(ep["truncated"][-1]) != gt["success"]


def test_raw_reference_camera_and_key_mapping(raw_logs, tmp_path):
    root, truth = raw_logs
    convert(root, tmp_path / "o.zarr", "align.reference=wrist", "keys.obs={pos:state}", "keys.cameras={front:cam0}")
    ds = ZarrDataset(tmp_path / "o.zarr")
    assert sorted(ds.obs_spec) == ["cam0", "pos"]
    ep = ds.episode(0)
    assert ep["obs"]["pos"].shape[0] == truth[0]["wrist_t"].shape[0]
    nearest = np.argmin(np.abs(truth[0]["state_t"][None, :] - truth[0]["wrist_t"][:, None]), axis=1)
    np.testing.assert_allclose(ep["obs"]["pos"], state_of(truth[0]["state_t"][nearest]), atol=1e-4)


def test_raw_rerun_refuses_then_overwrites_identically(raw_logs, tmp_path):
    root, _ = raw_logs
    out = tmp_path / "o.zarr"
    convert(root, out)
    first = ZarrDataset(out).arrays()
    with pytest.raises(UserError, match="overwrite=true"):
        convert(root, out)
    convert(root, out, "overwrite=true")
    second = ZarrDataset(out).arrays()
    for key in first["obs"]:
        np.testing.assert_array_equal(first["obs"][key], second["obs"][key])
        np.testing.assert_array_equal(first["final_obs"][key], second["final_obs"][key])
    for key in ("action", "reward", "terminal", "truncated"):
        np.testing.assert_array_equal(first[key], second[key])
    assert not list(tmp_path.glob("*.tmp-*"))


def test_raw_bad_episode_stops_or_is_skipped(raw_logs, tmp_path):
    root, _ = raw_logs
    bad_root = tmp_path / "logs"
    bad_root.mkdir()
    for name in ("ep_000", "ep_001"):
        (bad_root / name).symlink_to(root / name, target_is_directory=True)
    broken = bad_root / "ep_002"
    broken.mkdir()
    (broken / "episode.json").write_text('{"success": true}')
    (broken / "actions.jsonl").write_text('{"timestamp": 0.0, "action": [0, 0]}\n{"timestamp": 0.1, "action": '
                                          '[NaN, 0]}\n{"timestamp": 0.2, "action": [0, 0]}\n')
    with pytest.raises(UserError, match=r"episode ep_002, field action"):
        convert(bad_root, tmp_path / "a.zarr", "keys.cameras={}")
    assert not (tmp_path / "a.zarr").exists() and not list(tmp_path.glob("a.zarr*"))
    # key mapping without cameras: ep_002 lacks the state table -> also a named error; skip_bad lists it
    summary = convert(bad_root, tmp_path / "b.zarr", "skip_bad=true", "keys.obs={state:state}")
    assert [d["episode"] for d in summary["dropped"]] == ["ep_002"]
    assert summary["episodes"] == 2 and ZarrDataset(tmp_path / "b.zarr").n_episodes == 2


def test_raw_missing_outcome_and_gap(raw_logs, tmp_path):
    root, _ = raw_logs
    logs = tmp_path / "logs"
    ep = logs / "ep"
    ep.mkdir(parents=True)
    t = np.array([0.0, 0.1, 0.2, 0.3])
    np.savez(ep / "steps.npz", timestamp=t, action=np.zeros((4, 2)), state=np.ones((4, 3)))
    with pytest.raises(UserError, match="episode ep, field episode.json"):
        convert(logs, tmp_path / "x.zarr")
    (ep / "episode.json").write_text('{"success": false}')
    np.savez(ep / "late.npz", timestamp=np.array([0.25, 0.3]), force=np.zeros(2))
    with pytest.raises(UserError, match="field force: no sample within"):
        convert(logs, tmp_path / "x.zarr")
    (ep / "late.npz").unlink()
    summary = convert(logs, tmp_path / "x.zarr")
    assert summary["transitions"] == 3 and summary["success_rate"] == 0.0


def test_align_stream_rules():
    from calql_robot.datasets.converters.timestamps import align_stream, check_timestamps

    times = np.array([0.0, 0.1, 0.2, 0.3])
    values = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    ref = np.array([0.0, 0.04, 0.06, 0.25, 0.3])
    np.testing.assert_allclose(align_stream(ref, times, values, "linear", "s")[:, 0], [0.0, 0.4, 0.6, 2.5, 3.0],
                               atol=1e-6)
    np.testing.assert_array_equal(align_stream(ref, times, values, "nearest", "s")[:, 0], [0, 0, 1, 2, 3])
    flags = np.array([0, 1, 0, 1], dtype=np.int64)  # integers are never interpolated
    np.testing.assert_array_equal(align_stream(ref, times, flags, "linear", "s"), [0, 0, 1, 0, 1])
    with pytest.raises(UserError, match="strictly increasing"):
        check_timestamps(np.array([0.0, 0.2, 0.1]), "t")
    with pytest.raises(UserError, match="no sample within"):
        align_stream(np.array([0.0, 0.5]), times, values, "nearest", "s")
    np.testing.assert_array_equal(align_stream(np.array([0.5]), times, values, "nearest", "s", tolerance=1.0), [[3]])


def test_raw_obs_list_joins_fields_in_order(raw_logs, tmp_path):
    root, _ = raw_logs
    convert(root, tmp_path / "d.zarr", "keys.cameras={}")
    convert(root, tmp_path / "j.zarr", "keys.cameras={}", "keys.obs={robot_state:[state,gripper],grip:gripper}")
    separate, joined = ZarrDataset(tmp_path / "d.zarr"), ZarrDataset(tmp_path / "j.zarr")
    assert sorted(joined.obs_spec) == ["grip", "robot_state"]
    assert joined.obs_spec["robot_state"]["shape"] == [4]
    for i in range(2):
        parts, ep = separate.episode(i)["obs"], joined.episode(i)["obs"]
        np.testing.assert_array_equal(ep["robot_state"], np.concatenate([parts["state"], parts["gripper"]], axis=-1))
        np.testing.assert_array_equal(ep["grip"], parts["gripper"])
    with pytest.raises(UserError, match=r"episode ep_000, field torque: missing"):
        convert(root, tmp_path / "x.zarr", "keys.cameras={}", "keys.obs={robot_state:[state,torque]}")
    with pytest.raises(UserError, match=r"keys.cameras.front=\['a', 'b'\]: a camera maps to one key"):
        convert(root, tmp_path / "y.zarr", "keys.cameras={front:[a,b]}")


def _npz_episode(folder: Path, **fields) -> None:
    folder.mkdir(parents=True)
    t = np.arange(4) * 0.1
    np.savez(folder / "steps.npz", **{"timestamp": t, "action": np.zeros((4, 2)), "state": np.ones((4, 3)), **fields})
    (folder / "episode.json").write_text('{"success": true}')


def test_raw_truncated_or_malformed_npz_is_named(tmp_path):
    """Issue 11, item 12: a truncated .npz gave a BadZipFile traceback; now the table is named (and skip_bad skips
    the episode)."""
    logs = tmp_path / "logs"
    _npz_episode(logs / "ep_0")
    _npz_episode(logs / "ep_1")
    table = logs / "ep_1" / "steps.npz"
    table.write_bytes(table.read_bytes()[:60])
    with pytest.raises(UserError, match=r"^episode ep_1: table .*steps.npz cannot be read as NPZ \(BadZipFile"):
        convert(logs, tmp_path / "o.zarr", "keys.cameras={}")
    assert not list(tmp_path.glob("o.zarr*"))
    summary = convert(logs, tmp_path / "o.zarr", "keys.cameras={}", "skip_bad=true")
    assert [d["episode"] for d in summary["dropped"]] == ["ep_1"] and summary["episodes"] == 1
    other = tmp_path / "other"
    _npz_episode(other / "ep_0", timestamp=np.array(["a", "b", "c", "d"]))
    with pytest.raises(UserError, match=r"field timestamp: timestamps must be numbers"):
        convert(other, tmp_path / "p.zarr", "keys.cameras={}")
    single = tmp_path / "single"
    _npz_episode(single / "ep_0", gripper=np.float64(1.0))
    with pytest.raises(UserError, match=r"field gripper: a single value; expected one row per timestamp"):
        convert(single, tmp_path / "q.zarr", "keys.cameras={}")


def test_raw_image_camera_without_timestamps_is_named(raw_logs, tmp_path):
    root, _ = raw_logs
    logs = tmp_path / "logs"
    shutil.copytree(root / "ep_000", logs / "ep_000")
    (logs / "ep_000" / "cameras" / "wrist" / "timestamps.txt").unlink()
    with pytest.raises(UserError, match=r"camera wrist: .*timestamps.txt cannot be read"):
        convert(logs, tmp_path / "o.zarr")
    assert not list(tmp_path.glob("o.zarr*"))
