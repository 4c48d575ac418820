"""Many actors, one learner (issue 13 point 1): finetune with actors.count >= 1 on the tiny PointMaze task.

One scenario, shared by the first three tests to keep the suite fast: a real ``python -m calql_robot.finetune``
subprocess with 2 local actor processes; one actor is SIGKILLed mid-run and must be restarted, then the learner is
SIGKILLed and the run resumed (in this process) to the end. Real env, real zarr store, real pipes and processes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from calql_robot.datasets.format import ZarrDataset
from calql_robot.deployment.actors import check_actors_config
from calql_robot.deployment.episode_wire import decode_episode, decode_weights, episode_frames, weights_frames
from calql_robot.envs.robot.wire import ProtocolError
from calql_robot.errors import UserError
from calql_robot.training.checkpoint import find_checkpoint

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SMALL = ["task=pointmaze_umaze", "task.horizon=20", "device=cpu", "threads=1", "progress=false", "eval.every=0",
         "agent.actor_hidden=[16,16]", "agent.critic_hidden=[16,16]", "agent.cql_n_actions=2"]
SPEC = {"state": {"shape": [6], "dtype": "float32", "kind": "low_dim"}}


def composed(app: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=app, overrides=list(overrides))


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    from calql_robot.envs.pointmaze_data import write_scripted_dataset
    from calql_robot.training.offline import run_pretrain

    root = tmp_path_factory.mktemp("actors")
    data = write_scripted_dataset(root / "d.zarr", episodes=3, seed=0, horizon=20)
    run_pretrain(composed("pretrain", *SMALL, f"dataset={data}", "pretrain.steps=2", "pretrain.batch_size=16",
                          f"run_dir={root / 'pre'}"))
    return root / "pre"


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def scenario(pretrained, tmp_path_factory) -> dict:
    """Run 1 (subprocess): 2 actors; actor 1 SIGKILLed, restarted; learner SIGKILLed. Run 2 (here): resume."""
    from calql_robot.training.online import run_finetune

    run_dir = tmp_path_factory.mktemp("ft") / "run"
    common = [*SMALL, f"checkpoint={pretrained}", "finetune.batch_size=16", "finetune.save_every=60",
              "finetune.log_every=20", "actors.count=2", "actors.sync_every_s=0.2", "actors.max_update_lag=40",
              f"run_dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen([sys.executable, "-m", "calql_robot.finetune", *common, "finetune.env_steps=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    provenance = run_dir / "online_actors.csv"

    def stored() -> list[dict[str, str]]:
        return rows(provenance) if provenance.is_file() else []

    try:
        wait_for(lambda: {r["actor"] for r in stored()} == {"0", "1"}, 90, "episodes from both actors")
        pids = {int(line.split()[1]): int(line.split("pid ")[1].split(",")[0]) for line in list(lines)
                if line.startswith("actor ") and " started: pid " in line}
        os.kill(pids[1], signal.SIGKILL)  # mid-run, most likely mid-episode
        wait_for(lambda: any(r["actor"] == "1" and r["restarts"] == "1" for r in stored()), 60,
                 "an episode from the restarted actor 1")
        wait_for(lambda: (run_dir / "checkpoints").is_dir() and find_checkpoint(run_dir) is not None, 30,
                 "a checkpoint")
        learner_pid, actor_pids = proc.pid, [int(line.split("pid ")[1].split(",")[0]) for line in list(lines)
                                             if " started: pid " in line]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not any(alive(p) for p in actor_pids), 15, "the actors to exit after the learner died")
    killed_output = "".join(lines)
    before = ZarrDataset(run_dir / "online.zarr")
    resume_to = before.n_transitions + 40
    result = run_finetune(composed("finetune", *common, f"finetune.env_steps={resume_to}", "actors.count=1"))
    return {"run_dir": run_dir, "killed_output": killed_output, "learner_pid": learner_pid, "result": result,
            "stored_before": before.n_episodes, "resume_to": resume_to}


def test_two_actors_fill_one_learner(scenario):
    run_dir = scenario["run_dir"]
    store = ZarrDataset(run_dir / "online.zarr")
    provenance = rows(run_dir / "online_actors.csv")
    assert [int(r["episode"]) for r in provenance] == list(range(store.n_episodes))
    assert {"0", "1"} <= {r["actor"] for r in provenance}
    lengths = np.diff(np.concatenate([[0], store.episode_ends]))
    assert [int(r["length"]) for r in provenance] == lengths.tolist()
    assert len({r["env_seed"] for r in provenance}) == len(provenance)  # no env seed used twice (resume included)
    assert all(not 10_000 <= int(r["env_seed"]) < 10_010 for r in provenance)  # never an evaluation seed
    train = rows(run_dir / "train.csv")
    assert train and all(float(r["env_steps_per_s"]) >= 0 and float(r["learner_updates_per_s"]) >= 0 for r in train)
    assert float(train[-1]["env_steps_per_s"]) > 0 and float(train[-1]["learner_updates_per_s"]) > 0
    assert "episodes_actor_1" in train[-1]
    assert {float(r["actor"]) for r in rows(run_dir / "episode.csv")} <= {0.0, 1.0}  # who sent each episode


def test_learner_sigkill_resume_keeps_counters_equal_to_the_store(scenario):
    run_dir, result = scenario["run_dir"], scenario["result"]
    store = ZarrDataset(run_dir / "online.zarr")
    arrays = store.arrays()
    successes = sum(bool(np.any(store.episode(i)["reward"] >= 1.0)) for i in range(store.n_episodes))
    assert store.n_episodes > scenario["stored_before"] >= 2
    assert result["env_steps"] == store.n_transitions == len(arrays["action"]) >= scenario["resume_to"]
    assert result["episodes"] == store.n_episodes and result["successes"] == successes
    assert result["updates"] == result["env_steps"]  # utd 1: every received transition paid for
    state = json.loads((find_checkpoint(run_dir) / "state.json").read_text())
    assert state["counters"] == {k: result[k] for k in ("env_steps", "updates", "episodes", "successes")}


def test_killed_actor_is_restarted_and_the_run_finishes(scenario):
    out = scenario["killed_output"]
    assert "actor 1 stopped (exit code -9): restarted (restart 1)" in out, out[-3000:]
    assert "actor 1 started: pid" in out.split("restarted (restart 1)")[1]
    provenance = rows(scenario["run_dir"] / "online_actors.csv")
    assert any(r["actor"] == "1" and r["restarts"] == "1" for r in provenance)
    assert scenario["result"]["env_steps"] >= scenario["resume_to"]


def _episode(n: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {"observations": {"state": rng.normal(size=(n + 1, 6)).astype(np.float32)},
            "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32), "rewards": np.zeros(n, np.float32),
            "terminals": np.zeros(n, bool), "truncations": np.eye(n, dtype=bool)[-1], "success": False}


def test_episode_and_weights_round_trip_and_malformed_frames_are_refused():
    import torch

    ep = _episode()
    meta = {"actor": 3, "restarts": 1, "policy_version": 7, "env_seed": 123456}
    frames = episode_frames(ep, meta)
    assert all(isinstance(f, bytes) for f in frames)
    got_meta, got = decode_episode(frames, SPEC, 2)
    assert got_meta == {**meta, "success": False}
    assert np.array_equal(got["observations"]["state"], ep["observations"]["state"])
    for key in ("actions", "rewards", "terminals", "truncations"):
        assert np.array_equal(got[key], ep[key]) and got[key].dtype == ep[key].dtype
    bad_shape = dict(ep, observations={"state": ep["observations"]["state"][:-1]})
    with pytest.raises(ProtocolError, match="obs/state"):
        decode_episode(episode_frames(bad_shape, meta), SPEC, 2)
    with pytest.raises(ProtocolError, match="NaN"):
        decode_episode(episode_frames(dict(ep, rewards=np.full(3, np.nan, np.float32)), meta), SPEC, 2)
    with pytest.raises(ProtocolError, match="bytes"):  # a truncated buffer
        decode_episode([frames[0], frames[1][:-4], *frames[2:]], SPEC, 2)
    with pytest.raises(ProtocolError, match="JSON"):
        decode_episode([b"\x80not json", *frames[1:]], SPEC, 2)
    with pytest.raises(ProtocolError, match="expected an episode"):
        decode_episode(weights_frames({"actor": {}}, 1), SPEC, 2)
    weights = {"encoder": {"mean": torch.arange(6.0)}, "actor": {"w": torch.ones(2, 3), "n": torch.tensor(4)}}
    version, back = decode_weights(weights_frames(weights, 9), weights)
    assert version == 9 and torch.equal(back["actor"]["w"], weights["actor"]["w"])
    assert back["actor"]["n"].dtype == torch.int64
    with pytest.raises(ProtocolError, match="actor/w"):
        decode_weights(weights_frames({**weights, "actor": {**weights["actor"], "w": torch.ones(3, 2)}}, 9), weights)


def test_actor_config_is_checked_and_ray_needs_its_extra():
    cfg = composed("finetune", "task=pointmaze_umaze", "actors.count=2", "actors.backend=ray")
    with pytest.raises(UserError, match=r"pip install calql_robot\[ray\]"):
        check_actors_config(cfg, ray_importable=False)
    check_actors_config(cfg, ray_importable=True)
    for override, key in (("actors.count=-1", "actors.count"), ("actors.count=2.5", "actors.count"),
                          ("actors.backend=slurm", "actors.backend"), ("actors.sync_every_s=0", "actors.sync_every_s")):
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            check_actors_config(composed("finetune", "task=pointmaze_umaze", override))


@pytest.mark.slow  # ~15 s on an idle machine (Ray start + 2 workers importing torch), 45 s on a busy one
def test_ray_actors_fill_the_learner(pretrained, tmp_path):
    ray = pytest.importorskip("ray")
    from calql_robot.training.online import run_finetune

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_finetune(composed("finetune", *SMALL, f"checkpoint={pretrained}", "finetune.batch_size=16",
                                       "finetune.env_steps=60", "actors.count=2", "actors.backend=ray",
                                       f"run_dir={tmp_path / 'ray'}"))
    finally:
        ray.shutdown()
    store = ZarrDataset(tmp_path / "ray" / "online.zarr")
    assert result["env_steps"] == store.n_transitions >= 60 and result["episodes"] == store.n_episodes
    assert {r["actor"] for r in rows(tmp_path / "ray" / "online_actors.csv")} <= {"0", "1"}
