"""A store converted from each source trains: every converter source (raw, LeRobot v3.0, robomimic HDF5,
diffusion_policy, Minari) gets a tiny input written with the real libraries, is converted by the real convert app
with a key mapping onto a task's observation keys, and a short ``pretrain`` runs on the store through the real app.

Image sources are mapped onto task pick_place at image_size 32 (``agentview_rgb`` (32, 32, 3) uint8,
``robot_state`` (5,) float32, 4 actions in [-1, 1]); Minari AntMaze onto task antmaze_umaze (``state`` (31,)).
Builders are shared with the converter tests by importing them (``tests/`` is on sys.path under pytest's default
``prepend`` import mode).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from safetensors.numpy import load_file
from test_convert_lerobot import FPS as VIDEO_FPS
from test_convert_lerobot import write_mp4

from calql_robot.datasets.format import ZarrDataset
from calql_robot.training.checkpoint import find_checkpoint

LENGTHS = [10, 9]           # frames (or robomimic actions) per episode; episode 0 succeeds, episode 1 fails
SOURCE_SIZE = 40            # camera frames are written at 40x40 and converted to image_size 32 (LeRobot: 32x32)
STATE_DIM, ACTION_DIM = 5, 4
PICK_PLACE = ["task=pick_place", "task.env.image_size=32"]
PICK_PLACE_SPEC = {"agentview_rgb": {"shape": [32, 32, 3], "dtype": "uint8"},
                   "robot_state": {"shape": [STATE_DIM], "dtype": "float32"}}
TINY_PRETRAIN = ["pretrain.steps=3", "pretrain.batch_size=8", "eval.every=0", "eval.video=false", "progress=false",
                 "device=cpu", "threads=1", "agent.actor_hidden=[16,16]", "agent.critic_hidden=[16,16]",
                 "agent.cql_n_actions=2"]


def run_app(app: str, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m calql_robot.<app> args`` and fail with its output tail unless it exits 0."""
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", f"calql_robot.{app}", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, f"{app} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def episode_arrays(seed: int) -> list[dict[str, np.ndarray]]:
    """Per episode: ``state`` (L, 5) float32, ``action`` (L, 4) float32 in [-0.9, 0.9], ``rgb`` (L, 40, 40, 3) uint8."""
    rng = np.random.default_rng(seed)
    return [{"state": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
             "action": rng.uniform(-0.9, 0.9, size=(n, ACTION_DIM)).astype(np.float32),
             "rgb": rng.integers(0, 256, size=(n, SOURCE_SIZE, SOURCE_SIZE, 3), dtype=np.uint8)} for n in LENGTHS]


# ---------------------------------------------------------------- builders: each returns (input, convert options)

def build_raw(root: Path) -> tuple[Path, list[str]]:
    """Lab logs: joint table at 20 Hz (CSV), commands at 10 Hz (JSONL, field ``cmd``), a 10 fps MP4 camera."""
    logs = root / "logs"
    for i, ep in enumerate(episode_arrays(1)):
        folder = logs / f"ep_{i:03d}"
        (folder / "cameras").mkdir(parents=True)
        n = ep["action"].shape[0]
        state_t = np.arange(2 * n) / 20.0
        state = np.repeat(ep["state"], 2, axis=0)
        header = "timestamp," + ",".join(f"joint_state.{j}" for j in range(STATE_DIM))
        np.savetxt(folder / "joints.csv", np.column_stack([state_t, state]), delimiter=",", header=header,
                   comments="", fmt="%.9f")
        with (folder / "commands.jsonl").open("w") as fh:
            for t in range(n):
                fh.write(json.dumps({"timestamp": t / 10.0, "cmd": ep["action"][t].tolist()}) + "\n")
        write_mp4(folder / "cameras" / "front.mp4", list(range(n)))  # 32x32 grey frames at 10 fps
        (folder / "episode.json").write_text(json.dumps({"success": i == 0, "task": "put the cube in the bin"}))
    return logs, ["source=raw", "keys.obs={robot_state:joint_state}", "keys.action=cmd",
                  "keys.cameras={front:agentview_rgb}", "image_size=32"]


def build_lerobot(root: Path) -> tuple[Path, list[str]]:
    """LeRobot v3.0: both episodes in data file-000 and video file-000 (``observation.images.front``, 32x32)."""
    src = root / "lerobot"
    front = "observation.images.front"
    info = {"codebase_version": "v3.0", "fps": VIDEO_FPS, "robot_type": "panda", "chunks_size": 1000,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [STATE_DIM]},
                         "action": {"dtype": "float32", "shape": [ACTION_DIM]},
                         front: {"dtype": "video", "shape": [32, 32, 3], "info": {"video.fps": VIDEO_FPS}},
                         "next.reward": {"dtype": "float32", "shape": [1]},
                         "next.done": {"dtype": "bool", "shape": [1]},
                         "timestamp": {"dtype": "float32", "shape": [1]},
                         "frame_index": {"dtype": "int64", "shape": [1]},
                         "episode_index": {"dtype": "int64", "shape": [1]}}}
    (src / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (src / "data" / "chunk-000").mkdir(parents=True)
    (src / "meta" / "info.json").write_text(json.dumps(info))
    cols: dict[str, list] = {k: [] for k in ("observation.state", "action", "next.reward", "next.done", "timestamp",
                                             "frame_index", "episode_index", "index", "task_index")}
    episodes, start = [], 0
    for e, ep in enumerate(episode_arrays(2)):
        n = ep["action"].shape[0]
        for t in range(n):
            cols["observation.state"].append(ep["state"][t].tolist())
            cols["action"].append(ep["action"][t].tolist())
            cols["next.reward"].append(float(e == 0 and t == n - 1))
            cols["next.done"].append(t == n - 1)
            cols["timestamp"].append(t / VIDEO_FPS)
            cols["frame_index"].append(t)
            cols["episode_index"].append(e)
            cols["index"].append(start + t)
            cols["task_index"].append(0)
        episodes.append({"episode_index": e, "tasks": ["put the cube in the bin"], "length": n,
                         "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start,
                         "dataset_to_index": start + n, f"videos/{front}/chunk_index": 0,
                         f"videos/{front}/file_index": 0, f"videos/{front}/from_timestamp": start / VIDEO_FPS,
                         f"videos/{front}/to_timestamp": (start + n) / VIDEO_FPS})
        start += n
    table = pa.table({k: v for k, v in cols.items() if k not in ("observation.state", "action")})
    table = table.append_column("observation.state",
                                pa.array(cols["observation.state"], pa.list_(pa.float32(), STATE_DIM)))
    table = table.append_column("action", pa.array(cols["action"], pa.list_(pa.float32(), ACTION_DIM)))
    pq.write_table(table, src / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.Table.from_pylist(episodes), src / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    write_mp4(src / "videos" / front / "chunk-000" / "file-000.mp4", list(range(start)))
    return src, ["source=lerobot", "keys.obs={robot_state:observation.state}", "keys.cameras={front:agentview_rgb}",
                 "image_size=32"]


def write_robomimic(path: Path, low_dim: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> None:
    """robomimic HDF5: ``data/demo_i/{obs,next_obs}/{agentview_image, <low_dim fields>}``, actions, rewards, dones.

    ``low_dim`` maps an episode's arrays to its low-dim obs fields (each (L, D)); episode i has L - 1 actions.
    """
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PickPlaceCan", "env_kwargs": {"control_freq": 10}})
        for i, ep in enumerate(episode_arrays(3)):
            demo = data.create_group(f"demo_{i + 1}")
            fields = {"agentview_image": ep["rgb"], **low_dim(ep)}
            for name, values in fields.items():
                demo.create_dataset(f"obs/{name}", data=values[:-1])
                demo.create_dataset(f"next_obs/{name}", data=values[1:])
            n_actions = ep["action"].shape[0] - 1
            rewards, dones = np.zeros(n_actions), np.zeros(n_actions, dtype=np.int64)
            if i == 0:
                rewards[-1], dones[-1] = 1.0, 1
            demo.create_dataset("actions", data=ep["action"][:-1])
            demo.create_dataset("rewards", data=rewards)
            demo.create_dataset("dones", data=dones)
            demo.attrs["num_samples"] = n_actions


def build_robomimic(root: Path) -> tuple[Path, list[str]]:
    """robomimic HDF5 whose proprioception is one 5-d field ``robot0_proprio`` (real robomimic files split it into
    ``robot0_eef_pos`` + ``robot0_gripper_qpos``: see test_robomimic_split_proprio_maps_to_robot_state)."""
    path = root / "image.hdf5"
    write_robomimic(path, lambda ep: {"robot0_proprio": ep["state"]})
    # robomimic cameras are obs fields: keys.obs may map one itself (keys.cameras={agentview:agentview_rgb} works
    # as well); an image field mapped by keys.obs is not added again as a default camera
    return path, ["source=robomimic", "keys.obs={robot_state:robot0_proprio,agentview_rgb:agentview_image}",
                  "image_size=32"]


def build_diffusion_policy(root: Path) -> tuple[Path, list[str]]:
    """diffusion_policy ReplayBuffer (zarr v2): ``data/{img (float 0..255), pos, action, success}``, episode_ends."""
    eps = episode_arrays(4)
    arrays = {"img": np.concatenate([e["rgb"] for e in eps]).astype(np.float32),
              "pos": np.concatenate([e["state"] for e in eps]),
              "action": np.concatenate([e["action"] for e in eps]),
              "success": np.zeros(sum(LENGTHS), dtype=bool)}
    arrays["success"][LENGTHS[0] - 1] = True
    path = root / "replay.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = group.create_group("data")
    for name, value in arrays.items():
        data.create_array(name, data=value, chunks=(8,) + value.shape[1:])
    group.create_group("meta").create_array("episode_ends", data=np.cumsum(LENGTHS).astype(np.int64))
    return path, ["source=diffusion_policy", "control_freq=10", "diffusion_policy.success=success",
                  "keys.obs={robot_state:pos}", "keys.cameras={img:agentview_rgb}", "image_size=32"]


SOURCES: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "raw": build_raw, "lerobot": build_lerobot, "robomimic": build_robomimic,
    "diffusion_policy": build_diffusion_policy}


def assert_pretrain_ran(run_dir: Path) -> None:
    """A checkpoint at step 3 with finite tensors, and train.csv rows with a finite critic loss."""
    checkpoint = find_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.parent == run_dir / "checkpoints"
    assert checkpoint.name == "update_000000003"
    tensors = load_file(str(checkpoint / "tensors.safetensors"))
    assert tensors and all(np.isfinite(v).all() for v in tensors.values() if v.dtype.kind == "f")
    with (run_dir / "train.csv").open(newline="") as fh:
        train = list(csv.DictReader(fh))
    assert [int(r["update"]) for r in train][-1] == 3
    assert all(math.isfinite(float(r["critic_loss"])) for r in train)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_image_source_converts_and_pretrains_on_pick_place(source, tmp_path):
    src, options = SOURCES[source](tmp_path)
    store = tmp_path / f"{source}.zarr"
    run_app("convert", *options, f"input={src}", f"output={store}", "task=pick_place")
    ds = ZarrDataset(store)
    spec = {k: {"shape": list(v["shape"]), "dtype": str(v["dtype"])} for k, v in ds.obs_spec.items()}
    assert spec == PICK_PLACE_SPEC
    assert ds.n_episodes == 2 and ds.n_transitions == sum(LENGTHS) - 2
    arrays = ds.arrays()
    assert arrays["action"].shape[1] == ACTION_DIM and np.abs(arrays["action"]).max() <= 1.0
    assert int(arrays["terminal"].sum()) == 1  # episode 0 succeeded, episode 1 did not
    run_dir = tmp_path / "run"
    out = run_app("pretrain", *PICK_PLACE, f"dataset={store}", *TINY_PRETRAIN, f"run_dir={run_dir}").stdout
    assert f"offline data: {store} (2 episodes, {sum(LENGTHS) - 2} transitions" in out
    assert_pretrain_ran(run_dir)


@pytest.mark.filterwarnings("ignore:`(author|author_email|description|eval_env|code_permalink)` is set to None")
def test_minari_antmaze_converts_and_pretrains_on_antmaze_umaze(tmp_path, monkeypatch):
    from test_minari_convert import ANT_ID, _record_antmaze

    minari_root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    _record_antmaze(steps=12)  # 3 episodes; the second is held at the goal for a few steps (one success)
    store = tmp_path / "ant.zarr"
    env_extra = {"MINARI_DATASETS_PATH": str(minari_root)}
    run_app("convert", "source=minari", f"input={ANT_ID}", f"output={store}", "task=antmaze_umaze",
            env_extra=env_extra)
    ds = ZarrDataset(store)
    assert ds.obs_spec["state"]["shape"] == [31] and str(ds.obs_spec["state"]["dtype"]) == "float32"
    assert ds.attrs["task"] == "antmaze_umaze" and ds.arrays()["action"].shape[1] == 8
    assert int(ds.arrays()["terminal"].sum()) >= 1  # the goal reach of the second episode
    run_dir = tmp_path / "run"
    run_app("pretrain", "task=antmaze_umaze", f"dataset={store}", *TINY_PRETRAIN, f"run_dir={run_dir}",
            env_extra=env_extra)
    assert_pretrain_ran(run_dir)


def test_robomimic_split_proprio_maps_to_robot_state(tmp_path):
    """Real robomimic files split proprioception: a keys.obs list joins robot0_eef_pos (3) + robot0_gripper_qpos (2)
    into pick_place's robot_state (5), in the listed order."""
    from calql_robot.convert import load_config, run_conversion

    path = tmp_path / "image.hdf5"
    write_robomimic(path, lambda ep: {"robot0_eef_pos": ep["state"][:, :3], "robot0_gripper_qpos": ep["state"][:, 3:]})
    run_conversion(load_config(["source=robomimic", f"input={path}", f"output={tmp_path / 'o.zarr'}",
                                "keys.obs={robot_state:[robot0_eef_pos,robot0_gripper_qpos],"
                                "agentview_rgb:agentview_image}", "image_size=32"]))
    ds = ZarrDataset(tmp_path / "o.zarr")
    spec = {k: {"shape": list(v["shape"]), "dtype": str(v["dtype"])} for k, v in ds.obs_spec.items()}
    assert spec == PICK_PLACE_SPEC
    for i, ep in enumerate(episode_arrays(3)):
        np.testing.assert_array_equal(ds.episode(i)["obs"]["robot_state"], ep["state"])
