"""End to end: collect -> pretrain -> finetune through the real apps, resume, and user-facing errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from calql_robot.datasets.format import ZarrDataset
from calql_robot.training.checkpoint import find_checkpoint

TASK = ["task=antmaze_umaze", "+task.env.horizon=40"]
SMALL = ["pretrain.batch_size=32", "pretrain.log_every=5", "progress=false", "device=cpu",
         "agent.actor_hidden=[32,32]", "agent.critic_hidden=[32,32]", "agent.cql_n_actions=2"]


def run_app(app: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", f"calql_robot.{app}", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{app} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "antmaze_tiny.zarr"
    run_app("collect", *TASK, "episodes=4", f"output={path}", "+task.generate.max_steps=30")
    assert ZarrDataset(path).n_episodes == 4
    return path


@pytest.fixture(scope="module")
def pretrained(dataset, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pre") / "run"
    out = run_app("pretrain", *TASK, *SMALL, f"dataset={dataset}", "pretrain.steps=30", "pretrain.save_every=10",
                  "eval.every=30", "eval.episodes=1", "eval.video=false", f"run_dir={run_dir}").stdout
    assert f"run directory: {run_dir}" in out
    return run_dir


def test_pretrain_writes_checkpoint_logs_and_plots(pretrained):
    assert find_checkpoint(pretrained).name == "update_000000030"
    train = rows(pretrained / "train.csv")
    assert [int(r["update"]) for r in train] == [5, 10, 15, 20, 25, 30]
    for key in ("critic_loss", "bound_rate", "q_data_mean", "mc_return_mean", "cql_alpha"):
        assert all(r[key] not in ("", "nan") for r in train), key
    assert 0.0 <= float(train[-1]["bound_rate"]) <= 1.0
    assert rows(pretrained / "eval.csv")[-1]["update"] == "30"
    assert (pretrained / "plots" / "q_calibration.png").stat().st_size > 1000
    assert any((pretrained / "tb").iterdir())
    assert (pretrained / "config.yaml").read_text().count("antmaze_umaze") >= 1


def test_pretrain_resume_matches_uninterrupted_run(dataset, tmp_path):
    common = [*TASK, *SMALL, f"dataset={dataset}", "eval.every=0", "pretrain.save_every=100"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_app("pretrain", *common, "pretrain.steps=16", f"run_dir={straight}")
    run_app("pretrain", *common, "pretrain.steps=8", f"run_dir={split}")
    out = run_app("pretrain", *common, "pretrain.steps=16", f"run_dir={split}").stdout
    assert "resuming from" in out and "at update 8" in out
    a = load_file(str(find_checkpoint(straight) / "tensors.safetensors"))
    b = load_file(str(find_checkpoint(split) / "tensors.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs after resume"
    assert [int(r["update"]) for r in rows(split / "train.csv")] == [5, 8, 10, 15, 16]  # 8: end of 1st run


def test_finetune_collects_online_data_and_resumes(pretrained, tmp_path):
    run_dir = tmp_path / "ft"
    args = [*TASK, f"checkpoint={pretrained}", "finetune.env_steps=100", "finetune.batch_size=32",
            "finetune.log_every=20", "finetune.save_every=1", "eval.every=100", "eval.episodes=1", "eval.video=false",
            "progress=false", "device=cpu", f"run_dir={run_dir}"]
    out = run_app("finetune", *args).stdout
    assert "before fine-tuning: eval success" in out
    online = ZarrDataset(run_dir / "online.zarr")
    assert online.n_transitions == 100 and online.n_episodes >= 3  # horizon 40: 40 + 40 + 20 (cut at the end)
    episodes = rows(run_dir / "episode.csv")
    assert len(episodes) == online.n_episodes
    assert float(episodes[-1]["cumulative_regret"]) == sum(1 - float(r["success"]) for r in episodes)
    assert [r["env_step"] for r in rows(run_dir / "eval.csv")] == ["0", "100"]
    # the agent variant and sizes came from the checkpoint's config
    assert "actor_hidden:\n  - 32\n  - 32" in (run_dir / "config.yaml").read_text()
    # re-running with a larger budget resumes the counters and keeps the stored episodes
    out = run_app("finetune", *[a for a in args if not a.startswith("finetune.env_steps")],
                  "finetune.env_steps=140").stdout
    assert "resuming fine-tuning" in out and "at env step 100" in out
    assert ZarrDataset(run_dir / "online.zarr").n_transitions == 140


def test_bad_input_gives_short_errors(dataset, tmp_path):
    proc = run_app("pretrain", "task=no_such_task", check=False)
    assert proc.returncode != 0 and "antmaze_umaze" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_app("pretrain", *TASK, "pretrain.no_such_key=1", check=False)
    assert proc.returncode != 0 and "no_such_key" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_app("pretrain", *TASK, f"dataset={tmp_path / 'missing.zarr'}", f"run_dir={tmp_path / 'r'}",
                   check=False)
    assert proc.returncode == 2 and "missing.zarr" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_app("finetune", *TASK, f"checkpoint={tmp_path}", f"run_dir={tmp_path / 'f'}", check=False)
    assert proc.returncode == 2 and "no checkpoint found" in proc.stderr
    # a dataset recorded for another task is refused with the key named
    proc = run_app("pretrain", "task=pick_place", f"dataset={dataset}", f"run_dir={tmp_path / 'p'}", check=False)
    assert proc.returncode == 2 and "agentview_rgb" in proc.stderr


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_refused_resume_leaves_the_run_directory_unchanged(pretrained, dataset, tmp_path):
    """Issue 11, items 10 and 11: a bad value, another architecture or a checkpoint without RNG states is refused in
    one paragraph with exit status 2, and the run's config.yaml and every other file stay as they were."""
    run_dir = tmp_path / "run"
    shutil.copytree(pretrained, run_dir)
    args = [*TASK, *[a for a in SMALL if not a.startswith("agent.actor_hidden")], f"dataset={dataset}",
            "pretrain.steps=30", "eval.every=0", f"run_dir={run_dir}"]
    before = snapshot(run_dir)
    proc = run_app("pretrain", *args, "agent.actor_hidden=[32,32]", "pretrain.save_every=0", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: pretrain.save_every=0 is not valid")
    assert snapshot(run_dir) == before
    proc = run_app("pretrain", *args, "agent.actor_hidden=[16,16]", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]  # (gymnasium warns too)
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    message = errors[0]
    assert "agent state for 'actor' does not match" in message and "shapes differ for actor." in message
    assert "agent.actor_hidden" in message and len(message) < 1000
    assert snapshot(run_dir) == before  # config.yaml still says [32, 32]
    state_path = find_checkpoint(run_dir) / "state.json"
    state = json.loads(state_path.read_text())
    del state["rng"]
    state_path.write_text(json.dumps(state))
    before = snapshot(run_dir)
    proc = run_app("pretrain", *args, "agent.actor_hidden=[32,32]", check=False)
    assert proc.returncode == 2 and "state.json lacks ['rng']" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(run_dir) == before


def test_empty_store_is_refused_without_a_run_directory(dataset, tmp_path):
    from calql_robot.datasets.format import DatasetWriter

    source = ZarrDataset(dataset)
    empty = tmp_path / "empty.zarr"
    DatasetWriter.create(empty, source.obs_spec, source.attrs["action_low"], source.attrs["action_high"],
                         task="antmaze_umaze", control_freq=20.0, reward_success=1.0, reward_failure=0.0).close()
    proc = run_app("pretrain", *TASK, *SMALL, f"dataset={empty}", "pretrain.steps=5", "eval.every=0",
                   f"run_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2 and "empty.zarr' holds no episodes (0 transitions)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
