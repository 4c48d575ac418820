"""Every `python -m calql_robot.convert` example in README.md and docs/converters.md runs on a file with the real
source's layout (made here), with only the input and output paths adapted.

The commands are read from the two documents, so an example added there without a source file here fails the test
(add its input to ``INPUTS``). Layouts: robomimic image HDF5 (``obs`` / ``next_obs`` groups, 84x84 cameras, OSC
actions in [-1, 1]); a robosuite demo (states + actions, replayed); a LeRobot v2.1 SO-100 recording (6 joint angles
in degrees as state and action, two MP4 cameras ``laptop`` / ``phone``, no reward or success columns, as such
recordings are); a Minari dataset recorded under the D4RL id on AntMaze_UMaze-v4; a diffusion_policy PushT
ReplayBuffer (zarr v2: ``data/img`` float 0..255, ``data/state``, ``data/keypoint``, ``data/n_contacts``,
``data/action`` in pixels, ``meta/episode_ends``, no attributes); raw lab logs (tests/test_convert_raw.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import cv2
import gymnasium as gym
import gymnasium_robotics
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from test_convert_raw import write_episode
from test_convert_robomimic import robosuite_demo  # noqa: F401  (a module fixture: the robosuite demo file)
from test_minari_convert import SuccessInfoOnly

from calql_robot.convert import load_config, run_conversion
from calql_robot.datasets.format import ZarrDataset

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "docs" / "converters.md")


def documented_commands() -> list[str]:
    """The argument strings of every convert example in the docs (continuation lines joined), without repeats."""
    found: list[str] = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")
        for match in re.finditer(r"python -m calql_robot\.convert (source=[^`\n]*)", text):
            args = match.group(1).strip()
            if args not in found and not args.startswith("source=S "):  # the synopsis, not an example
                found.append(args)
    return found


# ---------------------------------------------------------------------------------------------- source files
def write_robomimic_image(path: Path, env_name: str, object_dim: int, lengths: tuple[int, ...] = (5, 4)) -> Path:
    """A robomimic image.hdf5: obs/next_obs with 84x84 agentview + wrist cameras, split proprioception, object."""
    rng = np.random.default_rng(7)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": env_name, "type": 1, "env_kwargs": {"control_freq": 20}})
        for i, n in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            obs = {"agentview_image": rng.integers(0, 255, size=(n + 1, 84, 84, 3), dtype=np.uint8),
                   "robot0_eye_in_hand_image": rng.integers(0, 255, size=(n + 1, 84, 84, 3), dtype=np.uint8),
                   "robot0_eef_pos": rng.normal(size=(n + 1, 3)), "robot0_eef_quat": rng.normal(size=(n + 1, 4)),
                   "robot0_gripper_qpos": rng.normal(size=(n + 1, 2)), "object": rng.normal(size=(n + 1, object_dim))}
            for name, values in obs.items():
                demo.create_dataset(f"obs/{name}", data=values[:-1])
                demo.create_dataset(f"next_obs/{name}", data=values[1:])
            demo.create_dataset("actions", data=rng.uniform(-1, 1, size=(n, 7)))
            demo.create_dataset("rewards", data=np.eye(n)[-1])
            demo.create_dataset("dones", data=np.eye(n, dtype=np.int64)[-1])
            demo.attrs["num_samples"] = n
    return path


def write_so100_v21(root: Path, lengths: tuple[int, ...] = (6, 5)) -> Path:
    """A LeRobot v2.1 SO-100 recording: joint angles in degrees, two MP4 cameras, no reward / success columns."""
    fps, cams = 30, ("observation.images.laptop", "observation.images.phone")
    rng = np.random.default_rng(11)
    features = {"action": {"dtype": "float32", "shape": [6]}, "observation.state": {"dtype": "float32", "shape": [6]},
                **{cam: {"dtype": "video", "shape": [24, 32, 3], "info": {"video.fps": fps}} for cam in cams},
                **{k: {"dtype": "int64", "shape": [1]}
                   for k in ("frame_index", "episode_index", "index", "task_index")},
                "timestamp": {"dtype": "float32", "shape": [1]}}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({
        "codebase_version": "v2.1", "robot_type": "so100", "fps": fps, "chunks_size": 1000, "features": features,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}))
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "pick the cube"}) + "\n")
    lines, start = [], 0
    for e, n in enumerate(lengths):
        joints = np.cumsum(rng.normal(scale=3.0, size=(n, 6)), axis=0) + [0, 90, 90, 45, 0, 20]  # degrees
        table = pa.table({"action": pa.array((joints + 1.5).tolist(), pa.list_(pa.float32(), 6)),
                          "observation.state": pa.array(joints.tolist(), pa.list_(pa.float32(), 6)),
                          "timestamp": pa.array(np.arange(n) / fps, pa.float32()),
                          "frame_index": np.arange(n), "episode_index": np.full(n, e), "index": start + np.arange(n),
                          "task_index": np.zeros(n, dtype=np.int64)})
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
        for cam in cams:
            video = root / "videos" / "chunk-000" / cam / f"episode_{e:06d}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (32, 24))
            for t in range(n):
                writer.write(np.full((24, 32, 3), 20 * t, dtype=np.uint8))
            writer.release()
        lines.append(json.dumps({"episode_index": e, "tasks": ["pick the cube"], "length": n}))
        start += n
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_pusht_replay(path: Path, lengths: tuple[int, ...] = (6, 5, 7)) -> Path:
    """diffusion_policy's pusht_cchi_v7_replay.zarr layout (zarr v2, no attributes), actions in pixels."""
    rng = np.random.default_rng(5)
    total = sum(lengths)
    arrays = {"img": rng.uniform(0, 255, size=(total, 96, 96, 3)).astype(np.float32),
              "state": rng.uniform(20, 490, size=(total, 5)).astype(np.float32),
              "keypoint": rng.uniform(20, 490, size=(total, 9, 2)).astype(np.float32),
              "n_contacts": rng.integers(0, 3, size=(total, 1)).astype(np.float32),
              "action": rng.uniform(20, 490, size=(total, 2)).astype(np.float32)}
    arrays["action"][0] = [36.17, 488.5]
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    for name, value in arrays.items():
        data.create_array(name, data=value, chunks=(16, *value.shape[1:]))
    root.create_group("meta").create_array("episode_ends", data=np.cumsum(lengths).astype(np.int64))
    return path


def record_d4rl_antmaze(root: Path, steps: int = 12) -> str:
    """A Minari dataset under the D4RL AntMaze id, recorded on AntMaze_UMaze-v4 (MINARI_DATASETS_PATH=root)."""
    from minari import DataCollector

    gym.register_envs(gymnasium_robotics)
    env = gym.make("AntMaze_UMaze-v4", continuing_task=True, reset_target=False, max_episode_steps=steps)
    collector = DataCollector(env, step_data_callback=SuccessInfoOnly, record_infos=True)
    rng = np.random.default_rng(0)
    for ep in range(2):
        collector.reset(seed=ep)
        for _ in range(steps):
            _, _, terminated, truncated, _ = collector.step(rng.uniform(-1, 1, 8).astype(np.float32))
            if terminated or truncated:
                break
    collector.create_dataset("D4RL/antmaze/umaze-v1", algorithm_name="random")
    collector.close()
    return "D4RL/antmaze/umaze-v1"


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari_d4rl")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        record_d4rl_antmaze(root)
        yield root
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def raw_logs(root: Path) -> Path:
    write_episode(root / "logs" / "ep_000", 10.0, 1.0, True, 0)
    write_episode(root / "logs" / "ep_001", 3.0, 1.2, False, 1)
    return root / "logs"


# documented input -> (fixture names it needs, builder(tmp folder, fixtures) -> the input to pass)
INPUTS: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "lift/ph/image.hdf5": ((), lambda d: str(write_robomimic_image(d / "lift" / "image.hdf5", "Lift", 10))),
    "can/ph/image.hdf5": ((), lambda d: str(write_robomimic_image(d / "can" / "image.hdf5", "PickPlaceCan", 14))),
    "demos/demo.hdf5": (("robosuite_demo",), lambda d, demo: str(demo[0])),
    "~/lerobot/so100_pick": ((), lambda d: str(write_so100_v21(d / "so100_pick"))),
    "D4RL/antmaze/umaze-v1": (("minari_root",), lambda d, root: "D4RL/antmaze/umaze-v1"),
    "pusht_cchi_v7_replay.zarr": ((), lambda d: str(write_pusht_replay(d / "pusht_cchi_v7_replay.zarr"))),
    "logs/": ((), lambda d: str(raw_logs(d))),
}
SLOW = {"demos/demo.hdf5"}  # robosuite rebuilds and renders the scene
COMMANDS = documented_commands()


def _input_of(args: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith("input="))


def test_the_docs_hold_one_example_per_source():
    sources = {a.split("=", 1)[1] for cmd in COMMANDS for a in shlex.split(cmd, comments=True)
               if a.startswith("source=")}
    assert sources == {"robomimic", "lerobot", "minari", "diffusion_policy", "raw"}
    assert len(COMMANDS) >= 7


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow)
                                     if _input_of(shlex.split(c, comments=True)) in SLOW else c for c in COMMANDS])
def test_documented_convert_example_runs(command, tmp_path, request):
    args = shlex.split(command, comments=True)
    documented_input = _input_of(args)
    assert documented_input in INPUTS, f"no source file for the documented example input {documented_input!r}"
    needs, build = INPUTS[documented_input]
    source_input = build(tmp_path, *[request.getfixturevalue(name) for name in needs])
    output = tmp_path / "out" / Path(next(a for a in args if a.startswith("output=")).split("=", 1)[1]).name
    adapted = [f"input={source_input}" if a.startswith("input=") else f"output={output}" if a.startswith("output=")
               else a for a in args]
    summary = run_conversion(load_config(adapted))
    store = ZarrDataset(output)
    assert summary["episodes"] == store.n_episodes >= 1 and store.n_transitions == summary["transitions"]
    actions = store.arrays()["action"]
    assert np.all(actions >= store.action_low - 1e-6) and np.all(actions <= store.action_high + 1e-6)
    if "action_normalize=true" in args:  # pixel / degree actions: stored in [-1, 1], the map kept
        scaling = store.action_scaling
        assert scaling is not None and scaling.source == "data"
        assert float(actions.min()) == pytest.approx(-1.0) and float(actions.max()) == pytest.approx(1.0)
        assert np.all(scaling.high - scaling.low > 2.0)  # the source's units were not already [-1, 1]
    for option in args:  # image_size=[H,W] / image_size=N reaches every camera key
        if option.startswith("image_size="):
            size = json.loads(option.split("=", 1)[1])
            hw = [size, size] if isinstance(size, int) else size
            cams = [s for s in store.obs_spec.values() if s["kind"] == "rgb"]
            assert cams and all(s["shape"][:2] == hw for s in cams)
