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
    store's bounds are -1 / +1 and it carries the scaling as its ``action_scaling`` attribute. ``step_extensions``
    (e.g. ``("intervention",)`` for deploy) adds those optional per-step arrays to a new store.
    """

    def __init__(self, path: Path, obs_spec: Mapping[str, Any], action_space: gym.spaces.Box,
                 task_cfg: Mapping[str, Any], source_kind: str = "online_finetune",
                 action_scaling: Mapping[str, Any] | None = None, step_extensions: tuple[str, ...] = ()):
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
                step_extensions=tuple(step_extensions),
            )


    def append(self, episode: Mapping[str, Any]) -> None:
        self.writer.add_episode(**writer_fields(episode))

    def load_into(self, buffer: ReplayBuffer, counters: dict[str, int],
                  demo_buffer: ReplayBuffer | None = None) -> list[dict[str, Any]]:
        """Add every stored episode to ``buffer``; count those past ``counters["episodes"]`` into ``counters``.

        ``counters`` (episodes, env_steps, successes) come from the last checkpoint; episodes the store holds beyond
        it finished after that checkpoint (e.g. before a crash): they are kept and counted once. ``demo_buffer``
        also gets each episode's intervention steps. Returns, for the episodes counted here, ``{"actions",
        "interventions", "success"}`` (so per-episode statistics can be brought up to date too).
        """
        from calql_robot.datasets.format import ZarrDataset

        dataset = ZarrDataset(self.path)
        late = []
        for i in range(dataset.n_episodes):
            ep = dataset.episode(i)
            buffer.add_episode(ep["obs"], ep["action"], ep["reward"], ep["terminal"])
            flags = np.asarray(ep.get("intervention", np.zeros(len(ep["action"]), bool)), dtype=bool)
            if demo_buffer is not None and flags.any():
                demo_buffer.add_episode(ep["obs"], ep["action"], ep["reward"], ep["terminal"], keep=flags)
            if i >= counters["episodes"]:
                success = bool(np.any(ep["reward"] >= self.reward_success))
                counters["episodes"] += 1
                counters["env_steps"] += len(ep["action"])
                counters["successes"] += int(success)
                late.append({"actions": ep["action"], "interventions": flags, "success": success})
        return late

    def close(self) -> None:
        self.writer.close()
