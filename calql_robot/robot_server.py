"""Serve a robot to a remote learner over ZeroMQ: ``python -m calql_robot.robot_server robot=sim port=5555``.

The robot is built from ``configs/robot/<name>.yaml`` with its safety layers (they run here, next to the arm), then
served on tcp://host:port until Ctrl-C / SIGTERM / SIGHUP, or until ``max_idle_s`` passes without a request. With
``keys_dir`` (made by ``python -m calql_robot.robot_keys``) the link is CurveZMQ and only allow-listed learners get
through; without keys only a loopback host is accepted unless ``insecure=true``. Every setting is checked before
the robot is built; the arm is stopped when the learner says goodbye, is silent for ``client_timeout_s``, and on
every way the server ends. Learner side::

    from calql_robot.envs.robot import RemoteRobotClient
    with RemoteRobotClient("tcp://ROBOT_PC:5555", server_key="server.key", client_key="learner.key_secret") as robot:
        ...
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from omegaconf import DictConfig, OmegaConf

from calql_robot.app import calql_app
from calql_robot.errors import UserError


def _seconds(cfg: DictConfig, key: str, optional: bool = False) -> float | None:
    value = cfg.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        expected = "a number of seconds > 0" + (" or null" if optional else "")
        raise UserError(f"{key} is {value!r}; expected {expected}")
    return float(value)


def _flag(cfg: DictConfig, key: str) -> bool:
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise UserError(f"{key} is {value!r}; expected true or false")
    return value


def server_settings(cfg: DictConfig) -> dict[str, Any]:
    """Every robot_server setting checked (and the keys loaded) before anything touches the robot."""
    from calql_robot.envs.robot import auth, wire

    host = auth.check_host(cfg.get("host"), "host")
    port = cfg.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise UserError(f"port is {port!r}; expected a TCP port number between 1 and 65535")
    insecure = _flag(cfg, "insecure")
    keys_dir = cfg.get("keys_dir")
    if keys_dir is not None and not isinstance(keys_dir, str):
        raise UserError(f"keys_dir is {keys_dir!r}; expected the folder made by `python -m calql_robot.robot_keys`")
    keys = None if keys_dir is None else auth.ServerKeys.load(keys_dir, "keys_dir")
    if keys is None and not insecure:
        auth.check_plaintext_allowed(host, False, "keys_dir", "robot_server")
    limits = {}
    for key in ("max_message_bytes", "max_arrays", "max_header_bytes"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} is {value!r}; expected a whole number >= 1")
        limits[key] = value
    address = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"  # IPv6 hosts in brackets
    return {"address": address, "client_timeout_s": _seconds(cfg, "client_timeout_s"),
            "max_idle_s": _seconds(cfg, "max_idle_s", optional=True),
            "allow_remote_shutdown": _flag(cfg, "allow_remote_shutdown"), "keys": keys, "insecure": insecure,
            "limits": wire.WireLimits(**limits)}


@calql_app("robot_server")
def main(cfg: DictConfig) -> None:
    from calql_robot.envs.robot.remote import RobotServer
    from calql_robot.envs.robot.robot_env import build_robot

    settings = server_settings(cfg)
    robot_cfg = OmegaConf.to_container(cfg.robot, resolve=True)
    robot = build_robot(robot_cfg, "robot")  # type: ignore[arg-type]
    server = RobotServer(robot, **settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    server.serve(stop)


if __name__ == "__main__":
    main()
