"""Sub-optimal offline data for PointMaze: noisy scripted waypoint trajectories written as a zarr store.

Three kinds of episode, drawn at random per episode (fractions are arguments):

- *scripted*: a PD controller follows the shortest cell path to the goal, with Gaussian action noise (sd ``noise``);
- *give up*: the same, but after a random number of steps it brakes and drifts (small Ornstein-Uhlenbeck actions);
- *wander*: it drives to a random cell at least two cells from the goal and loiters there.

A fraction of episodes starts in a random free cell instead of the evaluation start (wider state coverage, like
D4RL's "diverse" data). Success of the written data is well below 100% (printed, and stored in ``source``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from calql_robot.datasets.episode_recorder import EpisodeRecorder
from calql_robot.envs.pointmaze import STATE_KEY, PointMazeTaskEnv, free_cells, make_pointmaze_env, shortest_cell_path
from calql_robot.progress import progress_iter

KP, KD = 2.0, 0.4  # PD gains on (cell centre - position) and velocity; tuned for action_repeat 4 (see tests)


def waypoint_action(env: PointMazeTaskEnv, state: np.ndarray, target_cell: tuple[int, int],
                    target_xy: np.ndarray) -> np.ndarray:
    """Noise-free PD action (2,) from ``state`` (6,) towards the next cell centre on the path to ``target_cell``;
    in the target cell itself it aims at ``target_xy``."""
    pos, vel = state[:2].astype(np.float64), state[2:4].astype(np.float64)
    path = shortest_cell_path(env.maze_map, env.xy_cell(pos), target_cell)
    aim = target_xy if len(path) == 1 else env.cell_xy(path[1])
    return np.clip(KP * (aim - pos) - KD * vel, -1.0, 1.0)


def ou_actions(rng: np.random.Generator, theta: float = 0.15, sigma: float = 0.5) -> Callable[[], np.ndarray]:
    """Temporally correlated random actions (2,) in [-1, 1] (Ornstein-Uhlenbeck)."""
    state = np.zeros(2)

    def draw() -> np.ndarray:
        nonlocal state
        state = state - theta * state + sigma * rng.standard_normal(2)
        return np.clip(state, -1.0, 1.0)

    return draw


def scripted_policy(env: PointMazeTaskEnv, kind: str, rng: np.random.Generator,
                    noise: float) -> Callable[[np.ndarray, int], np.ndarray]:
    """``act(state, t) -> (2,) float32`` for one episode of the given kind (scripted | give_up | wander).

    A wander episode drives to a random cell at least two cells away from the goal and loiters there; a give-up
    episode quits before it can arrive and then drifts with small correlated random actions."""
    drift = ou_actions(rng, sigma=0.2)
    if kind == "wander":
        far = [c for c in free_cells(env.maze_map) if len(shortest_cell_path(env.maze_map, c, env.goal_cell)) >= 3]
        target_cell = far[int(rng.integers(len(far)))]
        target_xy: np.ndarray | None = env.cell_xy(target_cell)
    else:
        target_cell, target_xy = env.goal_cell, None  # aim at the observed goal (state[4:6])
    quit_step = int(rng.integers(3, max(env.horizon // 3, 4))) if kind == "give_up" else env.horizon + 1

    def act(state: np.ndarray, t: int) -> np.ndarray:
        aim = state[4:6].astype(np.float64) if target_xy is None else target_xy
        if t >= quit_step:
            action = drift() - KD * state[2:4]
        else:
            action = waypoint_action(env, state, target_cell, aim) + noise * rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return act


def rollout(env: PointMazeTaskEnv, act: Callable[[np.ndarray, int], np.ndarray], seed: int,
            options: dict[str, Any] | None) -> dict[str, Any]:
    """One episode: ``observations {"state": (N+1, 6)}``, ``actions (N, 2)``, ``rewards/terminals/truncations (N,)``."""
    obs, _ = env.reset(seed=seed, options=options)
    recorder = EpisodeRecorder()
    recorder.start({STATE_KEY: obs[STATE_KEY]})
    for t in range(env.horizon):
        action = act(obs[STATE_KEY], t)
        obs, reward, terminated, truncated, info = env.step(action)
        recorder.step({STATE_KEY: obs[STATE_KEY]}, action, reward, terminated, truncated, bool(info["success"]))
        if terminated or truncated:
            break
    return recorder.finish()


def write_scripted_dataset(path: str | Path, episodes: int, seed: int, noise: float = 0.5,
                           wander_fraction: float = 0.3, give_up_fraction: float = 0.25,
                           random_start_fraction: float = 0.3, overwrite: bool = True, **env_kwargs: Any) -> str:
    """Roll out ``episodes`` scripted episodes and write them (staged, renamed when complete) to ``path``."""
    from calql_robot.datasets.format import DatasetWriter, obs_spec_from_space, staged_store
    from calql_robot.errors import UserError

    if int(episodes) < 1:
        raise UserError(f"PointMaze generate_dataset: episodes must be at least 1, got {episodes}")
    if not (0 <= wander_fraction and 0 <= give_up_fraction and wander_fraction + give_up_fraction <= 1):
        raise UserError(f"PointMaze generate_dataset: wander_fraction ({wander_fraction}) and give_up_fraction "
                        f"({give_up_fraction}) must be non-negative and sum to at most 1")
    if not 0 <= random_start_fraction <= 1 or noise < 0:
        raise UserError(f"PointMaze generate_dataset: random_start_fraction ({random_start_fraction}) must be in "
                        f"[0, 1] and noise ({noise}) non-negative")
    env = make_pointmaze_env(**env_kwargs)
    rng = np.random.default_rng(seed)
    starts = [c for c in free_cells(env.maze_map) if c != env.goal_cell]
    counts = {"scripted": 0, "give_up": 0, "wander": 0}
    n_success = 0
    try:
        with staged_store(path, overwrite=overwrite) as tmp:
            with DatasetWriter.create(
                str(tmp), obs_spec_from_space(env.observation_space), env.action_space.low, env.action_space.high,
                task=f"pointmaze_{env.maze_name}", control_freq=env.control_freq, reward_success=1.0,
                reward_failure=0.0, overwrite=True,
                source={"kind": "generated", "generator": "calql_robot.envs.pointmaze.generate_dataset",
                        "seed": int(seed), "episodes": int(episodes), "noise": float(noise),
                        "wander_fraction": float(wander_fraction), "give_up_fraction": float(give_up_fraction),
                        "random_start_fraction": float(random_start_fraction), "env": dict(env_kwargs)},
            ) as writer:
                for ep in progress_iter(range(int(episodes)), desc=f"generate pointmaze_{env.maze_name}", unit="ep"):
                    u = rng.random()
                    kind = "wander" if u < wander_fraction else "give_up" if u < wander_fraction + give_up_fraction \
                        else "scripted"
                    counts[kind] += 1
                    options = None
                    if rng.random() < random_start_fraction:
                        options = {"reset_cell": starts[int(rng.integers(len(starts)))]}
                    episode = rollout(env, scripted_policy(env, kind, rng, noise), seed * 100_003 + ep, options)
                    n_success += int(episode["terminals"].any())
                    writer.add_episode(observations=episode["observations"], actions=episode["actions"],
                                       rewards=episode["rewards"], terminals=episode["terminals"],
                                       truncations=episode["truncations"])
                writer_attrs_note = {"success_rate": n_success / int(episodes), **counts}
            _record_summary(tmp, writer_attrs_note)
    finally:
        env.close()
    print(f"generated {episodes} PointMaze episodes ({n_success} successful, {counts})")  # the caller names the store

    return str(path)


def _record_summary(store: Path, summary: dict[str, Any]) -> None:
    """Add the episode-kind counts and the data's success rate to the store's ``source`` attribute."""
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    group.attrs["source"] = {**dict(group.attrs["source"]), "summary": summary}
