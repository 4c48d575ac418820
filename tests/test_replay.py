"""Replay buffer: frames stored once, next observations by index, MC returns, mixing ratios."""

from __future__ import annotations

import numpy as np
import pytest

from calql_robot.datasets.format import DatasetWriter, ZarrDataset
from calql_robot.errors import UserError
from calql_robot.training.replay import MixedSampler, ReplayBuffer, RewardTransform

SPEC = {
    "cam": {"shape": [4, 4, 3], "dtype": "uint8", "kind": "rgb"},
    "state": {"shape": [2], "dtype": "float32", "kind": "low_dim"},
}


def _episode(start: int, n: int, success: bool) -> dict:
    """Observations whose values encode their frame number (start + t), so next-obs lookups can be checked."""
    frames = np.arange(start, start + n + 1)
    rewards = np.zeros(n, np.float32)
    if success:
        rewards[-1] = 1.0
    return {
        "obs": {"cam": np.broadcast_to(frames[:, None, None, None], (n + 1, 4, 4, 3)).astype(np.uint8),
                "state": np.stack([frames, -frames], axis=1).astype(np.float32)},
        "action": np.full((n, 1), 0.5, np.float32) * frames[:n, None],
        "reward": rewards,
        "terminal": np.eye(n, dtype=bool)[-1] if success else np.zeros(n, bool),
        "truncated": np.zeros(n, bool) if success else np.eye(n, dtype=bool)[-1],
    }


def test_online_episode_next_obs_by_index_and_frames_once():
    transform = RewardTransform(gamma=0.5, scale=10.0, bias=-5.0, sparse=True, failure_reward=0.0)
    buf = ReplayBuffer(SPEC, 1, transform)
    e1, e2 = _episode(0, 3, True), _episode(10, 2, False)
    r1 = buf.add_episode(e1["obs"], e1["action"], e1["reward"], e1["terminal"])
    r2 = buf.add_episode(e2["obs"], e2["action"], e2["reward"], e2["terminal"])
    assert len(buf) == 5
    assert buf._frames["cam"].size == 3 + 1 + 2 + 1  # N+1 frames per episode, each once
    # transformed rewards +5 (success) / -5; G = r + 0.5 G'
    np.testing.assert_allclose(r1, [-5 + 0.5 * (-5 + 0.5 * 5), -5 + 0.5 * 5, 5.0])
    np.testing.assert_allclose(r2, [-5 / (1 - 0.5)] * 2)  # never succeeded: r_neg / (1 - gamma)
    batch = buf.get(np.arange(5))
    np.testing.assert_array_equal(batch["obs"]["state"][:, 0], [0, 1, 2, 10, 11])
    np.testing.assert_array_equal(batch["next_obs"]["state"][:, 0], [1, 2, 3, 11, 12])
    np.testing.assert_array_equal(batch["next_obs"]["cam"][:, 0, 0, 0], [1, 2, 3, 11, 12])
    np.testing.assert_allclose(batch["reward"], [-5, -5, 5, -5, -5])
    np.testing.assert_array_equal(batch["terminal"], [0, 0, 1, 0, 0])


@pytest.mark.parametrize("lazy", [False, True])
def test_from_dataset_matches_episodes(tmp_path, lazy):
    path = tmp_path / "d.zarr"
    episodes = [_episode(0, 3, True), _episode(20, 4, False), _episode(40, 1, True)]
    # actions encode frame numbers (0.5 * frame, up to 20): the store's bounds must hold them
    with DatasetWriter.create(path, SPEC, np.array([-100.0], np.float32), np.array([100.0], np.float32), task="t",
                              control_freq=10.0, reward_success=1.0, reward_failure=0.0,
                              source={"kind": "test"}) as w:
        for e in episodes:
            w.add_episode(observations=e["obs"], actions=e["action"], rewards=e["reward"], terminals=e["terminal"],
                          truncations=e["truncated"])
    buf = ReplayBuffer.from_dataset(ZarrDataset(path, lazy=lazy), RewardTransform(gamma=0.9))
    assert len(buf) == 8 and buf.n_episodes == 3
    batch = buf.get(np.array([7, 2, 6, 0, 3]))
    np.testing.assert_array_equal(batch["obs"]["state"][:, 0], [40, 2, 23, 0, 20])
    np.testing.assert_array_equal(batch["next_obs"]["state"][:, 0], [41, 3, 24, 1, 21])
    np.testing.assert_array_equal(batch["next_obs"]["cam"][:, 1, 1, 2], [41, 3, 24, 1, 21])
    np.testing.assert_allclose(batch["mc_return"][:2], [1.0, 1.0])
    np.testing.assert_allclose(buf.get(np.array([0]))["mc_return"], [0.81])


def test_mixed_sampler_ratios():
    transform = RewardTransform()
    off, on = ReplayBuffer(SPEC, 1, transform), ReplayBuffer(SPEC, 1, transform)
    e = _episode(0, 3, True)
    off.add_episode(e["obs"], e["action"], e["reward"], e["terminal"])
    e = _episode(100, 9, True)
    sampler = MixedSampler(off, on, 0.25, seed=0)
    assert (sampler.sample(8)["obs"]["state"][:, 0] < 100).all()  # no online data yet: all offline
    on.add_episode(e["obs"], e["action"], e["reward"], e["terminal"])
    batch = sampler.sample(40)
    assert int((batch["obs"]["state"][:, 0] < 100).sum()) == 10
    proportional = MixedSampler(off, on, -1, seed=0).sample(120)
    assert int((proportional["obs"]["state"][:, 0] < 100).sum()) == 30  # 3 of 12 transitions are offline
    with pytest.raises(UserError, match="mixing_ratio"):
        MixedSampler(off, on, 1.5)


def test_online_only_sampler_and_offline_extra_keys(tmp_path):
    transform = RewardTransform()
    online = ReplayBuffer({"state": SPEC["state"]}, 1, transform)
    sampler = MixedSampler(None, online, 0.0)
    assert len(sampler) == 0
    with pytest.raises(RuntimeError, match="before any"):
        sampler.sample(4)
    e = _episode(0, 3, True)
    online.add_episode({"state": e["obs"]["state"]}, e["action"], e["reward"], e["terminal"])
    assert sampler.sample(4)["obs"]["state"].shape == (4, 2)
    # an offline store with an extra camera key mixes with online data of the env's keys only
    path = tmp_path / "extra.zarr"
    with DatasetWriter.create(path, SPEC, np.array([-1.0], np.float32), np.array([1.0], np.float32), task="t",
                              control_freq=10.0, reward_success=1.0, reward_failure=0.0, source={}) as w:
        w.add_episode(observations=e["obs"], actions=e["action"], rewards=e["reward"], terminals=e["terminal"],
                      truncations=e["truncated"])
    offline = ReplayBuffer.from_dataset(ZarrDataset(path), transform, keys={"state"})
    batch = MixedSampler(offline, online, 0.5).sample(6)
    assert set(batch["obs"]) == {"state"} and batch["obs"]["state"].shape == (6, 2)
