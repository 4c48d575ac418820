"""Fuse several cameras and the low-dim (proprioceptive) vector into one feature vector.

Output layout: [camera features of each rgb key in sorted key order (feature_dim each),
low-dim vector (low-dim keys sorted by name, concatenated, optionally through an MLP)].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from calql_robot.encoders.augment import random_shift
from calql_robot.encoders.camera import CameraEncoder
from calql_robot.encoders.config import EncoderConfig
from calql_robot.encoders.normalize import LowDimNormalizer
from calql_robot.errors import UserError


def make_mlp(in_dim: int, hidden: tuple[int, ...]) -> tuple[nn.Module, int]:
    """Linear + ReLU per hidden size; an empty ``hidden`` is the identity. Returns (module, output size)."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_dim, size), nn.ReLU(inplace=True)]
        in_dim = size
    return (nn.Sequential(*layers) if layers else nn.Identity()), in_dim


class FusionEncoder(nn.Module):
    """{rgb key: (B, H, W, C) uint8, low-dim key: (B, *shape)} -> (B, out_dim) float32.

    ``out_dim`` = n_cameras * feature_dim + (low-dim size, or the last ``proprio_hidden`` size).
    """

    def __init__(self, trunk: str, obs_spec: Mapping[str, Mapping[str, Any]], rgb_keys: list[str],
                 low_dim_keys: list[str], cfg: EncoderConfig):
        super().__init__()
        self.rgb_keys, self.low_dim_keys = rgb_keys, low_dim_keys
        self.image_shapes = {k: tuple(obs_spec[k]["shape"]) for k in rgb_keys}
        self.augment_pads = {k: cfg.pad_for(*self.image_shapes[k][:2]) for k in rgb_keys}
        self.share_cameras = cfg.share_cameras
        if cfg.share_cameras:
            shapes = set(self.image_shapes.values())
            if len(shapes) != 1:
                raise UserError(f"encoder.share_cameras=true needs every rgb key to have the same shape, got "
                                f"{self.image_shapes}; set share_cameras=false")
            self.shared = CameraEncoder(trunk, *shapes.pop(), cfg)
        else:
            self.cameras = nn.ModuleDict({k: CameraEncoder(trunk, *self.image_shapes[k], cfg) for k in rgb_keys})
        low_dim_size = sum(math.prod(obs_spec[k]["shape"]) for k in low_dim_keys)
        self.proprio, proprio_dim = make_mlp(low_dim_size, cfg.proprio_hidden) if low_dim_keys else (None, 0)
        self.normalizer = LowDimNormalizer(obs_spec, low_dim_keys) if cfg.normalize and low_dim_keys else None
        self.out_dim = len(rgb_keys) * cfg.feature_dim + proprio_dim

    def _check_image(self, key: str, images: torch.Tensor) -> None:
        if tuple(images.shape[1:]) != self.image_shapes[key] or images.dtype != torch.uint8:
            raise UserError(f"observation {key!r} is a {images.dtype} tensor of shape {list(images.shape)}; the obs "
                            f"spec says uint8 (B, {', '.join(map(str, self.image_shapes[key]))}) channels last")

    def forward(self, obs: Mapping[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        """Encode a batch; ``augment=True`` random-shifts every image (independent offset per image and call)."""
        images = {}
        for key in self.rgb_keys:
            if key not in obs:
                raise UserError(f"observation batch has no key {key!r} (keys: {sorted(obs)})")
            self._check_image(key, obs[key])
            images[key] = random_shift(obs[key], self.augment_pads[key]) if augment else obs[key]
        if self.share_cameras:
            batch = obs[self.rgb_keys[0]].shape[0]
            stacked = self.shared(torch.cat([images[k] for k in self.rgb_keys], dim=0))  # (n_cam * B, F)
            parts = list(stacked.split(batch, dim=0))
        else:
            parts = [self.cameras[k](images[k]) for k in self.rgb_keys]
        if self.proprio is not None:
            low_dim = [obs[k].reshape(obs[k].shape[0], -1).float() for k in self.low_dim_keys]
            if self.normalizer is not None:
                low_dim = [self.normalizer(k, part) for k, part in zip(self.low_dim_keys, low_dim)]
            parts.append(self.proprio(low_dim[0] if len(low_dim) == 1 else torch.cat(low_dim, dim=-1)))
        return torch.cat(parts, dim=-1)
