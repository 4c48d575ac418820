"""Config checks before any disk write (issue 11, items 10 and 11): the reproductions, in-process and fast.

Each bad value of the issue is refused with a ConfigError naming the key; checkpoints without RNG states, of another
architecture or of another shape are refused in one paragraph; an empty store is refused before training; and
``output=.`` is refused before anything is replaced.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from calql_robot.agent.state import load_module
from calql_robot.app import CONFIG_DIR
from calql_robot.config_rules import check_output_location
from calql_robot.convert import load_config as convert_config
from calql_robot.convert import run_conversion
from calql_robot.datasets.format import DatasetWriter
from calql_robot.errors import ConfigError, UserError
from calql_robot.training import config_check
from calql_robot.training.checkpoint import (
    check_state_keys,
    load_checkpoint,
    restore_generator,
    restore_rng_state,
    save_checkpoint,
)


def compose_app(app: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=app, overrides=list(overrides))


@pytest.mark.parametrize("app, check, overrides", [
    ("pretrain", config_check.check_pretrain_config, []),
    ("pretrain", config_check.check_pretrain_config, ["task=antmaze_umaze", "agent=cql", "device=cuda:1"]),
    ("finetune", config_check.check_finetune_config, ["checkpoint=runs/x", "finetune.mixing_ratio=-1"]),
    ("evaluate", config_check.check_evaluate_config, ["checkpoint=runs/x", "output=runs/evaluate/x"]),
    ("collect", config_check.check_collect_config, ["episodes=3", "output=data/x.zarr"]),
])
def test_default_configs_pass(app, check, overrides):
    check(compose_app(app, *overrides))  # raises on a false refusal


@pytest.mark.parametrize("app, override, key", [
    ("pretrain", "pretrain.steps=abc", "pretrain.steps"),
    ("pretrain", "pretrain.batch_size=-1", "pretrain.batch_size"),
    ("pretrain", "pretrain.save_every=0", "pretrain.save_every"),
    ("pretrain", "pretrain.log_every=0", "pretrain.log_every"),
    ("pretrain", "device=tpu", "device"),
    ("pretrain", "eval.every=often", "eval.every"),
    ("pretrain", "eval.episodes=0", "eval.episodes"),
    ("pretrain", "progress='false'", "progress"),  # a quoted false would read as true
    ("pretrain", "pretrain.steps=${nope}", "pretrain.steps"),
    ("pretrain", "agent.actor_lr=abc", "agent.actor_lr"),
    ("pretrain", "agent.actor_hidden=[]", "agent.actor_hidden"),
    ("pretrain", "agent.tau=2", "agent.tau"),
    ("finetune", "finetune.log_every=0", "finetune.log_every"),
    ("finetune", "finetune.mixing_ratio=2", "finetune.mixing_ratio"),
    ("finetune", "seed=-3", "seed"),
    ("evaluate", "eval.video_episodes=-1", "eval.video_episodes"),
    ("collect", "seed=abc", "seed"),
    ("collect", "overwrite=yes", "overwrite"),
])
def test_issue_values_are_refused_naming_the_key(app, override, key):
    extra = {"finetune": ["checkpoint=runs/x"], "evaluate": ["checkpoint=runs/x"]}.get(app, [])
    cfg = compose_app(app, *extra, override)
    check = getattr(config_check, f"check_{app}_config")
    with pytest.raises(UserError) as info:
        check(cfg)
    message = str(info.value)
    assert message.startswith(key) and "\n" not in message, message


def test_every_agent_option_has_a_type_rule():
    rules = config_check.agent_field_rules()
    assert rules and all(rule is not None for rule in rules.values()), rules


def test_output_that_would_replace_the_working_directory_is_refused(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "keep").mkdir(parents=True)
    monkeypatch.chdir(work)
    for value in (".", "..", "./", str(work), str(tmp_path), "/", "sub/.."):
        with pytest.raises(ConfigError, match="working directory or a folder above it"):
            check_output_location(value)
    assert check_output_location("data/x.zarr") == work / "data" / "x.zarr"
    # the collect app refuses output=. even with overwrite=true, before generating anything
    cfg = compose_app("collect", "output=.", "overwrite=true", "episodes=1")
    from calql_robot.collect import collect

    with pytest.raises(ConfigError, match=r"^output='\.' resolves to"):
        collect(cfg)
    assert sorted(p.name for p in work.iterdir()) == ["keep"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "work"]


def test_convert_control_freq_and_output_dot_are_refused_before_reading(tmp_path, monkeypatch):
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    monkeypatch.chdir(work)
    base = ["source=raw", f"input={logs}"]
    with pytest.raises(ConfigError, match=r"^control_freq='abc' is not valid: expected a finite number > 0"):
        run_conversion(convert_config([*base, "output=o.zarr", "control_freq=abc"]))
    with pytest.raises(ConfigError, match=r"^output='\.' resolves to"):
        run_conversion(convert_config([*base, "output=.", "overwrite=true"]))
    with pytest.raises(ConfigError, match=r"^reward.success_value=0.0 must be greater than reward.failure_value=1.0"):
        run_conversion(convert_config([*base, "output=o.zarr", "reward.success_value=0.0",
                                       "reward.failure_value=1.0"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "work"] and not any(work.iterdir())


def test_checkpoint_without_rng_or_with_malformed_state_is_refused(tmp_path):
    folder = save_checkpoint(tmp_path / "run", 5, {"agent/w": torch.zeros(2)}, {"sampler_rng": {}}, counter="update")
    tensors, state = load_checkpoint(folder)
    check_state_keys(state, folder, ("step", "rng", "sampler_rng"), "resuming")  # complete: passes
    del state["rng"]
    with pytest.raises(UserError, match=r"state.json lacks \['rng'\], which resuming needs") as info:
        check_state_keys(state, folder, ("step", "rng", "sampler_rng"), "resuming")
    assert str(folder) in str(info.value)
    with pytest.raises(UserError, match="random-number state is missing or malformed"):
        restore_rng_state(tensors, {"python": [3, [1, 2]], "numpy": "x"}, "checkpoint c")
    with pytest.raises(UserError, match="random-number state is missing or malformed"):
        restore_rng_state({}, load_checkpoint(folder)[1]["rng"], "checkpoint c")
    with pytest.raises(UserError, match="saved sampler state is malformed"):
        restore_generator(np.random.default_rng(0), {"bit_generator": "nope"}, "checkpoint c")
    (folder / "state.json").write_text(json.dumps([1, 2]))
    with pytest.raises(UserError, match="holds a JSON list; expected an object"):
        load_checkpoint(folder)


def test_architecture_mismatch_is_one_paragraph_naming_the_parameters():
    saved = {f"actor.{k}": v for k, v in nn.Sequential(nn.Linear(4, 256), nn.Linear(256, 2)).state_dict().items()}
    with pytest.raises(UserError) as info:
        load_module(nn.Sequential(nn.Linear(4, 32), nn.Linear(32, 2)), "actor", saved)
    message = str(info.value)
    assert "\n" not in message and "size mismatch" not in message  # not torch's multi-line dump
    assert "shapes differ for actor.0.weight (checkpoint [256, 4], this agent [32, 4])" in message
    assert "agent.actor_hidden" in message and len(message) < 800
    with pytest.raises(UserError, match=r"the checkpoint lacks actor.2.weight, actor.2.bias"):
        load_module(nn.Sequential(nn.Linear(4, 256), nn.Linear(256, 2), nn.Linear(2, 2)), "actor", saved)


def test_empty_store_is_refused_before_training(tmp_path):
    from calql_robot.training.offline import load_offline_buffer

    spec = {"state": {"shape": [3], "dtype": "float32", "kind": "low_dim"}}
    path = tmp_path / "empty.zarr"
    DatasetWriter.create(path, spec, -np.ones(2), np.ones(2), task="t", control_freq=10.0, reward_success=1.0,
                         reward_failure=0.0).close()
    cfg = OmegaConf.create({"task": {"name": "t"}, "data": {"lazy": False, "cache_mb": 16}})
    with pytest.raises(UserError, match=r"empty.zarr' holds no episodes \(0 transitions\)"):
        load_offline_buffer(cfg, path, spec)
    assert os.listdir(tmp_path) == ["empty.zarr"]


def test_config_error_is_not_blamed_on_an_episode(tmp_path):
    """An option only the data shows to be wrong (action_bounds of the wrong length) stops the conversion as a
    config error: no 'episode ...:' prefix and no skip_bad hint, even with skip_bad=true."""
    logs = tmp_path / "logs"
    (logs / "ep00").mkdir(parents=True)
    t = np.arange(4) * 0.1
    np.savez(logs / "ep00" / "steps.npz", timestamp=t, action=np.zeros((4, 2)), state=np.zeros((4, 3)))
    (logs / "ep00" / "episode.json").write_text(json.dumps({"success": True}))
    for extra in ([], ["skip_bad=true"]):
        with pytest.raises(ConfigError) as info:
            run_conversion(convert_config(["source=raw", f"input={logs}", f"output={tmp_path / 'o.zarr'}",
                                           "action_bounds=[[-1,-1,-1],1]", *extra]))
        message = str(info.value)
        assert message.startswith("action_bounds=") and "episode" not in message and "skip_bad" not in message
    assert not list(tmp_path.glob("o.zarr*"))


def test_rule_messages_name_bounds_as_written():
    with pytest.raises(ConfigError, match=r"expected a whole number >= 1 and <= 1048576"):
        config_check.check_pretrain_config(compose_app("pretrain", "pretrain.batch_size=0"))
