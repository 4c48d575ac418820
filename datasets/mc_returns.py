"""Monte-Carlo return-to-go, the reference value of Cal-QL (see /work/shared/reference/calql.md).

Rewards are transformed first, ``r' = r * reward_scale + reward_bias``. Trajectories are split into segments at every
episode end (``episode_ends``) and also after every step that is terminal or truncated. Within a segment
``G_t = r'_t + gamma * G_{t+1}`` with ``G = 0`` after the segment's last step. With ``sparse_failure_reward = r_neg``
(a *transformed* reward value) a segment whose transformed rewards all equal ``r_neg`` is a failure that never ends:
every one of its steps gets ``r_neg / (1 - gamma)``.

The computation is vectorised across segments: one numpy step per position counted from the segment end, so the
Python loop runs max-segment-length times (e.g. 1000 for AntMaze), not T times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calql_robot.errors import UserError

#: transformed rewards within this distance of ``sparse_failure_reward`` count as equal to it
FAILURE_ATOL = 1e-5


def _segment_ids(n_steps: int, terminals: np.ndarray, truncations: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
    """(T,) int64 segment index of every step; a segment ends at an episode end or a terminal/truncated step."""
    is_last = terminals | truncations
    if len(episode_ends):
        is_last[episode_ends - 1] = True
    is_last[-1] = True
    # segment id of step t = number of segment ends strictly before t
    return np.concatenate([[0], np.cumsum(is_last[:-1])]).astype(np.int64)


def _check_inputs(
    rewards: Any, terminals: Any, truncations: Any, episode_ends: Any, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rew = np.asarray(rewards, dtype=np.float64)
    n_steps = len(rew)
    if rew.ndim != 1:
        raise UserError(f"mc_returns: rewards must be (T,), got shape {rew.shape}")
    term = np.asarray(terminals).astype(bool).reshape(-1)
    trunc = np.asarray(truncations).astype(bool).reshape(-1)
    ends = np.asarray(episode_ends, dtype=np.int64).reshape(-1)
    if len(term) != n_steps or len(trunc) != n_steps:
        raise UserError(
            f"mc_returns: terminals ({len(term)}) and truncations ({len(trunc)}) must be as long as rewards ({n_steps})"
        )
    if len(ends) and (ends[0] < 1 or (np.diff(ends) <= 0).any() or ends[-1] != n_steps):
        raise UserError(
            f"mc_returns: episode_ends must be strictly increasing, start >= 1 and end at T = {n_steps}, "
            f"got {ends[:3].tolist()}...{ends[-3:].tolist()}"
        )
    if not 0.0 <= gamma < 1.0:
        raise UserError(f"mc_returns: gamma must be in [0, 1), got {gamma}")
    if not np.isfinite(rew).all():
        raise UserError("mc_returns: rewards hold NaN or inf")
    return rew, term, trunc, ends


def mc_returns(
    rewards: Any,
    terminals: Any,
    truncations: Any,
    episode_ends: Any,
    gamma: float,
    reward_scale: float = 1.0,
    reward_bias: float = 0.0,
    sparse_failure_reward: float | None = None,
) -> np.ndarray:
    """Discounted return-to-go of every step.

    Args:
        rewards: (T,) raw rewards. terminals, truncations: (T,) bool. episode_ends: (E,) int64 cumulative ends,
            ``episode_ends[-1] == T`` (may be empty: then only terminal/truncated steps and the end of the data split).
        gamma: discount in [0, 1). reward_scale, reward_bias: ``r' = r * reward_scale + reward_bias``.
        sparse_failure_reward: transformed failure reward r_neg, or None to disable the failure fill.
    Returns:
        (T,) float32 returns G_t (computed in float64).
    """
    rew, term, trunc, ends = _check_inputs(rewards, terminals, truncations, episode_ends, gamma)
    n_steps = len(rew)
    if n_steps == 0:
        return np.zeros(0, dtype=np.float32)
    transformed = rew * float(reward_scale) + float(reward_bias)
    seg = _segment_ids(n_steps, term, trunc, ends)
    n_segments = int(seg[-1]) + 1
    seg_last = np.zeros(n_segments, dtype=np.int64)
    seg_last[seg] = np.arange(n_steps)  # later steps overwrite earlier ones: last index of each segment
    steps_to_end = seg_last[seg] - np.arange(n_steps)  # 0 at the last step of a segment
    order = np.argsort(steps_to_end, kind="stable")
    counts = np.bincount(steps_to_end)
    returns = np.zeros(n_steps, dtype=np.float64)
    offset = 0
    for position, count in enumerate(counts):  # steps counted back from the segment end: 0, 1, 2, ...
        idx = order[offset : offset + count]
        returns[idx] = transformed[idx] + (gamma * returns[idx + 1] if position > 0 else 0.0)
        offset += count
    if sparse_failure_reward is not None:
        r_neg = float(sparse_failure_reward)
        is_failure_step = np.abs(transformed - r_neg) <= FAILURE_ATOL * max(1.0, abs(r_neg))
        failed_segment = np.bincount(seg, weights=(~is_failure_step).astype(np.float64), minlength=n_segments) == 0
        returns[failed_segment[seg]] = r_neg / (1.0 - gamma)
    return returns.astype(np.float32)


def episode_mc_returns(
    rewards: Any,
    gamma: float,
    reward_scale: float = 1.0,
    reward_bias: float = 0.0,
    sparse_failure_reward: float | None = None,
) -> np.ndarray:
    """Return-to-go (N,) float32 of one finished episode from its raw rewards (N,) (e.g. an online episode)."""
    rew = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if len(rew) == 0:
        return np.zeros(0, dtype=np.float32)
    flags = np.zeros(len(rew), dtype=bool)
    return mc_returns(
        rew, flags, flags, np.array([len(rew)]), gamma, reward_scale, reward_bias, sparse_failure_reward
    )
