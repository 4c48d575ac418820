"""One camera's encoder: uint8 (N, H, W, C) -> float NCHW -> CNN trunk -> projection (N, feature_dim)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calql_robot.encoders.config import EncoderConfig
from calql_robot.encoders.conv import ConvTrunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_projection(in_dim: int, out_dim: int, layer_norm: bool) -> nn.Sequential:
    """Linear -> LayerNorm -> tanh (DrQ-v2's actor/critic trunk), or a plain Linear when ``layer_norm`` is false."""
    if layer_norm:
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.Tanh())
    return nn.Sequential(nn.Linear(in_dim, out_dim))


class CameraEncoder(nn.Module):
    """Encode images of one shape: (N, H, W, C) uint8 -> (N, cfg.feature_dim) float32.

    ``trunk`` is ``conv`` (pixels scaled to [-0.5, 0.5]) or ``resnet18`` (ImageNet mean/std normalisation, grey
    images repeated to 3 channels, optional bilinear resize to ``cfg.resnet_resize``).
    """

    def __init__(self, trunk: str, height: int, width: int, channels: int, cfg: EncoderConfig):
        super().__init__()
        self.trunk_name = trunk
        self.resize = cfg.resnet_resize if trunk == "resnet18" else None
        if trunk == "conv":
            self.trunk: nn.Module = ConvTrunk(channels, height, width, cfg.conv_channels, cfg.conv_layers,
                                                   cfg.conv_stride2_layers)
            mean, std = [0.5] * channels, [1.0] * channels
        else:  # torchvision is imported only when a ResNet is asked for (it takes seconds to import)
            from calql_robot.encoders.resnet import ResNet18Trunk

            self.trunk = ResNet18Trunk(cfg.resnet_norm, cfg.resnet_weights)
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        self.repeat_grey = trunk == "resnet18" and channels == 1
        # x_normalised = pixel * scale + shift, with scale = 1 / (255 std) and shift = -mean / std.
        std_t, mean_t = torch.tensor(std), torch.tensor(mean)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).view(1, -1, 1, 1), persistent=False)
        self.projection = make_projection(self.trunk.out_dim, cfg.feature_dim, cfg.layer_norm)
        self.out_dim = cfg.feature_dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) uint8 -> (N, C', H', W') float32, normalised (C' = 3 for grey images into ResNet)."""
        x = images.permute(0, 3, 1, 2).float()
        if self.repeat_grey:
            x = x.expand(-1, 3, -1, -1)
        x = x * self.scale + self.shift
        if self.resize is not None and x.shape[-2:] != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.trunk(self.preprocess(images)))
