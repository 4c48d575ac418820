"""Plots a user looks at after a run: learning curve (success / return) and Q-calibration (Q vs MC return)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _read(path: Path, columns: list[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {c: [] for c in ["step", *columns]}
    if not path.is_file():
        return out
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if all(row.get(c) not in (None, "") for c in out):
                for c in out:
                    out[c].append(float(row[c]))
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write plots/learning_curve.png and plots/q_calibration.png from the run's CSV logs; returns the paths."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    ev = _read(run_dir / "eval.csv", ["success_rate"])
    if ev["step"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ev["step"], ev["success_rate"], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel("evaluation success rate")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots / "learning_curve.png", dpi=100)
        plt.close(fig)
        written.append(plots / "learning_curve.png")
    tr = _read(run_dir / "train.csv", ["q_data_mean", "mc_return_mean"])
    if tr["step"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(tr["step"], tr["q_data_mean"], label="mean Q(s, a_data)")
        ax.plot(tr["step"], tr["mc_return_mean"], label="mean MC return-to-go")
        ax.set_xlabel("step")
        ax.set_ylabel("value")
        ax.set_title("Q-calibration: Q should track (not sit far below) the MC return")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots / "q_calibration.png", dpi=100)
        plt.close(fig)
        written.append(plots / "q_calibration.png")
    return written
