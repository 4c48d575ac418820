"""Fuzzing the robot wire protocol (issue 11, "Fuzzing in CI"): random headers, ids, dtypes, shapes and sizes, sent
over a real loopback ZeroMQ socket to a real RobotServer. Every request must get a well-formed reply (an error with
a known code, or a correct result), the server must keep serving, and no malformed action may reach the robot.
Each test is bounded to a few seconds (max_examples, no deadline)."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calql_robot.envs.robot import wire
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.remote import RobotServer

ERROR_CODES = {"protocol", "no_session", "displaced", "busy", "version", "bad_request", "forbidden", "error",
               "robot", "encode"}  # "internal" would mean a bug: it is the catch-all of last resort
SESSION = "fuzz-session"
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Link:
    """A REQ socket to the served robot; :meth:`ask` sends frames and returns the decoded reply."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def ask(self, frames: list[bytes]) -> tuple[dict, dict]:
        self.sock.send_multipart(frames)
        assert self.sock.poll(5000), f"no reply to {frames[0][:200]!r}"
        header, arrays = wire.decode(self.sock.recv_multipart(), wire.WireLimits(max_header_bytes=1 << 20))
        assert isinstance(header["ok"], bool) and isinstance(header.get("events", []), list)
        if not header["ok"]:
            assert header["code"] in ERROR_CODES and isinstance(header["error"], str), header
        return header, arrays

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def served():
    """(server, robot, link, thread) of a PointRobot served in a thread, with a session 'fuzz-session' open."""
    robot = PointRobot()
    address = f"tcp://127.0.0.1:{free_port()}"
    server = RobotServer(robot, address, client_timeout_s=60.0, max_idle_s=120, verbose=False)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    link = Link(address)
    hello = {"op": "hello", "id": 0, "session": SESSION, "version": wire.PROTOCOL_VERSION}
    assert link.ask(wire.encode(hello))[0]["ok"]
    yield server, robot, link, thread
    link.close()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and not robot.is_connected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4)
dtypes = st.sampled_from(sorted(wire.ALLOWED_DTYPES)) | st.sampled_from(["object", "complex128", "<f4", "", "V8"]) \
    | json_values
shapes = st.lists(st.integers(-3, 6) | st.sampled_from([2**31, 2**62, 10**30]), max_size=4) | json_values
descriptors = st.fixed_dictionaries(
    {"name": st.sampled_from(["action", "obs/x", "a"]) | st.text(max_size=10), "dtype": dtypes, "shape": shapes},
    optional={"extra": json_values}) | json_values
headers = st.fixed_dictionaries(
    {}, optional={"op": st.sampled_from(sorted(wire.OP_FIELDS)) | json_values,
                  "id": st.integers(-5, 2**64) | json_values,
                  "session": st.sampled_from([SESSION, "other", ""]) | json_values,
                  "version": st.sampled_from([wire.PROTOCOL_VERSION, 1]) | json_values,
                  "v": st.sampled_from([wire.PROTOCOL_VERSION]) | json_values,
                  "arrays": st.lists(descriptors, max_size=3) | json_values,
                  "junk": json_values})


@FUZZ
@given(header=headers, buffers=st.lists(st.binary(max_size=64), max_size=3))
def test_random_headers_get_an_error_or_a_correct_reply(served, header: dict, buffers: list[bytes]) -> None:
    server, robot, link, thread = served
    if header.get("op") == "bye":
        header["op"] = "stop"  # 'bye' would end the fuzz session (the hand-over is tested in test_robot_session)
    reply, arrays = link.ask([json.dumps(header).encode(), *buffers])
    if reply["ok"]:  # only a request that passed every check; its result must be right
        assert header.get("session") == SESSION and isinstance(header.get("id"), int)
        if header["op"] == "send_action":
            assert arrays["sent"].shape == (4,) and np.all(np.abs(arrays["sent"]) <= 1)
        if header["op"] == "get_ee_position":
            assert arrays["ee"].shape == (3,) and np.all(np.isfinite(arrays["ee"]))
    assert thread.is_alive() and server.session == SESSION and server.session_active
    for _, sent, _ in robot.command_log:
        assert sent.shape == (4,) and np.all(np.isfinite(sent)) and np.all(np.abs(sent) <= 1)


@FUZZ
@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_random_bytes_get_an_error_reply(served, frames: list[bytes]) -> None:
    _, _, link, thread = served
    reply, _ = link.ask(frames)
    assert reply["ok"] is False or frames[0].strip().startswith(b"{")
    assert thread.is_alive()


request_ids = iter(range(10**6, 10**9))
arrays_for_action = st.one_of(
    st.builds(lambda v: np.asarray(v, np.float32), st.lists(st.floats(-1, 1, width=32), min_size=4, max_size=4)),
    st.builds(lambda v, d: np.asarray(v, d), st.lists(st.floats(-1e3, 1e3) | st.sampled_from([np.nan, np.inf]),
                                                       min_size=0, max_size=6),
              st.sampled_from(["float16", "float32", "float64"])),
    st.builds(lambda v, d: np.asarray(v, d), st.lists(st.integers(0, 100), min_size=0, max_size=6),
              st.sampled_from(["int32", "uint8", "int64", "bool"])))


@FUZZ
@given(op=st.sampled_from(["send_action", "get_ee_position", "ping", "task_signal", "get_observation"]),
       action=arrays_for_action, extra=st.booleans())
def test_well_framed_requests_in_session_give_correct_results(served, op: str, action: np.ndarray,
                                                               extra: bool) -> None:
    server, robot, link, thread = served
    arrays = {"action": action} if op == "send_action" else {}
    if extra:
        arrays["stray"] = np.zeros(2, np.uint8)
    before = len(robot.command_log)
    reply, out = link.ask(wire.encode({"op": op, "id": next(request_ids), "session": SESSION}, arrays))
    well_formed = (not extra and (op != "send_action" or (action.shape == (4,) and action.dtype.kind == "f")))
    assert reply["ok"] == well_formed, reply
    if op == "send_action" and well_formed:
        finite = bool(np.all(np.isfinite(action.astype(np.float32))))
        expected = np.clip(action.astype(np.float32), -1, 1) if finite else np.zeros(4, np.float32)
        np.testing.assert_allclose(out["sent"], expected, rtol=1e-6)
        assert len(robot.command_log) == before + int(finite)
    else:
        assert len(robot.command_log) == before
    if op == "get_observation" and well_formed:
        assert out["obs/robot_state"].shape == (5,)
    assert thread.is_alive() and server.session == SESSION


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(st.binary(max_size=100), min_size=0, max_size=4), header=headers)
def test_decode_raises_only_protocol_errors(frames: list[bytes], header: dict) -> None:
    for message in (frames, [json.dumps(header).encode(), *frames]):
        try:
            parsed, arrays = wire.decode(message)
            wire.parse_request(parsed)
        except wire.ProtocolError:
            continue
        for arr, buf in zip(arrays.values(), message[1:]):
            assert arr.nbytes == len(buf) and arr.flags.writeable
