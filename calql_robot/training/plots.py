"""Plots a user looks at after a run: the learning curve (success and return) and Q-calibration (Q vs MC return).

Both are drawn from the run's CSV logs, titled with the task, the method (agent variant) and the seed, with the
x axis named for what the app counts (gradient updates in pretrain, env steps in finetune, episodes in deploy).
Series with few points (fewer than :data:`MARKERS_BELOW`) get markers, so a single logged row is still visible.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from calql_robot.training.checkpoint import APP_COUNTER  # noqa: E402
from calql_robot.training.logger import LEGACY_INDEX  # noqa: E402

MARKERS_BELOW = 30  # series with fewer points than this are drawn with markers
ROLLING_EPISODES = 10  # online episode success/return: mean over the last this many episodes
AXIS_LABEL = {"update": "gradient updates", "env_step": "env steps", "episode": "episodes", LEGACY_INDEX: "steps"}
LEARNING_CURVE = "learning_curve.png"
Q_CALIBRATION = "q_calibration.png"


@dataclass(frozen=True)
class RunInfo:
    """Who made the run: the app (pretrain | finetune | deploy), the task, the method (calql | cql | sac), the seed."""

    app: str
    task: str
    method: str
    seed: int

    @classmethod
    def from_cfg(cls, cfg: Any, app: str) -> RunInfo:
        """From a run's config (``task.name``, ``agent.variant``, ``seed``)."""
        return cls(app=app, task=str(cfg.task.name), method=str(cfg.agent.variant), seed=int(cfg.seed))

    @property
    def counter(self) -> str:
        """What the run's CSV index counts: update | env_step | episode."""
        return APP_COUNTER[self.app]

    def title(self, what: str) -> str:
        return f"{what}: {self.task}, {self.method}, seed {self.seed} ({self.app})"


def read_columns(path: Path, index: str) -> dict[str, np.ndarray]:
    """The CSV file's columns as float arrays (NaN where a row has no value); ``index`` falls back to an old
    file's ``step`` column. Empty dict when the file does not exist or has no rows."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}

    def value(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    columns = {name: np.array([value(r.get(name)) for r in rows]) for name in rows[0] if name is not None}
    if index not in columns and LEGACY_INDEX in columns:
        columns[index] = columns[LEGACY_INDEX]
    return columns


def _series(columns: dict[str, np.ndarray], index: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the rows where both the index and ``name`` have finite values."""
    if index not in columns or name not in columns:
        return np.zeros(0), np.zeros(0)
    x, y = columns[index], columns[name]
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _draw(ax: Axes, x: np.ndarray, y: np.ndarray, label: str, **style: Any) -> None:
    """A line, with markers when it has few points (one point alone is otherwise invisible)."""
    if len(x) < MARKERS_BELOW:
        style.setdefault("marker", "o")
        style.setdefault("markersize", 4)
    ax.plot(x, y, label=label, **style)


def learning_curve_figure(run_dir: str | Path, info: RunInfo) -> Figure | None:
    """Success rate (top) and return (bottom) against the run's counter; None when nothing was logged.

    Evaluation rows come from ``eval.csv``; online episodes (finetune, deploy) from ``episode.csv``, as a rolling
    mean over the last :data:`ROLLING_EPISODES` episodes, placed at the env step (finetune) or episode where each
    episode ended.
    """
    run_dir, index = Path(run_dir), info.counter
    evals = read_columns(run_dir / "eval.csv", index)
    episodes = read_columns(run_dir / "episode.csv", index)
    series = {"eval_success": _series(evals, index, "success_rate"),
              "eval_return": _series(evals, index, "return_mean"),
              "ep_success": _series(episodes, index, "success"), "ep_return": _series(episodes, index, "return")}
    if not any(len(x) for x, _ in series.values()):
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    window = ROLLING_EPISODES
    online = f"online episodes (mean of the last {window})"
    panels = ((top, "success", "evaluation success rate"), (bottom, "return", "evaluation mean return"))
    for ax, kind, eval_label in panels:
        x, y = series[f"eval_{kind}"]
        if len(x):
            _draw(ax, x, y, eval_label, color="C0")
        x, y = series[f"ep_{kind}"]
        if len(x):
            _draw(ax, x, rolling_mean(y, window), online, color="C1")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
    top.set_ylabel("success rate")
    top.set_ylim(-0.05, 1.05)
    bottom.set_ylabel("return (raw reward)")
    bottom.set_xlabel(AXIS_LABEL[index])
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))  # counters are whole numbers
    fig.suptitle(info.title("learning curve"), fontsize=10)
    fig.tight_layout()
    return fig


def q_calibration_figure(run_dir: str | Path, info: RunInfo) -> Figure | None:
    """Mean Q(s, a_data) against the mean MC return of the same batches (``train.csv``); None without rows."""
    index = info.counter
    train = read_columns(Path(run_dir) / "train.csv", index)
    q, mc = _series(train, index, "q_data_mean"), _series(train, index, "mc_return_mean")
    if not len(q[0]) and not len(mc[0]):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(q[0]):
        _draw(ax, *q, "mean Q(s, a_data)", color="C0")
    if len(mc[0]):
        _draw(ax, *mc, "mean MC return-to-go", color="k")
    ax.set_xlabel(AXIS_LABEL[index])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("value (transformed reward)")
    ax.set_title("Q should track (not sit far below) the MC return", fontsize=9)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(info.title("Q-calibration"), fontsize=10)
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path, info: RunInfo) -> list[Path]:
    """Write ``plots/learning_curve.png`` and ``plots/q_calibration.png`` from the run's CSV logs (each when its
    data exists; a stale plot whose data is gone is removed); returns the paths written."""
    plots = Path(run_dir) / "plots"
    written = []
    for name, make in ((LEARNING_CURVE, learning_curve_figure), (Q_CALIBRATION, q_calibration_figure)):
        fig = make(run_dir, info)
        if fig is None:
            (plots / name).unlink(missing_ok=True)
            continue
        plots.mkdir(parents=True, exist_ok=True)
        tmp = plots / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(plots / name)
        written.append(plots / name)
    return written
