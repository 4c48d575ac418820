"""Rewards from a learned classifier in ``deploy`` (``deploy.reward_source=classifier`` / ``classifier_human``, issue 12
point 2).

    reward = ClassifierReward.from_cfg(cfg, device)   # None unless a classifier source; loads and checks the file
    reward.check_obs_spec(env.obs_spec, robot_name)   # before the run directory is written
    reward.attach(env)                                # classifier_human: the env's event source for confirmations
    reward.reset()                                    # at each episode start
    r, terminated, truncated, info = reward.step(obs, r, terminated, truncated, info)   # after each env.step
    logger.log("episode", n, {..., **reward.episode_metrics()})

The robot env is built with ``reward_source="human"`` (:func:`env_reward_source`), so it needs no reward from the
robot; the classifier then decides every step. Once its ``RewardDetector`` fires (probability ``>= threshold`` on
``consecutive`` frames in a row), the step gets ``task.reward_success``, is terminal and ends the episode; every other
step gets ``task.reward_failure``. As with ``reward_source=env``, labels do not count: a success / failure label only
truncates the episode. ``info["env_success"]`` (what a simulator knows) is kept per episode as ``sim_success``
beside the classifier's ``reward_prob_max`` so agreement can be computed from episode.csv.

``classifier_human``: the classifier proposes, a person decides. Labels come from the deploy event source (terminal
keys ``s`` / ``f``, or scripted ``{episode, step, event: success|failure}``, :mod:`calql_robot.envs.robot.human`):

* a **failure** label ends the episode as a failure (``reward_failure``, terminal), also when the classifier fired on
  that step (an overrule: a false success caught);
* a **success** label ends it as a success (``reward_success``, terminal), also when the classifier has not fired
  (an overrule: a missed success);
* when the classifier fires with no label on that step, the episode ends there (terminal) and the reward is not
  final yet: the robot is stopped, a prompt is printed, and the event source is polled for ``s`` / ``f`` for up to
  ``deploy.reward_confirm_timeout_s`` seconds (terminal keys); a scripted source is polled once, for the step index
  after the firing one (``{episode: E, step: N, event: failure}`` overrules a firing on step N - 1). ``f`` turns the
  step into a failure, ``s`` or silence accepts the classifier's success. Other events meanwhile (pause, abort,
  e-stop) go to the env as usual.

The confirmation needs :meth:`ClassifierReward.attach` (the env's event source); unattached, only labels on the
firing step itself overrule. episode.csv gets ``classifier_success`` (the classifier fired), ``human_label``
(1 success, 0 failure, nan none) and ``human_overruled`` (1 when the label changed the classifier's outcome), and
``success`` is the final outcome.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from calql_robot.deployment.reward_classifier import RewardDetector, load_reward_classifier
from calql_robot.envs.robot import human
from calql_robot.errors import UserError

ENV_SOURCES = ("env", "human", "both")
CLASSIFIER_SOURCES = ("classifier", "classifier_human")
REWARD_SOURCES = ENV_SOURCES + CLASSIFIER_SOURCES


def env_reward_source(reward_source: str) -> str:
    """The ``reward_source`` the RobotEnv gets: the classifier sources read the robot like ``human`` does."""
    if reward_source not in REWARD_SOURCES:
        raise UserError(f"deploy.reward_source is {reward_source!r}; expected one of {', '.join(REWARD_SOURCES)} "
                        "(see configs/deploy.yaml)")
    return "human" if reward_source in CLASSIFIER_SOURCES else reward_source


class ClassifierReward:
    """The classifier's reward rule for one deploy run; see the module docstring."""

    def __init__(self, detector: RewardDetector, reward_success: float, reward_failure: float,
                 human_confirms: bool = False, confirm_timeout_s: float = 5.0) -> None:
        if detector.classifier is None:
            raise ValueError("ClassifierReward needs a detector built with RewardDetector.for_classifier")
        self.detector, self.classifier = detector, detector.classifier
        self.reward_success, self.reward_failure = float(reward_success), float(reward_failure)
        self.human_confirms, self.confirm_timeout_s = bool(human_confirms), float(confirm_timeout_s)
        self.env: Any = None
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
        timeout = dcfg.get("reward_confirm_timeout_s", 5.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf:
            raise UserError(f"deploy.reward_confirm_timeout_s is {timeout!r}; expected seconds >= 0 (how long "
                            "classifier_human waits for s / f after the classifier fires; 0 = no wait)")
        classifier = load_reward_classifier(str(path), device)
        detector = RewardDetector.for_classifier(classifier, consecutive=consecutive, threshold=threshold)
        return cls(detector, float(cfg.task.reward_success), float(cfg.task.reward_failure),
                   human_confirms=source == "classifier_human", confirm_timeout_s=float(timeout))

    def attach(self, env: Any) -> None:
        """Use ``env``'s event source (a :class:`~calql_robot.envs.robot.robot_env.RobotEnv`: ``events``, ``episode``,
        ``step_count``, ``robot``) to ask for confirmation when the classifier fires (classifier_human only)."""
        self.env = env

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
        line = (f"rewards from the classifier {self.classifier.source}: success once p >= "
                f"{self.detector.threshold:g} on {self.detector.consecutive} consecutive frames")
        if self.human_confirms:
            line += (f"; a person confirms (s) or overrules (f) each success within {self.confirm_timeout_s:g} s "
                     "(silence accepts), and a success label counts when the classifier misses one")
        return line

    def reset(self) -> None:
        """Start an episode: a fresh detector and no probabilities yet."""
        self.detector.reset()
        self.probs: list[float] = []
        self.sim_success: bool | None = None
        self.fired = False
        self.human_label: str | None = None

    def step(self, obs: Mapping[str, Any], reward: float, terminated: bool, truncated: bool,
             info: dict[str, Any]) -> tuple[float, bool, bool, dict[str, Any]]:
        """The step's (reward, terminated, truncated, info) decided by the classifier on the new observation."""
        fired = self.detector.observe(obs)
        prob = float(self.detector.last_prob)  # type: ignore[arg-type]
        self.probs.append(prob)
        if info.get("env_success") is not None:
            self.sim_success = bool(self.sim_success) or bool(info["env_success"])
        self.fired = fired
        if self.human_confirms:
            return self._human_step(fired, prob, truncated, terminated, info)
        info = {**info, "success": fired, "failure": False, "reward_prob": prob}
        if fired:
            return self.reward_success, True, False, info
        # not fired: a label (which ended the human-mode env) only truncates, as with reward_source=env
        return self.reward_failure, False, bool(truncated or terminated), info

    def _human_step(self, fired: bool, prob: float, truncated: bool, terminated: bool,
                    info: dict[str, Any]) -> tuple[float, bool, bool, dict[str, Any]]:
        """classifier_human: a label decides; a firing without one waits for confirmation (module docstring)."""
        label = info.get("label") if info.get("label") in (human.SUCCESS, human.FAILURE) else None
        if fired and label is None:
            label = self.confirm(prob)
        self.human_label = label
        success = label == human.SUCCESS if label is not None else fired
        info = {**info, "success": success, "failure": label == human.FAILURE, "reward_prob": prob,
                "classifier_success": fired, "human_overruled": label is not None and success != fired}
        if success:
            return self.reward_success, True, False, info
        if label == human.FAILURE:
            return self.reward_failure, True, False, info
        return self.reward_failure, False, bool(truncated or terminated), info

    def confirm(self, prob: float) -> str | None:
        """After the classifier fired: the label a person gives (``"success"`` / ``"failure"``) within the timeout,
        or None (accept). Scripted sources are polled once, for the step after the firing one."""
        env = self.env
        if env is None:
            return None
        episode, step = int(env.episode), int(env.step_count)
        scripted = isinstance(env.events, human.ScriptedEvents)
        env.robot.stop()  # nothing moves while the person looks
        if not scripted:
            print(f"\nclassifier: success in episode {episode} at step {step} (p={prob:.3f}); press s to confirm or f "
                  f"to overrule (accepted in {self.confirm_timeout_s:g} s)", file=sys.stderr, flush=True)
        deadline = time.monotonic() + self.confirm_timeout_s
        while True:
            label = None
            for event in env.events.poll(episode, step):
                if event.kind in (human.SUCCESS, human.FAILURE):
                    label = event.kind
                else:
                    env.handle_events([event])  # pause / abort / e-stop as during a step
            if label is not None or scripted or env.aborted or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if not scripted:
            said = {None: "no answer: accepted", human.SUCCESS: "confirmed", human.FAILURE: "overruled: failure"}
            print(f"classifier success {said[label]}", file=sys.stderr, flush=True)
        return label

    def episode_metrics(self) -> dict[str, float]:
        """episode.csv columns: the highest and last probability, and the simulator's success (nan if unknown);
        with classifier_human also ``classifier_success``, ``human_label`` (1 / 0 / nan) and ``human_overruled``."""
        out = {"reward_prob_max": max(self.probs, default=math.nan),
               "reward_prob_last": self.probs[-1] if self.probs else math.nan,
               "sim_success": math.nan if self.sim_success is None else float(self.sim_success)}
        if self.human_confirms:
            label = self.human_label
            out.update({"classifier_success": float(self.fired),
                        "human_label": math.nan if label is None else float(label == human.SUCCESS),
                        "human_overruled": float(label is not None and (label == human.SUCCESS) != self.fired)})
        return out
