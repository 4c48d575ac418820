"""Learning beside acting: a learner thread updates the agent while the actor drives the robot.

The actor never waits on a gradient step: it acts with a :class:`PolicySnapshot` (its own copy of the encoder and
actor networks) that is refreshed from the learner every ``sync_every_s`` seconds. Finished episodes reach the
learner's online buffer through :meth:`BackgroundLearner.add_episode`, under a lock.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from calql_robot.training.replay import MixedSampler, ReplayBuffer, batch_to_torch


class PolicySnapshot:
    """A CPU copy of the agent's encoder and actor used for acting: obs {k: array} -> action (A,)."""

    def __init__(self, agent: Any, seed: int = 0):
        self.obs_spec = dict(agent.obs_spec)
        self.encoder = copy.deepcopy(agent.encoder).to("cpu").eval()
        self.actor = copy.deepcopy(agent.actor).to("cpu").eval()
        self.generator = torch.Generator().manual_seed(seed)
        self.version = 0

    def load_from(self, agent: Any) -> None:
        """Copy the agent's current encoder and actor weights (call with the learner's lock held)."""
        self.encoder.load_state_dict({k: v.detach().cpu() for k, v in agent.encoder.state_dict().items()})
        self.actor.load_state_dict({k: v.detach().cpu() for k, v in agent.actor.state_dict().items()})
        self.version += 1

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        from calql_robot.agent.actor import TanhGaussianActor

        batch = {k: torch.as_tensor(np.asarray(obs[k])).unsqueeze(0) for k in self.obs_spec}
        with torch.no_grad():
            mean, log_std = self.actor(self.encoder(batch, augment=False))
            if deterministic:
                action = TanhGaussianActor.deterministic(mean)
            else:
                action = TanhGaussianActor.sample(mean, log_std, 1, self.generator)[0][0]
        return action[0].numpy().astype(np.float32)


class BackgroundLearner:
    """Runs ``agent.update`` on mixed offline/online batches in a daemon thread.

    ``max_utd`` caps gradient updates per collected online transition (None: as fast as it can); no update runs
    before ``min_online`` online transitions exist, so the pre-trained policy is not changed before real data.
    """

    def __init__(self, agent: Any, offline: ReplayBuffer | None, online: ReplayBuffer, mixing_ratio: float,
                 batch_size: int, device: torch.device, max_utd: float | None = 1.0, min_online: int = 1,
                 seed: int = 0, on_metrics: Any = None):
        self.agent, self.online, self.device = agent, online, device
        self.sampler = MixedSampler(offline, online, mixing_ratio, seed=seed)
        self.batch_size, self.max_utd, self.min_online = batch_size, max_utd, min_online
        self.lock = threading.Lock()
        self.updates = 0
        self.metrics: dict[str, float] = {}
        self.on_metrics = on_metrics
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calql-learner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def add_episode(self, episode: Mapping[str, Any]) -> None:
        """Add a finished episode (obs (N+1, ...), action, reward, terminal) to the online buffer."""
        with self.lock:
            self.online.add_episode(episode["obs"], episode["action"], episode["reward"], episode["terminal"])

    def sync(self, policy: PolicySnapshot) -> None:
        with self.lock:
            policy.load_from(self.agent)

    def _may_update(self) -> bool:
        n_online = len(self.online)
        if n_online < self.min_online:
            return False
        return self.max_utd is None or self.updates < self.max_utd * n_online

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self.lock:
                    ready = self._may_update()
                    batch = self.sampler.sample(self.batch_size) if ready else None
                if batch is None:
                    time.sleep(0.01)
                    continue
                tensors = batch_to_torch(batch, self.device)
                with self.lock:
                    metrics = self.agent.update(tensors)
                    self.updates += 1
                    self.metrics = metrics
                if self.on_metrics is not None:
                    self.on_metrics(self.updates, metrics)
        except BaseException as err:  # surfaced to the acting loop, which stops the robot and reports
            self.error = err
