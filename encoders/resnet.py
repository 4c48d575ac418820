"""ResNet-18 trunk (torchvision's architecture, final fc removed): (B, 3, H, W) float -> (B, 512).

Normalisation layers (see docs/encoders.md for why GroupNorm is the default):
``group``: GroupNorm with 16 channels per group; ``frozen_batch``: BatchNorm with fixed statistics and affine
(torchvision.ops.FrozenBatchNorm2d), for pretrained ImageNet weights; ``batch``: ordinary BatchNorm2d.
Weights come only from a local file (``resnet_weights``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from calql_robot.errors import UserError

RESNET_FEATURES = 512
CHANNELS_PER_GROUP = 16


def _norm_layer(kind: str):
    if kind == "group":
        return lambda channels: nn.GroupNorm(channels // CHANNELS_PER_GROUP, channels)
    if kind == "frozen_batch":
        return FrozenBatchNorm2d
    return nn.BatchNorm2d


class ResNet18Trunk(nn.Module):
    """torchvision ResNet-18 without its fc layer; ``out_dim`` = 512 (global average pool of the last stage)."""

    def __init__(self, norm: str = "group", weights_path: str | None = None):
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None, norm_layer=_norm_layer(norm))
        self.net.fc = nn.Identity()
        self.out_dim = RESNET_FEATURES
        if weights_path is not None:
            load_resnet_weights(self.net, weights_path, norm)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor dict from ``.safetensors`` or a torch file (``weights_only=True``, never pickle)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"encoder.resnet_weights file {file} does not exist; give a local .safetensors or "
                        "torchvision .pth state dict of resnet18 (nothing is downloaded)")
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure (I/O, SafetensorError, rejected by weights_only) is bad input
        raise UserError(f"encoder.resnet_weights file {file} could not be read as a state dict ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"encoder.resnet_weights file {file} must hold a flat dict of tensor name -> tensor "
                        "(a torchvision resnet18 state dict)")
    return state


def load_resnet_weights(net: nn.Module, path: str, norm: str) -> None:
    """Load ``path`` into ``net``: every weight and statistic must match by name and shape.

    The classifier (``fc.*``) of torchvision files and BatchNorm ``num_batches_tracked`` counters are ignored.
    """
    def counted(key: str) -> bool:  # the classifier and BatchNorm's step counters are not compared
        return not key.startswith("fc.") and not key.endswith("num_batches_tracked")

    state = {k: v for k, v in read_state_dict(path).items() if counted(k)}
    expected = {k for k in net.state_dict() if counted(k)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        hint = " (BatchNorm statistics in the file: use encoder.resnet_norm=frozen_batch)" if norm == "group" and any(
            k.endswith("running_mean") for k in unexpected) else ""
        raise UserError(f"encoder.resnet_weights file {path} does not match resnet18 with resnet_norm={norm}: "
                        f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected keys "
                        f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}{hint}")
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise UserError(f"encoder.resnet_weights file {path} has tensors of the wrong shape for resnet18: "
                        f"{err}") from err
