"""Fixtures shared across test modules: built once per test session (each costs a collect and a pretrain)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL_AGENT = ["agent.actor_hidden=[32,32]", "agent.critic_hidden=[32,32]", "agent.cql_n_actions=2"]


def _run(app: str, *args: str) -> None:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run([sys.executable, "-m", f"calql_robot.{app}", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, f"{app} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def pick_place_checkpoint(tmp_path_factory) -> Path:
    """A pretrain run directory on 2 scripted 32x32 pick_place episodes (4 updates of a small agent): the start
    checkpoint of the deploy tests."""
    root = tmp_path_factory.mktemp("pick_place_checkpoint")
    data = root / "pp.zarr"
    _run("collect", "task=pick_place", "task.env.image_size=32", "task.horizon=20", "episodes=2", f"output={data}")
    run_dir = root / "pre"
    _run("pretrain", "task=pick_place", "task.env.image_size=32", *SMALL_AGENT, f"dataset={data}", "pretrain.steps=4",
         "pretrain.batch_size=16", "eval.every=0", "progress=false", "device=cpu", f"run_dir={run_dir}")
    return run_dir
