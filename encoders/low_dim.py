"""Low-dimensional observations: concatenate the flat vectors of every low-dim key."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from calql_robot.encoders.normalize import LowDimNormalizer


class LowDimEncoder(nn.Module):
    """Concatenate low-dim keys (sorted by name), each flattened: {k: (B, *shape)} -> (B, sum(prod(shape)))."""

    def __init__(self, obs_spec: Mapping[str, Mapping[str, Any]], normalize: bool = False):
        super().__init__()
        self.keys = sorted(k for k, s in obs_spec.items() if s["kind"] == "low_dim")
        self.out_dim = sum(math.prod(obs_spec[k]["shape"]) for k in self.keys)
        self.augment_pads: dict[str, int] = {}  # no images: nothing to augment (same attribute as FusionEncoder)
        self.normalizer = LowDimNormalizer(obs_spec, self.keys) if normalize else None

    def forward(self, obs: Mapping[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        parts = [obs[k].reshape(obs[k].shape[0], -1).float() for k in self.keys]
        if self.normalizer is not None:
            parts = [self.normalizer(k, part) for k, part in zip(self.keys, parts)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
