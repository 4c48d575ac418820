"""Plots a user can read (issue 14, item 6): not blank with one logged row, titled with task / method / seed, x axes
named for what each app counts, online episode success on the fine-tuning curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from calql_robot.training.logger import MetricsLogger
from calql_robot.training.plots import (
    LEARNING_CURVE,
    Q_CALIBRATION,
    RunInfo,
    learning_curve_figure,
    plot_run,
    q_calibration_figure,
    rolling_mean,
)

FINETUNE = RunInfo(app="finetune", task="pointmaze_umaze", method="cql", seed=3)


def write_logs(run_dir: Path, info: RunInfo, n: int) -> None:
    """``n`` rows of train.csv and eval.csv (and episode.csv unless pretrain), as the apps log them."""
    log = MetricsLogger(run_dir, tensorboard=False, index=info.counter)
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        log.log("train", 10 * i, {"q_data_mean": -5.0 + 0.1 * i, "mc_return_mean": -4.0 + 0.05 * i})
        log.log("eval", 10 * i, {"success_rate": min(1.0, 0.02 * i + 0.3), "return_mean": float(i)})
        if info.app != "pretrain":
            log.log("episode", 10 * i + 5, {"return": float(rng.normal()), "success": float(rng.random() < 0.5)})
    log.close()


def axes_pixel_spread(png: Path, fig, hide: bool) -> list[float]:
    """Variance of the PNG's pixels inside each axes (2 px in from the frame); with ``hide`` the same
    figure is saved without its data lines first, which is what a blank plot looks like."""
    if hide:
        for ax in fig.axes:
            for line in ax.lines:
                line.set_visible(False)
        fig.savefig(png, dpi=100)
    image = matplotlib.image.imread(png)[..., :3]
    height = image.shape[0]
    spreads = []
    for ax in fig.axes:
        box = ax.get_window_extent(fig.canvas.get_renderer())
        x0, x1 = int(box.x0) + 2, int(box.x1) - 2
        y0, y1 = height - int(box.y1) + 2, height - int(box.y0) - 2  # image rows run top-down
        spreads.append(float(image[y0:y1, x0:x1].var()))
    return spreads


@pytest.mark.parametrize("n", [1, 50])
@pytest.mark.parametrize("app", ["pretrain", "finetune", "deploy"])
def test_plots_are_not_blank_and_name_the_run(tmp_path, app, n):
    info = RunInfo(app=app, task="pick_place", method="calql", seed=7)
    write_logs(tmp_path, info, n)
    written = plot_run(tmp_path, info)
    assert [p.name for p in written] == [LEARNING_CURVE, Q_CALIBRATION]
    for make, name in ((learning_curve_figure, LEARNING_CURVE), (q_calibration_figure, Q_CALIBRATION)):
        fig = make(tmp_path, info)
        title = fig.get_suptitle()
        assert "pick_place" in title and "calql" in title and "seed 7" in title, title
        label = {"pretrain": "updates", "finetune": "env steps", "deploy": "episodes"}[app]
        assert label in fig.axes[-1].get_xlabel()
        fig.savefig(tmp_path / "drawn.png", dpi=100)
        drawn = axes_pixel_spread(tmp_path / "drawn.png", fig, hide=False)
        blank = axes_pixel_spread(tmp_path / "blank.png", fig, hide=True)
        for ax, with_data, without in zip(fig.axes, drawn, blank, strict=True):
            assert with_data > without + 1e-5, f"{name} ({ax.get_ylabel()}) with {n} rows looks blank"
        # the file written by plot_run is that figure (same size), not an empty canvas
        assert matplotlib.image.imread(tmp_path / "plots" / name).shape == matplotlib.image.imread(
            tmp_path / "drawn.png").shape


def test_finetune_curve_shows_online_episode_success(tmp_path):
    write_logs(tmp_path, FINETUNE, 50)
    fig = learning_curve_figure(tmp_path, FINETUNE)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert "evaluation success rate" in labels and any(label.startswith("online episodes") for label in labels)
    online = next(line for line in fig.axes[0].lines if line.get_label().startswith("online episodes"))
    assert list(online.get_xdata()) == [10 * i + 5 for i in range(1, 51)]  # placed at the env step it ended
    assert online.get_marker() in ("None", "", None)  # 50 points: a plain line
    assert fig.axes[0].get_ylabel() == "success rate"


def test_few_points_get_markers_and_missing_data_gives_no_plot(tmp_path):
    write_logs(tmp_path, FINETUNE, 3)
    fig = q_calibration_figure(tmp_path, FINETUNE)
    assert all(line.get_marker() == "o" for line in fig.axes[0].lines)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert learning_curve_figure(empty, FINETUNE) is None and plot_run(empty, FINETUNE) == []


def test_old_step_column_is_read(tmp_path):
    (tmp_path / "train.csv").write_text("step,q_data_mean,mc_return_mean\n100,1.0,2.0\n200,1.5,2.5\n")
    fig = q_calibration_figure(tmp_path, RunInfo(app="pretrain", task="t", method="sac", seed=0))
    assert list(fig.axes[0].lines[0].get_xdata()) == [100.0, 200.0]


def test_rolling_mean():
    np.testing.assert_allclose(rolling_mean(np.array([1.0, 0.0, 1.0, 1.0]), 2), [1.0, 0.5, 0.5, 1.0])
