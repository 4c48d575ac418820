"""The evaluation app (python -m calql_robot.evaluate) on a tiny PointMaze checkpoint made by the real collect and
pretrain apps: episodes.csv / summary.json / videos, the same rollouts as training-time evaluation, refusals (wrong
task, output inside the run, missing checkpoint), and the Wilson score interval.

Apps run as subprocesses through ``run_app`` of tests/test_train_apps.py (``tests/`` is on sys.path under pytest's
default ``prepend`` import mode).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_train_apps import SMALL, rows, run_app

from calql_robot.envs import make_task_env
from calql_robot.training.checkpoint import find_checkpoint
from calql_robot.training.evaluate import evaluate_policy, wilson_interval

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
HORIZON = 30
TASK = ["task=pointmaze_umaze", f"task.horizon={HORIZON}"]
EVAL = ["threads=1", "device=cpu"]


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory) -> Path:
    """A pointmaze_umaze pretrain run of 10 updates; its update-10 evaluation used 2 episodes on the default seeds."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "pointmaze_tiny.zarr"
    run_app("collect", *TASK, "episodes=4", f"output={data}")
    run_dir = root / "pre"
    run_app("pretrain", *TASK, *SMALL, "threads=1", f"dataset={data}", "pretrain.steps=10", "eval.every=10",
            "eval.episodes=2", "eval.video=false", f"run_dir={run_dir}")
    assert find_checkpoint(run_dir).name == "update_000000010"
    return run_dir


def test_evaluate_writes_episodes_summary_and_videos(checkpoint_run, tmp_path):
    out = tmp_path / "eval"
    proc = run_app("evaluate", f"checkpoint={checkpoint_run}", "eval.episodes=3", "seed=20000",
                   "eval.video_episodes=1", f"output={out}", *EVAL)
    assert "95% Wilson interval" in proc.stdout and "mean return" in proc.stdout
    episodes = rows(out / "episodes.csv")
    assert list(episodes[0]) == ["seed", "success", "return", "length"]
    assert [int(r["seed"]) for r in episodes] == [20000, 20001, 20002]
    assert all(1 <= int(r["length"]) <= HORIZON for r in episodes)  # the checkpoint's task, horizon included
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == str(find_checkpoint(checkpoint_run).resolve()) and summary["step"] == 10
    assert summary["counter"] == "update"
    assert summary["task"] == "pointmaze_umaze" and summary["seeds"] == [20000, 20001, 20002]
    assert summary["episodes"] == 3
    assert summary["success_rate"] == pytest.approx(np.mean([int(r["success"]) for r in episodes]))
    assert summary["return_mean"] == pytest.approx(np.mean([float(r["return"]) for r in episodes]))
    assert summary["length_mean"] == pytest.approx(np.mean([int(r["length"]) for r in episodes]))
    low, high = summary["ci95"]
    assert 0.0 <= low <= summary["success_rate"] <= high <= 1.0
    assert (low, high) == pytest.approx(wilson_interval(round(3 * summary["success_rate"]), 3))
    assert summary["videos"] == ["videos/episode_000_seed_20000.mp4"]
    cap = cv2.VideoCapture(str(out / summary["videos"][0]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == int(episodes[0]["length"]) + 1  # reset frame + every step


def test_evaluate_defaults_replay_training_evaluation(checkpoint_run, tmp_path):
    """Without seed= the app runs the seeds of training-time evaluation, through the same code: same numbers."""
    out = tmp_path / "eval"
    run_app("evaluate", f"checkpoint={checkpoint_run / 'checkpoints' / 'update_000000010'}", "task=pointmaze_umaze",
            f"task.horizon={HORIZON}", "eval.episodes=2", "eval.video=false", f"output={out}", *EVAL)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [10000, 10001]
    trained = rows(checkpoint_run / "eval.csv")[-1]
    assert trained["update"] == "10"
    for key in ("success_rate", "return_mean", "length_mean", "final_reward_mean"):
        assert summary[key] == pytest.approx(float(trained[key])), key
    assert not (out / "videos").exists()


def test_wrong_task_missing_checkpoint_and_output_in_run_are_refused(checkpoint_run, tmp_path):
    proc = run_app("evaluate", f"checkpoint={checkpoint_run}", "task=antmaze_umaze", f"output={tmp_path / 'x'}",
                   *EVAL, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "antmaze_umaze" in proc.stderr and "pointmaze_umaze" in proc.stderr and str(checkpoint_run) in proc.stderr
    assert not (tmp_path / "x").exists()

    step_dir = checkpoint_run / "checkpoints" / "update_000000010"
    for source, output in ((checkpoint_run, checkpoint_run / "eval"), (step_dir, checkpoint_run)):
        proc = run_app("evaluate", f"checkpoint={source}", f"output={output}", *EVAL, check=False)
        assert proc.returncode == 2 and "inside the run directory" in proc.stderr, proc.stderr
    assert not (checkpoint_run / "eval").exists() and not (checkpoint_run / "summary.json").exists()

    proc = run_app("evaluate", f"checkpoint={tmp_path / 'missing'}", *EVAL, check=False)
    assert proc.returncode == 2 and "missing" in proc.stderr and "does not exist" in proc.stderr
    proc = run_app("evaluate", f"checkpoint={tmp_path}", *EVAL, check=False)
    assert proc.returncode == 2 and "no checkpoint found" in proc.stderr


def test_config_seeds_and_help():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["checkpoint=x"])
        assert cfg.seed == 10000 and cfg.eval.seed == 10000 and cfg.eval.episodes == 50 and "task" not in cfg
        cfg = compose(config_name="evaluate", overrides=["checkpoint=x", "seed=20000", "task=pointmaze_umaze"])
        assert cfg.eval.seed == 20000 and cfg.eval.episodes == 50  # the app's defaults win over the task's eval
    proc = run_app("evaluate", "--help")
    assert "checkpoint" in proc.stdout and "video_episodes" in proc.stdout


def test_evaluate_policy_rows_and_per_episode_videos(tmp_path):
    task = OmegaConf.create({"env": {"_target_": "calql_robot.envs.pointmaze.make_pointmaze_env", "maze": "umaze",
                                     "horizon": 5}})
    env = make_task_env(task, seed=0, render=True)
    result = evaluate_policy(env, lambda o: np.zeros(2, np.float32), episodes=3, seed=7, video_episodes=2,
                             video_dir=tmp_path / "videos")
    env.close()
    assert [r["seed"] for r in result["episodes"]] == [7, 8, 9]
    assert [r["length"] for r in result["episodes"]] == [5, 5, 5] and result["success_rate"] == 0.0
    assert result["success_ci95"] == pytest.approx(wilson_interval(0, 3)) and result["video"] is None
    assert [Path(v).name for v in result["videos"]] == ["episode_000_seed_7.mp4", "episode_001_seed_8.mp4"]
    assert result["episodes"][2]["video"] is None
    for video in result["videos"]:
        assert int(cv2.VideoCapture(video).get(cv2.CAP_PROP_FRAME_COUNT)) == 6


def test_wilson_interval_matches_hand_computed_values():
    # 5/10: centre 0.5, half-width 1.96 * sqrt(0.025 + 1.96^2 / 400) / (1 + 1.96^2 / 10)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # 0/50: the upper bound is z^2/n / (1 + z^2/n); the lower bound is exactly 0
    z2n = 1.959963984540054**2 / 50
    assert wilson_interval(0, 50) == (0.0, pytest.approx(z2n / (1 + z2n)))
    assert wilson_interval(0, 50)[1] == pytest.approx(0.0713, abs=1e-4)
    assert wilson_interval(50, 50) == (pytest.approx(1 - z2n / (1 + z2n)), 1.0)
    assert wilson_interval(1, 4) == pytest.approx((0.0456, 0.6994), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(37, 50)
    assert low < 37 / 50 < high and math.isclose(low + high, 2 * (37 / 50 + z2n / 2) / (1 + z2n))
    with pytest.raises(ValueError):
        wilson_interval(4, 3)
