"""Encoder options (the agent config's ``encoder:`` block) and obs-spec checks for the encoders.

Accepted keys of the ``encoder:`` block (every one optional; see docs/encoders.md for the reasoning):

* ``name``: ``auto`` (low_dim when the spec has no rgb key, else conv) | ``low_dim`` | ``conv`` | ``resnet18``.
* ``feature_dim``: size of each camera's feature vector after the projection (default 50, as DrQ / DrQ-v2).
* ``share_cameras``: one CNN (and projection) for every camera instead of one per camera (default false).
* ``augment_pad``: random-shift padding in pixels; ``null`` = 4 at 64 px, scaled with the image side; 0 = none.
* ``layer_norm``: projection is Linear -> LayerNorm -> tanh (default true); false gives a plain Linear.
* ``proprio_hidden``: hidden sizes of an MLP (Linear+ReLU each) on the concatenated low-dim vector when the spec
  also has images, e.g. ``[64]``; ``null`` or ``[]`` passes the vector through unchanged.
* ``conv_channels`` / ``conv_layers``: width and depth of the small CNN (default 32 and 4).
* ``conv_stride2_layers``: how many leading conv layers have stride 2 (default 1, DrQ); 2 makes the 64 px trunk
  ~3.7x cheaper (feature map 11x11 instead of 25x25).
* ``resnet_weights``: path of a local ``.safetensors`` or torchvision ``.pth``/``.pt`` state dict for ResNet-18,
  loaded strictly (``torch.load`` with ``weights_only=True``); nothing is ever downloaded.
* ``resnet_norm``: ``group`` (GroupNorm, default) | ``frozen_batch`` (fixed BatchNorm statistics, for
  pretrained weights) | ``batch`` (plain BatchNorm, not recommended in RL).
* ``resnet_resize``: resize images to this side before ResNet-18 (e.g. 224); ``null`` keeps the native size.
* ``normalize``: standardise every low-dim key with the offline dataset's mean and std (computed when pre-training
  starts, stored in the encoder's buffers and so in every checkpoint); default false (the paper's settings).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from calql_robot.errors import UserError

ENCODER_NAMES = ("auto", "low_dim", "conv", "resnet18")
RESNET_NORMS = ("group", "frozen_batch", "batch")
RGB_CHANNELS = (1, 3)
MIN_IMAGE_SIDE = 16


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Validated encoder options; build it with :meth:`from_mapping`."""

    name: str = "auto"
    feature_dim: int = 50
    share_cameras: bool = False
    augment_pad: int | None = None
    layer_norm: bool = True
    proprio_hidden: tuple[int, ...] = ()
    conv_channels: int = 32
    conv_layers: int = 4
    conv_stride2_layers: int = 1
    resnet_weights: str | None = None
    resnet_norm: str = "group"
    resnet_resize: int | None = None
    normalize: bool = False

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> EncoderConfig:
        """Parse an ``encoder:`` block (dict or omegaconf DictConfig); bad keys or values raise ``UserError``."""
        if isinstance(cfg, DictConfig):
            missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
            if missing:
                raise UserError(f"encoder config value(s) {missing} must be set (they are '???' in the config file), "
                                "e.g. agent.encoder.resnet_weights=/path/to/resnet18.safetensors")
            cfg = OmegaConf.to_container(cfg, resolve=True)
        raw = dict(cfg.items()) if cfg is not None else {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"encoder config has unknown key(s) {unknown}; accepted keys are {sorted(known)}")
        if raw.get("proprio_hidden") is None:
            raw["proprio_hidden"] = ()
        elif isinstance(raw["proprio_hidden"], int):
            raw["proprio_hidden"] = (raw["proprio_hidden"],)
        elif isinstance(raw["proprio_hidden"], Sequence) and not isinstance(raw["proprio_hidden"], str):
            raw["proprio_hidden"] = tuple(raw["proprio_hidden"])
        else:
            raise UserError(f"encoder.proprio_hidden must be a list of ints, got {raw['proprio_hidden']!r}")
        if raw.get("resnet_weights") is not None:
            raw["resnet_weights"] = str(raw["resnet_weights"])
        parsed = cls(**raw)
        parsed._check()
        return parsed

    def _check(self) -> None:
        if self.name not in ENCODER_NAMES:
            raise UserError(f"encoder.name is {self.name!r}; expected one of {list(ENCODER_NAMES)}")
        if self.resnet_norm not in RESNET_NORMS:
            raise UserError(f"encoder.resnet_norm is {self.resnet_norm!r}; expected one of {list(RESNET_NORMS)}")
        positive = {"feature_dim": self.feature_dim, "conv_channels": self.conv_channels,
                    "conv_layers": self.conv_layers}
        for key, value in positive.items():
            if not _is_int(value) or value < 1:
                raise UserError(f"encoder.{key} must be a positive integer, got {value!r}")
        if not _is_int(self.conv_stride2_layers) or not 0 <= self.conv_stride2_layers <= self.conv_layers:
            raise UserError(f"encoder.conv_stride2_layers must be an integer in [0, conv_layers], got "
                            f"{self.conv_stride2_layers!r}")
        if self.augment_pad is not None and (not _is_int(self.augment_pad) or self.augment_pad < 0):
            raise UserError(f"encoder.augment_pad must be null or an integer >= 0, got {self.augment_pad!r}")
        if self.resnet_resize is not None and (not _is_int(self.resnet_resize) or self.resnet_resize < 32):
            raise UserError(f"encoder.resnet_resize must be null or an integer >= 32, got {self.resnet_resize!r}")
        if any(not _is_int(h) or h < 1 for h in self.proprio_hidden):
            raise UserError(f"encoder.proprio_hidden must hold positive integers, got {list(self.proprio_hidden)}")
        for key in ("share_cameras", "layer_norm", "normalize"):
            if not isinstance(getattr(self, key), bool):
                raise UserError(f"encoder.{key} must be true or false, got {getattr(self, key)!r}")

    def pad_for(self, height: int, width: int) -> int:
        """Random-shift padding for an image of this size: ``augment_pad`` or 4 px per 64 px of the shorter side."""
        if self.augment_pad is not None:
            return self.augment_pad
        return max(1, round(4 * min(height, width) / 64))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_obs_spec(obs_spec: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Check every entry of an obs spec; return (sorted rgb keys, sorted low-dim keys).

    rgb entries must be uint8 ``(H, W, C)`` with C in {1, 3} and H, W >= 16; low-dim entries any float shape.
    Anything else raises ``UserError`` naming the key.
    """
    if not isinstance(obs_spec, Mapping) or not obs_spec:
        raise UserError(f"obs spec must be a non-empty mapping of key -> {{shape, dtype, kind}}, got {obs_spec!r}")
    rgb_keys: list[str] = []
    low_dim_keys: list[str] = []
    for key, entry in obs_spec.items():
        if not isinstance(entry, Mapping) or "shape" not in entry or "kind" not in entry:
            raise UserError(f"obs spec entry {key!r} must have 'shape' and 'kind', got {entry!r}")
        shape = tuple(entry["shape"])
        if not all(_is_int(s) and s > 0 for s in shape):
            raise UserError(f"obs spec key {key!r} has shape {list(shape)}; expected positive integer sizes")
        kind = entry["kind"]
        if kind == "rgb":
            _check_rgb_entry(key, shape, entry.get("dtype", "uint8"))
            rgb_keys.append(key)
        elif kind == "low_dim":
            if math.prod(shape) < 1:
                raise UserError(f"obs spec key {key!r} (low_dim) has an empty shape {list(shape)}")
            low_dim_keys.append(key)
        else:
            raise UserError(f"obs spec key {key!r} has kind {kind!r}; the encoders accept 'rgb' and 'low_dim'")
    return sorted(rgb_keys), sorted(low_dim_keys)


def _check_rgb_entry(key: str, shape: tuple[int, ...], dtype: str) -> None:
    if len(shape) != 3 or shape[2] not in RGB_CHANNELS:
        raise UserError(
            f"obs spec key {key!r} (rgb) has shape {list(shape)}; expected (H, W, C) with C in {list(RGB_CHANNELS)} "
            "(uint8, channels last)"
        )
    if min(shape[0], shape[1]) < MIN_IMAGE_SIDE:
        raise UserError(f"obs spec key {key!r} (rgb) is {shape[0]}x{shape[1]}; images must be at least "
                        f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels")
    if str(dtype) != "uint8":
        raise UserError(f"obs spec key {key!r} (rgb) has dtype {dtype!r}; expected 'uint8'")
