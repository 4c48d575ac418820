"""Evaluation rollouts: success, final reward, normalized score, and MP4 videos readable by OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
from omegaconf import OmegaConf

from calql_robot.envs import make_task_env
from calql_robot.training.evaluate import evaluate_policy, write_mp4
from calql_robot.training.logger import MetricsLogger
from calql_robot.training.session import evaluate_and_log

TASK = OmegaConf.create({
    "name": "pointmaze_umaze", "control_freq": 25.0, "reward_success": 2.0, "score": "normalized_score",
    "env": {"_target_": "calql_robot.envs.pointmaze.make_pointmaze_env", "maze": "umaze", "horizon": 7},
})


class ZeroPolicy:
    def act(self, obs, deterministic=True):
        return np.zeros(2, np.float32)


def test_write_mp4_round_trip(tmp_path):
    frames = [np.full((16, 24, 3), 10 * i, np.uint8) for i in range(5)]
    path = write_mp4(frames, tmp_path / "v.mp4", fps=5)
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    ok, frame = cap.read()
    assert ok and frame.shape == (16, 24, 3)
    assert write_mp4([], tmp_path / "none.mp4") is None and not (tmp_path / "none.mp4").exists()


def test_evaluate_policy_counts_and_video(tmp_path):
    env = make_task_env(TASK, seed=0, render=True)
    result = evaluate_policy(env, lambda o: np.zeros(2, np.float32), episodes=2, video_path=tmp_path / "e.mp4",
                             video_episodes=1)
    assert result["length_mean"] == 7.0 and result["success_rate"] == 0.0  # standing still never reaches the goal
    assert result["final_reward_mean"] == 0.0 and result["return_mean"] == 0.0
    cap = cv2.VideoCapture(result["video"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8  # reset frame + 7 steps of the first episode


def test_evaluate_and_log_adds_normalized_score(tmp_path):
    env = make_task_env(TASK, seed=0)
    cfg = OmegaConf.create({"task": TASK, "eval": {"episodes": 1, "video": False}})
    logger = MetricsLogger(tmp_path, tensorboard=False)
    result = evaluate_and_log(ZeroPolicy(), env, cfg, tmp_path, 3, logger, "t")
    assert result["normalized_score"] == result["final_reward_mean"] / 2.0
    assert "normalized_score" in (tmp_path / "eval.csv").read_text().splitlines()[0]
