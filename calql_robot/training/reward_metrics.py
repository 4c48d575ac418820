"""Scores of the reward classifier on held-out episodes: precision / recall at a threshold, a reliability curve, and
the episode outcomes the consecutive-frames rule gives.

Frame scores use every held-out frame except the ignored ones (:mod:`calql_robot.training.reward_data`). The episode
outcome replays each held-out episode's frames through :class:`~calql_robot.deployment.reward_classifier.RewardDetector`
with its last frame held for ``consecutive`` frames, as a scene that has reached success stays there (the simulated
robot holds still after success; the object stays in the bin on a real one): the episode counts as a success by
classifier if the rule fires anywhere, and it agrees when that matches the store's outcome.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from calql_robot.deployment.reward_classifier import RewardDetector  # noqa: E402

CALIBRATION_BINS = 10
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _ratio(num: int, den: int) -> float:
    """num / den, or 0.0 for an empty denominator (no predicted / no actual positive)."""
    return float(num) / den if den else 0.0


def binary_scores(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """precision, recall, accuracy, F1 and the confusion counts of ``probs >= threshold`` against 0/1 ``labels``."""
    predicted, actual = probs >= threshold, labels == 1
    tp, fp = int((predicted & actual).sum()), int((predicted & ~actual).sum())
    fn, tn = int((~predicted & actual).sum()), int((~predicted & ~actual).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {"threshold": float(threshold), "precision": precision, "recall": recall,
            "accuracy": _ratio(tp + tn, len(labels)), "f1": f1, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def calibration_rows(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """One row per equal-width probability bin: its range, frame count, mean predicted probability and the
    fraction of positives (NaN for an empty bin)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, bins - 1)
    rows = []
    for index in range(bins):
        inside = which == index
        count = int(inside.sum())
        rows.append({"bin_low": float(edges[index]), "bin_high": float(edges[index + 1]), "count": count,
                     "mean_predicted": float(probs[inside].mean()) if count else math.nan,
                     "fraction_positive": float((labels[inside] == 1).mean()) if count else math.nan})
    return rows


def expected_calibration_error(rows: list[dict[str, Any]]) -> float:
    """Frame-weighted mean |mean predicted - fraction positive| over the non-empty bins."""
    total = sum(row["count"] for row in rows)
    return float(sum(row["count"] * abs(row["mean_predicted"] - row["fraction_positive"])
                     for row in rows if row["count"]) / total) if total else 0.0


def episode_agreement(probs: np.ndarray, episode: np.ndarray, success: np.ndarray, threshold: float,
                      consecutive: int) -> dict[str, Any]:
    """Outcomes of the held-out episodes by the consecutive-frames rule against the store's outcomes."""
    detector = RewardDetector(threshold, consecutive)
    agree, by_classifier, episodes = 0, 0, np.unique(episode)
    for index in episodes:
        frames = probs[episode == index]
        held = np.concatenate([frames, np.repeat(frames[-1:], consecutive - 1)])
        fired, _ = detector.episode_outcome(held)
        by_classifier += int(fired)
        agree += int(fired == bool(success[index]))
    return {"episodes": int(len(episodes)), "agreement": _ratio(agree, len(episodes)),
            "successes_by_store": int(success[episodes].sum()), "successes_by_classifier": by_classifier,
            "consecutive": int(consecutive), "threshold": float(threshold)}


def write_calibration(folder: Path, rows: list[dict[str, Any]], title: str) -> None:
    """``calibration.csv`` (the rows) and ``calibration.png`` (the reliability curve with the frame counts)."""
    with open(folder / "calibration.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    filled = [row for row in rows if row["count"]]
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.plot([r["mean_predicted"] for r in filled], [r["fraction_positive"] for r in filled], marker="o",
            label="held-out frames")
    ax.set_ylabel("fraction of success frames")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    centres = [(r["bin_low"] + r["bin_high"]) / 2 for r in rows]
    counts.bar(centres, [max(r["count"], 0) for r in rows], width=0.09, color="tab:blue")
    counts.set_yscale("log")
    counts.set_xlabel("predicted success probability")
    counts.set_ylabel("frames")
    fig.tight_layout()
    fig.savefig(folder / "calibration.png", dpi=100)
    plt.close(fig)


def held_out_metrics(probs: np.ndarray, labels: np.ndarray, episode: np.ndarray, success: np.ndarray,
                     threshold: float, consecutive: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics.json contents, calibration rows) of the held-out frames; ignored frames (-1) are dropped for the
    frame scores and kept for the episode replay."""
    scored = labels >= 0
    frame_probs, frame_labels = probs[scored], labels[scored]
    rows = calibration_rows(frame_probs, frame_labels)
    metrics = {
        **binary_scores(frame_probs, frame_labels, threshold),
        "frames": int(scored.sum()), "positive_frames": int((frame_labels == 1).sum()),
        "ignored_frames": int((~scored).sum()),
        "brier": float(np.mean((frame_probs - (frame_labels == 1)) ** 2)) if len(frame_probs) else 0.0,
        "expected_calibration_error": expected_calibration_error(rows),
        "threshold_sweep": [binary_scores(frame_probs, frame_labels, t) for t in SWEEP],
        "episodes": episode_agreement(probs, episode, success, threshold, consecutive),
    }
    return metrics, rows
