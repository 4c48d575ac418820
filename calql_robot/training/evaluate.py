"""Policy evaluation: deterministic rollouts, success rate and return, and MP4 videos of the rollouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import numpy as np


def write_mp4(frames: list[np.ndarray], path: str | Path, fps: float = 10.0) -> Path | None:
    """Write RGB uint8 frames (H, W, 3) as an MP4 (mp4v); returns the path, or None when there are no frames."""
    if not frames:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    tmp = path.with_name(path.stem + ".tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    tmp.replace(path)
    return path


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
) -> dict[str, Any]:
    """Run ``episodes`` rollouts with ``act(obs) -> action``.

    Returns success_rate, return_mean, return_std, length_mean, final_reward_mean (raw reward of the last step) and
    video (path or None). Success is read from ``info["success"]`` at any step of the episode.
    """
    returns, lengths, successes, final_rewards = [], [], [], []
    frames: list[np.ndarray] = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        record = video_path is not None and ep < video_episodes
        if record and (f := _frame(env, obs)) is not None:
            frames.append(f)
        total, steps, success, done = 0.0, 0, False, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            total += float(reward)
            steps += 1
            success = success or bool(info.get("success", False))
            done = terminated or truncated
            if record and (f := _frame(env, obs)) is not None:
                frames.append(f)
        returns.append(total)
        final_rewards.append(float(reward))
        lengths.append(steps)
        successes.append(success)
    video = write_mp4(frames, video_path, fps) if video_path is not None else None
    return {
        "success_rate": float(np.mean(successes)),
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "length_mean": float(np.mean(lengths)),
        "final_reward_mean": float(np.mean(final_rewards)),
        "video": str(video) if video else None,
    }
