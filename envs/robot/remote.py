"""Remote robot over ZeroMQ: the arm's computer serves a RobotInterface, the learner drives it with a client that is
itself a RobotInterface.

Transport: REQ (client) / REP (server), messages in the self-describing format of :mod:`.wire` (JSON header + raw
numpy buffers, never pickle). Reliability follows the "lazy pirate" pattern: the client waits ``timeout_s`` for a
reply, then closes and recreates its socket and resends the same request id (the server answers a repeated id
from its cache instead of executing it twice, so an action is never sent twice); after ``retries`` failed tries it
raises :class:`RemoteRobotError`. A new server (restart) is detected and the client handshakes again by itself.

Handshake: ``hello`` carries the protocol version; the reply carries the robot's name, ``is_real``, obs spec and
action spec. The server stops the arm when the client says ``bye`` or stays silent longer than
``client_timeout_s`` (the client can send heartbeats from a thread with ``heartbeat_s`` while it is busy elsewhere).
Safety events recorded on the robot side travel back in every reply header.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
import zmq

from calql_robot.envs.robot import wire
from calql_robot.envs.robot.interface import ActionSpec, RobotInterface, SafetyEvent, TaskSignal
from calql_robot.errors import UserError


class RemoteRobotError(UserError):
    """The robot server did not answer, refused the handshake, or reported an error."""


class RobotServer:
    """Serve ``robot`` (usually already wrapped by ``make_safe_robot``) on ``address`` (e.g. tcp://127.0.0.1:5555)."""

    def __init__(self, robot: RobotInterface, address: str, client_timeout_s: float = 1.0,
                 max_idle_s: float | None = None, allow_remote_shutdown: bool = False, verbose: bool = True) -> None:
        self.robot = robot
        self.address = address
        self.client_timeout_s = float(client_timeout_s)
        self.max_idle_s = max_idle_s
        self.allow_remote_shutdown = allow_remote_shutdown
        self.verbose = verbose
        self.session: str | None = None
        self.session_active = False
        self.client_timeouts = 0
        self.requests = 0
        self._cache: tuple[str, int, list[bytes]] | None = None
        self._pending_events: list[SafetyEvent] = []
        self._shutdown = False

    def _log(self, message: str) -> None:
        if self.verbose:
            print(f"[robot_server] {message}", file=sys.stderr, flush=True)

    def serve(self, stop_event: threading.Event | None = None) -> str:
        """Run until ``stop_event``, a permitted ``shutdown`` request or ``max_idle_s`` without requests; returns why.
        The robot is connected on start and stopped + disconnected on exit."""
        ctx = zmq.Context()
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.address)
        if not self.robot.is_connected:
            self.robot.connect()
        self._log(f"serving robot '{self.robot.name}' on {self.address} (protocol {wire.PROTOCOL_VERSION})")
        last_request = time.monotonic()
        reason = "stopped"
        try:
            while True:
                if stop_event is not None and stop_event.is_set():
                    break
                if sock.poll(20):
                    frames = sock.recv_multipart()
                    last_request = time.monotonic()
                    sock.send_multipart(self._reply(frames))
                    self.requests += 1
                    if self._shutdown:
                        reason = "shutdown requested"
                        break
                    continue
                silence = time.monotonic() - last_request
                if self.session_active and silence > self.client_timeout_s:
                    self.robot.stop()
                    self.session_active = False
                    self.client_timeouts += 1
                    message = f"learner silent for {silence:.2f} s (timeout {self.client_timeout_s} s); robot stopped"
                    self._pending_events.append(SafetyEvent("client_timeout", message))
                    self._log(message)
                if self.max_idle_s is not None and silence > self.max_idle_s:
                    reason = f"idle for {self.max_idle_s} s"
                    break
        finally:
            self.robot.stop()
            self.robot.disconnect()
            sock.close(linger=0)
            ctx.term()
            self._log(f"stopped ({reason}) after {self.requests} requests")
        return reason

    def _reply(self, frames: list[bytes]) -> list[bytes]:
        try:
            header, arrays = wire.decode(frames)
        except wire.ProtocolError as err:
            return wire.encode({"ok": False, "code": "protocol", "error": str(err)})
        session, req_id = str(header.get("session", "")), int(header.get("id", -1))
        if self._cache is not None and self._cache[:2] == (session, req_id):
            return self._cache[2]  # a retry of a request already executed
        try:
            reply_header, reply_arrays = self._handle(header, arrays, session)
            reply_header["ok"] = True
        except UserError as err:
            reply_header, reply_arrays = {"ok": False, "code": getattr(err, "code", "error"), "error": str(err)}, {}
        except Exception as err:  # noqa: BLE001  (the arm must stop on any failure; the server keeps serving)
            self.robot.stop()
            reply_header = {"ok": False, "code": "robot", "error": f"{type(err).__name__}: {err} (robot stopped)"}
            reply_arrays = {}
            self._log(reply_header["error"])
        events = self._pending_events + self.robot.drain_safety_events()
        self._pending_events = []
        reply_header.update(id=req_id, events=[e.to_dict() for e in events])
        try:
            reply = wire.encode(reply_header, reply_arrays)
        except (TypeError, ValueError, wire.ProtocolError) as err:  # a NaN reward, a dtype the wire cannot carry
            reply = wire.encode({"ok": False, "code": "encode", "id": req_id, "error": f"reply not encodable: {err}"})
        self._cache = (session, req_id, reply)
        return reply

    def _handle(self, header: dict[str, Any], arrays: dict[str, np.ndarray], session: str
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        op = header.get("op")
        if op == "hello":
            if header.get("version") != wire.PROTOCOL_VERSION:
                raise RemoteRobotError(f"protocol version mismatch: the client speaks {header.get('version')}, the "
                                       f"robot server at {self.address} speaks {wire.PROTOCOL_VERSION}; update "
                                       "calql_robot on both machines to the same release")
            if self.session not in (None, session):
                self._log(f"new learner session {session[:8]} replaces {self.session[:8]}")
            self.session, self.session_active = session, True
            return {"name": self.robot.name, "is_real": self.robot.is_real, "obs_spec": self.robot.observation_spec,
                    "action_spec": self.robot.action_spec.to_dict()}, {}
        if session != self.session:
            err = RemoteRobotError("no handshake for this session (the server restarted or another learner took over)")
            err.code = "no_session"  # type: ignore[attr-defined]
            raise err
        self.session_active = op != "bye"
        if op == "get_observation":
            return {}, wire.prefixed("obs", self.robot.get_observation())
        if op == "get_ee_position":
            return {}, {"ee": np.asarray(self.robot.get_ee_position(), np.float64)}
        if op == "send_action":
            if "action" not in arrays:
                raise RemoteRobotError("send_action without an 'action' array")
            return {}, {"sent": np.asarray(self.robot.send_action(arrays["action"]), np.float32)}
        if op == "home":
            return {}, wire.prefixed("obs", self.robot.home())
        if op == "task_signal":
            signal = self.robot.task_signal()
            return {"reward": signal.reward, "success": signal.success}, {}
        if op in ("stop", "bye"):
            self.robot.stop()
            return {}, {}
        if op == "ping":
            return {}, {}
        if op == "shutdown" and self.allow_remote_shutdown:
            self._shutdown = True
            return {}, {}
        raise RemoteRobotError(f"unknown request op {op!r}")


def serve_robot(robot: RobotInterface, host: str = "127.0.0.1", port: int = 5555, **server_kwargs: Any) -> str:
    """Serve ``robot`` on tcp://host:port until stopped (see :class:`RobotServer`); returns why it stopped."""
    return RobotServer(robot, f"tcp://{host}:{int(port)}", **server_kwargs).serve()


class RemoteRobotClient(RobotInterface):
    """A RobotInterface whose robot is behind a :class:`RobotServer`."""

    def __init__(self, address: str = "tcp://127.0.0.1:5555", timeout_s: float = 1.0, retries: int = 3,
                 heartbeat_s: float | None = None) -> None:
        if timeout_s <= 0 or retries < 1:
            raise UserError(f"remote robot: timeout_s ({timeout_s}) must be > 0 and retries ({retries}) >= 1")
        self.address = address
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.heartbeat_s = heartbeat_s
        self.session = uuid.uuid4().hex
        self.reconnects = 0
        self.name = "remote"
        self.is_real = False
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._next_id = 0
        self._lock = threading.RLock()
        self._events: list[SafetyEvent] = []
        self._obs_spec: dict[str, dict[str, Any]] | None = None
        self._action_spec: ActionSpec | None = None
        self._last_request = time.monotonic()
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- transport --------------------------------------------------------------------------------------------------
    def _new_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        assert self._ctx is not None
        self._sock = self._ctx.socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(self.address)

    def _request(self, op: str, arrays: dict[str, np.ndarray] | None = None, retries: int | None = None,
                 **fields: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        with self._lock:
            if self._sock is None:
                raise RemoteRobotError(f"remote robot at {self.address} is not connected; call connect() first")
            self._next_id += 1
            frames = wire.encode(dict(fields, op=op, id=self._next_id, session=self.session), arrays)
            tries = self.retries if retries is None else retries
            for attempt in range(tries):
                self._sock.send_multipart(frames)
                if self._sock.poll(int(self.timeout_s * 1000)):
                    header, out = wire.decode(self._sock.recv_multipart())
                    self._last_request = time.monotonic()
                    self._events.extend(SafetyEvent.from_dict(e) for e in header.get("events", []))
                    if header.get("ok"):
                        return header, out
                    if header.get("code") == "no_session" and op != "hello":
                        self._handshake()
                        return self._request(op, arrays, retries, **fields)
                    raise RemoteRobotError(f"robot server at {self.address} refused '{op}': {header.get('error')}")
                self.reconnects += 1
                self._new_socket()  # lazy pirate: a REQ socket without a reply is unusable; start afresh
                if attempt + 1 < tries:
                    print(f"[remote robot] no reply to '{op}' within {self.timeout_s} s; reconnecting "
                          f"({attempt + 1}/{tries})", file=sys.stderr, flush=True)
            raise RemoteRobotError(f"the robot server at {self.address} did not answer '{op}' in {tries} tries of "
                                   f"{self.timeout_s} s; check that `python -m calql_robot.robot_server` runs there "
                                   "and that the address / port / firewall are right")

    def _handshake(self) -> None:
        header, _ = self._request("hello", version=wire.PROTOCOL_VERSION)
        self.name = f"remote:{header['name']}"
        self.is_real = bool(header["is_real"])
        self._obs_spec = header["obs_spec"]
        self._action_spec = ActionSpec.from_dict(header["action_spec"])

    def _heartbeat_loop(self) -> None:
        assert self.heartbeat_s is not None
        while not self._heartbeat_stop.wait(self.heartbeat_s / 2):
            if time.monotonic() - self._last_request >= self.heartbeat_s:
                try:
                    self._request("ping", retries=1)
                except UserError:
                    pass  # the next real request reports the failure

    # -- RobotInterface ---------------------------------------------------------------------------------------------
    def connect(self) -> None:
        with self._lock:
            if self._sock is not None:
                return
            self._ctx = zmq.Context()
            self._new_socket()
            try:
                self._handshake()
            except UserError:
                self._close()
                raise
        if self.heartbeat_s:
            self._heartbeat_stop.clear()
            self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="robot-heartbeat", daemon=True)
            self._heartbeat.start()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        self._sock, self._ctx = None, None

    def disconnect(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=2 * self.timeout_s)
        with self._lock:
            if self._sock is None:
                return
            try:
                self._request("bye", retries=1)
            except UserError:
                pass  # the server stops the arm by itself once we are silent
            self._close()

    @property
    def is_connected(self) -> bool:
        return self._sock is not None

    def _specs_known(self) -> None:
        """The specs come from the handshake: reading one before ``connect()`` connects."""
        if self._obs_spec is None or self._action_spec is None:
            self.connect()

    @property
    def observation_spec(self) -> dict[str, dict[str, Any]]:
        self._specs_known()
        return self._obs_spec  # type: ignore[return-value]

    @property
    def action_spec(self) -> ActionSpec:
        self._specs_known()
        return self._action_spec  # type: ignore[return-value]

    def get_observation(self) -> dict[str, np.ndarray]:
        return wire.unprefixed("obs", self._request("get_observation")[1])

    def get_ee_position(self) -> np.ndarray:
        return self._request("get_ee_position")[1]["ee"]

    def send_action(self, action: np.ndarray) -> np.ndarray:
        return self._request("send_action", {"action": np.asarray(action, np.float32)})[1]["sent"]

    def stop(self) -> None:
        if self._sock is not None:
            self._request("stop")

    def home(self) -> dict[str, np.ndarray]:
        return wire.unprefixed("obs", self._request("home")[1])

    def task_signal(self) -> TaskSignal:
        header, _ = self._request("task_signal")
        return TaskSignal(header.get("reward"), header.get("success"))

    def heartbeat(self) -> None:
        """Tell the server the learner is alive (without moving the robot)."""
        self._request("ping")

    def drain_safety_events(self) -> list[SafetyEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events
