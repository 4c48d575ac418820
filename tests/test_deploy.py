"""The deploy loop on the simulated robot: episodes stored as they finish, learning beside acting, SIGKILL safety."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from calql_robot.datasets.format import ZarrDataset
from calql_robot.training.checkpoint import find_checkpoint

IMAGE = ["task.env.image_size=32", "robot.driver.image_size=32"]


def app_cmd(app: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"calql_robot.{app}", *args]


def run(app: str, *args: str) -> str:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run(app_cmd(app, *args), capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{app} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def stored_episodes(path: Path) -> int:
    """Complete episodes in a store that another process may be writing (retry a torn read)."""
    for _ in range(20):
        try:
            return ZarrDataset(path).n_episodes if path.exists() else 0
        except Exception:  # noqa: BLE001 - a read racing the writer's commit; try again
            time.sleep(0.1)
    raise AssertionError(f"{path} could not be read")


@pytest.fixture(scope="module")
def checkpoint(pick_place_checkpoint) -> Path:
    return pick_place_checkpoint  # tests/conftest.py: made once per session


def deploy_args(checkpoint: Path, run_dir: Path, episodes: int) -> list[str]:
    return ["robot=sim", "task=pick_place", *IMAGE, "task.horizon=12", f"checkpoint={checkpoint}",
            f"deploy.episodes={episodes}", "deploy.batch_size=16", "deploy.save_every_episodes=2", "progress=false",
            "device=cpu", f"run_dir={run_dir}"]


def test_deploy_sim_stores_episodes_and_learns(checkpoint, tmp_path):
    run_dir = tmp_path / "dep"
    out = run("deploy", *deploy_args(checkpoint, run_dir, 3))
    assert "episodes: 3" in out
    online = ZarrDataset(run_dir / "online.zarr")
    assert online.n_episodes == 3 and online.obs_spec["agentview_rgb"]["shape"] == [32, 32, 3]
    assert np.abs(online.arrays()["action"]).max() <= 1.0  # what was sent, after the safety layers
    with (run_dir / "episode.csv").open() as f:
        episodes = list(csv.DictReader(f))
    assert len(episodes) == 3 and [r["episode"] for r in episodes] == ["1", "2", "3"]
    assert float(episodes[-1]["learner_updates"]) > 0  # the learner trained beside the actor
    assert find_checkpoint(run_dir).name == "episode_000000003"
    # the same plots as pretrain/finetune, indexed by episode, and a video of the first episode's camera
    for name in ("learning_curve.png", "q_calibration.png"):
        assert (run_dir / "plots" / name).stat().st_size > 5000, name
    assert "plots/  learning_curve.png, q_calibration.png" in out
    cap = cv2.VideoCapture(str(run_dir / "videos" / "episode_000000001.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == online.episode_ends[0] + 1  # reset frame + every step
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 32
    assert "videos/  episode_000000001.mp4" in out


def test_deploy_with_the_scripted_intervener_stores_flagged_steps(checkpoint, tmp_path):
    run_dir = tmp_path / "hil"
    out = run("deploy", *deploy_args(checkpoint, run_dir, 2), "deploy.intervention.kind=scripted",
              "deploy.intervention.scripted.takeover_after_steps=4", "deploy.intervention.episodes=1",
              "deploy.intervention.demo_buffer=true", "deploy.learner_catch_up=true", "deploy.viewer=rerun",
              f"deploy.viewer_save={tmp_path / 'live.rrd'}")
    assert "interventions: scripted may take over in the first 1 episodes" in out
    store = ZarrDataset(run_dir / "online.zarr", verify=True)
    first, second = store.episode(0)["intervention"], store.episode(1)["intervention"]
    assert not first[:4].any() and first[4:].all()  # the cube is not lifted by step 4: the controller takes over
    assert not second.any()  # only the first episode may be taken over
    with (run_dir / "episode.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["intervention_steps"]) == len(first) - 4 and float(rows[1]["intervention_steps"]) == 0
    assert float(rows[1]["learner_updates"]) >= len(first)  # learner_catch_up: max_utd=1 update per transition
    assert rows[1]["success_rate_without_intervention"] in ("0.0", "1.0")
    # the live view's recording, read back with rerun's own reader: the flags and Q against the return per step
    from rerun.dataframe import load_recording

    recording = load_recording(str(tmp_path / "live.rrd"))
    table = recording.view(index="env_step", contents="/intervention").select().read_all()
    logged = [v[0] for v in table.column("/intervention:Scalar").to_pylist()]
    assert logged == [float(f) for f in np.concatenate([first, second])]
    q = recording.view(index="env_step", contents="/episode/q_executed").select().read_all()
    assert q.num_rows == len(first) + len(second)


def test_deploy_survives_sigkill(checkpoint, tmp_path):
    run_dir = tmp_path / "killed"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen(app_cmd("deploy", *deploy_args(checkpoint, run_dir, 100)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    store = run_dir / "online.zarr"
    deadline = time.monotonic() + 300
    while stored_episodes(store) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.3)  # land somewhere inside the next episode
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = ZarrDataset(store)
    n_before = before.n_episodes
    assert n_before >= 3
    kept = {k: np.asarray(v).copy() for k, v in before.arrays().items() if k != "obs" and k != "final_obs"}
    out = run("deploy", *deploy_args(checkpoint, run_dir, n_before + 2))
    assert "resuming deployment" in out
    after = ZarrDataset(store)
    assert after.n_episodes == n_before + 2  # nothing lost, counters continue
    for key, values in kept.items():
        np.testing.assert_array_equal(np.asarray(after.arrays()[key])[: len(values)], values)
