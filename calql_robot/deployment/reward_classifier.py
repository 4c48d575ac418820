"""A trained reward classifier as a reward source: ``load_reward_classifier(path).prob(obs)`` and the success rule.

    classifier = load_reward_classifier("runs/reward_classifier/pick_place", device="cpu")
    detector = RewardDetector.for_classifier(classifier, consecutive=2)   # threshold from the classifier's file
    detector.reset()                    # at the start of each episode
    if detector.observe(obs):           # once per control step, with the robot's observation
        ...                             # success: reward the step and end the episode

:class:`RewardDetector` declares success once the success probability has been ``>= threshold`` on ``consecutive``
frames in a row (one low frame resets the count), which keeps a single misread frame from ending an episode. A
success state persists (the object stays in the bin), so a longer run of frames only delays the decision by
``consecutive - 1`` control steps. The files are written by ``python -m calql_robot.train_reward_classifier``
(:mod:`calql_robot.training.reward_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calql_robot.errors import UserError
from calql_robot.training.reward_model import RewardClassifierNet, load_net


class RewardClassifier:
    """A loaded classifier: :meth:`prob` for one observation, :meth:`probs` for a batch."""

    def __init__(self, net: RewardClassifierNet, meta: dict[str, Any], device: torch.device, source: str) -> None:
        self.net, self.meta, self.device, self.source = net, meta, device, source
        self.obs_spec: dict[str, dict[str, Any]] = meta["obs_spec"]
        self.cameras: list[str] = sorted(self.obs_spec)
        self.threshold = float(meta["threshold"])
        self.consecutive = int(meta["consecutive"])

    def _images(self, obs: Mapping[str, Any], batched: bool) -> dict[str, torch.Tensor]:
        images = {}
        for key in self.cameras:
            if key not in obs:
                raise UserError(f"reward classifier {self.source} reads camera {key!r}, which the observation lacks "
                                f"(its keys: {sorted(obs)}); train it on the cameras the robot has")
            array = np.asarray(obs[key])
            shape = tuple(self.obs_spec[key]["shape"])
            if array.dtype != np.uint8 or tuple(array.shape[1:] if batched else array.shape) != shape:
                want = f"(B, {', '.join(map(str, shape))})" if batched else str(shape)
                raise UserError(f"observation {key!r} is a {array.dtype} array of shape {list(array.shape)}; reward "
                                f"classifier {self.source} expects uint8 {want} channels last")
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            images[key] = (tensor if batched else tensor[None]).to(self.device)
        return images

    @torch.no_grad()
    def probs(self, obs: Mapping[str, Any], batch_size: int = 256) -> np.ndarray:
        """(B,) float64 success probabilities of a batch ``{camera: (B, H, W, C) uint8}`` (other keys ignored)."""
        images = self._images(obs, batched=True)
        rows = next(iter(images.values())).shape[0]
        out = [torch.sigmoid(self.net({k: v[i:i + batch_size] for k, v in images.items()})).double().cpu()
               for i in range(0, rows, batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0)

    @torch.no_grad()
    def prob(self, obs: Mapping[str, Any]) -> float:
        """Success probability of one observation ``{camera: (H, W, C) uint8, ...}`` (other keys ignored)."""
        return float(torch.sigmoid(self.net(self._images(obs, batched=False)))[0])


def load_reward_classifier(path: str | Path, device: torch.device | str = "cpu") -> RewardClassifier:
    """Load the classifier written by ``train_reward_classifier`` (its output folder, or one of its two files)."""
    device = torch.device(device)
    net, meta = load_net(path, device)
    return RewardClassifier(net, meta, device, str(path))


class RewardDetector:
    """Success when the probability is ``>= threshold`` on ``consecutive`` frames in a row; :meth:`reset` per episode.

    :meth:`update` takes a probability, :meth:`observe` an observation (it needs ``classifier``). Once success has been
    declared, every later call returns True until :meth:`reset`.
    """

    def __init__(self, threshold: float, consecutive: int = 1, classifier: RewardClassifier | None = None) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise UserError(f"reward classifier threshold is {threshold!r}; expected a probability in [0, 1]")
        if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 1:
            raise UserError(f"reward classifier consecutive is {consecutive!r}; expected a whole number of frames "
                            ">= 1")
        self.threshold, self.consecutive, self.classifier = float(threshold), int(consecutive), classifier
        self.streak = 0
        self.succeeded = False
        self.last_prob: float | None = None

    @classmethod
    def for_classifier(cls, classifier: RewardClassifier, consecutive: int | None = None,
                       threshold: float | None = None) -> RewardDetector:
        """A detector on ``classifier`` with its stored threshold and rule unless given here."""
        return cls(classifier.threshold if threshold is None else threshold,
                   classifier.consecutive if consecutive is None else consecutive, classifier)

    def reset(self) -> None:
        """Start a new episode: forget the run of high frames and any declared success."""
        self.streak, self.succeeded, self.last_prob = 0, False, None

    def update(self, prob: float) -> bool:
        """Count one frame of probability ``prob``; True once success is declared (and from then on)."""
        self.last_prob = float(prob)
        if self.succeeded:
            return True
        self.streak = self.streak + 1 if self.last_prob >= self.threshold else 0
        self.succeeded = self.streak >= self.consecutive
        return self.succeeded

    def observe(self, obs: Mapping[str, Any]) -> bool:
        """:meth:`update` with the classifier's probability of ``obs``."""
        if self.classifier is None:
            raise ValueError("RewardDetector.observe needs a classifier; build it with RewardDetector.for_classifier")
        return self.update(self.classifier.prob(obs))

    def episode_outcome(self, probs: np.ndarray) -> tuple[bool, int | None]:
        """(success, index of the deciding frame or None) of one episode's probabilities, from a fresh start."""
        self.reset()
        for index, prob in enumerate(np.asarray(probs, dtype=np.float64)):
            if self.update(float(prob)):
                return True, index
        return False, None
