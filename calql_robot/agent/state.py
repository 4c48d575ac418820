"""Flatten modules and optimizers into a flat name -> Tensor dict (safetensors-compatible) and back."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from calql_robot.errors import UserError


def module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """``{prefix.name: tensor}`` for every parameter and buffer of ``module`` (detached copies)."""
    return {f"{prefix}.{name}": value.detach().clone() for name, value in module.state_dict().items()}


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """``{prefix.<param index>.<state key>: tensor}`` for the optimizer's per-parameter state (e.g. Adam moments)."""
    flat = {}
    for index, param_state in optimizer.state_dict()["state"].items():
        for key, value in param_state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            flat[f"{prefix}.{index}.{key}"] = tensor.detach().clone()
    return flat


def take_prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed."""
    start = prefix + "."
    return {name[len(start) :]: value for name, value in tensors.items() if name.startswith(start)}


def load_module(module: nn.Module, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Load ``prefix.*`` entries into ``module`` strictly; mismatches raise UserError naming the keys."""
    own = take_prefixed(tensors, prefix)
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as err:
        raise UserError(f"agent state for '{prefix}' does not match this agent's network: {err}") from None


def load_optimizer(optimizer: torch.optim.Optimizer, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Rebuild optimizer state from ``prefix.<index>.<key>`` entries; hyperparameters stay those of ``optimizer``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    n_params = sum(len(group["params"]) for group in optimizer.param_groups)
    for name, value in take_prefixed(tensors, prefix).items():
        index_text, _, key = name.partition(".")
        if not index_text.isdigit() or int(index_text) >= n_params or not key:
            raise UserError(f"agent state entry '{prefix}.{name}' does not name a parameter of optimizer '{prefix}'")
        state.setdefault(int(index_text), {})[key] = value.clone()
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
