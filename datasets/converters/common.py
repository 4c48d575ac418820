"""Helpers shared by the converters: the episode record, key mapping, images, reward rules and episode checks.

Every converter reads its source into :class:`SourceEpisode` records (observations already under our key names) and
hands them to :func:`calql_robot.datasets.converters.writing.write_episodes`, which applies the reward rule, checks,
writes, verifies and summarises.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf

from calql_robot.errors import ConfigError, UserError

REWARD_RULES = ("sparse_last_step", "column", "task")
UNKNOWN_OUTCOME = ("error", "success", "failure")


@dataclass
class SourceEpisode:
    """One episode read from a source, before the reward rule.

    observations: {our key: (N+1, *shape)}: images uint8 HWC, low-dim float32.
    actions: (N, A) float32.
    success: the outcome the source records (None when it records none).
    reward_column: (N,) per-step reward from the source (reward of the transition t -> t+1), or None.
    step_success: (N,) bool, the task rule evaluated on the state reached by each step, or None.
    """

    name: str
    observations: dict[str, np.ndarray]
    actions: np.ndarray
    success: bool | None = None
    reward_column: np.ndarray | None = None
    step_success: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    """One episode ready for :class:`DatasetWriter.add_episode` (shapes as in docs/DESIGN.md)."""

    name: str
    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    truncations: np.ndarray
    success: bool


def read_json_lines(path: Path, what: str, hint: str = "") -> list[Any]:
    """The JSON value of every non-blank line of ``path``; UserError "``what`` PATH, line N: not valid JSON (...)"
    (``hint`` appended) for a bad line and "``what`` PATH cannot be read (...)" when the file cannot be read."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} cannot be read ({err})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{what} {path}, line {number}: not valid JSON ({err.msg}){hint}") from None
    return rows


def episode_error(episode: str, field_name: str, problem: str) -> UserError:
    """A UserError that names the episode and the field: ``episode <e>, field <f>: <problem>``."""
    return UserError(f"episode {episode}, field {field_name}: {problem}")


def to_container(node: Any) -> Any:
    """Plain python value of a config node (DictConfig/ListConfig -> dict/list; None stays None)."""
    if isinstance(node, (DictConfig,)) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def mapping_from_cfg(node: Any, default: Mapping[str, str], what: str) -> dict[str, str]:
    """``node`` (a mapping from the config) as a dict of str -> str; ``default`` when it is None ({} means none).

    Used for ``keys.cameras``: one camera per key, so a list value is a UserError naming the key.
    """
    value = to_container(node)
    if value is None:
        return dict(default)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping like {{source_camera: our_key}}, got {value!r}")
    for key, item in value.items():
        if isinstance(item, (list, tuple, Mapping)):
            raise ConfigError(f"{what}.{key}={item!r}: a camera maps to one key (a list of fields can only join "
                              "low-dim fields in keys.obs)")
    return {str(k): str(v) for k, v in value.items()}


def obs_mapping_from_cfg(node: Any, default: Mapping[str, str], what: str = "keys.obs") -> dict[str, tuple[str, ...]]:
    """``keys.obs`` as {our_key: (source_field, ...)}; ``default`` {our_key: field} when it is None ({} means none).

    A value is one field name or a non-empty list of field names; a list joins the fields (low-dim only) along their
    last axis, in the given order, into one key (see :func:`observation_from_fields`).
    """
    value = to_container(node)
    if value is None:
        return {str(k): (str(v),) for k, v in default.items()}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping like {{our_key: source_field}} or {{our_key: [field_a, field_b]}}"
                          f", got {value!r}")
    out: dict[str, tuple[str, ...]] = {}
    for key, item in value.items():
        fields = item if isinstance(item, (list, tuple)) else [item]
        if not fields or any(f is None or isinstance(f, (list, tuple, Mapping)) for f in fields):
            raise ConfigError(f"{what}.{key}={item!r}: expected a source field name or a non-empty list of field "
                              "names (joined along the last axis)")
        out[str(key)] = tuple(str(f) for f in fields)
    return out


def observation_from_fields(
    key: str,
    fields: Sequence[str],
    fetch: Callable[[str], np.ndarray | None],
    episode: str,
    *,
    prefix: str = "",
    have: Sequence[str] | None = None,
    image: Callable[[str, np.ndarray], np.ndarray | None] | None = None,
) -> np.ndarray:
    """One observation key of an episode from its source field(s).

    fetch(field) -> (N, ...) values of one field, or None when the episode lacks it (it may also raise its own
    UserError). ``prefix`` is put before field names in errors (e.g. ``obs/``), ``have`` lists the fields there are.
    image(field, values) -> uint8 frames (N, H, W, C) when ``values`` are camera images, else None (None: no images).
    One field: its images, or its low-dim values (N, D...) float32. Several fields: low-dim values (N, D_1 + ... +
    D_k) joined along the last axis in the given order; an image among them, fields of different lengths or other
    leading shapes, a missing field or values that are not numbers are a UserError naming the episode and field.
    """
    parts: list[tuple[str, np.ndarray]] = []
    for field_name in fields:
        label = f"{prefix}{field_name}"
        values = fetch(field_name)
        if values is None:
            listing = "" if have is None else f"; have {sorted(have)}"
            raise episode_error(episode, label, f"missing (keys.obs.{key}){listing}")
        if image is not None:
            frames = image(field_name, values)
            if frames is not None:
                if len(fields) > 1:
                    raise ConfigError(f"keys.obs.{key}={list(fields)}: {label} holds camera images; a list joins "
                                      "low-dim fields only (images take one field per key)")
                return frames
        parts.append((label, as_low_dim(values, episode, label)))
    if len(parts) == 1:
        return parts[0][1]
    first_label, first = parts[0]
    for label, part in parts[1:]:
        if part.shape[0] != first.shape[0]:
            raise episode_error(episode, label, f"{part.shape[0]} rows but {first_label} has {first.shape[0]} "
                                                f"(keys.obs.{key} joins them)")
        if part.shape[1:-1] != first.shape[1:-1]:
            raise episode_error(episode, label, f"shape {part.shape[1:]} cannot be joined along the last axis with "
                                                f"{first_label}'s {first.shape[1:]} (keys.obs.{key})")
    return np.concatenate([part for _, part in parts], axis=-1)


def parse_image_size(value: Any) -> tuple[int, int] | None:
    """``image_size`` option -> (H, W) or None (keep the source size). Accepts 64, [64, 64] or [H, W]."""
    value = to_container(value)
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        size = (int(value), int(value))
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        size = (int(value[0]), int(value[1]))
    else:
        raise ConfigError(f"image_size={value!r}: expected one integer (square) or [H, W]")
    if min(size) < 1:
        raise ConfigError(f"image_size={value!r}: sizes must be positive")
    return size


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize uint8 frames (N, H, W, C) to (N, size[0], size[1], C) (area filter when shrinking, else linear)."""
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    height, width = size
    shrink = height < frames.shape[1] or width < frames.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((frames.shape[0], height, width, frames.shape[3]), dtype=np.uint8)
    for i, frame in enumerate(frames):
        resized = cv2.resize(frame, (width, height), interpolation=interp)
        out[i] = resized.reshape(height, width, frames.shape[3])
    return out


def to_uint8_images(frames: np.ndarray, episode: str, field_name: str) -> np.ndarray:
    """Images (N, H, W, C) as uint8; float images in [0, 1] are scaled by 255, float images in [0, 255] rounded."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise episode_error(episode, field_name, f"expected images (N, H, W, C) with C in 1/3/4, got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    frames = frames.astype(np.float64)
    if not np.all(np.isfinite(frames)):
        raise episode_error(episode, field_name, "images contain NaN or infinite values")
    scale = 255.0 if frames.size and frames.max() <= 1.0 else 1.0
    return np.clip(np.rint(frames * scale), 0, 255).astype(np.uint8)


def is_image_array(array: np.ndarray) -> bool:
    """True for (N, H, W, C) arrays with C in 1/3/4 and H, W > 4: treated as camera images."""
    return array.ndim == 4 and array.shape[-1] in (1, 3, 4) and min(array.shape[1:3]) > 4


def as_low_dim(array: np.ndarray, episode: str, field_name: str) -> np.ndarray:
    """Low-dim values (N,) or (N, D...) as float32 with at least 2 dims ((N,) -> (N, 1)); NaN is an error."""
    try:
        out = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise episode_error(episode, field_name, f"values are not numbers ({err})") from err
    if out.ndim == 1:
        out = out[:, None]
    if not np.all(np.isfinite(out)):
        row = int(np.argwhere(~np.isfinite(out.reshape(out.shape[0], -1)))[0, 0])
        raise episode_error(episode, field_name, f"NaN or infinite value at step {row}")
    return out


def obs_spec_of(observations: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Obs spec (docs/DESIGN.md) of an episode's observations {key: (N+1, *shape)}."""
    spec = {}
    for key in sorted(observations):
        value = observations[key]
        kind = "rgb" if value.dtype == np.uint8 and value.ndim == 4 else "low_dim"
        spec[key] = {"shape": [int(s) for s in value.shape[1:]], "dtype": str(value.dtype), "kind": kind}
    return spec


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


def task_rule_success(rule: Any, observations: Mapping[str, np.ndarray], episode: str) -> np.ndarray:
    """Per-step success (N,) bool from a threshold rule on the observation each step reaches (obs[1:]).

    ``rule`` = {key: <our obs key>, index: <int or null>, op: ">=" | ">" | "<=" | "<" | "==", threshold: <float>}.
    """
    rule = to_container(rule) or {}
    missing = [k for k in ("key", "op", "threshold") if rule.get(k) is None]
    if missing:
        raise ConfigError(
            f"reward.rule=task needs reward.task = {{key, index, op, threshold}} (or a source with its own task rule, "
            f"such as a replayed robosuite demo); missing {missing}"
        )
    key, op = str(rule["key"]), str(rule["op"])
    if op not in _OPS:
        raise ConfigError(f"reward.task.op={op!r}: expected one of {list(_OPS)}")
    if key not in observations:
        raise episode_error(episode, key, f"reward.task.key names an observation key that is missing; have "
                                          f"{sorted(observations)}")
    values = np.asarray(observations[key], dtype=np.float64)[1:]
    values = values.reshape(values.shape[0], -1)
    index = rule.get("index")
    column = values[:, int(index)] if index is not None else values[:, 0] if values.shape[1] == 1 else None
    if column is None:
        raise ConfigError(f"reward.task.index is needed: observation {key} has {values.shape[1]} values per step")
    return _OPS[op](column, float(rule["threshold"]))


def apply_reward_rule(src: SourceEpisode, reward_cfg: Any) -> Episode:
    """Turn a source episode into rewards / terminals / truncations by ``reward_cfg.rule``.

    sparse_last_step: failure_value at every step, success_value at the last step of a successful episode.
    column: the source's per-step reward column as is; success = the source outcome, or any step >= success_value.
    task: success_value where the task rule holds after the step, else failure_value; success = rule at the end.
    A successful episode ends with terminal=True; any other ends with truncated=True.
    """
    rule = str(reward_cfg.rule)
    success_value, failure_value = float(reward_cfg.success_value), float(reward_cfg.failure_value)
    n_steps = src.actions.shape[0]
    success = src.success
    if rule == "sparse_last_step":
        success = _known_outcome(success, reward_cfg, src.name)
        rewards = np.full(n_steps, failure_value, dtype=np.float32)
        if success:
            rewards[-1] = success_value
    elif rule == "column":
        column = str(reward_cfg.column or src.info.get("reward_field") or "reward")  # the field the reader used
        if src.reward_column is None:
            raise episode_error(src.name, column, "reward.rule=column but the source has no such per-step reward "
                                                  "column")
        rewards = as_low_dim(src.reward_column, src.name, column)[:, 0]
        if rewards.shape[0] != n_steps:
            raise episode_error(src.name, column, f"{rewards.shape[0]} rewards for {n_steps} steps")
        if success is None:
            success = bool(np.any(rewards >= success_value))
    elif rule == "task":
        step_success = src.step_success
        if step_success is None:
            step_success = task_rule_success(reward_cfg.get("task"), src.observations, src.name)
        step_success = np.asarray(step_success, dtype=bool)
        rewards = np.where(step_success, success_value, failure_value).astype(np.float32)
        success = bool(step_success[-1])
    else:
        raise ConfigError(f"reward.rule={rule!r} is not known; expected one of {list(REWARD_RULES)}")
    terminals = np.zeros(n_steps, dtype=bool)
    truncations = np.zeros(n_steps, dtype=bool)
    terminals[-1] = bool(success)
    truncations[-1] = not bool(success)
    return Episode(src.name, src.observations, src.actions, rewards, terminals, truncations, bool(success))


def _known_outcome(success: bool | None, reward_cfg: Any, episode: str) -> bool:
    if success is not None:
        return bool(success)
    policy = str(reward_cfg.get("unknown_outcome", "error"))
    if policy == "success":
        return True
    if policy == "failure":
        return False
    raise episode_error(
        episode, "outcome", "the source records no success/failure for this episode; set reward.unknown_outcome="
        "success (e.g. all demonstrations succeeded) or failure, or use reward.rule=column / reward.rule=task"
    )


def check_episode(ep: Episode, spec: Mapping[str, Any] | None, action_dim: int | None) -> None:
    """Raise UserError naming the episode and field if ``ep`` is inconsistent (lengths, shapes, NaN, spec)."""
    n_steps = ep.actions.shape[0] if ep.actions.ndim == 2 else -1
    if ep.actions.ndim != 2 or n_steps < 1:
        raise episode_error(ep.name, "action", f"expected (N, A) with N >= 1, got shape {ep.actions.shape}")
    if not np.all(np.isfinite(ep.actions)):
        row = int(np.argwhere(~np.isfinite(ep.actions))[0, 0])
        raise episode_error(ep.name, "action", f"NaN or infinite value at step {row}")
    if action_dim is not None and ep.actions.shape[1] != action_dim:
        raise episode_error(ep.name, "action", f"{ep.actions.shape[1]} values per step, earlier episodes have "
                                               f"{action_dim}")
    if not ep.observations:
        raise episode_error(ep.name, "observations", "no observation keys selected (check keys.obs / keys.cameras)")
    for key, value in ep.observations.items():
        if value.shape[0] != n_steps + 1:
            raise episode_error(ep.name, key, f"{value.shape[0]} observations for {n_steps} actions (need N+1)")
        if value.dtype != np.uint8 and not np.all(np.isfinite(value)):
            raise episode_error(ep.name, key, "NaN or infinite value")
    if spec is not None:
        mine = obs_spec_of(ep.observations)
        if set(mine) != set(spec):
            raise episode_error(ep.name, "observations", f"keys {sorted(mine)} differ from earlier episodes' "
                                                         f"{sorted(spec)}")
        for key in spec:
            if mine[key] != spec[key]:
                raise episode_error(ep.name, key, f"shape/dtype {mine[key]} differs from earlier episodes' "
                                                  f"{spec[key]}")
    if not np.all(np.isfinite(ep.rewards)):
        raise episode_error(ep.name, "reward", "NaN or infinite reward")
