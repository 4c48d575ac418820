"""The config checks of the training apps (pretrain, finetune, evaluate) and of collect, run before any disk write.

Each app calls its ``check_*_config(cfg)`` first: every key of its ``configs/<app>.yaml`` has a typed rule (whole
number >= 1, true/false, one of, ...) and a bad value is a ConfigError naming the key, raised before a run directory,
``config.yaml`` or store exists. :func:`check_agent_config` types the agent options the same way (from the fields of
:class:`~calql_robot.agent.config.AgentConfig`) and then runs that class's own value checks; the training apps call it
once the agent config is final (finetune and evaluate merge the checkpoint's agent config first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from calql_robot.config_rules import (
    ABSENT,
    Rule,
    check_keys,
    check_output_location,
    check_value,
    flag,
    is_number,
    is_whole,
    matches,
    number,
    path,
    plain_value,
    text,
    whole,
)
from calql_robot.errors import ConfigError

SEED = whole(minimum=0, maximum=2**32 - 1)
DEVICE = matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")
THREADS = Rule("auto, a whole number of CPU threads in [1, 4096], or null",
               lambda v: v == "auto" or (is_whole(v) and 1 <= int(v) <= 4096), optional=True)
COMPILE = Rule("auto, true or false", lambda v: str(v).lower() in ("auto", "true", "false"), optional=True)
PREFETCH = Rule("auto, true or false", lambda v: str(v).lower() in ("auto", "true", "false"))
BATCH_SIZE = whole(minimum=1, maximum=2**20)
EPISODES = whole(minimum=1, maximum=2**31 - 1)
MIXING_RATIO = Rule("-1 (proportional to the buffer sizes) or a number in [0, 1]",
                    lambda v: is_number(v) and (float(v) == -1.0 or 0.0 <= float(v) <= 1.0))

TASK_RULES: dict[str, Rule] = {"task.name": text(), "task.gamma": number(minimum=0.0, maximum=1.0)}

EVAL_RULES: dict[str, Rule] = {
    "eval.episodes": EPISODES, "eval.video": flag(), "eval.video_episodes": whole(minimum=0, maximum=2**31 - 1),
}

TRAINING_RULES: dict[str, Rule] = {
    "run_dir": path(), "seed": SEED, "device": DEVICE, "threads": THREADS, "compile": COMPILE,
    "dataset": path(optional=True),
    "progress": flag(), "progress_every": whole(minimum=0, optional=True), "eval.every": whole(minimum=0),
    **EVAL_RULES, "data.lazy": flag(),
    "data.cache_mb": whole(minimum=1, maximum=2**24),
    "data.storage_options": Rule("null or a mapping of fsspec storage options such as {endpoint_url: "
                                 "'http://HOST:9000'}", lambda v: v is None or isinstance(v, Mapping), optional=True),
}

PRETRAIN_RULES: dict[str, Rule] = {
    **TRAINING_RULES, "data.prefetch": PREFETCH, "pretrain.steps": whole(minimum=1), "pretrain.batch_size": BATCH_SIZE,
    "pretrain.log_every": whole(minimum=1), "pretrain.save_every": whole(minimum=1),
}

FINETUNE_RULES: dict[str, Rule] = {
    **TRAINING_RULES, "checkpoint": path(), "finetune.env_steps": whole(minimum=1),
    "finetune.mixing_ratio": MIXING_RATIO, "finetune.utd": whole(minimum=0, maximum=2**20),
    "finetune.batch_size": BATCH_SIZE, "finetune.log_every": whole(minimum=1), "finetune.save_every": whole(minimum=1),
}

EVALUATE_RULES: dict[str, Rule] = {
    "checkpoint": path(), "output": path(optional=True), "seed": SEED, "device": DEVICE, "threads": THREADS,
    **EVAL_RULES, "eval.seed": SEED,
}

COLLECT_RULES: dict[str, Rule] = {
    "episodes": whole(minimum=1, maximum=2**31 - 1, optional=True), "output": path(optional=True), "seed": SEED,
    "overwrite": flag(), "task.dataset.episodes": whole(minimum=1, maximum=2**31 - 1, optional=True),
    "task.dataset.path": path(optional=True),
}


def _where(app: str) -> str:
    return f"see configs/{app}.yaml or --help"


def check_pretrain_config(cfg: DictConfig) -> None:
    """Every key of the pretrain app and the agent options; ConfigError naming the first bad key."""
    check_keys(cfg, TASK_RULES, "see configs/task/")
    check_keys(cfg, PRETRAIN_RULES, _where("pretrain"))
    check_agent_config(cfg)


def check_finetune_config(cfg: DictConfig) -> None:
    """The finetune app's own keys; the agent is checked once merged with the checkpoint's agent config."""
    check_keys(cfg, TASK_RULES, "see configs/task/")
    check_keys(cfg, FINETUNE_RULES, _where("finetune"))


def check_evaluate_config(cfg: DictConfig) -> None:
    """The evaluate app's own keys (the task and agent come from the checkpoint and are checked after the merge)."""
    check_keys(cfg, EVALUATE_RULES, _where("evaluate"))
    if plain_value(cfg, "output") is not None:
        check_output_location(plain_value(cfg, "output"))


def check_collect_config(cfg: DictConfig) -> None:
    """The collect app's keys, and that the output is a path a store may be written to."""
    check_keys(cfg, {"task.name": text()}, "see configs/task/")
    check_keys(cfg, COLLECT_RULES, _where("collect"))
    output = plain_value(cfg, "output") or plain_value(cfg, "task.dataset.path")
    if output:
        check_output_location(output)


def _rule_for_annotation(annotation: str) -> Rule | None:
    """The type rule of an AgentConfig field annotation (its string form); None for an annotation not known here."""
    rules: dict[str, Rule] = {
        "str": text(), "int": whole(), "float": number(), "bool": flag(), "float | None": number(optional=True),
        "list[int]": Rule("a non-empty list of whole numbers",
                          lambda v: isinstance(v, list) and len(v) > 0 and all(is_whole(x) for x in v)),
        "dict[str, Any]": Rule("a mapping such as {name: auto}", lambda v: isinstance(v, Mapping)),
    }
    return rules.get(str(annotation).replace("typing.", ""))


def agent_field_rules() -> dict[str, Rule | None]:
    """{field name: type rule} for every AgentConfig field (None where the annotation has no rule)."""
    from calql_robot.agent.config import AgentConfig

    return {f.name: _rule_for_annotation(f.type) for f in dataclasses.fields(AgentConfig)}


def check_agent_config(cfg: DictConfig) -> None:
    """Type-check ``cfg.agent`` per AgentConfig's fields, then run AgentConfig's own checks (ranges, unknown keys)."""
    from calql_robot.agent.config import AgentConfig

    where = "see configs/agent/calql.yaml and docs/agent.md"
    if isinstance(cfg.get("agent"), DictConfig):  # one key at a time first, so an error names the key
        for name, rule in agent_field_rules().items():
            value = plain_value(cfg, f"agent.{name}")
            if rule is not None and name != "discount" and value is not ABSENT:
                check_value(f"agent.{name}", value, rule, where)
    agent: Any = plain_value(cfg, "agent")
    if not isinstance(agent, Mapping):
        raise ConfigError(f"agent={agent!r} is not valid: expected the agent options (agent=calql|cql|sac, or "
                          "agent.KEY=VALUE); see configs/agent/calql.yaml")
    gamma = plain_value(cfg, "task.gamma")
    AgentConfig.from_mapping({**agent, **({"discount": float(gamma)} if is_number(gamma) else {})})
