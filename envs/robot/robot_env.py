"""RobotEnv: a gymnasium environment over a (safety-wrapped) RobotInterface, with human-in-the-loop events.

``step(a)``: ask the intervention device whether a person takes over (then their action replaces ``a``), send the
action (the safety layers may change or refuse it, a human's as much as the policy's), wait for the control rate,
read the observation, ask the event source for labels / pause / abort / e-stop, compute the reward::

    reward_source = "env":   robot.task_signal().reward (simulation, reward classifier); success from the robot
    reward_source = "human": reward_success on a success label, reward_failure otherwise
    reward_source = "both":  a label, when given, decides the reward and success/failure; otherwise the robot's
                             reward and success.

A success label, a failure label or (with ``terminate_on_success``) the robot's success set ``terminated``; the
horizon, an abort, a latched e-stop, or (with reward_source="env", where labels do not count) a label set
``truncated``. ``info`` holds ``success``, ``failure``, ``label``, ``safety_events`` (list of dicts),
``env_success`` (the robot's own success, or None), ``overrun_s`` (this step), ``overruns`` (episode total),
``action_sent``, ``aborted``, ``estop``, ``paused_s``, ``intervention`` (the device chose the action this step) and
``policy_action`` (what the policy asked for, executed or not).
``reset`` returns info with ``aborted``, ``episode`` and the ``safety_events`` recorded between episodes.
``env.aborted`` stays true after an abort so a loop can stop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from calql_robot.envs.robot import human
from calql_robot.envs.robot.interface import RobotInterface
from calql_robot.envs.robot.safety import ControlRate, find_estop, make_safe_robot, validate_safety_cfg
from calql_robot.envs.robot.teleop import InterventionDevice, NoIntervention
from calql_robot.errors import UserError

REWARD_SOURCES = ("env", "human", "both")


def space_from_obs_spec(obs_spec: Mapping[str, Mapping[str, Any]]) -> gym.spaces.Dict:
    """gymnasium Dict space for an obs spec: rgb keys uint8 [0, 255], low-dim keys float32 unbounded."""
    spaces = {}
    for key, spec in obs_spec.items():
        shape = tuple(int(s) for s in spec["shape"])
        if spec.get("kind") == "rgb" or spec["dtype"] == "uint8":
            spaces[key] = gym.spaces.Box(0, 255, shape, np.uint8)
        else:
            spaces[key] = gym.spaces.Box(-np.inf, np.inf, shape, np.dtype(spec["dtype"]))
    return gym.spaces.Dict(spaces)


class RobotEnv(gym.Env):
    """gymnasium.Env over ``robot`` (see the module docstring). The env connects the robot on first reset."""

    metadata = {"render_modes": []}

    def __init__(self, robot: RobotInterface, horizon: int, control_hz: float | None = None,
                 events: human.EventSource | None = None, reward_source: str = "env", reward_success: float = 1.0,
                 reward_failure: float = 0.0, wait_for_reset_done: bool = False, terminate_on_success: bool = True,
                 reset_timeout_s: float | None = None, intervention: InterventionDevice | None = None) -> None:
        if reward_source not in REWARD_SOURCES:
            raise UserError(f"reward_source is {reward_source!r}; expected one of {', '.join(REWARD_SOURCES)}")
        if horizon <= 0:
            raise UserError(f"horizon must be > 0 steps, got {horizon}")
        self.robot = robot
        self.horizon = int(horizon)
        self.rate = ControlRate(control_hz)
        self.events = events if events is not None else human.ScriptedEvents([])
        self.intervention = intervention if intervention is not None else NoIntervention()
        self._last_obs: dict[str, np.ndarray] = {}
        self.reward_source = reward_source
        self.reward_success, self.reward_failure = float(reward_success), float(reward_failure)
        self.wait_for_reset_done = wait_for_reset_done
        self.terminate_on_success = terminate_on_success
        self.reset_timeout_s = reset_timeout_s
        self.obs_spec = dict(robot.observation_spec)
        self.observation_space = space_from_obs_spec(self.obs_spec)
        spec = robot.action_spec
        self.action_space = gym.spaces.Box(spec.low, spec.high, (spec.dim,), np.float32)
        self.episode = -1
        self.step_count = 0
        self.aborted = False
        self.paused = False
        self._overruns = 0

    # -- events -----------------------------------------------------------------------------------------------------
    def handle_events(self, events: list[human.HumanEvent]) -> str | None:
        """Apply pause / abort / e-stop events given from outside ``step`` (e.g. while a reward waits for a
        person's confirmation); returns the last label among them."""
        return self._handle(events)

    def _handle(self, events: list[human.HumanEvent]) -> str | None:
        """Apply pause / abort / e-stop events; return the last label ("success" / "failure") if any."""
        label = None
        for event in events:
            if event.kind in (human.SUCCESS, human.FAILURE):
                label = event.kind
            elif event.kind == human.PAUSE:
                self.paused = not self.paused
                if self.paused:
                    self.robot.stop()
            elif event.kind == human.ABORT:
                self.aborted = True
                self.robot.stop()
            elif event.kind in (human.ESTOP, human.CLEAR_ESTOP):
                estop = find_estop(self.robot)
                if estop is None:
                    self.robot.stop()
                elif event.kind == human.ESTOP:
                    estop.trigger(f"{event.source} key")
                else:
                    estop.clear()
        return label

    def _wait_while_paused(self, step: int | str) -> tuple[float, str | None]:
        """Block (robot stopped) while paused; returns (seconds paused, last label given meanwhile)."""
        start, label = time.monotonic(), None
        while self.paused and not self.aborted:
            time.sleep(0.02)
            label = self._handle(self.events.poll(self.episode, step)) or label
        if time.monotonic() - start > 0:
            self.rate.reset()
        return time.monotonic() - start, label

    # -- gymnasium API ----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if not self.robot.is_connected:
            self.robot.connect()
        self.robot.stop()
        self.robot.home()  # raises (e.g. e-stop latched) before any episode counter moves
        self.episode += 1
        self.step_count = 0
        self._overruns = 0
        between = sorted(self.robot.drain_safety_events(), key=lambda e: e.time)  # e.g. a watchdog trip while idle
        reset_done = not self.wait_for_reset_done
        start = time.monotonic()
        while True:
            for event in self.events.poll(self.episode, human.RESET_STEP):
                reset_done = reset_done or event.kind == human.RESET_DONE
                self._handle([event])
            if (reset_done and not self.paused) or self.aborted:
                break
            if self.reset_timeout_s is not None and time.monotonic() - start > self.reset_timeout_s:
                raise UserError(f"no 'reset done' event within {self.reset_timeout_s} s after episode "
                                f"{self.episode}'s reset (press r, or add {{step: reset, event: reset_done}} to the "
                                "scripted events)")
            time.sleep(0.02)
        self.rate.reset()
        obs = self.robot.get_observation()
        self.intervention.start_episode(self.episode, self.robot)
        self._last_obs = obs
        between += self.robot.drain_safety_events()
        return obs, {"aborted": self.aborted, "episode": self.episode, "safety_events": [e.to_dict() for e in between]}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        estop = find_estop(self.robot)
        policy_action = np.asarray(action, np.float32)
        human_action = None if self.aborted else self.intervention.action(self._last_obs, policy_action,
                                                                          self.step_count)
        if self.aborted:
            sent = self.robot.action_spec.hold.copy()
            self.robot.stop()
        else:
            sent = self.robot.send_action(policy_action if human_action is None else np.asarray(human_action))
        overrun = self.rate.sleep()
        self._overruns += int(overrun > 0)
        obs = self.robot.get_observation()
        signal = self.robot.task_signal()
        label = self._handle(self.events.poll(self.episode, self.step_count))
        paused_s = 0.0
        if self.paused:
            paused_s, late_label = self._wait_while_paused(self.step_count)
            label = late_label or label
            obs = self.robot.get_observation()
        self._last_obs = obs
        self.step_count += 1

        if self.reward_source in ("env", "both") and signal.reward is None:
            raise UserError(f"robot '{self.robot.name}' reports no reward, so reward_source={self.reward_source!r} "
                            "cannot work; use reward_source=human (labels from the terminal or a script)")
        labels_count = self.reward_source != "env"
        env_success = bool(signal.success) if self.reward_source != "human" else False
        labelled = labels_count and label in (human.SUCCESS, human.FAILURE)
        success = (label == human.SUCCESS) if labelled else env_success  # a label decides, as it does the reward
        failure = labelled and label == human.FAILURE
        if self.reward_source == "env" or (self.reward_source == "both" and label is None):
            reward = float(signal.reward)  # type: ignore[arg-type]
        else:
            reward = self.reward_success if label == human.SUCCESS else self.reward_failure

        estop_latched = estop is not None and estop.latched
        terminated = bool(labelled or (success and self.terminate_on_success))
        ignored_label = label is not None and not labels_count
        cut = self.step_count >= self.horizon or self.aborted or estop_latched or ignored_label
        truncated = bool(not terminated and cut)
        events = sorted(self.robot.drain_safety_events(), key=lambda e: e.time)
        info = {"success": bool(success), "failure": bool(failure), "label": label, "env_reward": signal.reward,
                "env_success": signal.success,
                "safety_events": [e.to_dict() for e in events], "overrun_s": overrun, "overruns": self._overruns,
                "action_sent": np.asarray(sent, np.float32), "aborted": self.aborted, "estop": estop_latched,
                "paused_s": paused_s, "intervention": human_action is not None, "policy_action": policy_action}
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        if self.robot.is_connected:
            self.robot.stop()
            self.robot.disconnect()
        self.events.close()
        self.intervention.close()


def build_robot(robot_cfg: Mapping[str, Any], config_key: str = "robot") -> RobotInterface:
    """Instantiate ``robot_cfg.driver`` (a ``_target_`` block) and wrap it per ``robot_cfg.safety``.

    The safety block is validated before the driver is built, so a real robot config without a workspace box is
    refused before anything touches hardware.
    """
    from hydra.utils import instantiate

    safety = robot_cfg.get("safety")
    validate_safety_cfg(safety, f"{config_key}.safety")
    if robot_cfg.get("driver") is None:
        raise UserError(f"{config_key}.driver is missing; expected driver: {{_target_: <RobotInterface class>, ...}}")
    try:
        driver = instantiate(robot_cfg["driver"], _convert_="all")
    except UserError:
        raise
    except Exception as err:  # hydra wraps the driver's own errors in InstantiationException
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, UserError):
            raise cause from None
        target = robot_cfg["driver"].get("_target_", "?")
        raise UserError(f"{config_key}.driver could not be built ({target}): {type(cause).__name__}: {cause}. "
                        f"Check the values under {config_key}.driver against that class's arguments") from None
    if not isinstance(driver, RobotInterface):
        raise UserError(f"{config_key}.driver._target_ built a {type(driver).__name__}, not a RobotInterface")
    return make_safe_robot(driver, safety, f"{config_key}.safety")


def make_robot_env(robot_cfg: Mapping[str, Any], horizon: int, events: human.EventSource | None = None,
                   robot: RobotInterface | None = None, **env_kwargs: Any) -> RobotEnv:
    """RobotEnv for a robot config: builds the safe robot (unless given) and uses ``safety.control_hz``."""
    safe_robot = robot if robot is not None else build_robot(robot_cfg)
    safety = robot_cfg.get("safety") or {}
    env_kwargs.setdefault("control_hz", safety.get("control_hz"))
    return RobotEnv(safe_robot, horizon=horizon, events=events, **env_kwargs)
