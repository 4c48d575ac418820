"""Remote robot over ZeroMQ on loopback (127.0.0.1 only): wire format, handshake, episodes through the server app in
another process, the arm stopped when the learner process dies, reconnects after a server restart."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from calql_robot.envs.robot import human, wire
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.remote import RemoteRobotClient, RemoteRobotError, RobotServer
from calql_robot.envs.robot.robot_env import RobotEnv
from calql_robot.envs.robot.safety import make_safe_robot

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(robot, port: int, **kwargs) -> tuple[RobotServer, threading.Event, threading.Thread]:
    server = RobotServer(robot, f"tcp://127.0.0.1:{port}", verbose=False, **kwargs)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    return server, stop, thread


def test_wire_roundtrip_and_refusals() -> None:
    arrays = {"obs/rgb": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3), "x": np.array([1.5, -2.0]),
              "flag": np.array([True, False]), "empty": np.zeros((0, 4), np.float32)}
    frames = wire.encode({"op": "t", "note": "ä"}, arrays)
    header, out = wire.decode(frames)
    assert header["op"] == "t" and header["note"] == "ä" and header["v"] == wire.PROTOCOL_VERSION
    for key, value in arrays.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape
        np.testing.assert_array_equal(out[key], value)
    with pytest.raises(wire.ProtocolError, match="bytes"):
        wire.decode([frames[0], frames[1][:-1], *frames[2:]])
    with pytest.raises(wire.ProtocolError, match="buffers"):
        wire.decode(frames[:-1])
    with pytest.raises(wire.ProtocolError, match="JSON"):
        wire.decode([b"\x80\x04pickle", b""])
    with pytest.raises(wire.ProtocolError, match="dtype"):
        wire.encode({}, {"o": np.array([object()])})
    bad = b'{"arrays": [{"name": "a", "dtype": "object", "shape": [1]}]}'
    with pytest.raises(wire.ProtocolError, match="not allowed"):
        wire.decode([bad, b"12345678"])


def test_episodes_through_server_app_in_another_process() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "calql_robot.robot_server", "robot=point", f"port={port}", "max_idle_s=20",
         "allow_remote_shutdown=true", "client_timeout_s=2.0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = RemoteRobotClient(f"tcp://127.0.0.1:{port}", timeout_s=1.0, retries=20)
        client.connect()  # retries while the server process starts
        assert client.name == "remote:point" and client.action_spec.dim == 4 and client.action_spec.is_ee_delta
        env = RobotEnv(make_safe_robot(client, {}), horizon=15, control_hz=20.0,
                       events=human.ScriptedEvents([{"episode": 1, "step": 3, "event": "failure"}]))
        goal = np.array([0.1, 0.1, 0.2])
        outcomes = []
        for _ in range(3):
            obs, _ = env.reset()
            assert env.observation_space.contains(obs)
            assert obs["agentview_rgb"].shape == (16, 16, 3) and obs["robot_state"].dtype == np.float32
            np.testing.assert_allclose(obs["robot_state"][:3], [0.0, 0.0, 0.3], atol=1e-6)
            for _ in range(env.horizon):
                action = np.append(np.clip((goal - obs["robot_state"][:3]) / 0.05, -1, 1), 0.0)
                obs, reward, terminated, truncated, info = env.step(action.astype(np.float32))
                if terminated or truncated:
                    break
            outcomes.append((info["success"], info["failure"], reward, env.step_count))
        assert outcomes[0][:3] == (True, False, 1.0) and outcomes[2][:3] == (True, False, 1.0)
        assert outcomes[1][1] or outcomes[1][0]  # failure label at step 3 unless the goal was reached first
        client._request("shutdown")
        client._close()
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "serving robot 'point'" in out and "shutdown requested" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


CLIENT_THAT_DIES = """
import os, sys, numpy as np
from calql_robot.envs.robot.remote import RemoteRobotClient
c = RemoteRobotClient(sys.argv[1], timeout_s=2.0, retries=2)
c.connect()
c.home()
c.send_action(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
os._exit(0)   # the learner dies without saying goodbye
"""


def test_server_stops_arm_when_learner_process_dies() -> None:
    port = free_port()
    robot = PointRobot(control_hz=20.0)  # no watchdog here: the server's own client timeout must stop it
    server, stop, thread = start_server(robot, port, client_timeout_s=0.4, max_idle_s=120)
    try:
        done = subprocess.run([sys.executable, "-c", CLIENT_THAT_DIES, f"tcp://127.0.0.1:{port}"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        t_dead = time.monotonic()
        assert robot.velocity[0] > 0  # moving, and nobody is commanding it
        while np.any(robot.velocity != 0) and time.monotonic() - t_dead < 3.0:
            time.sleep(0.01)
        assert np.all(robot.velocity == 0) and time.monotonic() - t_dead < 1.0
        assert server.client_timeouts == 1 and not server.session_active
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive() and not robot.is_connected


def test_version_handshake_and_unreachable_server() -> None:
    port = free_port()
    server, stop, thread = start_server(PointRobot(), port, max_idle_s=10)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_multipart([b'{"op": "hello", "version": 999, "id": 1, "session": "old"}'])
        assert sock.poll(5000)
        header, _ = wire.decode(sock.recv_multipart())
        assert header["ok"] is False and "version mismatch" in header["error"]
        sock.send_multipart(wire.encode({"op": "get_observation", "id": 2, "session": "never-said-hello"}))
        assert sock.poll(5000)
        header, _ = wire.decode(sock.recv_multipart())
        assert header["ok"] is False and header["code"] == "no_session"
        sock.close()
    finally:
        ctx.term()
        stop.set()
        thread.join(timeout=5)
    client = RemoteRobotClient(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.2, retries=2)
    start = time.monotonic()
    with pytest.raises(RemoteRobotError, match="did not answer 'hello' in 2 tries"):
        client.connect()
    assert time.monotonic() - start < 2.0 and not client.is_connected


def test_client_reconnects_after_server_restart_without_double_sending() -> None:
    port = free_port()
    robot_a = PointRobot()
    _, stop_a, thread_a = start_server(robot_a, port, max_idle_s=10)
    client = RemoteRobotClient(f"tcp://127.0.0.1:{port}", timeout_s=0.3, retries=20)
    with client:
        client.home()
        client.send_action(np.array([0.2, 0, 0, 0], np.float32))
        assert len(robot_a.command_log) == 1
        stop_a.set()
        thread_a.join(timeout=5)
        robot_b = PointRobot(home_pose=(0.1, 0.0, 0.3))
        servers = []
        timer = threading.Timer(0.8, lambda: servers.append(start_server(robot_b, port, max_idle_s=10)))
        timer.start()
        obs = client.home()  # times out while no server runs, reconnects, re-handshakes with the new server
        np.testing.assert_allclose(obs["robot_state"][:3], [0.1, 0.0, 0.3], atol=1e-6)
        assert client.reconnects >= 1
        sent = client.send_action(np.array([0.3, 0, 0, 0], np.float32))
        np.testing.assert_allclose(sent, [0.3, 0, 0, 0])
        assert len(robot_b.command_log) == 1  # one request, executed exactly once
        assert robot_b.velocity[0] > 0
    assert np.all(robot_b.velocity == 0)  # 'bye' on disconnect stopped it; the server still runs
    _, stop_b, thread_b = servers[0]
    stop_b.set()
    thread_b.join(timeout=5)


def test_repeated_request_id_is_answered_from_cache_not_executed_twice() -> None:
    port = free_port()
    robot = PointRobot()
    _, stop, thread = start_server(robot, port, max_idle_s=10)
    ctx = zmq.Context()
    try:
        replies = []
        hello = wire.encode({"op": "hello", "version": wire.PROTOCOL_VERSION, "id": 1, "session": "s"})
        act = wire.encode({"op": "send_action", "id": 2, "session": "s"}, {"action": np.array([0.5, 0, 0, 0],
                                                                                               np.float32)})
        for frames in (hello, act, act):  # the second 'act' is what a client resends after a lost reply
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{port}")
            sock.send_multipart(frames)
            assert sock.poll(5000)
            replies.append(wire.decode(sock.recv_multipart()))
            sock.close()
        assert all(header["ok"] for header, _ in replies)
        np.testing.assert_array_equal(replies[1][1]["sent"], replies[2][1]["sent"])
        assert len(robot.command_log) == 1
    finally:
        ctx.term()
        stop.set()
        thread.join(timeout=5)


def test_sim_robot_episode_over_loopback() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "calql_robot.robot_server", "robot=sim", f"port={port}", "max_idle_s=30",
         "allow_remote_shutdown=true"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = RemoteRobotClient(f"tcp://127.0.0.1:{port}", timeout_s=2.0, retries=30, heartbeat_s=0.3)
        env = RobotEnv(make_safe_robot(client, {}), horizon=6,
                       events=human.ScriptedEvents([{"step": "reset", "event": "reset_done"}]),
                       wait_for_reset_done=True, reset_timeout_s=5.0)
        for _ in range(2):
            obs, _ = env.reset()
            assert obs["agentview_rgb"].shape == (64, 64, 3) and obs["agentview_rgb"].dtype == np.uint8
            assert obs["agentview_rgb"].std() > 0  # a rendered picture, not zeros
            for _ in range(env.horizon):
                obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0, -1.0, -1.0], np.float32))
                if terminated or truncated:
                    break
            assert truncated and env.step_count == 6 and reward == 0.0 and not info["success"]
            assert obs["robot_state"][2] >= 0.805 - 0.01  # the server-side workspace box held
        client.send_action(np.zeros(4, np.float32))
        time.sleep(1.5)  # past the watchdog (0.5 s) and client_timeout_s (1.0 s): heartbeats keep the session
        kinds = [e.kind for e in client.drain_safety_events()] + [e["kind"] for e in info["safety_events"]]
        client.heartbeat()
        kinds += [e.kind for e in client.drain_safety_events()]
        assert "watchdog" in kinds and "client_timeout" not in kinds
        client._request("shutdown")
        client._close()
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


BAD_IDS = [b'"abc"', b"null", b"NaN", b"1e400", b"[1]", b"-1", b"true", b"1.5", b"9" * 5000]


def test_bad_request_ids_get_error_replies_and_the_server_app_keeps_serving() -> None:
    """Issue 11, item 1: an id of "abc", null, NaN, 1e400 or [1] made robot_server exit with a traceback."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "calql_robot.robot_server", "robot=point", f"port={port}", "max_idle_s=30",
         "allow_remote_shutdown=true"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = zmq.Context()
    try:
        client = RemoteRobotClient(f"tcp://127.0.0.1:{port}", timeout_s=1.0, retries=30)
        client.connect()  # waits for the server process
        for bad_id in BAD_IDS:
            with ctx.socket(zmq.REQ) as sock:
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(f"tcp://127.0.0.1:{port}")
                sock.send(b'{"op":"ping","id":' + bad_id + b',"arrays":[]}')
                assert sock.poll(5000), f"no reply for id {bad_id[:20]!r}"
                header, _ = wire.decode(sock.recv_multipart())
            assert header["ok"] is False and header["code"] == "protocol" and header["id"] is None, header
            assert "'id'" in header["error"] or "JSON the protocol accepts" in header["error"], header
            assert proc.poll() is None
        client.heartbeat()  # the controlling learner is still served
        np.testing.assert_allclose(client.home()["robot_state"][:3], [0.0, 0.0, 0.3], atol=1e-6)
        client._request("shutdown")
        client._close()
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "Traceback" not in out, out
    finally:
        ctx.destroy(linger=0)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def run_server_app(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calql_robot.robot_server", "robot=point", *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("overrides, expected", [
    (["port=abc"], "port is 'abc'"),
    (["host=999.1.1.1"], "host is '999.1.1.1'"),
])
def test_server_app_bad_settings_give_one_paragraph(overrides: list[str], expected: str) -> None:
    """Issue 11, item 10: `robot_server port=abc` and `host=999.1.1.1` gave tracebacks."""
    done = run_server_app(*overrides)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("override, expected", [
    ("port=70000", "port is 70000"), ("port=5555.5", "port is 5555.5"), ("host=''", "host is ''"),
    ("host='robot pc'", "host is 'robot pc'"), ("client_timeout_s=abc", "client_timeout_s is 'abc'"),
    ("max_idle_s=-1", "max_idle_s is -1"), ("allow_remote_shutdown=maybe", "allow_remote_shutdown is 'maybe'"),
    ("insecure=1", "insecure is 1"), ("keys_dir=/nonexistent/keys", "keys_dir is '/nonexistent/keys'"),
    ("max_message_bytes=0", "max_message_bytes is 0"), ("max_arrays=abc", "max_arrays is 'abc'"),
    ("max_header_bytes=99999999", "max_header_bytes is 99999999"),
])
def test_server_settings_are_all_checked_before_the_robot_is_built(override: str, expected: str) -> None:
    from hydra import compose, initialize_config_dir

    from calql_robot.errors import UserError
    from calql_robot.robot_server import server_settings

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("robot_server", overrides=["robot=point", override])
    with pytest.raises(UserError, match=re.escape(expected)):
        server_settings(cfg)


def test_server_app_port_in_use_gives_one_paragraph() -> None:
    """Issue 11, item 10: a port already in use gave a ZMQError traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_server_app(f"port={taken.getsockname()[1]}", "max_idle_s=5")
    assert done.returncode == 2 and "already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
