"""Small fast CNN for low-resolution camera images (DrQ / DrQ-v2 style).

``conv_layers`` 3x3 convolutions with ``channels`` filters each, no padding, the first with stride 2, ReLU after
each. At 64x64 with the defaults (4 layers, 32 channels) the feature map is 32 x 25 x 25 = 20000 values
(64 -> 31 -> 29 -> 27 -> 25); at 84x84 it is 32 x 35 x 35 = 39200. With ``stride2_layers=2`` (the first two
layers stride 2) a 64x64 image gives 32 x 11 x 11 = 3872 values (64 -> 31 -> 15 -> 13 -> 11) for ~3.7x fewer FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from calql_robot.errors import UserError


def conv_output_side(side: int, layers: int, stride2_layers: int = 1) -> int:
    """Spatial side after the trunk: each of the first ``stride2_layers`` layers (s - 3) // 2 + 1, then s - 2 per
    further layer."""
    for index in range(layers):
        side = (side - 3) // 2 + 1 if index < stride2_layers else side - 2
    return side


class ChannelsLastConv2d(nn.Conv2d):
    """Conv2d that runs in channels-last layout (faster with oneDNN on CPU and cuDNN on GPU for 3-32 channels).

    The weight is stored contiguous (so state dicts save as safetensors unchanged) and re-laid out per call; the
    (32, 32, 3, 3) copy costs nothing next to the convolution. Input that arrives channels-last (the permuted
    uint8 HWC batch) stays channels-last through the whole trunk.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight.contiguous(memory_format=torch.channels_last), self.bias)


class ConvTrunk(nn.Module):
    """(B, C, H, W) float -> (B, h * w * channels): the feature map flattened in (h, w, c) order.

    (h, w, c) order is a free view of the channels-last output; NCHW order would cost a copy of the whole map.
    """

    def __init__(self, in_channels: int, height: int, width: int, channels: int = 32, layers: int = 4,
                 stride2_layers: int = 1):
        super().__init__()
        out_h = conv_output_side(height, layers, stride2_layers)
        out_w = conv_output_side(width, layers, stride2_layers)
        if min(out_h, out_w) < 1:
            raise UserError(f"a {height}x{width} image is too small for encoder.conv_layers={layers} with "
                            f"conv_stride2_layers={stride2_layers} (a stride-2 layer halves the size, the others "
                            "remove 2 pixels)")
        modules: list[nn.Module] = []
        for index in range(layers):
            modules += [ChannelsLastConv2d(in_channels if index == 0 else channels, channels, 3,
                                          stride=2 if index < stride2_layers else 1),
                        nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*modules)
        self.out_shape = (channels, out_h, out_w)
        self.out_dim = channels * out_h * out_w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).permute(0, 2, 3, 1).flatten(1)
