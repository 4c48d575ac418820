"""Validation of a robot config's ``safety:`` block: every key type-checked, unknown keys refused, a real robot
without explicit bounds refused. ``validate_safety_cfg`` returns plain Python values for ``make_safe_robot``.

Keys (``null`` means the default):

=====================  ==========================================================  ==========
key                    expected                                                    default
=====================  ==========================================================  ==========
real_robot             true / false                                                false
action_clip            true / false                                                true
estop                  true / false                                                true
workspace              {low: [x, y, z], high: [x, y, z]} metres, finite, low < high  none
max_delta_per_step     number > 0, or a list of numbers > 0 (one per action dim)    none
control_hz             number in (0, 10000] (Hz)                                   none
watchdog_timeout_s     number in (0, 3600] (seconds)                               none
stop_latency_s         number in (0, 3600] (seconds)                               0.05
=====================  ==========================================================  ==========
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from calql_robot.envs.robot.bounds import DEFAULT_STOP_LATENCY_S
from calql_robot.errors import UserError

SAFETY_KEYS = ("real_robot", "action_clip", "estop", "workspace", "max_delta_per_step", "control_hz",
               "watchdog_timeout_s", "stop_latency_s")
_POSITIVE_MEANING = {
    "control_hz": "a control rate in Hz, > 0 and at most 10000 (or null for no fixed rate)",
    "watchdog_timeout_s": "a number of seconds, > 0 and at most 3600 (or null for no watchdog)",
    "stop_latency_s": f"a number of seconds, > 0 and at most 3600 (or null for the default {DEFAULT_STOP_LATENCY_S})",
}
_POSITIVE_MAX = {"control_hz": 10_000.0, "watchdog_timeout_s": 3600.0, "stop_latency_s": 3600.0}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _bool_key(cfg: Mapping[str, Any], key: str, default: bool, config_key: str) -> bool:
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise UserError(f"{config_key}.{key} is {value!r}; expected true or false")


def _positive_key(cfg: Mapping[str, Any], key: str, default: float | None, config_key: str) -> float | None:
    value = cfg.get(key)
    if value is None:
        return default
    if not _is_number(value) or not 0 < float(value) <= _POSITIVE_MAX[key]:
        raise UserError(f"{config_key}.{key} is {value!r}; expected {_POSITIVE_MEANING[key]}")
    return float(value)


def _max_delta(cfg: Mapping[str, Any], config_key: str) -> float | list[float] | None:
    value = cfg.get("max_delta_per_step")
    if value is None:
        return None
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not items or not all(_is_number(v) and np.isfinite(float(v)) and float(v) > 0 for v in items):
        raise UserError(f"{config_key}.max_delta_per_step is {value!r}; expected a number > 0 (action units per "
                        "step) or a list of numbers > 0, one per action dimension (or null for no rate limit)")
    return [float(v) for v in items] if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _workspace(cfg: Mapping[str, Any], config_key: str) -> dict[str, np.ndarray] | None:
    workspace = cfg.get("workspace")
    if workspace is None:
        return None
    low = workspace.get("low") if isinstance(workspace, Mapping) else None
    high = workspace.get("high") if isinstance(workspace, Mapping) else None
    extra = sorted(set(workspace) - {"low", "high"}) if isinstance(workspace, Mapping) else []
    try:
        ok_items = all(_is_number(v) for v in [*low, *high])  # type: ignore[misc]
        low_arr, high_arr = np.asarray(list(low), np.float64), np.asarray(list(high), np.float64)  # type: ignore
    except (TypeError, ValueError):
        ok_items, low_arr, high_arr = False, np.zeros(0), np.zeros(0)
    if extra or not ok_items or low_arr.shape != (3,) or high_arr.shape != (3,) \
            or not np.all(np.isfinite(low_arr)) or not np.all(np.isfinite(high_arr)) or not np.all(low_arr < high_arr):
        got = f"{workspace!r}" if not isinstance(workspace, Mapping) else f"low={low} high={high}"
        raise UserError(f"{config_key}.workspace must be {{low: [x, y, z], high: [x, y, z]}} in metres with "
                        f"finite low < high on every axis (and no other keys); got {got}")
    return {"low": low_arr, "high": high_arr}


def validate_safety_cfg(safety_cfg: Mapping[str, Any] | None, config_key: str = "robot.safety",
                        robot_is_real: bool = False) -> dict[str, Any]:
    """Check a ``safety:`` block and return it as a plain dict; a real robot without bounds is refused."""
    cfg: Mapping[str, Any] = safety_cfg if safety_cfg is not None else {}
    if not isinstance(cfg, Mapping):
        raise UserError(f"{config_key} is {cfg!r}; expected a mapping of safety keys ({', '.join(SAFETY_KEYS)})")
    unknown = sorted(str(k) for k in cfg if k not in SAFETY_KEYS)
    if unknown:
        raise UserError(f"{config_key}.{unknown[0]} is not a safety key; expected only {', '.join(SAFETY_KEYS)} "
                        "(see docs/robot_bringup.md, section 3)")
    out: dict[str, Any] = {
        "real_robot": _bool_key(cfg, "real_robot", False, config_key) or robot_is_real,
        "action_clip": _bool_key(cfg, "action_clip", True, config_key),
        "estop": _bool_key(cfg, "estop", True, config_key),
        "max_delta_per_step": _max_delta(cfg, config_key),
        "control_hz": _positive_key(cfg, "control_hz", None, config_key),
        "watchdog_timeout_s": _positive_key(cfg, "watchdog_timeout_s", None, config_key),
        "stop_latency_s": _positive_key(cfg, "stop_latency_s", DEFAULT_STOP_LATENCY_S, config_key),
        "workspace": _workspace(cfg, config_key),
    }
    if out["real_robot"]:
        missing = [k for k in ("workspace", "watchdog_timeout_s", "control_hz") if out[k] is None]
        if missing:
            raise UserError(f"{config_key}.{missing[0]} is not set, and this is a real robot (real_robot: true): a "
                            f"real robot refuses to start without an explicit workspace box ({config_key}.workspace: "
                            f"{{low: [x, y, z], high: [x, y, z]}} in metres), a watchdog timeout and a control rate. "
                            f"Missing: {', '.join(config_key + '.' + k for k in missing)}")
        if not out["action_clip"] or not out["estop"]:
            raise UserError(f"{config_key}.action_clip and {config_key}.estop cannot be turned off for a real robot")
    return out
