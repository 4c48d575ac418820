"""Learning beside acting: a learner thread updates the agent while the actor drives the robot.

The actor never waits on a gradient step: it acts with a :class:`PolicySnapshot` (its own copy of the encoder and
actor networks) that is refreshed from the learner every ``sync_every_s`` seconds. Finished episodes reach the
learner's online buffer through :meth:`BackgroundLearner.add_episode`, under a lock.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from calql_robot.deployment.interventions import add_demo_steps
from calql_robot.training.replay import MixedSampler, ReplayBuffer, batch_to_torch


class PolicySnapshot:
    """A CPU copy of the agent's encoder and actor used for acting: obs {k: array} -> action (A,)."""

    def __init__(self, agent: Any, seed: int = 0):
        self.obs_spec = dict(agent.obs_spec)
        self.encoder = copy.deepcopy(agent.encoder).to("cpu").eval()
        self.actor = copy.deepcopy(agent.actor).to("cpu").eval()
        self.generator = torch.Generator().manual_seed(seed)
        self.version = 0

    def load(self, weights: Mapping[str, Mapping[str, torch.Tensor]], version: int) -> None:
        """Load published weights {"encoder": state_dict, "actor": state_dict}."""
        self.encoder.load_state_dict(weights["encoder"])
        self.actor.load_state_dict(weights["actor"])
        self.version = version

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        from calql_robot.agent.actor import policy_actions

        batch = {k: torch.as_tensor(np.asarray(obs[k])).unsqueeze(0) for k in self.obs_spec}
        action = policy_actions(self.encoder, self.actor, batch, deterministic, self.generator)
        return action[0].numpy().astype(np.float32)


def policy_weights(agent: Any) -> dict[str, dict[str, torch.Tensor]]:
    """CPU copies of the agent's encoder and actor weights."""
    return {name: {k: v.detach().to("cpu", copy=True) for k, v in getattr(agent, name).state_dict().items()}
            for name in ("encoder", "actor")}


class BackgroundLearner:
    """Runs ``agent.update`` on mixed offline/online batches in a daemon thread; the actor never waits on it.

    Episodes arrive through a queue (:meth:`add_episode` returns at once) and join the online buffer in the learner
    thread. Every ``publish_every_s`` seconds the learner publishes CPU copies of the policy weights; :meth:`sync`
    loads the newest published copy into the actor's snapshot without taking any lock the learner holds.
    ``max_utd`` caps gradient updates per online transition (None: as fast as it can); no update runs before
    ``min_online`` online transitions exist, so the pre-trained policy is unchanged until real data arrives.
    ``demo_buffer`` (the offline buffer, or None) also receives each episode's intervention steps.
    """

    def __init__(self, agent: Any, offline: ReplayBuffer | None, online: ReplayBuffer, mixing_ratio: float,
                 batch_size: int, device: torch.device, max_utd: float | None = 1.0, min_online: int = 1,
                 seed: int = 0, publish_every_s: float = 1.0, demo_buffer: ReplayBuffer | None = None):
        self.agent, self.online, self.device, self.demo_buffer = agent, online, device, demo_buffer
        self.sampler = MixedSampler(offline, online, mixing_ratio, seed=seed)
        self.batch_size, self.max_utd, self.min_online = batch_size, max_utd, min_online
        self.publish_every_s = publish_every_s
        self.updates = 0
        self.metrics: dict[str, float] = {}
        self.error: BaseException | None = None
        self._incoming: queue.Queue = queue.Queue()
        self.queued = self.added = 0  # episodes given to add_episode / already in the buffers
        self._published: tuple[int, dict[str, dict[str, torch.Tensor]]] = (0, policy_weights(agent))
        self._update_lock = threading.Lock()  # held during each update; checkpoints take it between updates
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calql-learner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the update in progress; episodes still queued are added to the buffer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # never touch the buffer while the learner thread may still sample it
            self._drain()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the learner between two updates (for a consistent checkpoint)."""
        with self._update_lock:
            yield

    def add_episode(self, episode: Mapping[str, Any]) -> None:
        """Queue a finished episode (an EpisodeRecorder.finish() dict) for the online buffer."""
        self.queued += 1
        self._incoming.put(episode)

    def sync(self, policy: PolicySnapshot) -> bool:
        """Load the newest published weights into ``policy``; True when they were newer."""
        version, weights = self._published
        if version == policy.version:
            return False
        policy.load(weights, version)
        return True

    def publish(self) -> None:
        self._published = (self.updates, policy_weights(self.agent))

    def wait_caught_up(self, poll_s: float = 0.01) -> None:
        """Block until every queued episode is in the buffer and ``max_utd`` updates per online transition are
        done (``deploy.learner_catch_up``: the same update-to-data ratio however fast the robot or CPU is)."""
        while self._thread.is_alive() and self.error is None and (self.added < self.queued or self._may_update()):
            time.sleep(poll_s)

    def _drain(self) -> None:
        while True:
            try:
                ep = self._incoming.get_nowait()
            except queue.Empty:
                return
            self.online.add_episode(ep["observations"], ep["actions"], ep["rewards"], ep["terminals"])
            if self.demo_buffer is not None:  # a person's steps also join the demonstration side (HIL-SERL)
                add_demo_steps(self.demo_buffer, ep)
            self.added += 1

    def _may_update(self) -> bool:
        n_online = len(self.online)
        if n_online < self.min_online or len(self.sampler) == 0:
            return False
        return self.max_utd is None or self.updates < self.max_utd * n_online

    def _run(self) -> None:
        last_publish = time.monotonic()
        try:
            while not self._stop.is_set():
                self._drain()
                if not self._may_update():
                    time.sleep(0.01)
                    continue
                with self._update_lock:
                    batch = batch_to_torch(self.sampler.sample(self.batch_size), self.device)
                    self.metrics = self.agent.update(batch)
                    self.updates += 1
                if time.monotonic() - last_publish >= self.publish_every_s:
                    self.publish()
                    last_publish = time.monotonic()
            self.publish()
        except BaseException as err:  # surfaced to the acting loop, which stops the robot and reports
            self.error = err
