"""Metrics to TensorBoard and CSV, side by side, one CSV file per section (train, eval, episode).

CSV files are wide: the first column is the counter the run's rows are indexed by, named for what it counts
(``update`` in pretrain, ``env_step`` in finetune, ``episode`` in deploy), then one column per metric. When a new
metric appears the file is rewritten with the wider header, so every row keeps its values; resumed runs append to
the existing files. A file written before the counters were named has a ``step`` column: a resumed run renames it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

LEGACY_INDEX = "step"  # the index column of CSV files written before the counters were named


class CsvLog:
    """One wide CSV file: the ``index`` column (e.g. ``update``) then the metrics in first-seen order."""

    def __init__(self, path: Path, index: str = LEGACY_INDEX):
        self.path = path
        self.index = index
        self.columns: list[str] = []
        self.rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = list(reader)
            if index not in self.columns and LEGACY_INDEX in self.columns:  # an older run's file: rename its column
                self.columns = [index if c == LEGACY_INDEX else c for c in self.columns]
                self.rows = [{(index if k == LEGACY_INDEX else k): v for k, v in r.items()} for r in self.rows]
                self._rewrite()

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (used when a run resumes from an earlier checkpoint)."""
        kept = [r for r in self.rows if r.get(self.index) in (None, "") or float(r[self.index]) <= step]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._rewrite()

    def append(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {self.index: str(step), **{k: _fmt(v) for k, v in metrics.items()}}
        new_cols = [c for c in row if c not in self.columns]
        self.rows.append(row)
        if new_cols or not self.path.is_file():
            self.columns += new_cols
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


def _fmt(value: float) -> str:
    value = float(value)
    return repr(value) if math.isfinite(value) else str(value)


class MetricsLogger:
    """Logs to ``<run_dir>/<section>.csv`` and TensorBoard (``<run_dir>/tb``) under ``<section>/<name>``.

    ``index`` names the CSV files' first column: what the ``step`` passed to :meth:`log` counts (the apps pass
    ``update``, ``env_step`` or ``episode``; see ``checkpoint.APP_COUNTER``).
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True,
                 index: str = LEGACY_INDEX):
        self.run_dir = Path(run_dir)
        self.index = index
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step) if tensorboard else None
        self.csv: dict[str, CsvLog] = {}
        self.resume_step = resume_step

    def log(self, section: str, step: int, metrics: Mapping[str, float]) -> None:
        if section not in self.csv:
            self.csv[section] = CsvLog(self.run_dir / f"{section}.csv", self.index)
            if self.resume_step is not None:
                self.csv[section].truncate_after(self.resume_step)
        self.csv[section].append(step, metrics)
        if self.tb is not None:
            for name, value in metrics.items():
                self.tb.add_scalar(f"{section}/{name}", float(value), step)

    def video(self, tag: str, step: int, path: str | Path) -> None:
        """Add an MP4 (an evaluation or deploy rollout) to TensorBoard under ``tag``, as ``add_video`` does."""
        if self.tb is not None:
            from calql_robot.training.tb_video import add_video_file

            add_video_file(self.tb, tag, path, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
