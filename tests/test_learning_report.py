"""bench/learning_report.py: the learning benchmark's metrics from real CSV logs written by the training logger."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from calql_robot.training.logger import MetricsLogger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from learning_report import format_table, load_run, plot_curves, run_metrics, summarize  # noqa: E402


def test_run_metrics_before_dip_final_regret():
    steps = np.array([0, 100, 200, 300, 400])
    success = np.array([0.6, 0.2, 0.4, 0.9, 1.0])
    m = run_metrics(steps, success, np.array([0.0, 1.0, 1.0, 1.0]), dip_fraction=0.5, env_steps=400)
    assert m["before"] == 0.6 and m["dip"] == 0.2 and m["drop"] == pytest.approx(0.4)
    assert m["final"] == 1.0 and m["regret"] == 0.25 and m["episodes"] == 4
    # window without evaluations: the first evaluation after step 0 is the dip
    assert run_metrics(steps, success, np.ones(2), dip_fraction=0.1, env_steps=400)["dip"] == 0.2
    with pytest.raises(ValueError, match="step-0"):
        run_metrics(steps[1:], success[1:], np.ones(2), 0.5, 400)


def write_run(run: Path, evals: list[tuple[int, float]], episodes: list[tuple[int, bool]]) -> None:
    log = MetricsLogger(run / "finetune", tensorboard=False)
    for step, rate in evals:
        log.log("eval", step, {"success_rate": rate, "return_mean": rate})
    done = 0
    for i, (step, ok) in enumerate(episodes, start=1):
        done += int(ok)
        log.log("episode", step, {"success": float(ok), "cumulative_regret": i - done, "regret_rate": (i - done) / i})
    log.close()


def test_load_summarize_table_and_plot(tmp_path):
    write_run(tmp_path / "calql_s0", [(0, 0.5), (50, 0.5), (100, 0.8)], [(30, True), (80, True)])
    write_run(tmp_path / "calql_s1", [(0, 0.7), (50, 0.6), (100, 0.9)], [(40, False), (90, True)])
    write_run(tmp_path / "cql_s0", [(0, 0.5), (50, 0.1), (100, 0.6)], [(100, False)])
    runs = [load_run(tmp_path / name, name.split("_")[0], int(name[-1]), 0.5, 100)
            for name in ("calql_s0", "calql_s1", "cql_s0")]
    assert runs[1].metrics["drop"] == pytest.approx(0.1) and runs[1].metrics["regret"] == 0.5
    summary = summarize(runs, ["calql", "cql"])
    assert summary["calql"]["before"]["mean"] == pytest.approx(0.6)
    assert summary["calql"]["regret"]["values"] == [0.0, 0.5] and summary["calql"]["fell_below"] == 1
    assert summary["cql"]["dip"]["mean"] == pytest.approx(0.1) and math.isclose(summary["cql"]["regret"]["mean"], 1)
    table = format_table(summary, 0.5)
    assert "| calql | 2 | 0.60 ± 0.10 |" in table and "| cql | 1 |" in table
    png = plot_curves(runs, ["calql", "cql"], tmp_path / "curve.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_missing_log_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.csv"):
        load_run(tmp_path / "nothing", "calql", 0, 0.25, 100)
