"""Tanh-Gaussian policy: an MLP gives mean and log-std; actions are tanh(mean + std * eps) in (-1, 1)^A.

The log-std head follows JaxCQL: ``log_std = clamp(raw + log_std_offset, -20, 2)`` with offset -1.
The actor runs once per state batch; any number of action samples are drawn from that one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calql_robot.agent.networks import MLP

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def tanh_gaussian_log_prob(pre_tanh: torch.Tensor, eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log pi(tanh(pre_tanh)) for pre_tanh = mean + exp(log_std) * eps; shapes (..., A) -> (...).

    Uses the stable identity log(1 - tanh(x)^2) = 2 * (log 2 - x - softplus(-2x)).
    """
    gaussian = (-0.5 * eps.square() - log_std - _HALF_LOG_2PI).sum(-1)
    log_det = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
    return gaussian - log_det


class TanhGaussianActor(nn.Module):
    """Features (B, F) -> mean, log_std (B, A); ``sample`` draws (n, B, A) actions with their log-probs (n, B)."""

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        orthogonal_init: bool = True,
        log_std_offset: float = -1.0,
    ):
        super().__init__()
        self.action_dim = action_dim
        self.log_std_offset = log_std_offset
        self.trunk = MLP(feature_dim, hidden, 2 * action_dim, orthogonal_init=orthogonal_init)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F) -> mean (B, A), log_std (B, A)."""
        mean, raw_log_std = self.trunk(features).chunk(2, dim=-1)
        log_std = (raw_log_std + self.log_std_offset).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std

    @staticmethod
    def sample(
        mean: torch.Tensor, log_std: torch.Tensor, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised samples: mean/log_std (B, A) -> actions (n, B, A), log_prob (n, B)."""
        eps = torch.randn((n, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
        return TanhGaussianActor.sample_with_noise(mean, log_std, eps)

    @staticmethod
    def sample_with_noise(
        mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sample`` with the standard-normal draws given: mean/log_std (B, A), eps (n, B, A) -> actions (n, B, A),
        log_prob (n, B). Deterministic, so it can run inside a compiled graph."""
        pre_tanh = mean + log_std.exp() * eps
        return torch.tanh(pre_tanh), tanh_gaussian_log_prob(pre_tanh, eps, log_std)

    @staticmethod
    def deterministic(mean: torch.Tensor) -> torch.Tensor:
        """The evaluation action tanh(mean), (B, A)."""
        return torch.tanh(mean)


def policy_actions(encoder: nn.Module, actor: TanhGaussianActor, obs: Mapping[str, torch.Tensor],
                   deterministic: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Actions (B, A) in [-1, 1] for obs {k: (B, ...)}: the encoder without augmentation, then tanh(mean) or one
    sample drawn with ``generator``; no gradients. What the agent, deploy's policy snapshots and the Python API act
    with."""
    with torch.no_grad():
        mean, log_std = actor(encoder(obs, augment=False))
        if deterministic:
            return TanhGaussianActor.deterministic(mean)
        return TanhGaussianActor.sample(mean, log_std, 1, generator)[0][0]
