"""A trained policy for inference: observation dict in, action out, exactly as training-time evaluation acts.

:class:`Policy` holds one encoder and one tanh-Gaussian actor (the Polyak-averaged pair when the agent kept one,
``agent.policy_ema_tau > 0``) and nothing else: no critics, no optimizers. Build it with
:func:`calql_robot.load_policy`; docs/python_api.md shows the whole workflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from calql_robot.agent.actor import TanhGaussianActor, policy_actions
from calql_robot.datasets.action_scaling import ActionScaling
from calql_robot.errors import UserError

ObsBatch = Mapping[str, np.ndarray | torch.Tensor]


class Policy:
    """``act(obs) -> (A,)`` and ``act_batch(obs) -> (B, A)`` with a checkpoint's encoder and actor.

    Deterministic actions are ``tanh(mean)``, what evaluation and deployment use; ``deterministic=False`` draws
    ``tanh(mean + std * eps)`` from this policy's own generator. Observations go through the encoder unchanged
    (uint8 images, low-dim values standardised by the encoder's stored statistics when the run used
    ``agent.encoder.normalize``), as in :func:`calql_robot.training.evaluate.evaluate_agent`.
    """

    def __init__(self, encoder: nn.Module, actor: TanhGaussianActor, obs_spec: Mapping[str, Mapping[str, Any]],
                 action_dim: int, device: torch.device, metadata: Mapping[str, Any], seed: int | None = None):
        self.encoder = encoder.to(device).eval().requires_grad_(False)
        self.actor = actor.to(device).eval().requires_grad_(False)
        self.obs_spec: dict[str, dict[str, Any]] = {k: dict(v) for k, v in obs_spec.items()}
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self.metadata: dict[str, Any] = dict(metadata)
        # Per-store action normalisation (convert action_normalize=true): policy [-1, 1] -> the env's units.
        self.action_scaling = ActionScaling.from_json(self.metadata.get("action_scaling"), "policy action_scaling")
        self._generator = torch.Generator(device=self.device)
        self.seed(seed)

    @property
    def task(self) -> str | None:
        """Name of the task the policy was trained on (from the checkpoint's saved config), or None."""
        return self.metadata.get("task")

    def seed(self, seed: int | None = None) -> None:
        """Seed the generator of stochastic actions; None draws a seed from torch's global RNG."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self._generator.manual_seed(int(seed))

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}{list(v['shape'])}" for k, v in self.obs_spec.items())
        return (f"Policy(task={self.task!r}, obs={{{keys}}}, action_dim={self.action_dim}, device={self.device}, "
                f"source={self.metadata.get('source_checkpoint')!r}, step={self.metadata.get('step')})")

    # ------------------------------------------------------------------ acting
    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """One observation ``{key: array of the obs spec's shape}`` (no batch dim) -> action (A,) float32."""
        batch = {key: self._one(obs, key) for key in self._checked_keys(obs)}
        return self._act_tensors(batch, deterministic)[0].cpu().numpy().astype(np.float32)

    def act_batch(self, obs: ObsBatch, deterministic: bool = True) -> np.ndarray | torch.Tensor:
        """``{key: (B, *shape)}`` numpy arrays or tensors -> actions (B, A) float32.

        Returns a tensor on :attr:`device` when every value given is a tensor, else a numpy array.
        """
        keys = self._checked_keys(obs)
        batch = {key: self._many(obs, key) for key in keys}
        sizes = {key: int(value.shape[0]) for key, value in batch.items()}
        if len(set(sizes.values())) > 1:
            raise UserError(f"observation batch: the keys have different batch sizes {sizes}; every key needs the "
                            "same leading dimension B")
        actions = self._act_tensors(batch, deterministic)
        if all(isinstance(obs[key], torch.Tensor) for key in keys):
            return actions
        return actions.cpu().numpy().astype(np.float32)

    def _act_tensors(self, batch: Mapping[str, torch.Tensor], deterministic: bool) -> torch.Tensor:
        """Checked tensors on the device -> actions (B, A): encoder, actor, tanh, then :meth:`_action_out`."""
        return self._action_out(policy_actions(self.encoder, self.actor, batch, deterministic, self._generator))

    def _action_out(self, action: torch.Tensor) -> torch.Tensor:
        """The one place where an action leaves the policy: (B, A) in [-1, 1] -> (B, A) as the env takes it.

        The identity unless the training store normalised its actions (convert ``action_normalize=true``): then
        the inverse map (:meth:`ActionScaling.to_env`) from the checkpoint, so ``act``, ``act_batch`` and exported
        policies all return the robot's own units.
        """
        if self.action_scaling is None:
            return action
        low = torch.as_tensor(self.action_scaling.low, dtype=action.dtype, device=action.device)
        high = torch.as_tensor(self.action_scaling.high, dtype=action.dtype, device=action.device)
        return low + (action + 1.0) * 0.5 * (high - low)

    # ------------------------------------------------------------------ observation checks
    def _checked_keys(self, obs: Any) -> list[str]:
        """The obs spec's keys, after checking ``obs`` is a mapping holding all of them (extra keys are ignored)."""
        if not isinstance(obs, Mapping):
            raise UserError(f"observation must be a dict of arrays keyed by {sorted(self.obs_spec)}, got a "
                            f"{type(obs).__name__}")
        missing = sorted(set(self.obs_spec) - set(obs))
        if missing:
            raise UserError(f"observation lacks key(s) {missing}; this policy expects {self._spec_text()} "
                            f"and got keys {sorted(obs)}")
        return list(self.obs_spec)

    def _spec_text(self) -> str:
        return ", ".join(f"'{k}' {v['dtype']}{list(v['shape'])}" for k, v in self.obs_spec.items())

    def _one(self, obs: Mapping[str, Any], key: str) -> torch.Tensor:
        """One unbatched value as a (1, *shape) tensor on the device."""
        value = _as_tensor(obs[key], key)
        expected = tuple(self.obs_spec[key]["shape"])
        if tuple(value.shape) != expected:
            hint = " (act takes one observation without batch dim; use act_batch for a batch)" if (
                tuple(value.shape[1:]) == expected) else ""
            raise UserError(f"observation key '{key}': expected shape {list(expected)}, got "
                            f"{list(value.shape)}{hint}")
        return self._to_device(value, key).unsqueeze(0)

    def _many(self, obs: Mapping[str, Any], key: str) -> torch.Tensor:
        """One batched value as a (B, *shape) tensor on the device."""
        value = _as_tensor(obs[key], key)
        expected = tuple(self.obs_spec[key]["shape"])
        if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != expected:
            raise UserError(f"observation batch key '{key}': expected shape [B, {', '.join(map(str, expected))}], "
                            f"got {list(value.shape)}")
        return self._to_device(value, key)

    def _to_device(self, value: torch.Tensor, key: str) -> torch.Tensor:
        """Images must already be uint8 (as the env gives them); low-dim values are cast to float32."""
        if self.obs_spec[key]["kind"] == "rgb":
            if value.dtype != torch.uint8:
                raise UserError(f"observation key '{key}' is an image: expected dtype uint8 (0..255, HWC), got "
                                f"{str(value.dtype).removeprefix('torch.')}")
            return value.to(self.device)
        return value.to(self.device, torch.float32)


def _as_tensor(value: Any, key: str) -> torch.Tensor:
    """A numpy array, tensor or nested list as a tensor; UserError naming ``key`` for anything else."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError("ragged or non-numeric values")
        return torch.as_tensor(array)
    except (TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"observation key '{key}': expected a numeric array, got {type(value).__name__} "
                        f"({err})") from None
