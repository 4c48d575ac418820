"""deploy with ``deploy.reward_source=classifier`` (issue 12, point 2): a classifier trained here on a tiny store of the
sim robot's camera decides the rewards, episode.csv gets its probability and the simulator's success beside it, and
a missing or mismatched classifier is refused before the run directory exists."""

from __future__ import annotations

import csv
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_deploy import app_cmd, checkpoint, deploy_args, run  # noqa: F401 - checkpoint is a fixture used below
from test_reward_classifier import SMALL, config, make_store

from calql_robot.deployment.reward_classifier import RewardDetector, load_reward_classifier
from calql_robot.deployment.reward_source import ClassifierReward
from calql_robot.training.reward_classifier import run_train_reward_classifier

SIM_CAMERA = {"agentview_rgb": {"shape": [32, 32, 3], "dtype": "uint8", "kind": "rgb"},
              "eef": {"shape": [3], "dtype": "float32", "kind": "low_dim"}}  # make_store writes eef too


def train_classifier(root: Path, spec: dict | None) -> Path:
    store = make_store(root / "frames.zarr", [i % 2 == 0 for i in range(6)], spec=spec, steps=4)
    out = root / "classifier"
    fast = [a for a in SMALL if not a.startswith(("steps=", "log_every="))] + ["steps=10", "log_every=5"]
    run_train_reward_classifier(config(f"dataset={store}", f"output={out}", "val_fraction=0.34", *fast))
    return out


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict[str, Path]:
    """One classifier on the sim's 32 px agentview camera, one on a 16 px front camera the sim does not have."""
    root = tmp_path_factory.mktemp("classifiers")
    (root / "sim").mkdir()
    (root / "other").mkdir()
    return {"sim": train_classifier(root / "sim", SIM_CAMERA), "other": train_classifier(root / "other", None)}


def refused(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(app_cmd("deploy", *args), capture_output=True, text=True, env=env, timeout=300)


def test_deploy_with_classifier_rewards_records_probabilities(checkpoint, classifiers, tmp_path):  # noqa: F811
    run_dir = tmp_path / "dep"
    out = run("deploy", *deploy_args(checkpoint, run_dir, 2), "deploy.reward_source=classifier",
              f"deploy.reward_classifier={classifiers['sim']}", "deploy.reward_consecutive=3")
    assert "episodes: 2" in out
    assert f"rewards from the classifier {classifiers['sim']}: success once p >= 0.5 on 3 consecutive frames" in out
    with (run_dir / "episode.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert 0.0 <= float(row["reward_prob_last"]) <= float(row["reward_prob_max"]) <= 1.0
        assert float(row["sim_success"]) in (0.0, 1.0)  # the simulator knows success, so it is logged beside
        # the success column is the classifier's decision: it fired, or the episode ran to the horizon
        assert float(row["success"]) == 1.0 or int(row["length"]) == 12


@pytest.mark.parametrize("case", ["missing", "other_camera", "no_path"])
def test_deploy_refuses_a_missing_or_mismatched_classifier(checkpoint, classifiers, tmp_path, case):  # noqa: F811
    run_dir = tmp_path / "dep"
    path = {"missing": str(tmp_path / "nowhere"), "other_camera": str(classifiers["other"]), "no_path": "null"}[case]
    proc = refused(*deploy_args(checkpoint, run_dir, 1), "deploy.reward_source=classifier",
                   f"deploy.reward_classifier={path}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    message = " ".join((proc.stdout + proc.stderr).split())
    expected = {"missing": "nowhere", "other_camera": "reads camera 'front_rgb'",
                "no_path": "needs deploy.reward_classifier=PATH"}[case]
    assert expected in message
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_classifier_decides_reward_and_labels_only_truncate(classifiers) -> None:
    classifier = load_reward_classifier(classifiers["sim"])
    obs = {"agentview_rgb": np.zeros((32, 32, 3), np.uint8)}
    info = {"label": None, "env_success": True, "success": False}
    always = ClassifierReward(RewardDetector.for_classifier(classifier, threshold=0.0, consecutive=2), 5.0, -1.0)
    assert always.step(obs, 0.0, False, False, info)[:3] == (-1.0, False, False)  # one frame is not enough
    reward, terminated, truncated, out = always.step(obs, 0.0, False, False, info)
    assert (reward, terminated, truncated, out["success"]) == (5.0, True, False, True)
    metrics = always.episode_metrics()
    assert metrics["sim_success"] == 1.0 and 0.0 <= metrics["reward_prob_max"] <= 1.0
    never = ClassifierReward(RewardDetector.for_classifier(classifier, threshold=1.0, consecutive=1), 5.0, -1.0)
    labelled = {"label": "success", "env_success": None, "success": True}  # the human-mode env ended the episode
    reward, terminated, truncated, out = never.step(obs, 5.0, True, False, labelled)
    assert (reward, terminated, truncated, out["success"]) == (-1.0, False, True, False)
    assert math.isnan(never.episode_metrics()["sim_success"])
    never.reset()
    assert math.isnan(never.episode_metrics()["reward_prob_max"])
