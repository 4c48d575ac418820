"""Command-line overrides checked before hydra sees them, so that a wrong key or choice is one short paragraph.

Hydra's own messages for these mistakes are hard to act on: ``Key 'step' is not in struct`` lists no valid key, an
unknown top-level key is answered with "use +run_dir=x" (which hydra then accepts and the app ignores), and an unknown
task lists the choices mixed with search-path lines. :func:`check_overrides` parses the overrides with hydra's own
parser, composes the app's config with the given group choices, and raises a UserError (exit status 2) for

* ``group=NAME`` naming no file of ``configs/<group>/`` ("unknown task 'nosuch'; choices: ...", nearest first);
* a top-level key the app does not have, also as ``+key=`` (its valid keys, nearest first; never "+key");
* ``block.key=`` where ``block`` has no ``key`` (the block's keys, nearest first).

``+block.key=`` adds a key to a block (``+task.env.horizon=40``); ``++block.key=`` sets or adds one in any block the
composed config holds (a task file's ``finetune:`` block in pretrain). Anything the checks cannot judge (hydra's own
flags, ``hydra.*`` keys, a parse error, a key under a list or a null block) is left to hydra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from calql_robot.config_layout import (
    all_groups,
    app_groups,
    group_choices,
    group_package,
    nearest_first,
    top_level_keys,
)
from calql_robot.errors import ConfigError

HELP_FLAGS = ("--help", "-h")


def _listing(word: str, options: list[str], limit: int = 40) -> str:
    ranked = nearest_first(word, options)
    more = f" (and {len(ranked) - limit} more)" if len(ranked) > limit else ""
    return ", ".join(ranked[:limit]) + more


def _parse(args: list[str]) -> list[Any] | None:
    """Hydra's parsed overrides of ``args``; None when any argument is a flag or does not parse (hydra reports)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(arg.startswith("-") for arg in args):
        return None
    try:
        return OverridesParser.create().parse_overrides(args)
    except HydraException:
        return None


def _choices_given(override: Any) -> list[Any]:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.value()]


def _check_choice(config_dir: Path, group: str, override: Any) -> None:
    choices = group_choices(config_dir, group)
    for value in _choices_given(override):
        if value is None:
            continue
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"unknown {group} {str(value)!r}; choices: {_listing(str(value), choices)} "
                              f"(configs/{group}/NAME.yaml)")


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig | None:
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    except Exception:  # noqa: BLE001 - whatever hydra refuses here, it reports itself when the app runs
        return None


def _check_nested(cfg: DictConfig, key: str, app: str) -> None:
    """``key`` (dotted, set with plain ``key=value``) must exist in ``cfg``; else its block's keys, nearest first."""
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        if depth > 0 and node._is_none():
            block = ".".join(parts[:depth])
            raise ConfigError(f"{key} cannot be set: {block} is null in {app}'s config, so it has no keys; set it "
                              f"whole, e.g. {block}={{{part}: VALUE}}")
        if not isinstance(node, DictConfig) or node._is_missing():
            return  # a list, a ??? block or a value: hydra reports what it makes of it
        if part not in node.keys() and depth == 0:
            raise ConfigError(f"{key} is not set in {app}'s config: it has no {part} block unless {part}=NAME is "
                              f"given; choose one ({part}=NAME) or add the key with +{key}=VALUE")
        if part not in node.keys():
            block = ".".join(parts[:depth])
            valid = [str(k) for k in node.keys()]
            raise ConfigError(f"{key} is not an option of {app}: {block} has no key '{part}'; the keys of {block} "
                              f"are {_listing(part, valid)} (nearest first; --help lists them with their meaning)")
        node = node._get_node(part)


def _unknown_top(key: str, app: str, valid_top: list[str]) -> ConfigError:
    top = key.split(".", 1)[0]
    return ConfigError(f"{key} is not an option of {app}: it has no key '{top}'; its top-level keys are "
                       f"{_listing(top, valid_top)} (nearest first; --help lists every option with its meaning)")


def check_overrides(config_dir: Path, config_name: str, args: list[str]) -> None:
    """Raise ConfigError for an unknown group choice or key in the command line ``args`` of app ``config_name``."""
    from hydra.core.override_parser.types import OverrideType

    overrides = _parse(args)
    if not overrides:
        return
    groups = all_groups(config_dir)
    uses = {use.group: use for use in app_groups(config_dir, config_name)}
    valid_top = top_level_keys(config_dir, config_name)
    group_args, nested = [], []
    for arg, override in zip(args, overrides):
        key = override.key_or_group
        if override.package is not None or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if override.type == OverrideType.DEL:
            continue
        if key in groups and (key in uses or override.type == OverrideType.ADD):
            if key not in uses and group_package(config_dir, key) not in valid_top:
                raise _unknown_top(key, config_name, valid_top)
            _check_choice(config_dir, key, override)
            group_args.append(arg)
            continue
        top = key.split(".", 1)[0]
        if top not in valid_top and override.type != OverrideType.FORCE_ADD:
            raise _unknown_top(key, config_name, valid_top)
        if "." in key or override.type != OverrideType.CHANGE:  # a plain top-level key is one of valid_top
            nested.append(override)
    if not nested:
        return
    cfg = _compose(config_dir, config_name, group_args)
    if cfg is None:
        return
    added: list[str] = []
    for override in nested:
        key = override.key_or_group
        if override.type == OverrideType.CHANGE and key not in added:
            _check_nested(cfg, key, config_name)
        elif override.type == OverrideType.FORCE_ADD and key.split(".", 1)[0] not in [*valid_top, *cfg.keys()]:
            raise _unknown_top(key, config_name, valid_top)
        else:
            added.append(key)

