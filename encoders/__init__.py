"""Observation encoders: low-dim, small CNN, ResNet-18, augmentation, fusion."""
