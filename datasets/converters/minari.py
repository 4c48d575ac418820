"""Minari -> calql_robot zarr converter (``python -m calql_robot.convert source=minari input=ID output=STORE.zarr``).

``cfg.input`` is a Minari dataset id (looked up under ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``) or the
path of a local Minari dataset folder (the one holding ``data/``, or ``data/`` itself). Nothing is downloaded
unless ``download=true``. Observations are flattened and rewards set by the task's rule
(:mod:`calql_robot.datasets.converters.minari_layouts`, docs/tasks.md), so rows match the task env's ``state``.
The store is written under a temporary sibling and renamed when complete: a failed conversion leaves nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from calql_robot.datasets.converters.minari_layouts import BadEpisode, Layout, layout_for, task_name_for
from calql_robot.datasets.format import DatasetWriter, staged_store
from calql_robot.errors import ConfigError, UserError
from calql_robot.progress import progress_iter


def _option(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` if present (works on struct DictConfigs and plain dicts), else ``default``."""
    try:
        value = cfg.get(key, default)
    except Exception:  # omegaconf struct mode may refuse unknown keys
        return default
    return default if value is None else value


def minari_root() -> Path:
    """Where Minari keeps local datasets: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets`` (not created here)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".minari" / "datasets"


def resolve_data_path(source: str, download: bool) -> Path:
    """Folder that ``minari.MinariDataset`` reads (holds ``metadata.json``) for an id or a local path."""
    path = Path(source).expanduser()
    if path.exists():
        for candidate in (path / "data", path):
            if (candidate / "metadata.json").is_file():
                return candidate
        raise UserError(
            f"minari input {path} is not a Minari dataset folder: expected {path}/data/metadata.json "
            "(the folder `minari` creates for a dataset) or a data/ folder holding metadata.json"
        )
    data_path = minari_root() / source / "data"
    if (data_path / "metadata.json").is_file():
        return data_path
    if not download:
        raise UserError(
            f"Minari dataset '{source}' is not available locally (looked in {data_path}; set MINARI_DATASETS_PATH to "
            f"use another folder). Fetch it with `python -m calql_robot.convert source=minari input={source} "
            f"output=<STORE.zarr> download=true` or `minari download {source}`, then run the conversion again."
        )
    try:
        import minari

        minari.download_dataset(source)
    except Exception as err:  # network, unknown id, version mismatch
        raise UserError(f"could not download Minari dataset '{source}': {err}") from None
    if not (data_path / "metadata.json").is_file():
        raise UserError(f"Minari download of '{source}' finished but {data_path}/metadata.json is missing")
    return data_path


def _open_dataset(data_path: Path) -> Any:
    import minari

    try:
        return minari.MinariDataset(str(data_path))
    except Exception as err:  # unreadable / unsupported version / corrupt metadata
        raise UserError(f"could not read the Minari dataset at {data_path}: {err}") from None


def _check_action_space(dataset: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    from gymnasium import spaces

    space = dataset.action_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise UserError(f"{where}: action space {space} is not a flat Box; only continuous actions convert")
    low, high = np.asarray(space.low, dtype=np.float64), np.asarray(space.high, dtype=np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise UserError(f"{where}: action space {space} has infinite bounds; Cal-QL needs bounded actions")
    return low, high


def _source_info(dataset: Any, source: str, layout: Layout) -> dict[str, Any]:
    env_spec = dataset.spec.env_spec
    return {
        "kind": "minari",
        "input": str(source),
        "dataset_id": dataset.id,
        "env_id": env_spec.id if env_spec is not None else None,
        "env_kwargs": {k: v for k, v in (env_spec.kwargs if env_spec is not None else {}).items()
                       if isinstance(v, (int, float, str, bool))},
        "minari_version": dataset.minari_version,
        "layout": layout.domain,
        "rule": layout.rule,
    }


def convert(cfg: Any) -> dict[str, Any]:
    """Convert a Minari dataset to a zarr store; returns {"episodes", "transitions", "success_rate", "dropped"}.

    ``episodes`` / ``transitions`` count what was written; ``success_rate`` is over the source episodes kept;
    ``dropped`` lists ``{"episode": source id, "reason": ...}`` for skipped (``skip_bad``) or rule-dropped episodes.
    """
    source = str(_option(cfg, "input", ""))
    if not source:
        raise UserError("convert source=minari: 'input' must name a Minari dataset id or a local dataset folder")
    output = _option(cfg, "output")
    if not output:
        raise UserError("convert source=minari: 'output' must name the STORE.zarr to create")
    if _option(cfg, "action_normalize", False):
        raise ConfigError("action_normalize=true does not apply to source=minari: a Minari dataset's actions are the "
                          "environment's own, stored with its action space's bounds; drop the option")
    dataset = _open_dataset(resolve_data_path(source, bool(_option(cfg, "download", False))))
    where = f"Minari dataset '{dataset.id}'"
    env_spec = dataset.spec.env_spec
    task = _option(cfg, "task")
    if task is not None and not isinstance(task, str):  # a task config block (e.g. +task=antmaze_umaze): its name
        task = task.get("name") if hasattr(task, "get") else None
    task = task or task_name_for(dataset.id) or dataset.id.replace("/", "_")
    try:
        layout = layout_for(str(task), env_spec.id if env_spec is not None else None)
    except ValueError as err:
        raise UserError(f"{where}: task=... {err}") from None
    low, high = _check_action_space(dataset, where)
    skip_bad = bool(_option(cfg, "skip_bad", False))

    dropped: list[dict[str, Any]] = []
    n_kept, n_success, n_dropped_steps = 0, 0, 0
    with staged_store(output, overwrite=bool(_option(cfg, "overwrite", False))) as tmp:
        writer = None
        for episode in progress_iter(dataset.iterate_episodes(), desc=f"convert {dataset.id}", unit="episode",
                                     total=dataset.total_episodes):
            try:
                result = layout.convert(episode)
            except BadEpisode as err:
                if not skip_bad:
                    raise UserError(f"{where}: episode {episode.id} {err} (pass skip_bad=true to skip it)") from None
                dropped.append({"episode": int(episode.id), "reason": str(err)})
                continue
            if result.drop_reason:
                dropped.append({"episode": int(episode.id), "reason": result.drop_reason})
                continue
            if writer is None:
                state_dim = result.segments[0]["observations"]["state"].shape[1]
                if layout.state_dim is not None and state_dim != layout.state_dim:
                    raise UserError(
                        f"{where}: observations flatten to {state_dim} values but task '{task}' expects "
                        f"{layout.state_dim} ({layout.rule})"
                    )
                writer = DatasetWriter.create(
                    tmp, {"state": {"shape": [state_dim], "dtype": "float32", "kind": "low_dim"}}, low, high,
                    task=str(task), control_freq=float(_option(cfg, "control_freq", layout.control_freq)),
                    reward_success=layout.reward_success, reward_failure=layout.reward_failure,
                    source=_source_info(dataset, source, layout), overwrite=True,
                )
            for segment in result.segments:
                writer.add_episode(**segment)
            n_kept += 1
            n_success += int(result.success)
            n_dropped_steps += result.dropped_steps
        if writer is None:
            raise UserError(f"{where}: no episode could be converted ({len(dropped)} dropped: {dropped[:3]} ...)")
        writer.close()
        summary = {
            "output": str(output),
            "episodes": writer.n_episodes,
            "transitions": writer.n_transitions,
            "success_rate": n_success / max(n_kept, 1),
            "dropped": dropped,
            "source_episodes": n_kept,
            "dropped_steps": n_dropped_steps,
        }
    return summary
