"""Image-based visual pick-and-place (the Cal-QL paper's first experiment) on robosuite 1.5 / MuJoCo.

A Panda arm (configurable) must put a 4 cm cube, spawned at a random position and yaw on the table, into an open
bin beside it. Sparse reward: 1.0 when the cube centre is inside the bin's inner footprint, below the rim, and no
finger pad touches it; 0.0 otherwise. The episode terminates on success and is truncated after ``horizon`` steps
(default 80 at 10 Hz = 8 s of robot time). Details and measured speed: docs/pick_place.md.

Observations (``gymnasium.spaces.Dict``):

- ``agentview_rgb``: (S, S, 3) uint8, S = ``image_size`` (default 64), a fixed camera in front of the table looking
  at the robot, right side up (row 0 is the top of the picture: the robot; the bottom rows: the table edge).
- ``eye_in_hand_rgb``: (S, S, 3) uint8 from the wrist camera, only with ``wrist_camera=True``.
- ``robot_state``: (5,) float32 = end-effector position in metres (world frame, 3) + the two gripper finger
  joint positions (2).

With ``observation="state"`` (the ``pick_place_state`` task, a diagnostic twin) no camera is rendered and the
images are replaced by ``object_state``: (10,) float32 = cube centre position (3, metres, world frame), cube
orientation quaternion (w, x, y, z) (4) and cube position minus end-effector position (3). Scene, dynamics, reward,
success rule and horizon are the same, so a scripted dataset made with the same seed holds the same episodes.

Actions: ``Box(-1, 1, (4,))`` for the default ``OSC_POSITION`` controller: (dx, dy, dz) end-effector position
deltas where 1.0 means a 5 cm target offset per control step (robosuite's ``output_max`` 0.05), orientation held
fixed, and the gripper command (-1 open, +1 close).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # robosuite reads it at import time
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from robosuite.controllers import load_part_controller_config  # noqa: E402
from robosuite.controllers.composite.composite_controller_factory import (  # noqa: E402
    refactor_composite_controller_config,
)

from calql_robot.envs.pick_place_scene import CAMERA_NAME, BinPickPlaceTask, SceneLayout  # noqa: E402
from calql_robot.errors import UserError  # noqa: E402

DEFAULT_HORIZON = 80
DEFAULT_CONTROL_FREQ = 10.0
WRIST_CAMERA_NAME = "robot0_eye_in_hand"
IMAGE_KEY = "agentview_rgb"
WRIST_KEY = "eye_in_hand_rgb"
STATE_KEY = "robot_state"
OBJECT_KEY = "object_state"
OBSERVATIONS = ("image", "state")
# robosuite geom groups: 0 collision (not drawn), 1 visual (drawn); MuJoCo does not draw group 3 by default
COLLISION_GROUP, VISUAL_GROUP, HIDDEN_GROUP = 0, 1, 3
LOW_POLY_PREFIXES = ("robot0_", "fixed_mount0_")
LOW_POLY_RGBA = np.array([0.82, 0.82, 0.84, 1.0])


def controller_config(robot: str, controller: str) -> dict[str, Any]:
    """robosuite 1.5 composite controller config with the arm part ``controller`` (e.g. OSC_POSITION)."""
    part = load_part_controller_config(default_controller=controller)
    return refactor_composite_controller_config(part, robot, ["right"])


def _use_low_poly_robot(model: mujoco.MjModel) -> None:
    """Draw the arm and its mount with their collision geoms (~7k vertices) instead of the visual meshes (~345k).

    The visual meshes dominate the CPU (llvmpipe) render time: ~20 ms -> ~3 ms per 64x64 frame. Only the geom
    groups and colours that the renderer reads change; collisions and dynamics are untouched. The gripper keeps its
    visual meshes.
    """
    for geom in range(model.ngeom):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, geom) or ""
        if not name.startswith(LOW_POLY_PREFIXES):
            continue
        if model.geom_group[geom] == VISUAL_GROUP:
            model.geom_group[geom] = HIDDEN_GROUP
        elif model.geom_group[geom] == COLLISION_GROUP:
            model.geom_group[geom] = VISUAL_GROUP
            model.geom_rgba[geom] = LOW_POLY_RGBA
            model.geom_matid[geom] = -1


def _check_options(image_size: int, horizon: int, control_freq: float, robot: str, controller: str,
                   render_mode: str | None, render_size: int, observation: str = "image") -> None:
    """Raise UserError naming the pick_place env option (task.env.<key>) that is out of range."""
    from robosuite import ALL_ROBOTS
    from robosuite.controllers import ALL_PART_CONTROLLERS

    where = "pick_place env (task.env)"
    if observation not in OBSERVATIONS:
        raise UserError(f"{where}: observation must be one of {list(OBSERVATIONS)}, got {observation!r}")
    if int(image_size) < 8 or int(render_size) < 8:
        raise UserError(f"{where}: image_size and render_size must be at least 8 pixels, got {image_size}, "
                        f"{render_size}")
    if int(horizon) < 1 or float(control_freq) <= 0:
        raise UserError(f"{where}: horizon must be a positive step count and control_freq a positive rate in Hz, "
                        f"got {horizon}, {control_freq}")
    if robot not in ALL_ROBOTS:
        raise UserError(f"{where}: robot {robot!r} is not a robosuite robot; expected one of {sorted(ALL_ROBOTS)}")
    if controller not in ALL_PART_CONTROLLERS:
        raise UserError(f"{where}: controller {controller!r} is not a robosuite arm controller; expected one of "
                        f"{sorted(ALL_PART_CONTROLLERS)}")
    if render_mode not in (None, "rgb_array"):
        raise UserError(f"{where}: render_mode must be None or 'rgb_array', got {render_mode!r}")


class PickPlaceEnv(gym.Env):
    """Gymnasium wrapper around :class:`BinPickPlaceTask` with camera observations rendered on demand.

    ``render_mode="rgb_array"`` makes :meth:`render` return a ``(render_size, render_size, 3)`` uint8 frame from the
    same camera, for evaluation videos.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": DEFAULT_CONTROL_FREQ}

    def __init__(
        self,
        image_size: int = 64,
        wrist_camera: bool = False,
        horizon: int = DEFAULT_HORIZON,
        control_freq: float = DEFAULT_CONTROL_FREQ,
        robot: str = "Panda",
        controller: str = "OSC_POSITION",
        render_mode: str | None = None,
        render_size: int = 256,
        initialization_noise: float = 0.02,
        fast_rendering: bool = True,
        seed: int | None = None,
        observation: str = "image",
    ) -> None:
        _check_options(image_size, horizon, control_freq, robot, controller, render_mode, render_size, observation)
        self.observation = observation
        self.image_size = int(image_size)
        self.wrist_camera = bool(wrist_camera) and observation == "image"
        self.horizon = int(horizon)
        self.control_freq = float(control_freq)
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.metadata = {**self.metadata, "render_fps": self.control_freq}  # videos play in robot time
        noise = {"magnitude": float(initialization_noise), "type": "gaussian"} if initialization_noise else None
        self.task = BinPickPlaceTask(
            robots=robot, controller_configs=controller_config(robot, controller), layout=SceneLayout(),
            control_freq=self.control_freq, seed=seed, initialization_noise=noise,
        )
        self._robot = self.task.robots[0]
        self._arm = self._robot.arms[0]
        self._configure_rendering(fast_rendering)

        image_space = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        spaces: dict[str, gym.Space] = {}
        if observation == "image":
            spaces[IMAGE_KEY] = image_space
            if self.wrist_camera:
                spaces[WRIST_KEY] = image_space
        else:
            spaces[OBJECT_KEY] = gym.spaces.Box(-np.inf, np.inf, (len(self.object_state()),), np.float32)
        state_dim = len(self.robot_state())  # 5 for the Panda: 3 eef + 2 finger joints (3 + N for N gripper joints)
        spaces[STATE_KEY] = gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        low, high = self.task.action_spec
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(low),), np.float32)
        self._steps = 0
        self._needs_reset = True
        if seed is not None:
            self.action_space.seed(seed)

    # ---- rendering ----------------------------------------------------------------------------------------
    def _configure_rendering(self, fast: bool) -> None:
        """Turn off shadows, reflections, skybox and multisampling (they cost 3-4x per frame on a CPU renderer);
        size the offscreen buffer to the largest frame we render."""
        ctx = self.task.sim._render_context_offscreen
        model = self.task.sim.model._model
        side = max(self.image_size, self.render_size if self.render_mode else 0)
        model.vis.global_.offwidth = side
        model.vis.global_.offheight = side
        if fast:
            model.light_castshadow[:] = 0
            model.vis.quality.offsamples = 0
            model.vis.quality.shadowsize = 0  # no shadow map texture (4096^2 by default)
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                ctx.scn.flags[flag] = 0
            _use_low_poly_robot(model)
        ctx.gl_ctx.make_current()
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()

    def _camera_image(self, camera: str, size: int) -> np.ndarray:
        """(size, size, 3) uint8 frame from ``camera``, flipped from OpenGL's bottom-up rows to right side up."""
        self.task.sim._render_context_offscreen.gl_ctx.make_current()  # several envs may share a process
        frame = self.task.sim.render(width=size, height=size, camera_name=camera)
        return np.ascontiguousarray(frame[::-1])

    def render(self) -> np.ndarray | None:
        """(render_size, render_size, 3) uint8 frame of the scene camera when ``render_mode='rgb_array'``."""
        if self.render_mode != "rgb_array":
            return None
        return self._camera_image(CAMERA_NAME, self.render_size)

    # ---- observations -------------------------------------------------------------------------------------
    def robot_state(self) -> np.ndarray:
        """(5,) float32: end-effector position (3, metres, world frame) + gripper finger joint positions (2).

        Grippers with N joints (not the Panda's 2) give (3 + N,).
        """
        data = self.task.sim.data
        eef = data.site_xpos[self._robot.eef_site_id[self._arm]]
        fingers = data.qpos[self._robot._ref_gripper_joint_pos_indexes[self._arm]]
        return np.concatenate([eef, fingers]).astype(np.float32)

    def object_state(self) -> np.ndarray:
        """(10,) float32: cube position (3), quaternion w, x, y, z (4), cube minus end-effector position (3)."""
        data = self.task.sim.data
        cube = self.task.cube_pos
        quat = data.body_xquat[self.task.cube_body_id]
        eef = data.site_xpos[self._robot.eef_site_id[self._arm]]
        return np.concatenate([cube, quat, cube - eef]).astype(np.float32)

    def _observation(self) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.observation == "image":
            obs[IMAGE_KEY] = self._camera_image(CAMERA_NAME, self.image_size)
            if self.wrist_camera:
                obs[WRIST_KEY] = self._camera_image(WRIST_CAMERA_NAME, self.image_size)
        else:
            obs[OBJECT_KEY] = self.object_state()
        obs[STATE_KEY] = self.robot_state()
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {"success": success, "cube_pos": self.task.cube_pos, "steps": self._steps}

    # ---- gymnasium API ------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset the robot (with small joint noise) and draw a new cube pose; ``seed`` makes both reproducible.

        ``options={"cube_pose": (7,)}`` places the cube at xyz + quaternion (w, x, y, z) instead.
        """
        super().reset(seed=seed)
        if seed is not None:
            self.task.rng = np.random.default_rng(seed)
            self.action_space.seed(seed)
        self.task.reset()
        if options and "cube_pose" in options:
            self.task.set_cube_pose(np.asarray(options["cube_pose"], dtype=np.float64))
        self._steps = 0
        self._needs_reset = False
        return self._observation(), self._info(self.task.check_success())

    def step(self, action: np.ndarray):
        if self._needs_reset:
            raise RuntimeError("PickPlaceEnv.step called before reset() or after the episode ended")
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        self.task.step(action)
        self._steps += 1
        success = self.task.check_success()
        terminated = success
        truncated = (not terminated) and self._steps >= self.horizon
        self._needs_reset = terminated or truncated
        reward = 1.0 if success else 0.0
        return self._observation(), reward, terminated, truncated, self._info(success)

    def close(self) -> None:
        if getattr(self, "task", None) is not None:
            self.task.close()
            self.task = None


def make_pick_place_env(
    render: bool = False, image_size: int = 64, wrist_camera: bool = False, horizon: int = DEFAULT_HORIZON,
    seed: int | None = None, **kwargs: Any,
) -> PickPlaceEnv:
    """Factory used by ``configs/task/pick_place.yaml``; ``render=True`` enables ``render()`` frames for videos.

    Extra kwargs go to :class:`PickPlaceEnv` (``control_freq``, ``robot``, ``controller``, ``render_size``, ...).
    """
    return PickPlaceEnv(
        image_size=image_size, wrist_camera=wrist_camera, horizon=horizon, seed=seed,
        render_mode="rgb_array" if render else None, **kwargs,
    )
