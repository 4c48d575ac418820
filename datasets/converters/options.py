"""The convert app's options (configs/convert.yaml), checked before any source is read or any output written.

:func:`check_convert_config` gives every key a typed rule; a bad value is a ConfigError naming the key (never blamed
on an episode), and an output whose replacement would delete the working directory (``output=.``) is refused. Checks
that need the data (the action dimension for ``action_bounds``, which fields exist) stay with the converters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from calql_robot.config_rules import (
    Rule,
    check_keys,
    check_output_location,
    flag,
    is_number,
    is_whole,
    number,
    one_of,
    path,
    plain_value,
    text,
)
from calql_robot.datasets.converters.common import (
    _OPS,
    REWARD_RULES,
    UNKNOWN_OUTCOME,
    mapping_from_cfg,
    obs_mapping_from_cfg,
)
from calql_robot.datasets.converters.timestamps import ALIGN_METHODS
from calql_robot.errors import ConfigError


def _is_size(value: Any) -> bool:
    """64 or [H, W] with positive whole numbers."""
    if is_whole(value):
        return int(value) >= 1
    return isinstance(value, list) and len(value) == 2 and all(is_whole(v) and int(v) >= 1 for v in value)


def _is_bound(value: Any) -> bool:
    """A finite number or a non-empty list of finite numbers."""
    return is_number(value) or (isinstance(value, list) and len(value) > 0 and all(is_number(v) for v in value))


CONVERT_RULES: dict[str, Rule] = {
    "input": path(),
    "output": path(),
    "overwrite": flag(),
    "skip_bad": flag(),
    "download": flag(),
    "image_size": Rule("one whole number >= 1 (square) or [H, W]", _is_size, optional=True),
    "control_freq": number(above=0.0, optional=True),
    "action_bounds": Rule("[low, high], each a number or a list of numbers (one per action dimension)",
                          lambda v: isinstance(v, list) and len(v) == 2 and all(_is_bound(b) for b in v),
                          optional=True),
    "action_normalize": flag(),
    "keys.obs": Rule("a mapping {our_key: source_field} or {our_key: [field, ...]}",
                     lambda v: isinstance(v, Mapping), optional=True),
    "keys.action": text(optional=True),
    "keys.cameras": Rule("a mapping {source_camera: our_key}", lambda v: isinstance(v, Mapping), optional=True),
    "reward.rule": one_of(*REWARD_RULES),
    "reward.column": text(optional=True),
    "reward.success_value": number(),
    "reward.failure_value": number(),
    "reward.unknown_outcome": one_of(*UNKNOWN_OUTCOME),
    "reward.task.key": text(optional=True),
    "reward.task.index": Rule("a whole number >= 0", lambda v: is_whole(v) and int(v) >= 0, optional=True),
    "reward.task.op": one_of(*_OPS),
    "reward.task.threshold": number(optional=True),
    "align.method": one_of(*ALIGN_METHODS),
    "align.reference": text(),
    "align.tolerance_s": number(above=0.0, optional=True),
    "robomimic.replay": one_of("auto", True, False),
    "robomimic.filter_key": text(optional=True),
    "diffusion_policy.success": text(optional=True),
}


def check_convert_config(cfg: DictConfig) -> None:
    """Every convert option, the reward values' order and the output location; ConfigError naming the first bad
    key. Reads no source and writes nothing."""
    check_keys(cfg, CONVERT_RULES, "see configs/convert.yaml or python -m calql_robot.convert --help")
    obs_mapping_from_cfg(plain_value(cfg, "keys.obs"), {})  # each entry: a field name or a non-empty list of them
    mapping_from_cfg(plain_value(cfg, "keys.cameras"), {}, "keys.cameras")  # each camera: one key
    success, failure = plain_value(cfg, "reward.success_value"), plain_value(cfg, "reward.failure_value")
    if not float(success) > float(failure):
        raise ConfigError(f"reward.success_value={success!r} must be greater than reward.failure_value={failure!r}: "
                          "success is detected as reward >= success_value")
    check_output_location(plain_value(cfg, "output"))
