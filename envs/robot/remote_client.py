"""The learner's side of the remote robot: :class:`RemoteRobotClient`, a RobotInterface whose robot is behind a
:class:`~calql_robot.envs.robot.remote.RobotServer` (protocol: :mod:`calql_robot.envs.robot.remote`).

Reliability follows the "lazy pirate" pattern: the client waits ``timeout_s`` for a reply, then closes and recreates
its socket and resends the same request id (the server answers a repeated id from its cache instead of executing it
twice); after ``retries`` failed tries it raises :class:`RemoteRobotError`. A restarted server (one that has seen no
handshake yet) is handshaken again; a server now controlled by another learner makes the client raise
:class:`RemoteRobotDisplaced` instead of taking the robot back. With ``server_key`` / ``client_key`` the link is
CurveZMQ (encrypted, and only allow-listed learners get through); a failed security handshake is reported as such.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from calql_robot.envs.robot import auth, wire
from calql_robot.envs.robot.interface import ActionSpec, RobotInterface, SafetyEvent, TaskSignal
from calql_robot.errors import UserError

CLIENT_LIMITS = wire.WireLimits(max_message_bytes=64 << 20, max_arrays=256, max_header_bytes=1 << 20)
_SECURITY_EVENTS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the robot server refused this learner's key: its public key is not in the "
    "server's allowed_clients/ folder (add it with `python -m calql_robot.robot_keys clients=[NAME]` on the robot "
    "PC and restart the server)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the security handshake failed: one side uses keys and the other plain "
    "text (give both server keys_dir and client server_key / client_key, or neither)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the security handshake failed: server_key is not the public key of the "
    "server at this address (copy server.key from the robot PC again), or the server runs in plain text",
}


class RemoteRobotError(UserError):
    """The robot server did not answer, refused the handshake, or reported an error."""


class RemoteRobotDisplaced(RemoteRobotError):
    """Another learner session took control of the robot; this client does not take it back by itself."""


def _positive(value: Any, key: str, whole: bool = False) -> float:
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or value != value:
        raise UserError(f"remote robot: {key} is {value!r}; expected a {'whole ' if whole else ''}number > 0")
    return value


class RemoteRobotClient(RobotInterface):
    """A RobotInterface whose robot is behind a RobotServer at ``address`` (``tcp://HOST:PORT``).

    ``server_key`` (the server's ``server.key``) and ``client_key`` (this learner's ``NAME.key_secret``) switch on
    CurveZMQ; without them only a loopback address is accepted, unless ``insecure=True`` (prints a warning).
    ``session_token`` takes over the session of another client that presents it (default: a fresh random token).
    """

    def __init__(self, address: str = "tcp://127.0.0.1:5555", timeout_s: float = 1.0, retries: int = 3,
                 heartbeat_s: float | None = None, server_key: str | None = None, client_key: str | None = None,
                 insecure: bool = False, max_message_bytes: int = CLIENT_LIMITS.max_message_bytes,
                 session_token: str | None = None) -> None:
        host, _ = auth.parse_tcp_address(address, "remote robot address")
        self.host = host
        self.timeout_s = float(_positive(timeout_s, "timeout_s"))
        self.retries = int(_positive(retries, "retries", whole=True))
        self.heartbeat_s = None if heartbeat_s is None else float(_positive(heartbeat_s, "heartbeat_s"))
        if not isinstance(insecure, bool):
            raise UserError(f"remote robot: insecure is {insecure!r}; expected true or false")
        if (server_key is None) != (client_key is None):
            raise UserError("remote robot: give both server_key (the server's server.key) and client_key (this "
                            "learner's NAME.key_secret), or neither")
        self.keys = None if server_key is None else auth.ClientKeys.load(server_key, client_key)  # type: ignore
        if self.keys is None:
            auth.check_plaintext_allowed(host, insecure, "server_key and client_key", f"remote robot {address}")
        self.limits = wire.WireLimits(max_message_bytes=max_message_bytes, max_arrays=CLIENT_LIMITS.max_arrays,
                                      max_header_bytes=CLIENT_LIMITS.max_header_bytes)
        if session_token is not None and not (isinstance(session_token, str)
                                              and wire.SESSION_PATTERN.fullmatch(session_token)):
            raise UserError(f"remote robot: session_token {session_token!r} must be 1-128 letters, digits, _ . : -")
        self.address = address
        self.session = session_token or uuid.uuid4().hex
        self.reconnects = 0
        self.name = "remote"
        self.is_real = False
        self.displaced = False
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._next_id = 0
        self._lock = threading.RLock()
        self._events: list[SafetyEvent] = []
        self._obs_spec: dict[str, dict[str, Any]] | None = None
        self._action_spec: ActionSpec | None = None
        self._last_request = time.monotonic()
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- transport --------------------------------------------------------------------------------------------------
    def _close_socket(self) -> None:
        if self._sock is not None:
            if self._monitor is not None:
                self._sock.disable_monitor()
                self._monitor.close(linger=0)
            self._sock.close(linger=0)
        self._sock, self._monitor = None, None

    def _new_socket(self) -> None:
        self._close_socket()
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        sock.setsockopt(zmq.IPV6, int(":" in self.host))
        if self.keys is not None:
            auth.make_curve_client(sock, self.keys)
        self._monitor = sock.get_monitor_socket()
        sock.connect(self.address)
        self._sock = sock

    def _link_problem(self) -> str | None:
        """Why the last connection attempt failed, when the socket monitor knows (a refused key, ...)."""
        problem = None
        while self._monitor is not None and self._monitor.poll(0):
            try:
                event = recv_monitor_message(self._monitor)["event"]
            except (zmq.ZMQError, ValueError):
                break
            problem = _SECURITY_EVENTS.get(event, problem)
        if problem is not None and self.keys is None:
            # libzmq reports a plain-text client against a CURVE server as PROTOCOL or NO_DETAIL depending on timing;
            # without keys of our own the cause is the same either way.
            problem = _SECURITY_EVENTS[zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL]
        return problem

    def _read_reply(self, op: str, req_id: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Decode and check the reply to request ``req_id``."""
        assert self._sock is not None
        header, out = wire.decode(self._sock.recv_multipart(copy=False), self.limits)
        ok, events = header.get("ok"), header.get("events", [])
        if not isinstance(ok, bool) or (ok and header.get("id") != req_id) or not isinstance(events, list):
            raise RemoteRobotError(f"robot server at {self.address} sent a malformed reply to '{op}' (ok={ok!r}, "
                                   f"id={header.get('id')!r} for request {req_id})")
        try:
            self._events.extend(SafetyEvent.from_dict(e) for e in events)
        except (KeyError, TypeError, ValueError):
            raise RemoteRobotError(f"robot server at {self.address} sent malformed safety events") from None
        return header, out

    def _refused(self, op: str, header: dict[str, Any], rehandshake: bool) -> None:
        """Handle an ``ok: false`` reply: raise, unless it says the server restarted (then handshake again)."""
        code, error = header.get("code"), str(header.get("error"))[:2000]
        if code == "no_session" and op != "hello" and rehandshake:
            print(f"[remote robot] the robot server at {self.address} has no session (it restarted); handshaking "
                  "again", file=sys.stderr, flush=True)
            self._handshake()
            return
        if code == "displaced":
            self.displaced = True
            self._heartbeat_stop.set()
            raise RemoteRobotDisplaced(
                f"another learner session took control of the robot at {self.address} (after this one said bye or "
                f"was silent longer than the server's client_timeout_s), so '{op}' was refused; this client does not "
                "take the robot back by itself: make a new RemoteRobotClient once the other learner is done")
        if code == "busy":
            raise RemoteRobotError(f"the robot at {self.address} is controlled by another learner session: {error}")
        raise RemoteRobotError(f"robot server at {self.address} refused '{op}' ({code}): {error}")

    def _request(self, op: str, arrays: dict[str, np.ndarray] | None = None, retries: int | None = None,
                 rehandshake: bool = True, **fields: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        with self._lock:
            if self._sock is None:
                raise RemoteRobotError(f"remote robot at {self.address} is not connected; call connect() first")
            if self.displaced:
                raise RemoteRobotDisplaced(f"another learner session controls the robot at {self.address}; this "
                                           f"client was displaced and refuses '{op}'")
            self._next_id += 1
            req_id = self._next_id
            frames = wire.encode(dict(fields, op=op, id=req_id, session=self.session), arrays)
            tries = self.retries if retries is None else retries
            for attempt in range(tries):
                self._sock.send_multipart(frames)
                if self._sock.poll(int(self.timeout_s * 1000)):
                    header, out = self._read_reply(op, req_id)
                    self._last_request = time.monotonic()
                    if header["ok"]:
                        return header, out
                    self._refused(op, header, rehandshake)  # raises unless the server restarted
                    return self._request(op, arrays, retries, rehandshake=False, **fields)
                problem = self._link_problem()
                self.reconnects += 1
                self._new_socket()  # lazy pirate: a REQ socket without a reply is unusable; start afresh
                if problem is not None:
                    raise RemoteRobotError(f"robot server at {self.address}: {problem}")
                if attempt + 1 < tries:
                    print(f"[remote robot] no reply to '{op}' within {self.timeout_s} s; reconnecting "
                          f"({attempt + 1}/{tries})", file=sys.stderr, flush=True)
            raise RemoteRobotError(f"the robot server at {self.address} did not answer '{op}' in {tries} tries of "
                                   f"{self.timeout_s} s; check that `python -m calql_robot.robot_server` runs there, "
                                   "that the address / port / firewall are right, and that both sides agree on keys")

    def _handshake(self) -> None:
        header, _ = self._request("hello", version=wire.PROTOCOL_VERSION)
        try:
            name, is_real, obs_spec = header["name"], header["is_real"], header["obs_spec"]
            action_spec = ActionSpec.from_dict(header["action_spec"])
            if not isinstance(name, str) or not isinstance(is_real, bool) or not isinstance(obs_spec, dict):
                raise TypeError
        except (KeyError, TypeError, ValueError, UserError):
            raise RemoteRobotError(f"robot server at {self.address} sent a malformed handshake reply") from None
        self.name, self.is_real, self._obs_spec, self._action_spec = f"remote:{name}", is_real, obs_spec, action_spec

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
        self._close_socket()
        if self._ctx is not None:
            self._ctx.term()
        self._ctx = None

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

    def _array(self, op: str, name: str, arrays: dict[str, np.ndarray] | None = None) -> np.ndarray:
        out = self._request(op, arrays)[1]
        if name not in out:
            raise RemoteRobotError(f"robot server at {self.address} answered '{op}' without the '{name}' array")
        return out[name]

    def get_ee_position(self) -> np.ndarray:
        return self._array("get_ee_position", "ee")

    def send_action(self, action: np.ndarray) -> np.ndarray:
        return self._array("send_action", "sent", {"action": np.asarray(action, np.float32)})

    def stop(self) -> None:
        if self._sock is not None and not self.displaced:  # a displaced client no longer commands the robot
            self._request("stop")

    def home(self) -> dict[str, np.ndarray]:
        return wire.unprefixed("obs", self._request("home")[1])

    def task_signal(self) -> TaskSignal:
        header, _ = self._request("task_signal")
        reward, success = header.get("reward"), header.get("success")
        if not (reward is None or (isinstance(reward, (int, float)) and not isinstance(reward, bool))) or \
                not (success is None or isinstance(success, bool)):
            raise RemoteRobotError(f"robot server at {self.address} sent task_signal reward={reward!r} "
                                   f"success={success!r}; expected a number and true/false (or null)")
        return TaskSignal(reward, success)

    def heartbeat(self) -> None:
        """Tell the server the learner is alive (without moving the robot)."""
        self._request("ping")

    def drain_safety_events(self) -> list[SafetyEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events
