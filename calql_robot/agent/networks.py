"""Building blocks: a plain MLP (the actor trunk) and the orthogonal initialisation the Cal-QL authors use.

Orthogonal init (JaxCQL / CORL convention): hidden layers orthogonal with gain sqrt(2), the output layer orthogonal
with gain 1e-2, biases zero. Without it, PyTorch's default ``nn.Linear`` init is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

HIDDEN_GAIN = math.sqrt(2.0)
OUTPUT_GAIN = 1e-2


def orthogonal_(weight: torch.Tensor, gain: float) -> torch.Tensor:
    """Orthogonal init of one (out, in) or (in, out) matrix in place; returns it."""
    with torch.no_grad():
        return nn.init.orthogonal_(weight, gain=gain)


class MLP(nn.Module):
    """ReLU MLP: (B, in_dim) -> (B, out_dim) with hidden sizes ``hidden``; no activation on the output."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, orthogonal_init: bool = True):
        super().__init__()
        sizes = [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        if orthogonal_init:
            for i, layer in enumerate(self.layers):
                orthogonal_(layer.weight, OUTPUT_GAIN if i == len(self.layers) - 1 else HIDDEN_GAIN)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)
