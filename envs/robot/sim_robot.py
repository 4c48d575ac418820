"""SimRobot: the visual pick-and-place simulation (robosuite / MuJoCo) behind RobotInterface (``robot=sim``).

It lets the whole deploy stack (safety layers, RobotEnv, remote server and client, human events) run against a
physics simulation before a real arm is plugged in. Observations and actions are those of
:class:`calql_robot.envs.pick_place.PickPlaceEnv`: ``agentview_rgb`` (S, S, 3) uint8, optional ``eye_in_hand_rgb``,
``robot_state`` (5,) float32 = [eef_pos(3), gripper_qpos(2)]; actions (4,) in [-1, 1] = end-effector position delta
(1.0 = 5 cm) + gripper (-1 open, +1 close).

Simulated time only advances when a command arrives, so ``stop()`` has nothing to halt (it is recorded).
``home()`` starts a new scene (``seed + episode``, so runs are reproducible); after the simulated task ends (success)
commands are not executed and ``hold`` is reported as sent, until the next ``home()``. A command is an
end-effector target offset reached within the simulated step (``ee_command="delta"``), so a pause cannot move the
arm; the scene's start pose is not known before ``home()``, so the workspace layer checks the position each
``home()`` reaches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calql_robot.envs.robot.interface import ActionSpec, RobotInterface, TaskSignal
from calql_robot.errors import UserError

EE_DELTA_SCALE_M = 0.05  # robosuite OSC_POSITION output_max: 1.0 action = 5 cm target offset


class SimRobot(RobotInterface):
    """Pick-and-place simulation as a robot. ``env_kwargs`` go to ``make_pick_place_env``."""

    name = "sim"
    is_real = False

    def __init__(self, image_size: int = 64, wrist_camera: bool = False, seed: int = 0,
                 sim_horizon: int = 100_000, **env_kwargs: Any) -> None:
        self.image_size = int(image_size)
        self.wrist_camera = bool(wrist_camera)
        self.seed = int(seed)
        self.sim_horizon = int(sim_horizon)
        self.env_kwargs = env_kwargs
        self.stop_count = 0
        self.episodes = 0
        self._env: Any = None
        self._obs: dict[str, np.ndarray] | None = None
        self._signal = TaskSignal(0.0, False)
        self._episode_over = False
        self._spec = ActionSpec.create(4, -1.0, 1.0, ee_obs_key="robot_state", ee_obs_index=(0, 1, 2),
                                       ee_action_index=(0, 1, 2), ee_delta_scale=EE_DELTA_SCALE_M,
                                       ee_command="delta")  # OSC: a target offset reached within the step

    def connect(self) -> None:
        if self._env is not None:
            return
        from calql_robot.envs.pick_place import make_pick_place_env

        self._env = make_pick_place_env(render=False, image_size=self.image_size, wrist_camera=self.wrist_camera,
                                        horizon=self.sim_horizon, seed=self.seed, **self.env_kwargs)
        self.home()

    def disconnect(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = None
        self._obs = None

    @property
    def sim_env(self) -> Any:
        """The simulated :class:`PickPlaceEnv` (None before ``connect``): privileged state for scripted controllers
        and checks (e.g. the scripted intervener), never an observation of the policy."""
        return self._env

    @property
    def is_connected(self) -> bool:
        return self._env is not None

    @property
    def observation_spec(self) -> dict[str, dict[str, Any]]:
        rgb = {"shape": [self.image_size, self.image_size, 3], "dtype": "uint8", "kind": "rgb"}
        spec: dict[str, dict[str, Any]] = {"agentview_rgb": dict(rgb)}
        if self.wrist_camera:
            spec["eye_in_hand_rgb"] = dict(rgb)
        spec["robot_state"] = {"shape": [5], "dtype": "float32", "kind": "low_dim"}
        return spec

    @property
    def action_spec(self) -> ActionSpec:
        return self._spec

    def _require_connected(self) -> None:
        if self._env is None or self._obs is None:
            raise UserError("robot 'sim' is not connected; call connect() or use it as a context manager")

    def get_observation(self) -> dict[str, np.ndarray]:
        self._require_connected()
        return {key: value.copy() for key, value in self._obs.items()}  # type: ignore[union-attr]

    def get_ee_position(self) -> np.ndarray:
        self._require_connected()
        return self._obs["robot_state"][:3].astype(np.float64)  # type: ignore[index]

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._require_connected()
        sent = np.clip(np.asarray(action, np.float32).reshape(self._spec.dim), self._spec.low, self._spec.high)
        if not np.all(np.isfinite(sent)):
            raise UserError(f"sim robot received a non-finite action {sent.tolist()}; wrap it with make_safe_robot")
        if self._episode_over:
            return self._spec.hold.copy()
        obs, reward, terminated, truncated, info = self._env.step(sent)
        self._obs = obs
        self._signal = TaskSignal(float(reward), bool(info.get("success", False)))
        self._episode_over = bool(terminated or truncated)
        return sent

    def stop(self) -> None:
        self.stop_count += 1

    def home(self) -> dict[str, np.ndarray]:
        if self._env is None:
            raise UserError("robot 'sim' is not connected; call connect() or use it as a context manager")
        obs, info = self._env.reset(seed=self.seed + self.episodes)
        self.episodes += 1
        self._obs = obs
        self._signal = TaskSignal(0.0, bool(info.get("success", False)))
        self._episode_over = False
        return self.get_observation()

    def task_signal(self) -> TaskSignal:
        return self._signal
