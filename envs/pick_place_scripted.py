"""Scripted demonstrations for the visual pick-and-place task, with noise and deliberate failure modes.

The controller reads privileged state (cube position from the simulator, end-effector position from
``robot_state``) and steers the end effector through waypoints with a saturated proportional law plus Gaussian
action noise. Each episode draws one *mode*:

- ``full``: approach, descend, grasp, lift, carry over the bin, lower, release (succeeds most of the time).
- ``grasp_only``: grasps and lifts, then hovers near the lift point with the cube held until the horizon.
- ``drop``: grasps and carries, but opens the gripper part-way to the bin, so the cube lands on the table.
- ``miss``: the grasp is aimed 3.5-5 cm off the cube (3.5 cm more along the fingers' closing axis), closes on
  nothing, then goes through the rest of the motion.

With the default mix (``DEFAULT_MODE_PROBS``) about 40% of the episodes succeed (measured numbers in
docs/pick_place.md). :func:`generate_dataset` writes the episodes into the project's zarr format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calql_robot.datasets.episode_recorder import EpisodeRecorder
from calql_robot.envs.pick_place import PickPlaceEnv, make_pick_place_env

MODES = ("full", "grasp_only", "drop", "miss")
DEFAULT_MODE_PROBS = {"full": 0.45, "grasp_only": 0.2, "drop": 0.15, "miss": 0.2}
ACTION_SCALE = 0.05  # metres of target offset per unit of action (robosuite OSC output_max)
OPEN, CLOSE = -1.0, 1.0


@dataclass
class ScriptedPickPlace:
    """Waypoint controller for one episode; call :meth:`act` once per step.

    ``env`` provides the scene layout and the privileged cube position; ``rng`` drives noise and mode details.
    """

    env: PickPlaceEnv
    mode: str
    rng: np.random.Generator
    action_noise: float = 0.1
    phase: str = "approach"
    phase_steps: int = 0
    grasp_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    carry_goal: np.ndarray = field(default_factory=lambda: np.zeros(2))
    hover_goal: np.ndarray = field(default_factory=lambda: np.zeros(3))
    drop_progress: float = 0.5
    gain: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown scripted mode {self.mode!r}; expected one of {MODES}")
        layout = self.env.task.layout
        if self.mode == "miss":
            # the Panda's fingers close along world y: a miss along y must clear the open fingers' 4 cm half-span
            angle = self.rng.uniform(0, 2 * np.pi)
            distance = self.rng.uniform(0.035, 0.05) + 0.035 * abs(np.sin(angle))
            self.grasp_offset = np.array([np.cos(angle), np.sin(angle), 0.0]) * distance
        else:
            self.grasp_offset = np.array([*self.rng.normal(0.0, 0.004, 2), 0.0])
        margin = layout.bin_inner_half - layout.cube_half_size - 0.015
        self.carry_goal = np.asarray(layout.bin_center_xy) + self.rng.uniform(-margin, margin, 2)
        self.drop_progress = self.rng.uniform(0.1, 0.4)
        self.gain = self.rng.uniform(0.8, 1.5)

    # ---- helpers ------------------------------------------------------------------------------------------
    def _move(self, eef: np.ndarray, target: np.ndarray, gripper: float) -> np.ndarray:
        delta = self.gain * (target - eef) / ACTION_SCALE
        noise = self.rng.normal(0.0, self.action_noise, 3)
        return np.concatenate([np.clip(delta + noise, -1.0, 1.0), [gripper]]).astype(np.float32)

    def _next(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    # ---- policy -------------------------------------------------------------------------------------------
    def act(self, robot_state: np.ndarray) -> np.ndarray:
        """(4,) float32 action from the (5,) ``robot_state`` and the simulator's cube position."""
        layout = self.env.task.layout
        eef = robot_state[:3].astype(np.float64)
        cube = self.env.task.cube_pos
        carry_z = layout.bin_rim_z + 0.09
        self.phase_steps += 1
        if self.phase == "approach":
            target = cube + self.grasp_offset + np.array([0.0, 0.0, 0.08])
            if np.linalg.norm((target - eef)[:2]) < 0.012 and abs(target[2] - eef[2]) < 0.03 or self.phase_steps > 25:
                self._next("descend")
            return self._move(eef, target, OPEN)
        if self.phase == "descend":
            target = cube + self.grasp_offset + np.array([0.0, 0.0, -0.01])
            if abs(target[2] - eef[2]) < 0.012 or self.phase_steps > 12:
                self._next("close")
            return self._move(eef, target, OPEN)
        if self.phase == "close":
            if self.phase_steps >= 4:
                self._next("lift")
            return np.array([0.0, 0.0, 0.0, CLOSE], dtype=np.float32)
        if self.phase == "lift":
            target = np.array([eef[0], eef[1], carry_z])
            if eef[2] > carry_z - 0.03 or self.phase_steps > 12:
                if self.mode == "grasp_only":
                    self.hover_goal = eef + np.array([*self.rng.uniform(-0.06, 0.06, 2), 0.0])
                    self._next("hover")
                else:
                    self.lift_xy = eef[:2].copy()
                    self._next("carry")
            return self._move(eef, target, CLOSE)
        if self.phase == "carry":
            target = np.array([*self.carry_goal, carry_z])
            if self.mode == "drop":
                travelled = np.linalg.norm(eef[:2] - self.lift_xy)
                total = np.linalg.norm(self.carry_goal - self.lift_xy) + 1e-6
                if travelled / total > self.drop_progress:
                    self._next("retreat")
                    return self._move(eef, target, OPEN)
            if np.linalg.norm((target - eef)[:2]) < 0.015 or self.phase_steps > 25:
                self._next("lower")
            return self._move(eef, target, CLOSE)
        if self.phase == "lower":
            target = np.array([*self.carry_goal, layout.bin_rim_z + 0.035])
            if abs(target[2] - eef[2]) < 0.015 or self.phase_steps > 8:
                self._next("release")
            return self._move(eef, target, CLOSE)
        if self.phase == "release":
            if self.phase_steps >= 3:
                self._next("retreat")
            return np.array([0.0, 0.0, 0.0, OPEN], dtype=np.float32)
        if self.phase == "hover":
            if self.phase_steps % 10 == 0:
                self.hover_goal = eef + np.array([*self.rng.uniform(-0.06, 0.06, 2), 0.0])
            return self._move(eef, self.hover_goal, CLOSE)
        # retreat: rise and idle with the gripper open
        target = np.array([eef[0], eef[1], layout.bin_rim_z + 0.15])
        return self._move(eef, target, OPEN)


def run_episode(env: PickPlaceEnv, mode: str, seed: int, action_noise: float = 0.1) -> dict[str, Any]:
    """Roll out one scripted episode from ``env.reset(seed=seed)``.

    Returns observations {key: (N+1, ...)}, actions (N, 4) float32, rewards/terminals/truncations (N,) and
    ``success`` (bool).
    """
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    policy = ScriptedPickPlace(env, mode, rng, action_noise=action_noise)
    recorder = EpisodeRecorder()
    recorder.start(obs)
    while True:
        action = policy.act(obs["robot_state"])
        obs, reward, terminated, truncated, info = env.step(action)
        recorder.step(obs, action, reward, terminated, truncated, bool(info["success"]))
        if terminated or truncated:
            return recorder.finish()


def generate_dataset(
    path: str | Path, episodes: int = 200, seed: int = 0, mode_probs: dict[str, float] | None = None,
    action_noise: float = 0.1, overwrite: bool = False, show_progress: bool = True, **env_kwargs: Any,
) -> str:
    """Write ``episodes`` scripted episodes to a new zarr store at ``path`` (staged: nothing is left on failure).

    ``mode_probs`` maps each of :data:`MODES` to its probability (default :data:`DEFAULT_MODE_PROBS`); ``env_kwargs``
    go to :func:`make_pick_place_env` (``image_size``, ``wrist_camera``, ``horizon``, ...). Returns the store path.
    """
    from calql_robot.datasets.format import DatasetWriter, obs_spec_from_space, staged_store
    from calql_robot.errors import UserError

    probs = dict(mode_probs or DEFAULT_MODE_PROBS)
    unknown = set(probs) - set(MODES)
    weights = np.array([float(probs.get(mode, 0.0)) for mode in MODES])
    if unknown or (weights < 0).any() or weights.sum() <= 0:
        raise UserError(f"pick_place generate: mode_probs {probs} must give non-negative weights to modes {MODES}")
    if int(episodes) < 1:
        raise UserError(f"pick_place generate: episodes must be at least 1, got {episodes}")
    weights = weights / weights.sum()
    env_kwargs.pop("render", None)
    env = make_pick_place_env(seed=seed, **env_kwargs)
    rng = np.random.default_rng(seed)
    counts = {mode: [0, 0] for mode in MODES}  # mode -> [episodes, successes]
    source = {"kind": "scripted", "generator": "calql_robot.envs.pick_place_scripted.generate_dataset",
              "seed": int(seed), "mode_probs": dict(zip(MODES, weights.tolist())), "action_noise": action_noise,
              "horizon": env.horizon, "image_size": env.image_size, "observation": env.observation}
    try:
        with staged_store(path, overwrite=overwrite) as tmp:
            writer = DatasetWriter.create(
                tmp, obs_spec_from_space(env.observation_space), env.action_space.low, env.action_space.high,
                task="pick_place" if env.observation == "image" else "pick_place_state",
                control_freq=env.control_freq, reward_success=1.0, reward_failure=0.0,
                source=source,
            )
            bar = tqdm(range(int(episodes)), desc="pick_place episodes", unit="ep", disable=not show_progress)
            successes = 0
            for index in bar:
                mode = MODES[int(rng.choice(len(MODES), p=weights))]
                episode = run_episode(env, mode, int(rng.integers(2**31)), action_noise)
                writer.add_episode(episode["observations"], episode["actions"], episode["rewards"],
                                   episode["terminals"], episode["truncations"])
                counts[mode][0] += 1
                counts[mode][1] += int(episode["success"])
                successes += int(episode["success"])
                bar.set_postfix(success=f"{successes / (index + 1):.2f}", mode=mode)
            writer.close()
    finally:
        env.close()
    if show_progress:
        summary = ", ".join(f"{m} {s}/{n}" for m, (n, s) in counts.items() if n)
        print(f"pick_place: {sum(s for _, s in counts.values())}/{episodes} episodes succeeded ({summary})")
    return str(path)
