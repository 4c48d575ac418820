"""How finetune/evaluate choose the agent config: the checkpoint's, with command-line agent.KEY overrides on top."""

from __future__ import annotations

from omegaconf import OmegaConf

from calql_robot.training.session import agent_cfg_for_finetune

SAVED = {"config": {"agent": {"variant": "calql", "actor_hidden": [32, 32], "cql_alpha": 5.0,
                              "encoder": {"name": "auto", "normalize": True}}}}


def composed(**agent: object) -> OmegaConf:
    """A composed app config whose agent differs from the checkpoint's (as today's defaults may)."""
    base = {"variant": "calql", "actor_hidden": [256, 256], "cql_alpha": 1.0, "policy_ema_tau": 0.001,
            "encoder": {"name": "auto", "normalize": False, "channels": 32}}
    return OmegaConf.create({"seed": 0, "agent": {**base, **agent}})


def test_checkpoint_agent_wins_and_new_keys_take_todays_defaults() -> None:
    agent = agent_cfg_for_finetune(composed(), SAVED, overrides=["seed=3"]).agent
    assert agent.actor_hidden == [32, 32] and agent.cql_alpha == 5.0 and agent.encoder.normalize is True
    assert agent.policy_ema_tau == 0.001 and agent.encoder.channels == 32  # absent from the checkpoint's config


def test_command_line_agent_keys_override_the_checkpoint() -> None:
    cfg = composed(cql_alpha=2.0, encoder={"name": "auto", "normalize": False, "channels": 32})
    agent = agent_cfg_for_finetune(cfg, SAVED, overrides=["agent.cql_alpha=2.0", "agent.encoder.normalize=false"]).agent
    assert agent.cql_alpha == 2.0 and agent.encoder.normalize is False
    assert agent.actor_hidden == [32, 32]  # keys not on the command line stay the checkpoint's


def test_agent_group_choice_replaces_the_whole_agent() -> None:
    cfg = composed(variant="cql")
    agent = agent_cfg_for_finetune(cfg, SAVED, overrides=["agent=cql"]).agent
    assert agent.variant == "cql" and agent.actor_hidden == [256, 256] and agent.cql_alpha == 1.0
