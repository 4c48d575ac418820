"""deploy with ``deploy.reward_source=classifier`` (issue 12, point 2): a classifier trained here on a tiny store of the
sim robot's camera decides the rewards, episode.csv gets its probability and the simulator's success beside it, and
a missing or mismatched classifier is refused before the run directory exists."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import time
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


FAST = [a for a in SMALL if not a.startswith(("steps=", "log_every="))] + ["steps=10", "log_every=5"]


def train_classifier(root: Path, spec: dict | None, rollouts: bool = False) -> Path:
    """A classifier on a 6-episode store; with ``rollouts`` also on a second 4-episode store (``extra_datasets``)."""
    store = make_store(root / "frames.zarr", [i % 2 == 0 for i in range(6)], spec=spec, steps=4)
    extra = []
    if rollouts:
        second = make_store(root / "rollouts.zarr", [False, False, True, False], spec=spec, steps=4)
        extra = [f"extra_datasets=[{second}]"]
    out = root / "classifier"
    run_train_reward_classifier(config(f"dataset={store}", f"output={out}", "val_fraction=0.34", *extra, *FAST))
    return out


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict[str, Path]:
    """One classifier on the sim's 32 px agentview camera, one on a 16 px front camera the sim does not have."""
    root = tmp_path_factory.mktemp("classifiers")
    (root / "sim").mkdir()
    (root / "other").mkdir()
    return {"sim": train_classifier(root / "sim", SIM_CAMERA, rollouts=True),
            "other": train_classifier(root / "other", None)}


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


def human_rule(classifier_dir: Path, threshold: float, events, timeout_s: float = 5.0) -> ClassifierReward:
    """classifier_human on a real RobotEnv (the point robot) whose event source the rule polls for confirmation."""
    from calql_robot.envs.robot.point_robot import PointRobot
    from calql_robot.envs.robot.robot_env import RobotEnv

    detector = RewardDetector.for_classifier(load_reward_classifier(classifier_dir), threshold=threshold,
                                             consecutive=1)
    rule = ClassifierReward(detector, 5.0, -1.0, human_confirms=True, confirm_timeout_s=timeout_s)
    env = RobotEnv(PointRobot(), horizon=10, events=events, reward_source="human")
    env.reset(seed=0)
    rule.attach(env)
    rule.reset()
    return rule


OBS = {"agentview_rgb": np.zeros((32, 32, 3), np.uint8)}
NO_LABEL = {"label": None, "env_success": False, "success": False}


@pytest.mark.parametrize("script,expected", [
    ([], (5.0, True, 1.0, math.nan, 0.0)),                                          # silence accepts
    ([{"episode": 0, "step": 1, "event": "failure"}], (-1.0, False, 1.0, 0.0, 1.0)),  # f after the firing step
    ([{"episode": 0, "step": 1, "event": "success"}], (5.0, True, 1.0, 1.0, 0.0)),    # s confirms
    ([{"episode": 1, "step": 1, "event": "failure"}], (5.0, True, 1.0, math.nan, 0.0))])  # another episode's label
def test_classifier_human_asks_for_confirmation_when_the_classifier_fires(classifiers, script, expected) -> None:
    from calql_robot.envs.robot.human import ScriptedEvents

    rule = human_rule(classifiers["sim"], 0.0, ScriptedEvents(script))
    rule.env.step(np.zeros(rule.env.action_space.shape, np.float32))  # step 0 done: the next poll is step 1
    reward, terminated, truncated, info = rule.step(OBS, 0.0, False, False, NO_LABEL)
    metrics = rule.episode_metrics()
    got = (reward, info["success"], metrics["classifier_success"], metrics["human_label"], metrics["human_overruled"])
    assert got[:3] == expected[:3] and terminated and not truncated  # the episode ends either way
    assert (math.isnan(got[3]) and math.isnan(expected[3])) or got[3] == expected[3]
    assert got[4] == expected[4] and info["human_overruled"] == bool(expected[4])


def test_classifier_human_labels_overrule_a_missed_success_and_end_failures(classifiers) -> None:
    from calql_robot.envs.robot.human import ScriptedEvents

    rule = human_rule(classifiers["sim"], 1.0, ScriptedEvents([]))  # threshold 1.0: the classifier never fires
    assert rule.step(OBS, 0.0, False, False, NO_LABEL)[:3] == (-1.0, False, False)
    reward, terminated, truncated, info = rule.step(OBS, 5.0, True, False, {**NO_LABEL, "label": "success"})
    assert (reward, terminated, truncated, info["success"]) == (5.0, True, False, True)
    assert rule.episode_metrics()["human_overruled"] == 1.0 and rule.episode_metrics()["classifier_success"] == 0.0
    rule.reset()
    reward, terminated, truncated, info = rule.step(OBS, -1.0, True, False, {**NO_LABEL, "label": "failure"})
    assert (reward, terminated, info["success"], info["failure"]) == (-1.0, True, False, True)
    assert rule.episode_metrics()["human_overruled"] == 0.0  # the classifier did not fire either: they agree
    firing = human_rule(classifiers["sim"], 0.0, ScriptedEvents([]))
    reward, terminated, _, info = firing.step(OBS, -1.0, True, False, {**NO_LABEL, "label": "failure"})
    assert (reward, terminated, info["classifier_success"], info["human_overruled"]) == (-1.0, True, True, True)


def test_classifier_human_waits_for_a_key_then_accepts(classifiers) -> None:
    from calql_robot.envs.robot.human import TerminalEvents

    read, write = os.pipe()
    with os.fdopen(read) as stream:
        events = TerminalEvents(stream, echo_help=False)
        rule = human_rule(classifiers["sim"], 0.0, events, timeout_s=0.3)
        started = time.monotonic()
        assert rule.step(OBS, 0.0, False, False, NO_LABEL)[0] == 5.0  # no key: accepted after the timeout
        assert time.monotonic() - started >= 0.3 and rule.episode_metrics()["human_overruled"] == 0.0
        rule.confirm_timeout_s = 5.0
        rule.reset()
        os.write(write, b"f")  # the person overrules within the wait
        started = time.monotonic()
        assert rule.step(OBS, 0.0, False, False, NO_LABEL)[:2] == (-1.0, True)
        assert time.monotonic() - started < 4.0 and rule.episode_metrics()["human_overruled"] == 1.0
        events.close()
    os.close(write)


def test_classifier_human_config_is_checked(classifiers) -> None:
    from omegaconf import OmegaConf

    from calql_robot.errors import UserError

    def cfg(**deploy):
        base = {"reward_source": "classifier_human", "reward_classifier": str(classifiers["sim"])}
        return OmegaConf.create({"deploy": {**base, **deploy}, "task": {"reward_success": 1.0, "reward_failure": 0.0}})

    rule = ClassifierReward.from_cfg(cfg(reward_confirm_timeout_s=2))
    assert rule.human_confirms and rule.confirm_timeout_s == 2.0 and "a person confirms (s)" in rule.describe()
    with pytest.raises(UserError, match="reward_confirm_timeout_s"):
        ClassifierReward.from_cfg(cfg(reward_confirm_timeout_s=-1))


def test_train_on_extra_stores_of_policy_rollouts(classifiers, tmp_path) -> None:
    """extra_datasets (the sim classifier of the fixture): a second store (e.g. a deploy run's online.zarr) labelled by
    its own rewards, split with the first; held-out scores per store; a store with other cameras, a missing store or
    a value that is not a list is refused before anything is written."""
    import json

    from calql_robot.errors import UserError

    out = classifiers["sim"]
    main, rollouts = out.parent / "frames.zarr", out.parent / "rollouts.zarr"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["episodes"]["episodes"] == len(metrics["held_out_episodes"]) >= 3
    assert set(metrics["by_store"]) == {str(main), str(rollouts)}
    assert any(e >= 6 for e in metrics["held_out_episodes"])  # some held-out episodes come from the rollouts
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["training"]["extra_datasets"] == [str(rollouts)] and meta["consecutive"] == 3
    other = classifiers["other"].parent / "frames.zarr"  # a 16 px front camera only
    for extra, message in ((other, "for camera 'agentview_rgb'"), (tmp_path / "nowhere.zarr", "no such store"),
                           ("3", "must be null or a list")):
        value = extra if extra == "3" else f"[{extra}]"
        with pytest.raises(UserError, match=message):
            run_train_reward_classifier(config(f"dataset={main}", f"extra_datasets={value}",
                                               f"output={tmp_path / 'refused'}", *FAST))
        assert not (tmp_path / "refused").exists()
