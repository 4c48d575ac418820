"""Recording one episode step by step into the arrays ``DatasetWriter.add_episode`` takes.

Used by the scripted data generators (task side) and by online fine-tuning and deployment (method side), so that
every episode written anywhere has the same layout: N+1 observations, N actions, rewards, terminal and truncated
flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class EpisodeRecorder:
    """Accumulates one episode; :meth:`finish` returns it as arrays.

    Output keys: ``observations`` {key: (N+1, ...)}, ``actions`` (N, A) float32, ``rewards`` (N,) float32,
    ``terminals`` (N,) bool, ``truncations`` (N,) bool, ``interventions`` (N,) bool (the step's action came from a
    person or scripted intervener, not the policy), and ``success`` (bool: any step reported success).
    Float64 observations are stored as float32 (the dataset format's low-dim dtype).
    """

    def __init__(self) -> None:
        self.obs: list[Mapping[str, np.ndarray]] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terminals: list[bool] = []
        self.truncations: list[bool] = []
        self.interventions: list[bool] = []
        self.success = False

    def start(self, obs: Mapping[str, np.ndarray]) -> None:
        """Begin a new episode with its first observation."""
        self.__init__()
        self.obs.append({k: np.array(v) for k, v in obs.items()})

    def step(self, next_obs: Mapping[str, np.ndarray], action: np.ndarray, reward: float, terminated: bool,
             truncated: bool, success: bool = False, intervention: bool = False) -> None:
        """Record one transition: the action taken, what it led to, whether the step succeeded and whether a person
        (not the policy) chose the action."""
        self.obs.append({k: np.array(v) for k, v in next_obs.items()})
        self.actions.append(np.asarray(action, dtype=np.float32))
        self.rewards.append(float(reward))
        self.terminals.append(bool(terminated))
        self.truncations.append(bool(truncated))
        self.interventions.append(bool(intervention))
        self.success = self.success or bool(success)

    def __len__(self) -> int:
        return len(self.actions)

    def finish(self) -> dict[str, Any]:
        """The episode as arrays; an episode cut before it terminated or truncated is marked truncated at its end."""
        if not self.actions:
            raise RuntimeError("an episode needs at least one step before it can be finished")
        truncations = list(self.truncations)
        if not (self.terminals[-1] or truncations[-1]):
            truncations[-1] = True

        def stack(key: str) -> np.ndarray:
            values = np.stack([o[key] for o in self.obs])
            return values.astype(np.float32) if values.dtype == np.float64 else values

        return {
            "observations": {k: stack(k) for k in self.obs[0]},
            "actions": np.stack(self.actions).astype(np.float32),
            "rewards": np.asarray(self.rewards, dtype=np.float32),
            "terminals": np.asarray(self.terminals, dtype=bool),
            "truncations": np.asarray(truncations, dtype=bool),
            "interventions": np.asarray(self.interventions, dtype=bool),
            "success": bool(self.success),
        }


def writer_fields(episode: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``DatasetWriter.add_episode`` from a finished episode (``interventions`` when the
    episode records them)."""
    fields = {k: episode[k] for k in ("observations", "actions", "rewards", "terminals", "truncations")}
    if episode.get("interventions") is not None:
        fields["interventions"] = episode["interventions"]
    return fields
