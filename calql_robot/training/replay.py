"""Replay buffers of transitions whose observations (camera frames included) are stored once.

Frames live in per-key *frame stores*; a transition holds the index of its observation frame and of its next
observation frame. An episode of N steps adds N+1 frames and N transitions, so every image is kept once in uint8
and the next observation is found by index (docs/DESIGN.md, "The zarr dataset format").

Offline data comes from a :class:`~calql_robot.datasets.format.ZarrDataset`, in RAM or lazily (frames read from the
store through a chunk cache). Online data is appended episode by episode as it is collected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from calql_robot.datasets.mc_returns import episode_mc_returns, mc_returns


@dataclass(frozen=True)
class RewardTransform:
    """How raw rewards become training rewards and how Monte-Carlo returns are computed (calql.md)."""

    gamma: float = 0.99
    scale: float = 1.0
    bias: float = 0.0
    sparse: bool = False  # fill never-successful episodes with r_neg / (1 - gamma)
    failure_reward: float = 0.0  # raw failure reward r_neg before scale and bias

    @classmethod
    def from_task(cls, task_cfg: Mapping[str, Any]) -> RewardTransform:
        """Read gamma, reward_scale, reward_bias, sparse_reward and reward_failure from a task config."""
        return cls(
            gamma=float(task_cfg.get("gamma", 0.99)),
            scale=float(task_cfg.get("reward_scale", 1.0)),
            bias=float(task_cfg.get("reward_bias", 0.0)),
            sparse=bool(task_cfg.get("sparse_reward", False)),
            failure_reward=float(task_cfg.get("reward_failure", 0.0)),
        )

    @property
    def transformed_failure(self) -> float | None:
        """The transformed failure reward r_neg, or None when the sparse failure fill is off."""
        return self.failure_reward * self.scale + self.bias if self.sparse else None

    def __call__(self, rewards: np.ndarray) -> np.ndarray:
        return (np.asarray(rewards, dtype=np.float32) * self.scale + self.bias).astype(np.float32)


class _GrowingArray:
    """A numpy array that grows along axis 0 by doubling; ``view`` is the filled part (n, *shape)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, capacity: int = 1024):
        self.data = np.empty((max(capacity, 1), *shape), dtype=dtype)
        self.size = 0

    def extend(self, rows: np.ndarray) -> int:
        """Append rows (k, *shape); returns the index of the first appended row."""
        start, need = self.size, self.size + len(rows)
        if need > len(self.data):
            grown = np.empty((max(need, 2 * len(self.data)), *self.data.shape[1:]), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[start:need] = rows
        self.size = need
        return start

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.size]


class ReplayBuffer:
    """Transitions with observations held once per frame.

    Arrays (T transitions, F frames): ``frame_idx`` (T,) int64, ``next_frame_idx`` (T,) int64, ``action`` (T, A)
    float32, ``reward`` (T,) float32 transformed, ``terminal`` (T,) float32, ``mc_return`` (T,) float32.
    Frames: per observation key an array-like (F, *shape); for lazy offline data the frames of a store are split in
    ``obs`` rows (first T_data) and ``final_obs`` rows (one per episode).
    """

    def __init__(self, obs_spec: Mapping[str, Mapping[str, Any]], action_dim: int, transform: RewardTransform):
        self.obs_spec = {k: dict(v) for k, v in obs_spec.items()}
        self.action_dim = action_dim
        self.transform = transform
        self._frames = {k: _GrowingArray(tuple(s["shape"]), np.dtype(s["dtype"])) for k, s in obs_spec.items()}
        self._frame_idx = _GrowingArray((), np.int64)
        self._next_frame_idx = _GrowingArray((), np.int64)
        self._action = _GrowingArray((action_dim,), np.float32)
        self._reward = _GrowingArray((), np.float32)
        self._terminal = _GrowingArray((), np.float32)
        self._mc_return = _GrowingArray((), np.float32)
        self._external: dict[str, tuple[Any, Any, int]] | None = None  # key -> (obs, final_obs, n_obs_rows)
        self.n_episodes = 0

    def __len__(self) -> int:
        return self._action.size

    @property
    def is_lazy(self) -> bool:
        """True for an offline buffer whose frames are read lazily from a store (it takes no new episodes)."""
        return self._external is not None

    # ----------------------------------------------------------------------------------------------- filling
    @classmethod
    def from_dataset(cls, dataset: Any, transform: RewardTransform, keys: Any = None) -> ReplayBuffer:
        """Load every transition of a ZarrDataset (in RAM or lazy); MC returns computed over whole episodes.

        ``keys`` limits the observation keys (e.g. to those the task's environment produces); default: all.
        """
        arrays = dataset.arrays()
        spec = {k: v for k, v in dataset.obs_spec.items() if keys is None or k in keys}
        buf = cls(spec, dataset.action_dim, transform)
        ends = np.asarray(dataset.episode_ends, dtype=np.int64)
        n = int(ends[-1]) if len(ends) else 0
        reward_raw = np.asarray(arrays["reward"][:n], dtype=np.float32)
        terminal = np.asarray(arrays["terminal"][:n], dtype=bool)
        truncated = np.asarray(arrays["truncated"][:n], dtype=bool)
        returns = mc_returns(
            reward_raw, terminal, truncated, ends, transform.gamma,
            reward_scale=transform.scale, reward_bias=transform.bias,
            sparse_failure_reward=transform.transformed_failure,
        )
        last_step = np.zeros(n, dtype=bool)
        last_step[ends - 1] = True
        episode_of_step = np.searchsorted(ends, np.arange(n), side="right")
        next_idx = np.where(last_step, n + episode_of_step, np.arange(n) + 1)
        buf._frame_idx.extend(np.arange(n, dtype=np.int64))
        buf._next_frame_idx.extend(next_idx.astype(np.int64))
        buf._action.extend(np.asarray(arrays["action"][:n], dtype=np.float32))
        buf._reward.extend(transform(reward_raw))
        buf._terminal.extend(terminal.astype(np.float32))
        buf._mc_return.extend(returns.astype(np.float32))
        buf.n_episodes = len(ends)
        if getattr(dataset, "lazy", False):
            buf._external = {k: (arrays["obs"][k], arrays["final_obs"][k], n) for k in spec}
        else:
            for k in spec:
                buf._frames[k].extend(np.asarray(arrays["obs"][k][:n]))
                buf._frames[k].extend(np.asarray(arrays["final_obs"][k]))
        return buf

    def add_episode(
        self,
        observations: Mapping[str, np.ndarray],
        actions: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        keep: np.ndarray | None = None,
    ) -> np.ndarray:
        """Append one finished episode: observations {k: (N+1, ...)}, actions (N, A), raw rewards (N,), terminals (N,).

        The episode's Monte-Carlo returns are computed here over the whole episode, as the authors' online sampler
        does; returns them (N,). ``keep`` (N,) bool stores only those transitions (e.g. a person's intervention
        steps for the demonstration side), each still with its next observation and its return.
        """
        if self._external is not None:
            raise RuntimeError("a lazily loaded offline buffer is read-only; append online data to its own buffer")
        n = len(actions)
        starts = {k: self._frames[k].extend(np.asarray(observations[k])) for k in self.obs_spec}
        base = next(iter(starts.values()))
        returns = episode_mc_returns(
            np.asarray(rewards, dtype=np.float32), self.transform.gamma,
            reward_scale=self.transform.scale, reward_bias=self.transform.bias,
            sparse_failure_reward=self.transform.transformed_failure,
        )
        rows = np.arange(n) if keep is None else np.flatnonzero(np.asarray(keep, dtype=bool).reshape(n))
        self._frame_idx.extend(base + rows.astype(np.int64))
        self._next_frame_idx.extend(base + 1 + rows.astype(np.int64))
        self._action.extend(np.asarray(actions, dtype=np.float32)[rows])
        self._reward.extend(self.transform(np.asarray(rewards, dtype=np.float32)[rows]))
        self._terminal.extend(np.asarray(terminals, dtype=np.float32)[rows])
        self._mc_return.extend(returns[rows].astype(np.float32))
        self.n_episodes += 1
        return returns

    # ----------------------------------------------------------------------------------------------- reading
    def _gather_frames(self, key: str, idx: np.ndarray) -> np.ndarray:
        """Frames (len(idx), *shape) for frame indices idx."""
        if self._external is None:
            return self._frames[key].view[idx]
        obs, final_obs, n_rows = self._external[key]
        out = np.empty((len(idx), *self.obs_spec[key]["shape"]), dtype=np.dtype(self.obs_spec[key]["dtype"]))
        in_obs = idx < n_rows
        if in_obs.any():
            out[in_obs] = _take_sorted(obs, idx[in_obs])
        if (~in_obs).any():
            out[~in_obs] = _take_sorted(final_obs, idx[~in_obs] - n_rows)
        return out

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform transition indices (batch_size,)."""
        if len(self) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        return rng.integers(0, len(self), size=batch_size)

    def get(self, idx: np.ndarray) -> dict[str, Any]:
        """Numpy batch for transition indices idx (B,): obs/next_obs {k: (B, ...)}, action (B, A), reward,
        terminal, mc_return (B,)."""
        fi, nfi = self._frame_idx.view[idx], self._next_frame_idx.view[idx]
        return {
            "obs": {k: self._gather_frames(k, fi) for k in self.obs_spec},
            "next_obs": {k: self._gather_frames(k, nfi) for k in self.obs_spec},
            "action": self._action.view[idx],
            "reward": self._reward.view[idx],
            "terminal": self._terminal.view[idx],
            "mc_return": self._mc_return.view[idx],
        }

    @property
    def mc_returns(self) -> np.ndarray:
        """(T,) float32 Monte-Carlo returns-to-go of every transition (read-only view)."""
        return self._mc_return.view

    def bytes_per_transition(self) -> float:
        """Memory held in RAM per transition (frames + transition arrays), in bytes."""
        if len(self) == 0:
            return 0.0
        frame_bytes = sum(f.view.nbytes for f in self._frames.values())
        other = sum(a.view.nbytes for a in (self._frame_idx, self._next_frame_idx, self._action, self._reward,
                                             self._terminal, self._mc_return))
        return (frame_bytes + other) / len(self)


def _take_sorted(array: Any, idx: np.ndarray) -> np.ndarray:
    """``array[idx]`` for array-likes that want sorted unique indices (zarr-backed lazy arrays)."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    return np.asarray(array[uniq])[inverse]


class MixedSampler:
    """Samples batches mixing an offline and an online buffer.

    ``mixing_ratio`` in [0, 1] is the fraction of each batch drawn from the offline buffer; -1 draws in proportion
    to the buffer sizes. Before any online data exists every sample comes from the offline buffer.
    """

    def __init__(self, offline: ReplayBuffer | None, online: ReplayBuffer | None, mixing_ratio: float,
                 seed: int = 0):
        if not (mixing_ratio == -1 or 0.0 <= mixing_ratio <= 1.0):
            from calql_robot.errors import UserError

            raise UserError(f"mixing_ratio must be in [0, 1] or -1 (proportional), got {mixing_ratio}")
        self.offline, self.online, self.mixing_ratio = offline, online, mixing_ratio
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        """Transitions available to sample from, offline and online together."""
        return sum(len(b) for b in (self.offline, self.online) if b is not None)

    def _offline_count(self, batch_size: int) -> int:
        n_off = len(self.offline) if self.offline is not None else 0
        n_on = len(self.online) if self.online is not None else 0
        if n_on == 0:
            return batch_size
        if n_off == 0:
            return 0
        ratio = n_off / (n_off + n_on) if self.mixing_ratio == -1 else self.mixing_ratio
        return int(round(batch_size * ratio))

    def sample(self, batch_size: int) -> dict[str, Any]:
        """A numpy batch of batch_size transitions (see :meth:`ReplayBuffer.get`)."""
        if len(self) == 0:
            raise RuntimeError("cannot sample a batch before any offline or online transition exists")
        n_off = self._offline_count(batch_size)
        parts = []
        if n_off > 0:
            parts.append(self.offline.get(self.offline.sample_indices(n_off, self.rng)))
        if batch_size - n_off > 0:
            parts.append(self.online.get(self.online.sample_indices(batch_size - n_off, self.rng)))
        return parts[0] if len(parts) == 1 else _concat_batches(parts)


def _concat_batches(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, dict):
            out[key] = {k: np.concatenate([p[key][k] for p in parts]) for k in value}
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def batch_to_torch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a numpy batch to ``device``; images stay uint8 (the encoder converts them), the rest float32."""

    def move(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if t.dtype != torch.uint8:
            t = t.float()
        return t.to(device, non_blocking=True)

    return {k: ({kk: move(vv) for kk, vv in v.items()} if isinstance(v, Mapping) else move(v))
            for k, v in batch.items()}
