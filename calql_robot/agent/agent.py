"""CalQLAgent: Cal-QL, CQL and SAC-with-offline-data as variants of one update (see docs/agent.md).

``update(batch)`` reads top to bottom: encode, actor and temperature losses, TD target, one batched critic forward
over every action set, CQL penalty (with the Cal-QL bound), one backward pass for all losses, the optional
gradient sync (several processes), optimizer steps, Polyak update. Every loss only reaches its own parameters (the
others are detached), so one backward is exact.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from calql_robot.agent import losses
from calql_robot.agent.actor import TanhGaussianActor, policy_actions
from calql_robot.agent.config import AgentConfig
from calql_robot.agent.cpu_tuning import tune_cpu_allocator
from calql_robot.agent.critic import QEnsemble
from calql_robot.agent.state import load_module, load_optimizer, module_tensors, optimizer_tensors
from calql_robot.encoders import augment_batch, build_encoder
from calql_robot.errors import UserError

# The metrics ``update`` returns, in the order ``compute_losses`` stacks them.
METRIC_NAMES = (
    "critic_loss", "td_loss", "cql_loss", "actor_loss", "alpha_loss", "lagrange_loss", "alpha", "cql_alpha",
    "cql_alpha_prime", "cql_penalty", "bound_rate", "q_data_mean", "q_policy_mean", "mc_return_mean",
    "td_target_mean", "entropy",
)  # fmt: skip


class CalQLAgent:
    """Actor, critic ensemble (owning the encoder), target critics, temperature and CQL multiplier, with Adam each."""

    def __init__(self, cfg: AgentConfig, obs_spec: Mapping[str, Mapping[str, Any]], action_dim: int, device: Any):
        self.cfg, self.obs_spec, self.action_dim = cfg, dict(obs_spec), int(action_dim)
        self.device = torch.device(device)
        if cfg.cpu_allocator_tuning and self.device.type == "cpu":
            tune_cpu_allocator()
        self.encoder = build_encoder(cfg.encoder, obs_spec).to(self.device)
        feature_dim = int(self.encoder.out_dim)
        self.actor = TanhGaussianActor(feature_dim, action_dim, cfg.actor_hidden, cfg.orthogonal_init).to(self.device)
        self.critic = QEnsemble(feature_dim, action_dim, cfg.critic_hidden, cfg.num_critics, cfg.orthogonal_init,
                                cfg.critic_value_norm)
        self.critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # With policy_ema_tau > 0: Polyak averages of the encoder and actor, used for deterministic actions only.
        self.policy_ema: dict[str, torch.nn.Module] = {}
        if cfg.policy_ema_tau > 0:
            self.policy_ema = {"encoder_ema": copy.deepcopy(self.encoder).requires_grad_(False),
                               "actor_ema": copy.deepcopy(self.actor).requires_grad_(False)}
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), device=self.device, requires_grad=True)
        self.log_alpha_prime = torch.tensor(
            float(cfg.cql_lagrange_init_log_alpha), device=self.device, requires_grad=True
        )
        self.target_entropy = -float(action_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        self.optimizers = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr),
            "critic": torch.optim.Adam([*self.critic.parameters(), *self.encoder.parameters()], lr=cfg.critic_lr),
            "alpha": torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr),
            "cql_alpha_prime": torch.optim.Adam([self.log_alpha_prime], lr=cfg.critic_lr),
        }
        self.step = torch.zeros((), dtype=torch.int64)
        self._zero = torch.zeros((), device=self.device)  # constants made once: no host-to-device copy per update
        self._fixed_cql_alpha = torch.tensor(float(cfg.cql_alpha), device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))  # follows the global seed
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self._loss_fn = self.compute_losses  # replaced by a compiled version in enable_compile
        self.compiled = False
        # Every optimised tensor, in optimizer order; ``grad_sync(params)``, when set, runs between the backward pass
        # and the optimizer steps (several torchrun processes: averages each .grad over them, training/distributed.py).
        self._trained_params = [p for opt in self.optimizers.values() for g in opt.param_groups for p in g["params"]]
        self.grad_sync: Callable[[list[torch.Tensor]], None] | None = None

    # ------------------------------------------------------------------ training
    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One gradient step of every network on ``batch`` (see docs/DESIGN.md); returns float metrics.

        The random numbers (augmentation shifts, action noise) are drawn first, eagerly, so the loss computation is a
        pure function of (networks, batch, noise): the same whether it runs eagerly or compiled (``enable_compile``).
        """
        action, reward = batch["action"], batch["reward"]
        batch_size = action.shape[0]
        if action.shape != (batch_size, self.action_dim) or reward.shape != (batch_size,):
            raise ValueError(
                f"batch action {tuple(action.shape)} / reward {tuple(reward.shape)}: expected "
                f"({batch_size}, {self.action_dim}) / ({batch_size},) as in docs/DESIGN.md"
            )
        self.encoder.train()
        obs, next_obs = self._augment(batch["obs"]), self._augment(batch["next_obs"])
        noise = self._draw_noise(batch_size)
        total_loss, metric_values = self._loss_fn(
            obs, next_obs, action, reward, batch["terminal"].float(), batch["mc_return"].float(), noise
        )

        # One backward for all losses (each reaches only its own parameters), then every optimizer steps.
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        if self.grad_sync is not None:
            self.grad_sync(self._trained_params)
        for optimizer in self.optimizers.values():
            optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.tau)
            if self.policy_ema:
                self._update_policy_ema(self.cfg.policy_ema_tau)
        self.step += 1
        return dict(zip(METRIC_NAMES, metric_values.tolist()))  # the one host sync of an update

    def enable_compile(self, mode: str | None = None) -> None:
        """Run ``compute_losses`` (forward and backward) through ``torch.compile`` (inductor) from the next update.

        The graph is built at the first update (tens of seconds, once per process and batch shape; inductor's disk
        cache shortens later processes). Results equal the eager update's within float tolerance
        (tests/test_compiled_update.py). ``mode`` is torch.compile's (None, "max-autotune-no-cudagraphs", ...).
        """
        self._loss_fn = torch.compile(self.compute_losses, mode=mode, dynamic=False)
        self.compiled = True

    def _augment(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """DrQ random shifts of the image keys (global RNG, as the encoder would draw them); other keys as they are."""
        pads = getattr(self.encoder, "augment_pads", None)
        return augment_batch(obs, pads) if pads else dict(obs)

    def _draw_noise(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Every action-noise draw of one update, from the agent's generator, in a fixed order:
        actor (1, B, A) and backup (n_backup, B, A) standard normals; with CQL also random_action (n, B, A) uniform
        in [-1, 1) and policy / next_policy (n, B, A) standard normals."""
        cfg, gen, n = self.cfg, self.generator, self.cfg.cql_n_actions
        shape = (batch_size, self.action_dim)
        noise = {
            "actor": torch.randn((1, *shape), generator=gen, device=self.device),
            "backup": torch.randn((n if cfg.cql_max_target_backup else 1, *shape), generator=gen, device=self.device),
        }
        if cfg.uses_cql:
            noise["random_action"] = torch.rand((n, *shape), generator=gen, device=self.device) * 2.0 - 1.0
            noise["policy"] = torch.randn((n, *shape), generator=gen, device=self.device)
            noise["next_policy"] = torch.randn((n, *shape), generator=gen, device=self.device)
        return noise

    def compute_losses(
        self,
        obs: Mapping[str, torch.Tensor],
        next_obs: Mapping[str, torch.Tensor],
        action: torch.Tensor,
        reward: torch.Tensor,
        terminal: torch.Tensor,
        mc_return: torch.Tensor,
        noise: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sum of all losses (scalar, to backpropagate) and the metrics (len(METRIC_NAMES),), detached.

        obs / next_obs {k: (B, ...)} already augmented; action (B, A); reward, terminal, mc_return (B,) float;
        noise from ``_draw_noise``. No random numbers are drawn here and nothing is synced to the host.
        """
        cfg, n = self.cfg, self.cfg.cql_n_actions
        sample = TanhGaussianActor.sample_with_noise

        # Features: the critic's encoder runs once per observation batch.
        obs_features = self.encoder(obs)  # (B, F), trained by the critic loss
        with torch.no_grad():
            next_features = self.encoder(next_obs)  # (B, F)
        actor_features = obs_features.detach() if cfg.actor_detach_encoder else obs_features

        # Actor and temperature: a ~ pi(s) reparameterised, critics evaluated with detached weights.
        mean, log_std = self.actor(actor_features)  # (B, A) each
        new_action, new_log_prob = sample(mean, log_std, noise["actor"])  # (1, B, A), (1, B)
        q_new = self.critic(obs_features.detach(), new_action, detach_params=True).min(dim=0).values[0]  # (B,)
        alpha = self.log_alpha.exp()
        actor_loss = losses.actor_loss(new_log_prob[0], q_new, alpha)
        alpha_loss = losses.temperature_loss(self.log_alpha, new_log_prob[0], self.target_entropy)

        # TD target from the target critics at n next-policy samples (max-target backup) or one.
        with torch.no_grad():
            next_mean, next_log_std = self.actor(next_features)
            backup_action, backup_log_prob = sample(next_mean, next_log_std, noise["backup"])  # (n, B, A), (n, B)
            target_q = self.critic_target(next_features, backup_action)  # (C, n, B)
            td_target = losses.td_target(
                reward, terminal, cfg.discount, target_q, backup_log_prob, alpha,
                cfg.cql_max_target_backup, cfg.backup_entropy,
            )  # fmt: skip
            action_sets = [action.unsqueeze(0)]  # data action first, then 3 x n sampled sets for CQL
            if cfg.uses_cql:
                policy_action, policy_log_prob = sample(mean.detach(), log_std.detach(), noise["policy"])
                next_policy_action, next_policy_log_prob = sample(next_mean, next_log_std, noise["next_policy"])
                action_sets += [noise["random_action"], policy_action, next_policy_action]
            action_sets = torch.cat(action_sets, dim=0)  # (1 [+ 3n], B, A)

        # One critic forward for every action set at s: (C, 1 [+ 3n], B).
        q_all = self.critic(obs_features, action_sets)
        q_data = q_all[:, 0]  # (C, B)
        td_loss = losses.td_loss(q_data, td_target)
        zero = self._zero
        alpha_prime = losses.lagrange_multiplier(self.log_alpha_prime).detach()  # the value used in this update
        cql_loss, lagrange_loss, cql_gap, bound_rate, cql_weight = zero, zero, zero, zero, zero
        if cfg.uses_cql:
            cql_gap_per_critic, bound_rate = losses.cql_penalty(
                q_all, n, mc_return, policy_log_prob, next_policy_log_prob, self.action_dim,
                cfg.calibrated, cfg.cql_importance_sample, cfg.cql_temp,
            )  # fmt: skip  (C,), scalar
            cql_gap = cql_gap_per_critic.detach().mean()
            if cfg.cql_lagrange:
                cql_weight = alpha_prime * cfg.lagrange_weight
                cql_loss = (cql_weight * (cql_gap_per_critic - cfg.cql_target_action_gap)).sum()
                lagrange_loss = losses.lagrange_loss(
                    self.log_alpha_prime, cql_gap_per_critic, cfg.cql_target_action_gap, cfg.lagrange_weight
                )
            else:
                cql_weight = self._fixed_cql_alpha
                cql_loss = cfg.cql_alpha * cql_gap_per_critic.sum()
        critic_loss = td_loss + cql_loss

        metrics = [
            critic_loss, td_loss, cql_loss, actor_loss, alpha_loss, lagrange_loss, alpha, cql_weight, alpha_prime,
            cql_gap, bound_rate, q_data.mean(), q_new.mean(), mc_return.mean(), td_target.mean(),
            -new_log_prob.mean(),
        ]  # in the order of METRIC_NAMES
        metric_values = torch.stack([value.detach().float().reshape(()) for value in metrics])
        return critic_loss + actor_loss + alpha_loss + lagrange_loss, metric_values

    def set_value_normalization(self, mc_returns: np.ndarray) -> tuple[float, float]:
        """With ``critic_value_norm``, fix Q = std(G) * net + mean(G) in the critics and their targets from the
        offline data's Monte-Carlo returns ``mc_returns`` (T,), so the networks learn values of order 1 whatever the
        reward scale and discount. Returns (shift, scale); a no-op returning (0, 1) when the option is off."""
        if not self.cfg.critic_value_norm:
            return 0.0, 1.0
        returns = np.asarray(mc_returns, dtype=np.float64)
        if returns.size == 0 or not np.isfinite(returns).all():
            raise UserError("critic_value_norm needs finite Monte-Carlo returns of at least one transition")
        shift, scale = float(returns.mean()), max(float(returns.std()), 1.0)
        for critic in (self.critic, self.critic_target):
            critic.set_value_normalization(shift, scale)
        return shift, scale

    def _update_policy_ema(self, rate: float) -> None:
        """Move the averaged encoder and actor ``rate`` of the way to the live ones; buffers (normalisation
        statistics) are copied as they are."""
        for name, live in (("encoder_ema", self.encoder), ("actor_ema", self.actor)):
            average = self.policy_ema[name]
            for avg_param, param in zip(average.parameters(), live.parameters()):
                avg_param.lerp_(param, rate)
            for avg_buffer, buffer in zip(average.buffers(), live.buffers()):
                avg_buffer.copy_(buffer)

    def reset_policy_ema(self) -> None:
        """Set the averaged encoder and actor to the live ones (after fitting statistics or loading old weights)."""
        if self.policy_ema:
            with torch.no_grad():
                self._update_policy_ema(1.0)

    # ------------------------------------------------------------------ acting
    def act_batch(self, obs: Mapping[str, torch.Tensor], deterministic: bool) -> torch.Tensor:
        """Batched actions: obs {k: (B, ...)} tensors on the agent's device -> (B, A) in [-1, 1].

        Deterministic actions (evaluation, deployment) come from the averaged networks when ``policy_ema_tau`` > 0;
        exploration samples always come from the live actor, the one being trained.
        """
        use_ema = deterministic and bool(self.policy_ema)
        encoder = self.policy_ema["encoder_ema"] if use_ema else self.encoder
        actor = self.policy_ema["actor_ema"] if use_ema else self.actor
        encoder.eval()
        return policy_actions(encoder, actor, obs, deterministic, self.generator)

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """One observation {k: (...)} without batch dim -> action (A,) float32; deterministic = tanh(mean)."""
        missing = sorted(set(self.obs_spec) - set(obs))
        if missing:
            raise UserError(f"observation passed to agent.act lacks key(s) {missing}; expected {sorted(self.obs_spec)}")
        obs_batch = {k: torch.as_tensor(np.asarray(obs[k]), device=self.device).unsqueeze(0) for k in self.obs_spec}
        return self.act_batch(obs_batch, deterministic)[0].cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------ state
    def _modules(self) -> dict[str, torch.nn.Module]:
        """The saved networks by name prefix."""
        return {
            "encoder": self.encoder, "actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
            **self.policy_ema,
        }

    def state_dict_tensors(self) -> dict[str, torch.Tensor]:
        """Every network (incl. targets, encoder), optimizer state, log_alpha(s), step and RNG as name -> Tensor."""
        tensors: dict[str, torch.Tensor] = {}
        for name, module in self._modules().items():
            tensors.update(module_tensors(name, module))
        for name, optimizer in self.optimizers.items():
            tensors.update(optimizer_tensors(f"optim.{name}", optimizer))
        tensors["log_alpha"] = self.log_alpha.detach().clone()
        tensors["log_alpha_prime"] = self.log_alpha_prime.detach().clone()
        tensors["step"] = self.step.clone()
        tensors["rng_state"] = self.generator.get_state().clone()
        return tensors

    def load_state_dict_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore everything saved by ``state_dict_tensors`` (tensors may be on any device)."""
        missing = [k for k in ("log_alpha", "log_alpha_prime", "step", "rng_state") if k not in tensors]
        if missing:
            raise UserError(f"agent state lacks {missing}; was it written by CalQLAgent.state_dict_tensors?")
        for name, module in self._modules().items():
            if name in self.policy_ema and not any(key.startswith(f"{name}.") for key in tensors):
                continue  # a checkpoint written without the average: it starts from the loaded live networks
            load_module(module, name, tensors)
        if self.policy_ema and not any(key.startswith("actor_ema.") for key in tensors):
            self.reset_policy_ema()
        for name, optimizer in self.optimizers.items():
            load_optimizer(optimizer, f"optim.{name}", tensors)
        with torch.no_grad():
            self.log_alpha.copy_(tensors["log_alpha"])
            self.log_alpha_prime.copy_(tensors["log_alpha_prime"])
        self.step = tensors["step"].detach().clone().to(torch.int64).cpu()
        rng_state = tensors["rng_state"].detach().cpu().to(torch.uint8)
        if rng_state.numel() == self.generator.get_state().numel():
            self.generator.set_state(rng_state)
        else:  # saved on another device type (CPU and CUDA generator states differ): derive a seed from it
            self.generator.manual_seed(int.from_bytes(rng_state[:8].numpy().tobytes(), "little") % 2**62)

    def state_dict_meta(self) -> dict[str, Any]:
        """JSON-able facts that go beside the tensors: the config, obs spec, action dim and step."""
        return {
            "agent_config": dataclasses.asdict(self.cfg),
            "obs_spec": self.obs_spec,
            "action_dim": self.action_dim,
            "step": int(self.step),
        }
