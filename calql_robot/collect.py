"""Collect a dataset with a task's scripted generator (``task.generate``) into the zarr format (docs/DESIGN.md).

    python -m calql_robot.collect task=pick_place episodes=200 output=data/pick_place.zarr seed=0
    python -m calql_robot.collect --help        # every option, with comments

The generator shows its own progress bar (episodes/s and the running success rate). The store is written under a
temporary sibling path and renamed only when complete, so an interrupted run leaves no broken store behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from calql_robot.app import CONFIG_DIR, calql_app
from calql_robot.errors import UserError


def _episodes(cfg: DictConfig) -> int | None:
    """``episodes=N`` if given, else ``task.dataset.episodes``; None lets the generator use its default."""
    value = cfg.get("episodes")
    if value is None:
        value = OmegaConf.select(cfg, "task.dataset.episodes")
    if value is None:
        return None
    try:
        episodes = int(value)
    except (TypeError, ValueError):
        raise UserError(f"episodes={value!r} is not a whole number; expected a positive episode count") from None
    if episodes < 1 or episodes != float(value):
        raise UserError(f"episodes={value!r} must be a positive whole number of episodes")
    return episodes


def collect(cfg: DictConfig) -> dict[str, Any]:
    """Generate the dataset ``cfg`` describes and return a summary (path, episodes, transitions, successes, time)."""
    from calql_robot.datasets.format import ZarrDataset, staged_store
    from calql_robot.envs import generate_task_dataset
    from calql_robot.training.config_check import check_collect_config

    check_collect_config(cfg)  # every option before anything is written
    task_name = OmegaConf.select(cfg, "task.name") or "?"
    if "generate" not in cfg.task:
        raise UserError(f"task '{task_name}' has no 'generate' block in configs/task/{task_name}.yaml, so collect "
                        "cannot make its data; convert an existing dataset with python -m calql_robot.convert")
    output_value = cfg.get("output") or OmegaConf.select(cfg, "task.dataset.path")
    if not output_value:
        raise UserError(f"output=PATH is required: task '{task_name}' has no task.dataset.path default")
    output = Path(str(output_value)).expanduser().resolve()
    episodes = _episodes(cfg)
    seed = int(cfg.get("seed") or 0)
    overwrite = bool(cfg.get("overwrite"))
    if output.exists() and not overwrite:
        raise UserError(f"output {output} already exists; pass overwrite=true to replace it (or output=OTHER.zarr)")
    count = f"{episodes} episodes" if episodes else "the generator's default number of episodes"
    print(f"collecting {count} of task '{task_name}' (seed {seed}) into {output}")
    started = time.perf_counter()
    with staged_store(output, overwrite=overwrite) as staging:
        generate_task_dataset(cfg.task, staging, episodes=episodes, seed=seed)
    elapsed = time.perf_counter() - started
    dataset = ZarrDataset(output, lazy=True)
    successes = int(dataset.success_mask().sum())
    return {
        "path": str(output), "task": task_name, "episodes": dataset.n_episodes,
        "transitions": dataset.n_transitions, "successes": successes,
        "success_rate": successes / max(dataset.n_episodes, 1), "seconds": elapsed,
        "size_mb": dataset.size_on_disk_bytes() / 2**20,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One closing paragraph for the terminal."""
    rate = summary["episodes"] / max(summary["seconds"], 1e-9)
    return (
        f"wrote {summary['path']}: {summary['episodes']} episodes, {summary['transitions']} transitions, "
        f"{summary['successes']} successful ({100 * summary['success_rate']:.1f}%), "
        f"{summary['size_mb']:.1f} MB on disk, {summary['seconds']:.1f} s ({rate:.2f} episodes/s)"
    )


def load_config(overrides: list[str]) -> DictConfig:
    """Compose ``configs/collect.yaml`` with command-line style ``overrides`` (for scripts and tests)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="collect", overrides=list(overrides))


@calql_app("collect")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: collect and print the closing summary."""
    print(format_summary(collect(cfg)))


if __name__ == "__main__":
    main()
