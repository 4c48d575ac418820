"""Metrics, table and plot of the learning benchmark (bench/learning.py) from the apps' CSV logs.

Per run (one method, one seed), from ``<run>/finetune/eval.csv`` (``step``, ``success_rate``; step 0 is the
pre-trained policy before any online step) and ``<run>/finetune/episode.csv`` (``success``, ``regret_rate``):

- ``before``: eval success at step 0;
- ``dip``: the lowest eval success at steps in (0, dip_fraction * env_steps] (or the first evaluation after
  step 0 when none falls in that window);
- ``drop``: before - dip (> 0: the policy got worse when fine-tuning started);
- ``final``: eval success at the last evaluation;
- ``regret``: mean over online training episodes of (1 - success), the CORL definition;
- ``episodes``: number of online episodes.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

METRICS = ("before", "dip", "drop", "final", "regret", "episodes")


@dataclasses.dataclass
class RunResult:
    """One run's curves (``eval_steps``/``eval_success``: (K,), ``offline_steps``/``offline_success``: (J,)) and
    metrics."""

    method: str
    seed: int
    eval_steps: np.ndarray
    eval_success: np.ndarray
    offline_steps: np.ndarray
    offline_success: np.ndarray
    metrics: dict[str, float]

    def as_dict(self) -> dict:
        return {"method": self.method, "seed": self.seed, "metrics": self.metrics,
                "eval_steps": self.eval_steps.tolist(), "eval_success": self.eval_success.tolist(),
                "offline_steps": self.offline_steps.tolist(), "offline_success": self.offline_success.tolist()}


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV log; a missing file is an error that names it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: did the run finish? (see the .log files beside it)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], name: str) -> np.ndarray:
    """Float column ``name`` of ``rows`` (N,); rows without a value are NaN."""
    return np.array([float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows])


def curve(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, success_rate)`` sorted by step, keeping the last row of a step logged twice (a resumed run)."""
    by_step = {int(float(r.get("env_step", r.get("step")))): float(r["success_rate"])
               for r in rows if r.get("success_rate") not in (None, "")}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def run_metrics(eval_steps: np.ndarray, eval_success: np.ndarray, episode_success: np.ndarray,
                dip_fraction: float, env_steps: int) -> dict[str, float]:
    """The benchmark's metrics of one run (see the module docstring)."""
    if eval_steps.size == 0 or eval_steps[0] != 0:
        raise ValueError("the fine-tuning eval log has no step-0 row (evaluation before fine-tuning)")
    before = float(eval_success[0])
    early = (eval_steps > 0) & (eval_steps <= dip_fraction * env_steps)
    if not early.any() and eval_steps.size > 1:  # evaluations sparser than the window: use the first one after 0
        early = eval_steps == eval_steps[1]
    dip = float(eval_success[early].min()) if early.any() else math.nan
    regret = float(np.mean(1.0 - episode_success)) if episode_success.size else math.nan
    return {"before": before, "dip": dip, "drop": before - dip, "final": float(eval_success[-1]),
            "regret": regret, "episodes": float(episode_success.size)}


def load_run(run: Path, method: str, seed: int, dip_fraction: float, env_steps: int) -> RunResult:
    """Read a (method, seed) run directory written by bench/learning.py."""
    steps, success = curve(read_csv(run / "finetune" / "eval.csv"))
    episode_success = column(read_csv(run / "finetune" / "episode.csv"), "success")
    off_path = run / "pretrain" / "eval.csv"
    off_steps, off_success = curve(read_csv(off_path)) if off_path.is_file() else (np.zeros(0), np.zeros(0))
    metrics = run_metrics(steps, success, episode_success, dip_fraction, env_steps)
    return RunResult(method, seed, steps, success, off_steps, off_success, metrics)


def summarize(results: list[RunResult], methods: list[str]) -> dict[str, dict]:
    """Per method: ``{metric: {"mean", "std", "values"}}`` over seeds, plus ``seeds`` and ``fell_below`` (how many
    seeds had a dip below their pre-fine-tuning success)."""
    out: dict[str, dict] = {}
    for method in methods:
        runs = [r for r in results if r.method == method]
        entry: dict = {"seeds": [r.seed for r in runs],
                       "fell_below": int(sum(r.metrics["drop"] > 0 for r in runs))}
        for name in METRICS:
            values = np.array([r.metrics[name] for r in runs], dtype=np.float64)
            entry[name] = {"mean": float(np.nanmean(values)) if values.size else math.nan,
                           "std": float(np.nanstd(values)) if values.size else math.nan, "values": values.tolist()}
        out[method] = entry
    return out


def format_table(summary: dict[str, dict], dip_fraction: float) -> str:
    """A Markdown table: one row per method, mean +- std over seeds."""
    head = ("| method | seeds | success before fine-tuning | lowest success, first "
            f"{dip_fraction:.0%} (dip) | seeds that fell below | final success | regret |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for method, e in summary.items():
        ms = {name: f"{e[name]['mean']:.2f} ± {e[name]['std']:.2f}" for name in METRICS}
        lines.append(f"| {method} | {len(e['seeds'])} | {ms['before']} | {ms['dip']} | {e['fell_below']}/"
                     f"{len(e['seeds'])} | {ms['final']} | {ms['regret']} |")
    return "\n".join(lines)


def plot_curves(results: list[RunResult], methods: list[str], path: Path, task: str) -> Path:
    """Offline (left) and online (right) eval success per method: mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_off, ax_on) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 2]})
    for i, method in enumerate(methods):
        runs = [r for r in results if r.method == method]
        color = f"C{i}"
        for ax, get in ((ax_off, lambda r: (r.offline_steps, r.offline_success)),
                        (ax_on, lambda r: (r.eval_steps, r.eval_success))):
            curves = [get(r) for r in runs if get(r)[0].size]
            if not curves:
                continue
            steps = np.array(sorted(set.intersection(*(set(c[0].tolist()) for c in curves))))
            if steps.size == 0:
                continue
            stack = np.stack([np.interp(steps, c[0], c[1]) for c in curves])
            ax.plot(steps, stack.mean(0), color=color, label=f"{method} ({len(curves)} seeds)")
            ax.fill_between(steps, stack.min(0), stack.max(0), color=color, alpha=0.2)
    ax_off.set(title="offline pre-training", xlabel="gradient updates", ylabel="eval success rate", ylim=(-0.02, 1.02))
    ax_on.set(title="online fine-tuning (step 0 = pre-trained policy)", xlabel="environment steps",
              ylim=(-0.02, 1.02))
    for ax in (ax_off, ax_on):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
    fig.suptitle(f"{task}: mean over seeds, band = min..max")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
