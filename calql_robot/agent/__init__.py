"""Cal-QL agent (with CQL and SAC as variants): ``build_agent(agent_cfg, obs_spec, action_dim, device)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from calql_robot.agent.agent import CalQLAgent
from calql_robot.agent.config import AgentConfig


def build_agent(
    agent_cfg: Mapping[str, Any] | None, obs_spec: Mapping[str, Mapping[str, Any]], action_dim: int, device: Any
) -> CalQLAgent:
    """Validate ``agent_cfg`` (dict or DictConfig; see configs/agent/calql.yaml) and build the agent on ``device``."""
    return CalQLAgent(AgentConfig.from_mapping(agent_cfg), obs_spec, action_dim, device)


__all__ = ["AgentConfig", "CalQLAgent", "build_agent"]
