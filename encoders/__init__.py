"""Observation encoders: low-dim, small CNN, ResNet-18, augmentation, fusion.

``build_encoder(cfg, obs_spec)`` is the one entry point the agent uses; see docs/DESIGN.md and docs/encoders.md.
"""

from calql_robot.encoders.augment import augment_batch, random_shift
from calql_robot.encoders.config import EncoderConfig
from calql_robot.encoders.factory import build_encoder

__all__ = ["EncoderConfig", "augment_batch", "build_encoder", "random_shift"]
