"""The agent's options (configs/agent/calql.yaml) as a typed dataclass, validated once when the agent is built.

docs/agent.md explains each option and what the variants change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from calql_robot.errors import UserError

VARIANTS = ("calql", "cql", "sac")


@dataclasses.dataclass
class AgentConfig:
    """All agent options with the Cal-QL defaults (AntMaze-sized networks, fixed CQL weight 5)."""

    variant: str = "calql"
    discount: float = 0.99
    actor_hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    critic_hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 256, 256, 256])
    num_critics: int = 2
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    target_entropy: float | None = None
    tau: float = 5e-3
    policy_ema_tau: float = 0.0
    cql_alpha: float = 5.0
    cql_n_actions: int = 10
    cql_importance_sample: bool = True
    cql_temp: float = 1.0
    cql_max_target_backup: bool = True
    cql_lagrange: bool = False
    cql_target_action_gap: float = 0.8
    cql_lagrange_weight: float | None = None
    cql_lagrange_init_log_alpha: float = 1.0
    backup_entropy: bool = False
    orthogonal_init: bool = True
    critic_value_norm: bool = False
    actor_detach_encoder: bool = True
    cpu_allocator_tuning: bool = True
    encoder: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "auto"})

    @property
    def uses_cql(self) -> bool:
        """True for calql and cql: the conservative penalty is part of the critic loss."""
        return self.variant in ("calql", "cql")

    @property
    def calibrated(self) -> bool:
        """True for calql: the policy and next-policy Q-values are bounded below by the MC return."""
        return self.variant == "calql"

    @property
    def lagrange_weight(self) -> float:
        """The multiplier w of the dual loss; defaults to cql_alpha like the authors' cql_min_q_weight."""
        return self.cql_alpha if self.cql_lagrange_weight is None else float(self.cql_lagrange_weight)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> AgentConfig:
        """Build from a dict or DictConfig (resolved), rejecting unknown keys and bad values with a UserError."""
        raw = _to_plain_dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(
                f"agent config has unknown key(s) {unknown}; valid agent keys are {sorted(known)} "
                "(see configs/agent/calql.yaml and docs/agent.md)"
            )
        config = cls(**raw)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise UserError naming the first bad option."""
        if self.variant not in VARIANTS:
            raise UserError(f"agent.variant is {self.variant!r}; expected one of {list(VARIANTS)}")
        for key in ("actor_hidden", "critic_hidden"):
            sizes = getattr(self, key)
            if not isinstance(sizes, list | tuple) or not sizes or any(int(s) <= 0 for s in sizes):
                raise UserError(f"agent.{key} is {sizes!r}; expected a non-empty list of positive layer sizes")
            setattr(self, key, [int(s) for s in sizes])
        positive = ("actor_lr", "critic_lr", "alpha_lr", "init_alpha", "cql_temp", "num_critics", "cql_n_actions")
        for key in positive:
            if not getattr(self, key) > 0:
                raise UserError(f"agent.{key} is {getattr(self, key)!r}; expected a positive number")
        if not 0.0 < self.tau <= 1.0:
            raise UserError(f"agent.tau is {self.tau!r}; expected a Polyak rate in (0, 1]")
        if not 0.0 <= self.policy_ema_tau <= 1.0:
            raise UserError(f"agent.policy_ema_tau is {self.policy_ema_tau!r}; expected a Polyak rate in [0, 1] "
                            "(0: act with the live networks)")
        if not 0.0 <= self.discount <= 1.0:
            raise UserError(f"agent.discount is {self.discount!r}; expected a value in [0, 1]")
        if self.cql_alpha < 0:
            raise UserError(f"agent.cql_alpha is {self.cql_alpha!r}; expected a non-negative weight")
        if not isinstance(self.encoder, Mapping):
            raise UserError(f"agent.encoder is {self.encoder!r}; expected a mapping such as {{name: auto}}")


def _to_plain_dict(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """DictConfig or mapping -> plain dict with interpolations resolved."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))
    except ImportError:  # pragma: no cover - omegaconf ships with hydra, a hard dependency
        pass
    if not isinstance(cfg, Mapping):
        raise UserError(f"agent config is a {type(cfg).__name__}; expected a mapping of agent options")
    return dict(cfg)
