"""Observation normalisation for low-dimensional keys from dataset statistics.

The statistics live in module buffers (``mean_<i>``, ``std_<i>`` for the i-th low-dim key in sorted order), so they
are part of the encoder's state: computed once from the offline dataset when pre-training starts, saved with every
checkpoint, and applied unchanged in training, evaluation, fine-tuning and deployment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from calql_robot.errors import UserError

STD_FLOOR = 1e-2  # keys that barely vary (e.g. a quaternion component near 0) are not blown up
CLIP = 10.0  # normalised values are clipped to +-CLIP (an online state far outside the data stays finite)


class LowDimNormalizer(nn.Module):
    """``(x - mean) / max(std, STD_FLOOR)``, clipped to +-CLIP, per low-dim key; identity until :meth:`fit`.

    ``forward(key, x)``: x (B, D) float32 flattened values of ``key`` -> (B, D) normalised.
    """

    def __init__(self, obs_spec: Mapping[str, Mapping[str, Any]], keys: list[str]):
        super().__init__()
        self.keys = list(keys)
        self._index = {key: i for i, key in enumerate(self.keys)}
        for i, key in enumerate(self.keys):
            size = math.prod(obs_spec[key]["shape"])
            self.register_buffer(f"mean_{i}", torch.zeros(size))
            self.register_buffer(f"std_{i}", torch.ones(size))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit(self, stats: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Set the statistics: ``{key: (mean (D,), std (D,))}`` for every key of this normaliser."""
        missing = sorted(set(self.keys) - set(stats))
        if missing:
            raise UserError(f"observation statistics lack key(s) {missing}; expected {self.keys}")
        with torch.no_grad():
            for key, i in self._index.items():
                mean, std = (torch.as_tensor(np.asarray(v, dtype=np.float32).reshape(-1)) for v in stats[key])
                getattr(self, f"mean_{i}").copy_(mean)
                getattr(self, f"std_{i}").copy_(std.clamp_min(STD_FLOOR))
            self.fitted.fill_(True)

    def forward(self, key: str, x: torch.Tensor) -> torch.Tensor:
        i = self._index[key]
        return ((x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")).clamp(-CLIP, CLIP)


def low_dim_statistics(obs: Mapping[str, Any], keys: list[str], n_rows: int | None = None) -> dict[str, tuple]:
    """Mean and standard deviation (float64 accumulation) per key over the first ``n_rows`` rows of ``obs[key]``.

    ``obs[key]`` is (N, *shape), a numpy array or a lazily read array; non-finite values raise UserError.
    """
    stats = {}
    for key in keys:
        values = np.asarray(obs[key][:n_rows] if n_rows is not None else obs[key][:], dtype=np.float64)
        values = values.reshape(len(values), -1)
        if len(values) == 0:
            raise UserError(f"cannot compute observation statistics of '{key}': the dataset has no rows")
        if not np.isfinite(values).all():
            raise UserError(f"observation '{key}' holds NaN or inf values; its statistics cannot be computed")
        stats[key] = (values.mean(axis=0), values.std(axis=0))
    return stats
