"""Analytic FLOP count of a network from its layer shapes (multiply-add = 2 FLOPs).

* ``Conv2d``: 2 * (C_in / groups) * k_h * k_w * C_out * H_out * W_out per image (plus C_out * H_out * W_out for bias)
* ``Linear``: 2 * in_features * out_features per row (plus out_features for bias)

Norms, activations, pooling and additions are left out (they are a few percent of a CNN's work). The shapes are
taken from one forward pass with hooks, so the count is exact for whatever input size is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def count_flops(module: nn.Module, run_forward: Callable[[], object]) -> int:
    """FLOPs of the Conv2d and Linear layers of ``module`` during ``run_forward()`` (all rows of the batch)."""
    total = 0

    def conv_hook(layer: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        k_h, k_w = layer.kernel_size
        per_output = 2 * (layer.in_channels // layer.groups) * k_h * k_w + (1 if layer.bias is not None else 0)
        total += per_output * output.numel()

    def linear_hook(layer: nn.Linear, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        rows = math.prod(output.shape[:-1])
        total += rows * layer.out_features * (2 * layer.in_features + (1 if layer.bias is not None else 0))

    handles = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
    return total
