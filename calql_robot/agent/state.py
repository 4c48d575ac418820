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
    problem = describe_mismatch(module, prefix, own)
    if problem is None:
        try:
            module.load_state_dict(own, strict=True)
            return
        except RuntimeError as err:  # a mismatch the shape comparison did not see: torch's first line names it
            problem = str(err).strip().splitlines()[0]
    raise UserError(f"agent state for '{prefix}' does not match this agent's network: {problem}. The checkpoint was "
                    "written for other agent options (e.g. agent.actor_hidden, agent.critic_hidden, agent.num_critics, "
                    "the encoder or the task's observations): use the options it was trained with (its run "
                    "directory's config.yaml) or a new run_dir") from None


def describe_mismatch(module: nn.Module, prefix: str, own: Mapping[str, torch.Tensor], limit: int = 3) -> str | None:
    """One sentence naming (at most ``limit`` of each) the parameters whose shapes differ, that are missing from
    ``own`` or that ``module`` does not have; None when names and shapes all match."""
    expected = {name: tuple(value.shape) for name, value in module.state_dict().items()}

    def listing(names: list[str]) -> str:
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return ", ".join(names[:limit]) + more

    resized = [f"{prefix}.{name} (checkpoint {list(own[name].shape)}, this agent {list(shape)})"
               for name, shape in expected.items() if name in own and tuple(own[name].shape) != shape]
    missing = [f"{prefix}.{name}" for name in expected if name not in own]
    unexpected = [f"{prefix}.{name}" for name in own if name not in expected]
    parts = []
    if resized:
        parts.append(f"shapes differ for {listing(resized)}")
    if missing:
        parts.append(f"the checkpoint lacks {listing(missing)}")
    if unexpected:
        parts.append(f"the checkpoint has parameters this agent does not: {listing(unexpected)}")
    return "; ".join(parts) if parts else None


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
