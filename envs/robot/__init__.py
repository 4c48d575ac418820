"""Robots for deployment: the RobotInterface convention, safety layers, a gymnasium RobotEnv, human-in-the-loop
events, simulated robots (pick-and-place, kinematic point) and a remote robot over ZeroMQ.

Typical use (``robot_cfg`` is a ``configs/robot/*.yaml`` block)::

    from calql_robot.envs.robot import make_robot_env, ScriptedEvents
    env = make_robot_env(robot_cfg, horizon=80, events=ScriptedEvents([{"step": "reset", "event": "reset_done"}]))
    obs, info = env.reset()
    obs, reward, terminated, truncated, info = env.step(action)

See docs/robot_bringup.md.
"""

from calql_robot.envs.robot.human import EventSource, HumanEvent, ScriptedEvents, TerminalEvents, make_event_source
from calql_robot.envs.robot.interface import ActionSpec, RobotInterface, RobotWrapper, SafetyEvent, TaskSignal
from calql_robot.envs.robot.point_robot import PointRobot
from calql_robot.envs.robot.remote import RemoteRobotClient, RemoteRobotError, RobotServer, serve_robot
from calql_robot.envs.robot.robot_env import RobotEnv, build_robot, make_robot_env
from calql_robot.envs.robot.safety import ControlRate, EStop, make_safe_robot, validate_safety_cfg
from calql_robot.envs.robot.sim_robot import SimRobot

__all__ = [
    "ActionSpec", "ControlRate", "EStop", "EventSource", "HumanEvent", "PointRobot", "RemoteRobotClient",
    "RemoteRobotError", "RobotEnv", "RobotInterface", "RobotServer", "RobotWrapper", "SafetyEvent", "ScriptedEvents",
    "SimRobot", "TaskSignal", "TerminalEvents", "build_robot", "make_event_source", "make_robot_env",
    "make_safe_robot", "serve_robot", "validate_safety_cfg",
]
