"""Authenticated robot link (issue 11, item 4): keys made by `python -m calql_robot.robot_keys` (0600 files), CurveZMQ
with an allow-list on real loopback sockets, refusals before any message is read, and no plain text off loopback."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from hydra import compose, initialize_config_dir

from calql_robot.envs.robot import auth
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.remote import RemoteRobotClient, RemoteRobotError, RobotServer
from calql_robot.errors import UserError
from calql_robot.robot_keys import plan_keys, write_keys

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_keys(root: Path, *overrides: str) -> None:
    """What `python -m calql_robot.robot_keys keys_dir=ROOT ...` does, in this process."""
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("robot_keys", overrides=[f"keys_dir={root}", *overrides])
    write_keys(*plan_keys(cfg))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def curve_server(tmp_path):
    """(server, robot, address, keys folder) of a PointRobot served with keys and allow-list ['learner']."""
    keys_dir = tmp_path / "keys"
    make_keys(keys_dir, "clients=[learner]")
    robot = PointRobot()
    address = f"tcp://127.0.0.1:{free_port()}"
    server = RobotServer(robot, address, max_idle_s=30, verbose=False, keys=auth.ServerKeys.load(keys_dir))
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    yield server, robot, address, keys_dir
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and not robot.is_connected


def test_robot_keys_app_writes_0600_files_and_changes_nothing_on_conflict(tmp_path) -> None:
    keys_dir = tmp_path / "keys"
    done = subprocess.run([sys.executable, "-m", "calql_robot.robot_keys", f"keys_dir={keys_dir}",
                           "clients=[learner,cam]"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    files = sorted(p for p in keys_dir.rglob("*") if p.is_file())
    assert [p.relative_to(keys_dir).as_posix() for p in files] == [
        "allowed_clients/cam.key", "allowed_clients/learner.key", "clients/cam.key_secret",
        "clients/learner.key_secret", "server.key", "server.key_secret"]
    assert all(mode(p) == 0o600 for p in files) and mode(keys_dir) == mode(keys_dir / "allowed_clients") == 0o700
    public, secret = zmq.auth.load_certificate(keys_dir / "server.key_secret")  # ZeroMQ's certificate format
    assert zmq.curve_public(secret) == public == zmq.auth.load_certificate(keys_dir / "server.key")[0]
    assert f"scp -p {keys_dir / 'server.key'}" in done.stdout
    before = {p: p.read_bytes() for p in files}
    again = subprocess.run([sys.executable, "-m", "calql_robot.robot_keys", f"keys_dir={keys_dir}",
                            "clients=[new,cam]"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "client 'cam' already has" in again.stderr and "Traceback" not in again.stderr
    assert {p: p.read_bytes() for p in keys_dir.rglob("*") if p.is_file()} == before  # 'new' was not written either
    make_keys(keys_dir, "clients=[new]", "revoke=[cam]")
    allowed = auth.load_allow_list(keys_dir / "allowed_clients")
    assert sorted(allowed.values()) == ["learner", "new"] and (keys_dir / "server.key").read_bytes() == \
        before[keys_dir / "server.key"]  # the server pair is reused


@pytest.mark.parametrize("override, expected", [
    ("clients=[server]", "not 'server'"), ("clients=learner", "expected a list of names"),
    ("clients=['../x']", "expected names"), ("clients=[a,a]", "names a client twice"),
    ("revoke=[ghost]", "does not exist"), ("overwrite=yes", "overwrite is 'yes'"),
])
def test_robot_keys_settings_are_checked_before_writing(tmp_path, override: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        make_keys(tmp_path / "keys", override)
    assert not (tmp_path / "keys").exists()


def test_key_files_readable_by_others_or_damaged_are_refused(tmp_path) -> None:
    keys_dir = tmp_path / "keys"
    make_keys(keys_dir, "clients=[learner]")
    secret = keys_dir / "server.key_secret"
    secret.chmod(0o640)
    with pytest.raises(UserError, match=r"server.key_secret has mode 0640.*chmod 600"):
        auth.ServerKeys.load(keys_dir)
    secret.chmod(0o600)
    (keys_dir / "allowed_clients").chmod(0o777)
    with pytest.raises(UserError, match="may add keys"):
        auth.ServerKeys.load(keys_dir)
    (keys_dir / "allowed_clients").chmod(0o700)
    (keys_dir / "allowed_clients" / "learner.key").chmod(0o644)
    with pytest.raises(UserError, match="learner.key has mode 0644"):
        auth.ServerKeys.load(keys_dir)
    (keys_dir / "allowed_clients" / "learner.key").chmod(0o600)
    text = secret.read_text()
    secret.write_text(text.replace('secret-key = "', 'secret-key = "x'))
    with pytest.raises(UserError, match="secret-key is not a 40-character Z85"):
        auth.ServerKeys.load(keys_dir)
    server_public, _ = auth.read_key_file(keys_dir / "server.key", need_secret=False)
    _, learner_secret = auth.read_key_file(keys_dir / "clients" / "learner.key_secret", need_secret=True)
    secret.write_text(auth.key_file_text("server", server_public, learner_secret))
    with pytest.raises(UserError, match="does not belong"):
        auth.ServerKeys.load(keys_dir)
    secret.write_text(text)
    (keys_dir / "allowed_clients" / "learner.key").unlink()
    with pytest.raises(UserError, match="holds no"):
        auth.ServerKeys.load(keys_dir)
    with pytest.raises(UserError, match="give both server_key"):
        RemoteRobotClient("tcp://127.0.0.1:5555", server_key=str(keys_dir / "server.key"))


def test_allowed_learner_drives_the_robot_over_curve(curve_server) -> None:
    server, robot, address, keys_dir = curve_server
    client = RemoteRobotClient(address, timeout_s=2.0, retries=2, server_key=str(keys_dir / "server.key"),
                               client_key=str(keys_dir / "clients" / "learner.key_secret"))
    with client:
        np.testing.assert_allclose(client.home()["robot_state"][:3], [0.0, 0.0, 0.3], atol=1e-6)
        np.testing.assert_allclose(client.send_action(np.array([0.2, 0, 0, 0], np.float32)), [0.2, 0, 0, 0])
        assert server.session_user == "learner" and len(robot.command_log) == 1


def test_unlisted_key_plain_text_and_wrong_server_key_are_refused_before_any_message(curve_server, tmp_path) -> None:
    server, robot, address, keys_dir = curve_server
    make_keys(tmp_path / "elsewhere", "clients=[stranger]")
    stranger = tmp_path / "elsewhere" / "clients" / "stranger.key_secret"
    learner = keys_dir / "clients" / "learner.key_secret"
    cases = [
        ({"server_key": str(keys_dir / "server.key"), "client_key": str(stranger)}, "not in the server's allowed"),
        ({"server_key": str(tmp_path / "elsewhere" / "server.key"), "client_key": str(learner)}, "is not the public"),
        ({}, "one side uses keys and the other plain text"),
    ]
    for kwargs, expected in cases:
        client = RemoteRobotClient(address, timeout_s=0.5, retries=3, **kwargs)
        with pytest.raises(RemoteRobotError, match=expected):
            client.connect()
        assert not client.is_connected
    assert server.requests == 0 and server.session is None and len(robot.command_log) == 0


def test_plain_text_is_refused_off_loopback_unless_insecure(capsys) -> None:
    with pytest.raises(UserError, match="reachable from other machines.*keys_dir"):
        RobotServer(PointRobot(), "tcp://0.0.0.0:5555")
    with pytest.raises(UserError, match="reachable from other machines.*server_key and client_key"):
        RemoteRobotClient("tcp://192.168.1.10:5555")
    RemoteRobotClient("tcp://192.168.1.10:5555", insecure=True)
    RobotServer(PointRobot(), "tcp://0.0.0.0:5555", insecure=True, verbose=False)
    assert capsys.readouterr().err.count("WARNING") == 2


def test_real_robot_config_without_keys_refuses_a_non_loopback_host() -> None:
    """The lab template, with its workspace filled in, must not serve on 0.0.0.0 without keys (checked before the
    driver is imported or built)."""
    done = subprocess.run(
        [sys.executable, "-m", "calql_robot.robot_server", "robot=lab_template", "host=0.0.0.0", "port=5998",
         "robot.safety.workspace={low:[0,0,0],high:[1,1,1]}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "keys_dir" in done.stderr and "robot_keys" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "my_lab" not in done.stderr
