"""Remote robot over ZeroMQ: the arm's computer serves a RobotInterface (:class:`RobotServer`), the learner drives it
with a client that is itself a RobotInterface (:class:`~calql_robot.envs.robot.remote_client.RemoteRobotClient`).

Transport: REQ (client) / REP (server), messages in the self-describing format of :mod:`.wire` (JSON header + raw
numpy buffers, never pickle). With a key folder (:mod:`.auth`) the link is CurveZMQ: encrypted, and a ZAP handler
admits only the allow-listed client keys, so an unknown client fails the handshake before any of its messages is
read. Without keys the server binds only to loopback, unless ``insecure=True`` (a warning is printed).

Every message is bounded before it is parsed or copied (``zmq.MAXMSGSIZE`` per frame at the socket, then the total
size, frame count and header size of :class:`~.wire.WireLimits`), and every header field is checked
(:func:`~.wire.parse_request`). A bad request gets an ``ok: false`` reply with a ``code``; nothing a client sends
ends the server: only ``stop_event`` (a signal in the app), an allowed ``shutdown`` request or ``max_idle_s`` do,
and the robot is stopped on every way out.

Sessions: ``hello`` carries the protocol version and the client's session token; the reply carries the robot's
name, ``is_real``, obs spec and action spec. One session controls the robot at a time: another client's ``hello``
is refused (code ``busy``) while the controlling session is active, i.e. until it says ``bye`` or stays silent
longer than ``client_timeout_s`` (the server then stops the arm), unless it presents the same session token.
Requests of a session that has been replaced get code ``displaced``; a server that has seen no handshake (e.g. it
restarted) answers ``no_session``. A repeated (session, id) is answered from a cache instead of executed twice.
Safety events recorded on the robot side travel back in the replies to the controlling session.
"""

from __future__ import annotations

import errno
import sys
import threading
import time
from typing import Any

import numpy as np
import zmq

from calql_robot.envs.robot import auth, wire
from calql_robot.envs.robot.interface import RobotInterface, SafetyEvent
from calql_robot.envs.robot.remote_client import RemoteRobotClient, RemoteRobotDisplaced, RemoteRobotError
from calql_robot.errors import UserError

__all__ = ["RemoteRobotClient", "RemoteRobotDisplaced", "RemoteRobotError", "RobotServer", "serve_robot"]


def _coded(code: str, message: str) -> RemoteRobotError:
    err = RemoteRobotError(message)
    err.code = code  # type: ignore[attr-defined]
    return err


def _user_id(frame: Any) -> str | None:
    """The allow-list name the ZAP handler gave this message's sender (None in plain text)."""
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, AttributeError, TypeError, UnicodeDecodeError):
        return None


class RobotServer:
    """Serve ``robot`` (usually already wrapped by ``make_safe_robot``) on ``address`` (e.g. tcp://127.0.0.1:5555).

    ``keys`` (:class:`~.auth.ServerKeys`) switch on CurveZMQ with an allow-list; ``limits`` bound incoming
    messages. See the module docstring for sessions and errors.
    """

    def __init__(self, robot: RobotInterface, address: str, client_timeout_s: float = 1.0,
                 max_idle_s: float | None = None, allow_remote_shutdown: bool = False, verbose: bool = True,
                 keys: auth.ServerKeys | None = None, insecure: bool = False,
                 limits: wire.WireLimits | None = None) -> None:
        self.host, self.port = auth.parse_tcp_address(address, "robot server address")
        for key, value in (("client_timeout_s", client_timeout_s), ("max_idle_s", max_idle_s)):
            if (value is not None or key == "client_timeout_s") and (
                    isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise UserError(f"robot server: {key} is {value!r}; expected a number of seconds > 0")
        if keys is None:
            auth.check_plaintext_allowed(self.host, bool(insecure), "keys_dir", "robot_server")
        self.robot = robot
        self.address = address
        self.client_timeout_s = float(client_timeout_s)
        self.max_idle_s = max_idle_s
        self.allow_remote_shutdown = bool(allow_remote_shutdown)
        self.verbose = verbose
        self.keys = keys
        self.limits = limits or wire.DEFAULT_LIMITS
        self.session: str | None = None
        self.session_active = False
        self.session_user: str | None = None
        self.client_timeouts = 0
        self.requests = 0
        self.refused = 0
        self._session_seen = time.monotonic()
        self._cache: tuple[tuple[str, int], list[bytes]] | None = None
        self._pending_events: list[SafetyEvent] = []
        self._shutdown = False

    def _log(self, message: str) -> None:
        if self.verbose:
            print(f"[robot_server] {message}", file=sys.stderr, flush=True)

    def _stop_robot(self, why: str) -> None:
        try:
            self.robot.stop()
        except Exception as err:  # noqa: BLE001  (a failing stop is reported; the server must not die of it)
            self._log(f"robot.stop() failed ({why}): {type(err).__name__}: {err}")

    # -- socket and loop --------------------------------------------------------------------------------------------
    def _bind(self, ctx: zmq.Context) -> zmq.Socket:
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)  # libzmq drops a sender of a larger frame
        sock.setsockopt(zmq.IPV6, int(":" in self.host))
        if self.keys is not None:
            auth.make_curve_server(sock, self.keys)
        try:
            sock.bind(self.address)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"port {self.port} on {self.host} is already in use (another robot_server, or "
                                "another program); stop it or choose another port=") from None
            raise UserError(f"cannot serve on {self.address}: {err.strerror}; host must be an address of this "
                            "machine (127.0.0.1, 0.0.0.0 or its LAN address) and port a free port") from None
        return sock

    def serve(self, stop_event: threading.Event | None = None) -> str:
        """Run until ``stop_event``, a permitted ``shutdown`` request or ``max_idle_s`` without requests; returns why.
        The socket is bound first, then the robot is connected; it is stopped + disconnected on every exit."""
        ctx = zmq.Context()
        authenticator = None
        try:
            if self.keys is not None:
                authenticator = auth.start_authenticator(ctx, self.keys)  # before bind: no window without ZAP
            sock = self._bind(ctx)
        except BaseException:
            self._stop_robot("server did not start")
            if authenticator is not None:
                authenticator.stop()
            ctx.term()
            raise
        reason = "stopped"
        try:
            if not self.robot.is_connected:
                self.robot.connect()
            mode = f"CurveZMQ, {len(self.keys.allowed)} allowed client key(s)" if self.keys else "plain text"
            self._log(f"serving robot '{self.robot.name}' on {self.address} ({mode}; protocol "
                      f"{wire.PROTOCOL_VERSION})")
            reason = self._loop(sock, stop_event)
        except BaseException as err:
            reason = f"{type(err).__name__}"
            raise
        finally:
            self._stop_robot("server exit")
            try:
                self.robot.disconnect()
            except Exception as err:  # noqa: BLE001
                self._log(f"robot.disconnect() failed: {type(err).__name__}: {err}")
            sock.close(linger=0)
            if authenticator is not None:
                authenticator.stop()
            ctx.term()
            self._log(f"stopped ({reason}) after {self.requests} requests")
        return reason

    def _loop(self, sock: zmq.Socket, stop_event: threading.Event | None) -> str:
        last_request = time.monotonic()
        while stop_event is None or not stop_event.is_set():
            self._expire_session()
            if sock.poll(20):
                frames = sock.recv_multipart(copy=False)
                last_request = time.monotonic()
                sock.send_multipart(self._reply(frames))
                self.requests += 1
                if self._shutdown:
                    return "shutdown requested"
            elif self.max_idle_s is not None and time.monotonic() - last_request > self.max_idle_s:
                return f"idle for {self.max_idle_s} s"
        return "stopped"

    def _expire_session(self) -> None:
        silence = time.monotonic() - self._session_seen
        if self.session_active and silence > self.client_timeout_s:
            self._stop_robot("client timeout")
            self.session_active = False
            self.client_timeouts += 1
            message = f"learner silent for {silence:.2f} s (timeout {self.client_timeout_s} s); robot stopped"
            self._pending_events.append(SafetyEvent("client_timeout", message))
            self._log(message)

    # -- requests ---------------------------------------------------------------------------------------------------
    def _reply(self, frames: list[Any]) -> list[bytes]:
        """The reply frames for one request; never raises (no input may end the server)."""
        try:
            return self._answer(frames)
        except Exception as err:  # noqa: BLE001  (last resort: stop the arm, tell the client, keep serving)
            self._stop_robot("internal error")
            self._log(f"internal error: {type(err).__name__}: {err}")
            return wire.encode({"ok": False, "code": "internal", "id": None,
                                "error": f"{type(err).__name__}: {str(err)[:1000]} (robot stopped)"})

    def _answer(self, frames: list[Any]) -> list[bytes]:
        try:
            header, arrays = wire.decode(frames, self.limits)
            request = wire.parse_request(header)
        except wire.ProtocolError as err:
            self.refused += 1
            return wire.encode({"ok": False, "code": "protocol", "id": None, "error": str(err)})
        key = (request.session, request.id)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]  # a retry of a request already executed
        try:
            reply_header, reply_arrays = self._handle(request, arrays, _user_id(frames[0]))
            reply_header["ok"] = True
        except UserError as err:
            self.refused += 1
            reply_header, reply_arrays = {"ok": False, "code": getattr(err, "code", "error"), "error": str(err)}, {}
        except Exception as err:  # noqa: BLE001  (the arm must stop on any failure; the server keeps serving)
            self._stop_robot("robot error")
            reply_header = {"ok": False, "code": "robot", "error": f"{type(err).__name__}: {err} (robot stopped)"}
            reply_arrays = {}
            self._log(reply_header["error"])
        events: list[SafetyEvent] = []
        if request.session == self.session:  # events belong to the controlling session, not to refused clients
            events, self._pending_events = self._pending_events + self._drain_robot_events(), []
        reply_header.update(id=request.id, events=[e.to_dict() for e in events])
        try:
            reply = wire.encode(reply_header, reply_arrays)
        except (TypeError, ValueError, wire.ProtocolError) as err:  # a NaN reward, a dtype the wire cannot carry
            reply = wire.encode({"ok": False, "code": "encode", "id": request.id,
                                 "error": f"reply not encodable: {str(err)[:1000]}"})
        self._cache = (key, reply)
        return reply

    def _drain_robot_events(self) -> list[SafetyEvent]:
        try:
            return list(self.robot.drain_safety_events())
        except Exception as err:  # noqa: BLE001
            self._log(f"drain_safety_events failed: {type(err).__name__}: {err}")
            return []

    def _hello(self, request: wire.Request, user: str | None) -> dict[str, Any]:
        version = request.fields.get("version")
        if version != wire.PROTOCOL_VERSION or isinstance(version, bool):
            raise _coded("version", f"protocol version mismatch: the client speaks {str(version)[:40]}, the robot "
                         f"server at {self.address} speaks {wire.PROTOCOL_VERSION}; update calql_robot on both "
                         "machines to the same release")
        self._expire_session()
        if self.session_active and request.session != self.session:
            assert self.session is not None
            raise _coded("busy", f"another learner session (key {self.session_user or 'none'}) controls the robot "
                         f"(last request {time.monotonic() - self._session_seen:.2f} s ago); another "
                         f"learner may take over once it says bye or is silent for client_timeout_s="
                         f"{self.client_timeout_s} s, or by presenting its session token")
        if self.session not in (None, request.session):
            self._log(f"learner session {request.session[:8]} (key {user or 'none'}) takes over from "
                      f"{self.session[:8]}")
        self.session, self.session_active, self.session_user = request.session, True, user
        self._session_seen = time.monotonic()
        return {"name": self.robot.name, "is_real": self.robot.is_real, "obs_spec": self.robot.observation_spec,
                "action_spec": self.robot.action_spec.to_dict()}

    def _send_action(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Check the 'action' array (the robot is stopped if it is malformed) and send it."""
        dim = self.robot.action_spec.dim
        action = arrays.get("action")
        if set(arrays) != {"action"} or action is None or action.dtype.kind != "f" or action.shape != (dim,):
            self._stop_robot("malformed action")
            got = {name: f"{a.dtype}{list(a.shape)}" for name, a in arrays.items()}
            raise _coded("bad_request", f"send_action needs exactly one array 'action' of a float dtype and shape "
                         f"[{dim}], got {got}; robot stopped")
        action = action.astype(np.float32)
        if not np.all(np.isfinite(action)):
            self._stop_robot("non-finite action")
            self._pending_events.append(SafetyEvent("nonfinite", f"non-finite action {action.tolist()} refused by "
                                                    "the robot server; robot stopped"))
            return self.robot.action_spec.hold.astype(np.float32)
        return np.asarray(self.robot.send_action(action), np.float32)

    def _handle(self, request: wire.Request, arrays: dict[str, np.ndarray], user: str | None
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        op = request.op
        if arrays and op != "send_action":
            raise _coded("bad_request", f"request '{op}' takes no arrays, got {sorted(arrays)[:10]}")
        if op == "hello":
            return self._hello(request, user), {}
        if self.session is None:
            raise _coded("no_session", "no handshake on this server yet (it started after the learner's hello); "
                         "say hello first")
        if request.session != self.session:
            raise _coded("displaced", "another learner session controls the robot now (this session said bye or "
                         f"was silent for more than client_timeout_s={self.client_timeout_s} s)")
        self._session_seen = time.monotonic()
        self.session_active = op != "bye"
        if op == "get_observation":
            return {}, wire.prefixed("obs", self.robot.get_observation())
        if op == "get_ee_position":
            return {}, {"ee": np.asarray(self.robot.get_ee_position(), np.float64)}
        if op == "send_action":
            return {}, {"sent": self._send_action(arrays)}
        if op == "home":
            return {}, wire.prefixed("obs", self.robot.home())
        if op == "task_signal":
            signal = self.robot.task_signal()
            reward = None if signal.reward is None else float(signal.reward)
            return {"reward": reward, "success": None if signal.success is None else bool(signal.success)}, {}
        if op in ("stop", "bye"):
            self.robot.stop()
            return {}, {}
        if op == "ping":
            return {}, {}
        if not self.allow_remote_shutdown:  # op == "shutdown"
            raise _coded("forbidden", "this server does not accept 'shutdown' (allow_remote_shutdown=false)")
        self._shutdown = True
        return {}, {}


def serve_robot(robot: RobotInterface, host: str = "127.0.0.1", port: int = 5555, **server_kwargs: Any) -> str:
    """Serve ``robot`` on tcp://host:port until stopped (see :class:`RobotServer`); returns why it stopped."""
    return RobotServer(robot, f"tcp://{host}:{int(port)}", **server_kwargs).serve()
