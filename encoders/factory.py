"""Build the observation encoder for an obs spec (see docs/DESIGN.md, "Encoders")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from calql_robot.encoders.low_dim import LowDimEncoder
from torch import nn

from calql_robot.errors import UserError


def build_encoder(cfg: Mapping[str, Any] | None, obs_spec: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Return an ``nn.Module`` mapping an observation dict (B, ...) to features (B, out_dim).

    Only low-dim observations are supported so far; image keys raise ``UserError``.
    """
    image_keys = [k for k, s in obs_spec.items() if s["kind"] == "rgb"]
    if image_keys:
        raise UserError(f"observation keys {image_keys} are images, which this encoder build cannot handle yet")
    return LowDimEncoder(obs_spec)
