"""Interventions in the deploy loop: the device from ``deploy.intervention``, the demonstration side of the
learner's batch, and the episode.csv columns that say how much a person helped.

The device itself lives on the task side (:mod:`calql_robot.envs.robot.teleop`) and is asked by ``RobotEnv`` each
step; here the deploy loop decides what the learner does with those steps, as HIL-SERL does:

* every episode, interventions included, goes to the online buffer with its Monte-Carlo returns computed over the
  whole episode (the Cal-QL bound then sees the human's successful finish);
* with ``deploy.intervention.demo_buffer: true`` the intervention steps are also added to the offline (demonstration)
  side of the batch (``ReplayBuffer.add_episode(keep=...)``), so they keep their share of every batch as the online
  buffer grows. That needs offline data in RAM (``deploy.mixing_ratio != 0``, a dataset, ``data.lazy: false``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from calql_robot.envs.robot.teleop import InterventionDevice, make_intervention_device
from calql_robot.errors import UserError
from calql_robot.training.replay import ReplayBuffer


def intervention_cfg(cfg: DictConfig) -> dict[str, Any]:
    """The ``deploy.intervention`` block as a plain dict ({kind: none} when the config has none)."""
    block = OmegaConf.select(cfg, "deploy.intervention", default=None)
    return OmegaConf.to_container(block, resolve=True) if block is not None else {"kind": "none"}  # type: ignore


def build_device(cfg: DictConfig, env: Any) -> InterventionDevice:
    """The configured device for ``env`` (a RobotEnv); prints what takes over and when."""
    block = intervention_cfg(cfg)
    device = make_intervention_device(block, env.robot.action_spec, seed=int(cfg.seed))
    if device.name != "none":
        limit = block.get("episodes")
        when = "every episode" if limit is None else f"the first {limit} episodes"
        print(f"interventions: {device.name} may take over in {when} (stored as data/intervention)")
    return device


def demo_buffer_target(cfg: DictConfig, offline: ReplayBuffer | None) -> ReplayBuffer | None:
    """The offline buffer intervention steps also go to, or None; UserError when demo_buffer cannot work."""
    if not bool(intervention_cfg(cfg).get("demo_buffer", False)):
        return None
    if offline is None:
        raise UserError("deploy.intervention.demo_buffer=true adds intervention steps to the offline (demonstration) "
                        "side of the batch, but this run has none: set deploy.mixing_ratio != 0 and a dataset (or "
                        "a checkpoint trained on one), or demo_buffer=false")
    if offline.is_lazy:
        raise UserError("deploy.intervention.demo_buffer=true needs the offline data in RAM (data.lazy=false): a "
                        "lazily read store cannot take new transitions")
    return offline


def add_demo_steps(offline: ReplayBuffer, episode: Mapping[str, Any]) -> int:
    """Add ``episode``'s intervention steps to ``offline``; returns how many."""
    flags = np.asarray(episode.get("interventions", np.zeros(len(episode["actions"]), bool)), dtype=bool)
    if flags.any():
        offline.add_episode(episode["observations"], episode["actions"], episode["rewards"], episode["terminals"],
                            keep=flags)
    return int(flags.sum())


class InterventionStats:
    """Per-episode intervention columns and the run's success with and without interventions."""

    def __init__(self) -> None:
        self.counts = {"with": [0, 0], "without": [0, 0]}  # [episodes, successes]

    def restore(self, saved: Mapping[str, Any] | None) -> None:
        for key in ("with", "without"):
            if saved and isinstance(saved.get(key), list) and len(saved[key]) == 2:
                self.counts[key] = [int(v) for v in saved[key]]

    def state(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.counts.items()}

    def episode(self, episode: Mapping[str, Any]) -> dict[str, float]:
        """episode.csv columns for a finished episode: intervention_steps, intervention_rate, and the running
        success rates of episodes with and without any intervention (NaN while there are none)."""
        flags = np.asarray(episode.get("interventions", np.zeros(len(episode["actions"]), bool)), dtype=bool)
        side = self.counts["with" if flags.any() else "without"]
        side[0] += 1
        side[1] += int(episode["success"])

        def rate(key: str) -> float:
            n, s = self.counts[key]
            return s / n if n else float("nan")

        return {"intervention_steps": int(flags.sum()), "intervention_rate": float(flags.mean()),
                "success_rate_with_intervention": rate("with"), "success_rate_without_intervention": rate("without")}
