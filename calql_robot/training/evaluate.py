"""Policy evaluation: deterministic rollouts, success rate with its Wilson interval, return, and MP4 videos.

Training-time evaluation (``session.evaluate_and_log``) and the evaluation app (``python -m calql_robot.evaluate``)
both go through :func:`evaluate_agent` and :func:`evaluate_policy`: one rollout loop, one set of metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from calql_robot.datasets.action_scaling import ActionScaling, env_action_fn
from calql_robot.datasets.video_io import write_mp4  # H.264 yuv420p MP4s (also used by deploy)
from calql_robot.errors import UserError

DEFAULT_EVAL_SEED = 10_000  # first env seed of evaluation rollouts unless eval.seed says otherwise
Z_95 = 1.959963984540054    # standard normal quantile of 0.975


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval (default 95%) of a success rate ``successes / n``; (0.0, 1.0) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes: 0/50 gives
    (0, 0.0713), 5/10 gives (0.2366, 0.7634).
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def _frame(env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray | None:
    """A video frame: env.render() when the env renders rgb arrays, else the first rgb observation."""
    if getattr(env, "render_mode", None) == "rgb_array":
        frame = env.render()
        if frame is not None:
            return np.asarray(frame)
    for value in obs.values():
        if value.dtype == np.uint8 and value.ndim == 3:
            return value
    return None


def evaluate_policy(
    env: gym.Env,
    act: Callable[[dict[str, np.ndarray]], np.ndarray],
    episodes: int,
    seed: int = 0,
    video_path: str | Path | None = None,
    video_episodes: int = 2,
    fps: float = 10.0,
    video_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` rollouts with ``act(obs) -> action``, episode ``i`` on env seed ``seed + i``.

    Videos of the first ``video_episodes`` rollouts: all in one file ``video_path`` and/or one file per episode,
    ``video_dir/episode_<i>_seed_<seed>.mp4``. Success is read from ``info["success"]`` at any step of an episode.

    Returns success_rate, success_ci95 (Wilson 95% interval, (low, high)), return_mean, return_std, length_mean,
    final_reward_mean (raw reward of the last step), video (the ``video_path`` file or None), videos (the per-episode
    files) and episodes: one row per rollout {seed, success, return, length, final_reward, video}.
    """
    if int(episodes) < 1:
        raise ValueError(f"evaluate_policy needs at least one episode, got {episodes}")
    rows: list[dict[str, Any]] = []
    all_frames: list[np.ndarray] = []
    for ep in range(int(episodes)):
        ep_seed = int(seed) + ep
        obs, _ = env.reset(seed=ep_seed)
        record = (video_path is not None or video_dir is not None) and ep < video_episodes
        frames: list[np.ndarray] = []
        if record and (f := _frame(env, obs)) is not None:
            frames.append(f)
        total, steps, success, done, reward = 0.0, 0, False, False, 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            total += float(reward)
            steps += 1
            success = success or bool(info.get("success", False))
            done = terminated or truncated
            if record and (f := _frame(env, obs)) is not None:
                frames.append(f)
        ep_video = None
        if video_dir is not None and frames:
            ep_video = write_mp4(frames, Path(video_dir) / f"episode_{ep:03d}_seed_{ep_seed}.mp4", fps)
        if video_path is not None:
            all_frames.extend(frames)
        rows.append({"seed": ep_seed, "success": success, "return": total, "length": steps,
                     "final_reward": float(reward), "video": str(ep_video) if ep_video else None})
    video = write_mp4(all_frames, video_path, fps) if video_path is not None else None
    successes = sum(r["success"] for r in rows)
    return {
        "success_rate": successes / len(rows),
        "success_ci95": wilson_interval(successes, len(rows)),
        "return_mean": float(np.mean([r["return"] for r in rows])),
        "return_std": float(np.std([r["return"] for r in rows])),
        "length_mean": float(np.mean([r["length"] for r in rows])),
        "final_reward_mean": float(np.mean([r["final_reward"] for r in rows])),
        "video": str(video) if video else None,
        "videos": [r["video"] for r in rows if r["video"]],
        "episodes": rows,
    }


def evaluate_agent(agent: Any, env: gym.Env, task: Mapping[str, Any], eval_cfg: Mapping[str, Any],
                   video_path: str | Path | None = None, video_dir: str | Path | None = None,
                   action_scaling: ActionScaling | None = None) -> dict[str, Any]:
    """Evaluate ``agent``'s deterministic policy (tanh of the mean) as ``eval_cfg`` says, on ``task``'s env.

    ``eval_cfg``: episodes, seed (first env seed, default :data:`DEFAULT_EVAL_SEED`), video_episodes (default 1).
    Videos run at the task's ``control_freq``. Tasks scored by ``normalized_score`` (Kitchen: subtasks done at the
    end / 4) also get that score. ``action_scaling`` (a policy trained on normalised actions, see
    :mod:`calql_robot.datasets.action_scaling`) maps each action back to the env's units before it is sent.
    Returns :func:`evaluate_policy`'s result.
    """
    if int(eval_cfg["episodes"]) < 1:
        raise UserError(f"eval.episodes must be a positive number of rollouts, got {eval_cfg['episodes']}")
    to_env = env_action_fn(action_scaling)
    result = evaluate_policy(env, lambda o: to_env(agent.act(o, deterministic=True)), int(eval_cfg["episodes"]),
                             seed=int(eval_cfg.get("seed", DEFAULT_EVAL_SEED)), video_path=video_path,
                             video_episodes=int(eval_cfg.get("video_episodes", 1)),
                             fps=float(task.get("control_freq", 10.0)), video_dir=video_dir)
    if task.get("score") == "normalized_score":
        result["normalized_score"] = result["final_reward_mean"] / float(task["reward_success"])
    return result


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The single-number metrics of an evaluation result (what goes into eval.csv and TensorBoard)."""
    return {k: v for k, v in result.items() if isinstance(v, float)}
