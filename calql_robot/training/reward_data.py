"""Frames and labels of a store for the reward classifier, and the split of its episodes into train and held-out.

Every observation of an episode is one frame: the N rows of ``data/obs`` of an N-step episode and its final
observation (``data/final_obs``), N + 1 frames in time order. Labels (:func:`label_frames`):

* **positive (1)**: in a successful episode (some step has raw reward >= the store's success value), the last
  ``positive_frames`` frames (the final observation counts as one) and every frame reached by a success-reward step.
  A success state persists, and a store whose episodes end on success (pick_place terminates there) holds it only
  in its final frame, so the default is 1; stores recorded past success (a robot left holding the scene) may use more.
* **ignored (-1)**: the ``ignore_frames`` frames just before the positive ones. They show the scene a step or two
  before the simulator's check passes (the cube released but still touching a finger), look nearly the same as the
  success frame, and would teach the classifier contradictions; they are neither trained on nor scored.
* **negative (0)**: every other frame of a successful episode (approach, grasp, carry) and every frame of a failed one.

Several stores (``dataset`` plus ``extra_datasets``, e.g. the ``online.zarr`` of a ``deploy deploy.reward_source=env``
run of the learned policy, whose rewards are the simulator's) are labelled each by its own rewards and success value
and joined by :func:`merge_frames`; the split then draws from all their episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from calql_robot.errors import UserError

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


@dataclass
class FrameSet:
    """All frames of a store's chosen cameras with their labels; frame ``i`` belongs to episode ``episode[i]``."""

    images: dict[str, np.ndarray]  # camera -> (F, H, W, C) uint8, F = transitions + episodes
    labels: np.ndarray  # (F,) int8: 1, 0 or -1 (ignored)
    episode: np.ndarray  # (F,) int64
    success: np.ndarray  # (E,) bool per episode

    @property
    def n_frames(self) -> int:
        return int(len(self.labels))


def choose_cameras(obs_spec: dict[str, Any], cameras: Any, store: str) -> list[str]:
    """The rgb keys to read: ``cameras`` (a key or a list of keys) or, when None, every rgb key of the store."""
    rgb = sorted(key for key, entry in obs_spec.items() if entry.get("kind") == "rgb")
    if not rgb:
        raise UserError(f"dataset {store} has no rgb observation (its keys: {sorted(obs_spec)}); the reward classifier "
                        "learns from camera frames, so the store needs at least one rgb key")
    if cameras is None:
        return rgb
    names = [cameras] if isinstance(cameras, str) else list(cameras)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise UserError(f"cameras={cameras!r} must be null (every rgb key) or a list of rgb keys of {store}: {rgb}")
    for name in names:
        if name not in rgb:
            kind = f"a {obs_spec[name].get('kind')} key, not an image" if name in obs_spec else "not a key of it"
            raise UserError(f"cameras names {name!r}, which is {kind} in dataset {store}; its rgb keys are {rgb}")
    if len(set(names)) != len(names):
        raise UserError(f"cameras={names} names a camera twice; give each rgb key of {store} once")
    return sorted(names)


def label_frames(rewards: np.ndarray, episode_ends: np.ndarray, reward_success: float, positive_frames: int,
                 ignore_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (F,) int8, episode (F,) int64, success (E,) bool) for the frames in the order of :func:`read_frames`."""
    starts = np.concatenate([[0], episode_ends[:-1]]).astype(np.int64)
    labels, owner, success = [], [], []
    for index, (start, end) in enumerate(zip(starts, episode_ends)):
        steps = int(end - start)
        reached = np.concatenate([[False], rewards[start:end] >= np.float32(reward_success)])  # frame t+1 after step t
        episode_labels = np.full(steps + 1, NEGATIVE, dtype=np.int8)
        if reached.any():
            first = max(0, steps + 1 - positive_frames)
            episode_labels[max(0, first - ignore_frames):first] = IGNORED
            episode_labels[first:] = POSITIVE
            episode_labels[reached] = POSITIVE
        labels.append(episode_labels)
        owner.append(np.full(steps + 1, index, dtype=np.int64))
        success.append(bool(reached.any()))
    return (np.concatenate(labels) if labels else np.zeros(0, np.int8),
            np.concatenate(owner) if owner else np.zeros(0, np.int64), np.array(success, dtype=bool))


def read_frames(dataset: Any, cameras: list[str], positive_frames: int, ignore_frames: int) -> FrameSet:
    """Read every frame of ``cameras`` from an open :class:`~calql_robot.datasets.format.ZarrDataset`, labelled."""
    arrays = dataset.arrays()
    ends = dataset.episode_ends
    rewards = np.asarray(arrays["reward"][:], dtype=np.float32)
    labels, owner, success = label_frames(rewards, ends, dataset.reward_success, positive_frames, ignore_frames)
    images = {}
    for key in cameras:
        rows, final = np.asarray(arrays["obs"][key][:]), np.asarray(arrays["final_obs"][key][:])
        # frame order: episode 0's rows then its final obs, episode 1's rows then its final obs, ...
        images[key] = np.insert(rows, ends, final, axis=0) if len(ends) else rows[:0]
    return FrameSet(images, labels, owner, success)


def merge_frames(parts: list[FrameSet]) -> tuple[FrameSet, np.ndarray]:
    """One FrameSet of several stores' frames, episodes renumbered in order (store 0's first), and the (E,) int64
    index of the store each episode came from. The stores must hold the same cameras at the same image shapes."""
    if len(parts) == 1:
        return parts[0], np.zeros(len(parts[0].success), np.int64)
    offsets = np.cumsum([0] + [len(part.success) for part in parts[:-1]])
    images = {key: np.concatenate([part.images[key] for part in parts]) for key in parts[0].images}
    episode = np.concatenate([part.episode + offset for part, offset in zip(parts, offsets)])
    origin = np.concatenate([np.full(len(part.success), i, np.int64) for i, part in enumerate(parts)])
    merged = FrameSet(images, np.concatenate([part.labels for part in parts]), episode,
                      np.concatenate([part.success for part in parts]))
    return merged, origin


def split_episodes(success: np.ndarray, val_fraction: float, seed: int, store: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) episode indices, drawn per outcome with ``seed`` so both sets hold successes and failures."""
    n_success, n_failed = int(success.sum()), int((~success).sum())
    if n_success == 0 or n_failed == 0:
        which = "successful" if n_success == 0 else "failed"
        raise UserError(f"dataset {store} has no {which} episode ({n_success} successful, {n_failed} failed of "
                        f"{len(success)}); the classifier needs both outcomes: success frames as positives and "
                        "failed episodes as negatives")
    if n_success < 2 or n_failed < 2:
        raise UserError(f"dataset {store} has {n_success} successful and {n_failed} failed episodes; at least 2 of "
                        "each are needed so that the training and the held-out episodes both hold each outcome")
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for group in (np.flatnonzero(success), np.flatnonzero(~success)):
        order = rng.permutation(group)
        n_val = min(len(group) - 1, max(1, round(val_fraction * len(group))))
        held_out.append(order[:n_val])
        train.append(order[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))
