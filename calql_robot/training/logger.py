"""Metrics to TensorBoard and CSV, side by side, one CSV file per section (train, eval, episode).

CSV files are wide (one column per metric). When a new metric appears the file is rewritten with the wider header,
so every row keeps its values; resumed runs append to the existing files.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class CsvLog:
    """One wide CSV file: ``step`` then the metrics in first-seen order."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = list(reader)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (used when a run resumes from an earlier checkpoint)."""
        kept = [r for r in self.rows if r.get("step") in (None, "") or float(r["step"]) <= step]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._rewrite()

    def append(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": str(step), **{k: _fmt(v) for k, v in metrics.items()}}
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
    """Logs to ``<run_dir>/<section>.csv`` and TensorBoard (``<run_dir>/tb``) under ``<section>/<name>``."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step) if tensorboard else None
        self.csv: dict[str, CsvLog] = {}
        self.resume_step = resume_step

    def log(self, section: str, step: int, metrics: Mapping[str, float]) -> None:
        if section not in self.csv:
            self.csv[section] = CsvLog(self.run_dir / f"{section}.csv")
            if self.resume_step is not None:
                self.csv[section].truncate_after(self.resume_step)
        self.csv[section].append(step, metrics)
        if self.tb is not None:
            for name, value in metrics.items():
                self.tb.add_scalar(f"{section}/{name}", float(value), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
