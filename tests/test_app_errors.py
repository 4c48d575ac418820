"""Issue 14, item 7: the errors the README promises: a wrong key or choice is one paragraph listing the valid ones
(nearest first) with exit status 2, finetune refuses before creating anything, a checkpoint of another task is named
as such, and a restarted deploy says what it resumed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from calql_robot.app import CONFIG_DIR
from calql_robot.app_errors import check_overrides
from calql_robot.errors import UserError

POINTMAZE_TINY = ["pretrain.batch_size=8", "pretrain.log_every=1", "eval.every=0", "progress=false", "device=cpu",
                  "threads=1", "agent.actor_hidden=[16,16]", "agent.critic_hidden=[16,16]", "agent.cql_n_actions=2"]


def run_app(app: str, *args: str, cwd: Path, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", f"calql_robot.{app}", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{app} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def refused(proc: subprocess.CompletedProcess) -> str:
    """The one-paragraph error of a refused run (exit 2, no traceback, no hydra hint)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for hydra_text in ("Traceback", "not in struct", "HYDRA_FULL_ERROR", "provider=", "search path"):
        assert hydra_text not in proc.stderr, proc.stderr
    return proc.stderr.strip()


def test_unknown_block_key_lists_the_blocks_keys_nearest_first(tmp_path):  # item a
    message = refused(run_app("pretrain", "pretrain.step=5", cwd=tmp_path))
    assert "pretrain.step" in message and "has no key 'step'" in message
    listed = message.split("the keys of pretrain are ", 1)[1]
    assert listed.startswith("steps, ")
    assert {"batch_size", "log_every", "save_every"} <= set(listed.replace(",", " ").split())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arg", ["run_dir=x", "+run_dir=x", "++run_dir=x"])
def test_unknown_top_level_key_is_refused_and_plus_never_suggested(tmp_path, arg):  # item b
    message = refused(run_app("collect", "task=pointmaze_umaze", arg, "output=o.zarr", cwd=tmp_path))
    assert "run_dir is not an option of collect" in message and "+run_dir" not in message
    listed = message.split("its top-level keys are ", 1)[1]
    assert {"episodes", "output", "seed", "overwrite", "task"} <= set(listed.replace(",", " ").split())
    assert list(tmp_path.iterdir()) == []  # refused before anything was collected


@pytest.mark.parametrize("app, arg, group, nearest", [
    ("pretrain", "task=nosuch", "task", None), ("pretrain", "task=pointmaz", "task", "pointmaze_umaze"),
    ("finetune", "agent=cqll", "agent", "cql"), ("evaluate", "encoder=resnet", "encoder", "resnet18"),
    ("deploy", "robot=simm", "robot", "sim"), ("robot_server", "robot=nosuch", "robot", None),
])
def test_unknown_choice_lists_the_groups_choices_only(tmp_path, app, arg, group, nearest):  # item c
    message = refused(run_app(app, arg, cwd=tmp_path))
    value = arg.split("=", 1)[1]
    assert message.startswith(f"error: unknown {group} '{value}'; choices: ")
    listed = message.split("choices: ", 1)[1].split(" (configs/")[0].split(", ")
    assert sorted(listed) == sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    if nearest:
        assert listed[0] == nearest


@pytest.mark.parametrize("app, args", [
    ("pretrain", ["task=antmaze_umaze", "+task.env.horizon=40", "task.env.horizon=30", "agent=cql",
                  "agent.cql_alpha=2", "encoder=conv", "agent.encoder.feature_dim=8", "pretrain.steps=3"]),
    ("pretrain", ["++finetune.batch_size=64", "++pretrain.batch_size=64", "hydra.job.chdir=false"]),
    ("finetune", ["task=pick_place", "checkpoint=x", "++pretrain.batch_size=64", "finetune.env_steps=5"]),
    ("evaluate", ["checkpoint=x", "+task.env.horizon=5", "eval.episodes=3"]),
    ("collect", ["task=antmaze_umaze", "+task.generate.max_steps=30", "task.dataset.path=x.zarr"]),
    ("convert", ["source=raw", "input=a", "output=b", "keys.obs={state: s}", "reward.task.op=<"]),
    ("deploy", ["robot=point", "task.horizon=12", "robot.driver.image_size=8", "deploy.events.script=[]"]),
    ("robot_server", ["robot=point", "port=5000", "robot.safety.max_delta_per_step=0.1"]),
])
def test_valid_overrides_pass(app, args):
    check_overrides(CONFIG_DIR, app, args)


@pytest.mark.parametrize("app, args, text", [
    ("pretrain", ["finetune.env_steps=5"], "finetune.env_steps is not an option of pretrain"),  # a task's block
    ("pretrain", ["agent.no_such=1"], "agent has no key 'no_such'"),
    ("evaluate", ["checkpoint=x", "task.env.horizon=5"], "+task.env.horizon=VALUE"),  # task: null there
    ("convert", ["keys.obs.state=s"], "keys.obs={state: VALUE}"),
    ("collect", ["encoder=conv"], "encoder is not an option of collect"),
    ("pretrain", ["agent=cql,nosuch"], "unknown agent 'nosuch'"),
])
def test_wrong_overrides_are_refused_in_process(app, args, text):
    with pytest.raises(UserError) as err:
        check_overrides(CONFIG_DIR, app, args)
    assert text in str(err.value) and "\n" not in str(err.value)


def test_finetune_without_checkpoint_creates_nothing(tmp_path):  # item d
    refused(run_app("finetune", "task=pointmaze_umaze", cwd=tmp_path))  # default run_dir: runs/finetune/...
    refused(run_app("finetune", "task=pointmaze_umaze", "checkpoint=null", f"run_dir={tmp_path / 'r'}", cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_deploy_without_or_with_a_missing_checkpoint_creates_nothing(tmp_path):  # item d, for deploy too
    refused(run_app("deploy", "robot=point", "task=pointmaze_umaze", f"run_dir={tmp_path / 'd'}", cwd=tmp_path))
    refused(run_app("deploy", "robot=point", "task=pointmaze_umaze", f"checkpoint={tmp_path / 'nowhere'}",
                    f"run_dir={tmp_path / 'd'}", cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def pointmaze_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pm")
    run_app("collect", "task=pointmaze_umaze", "episodes=2", "output=pm.zarr", cwd=root, check=True)
    run_app("pretrain", "task=pointmaze_umaze", "dataset=pm.zarr", "pretrain.steps=2", *POINTMAZE_TINY, "run_dir=pre",
            cwd=root, check=True)
    return root / "pre"


def test_checkpoint_of_another_task_is_named_as_such(pointmaze_run, tmp_path):  # item e
    message = refused(run_app("finetune", "task=pick_place", f"checkpoint={pointmaze_run}",
                              f"run_dir={tmp_path / 'ft'}", "device=cpu", cwd=tmp_path))
    ckpt = next((pointmaze_run / "checkpoints").glob("*/tensors.safetensors")).parent
    assert f"checkpoint {ckpt} was trained on task pointmaze_umaze, not pick_place" in message
    assert list(tmp_path.iterdir()) == []


IMAGE = ["task.env.image_size=32", "robot.driver.image_size=32"]


@pytest.mark.slow
def test_deploy_restarted_before_its_first_checkpoint_says_what_it_resumed(tmp_path, pick_place_checkpoint):  # f
    from calql_robot.training.checkpoint import find_checkpoint

    start = find_checkpoint(pick_place_checkpoint).resolve()
    args = ["robot=sim", "task=pick_place", *IMAGE, "task.horizon=8", f"checkpoint={pick_place_checkpoint}",
            "deploy.batch_size=16",
            "deploy.save_every_episodes=100", "deploy.video_every_episodes=0", "progress=false", "device=cpu",
            "threads=1", "run_dir=dep"]
    first = run_app("deploy", *args, "deploy.episodes=2", cwd=tmp_path, check=True).stdout
    assert "resuming" not in first
    # the state a kill before the first checkpoint leaves: the stored episodes, no checkpoint of the run's own
    shutil.rmtree(tmp_path / "dep" / "checkpoints")
    out = run_app("deploy", *args, "deploy.episodes=3", cwd=tmp_path, check=True).stdout
    store = tmp_path / "dep" / "online.zarr"
    assert f"resuming deployment: 2 episodes / 16 steps reloaded from {store}" in out, out
    assert f"checkpoint={start}" in out  # (a resume from the run's own checkpoint: tests/test_deploy.py)
