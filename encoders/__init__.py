"""Observation encoders: low-dim, small CNN, ResNet-18, augmentation, fusion.

``build_encoder(cfg, obs_spec)`` is the one entry point the agent uses; see docs/DESIGN.md.
"""

from calql_robot.encoders.factory import build_encoder

__all__ = ["build_encoder"]
