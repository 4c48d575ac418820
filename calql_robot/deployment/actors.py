"""Many actors, one learner: a pool of actor processes (local) or Ray actors, each running full episodes.

The learner only sees :class:`ActorPool`: ``publish(frames)`` sends weights to every actor, ``poll(timeout)``
returns the episodes that finished as ``[(actor_id, frames)]`` and restarts actors that died, ``close()``. Both
backends carry the same bytes frames (:mod:`calql_robot.deployment.episode_wire`); the actor body is
:class:`~calql_robot.deployment.actor_worker.ActorCore` in both.

* ``actors.backend=local``: ``actors.count`` OS processes from the multiprocessing 'spawn' context; per actor one
  pipe learner -> actor (weights; a reader thread in the actor keeps the newest) and one actor -> learner
  (episodes); an actor runs at most ``actor_worker.IN_FLIGHT`` episodes ahead of the learner. An actor exits
  when the learner's end closes, so a killed learner leaves no orphans.
* ``actors.backend=ray``: Ray actors on the cluster at ``actors.address`` (``auto``: the running cluster; null: a
  local one), the pattern of RLlib's EnvRunners: one ``run_episode`` call in flight per actor; weights are pushed
  with ``set_weights`` calls, which Ray runs in order before the next ``run_episode``.

Supervision: an actor that dies (exit, SIGKILL, node lost) is replaced by a fresh one (``restarts + 1``: a new
seed) with the newest weights; it loses at most its episode in progress. Restarts are printed and counted.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from calql_robot.deployment.actor_worker import ACK, local_actor_main, recv_frames, send_frames
from calql_robot.deployment.episode_wire import ACTOR_LIMITS
from calql_robot.errors import UserError

BACKENDS = ("local", "ray")
RAY_HINT = "pip install calql_robot[ray]"


def check_actors_config(cfg: DictConfig, ray_importable: bool | None = None) -> None:
    """The ``actors`` block of finetune: UserError naming the key. ``ray_importable`` (default: look it up) says
    whether ``import ray`` would work, for ``actors.backend=ray``."""
    block = cfg.get("actors")
    if block is None:
        return
    count, backend = block.get("count", 0), block.get("backend", "local")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 4096:
        raise UserError(f"actors.count={count!r} is not allowed; expected a whole number in [0, 4096] (0: the "
                        "single-process loop, N: N actors feeding one learner)")
    if backend not in BACKENDS:
        raise UserError(f"actors.backend={backend!r} is not allowed; expected one of {', '.join(BACKENDS)}")
    sync = block.get("sync_every_s", 2.0)
    if isinstance(sync, bool) or not isinstance(sync, (int, float)) or not 0 < float(sync) <= 3600:
        raise UserError(f"actors.sync_every_s={sync!r} is not allowed; expected seconds in (0, 3600]")
    lag = block.get("max_update_lag", 1000)
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 1):
        raise UserError(f"actors.max_update_lag={lag!r} is not allowed; expected a whole number >= 1 or null")
    address = block.get("address")
    if address is not None and not isinstance(address, str):
        raise UserError(f"actors.address={address!r} is not allowed; expected null, auto or HOST:PORT")
    resources = block.get("ray_resources")
    if resources is not None and (not isinstance(resources, Mapping) or not all(
            isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0
            for k, v in resources.items())):
        raise UserError(f"actors.ray_resources={resources!r} is not allowed; expected null or a mapping of custom "
                        "Ray resource names to positive amounts, e.g. {robot_pc: 1}")
    if backend == "ray" and count >= 1:
        if ray_importable is None:
            ray_importable = importlib.util.find_spec("ray") is not None
        if not ray_importable:
            raise UserError(f"actors.backend=ray needs Ray, which is not installed: {RAY_HINT} (or use "
                            "actors.backend=local)")


class ActorPool:
    """What the learner uses; subclasses implement the transport. ``episodes_by_actor`` counts received episodes."""

    def __init__(self, count: int, make_spec: Any):
        self.count, self.make_spec = count, make_spec  # make_spec(actor_id, restarts) -> JSON bytes
        self.restarts = [0] * count
        self.weights: list[bytes] | None = None

    @property
    def total_restarts(self) -> int:
        return sum(self.restarts)

    def _log_restart(self, actor_id: int, why: str) -> None:
        self.restarts[actor_id] += 1
        print(f"actor {actor_id} {why}: restarted (restart {self.restarts[actor_id]}), its episode in progress is lost",
              flush=True)

    def publish(self, frames: list[bytes]) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[tuple[int, list[bytes]]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Sender:
    """Writes to one actor's weights pipe from its own thread, so the learner never waits on a slow actor: it only
    sets the newest weights (older unsent ones are dropped) or counts an ACK. Closing ends the pipe (EOF there)."""

    def __init__(self, conn: Any):
        self.conn, self.cond = conn, threading.Condition()
        self.weights: list[bytes] | None = None
        self.acks, self.closed = 0, False
        threading.Thread(target=self._run, name="calql-actor-sender", daemon=True).start()

    def put_weights(self, frames: list[bytes]) -> None:
        with self.cond:
            self.weights = frames
            self.cond.notify()

    def ack(self) -> None:
        with self.cond:
            self.acks += 1
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.closed or self.acks or self.weights is not None)
                    if self.closed:
                        return
                    acks, weights, self.acks, self.weights = self.acks, self.weights, 0, None
                for _ in range(acks):
                    send_frames(self.conn, ACK)
                if weights is not None:
                    send_frames(self.conn, weights)
        except OSError:
            pass  # the actor is gone: the pool sees it and restarts it
        finally:
            self.conn.close()


class LocalActorPool(ActorPool):
    """``count`` spawned processes on this machine, two pipes each."""

    def __init__(self, count: int, make_spec: Any, weights: list[bytes]):
        import multiprocessing as mp

        super().__init__(count, make_spec)
        self.ctx = mp.get_context("spawn")
        self.weights = weights
        self.procs: list[Any] = [None] * count
        self.to_actor: list[_Sender] = []
        self.from_actor: list[Any] = [None] * count
        for i in range(count):
            self._start(i)

    def _start(self, i: int) -> None:
        w_recv, w_send = self.ctx.Pipe(duplex=False)
        e_recv, e_send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=local_actor_main, args=(self.make_spec(i, self.restarts[i]), w_recv, e_send),
                                name=f"calql-actor-{i}", daemon=True)
        proc.start()
        w_recv.close()
        e_send.close()  # only the child holds the writing end: its death is an EOF here
        sender = _Sender(w_send)
        sender.put_weights(self.weights)
        if i < len(self.to_actor):
            self.to_actor[i] = sender
        else:
            self.to_actor.append(sender)
        self.procs[i], self.from_actor[i] = proc, e_recv
        print(f"actor {i} started: pid {proc.pid}, restart {self.restarts[i]}", flush=True)

    def _restart(self, i: int, why: str) -> None:
        self.to_actor[i].close()
        self.from_actor[i].close()
        proc = self.procs[i]
        if proc.is_alive():
            proc.kill()
        proc.join(5.0)
        self._log_restart(i, why)
        self._start(i)

    def publish(self, frames: list[bytes]) -> None:
        self.weights = frames
        for i in range(self.count):
            self.to_actor[i].put_weights(frames)

    def poll(self, timeout: float) -> list[tuple[int, list[bytes]]]:
        from multiprocessing.connection import wait

        ready = set(wait(self.from_actor, timeout=timeout))
        out = []
        for i, conn in enumerate(self.from_actor):
            if conn in ready:
                try:
                    out.append((i, recv_frames(conn, ACTOR_LIMITS)))
                    self.to_actor[i].ack()
                except (EOFError, OSError, UserError) as err:
                    self.procs[i].join(1.0)
                    code = self.procs[i].exitcode
                    self._restart(i, f"stopped (exit code {code})" if isinstance(err, EOFError) else
                                  f"sent a bad message ({str(err)[:200]})")
            elif not self.procs[i].is_alive():
                self._restart(i, f"stopped (exit code {self.procs[i].exitcode})")
        return out

    def close(self) -> None:
        for i in range(self.count):
            self.to_actor[i].close()  # the actor's reader sees EOF and exits
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.0))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        for conn in self.from_actor:
            conn.close()


class RayActorPool(ActorPool):
    """``count`` Ray actors (one CPU each, plus ``resources``), one ``run_episode`` in flight per actor."""

    def __init__(self, count: int, make_spec: Any, weights: list[bytes], address: str | None,
                 resources: Mapping[str, float] | None = None):
        try:
            import ray
        except ImportError:
            raise UserError(f"actors.backend=ray needs Ray, which is not installed: {RAY_HINT}") from None
        super().__init__(count, make_spec)
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            except ConnectionError as err:
                raise UserError(f"actors.address={address}: no Ray cluster to join ({str(err)[:200]}); start one with "
                                "`ray start --head` (see docs/scale_out.md) or use actors.address=null") from None
        self.remote_cls = ray.remote(num_cpus=1, resources=dict(resources or {}))(RayActorBody)
        self.weights = weights
        self.handles: list[Any] = [None] * count
        self.pending: dict[Any, int] = {}
        for i in range(count):
            self._start(i)

    def _start(self, i: int) -> None:
        handle = self.remote_cls.remote(self.make_spec(i, self.restarts[i]))
        handle.set_weights.remote(self.ray.put(self.weights))
        self.handles[i] = handle
        self.pending[handle.run_episode.remote()] = i

    def publish(self, frames: list[bytes]) -> None:
        self.weights = frames
        ref = self.ray.put(frames)
        for handle in self.handles:
            handle.set_weights.remote(ref)

    def poll(self, timeout: float) -> list[tuple[int, list[bytes]]]:
        ready, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        out = []
        for ref in ready:
            i = self.pending.pop(ref)
            try:
                out.append((i, self.ray.get(ref)))
            except self.ray.exceptions.RayError as err:
                self.ray.kill(self.handles[i], no_restart=True)
                self._log_restart(i, f"failed ({type(err).__name__})")
                self._start(i)
                continue
            self.pending[self.handles[i].run_episode.remote()] = i
        return out

    def close(self) -> None:
        for handle in self.handles:
            self.ray.kill(handle, no_restart=True)
        self.pending.clear()


class RayActorBody:
    """The Ray actor class (decorated at pool start, so importing this module needs no Ray)."""

    def __init__(self, spec_json: bytes):
        from calql_robot.deployment.actor_worker import ActorCore

        self.core = ActorCore(json.loads(spec_json))

    def set_weights(self, frames: list[bytes]) -> int:
        return self.core.load(frames)

    def run_episode(self) -> list[bytes]:
        return self.core.run_episode()


def start_pool(cfg: DictConfig, make_spec: Any, weights: list[bytes]) -> ActorPool:
    """The pool ``cfg.actors`` asks for, started with ``weights`` (frames) loaded in every actor."""
    block = cfg.actors
    if block.backend == "ray":
        resources = block.get("ray_resources")
        return RayActorPool(int(block.count), make_spec, weights, block.get("address"),
                            None if resources is None else dict(resources))
    return LocalActorPool(int(block.count), make_spec, weights)
