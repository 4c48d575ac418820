"""The robosuite task behind ``PickPlaceEnv``: one cube on a table and an open bin beside it.

World frame (metres, robosuite convention): x points away from the robot base, y to the robot's left, z up.
The table top is at z = 0.8 and centred at x = y = 0. The cube (edge 4 cm) starts at a random spot in the
"spawn" rectangle on the robot's right (y < 0) with a random yaw; the bin is fixed on the robot's left (y > 0).

Success (``BinPickPlaceTask.check_success``): the cube's centre lies inside the bin's inner xy footprint, below
the rim height (bin floor top + wall height), and neither gripper finger pad touches the cube (so it rests in the
bin rather than being held over it). The reward is 1.0 on success and 0.0 otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.objects import BoxObject
from robosuite.models.tasks import ManipulationTask
from robosuite.utils.mjcf_utils import array_to_string, new_body, new_geom

TABLE_TOP_Z = 0.8
# Camera framing the spawn area and the bin from in front of the table, looking back at the robot.
CAMERA_NAME = "pickplace_view"
CAMERA_POS = (0.35, 0.0, 1.25)
CAMERA_QUAT = (0.6509, 0.2763, 0.2763, 0.6509)  # (w, x, y, z): facing -x, pitched down 44 degrees


@dataclass(frozen=True)
class SceneLayout:
    """Geometry of the task in world coordinates (metres); ``spawn_*`` ranges are for the cube centre."""

    cube_half_size: float = 0.02
    spawn_x: tuple[float, float] = (-0.08, 0.08)
    spawn_y: tuple[float, float] = (-0.20, -0.06)
    spawn_yaw: tuple[float, float] = (-np.pi / 4, np.pi / 4)
    bin_center_xy: tuple[float, float] = (0.0, 0.15)
    bin_inner_half: float = 0.075  # half the inner edge of the square bin
    bin_wall_height: float = 0.06  # above the bin floor top
    bin_wall_thickness: float = 0.01
    bin_floor_thickness: float = 0.01

    @property
    def bin_floor_top_z(self) -> float:
        return TABLE_TOP_Z + self.bin_floor_thickness

    @property
    def bin_rim_z(self) -> float:
        return self.bin_floor_top_z + self.bin_wall_height


def _bin_body(layout: SceneLayout) -> object:
    """A static open box (floor + four walls) as an MJCF body; its geoms collide and render (group 1)."""
    cx, cy = layout.bin_center_xy
    body = new_body(name="bin", pos=array_to_string(np.array([cx, cy, TABLE_TOP_Z])))
    inner, wall, floor = layout.bin_inner_half, layout.bin_wall_thickness, layout.bin_floor_thickness
    outer = inner + wall
    wall_z = floor + layout.bin_wall_height / 2
    common = {"type": "box", "group": 1, "contype": 1, "conaffinity": 1, "rgba": "0.35 0.22 0.1 1",
              "friction": "1 0.005 0.0001"}
    parts = {
        "bin_floor": ((0, 0, floor / 2), (outer, outer, floor / 2)),
        "bin_wall_px": ((inner + wall / 2, 0, wall_z), (wall / 2, outer, layout.bin_wall_height / 2)),
        "bin_wall_nx": ((-inner - wall / 2, 0, wall_z), (wall / 2, outer, layout.bin_wall_height / 2)),
        "bin_wall_py": ((0, inner + wall / 2, wall_z), (inner, wall / 2, layout.bin_wall_height / 2)),
        "bin_wall_ny": ((0, -inner - wall / 2, wall_z), (inner, wall / 2, layout.bin_wall_height / 2)),
    }
    for name, (pos, size) in parts.items():
        body.append(new_geom(name=name, pos=array_to_string(np.array(pos)), size=array_to_string(np.array(size)),
                             **common))
    return body


class BinPickPlaceTask(ManipulationEnv):
    """Single-arm robosuite task: put the cube into the bin. Reward 1.0 on success (see module docstring), else 0.

    The owner (``PickPlaceEnv``) renders cameras itself, so robosuite's camera observables are off; the cube pose
    is drawn from ``self.rng`` at every reset, which the owner reseeds for reproducible episodes.
    """

    def __init__(self, robots: str = "Panda", controller_configs: dict | None = None,
                 layout: SceneLayout | None = None, control_freq: float = 10.0, seed: int | None = None,
                 initialization_noise: dict | str | None = "default", **kwargs: object) -> None:
        self.layout = layout or SceneLayout()
        self.table_full_size = (0.8, 0.8, 0.05)
        self.table_offset = np.array((0.0, 0.0, TABLE_TOP_Z))
        super().__init__(
            robots=robots, controller_configs=controller_configs, initialization_noise=initialization_noise,
            use_camera_obs=False, has_renderer=False, has_offscreen_renderer=True, render_camera=None,
            control_freq=control_freq, horizon=10_000, ignore_done=True, hard_reset=False, renderer="mujoco",
            seed=seed, **kwargs,
        )

    # ---- model --------------------------------------------------------------------------------------------
    def _load_model(self) -> None:
        super()._load_model()
        robot = self.robots[0]
        robot.robot_model.set_base_xpos(robot.robot_model.base_xpos_offset["table"](self.table_full_size[0]))
        arena = TableArena(table_full_size=self.table_full_size, table_offset=self.table_offset)
        arena.set_origin([0, 0, 0])
        arena.set_camera(CAMERA_NAME, pos=list(CAMERA_POS), quat=list(CAMERA_QUAT), camera_attribs={"fovy": "60"})
        arena.worldbody.append(_bin_body(self.layout))
        half = self.layout.cube_half_size
        self.cube = BoxObject(name="cube", size=[half, half, half], rgba=[0.9, 0.1, 0.1, 1.0], density=500.0,
                              friction=[1.5, 0.005, 0.0001])
        self.model = ManipulationTask(mujoco_arena=arena, mujoco_robots=[robot.robot_model], mujoco_objects=self.cube)

    def _setup_references(self) -> None:
        super()._setup_references()
        self.cube_body_id = self.sim.model.body_name2id(self.cube.root_body)
        self.cube_joint_name = self.cube.joints[0]

    def _setup_observables(self) -> OrderedDict:
        return super()._setup_observables()  # robot proprioception only; no object state is observed

    # ---- reset --------------------------------------------------------------------------------------------
    def sample_cube_pose(self) -> np.ndarray:
        """Draw a cube pose ``(7,)`` = position (3) + quaternion (w, x, y, z) from ``self.rng``."""
        lay = self.layout
        x = self.rng.uniform(*lay.spawn_x)
        y = self.rng.uniform(*lay.spawn_y)
        yaw = self.rng.uniform(*lay.spawn_yaw)
        quat = np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
        return np.concatenate([[x, y, TABLE_TOP_Z + lay.cube_half_size + 0.001], quat])

    def _reset_internal(self) -> None:
        super()._reset_internal()
        self.set_cube_pose(self.sample_cube_pose())

    def set_cube_pose(self, pose: np.ndarray) -> None:
        """Place the cube at ``pose`` (7,) = xyz + quaternion (w, x, y, z) with zero velocity; runs ``forward``."""
        self.sim.data.set_joint_qpos(self.cube_joint_name, np.asarray(pose, dtype=np.float64))
        self.sim.data.set_joint_qvel(self.cube_joint_name, np.zeros(6))
        self.sim.forward()

    # ---- task state ---------------------------------------------------------------------------------------
    @property
    def cube_pos(self) -> np.ndarray:
        """World position (3,) of the cube centre."""
        return np.array(self.sim.data.body_xpos[self.cube_body_id])

    def cube_in_bin(self) -> bool:
        """Cube centre inside the bin's inner xy footprint and below its rim (held or not)."""
        pos = self.cube_pos
        cx, cy = self.layout.bin_center_xy
        inner = self.layout.bin_inner_half
        return bool(abs(pos[0] - cx) < inner and abs(pos[1] - cy) < inner and pos[2] < self.layout.bin_rim_z)

    def cube_touched_by_gripper(self) -> bool:
        """True when either finger pad touches the cube."""
        gripper = self.robots[0].gripper
        if isinstance(gripper, dict):
            gripper = gripper[self.robots[0].arms[0]]
        pads = [gripper.important_geoms["left_fingerpad"], gripper.important_geoms["right_fingerpad"]]
        return any(self.check_contact(pad_geoms, self.cube) for pad_geoms in pads)

    def check_success(self) -> bool:
        """In the bin (footprint, below rim) and not touched by a finger pad."""
        return self.cube_in_bin() and not self.cube_touched_by_gripper()

    def _check_success(self) -> bool:
        return self.check_success()

    def reward(self, action: np.ndarray | None = None) -> float:
        return 1.0 if self.check_success() else 0.0
