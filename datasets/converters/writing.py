"""Write converted episodes into a staged store, verify them by reading back, and summarise the conversion.

The one entry point, :func:`write_episodes`, is shared by every converter: it applies the reward rule, checks each
episode (a bad one stops the conversion with a message naming episode and field, or is skipped with skip_bad=true),
optionally maps the actions to [-1, 1] (``action_normalize=true``, :mod:`calql_robot.datasets.action_scaling`),
writes through :class:`DatasetWriter` into a temporary sibling of the output, re-opens the finished store with
:class:`ZarrDataset` and compares every episode with what was meant to be written (SHA-256 per field), and only then
renames the store into place. Nothing half-written is ever left at ``output``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from calql_robot.datasets.action_scaling import ActionScaling
from calql_robot.datasets.converters.common import (
    Episode,
    SourceEpisode,
    apply_reward_rule,
    check_episode,
    obs_spec_of,
    to_container,
)
from calql_robot.datasets.format import DatasetWriter, ZarrDataset, staged_store
from calql_robot.datasets.staging import check_output_apart_from_input
from calql_robot.errors import ConfigError, UserError
from calql_robot.progress import print_line, progress_iter


def _digest(value: np.ndarray, dtype: str) -> str:
    array = np.ascontiguousarray(np.asarray(value).astype(dtype, copy=False))
    return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()


def episode_digests(ep: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 per field of one episode as stored: {"obs/<key>": ..., "action", "reward", "terminal", "truncated"}.

    ``ep`` is ZarrDataset.episode()'s layout: {"obs": {key: (N+1, ...)}, "action", "reward", "terminal", "truncated"}.
    """
    out = {f"obs/{key}": _digest(ep["obs"][key], spec[key]["dtype"]) for key in sorted(spec)}
    out.update(action=_digest(ep["action"], "float32"), reward=_digest(ep["reward"], "float32"),
               terminal=_digest(ep["terminal"], "bool"), truncated=_digest(ep["truncated"], "bool"))
    return out


def _as_written(ep: Episode) -> dict[str, Any]:
    return {"obs": ep.observations, "action": ep.actions, "reward": ep.rewards, "terminal": ep.terminals,
            "truncated": ep.truncations}


def action_bounds(cfg: DictConfig, action_dim: int, source_bounds: tuple[Any, Any] | None) -> tuple[np.ndarray, ...]:
    """(low, high) (A,) float32: ``action_bounds`` option, else the source's bounds, else [-1, 1]."""
    given = to_container(cfg.get("action_bounds"))
    if given is not None and (not isinstance(given, (list, tuple)) or len(given) != 2):
        raise ConfigError(f"action_bounds={given!r}: expected [low, high] (scalars or per-dimension lists)")
    low, high = (given[0], given[1]) if given is not None else source_bounds if source_bounds else (-1.0, 1.0)
    try:
        low = np.broadcast_to(np.asarray(low, dtype=np.float32), (action_dim,)).copy()
        high = np.broadcast_to(np.asarray(high, dtype=np.float32), (action_dim,)).copy()
    except ValueError:
        raise ConfigError(f"action_bounds={given!r}: bounds must be scalars or lists of {action_dim} values (the "
                          "action dimension)") from None
    if not np.all(low < high):
        raise ConfigError(f"action_bounds={given!r}: low must be below high in every dimension")
    return low, high


def _check_bounds(ep: Episode, low: np.ndarray, high: np.ndarray) -> None:
    outside = (ep.actions < low - 1e-6) | (ep.actions > high + 1e-6)
    if np.any(outside):
        step, dim = (int(i) for i in np.argwhere(outside)[0])
        raise UserError(
            f"episode {ep.name}, field action: value {ep.actions[step, dim]:.6g} at step {step}, dimension {dim} lies "
            f"outside the action bounds [{low[dim]:.6g}, {high[dim]:.6g}]; give the true bounds with "
            "action_bounds=[low,high] (scalars or per-dimension lists)"
        )


def write_episodes(
    cfg: DictConfig,
    names: list[str],
    load: Callable[[str], SourceEpisode],
    *,
    task: str,
    control_freq: float | None,
    source: dict[str, Any],
    source_bounds: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Convert the episodes ``names`` (each read by ``load(name)``) into ``cfg.output``; return the summary dict.

    Summary: {"output", "episodes", "transitions", "successes", "success_rate", "dropped": [{"episode", "reason"}]}.
    """
    output = Path(str(cfg.output)).expanduser()
    check_output_apart_from_input(output, str(cfg.input))
    if output.exists() and not cfg.overwrite:
        raise UserError(f"output {output} already exists; pass overwrite=true to replace it")
    if not names:
        raise UserError(f"input {cfg.input}: no episodes found")
    freq = cfg.get("control_freq") if cfg.get("control_freq") is not None else control_freq
    dropped: list[dict[str, str]] = []
    written: list[tuple[str, dict[str, str]]] = []
    successes = 0
    normalize = bool(cfg.get("action_normalize", False))
    scaling = data_range_scaling(cfg, names, load) if normalize and cfg.get("action_bounds") is None else None
    with staged_store(output, bool(cfg.overwrite)) as staging:
        writer: DatasetWriter | None = None
        spec, low, high = None, None, None
        for name in progress_iter(names, desc=f"convert {cfg.source}", unit="episode"):
            try:
                ep = apply_reward_rule(load(name), cfg.reward)
                check_episode(ep, spec, None if low is None else low.shape[0])
                if writer is None:
                    spec = obs_spec_of(ep.observations)
                    if scaling is not None:
                        low, high = scaling.low.astype(np.float32), scaling.high.astype(np.float32)
                    else:
                        low, high = action_bounds(cfg, ep.actions.shape[1], source_bounds)
                    if normalize and scaling is None:
                        scaling = ActionScaling.from_bounds(low, high, "action_bounds", "action_bounds")
                    if scaling is not None:
                        scaling.check_dim(ep.actions.shape[1], f"episode {ep.name}, field action")
                _check_bounds(ep, low, high)  # in the source's units
            except ConfigError:
                raise  # a bad option, not a bad episode: skip_bad does not apply
            except UserError as err:
                reason = str(err) if str(err).startswith("episode ") else f"episode {name}: {err}"
                if not cfg.skip_bad:
                    raise UserError(f"{reason} (input {cfg.input}; pass skip_bad=true to skip bad episodes)") from None
                dropped.append({"episode": name, "reason": reason})
                print_line(f"skipped episode {name}: {err}")
                continue
            if scaling is not None:  # inside [low, high] (checked): clipping only removes rounding past +-1
                ep = dataclasses.replace(ep, actions=np.clip(scaling.to_policy(ep.actions), -1.0, 1.0))
            if writer is None:
                if freq is None:
                    raise UserError(f"input {cfg.input}: the source does not state its control frequency; pass "
                                    "control_freq=HZ")
                store_low, store_high = (-np.ones_like(low), np.ones_like(high)) if scaling is not None else (low, high)
                writer = DatasetWriter.create(
                    staging, spec, store_low, store_high, task=task, control_freq=float(freq),
                    reward_success=float(cfg.reward.success_value), reward_failure=float(cfg.reward.failure_value),
                    source=source, overwrite=True, action_scaling=None if scaling is None else scaling.to_json())
            writer.add_episode(observations=ep.observations, actions=ep.actions, rewards=ep.rewards,
                               terminals=ep.terminals, truncations=ep.truncations)
            written.append((name, episode_digests(_as_written(ep), spec)))
            successes += int(ep.success)
        if writer is None:
            raise UserError(f"input {cfg.input}: every episode was dropped ({len(dropped)}); nothing to write")
        writer.close()
        n_transitions = verify_store(staging, written, spec)
    n_eps = len(written)
    return {"output": str(output), "episodes": n_eps, "transitions": n_transitions, "successes": successes,
            "success_rate": successes / n_eps, "dropped": dropped,
            **({"action_scaling": scaling.describe()} if scaling is not None else {})}


def data_range_scaling(cfg: DictConfig, names: list[str], load: Callable[[str], SourceEpisode]
                       ) -> ActionScaling | None:
    """action_normalize=true without action_bounds: a first pass over the source for each dimension's min/max.

    Episodes that cannot be read or hold non-finite actions are left out here; the writing pass names (or, with
    skip_bad=true, skips) them. None when no episode could be read (the writing pass then reports why).
    """
    minimum: np.ndarray | None = None
    maximum: np.ndarray | None = None
    for name in progress_iter(names, desc="action range", unit="episode"):
        try:
            actions = np.asarray(load(name).actions, dtype=np.float64)
        except UserError:
            continue
        if actions.ndim != 2 or len(actions) == 0 or not np.isfinite(actions).all() \
                or (minimum is not None and actions.shape[1] != minimum.shape[0]):
            continue
        lo, hi = actions.min(axis=0), actions.max(axis=0)
        minimum = lo if minimum is None else np.minimum(minimum, lo)
        maximum = hi if maximum is None else np.maximum(maximum, hi)
    return None if minimum is None or maximum is None else ActionScaling.from_data(minimum, maximum)


def verify_store(path: Path, written: Iterable[tuple[str, dict[str, str]]], spec: Mapping[str, Any]) -> int:
    """Re-open ``path`` and compare each stored episode's field digests with ``written``; returns the transitions."""
    written = list(written)
    ds = ZarrDataset(path, lazy=True)
    if ds.n_episodes != len(written):
        raise UserError(f"verification of {path}: {ds.n_episodes} episodes stored, {len(written)} written")
    for index, (name, expected) in enumerate(progress_iter(written, desc="verify", unit="episode")):
        stored = episode_digests(ds.episode(index), spec)
        for field_name, digest in expected.items():
            if stored[field_name] != digest:
                raise UserError(f"verification failed: episode {name}, field {field_name}: the value read back from "
                                f"{path} differs from the value written")
    return int(ds.n_transitions)


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable closing summary of a conversion (several lines)."""
    n_eps = int(summary.get("episodes", 0))
    successes = summary.get("successes")
    rate = summary.get("success_rate")
    lines = [f"wrote {summary.get('output', '?')}", f"  episodes:     {n_eps}",
             f"  transitions:  {summary.get('transitions', '?')}"]
    if rate is not None:
        count = f" ({successes} of {n_eps})" if successes is not None else ""
        lines.append(f"  success rate: {float(rate):.3f}{count}")
    dropped = list(summary.get("dropped", []))
    if summary.get("action_scaling"):
        lines.append(f"  actions:      {summary['action_scaling']}")
    lines.append(f"  dropped:      {len(dropped)}")
    for item in dropped:
        lines.append(f"    - {item['episode']}: {item['reason']}" if isinstance(item, Mapping) else f"    - {item}")
    return "\n".join(lines)
