"""A vectorised ensemble of Q critics: every layer holds weights (n_critics, in, out) and runs as one batched matmul.

``QEnsemble(features (B, F), actions (K, B, A)) -> Q (n_critics, K, B)``: the K action sets (data action, random,
policy, next-policy samples...) are all evaluated at the same states in one forward pass. The first layer is split
into its feature and action parts, so the feature part is computed once per state (B rows) and broadcast over the
K action sets instead of being repeated K times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from calql_robot.agent.networks import HIDDEN_GAIN, OUTPUT_GAIN


def _init_ensemble_weight(weight: torch.Tensor, gain: float | None) -> None:
    """Init each critic's (in, out) slice: orthogonal with ``gain``, or nn.Linear's default when gain is None."""
    n_critics, fan_in, fan_out = weight.shape
    with torch.no_grad():
        for c in range(n_critics):  # init only; the forward pass never loops over critics
            if gain is None:
                bound = 1.0 / math.sqrt(fan_in)
                weight[c].uniform_(-bound, bound)
            else:
                out_in = torch.empty(fan_out, fan_in)
                nn.init.orthogonal_(out_in, gain=gain)
                weight[c].copy_(out_in.T)


class QEnsemble(nn.Module):
    """``n_critics`` ReLU MLPs Q(s, a) -> scalar; weights (n_critics, in, out), biases (n_critics, 1, out)."""

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        n_critics: int = 2,
        orthogonal_init: bool = True,
        value_norm: bool = False,
    ):
        super().__init__()
        self.value_norm = bool(value_norm)
        if self.value_norm:  # Q = value_scale * net(s, a) + value_shift, set from the data's MC returns
            self.register_buffer("value_scale", torch.ones(()))
            self.register_buffer("value_shift", torch.zeros(()))
        self.feature_dim, self.action_dim, self.n_critics = feature_dim, action_dim, n_critics
        sizes = [feature_dim + action_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            weight = nn.Parameter(torch.empty(n_critics, fan_in, fan_out))
            bias = nn.Parameter(torch.zeros(n_critics, 1, fan_out))
            is_output = i == len(sizes) - 2
            gain = (OUTPUT_GAIN if is_output else HIDDEN_GAIN) if orthogonal_init else None
            _init_ensemble_weight(weight, gain)
            if not orthogonal_init:
                with torch.no_grad():
                    bias.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
            self.weights.append(weight)
            self.biases.append(bias)

    def forward(self, features: torch.Tensor, actions: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """features (B, F), actions (K, B, A) -> Q-values (n_critics, K, B).

        ``detach_params=True`` evaluates with the weights detached (gradients reach only the inputs), which is how
        the actor loss uses the critics.
        """
        weights = [w.detach() for w in self.weights] if detach_params else list(self.weights)
        biases = [b.detach() for b in self.biases] if detach_params else list(self.biases)
        n_sets, batch, _ = actions.shape
        n_critics, w_in = self.n_critics, weights[0]
        feature_part = torch.matmul(features, w_in[:, : self.feature_dim]) + biases[0]  # (C, B, H)
        action_part = torch.matmul(actions.reshape(n_sets * batch, -1), w_in[:, self.feature_dim :])  # (C, K*B, H)
        # Out of place, then ReLU in place on that fresh tensor: an in-place op on a view of a tensor autograd
        # tracks would make the backward pass clone whole activations (CopySlices).
        hidden = (action_part.view(n_critics, n_sets, batch, -1) + feature_part.unsqueeze(1)).relu_()
        x = hidden.view(n_critics, n_sets * batch, -1)  # (C, K*B, H)
        for w, b in zip(weights[1:-1], biases[1:-1]):
            x = torch.baddbmm(b, x, w).relu_()
        q = torch.baddbmm(biases[-1], x, weights[-1])  # (C, K*B, 1)
        if self.value_norm:
            q = torch.addcmul(self.value_shift, q, self.value_scale)
        return q.view(self.n_critics, n_sets, batch)

    def set_value_normalization(self, shift: float, scale: float) -> None:
        """Fix the output transform Q = scale * net + shift (``value_norm=True`` only); scale must be positive."""
        if not self.value_norm or not scale > 0:
            raise ValueError(f"set_value_normalization needs value_norm=True and scale > 0, got scale {scale}")
        with torch.no_grad():
            self.value_shift.fill_(float(shift))
            self.value_scale.fill_(float(scale))
