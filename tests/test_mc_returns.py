"""Monte-Carlo return-to-go: hand-worked episodes, splitting rules, failure fill, and vectorised vs. a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from calql_robot.datasets.mc_returns import episode_mc_returns, mc_returns
from calql_robot.errors import UserError


def no_flags(n: int) -> np.ndarray:
    return np.zeros(n, dtype=bool)


def test_single_episode_gamma_half() -> None:
    # G2 = 2; G1 = 0 + 0.5 * 2 = 1; G0 = 1 + 0.5 * 1 = 1.5
    got = mc_returns([1, 0, 2], no_flags(3), no_flags(3), [3], gamma=0.5)
    np.testing.assert_allclose(got, [1.5, 1.0, 2.0])
    assert got.dtype == np.float32 and got.shape == (3,)


def test_reward_transform_applies_before_discounting() -> None:
    # r' = 2 r - 1 = [1, -1, 3]; G2 = 3; G1 = -1 + 1.5 = 0.5; G0 = 1 + 0.25 = 1.25
    got = mc_returns([1, 0, 2], no_flags(3), no_flags(3), [3], gamma=0.5, reward_scale=2.0, reward_bias=-1.0)
    np.testing.assert_allclose(got, [1.25, 0.5, 3.0])


def test_returns_do_not_cross_episode_ends() -> None:
    # episode 1 = [1, 1] -> [1.5, 1]; episode 2 = [0, 0, 4] -> [1, 2, 4]
    got = mc_returns([1, 1, 0, 0, 4], no_flags(5), no_flags(5), [2, 5], gamma=0.5)
    np.testing.assert_allclose(got, [1.5, 1.0, 1.0, 2.0, 4.0])


def test_split_at_terminal_and_truncated_inside_an_episode() -> None:
    ones = np.ones(4)
    terminal = np.array([False, True, False, False])
    # segments [0, 1] and [2, 3]: each [1.5, 1]
    np.testing.assert_allclose(mc_returns(ones, terminal, no_flags(4), [4], 0.5), [1.5, 1.0, 1.5, 1.0])
    truncated = np.array([False, False, True, False])
    # segments [0, 1, 2] -> [1.75, 1.5, 1] and [3] -> [1]
    np.testing.assert_allclose(mc_returns(ones, no_flags(4), truncated, [4], 0.5), [1.75, 1.5, 1.0, 1.0])
    # with no episode_ends at all, only the flags and the end of the data split
    np.testing.assert_allclose(mc_returns(ones, terminal, no_flags(4), [], 0.5), [1.5, 1.0, 1.5, 1.0])


def test_antmaze_success_and_failed_episode() -> None:
    # raw: success episode [0, 0, 1] (terminal), failed episode [0, 0] (time limit); scale 10, bias -5 => +5 / -5
    rewards = np.array([0, 0, 1, 0, 0], dtype=np.float32)
    terminals = np.array([0, 0, 1, 0, 0], dtype=bool)
    truncations = np.array([0, 0, 0, 0, 1], dtype=bool)
    got = mc_returns(rewards, terminals, truncations, [3, 5], gamma=0.99, reward_scale=10.0, reward_bias=-5.0,
                     sparse_failure_reward=-5.0)
    # G2 = 5; G1 = -5 + 0.99 * 5 = -0.05; G0 = -5 + 0.99 * -0.05 = -5.0495; failed: -5 / (1 - 0.99) = -500
    np.testing.assert_allclose(got, [-5.0495, -0.05, 5.0, -500.0, -500.0], rtol=1e-5)
    plain = mc_returns(rewards, terminals, truncations, [3, 5], 0.99, 10.0, -5.0)
    # without the failure fill: G4 = -5; G3 = -5 + 0.99 * -5 = -9.95
    np.testing.assert_allclose(plain, [-5.0495, -0.05, 5.0, -9.95, -5.0], rtol=1e-5)


def test_adroit_binary_failure_fill() -> None:
    # raw -1 (not solved) / 0 (solved); scale 10, bias 5 => -5 / +5
    rewards = np.array([-1, -1, -1, -1, 0], dtype=np.float32)
    got = mc_returns(rewards, no_flags(5), no_flags(5), [3, 5], 0.99, 10.0, 5.0, sparse_failure_reward=-5.0)
    # episode 1 never solved -> -500 everywhere; episode 2: G4 = 5, G3 = -5 + 4.95 = -0.05
    np.testing.assert_allclose(got, [-500, -500, -500, -0.05, 5.0], rtol=1e-5)


def test_episode_mc_returns_matches_batch_version() -> None:
    np.testing.assert_allclose(episode_mc_returns([1, 0, 2], gamma=0.5), [1.5, 1.0, 2.0])
    np.testing.assert_allclose(
        episode_mc_returns([0, 0, 0], 0.99, 10.0, -5.0, sparse_failure_reward=-5.0), [-500.0] * 3, rtol=1e-6
    )
    assert episode_mc_returns([], 0.99).shape == (0,)


def loop_reference(rewards, terminals, truncations, episode_ends, gamma, scale, bias, r_neg):
    """Straightforward per-step backward loop, written independently of the vectorised code."""
    transformed = [float(r) * scale + bias for r in rewards]
    ends = set(int(e) - 1 for e in episode_ends) | {len(rewards) - 1}
    segments, start = [], 0
    for t in range(len(rewards)):
        if terminals[t] or truncations[t] or t in ends:
            segments.append((start, t + 1))
            start = t + 1
    out = [0.0] * len(rewards)
    for s, e in segments:
        if r_neg is not None and all(abs(transformed[t] - r_neg) < 1e-6 for t in range(s, e)):
            for t in range(s, e):
                out[t] = r_neg / (1 - gamma)
            continue
        g = 0.0
        for t in reversed(range(s, e)):
            g = transformed[t] + gamma * g
            out[t] = g
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_loop_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_steps = 3000
    rewards = rng.integers(0, 2, n_steps).astype(np.float32) * (rng.random(n_steps) < 0.02)
    terminals = rng.random(n_steps) < 0.005
    truncations = rng.random(n_steps) < 0.005
    episode_ends = np.unique(np.r_[rng.choice(np.arange(1, n_steps), 25, replace=False), n_steps])
    for r_neg in (None, -5.0):
        got = mc_returns(rewards, terminals, truncations, episode_ends, 0.99, 10.0, -5.0, sparse_failure_reward=r_neg)
        want = loop_reference(rewards, terminals, truncations, episode_ends, 0.99, 10.0, -5.0, r_neg)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert (got == -500).any() and (got != -500).any()  # both kinds of segment occurred


def test_bad_inputs_raise_user_error() -> None:
    with pytest.raises(UserError, match="gamma"):
        mc_returns([1.0], no_flags(1), no_flags(1), [1], gamma=1.0)
    with pytest.raises(UserError, match="as long as rewards"):
        mc_returns([1.0, 2.0], no_flags(1), no_flags(2), [2], gamma=0.9)
    with pytest.raises(UserError, match="episode_ends"):
        mc_returns([1.0, 2.0], no_flags(2), no_flags(2), [1], gamma=0.9)
    with pytest.raises(UserError, match="NaN"):
        mc_returns([np.nan], no_flags(1), no_flags(1), [1], gamma=0.9)
