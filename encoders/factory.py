"""Build the observation encoder for an obs spec (see docs/DESIGN.md, "Encoders", and docs/encoders.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from calql_robot.encoders.config import EncoderConfig, check_obs_spec
from calql_robot.encoders.fusion import FusionEncoder
from calql_robot.encoders.low_dim import LowDimEncoder
from calql_robot.errors import UserError


def build_encoder(cfg: Mapping[str, Any] | None, obs_spec: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Return an ``nn.Module`` mapping an observation dict (B, ...) to features (B, out_dim) float32.

    ``cfg`` is the agent config's ``encoder:`` block (keys in :mod:`calql_robot.encoders.config`). ``name=auto``
    gives the low-dim concatenation when the spec has no rgb key and the small CNN otherwise. The module has
    ``out_dim: int`` and ``forward(obs, augment=False)``; image encoders also expose ``augment_pads``.
    """
    options = EncoderConfig.from_mapping(cfg)
    rgb_keys, low_dim_keys = check_obs_spec(obs_spec)
    name = options.name
    if name == "auto":
        name = "conv" if rgb_keys else "low_dim"
    if name == "low_dim":
        if rgb_keys:
            raise UserError(f"encoder.name=low_dim cannot encode the image key(s) {rgb_keys}; use auto, conv or "
                            "resnet18, or drop the image keys from the task")
        return LowDimEncoder(obs_spec, normalize=options.normalize)
    if not rgb_keys:
        raise UserError(f"encoder.name={name} needs at least one rgb observation, but the obs spec has only low-dim "
                        f"keys {low_dim_keys}; use encoder.name=auto or low_dim")
    return FusionEncoder(name, obs_spec, rgb_keys, low_dim_keys, options)
