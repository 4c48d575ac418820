"""One controlling learner at a time, message bounds and malformed requests, against a real RobotServer on loopback
with real ZeroMQ sockets (issue 11, item 4: anyone could take over; a displaced client re-handshook silently; frames
were unbounded)."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import zmq

from calql_robot.envs.robot import wire
from calql_robot.envs.robot.interface import SafetyEvent
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.remote import RemoteRobotClient, RemoteRobotDisplaced, RemoteRobotError, RobotServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EventfulPoint(PointRobot):
    """A PointRobot whose driver reports the safety events put in ``pending`` (as a real arm's driver would)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[SafetyEvent] = []

    def drain_safety_events(self) -> list[SafetyEvent]:
        events, self.pending = self.pending, []
        return events


@pytest.fixture
def served():
    """(server, robot, address) of a robot served in a thread; stopped afterwards."""
    robot = EventfulPoint()
    address = f"tcp://127.0.0.1:{free_port()}"
    server = RobotServer(robot, address, client_timeout_s=1.0, max_idle_s=30, verbose=False,
                         limits=wire.WireLimits(max_message_bytes=1 << 20, max_arrays=4, max_header_bytes=4096))
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    yield server, robot, address
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and not robot.is_connected


def raw_request(address: str, frames: list[bytes], wait_ms: int = 3000) -> tuple[dict, dict] | None:
    """Send one request on a fresh REQ socket; (header, arrays) of the reply or None if none came."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        sock.send_multipart(frames)
        return wire.decode(sock.recv_multipart()) if sock.poll(wait_ms) else None
    finally:
        ctx.destroy(linger=0)


def test_second_learner_is_refused_while_the_first_controls(served) -> None:
    server, robot, address = served
    first = RemoteRobotClient(address, timeout_s=1.0, retries=2, heartbeat_s=0.1)
    second = RemoteRobotClient(address, timeout_s=1.0, retries=2)
    with first:
        first.home()
        first.send_action(np.array([0.2, 0, 0, 0], np.float32))
        with pytest.raises(RemoteRobotError, match="controlled by another learner session"):
            second.connect()
        assert not second.is_connected and server.session == first.session
        time.sleep(1.5)  # longer than client_timeout_s: the heartbeat keeps the session
        with pytest.raises(RemoteRobotError, match="controlled by another learner session"):
            second.connect()
        first.send_action(np.array([0.1, 0, 0, 0], np.float32))  # the first still drives it
    assert server.client_timeouts == 0 and len(robot.command_log) == 2
    with second:  # after the first said bye
        assert second.name == "remote:point"
        second.home()
    assert server.session == second.session


def test_displaced_learner_raises_instead_of_taking_the_robot_back(served) -> None:
    server, robot, address = served
    first = RemoteRobotClient(address, timeout_s=1.0, retries=2)
    first.connect()
    first.send_action(np.array([0.5, 0, 0, 0], np.float32))
    time.sleep(1.5)  # the first is silent past client_timeout_s: the server stops the arm
    assert np.all(robot.velocity == 0) and server.client_timeouts == 1
    second = RemoteRobotClient(address, timeout_s=1.0, retries=2)
    second.connect()
    with pytest.raises(RemoteRobotDisplaced, match="another learner session took control"):
        first.send_action(np.array([0.5, 0, 0, 0], np.float32))
    with pytest.raises(RemoteRobotDisplaced):
        first.home()
    assert first.displaced and len(robot.command_log) == 1  # the displaced learner's actions never ran
    assert server.session == second.session
    np.testing.assert_allclose(second.send_action(np.array([0.1, 0, 0, 0], np.float32)), [0.1, 0, 0, 0])
    first.disconnect()  # its 'bye' is refused without disturbing the controller
    second.heartbeat()
    assert server.session == second.session and server.session_active
    second.disconnect()


def test_session_token_lets_a_new_client_take_over(served) -> None:
    server, _, address = served
    first = RemoteRobotClient(address, timeout_s=1.0, retries=2)
    first.connect()
    heir = RemoteRobotClient(address, timeout_s=1.0, retries=2, session_token=first.session)
    heir.connect()  # presents the controlling session's token: accepted while the session is active
    assert heir.home()["robot_state"].shape == (5,) and server.session == first.session
    heir.disconnect()
    first._close()


def test_events_go_only_to_the_controlling_session(served) -> None:
    _, robot, address = served
    first = RemoteRobotClient(address, timeout_s=1.0, retries=2)
    first.connect()
    robot.pending.append(SafetyEvent("workspace", "clipped at the top face"))
    refused = raw_request(address, wire.encode({"op": "hello", "id": 1, "session": "intruder",
                                                "version": wire.PROTOCOL_VERSION}))[0]
    assert refused["ok"] is False and refused["code"] == "busy" and refused["events"] == []
    first.heartbeat()
    assert [e.kind for e in first.drain_safety_events()] == ["workspace"]
    first.disconnect()


def test_oversized_frame_is_dropped_at_the_socket_and_the_server_lives(served) -> None:
    server, _, address = served
    big = b"x" * (4 << 20)  # 4 MiB frame against max_message_bytes of 1 MiB
    head = b'{"op":"ping","id":1,"session":"s","arrays":[{"name":"a","dtype":"uint8","shape":[4194304]}]}'
    assert raw_request(address, [head, big], wait_ms=800) is None  # libzmq disconnected the sender
    header, _ = raw_request(address, [b'{"op":"ping","id":2,"session":"s"}'])
    assert header["ok"] is False and header["code"] == "no_session"  # alive, and parsing normally
    assert server.requests == 1


@pytest.mark.parametrize("frames, expected", [
    ([b'{"op":"ping","id":1,"session":"s","arrays":[]}'] + [b""] * 5, "more than max_arrays"),
    ([b'{"op":"ping","id":1,"session":"s","pad":"' + b"p" * 5000 + b'"}'], "larger than max_header_bytes"),
    ([b'{"op":"ping","id":1,"session":"s","arrays":[{"name":"a","dtype":"float64","shape":[100000,100000]}]}',
      b""], "more than max_message_bytes"),
    ([b'{"op":"ping","id":1,"session":"s","arrays":[{"name":"a","dtype":"uint8","shape":[3]}]}', b"abcd"],
     "expected 3"),
    ([b'{"op":"ping","id":1,"session":"s","extra":1}'], "unknown header fields"),
    ([b'{"op":"fly","id":1,"session":"s"}'], "'op'"),
    ([b'{"op":"ping","id":1,"session":"bad session!"}'], "'session'"),
    ([b'{"op":"hello","id":1,"session":"s","version":"2"}'], "version mismatch"),
    ([b'[' * 4000], "JSON"),
])
def test_malformed_requests_get_error_replies(served, frames: list[bytes], expected: str) -> None:
    server, _, address = served
    header, _ = raw_request(address, frames)
    assert header["ok"] is False and expected in header["error"], header
    header, _ = raw_request(address, wire.encode({"op": "hello", "id": 9, "session": "s",
                                                  "version": wire.PROTOCOL_VERSION}))
    assert header["ok"] is True  # still serving


def test_malformed_action_stops_the_robot(served) -> None:
    _, robot, address = served
    hello = wire.encode({"op": "hello", "id": 1, "session": "s", "version": wire.PROTOCOL_VERSION})
    assert raw_request(address, hello)[0]["ok"]
    go = wire.encode({"op": "send_action", "id": 2, "session": "s"}, {"action": np.array([1, 0, 0, 0], np.float32)})
    assert raw_request(address, go)[0]["ok"] and robot.velocity[0] > 0
    for n, action in enumerate([np.zeros(7, np.float32), np.zeros(4, np.int64), np.zeros((2, 2), np.float32)]):
        header, _ = raw_request(address, wire.encode({"op": "send_action", "id": 3 + n, "session": "s"},
                                                     {"action": action}))
        assert header["ok"] is False and header["code"] == "bad_request" and "robot stopped" in header["error"]
        assert np.all(robot.velocity == 0)
        again = wire.encode({"op": "send_action", "id": 10 + n, "session": "s"},
                            {"action": np.array([1, 0, 0, 0], np.float32)})
        assert raw_request(address, again)[0]["ok"] and robot.velocity[0] > 0
    header, out = raw_request(address, wire.encode({"op": "send_action", "id": 20, "session": "s"},
                                                   {"action": np.array([np.nan, 0, 0, 0], np.float32)}))
    assert header["ok"] and np.all(out["sent"] == 0) and np.all(robot.velocity == 0)
    assert [e["kind"] for e in header["events"]] == ["nonfinite"]
    assert len(robot.command_log) == 4  # only the four well-formed, finite actions reached the robot
