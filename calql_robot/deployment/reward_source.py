"""Rewards from a learned classifier in ``deploy`` (``deploy.reward_source=classifier``, issue 12 point 2).

    reward = ClassifierReward.from_cfg(cfg, device)   # None unless reward_source=classifier; loads and checks the file
    reward.check_obs_spec(env.obs_spec, robot_name)   # before the run directory is written
    reward.reset()                                    # at each episode start
    r, terminated, truncated, info = reward.step(obs, r, terminated, truncated, info)   # after each env.step
    logger.log("episode", n, {..., **reward.episode_metrics()})

The robot env is built with ``reward_source="human"`` (:func:`env_reward_source`), so it needs no reward from the
robot; the classifier then decides every step. Once its ``RewardDetector`` fires (probability ``>= threshold`` on
``consecutive`` frames in a row), the step gets ``task.reward_success``, is terminal and ends the episode; every other
step gets ``task.reward_failure``. As with ``reward_source=env``, labels do not count: a success / failure label only
truncates the episode. ``info["env_success"]`` (what a simulator knows) is kept per episode as ``sim_success``
beside the classifier's ``reward_prob_max`` so agreement can be computed from episode.csv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from calql_robot.deployment.reward_classifier import RewardDetector, load_reward_classifier
from calql_robot.errors import UserError

ENV_SOURCES = ("env", "human", "both")
CLASSIFIER_SOURCES = ("classifier",)
REWARD_SOURCES = ENV_SOURCES + CLASSIFIER_SOURCES


def env_reward_source(reward_source: str) -> str:
    """The ``reward_source`` the RobotEnv gets: the classifier sources read the robot like ``human`` does."""
    if reward_source not in REWARD_SOURCES:
        raise UserError(f"deploy.reward_source is {reward_source!r}; expected one of {', '.join(REWARD_SOURCES)} "
                        "(see configs/deploy.yaml)")
    return "human" if reward_source in CLASSIFIER_SOURCES else reward_source


class ClassifierReward:
    """The classifier's reward rule for one deploy run; see the module docstring."""

    def __init__(self, detector: RewardDetector, reward_success: float, reward_failure: float) -> None:
        if detector.classifier is None:
            raise ValueError("ClassifierReward needs a detector built with RewardDetector.for_classifier")
        self.detector, self.classifier = detector, detector.classifier
        self.reward_success, self.reward_failure = float(reward_success), float(reward_failure)
        self.reset()

    @classmethod
    def from_cfg(cls, cfg: DictConfig, device: torch.device | str = "cpu") -> ClassifierReward | None:
        """Load ``deploy.reward_classifier`` for the classifier sources; None for env / human / both."""
        dcfg = cfg.deploy
        source = str(dcfg.reward_source)
        env_reward_source(source)  # refuses an unknown source
        path = dcfg.get("reward_classifier")
        if source not in CLASSIFIER_SOURCES:
            if path is not None:
                raise UserError(f"deploy.reward_classifier={path} is set but deploy.reward_source={source} does not "
                                "use it; give deploy.reward_source=classifier, or deploy.reward_classifier=null")
            return None
        if path is None or not str(path).strip():
            raise UserError(f"deploy.reward_source={source} needs deploy.reward_classifier=PATH, the output folder of "
                            "python -m calql_robot.train_reward_classifier (classifier.json + classifier.safetensors)")
        threshold, consecutive = dcfg.get("reward_threshold"), dcfg.get("reward_consecutive")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise UserError(f"deploy.reward_threshold is {threshold!r}; expected a probability in [0, 1] or null "
                            "(the value stored in classifier.json)")
        if consecutive is not None and (isinstance(consecutive, bool) or not isinstance(consecutive, int)):
            raise UserError(f"deploy.reward_consecutive is {consecutive!r}; expected a whole number of frames >= 1 "
                            "or null (the value stored in classifier.json)")
        classifier = load_reward_classifier(str(path), device)
        detector = RewardDetector.for_classifier(classifier, consecutive=consecutive, threshold=threshold)
        return cls(detector, float(cfg.task.reward_success), float(cfg.task.reward_failure))

    def check_obs_spec(self, obs_spec: Mapping[str, Mapping[str, Any]], robot_name: str) -> None:
        """Refuse a classifier whose cameras or image shapes are not in the robot's observation spec."""
        for key in self.classifier.cameras:
            want = self.classifier.obs_spec[key]
            have = obs_spec.get(key)
            if have is None:
                raise UserError(f"reward classifier {self.classifier.source} reads camera {key!r}, which robot "
                                f"'{robot_name}' does not have (its observations: {sorted(obs_spec)}); train the "
                                "classifier on a store recorded with this robot's cameras")
            if [int(s) for s in have["shape"]] != [int(s) for s in want["shape"]] or str(have["dtype"]) != "uint8":
                raise UserError(f"reward classifier {self.classifier.source} expects {key!r} as uint8 images of shape "
                                f"{list(want['shape'])}, but robot '{robot_name}' gives {have['dtype']} "
                                f"{list(have['shape'])}; train the classifier on images of the robot's size")

    def describe(self) -> str:
        """One line for the log: which classifier and rule decide the rewards."""
        return (f"rewards from the classifier {self.classifier.source}: success once p >= "
                f"{self.detector.threshold:g} on {self.detector.consecutive} consecutive frames")

    def reset(self) -> None:
        """Start an episode: a fresh detector and no probabilities yet."""
        self.detector.reset()
        self.probs: list[float] = []
        self.sim_success: bool | None = None

    def step(self, obs: Mapping[str, Any], reward: float, terminated: bool, truncated: bool,
             info: dict[str, Any]) -> tuple[float, bool, bool, dict[str, Any]]:
        """The step's (reward, terminated, truncated, info) decided by the classifier on the new observation."""
        fired = self.detector.observe(obs)
        prob = float(self.detector.last_prob)  # type: ignore[arg-type]
        self.probs.append(prob)
        if info.get("env_success") is not None:
            self.sim_success = bool(self.sim_success) or bool(info["env_success"])
        info = {**info, "success": fired, "failure": False, "reward_prob": prob}
        if fired:
            return self.reward_success, True, False, info
        # not fired: a label (which ended the human-mode env) only truncates, as with reward_source=env
        return self.reward_failure, False, bool(truncated or terminated), info

    def episode_metrics(self) -> dict[str, float]:
        """episode.csv columns: the highest and last probability, and the simulator's success (nan if unknown)."""
        return {"reward_prob_max": max(self.probs, default=math.nan),
                "reward_prob_last": self.probs[-1] if self.probs else math.nan,
                "sim_success": math.nan if self.sim_success is None else float(self.sim_success)}
