"""Serve a robot to a remote learner over ZeroMQ: ``python -m calql_robot.robot_server robot=sim port=5555``.

The robot is built from ``configs/robot/<name>.yaml`` with its safety layers (they run here, next to the arm), then
served on tcp://host:port until Ctrl-C / SIGTERM, or until ``max_idle_s`` passes without a request. The arm is
stopped when the learner says goodbye or is silent for ``client_timeout_s``. Learner side::

    from calql_robot.envs.robot import RemoteRobotClient
    with RemoteRobotClient("tcp://ROBOT_PC:5555") as robot: ...
"""

from __future__ import annotations

import signal
import threading

from omegaconf import DictConfig, OmegaConf

from calql_robot.app import calql_app
from calql_robot.errors import UserError


@calql_app("robot_server")
def main(cfg: DictConfig) -> None:
    from calql_robot.envs.robot.remote import RobotServer
    from calql_robot.envs.robot.robot_env import build_robot

    if not 0 < int(cfg.port) < 65536:
        raise UserError(f"port is {cfg.port}; expected a TCP port number between 1 and 65535")
    robot_cfg = OmegaConf.to_container(cfg.robot, resolve=True)
    robot = build_robot(robot_cfg, "robot")  # type: ignore[arg-type]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = RobotServer(robot, f"tcp://{cfg.host}:{int(cfg.port)}", client_timeout_s=float(cfg.client_timeout_s),
                         max_idle_s=cfg.max_idle_s, allow_remote_shutdown=bool(cfg.allow_remote_shutdown))
    server.serve(stop)


if __name__ == "__main__":
    main()
