"""``pretrain``, ``finetune`` and ``evaluate`` callable from Python, with the apps' command-line overrides.

Each composes its app's config (``configs/<app>.yaml`` from :data:`calql_robot.app.CONFIG_DIR`) with hydra's compose
API and calls the function the app calls (``run_pretrain``, ``run_finetune``, ``run_evaluation``): the same checks,
files and numbers as ``python -m calql_robot.<app> key=value ...``. Bad input raises
:class:`~calql_robot.errors.UserError` (the apps print it and exit with status 2); nothing calls ``sys.exit``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from calql_robot.api.app_config import app_config, check_overrides


@dataclass
class RunResult:
    """Where a run wrote (``run_dir``; for ``evaluate`` the output folder), its final metrics, its newest
    checkpoint (None for ``evaluate``)."""

    run_dir: Path
    metrics: dict[str, Any]
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def csv(self, section: str = "train") -> list[dict[str, float | str]]:
        """Rows of ``run_dir/<section>.csv`` (train, eval, episode; evaluate: episodes), numbers as floats (an empty
        cell is nan, other text stays text); [] when the file is absent."""
        path = self.run_dir / f"{section}.csv"
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            return [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(text: str | None) -> float | str:
    """A CSV cell as a float when it is one."""
    if text in ("", None):
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return text


def pretrain(overrides: Sequence[str] | None = None) -> RunResult:
    """Offline pre-training, as ``python -m calql_robot.pretrain OVERRIDES``; resumes a ``run_dir`` it is given."""
    from calql_robot.training.offline import run_pretrain

    return _train("pretrain", overrides, run_pretrain)


def finetune(overrides: Sequence[str] | None = None) -> RunResult:
    """Online fine-tuning, as ``python -m calql_robot.finetune checkpoint=... OVERRIDES``."""
    from calql_robot.training.online import run_finetune

    return _train("finetune", overrides, run_finetune)


def evaluate(overrides: Sequence[str] | None = None) -> RunResult:
    """Deterministic rollouts of a checkpoint, as ``python -m calql_robot.evaluate checkpoint=... OVERRIDES``.

    ``metrics`` is the ``summary.json`` the app writes; ``run_dir`` is the output folder holding it. Without
    ``output=`` the app's default ``runs/evaluate/<task>_<timestamp>`` is used.
    """
    from calql_robot.app import _setup_process
    from calql_robot.training.evaluation_run import run_evaluation

    _setup_process()
    overrides = check_overrides(overrides, "evaluate")
    with app_config("evaluate", overrides) as cfg:
        if not cfg.get("output") and (default := _default_eval_output(cfg)) is not None:
            cfg.output = default  # known here, so that the result can say where the files went
        summary = run_evaluation(cfg)
    return RunResult(Path(str(cfg.output)).expanduser().resolve(), summary, None, _plain(cfg))


def _train(app_name: str, overrides: Sequence[str] | None, run: Any) -> RunResult:
    """Compose ``app_name``'s config, run ``run(cfg)`` and collect its run directory, metrics and checkpoint."""
    from calql_robot.app import _setup_process
    from calql_robot.training.checkpoint import find_checkpoint
    from calql_robot.training.session import run_dir_path

    _setup_process()
    overrides = check_overrides(overrides, app_name)
    with app_config(app_name, overrides) as cfg:
        run_dir = run_dir_path(cfg)  # resolved once: run_dir's ${now:...} is cached for the rest of the run
        metrics = run(cfg)
    if not isinstance(metrics, dict):  # the runners return their final metrics; the CSV logs are the fallback
        metrics = _last_rows(run_dir)
    return RunResult(run_dir, dict(metrics), find_checkpoint(run_dir), _plain(cfg))


def _last_rows(run_dir: Path) -> dict[str, Any]:
    """The last row of each of ``run_dir``'s train/eval/episode CSV logs, as ``{section: {column: value}}``."""
    result: dict[str, Any] = {}
    for section in ("train", "eval", "episode"):
        rows = RunResult(run_dir, {}).csv(section)
        if rows:
            result[section] = rows[-1]
    return result


def _default_eval_output(cfg: DictConfig) -> str | None:
    """The app's default output folder, ``runs/evaluate/<task>_<timestamp>``, with the task read from the
    checkpoint's state.json (or ``task=``); None when neither says, so that the app reports the problem."""
    from calql_robot.training.checkpoint import STATE_FILE, find_checkpoint

    name = cfg.task.get("name") if cfg.get("task") is not None else None
    if name is None and cfg.get("checkpoint"):
        ckpt = find_checkpoint(str(cfg.checkpoint))
        try:
            state = json.loads((ckpt / STATE_FILE).read_text()) if ckpt is not None else {}
            name = state["config"]["task"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return f"runs/evaluate/{name}_{time.strftime('%Y%m%d-%H%M%S')}" if name else None


def _plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers (resolved where it resolves)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - a missing mandatory value (checkpoint: ???) still leaves the rest useful
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
