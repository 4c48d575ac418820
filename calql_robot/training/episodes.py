"""The run's online zarr store: finished episodes appended as they end (complete episodes only)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from calql_robot.datasets.episode_recorder import EpisodeRecorder, writer_fields
from calql_robot.training.replay import ReplayBuffer

__all__ = ["EpisodeRecorder", "OnlineStore"]


class OnlineStore:
    """The run's ``online.zarr``: finished episodes appended as they end; a valid dataset for a later pretrain.

    With ``action_scaling`` (a policy trained on normalised actions) the episodes hold the policy's actions: the
    store's bounds are -1 / +1 and it carries the scaling as its ``action_scaling`` attribute.
    """

    def __init__(self, path: Path, obs_spec: Mapping[str, Any], action_space: gym.spaces.Box,
                 task_cfg: Mapping[str, Any], source_kind: str = "online_finetune",
                 action_scaling: Mapping[str, Any] | None = None):
        from calql_robot.datasets.format import DatasetWriter

        self.path = Path(path)
        self.reward_success = float(task_cfg.get("reward_success", 1.0))
        if self.path.exists():
            self.writer = DatasetWriter.open(self.path)
        else:
            low, high = np.asarray(action_space.low, dtype=np.float32), np.asarray(action_space.high, dtype=np.float32)
            if action_scaling is not None:
                low, high = -np.ones_like(low), np.ones_like(high)
            self.writer = DatasetWriter.create(
                self.path, dict(obs_spec), low, high, task=str(task_cfg.get("name")),
                control_freq=float(task_cfg.get("control_freq", 10.0)),
                reward_success=self.reward_success, reward_failure=float(task_cfg.get("reward_failure", 0.0)),
                source={"kind": source_kind}, action_scaling=None if action_scaling is None else dict(action_scaling),
            )


    def append(self, episode: Mapping[str, Any]) -> None:
        self.writer.add_episode(**writer_fields(episode))

    def load_into(self, buffer: ReplayBuffer, counters: dict[str, int]) -> None:
        """Add every stored episode to ``buffer``; count those past ``counters["episodes"]`` into ``counters``.

        ``counters`` (episodes, env_steps, successes) come from the last checkpoint; episodes the store holds beyond
        it finished after that checkpoint (e.g. before a crash): they are kept and counted once.
        """
        from calql_robot.datasets.format import ZarrDataset

        dataset = ZarrDataset(self.path)
        for i in range(dataset.n_episodes):
            ep = dataset.episode(i)
            buffer.add_episode(ep["obs"], ep["action"], ep["reward"], ep["terminal"])
            if i >= counters["episodes"]:
                counters["episodes"] += 1
                counters["env_steps"] += len(ep["action"])
                counters["successes"] += int(np.any(ep["reward"] >= self.reward_success))

    def close(self) -> None:
        self.writer.close()
