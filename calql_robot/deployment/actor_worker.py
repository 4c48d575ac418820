"""The body of one actor: a CPU policy snapshot stepping its own simulated env, one full episode at a time.

:class:`ActorCore` is transport-free: it is built from a JSON *spec* (bytes), takes weights frames and returns
episode frames (:mod:`calql_robot.deployment.episode_wire`). :func:`local_actor_main` runs it in a spawned OS
process over two one-way pipes; the Ray backend wraps the same class in a Ray actor (``actors.py``).

Seeds: the actor's policy sampling seed is ``seed + 1000 * actor_id + restarts`` (plus ``10**6 * launch``, launch =
the episodes already stored when the learner started, so a resumed run does not replay its episodes); its env seeds
are drawn from that stream in [2**20, 2**31), skipping the evaluation seeds ``eval.seed .. eval.seed + episodes``
(the ``calql_robot.training.evaluate`` default starts at 10 000), so no training episode repeats an evaluation one.

Weights are loaded between episodes: an episode is acted with one snapshot version, recorded in its header.
Flow control (local backend): an actor runs at most :data:`IN_FLIGHT` episodes the learner has not taken yet; the
learner sends an :data:`ACK` message for each episode it takes, which frees one place. A learner that is behind thus
slows its actors instead of letting stale episodes pile up in the pipe (the Ray backend has one call in flight).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from typing import Any

import numpy as np

from calql_robot.envs.robot.wire import ProtocolError, WireLimits, encode

ENV_SEED_LOW, ENV_SEED_HIGH = 1 << 20, 1 << 31
IN_FLIGHT = 2  # episodes an actor may have finished or be acting that the learner has not taken
ACK = encode({"kind": "ack"})  # learner -> actor: one episode taken


def actor_seed(seed: int, actor_id: int, restarts: int, launch: int) -> int:
    """The policy-sampling seed of one actor incarnation (distinct per actor, restart and learner launch)."""
    return int(seed) + 1000 * int(actor_id) + int(restarts) + 10**6 * int(launch)


class ActorCore:
    """One actor: ``spec`` (JSON dict) -> env + policy snapshot; :meth:`run_episode` -> episode frames.

    spec keys: ``cfg`` (the run's resolved config as a plain dict), ``obs_spec``, ``action_dim``, ``actor_id``,
    ``restarts``, ``launch``, ``action_scaling`` (JSON or None), ``eval_seeds`` ([first, count]).
    """

    def __init__(self, spec: dict[str, Any]):
        import torch
        from omegaconf import OmegaConf

        from calql_robot.agent import build_agent
        from calql_robot.datasets.action_scaling import ActionScaling, env_action_fn
        from calql_robot.deployment.learner import PolicySnapshot
        from calql_robot.envs import make_task_env
        from calql_robot.training import session

        torch.set_num_threads(1)
        cfg = OmegaConf.create(spec["cfg"])
        self.actor_id, self.restarts = int(spec["actor_id"]), int(spec["restarts"])
        seed = actor_seed(int(cfg.seed), self.actor_id, self.restarts, int(spec["launch"]))
        self.rng = np.random.default_rng(seed)
        self.eval_first, self.eval_count = (int(v) for v in spec["eval_seeds"])
        self.env = make_task_env(cfg.task, seed=self._env_seed())
        agent = build_agent(session.agent_config(cfg), spec["obs_spec"], int(spec["action_dim"]), torch.device("cpu"))
        self.policy = PolicySnapshot(agent, seed=seed)
        self.policy.version = -1  # no weights from the learner yet
        del agent
        self.to_env = env_action_fn(ActionScaling.from_json(spec.get("action_scaling")))
        self.reference = {"encoder": self.policy.encoder.state_dict(), "actor": self.policy.actor.state_dict()}

    def _env_seed(self) -> int:
        while True:
            value = int(self.rng.integers(ENV_SEED_LOW, ENV_SEED_HIGH))
            if not self.eval_first <= value < self.eval_first + self.eval_count:
                return value

    def load(self, frames: list[bytes]) -> int:
        """Load a weights message; returns its version."""
        from calql_robot.deployment.episode_wire import decode_weights

        version, weights = decode_weights(frames, self.reference)
        self.policy.load(weights, version)
        return version

    def run_episode(self) -> list[bytes]:
        """Act one full episode (until terminated or truncated) with the current snapshot; its frames."""
        from calql_robot.datasets.episode_recorder import EpisodeRecorder
        from calql_robot.deployment.episode_wire import episode_frames

        env_seed = self._env_seed()
        recorder = EpisodeRecorder()
        obs, _ = self.env.reset(seed=env_seed)
        recorder.start(obs)
        done = False
        while not done:
            action = self.policy.act(obs, deterministic=False)
            obs, reward, terminated, truncated, info = self.env.step(self.to_env(action))  # recorded in policy units
            recorder.step(obs, action, reward, terminated, truncated, bool(info.get("success", False)))
            done = bool(terminated or truncated)
        meta = {"actor": self.actor_id, "restarts": self.restarts, "policy_version": max(self.policy.version, 0),
                "env_seed": env_seed}
        return episode_frames(recorder.finish(), meta)

    def close(self) -> None:
        self.env.close()


# ------------------------------------------------------------------------------------- frames over a pipe
def send_frames(conn: Any, frames: list[bytes]) -> None:
    """One message on a ``multiprocessing`` connection: a 4-byte frame count, then each frame."""
    conn.send_bytes(struct.pack("<I", len(frames)))
    for frame in frames:
        conn.send_bytes(frame)


def recv_frames(conn: Any, limits: WireLimits) -> list[bytes]:
    """The frames of one :func:`send_frames` message, sizes bounded by ``limits`` (OSError past them)."""
    head = conn.recv_bytes(maxlength=4)
    count = struct.unpack("<I", head)[0] if len(head) == 4 else 0
    if not 1 <= count <= limits.max_arrays + 1:
        raise ProtocolError(f"message announces {count} frames; expected 1..{limits.max_arrays + 1}")
    return [conn.recv_bytes(maxlength=limits.max_message_bytes) for _ in range(count)]


class _LatestWeights:
    """Reads weights messages in a thread and keeps the newest; exits the process when the learner is gone."""

    def __init__(self, conn: Any, limits: WireLimits):
        self.conn, self.limits = conn, limits
        self.latest: list[bytes] | None = None
        self.arrived = threading.Event()
        self.lock = threading.Lock()
        self.credits = threading.Semaphore(IN_FLIGHT)
        threading.Thread(target=self._run, name="calql-actor-weights", daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                frames = recv_frames(self.conn, self.limits)
                if frames == ACK:
                    self.credits.release()
                    continue
                with self.lock:
                    self.latest = frames
                self.arrived.set()
        except (EOFError, OSError, ProtocolError):
            os._exit(0)  # the learner closed the pipe or died: nothing left to act for

    def take(self) -> list[bytes] | None:
        with self.lock:
            frames, self.latest = self.latest, None
        return frames


def local_actor_main(spec_json: bytes, weights_conn: Any, episodes_conn: Any) -> None:
    """Process body of a local actor: wait for the first weights, then episode after episode until the pipe closes."""
    from calql_robot.deployment.episode_wire import ACTOR_LIMITS

    spec = json.loads(spec_json)
    weights = _LatestWeights(weights_conn, ACTOR_LIMITS)
    core = ActorCore(spec)
    weights.arrived.wait()
    try:
        while True:
            weights.credits.acquire()  # a free place first, then the newest weights
            frames = weights.take()
            if frames is not None:
                core.load(frames)
            send_frames(episodes_conn, core.run_episode())
    except (BrokenPipeError, EOFError, OSError):
        pass
    finally:
        core.close()
