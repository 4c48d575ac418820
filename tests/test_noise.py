"""What a run prints when its output goes to a pipe or a log file: no per-update progress lines, periodic plain lines
with the rate instead, the thread choice, no gymnasium-robotics Adroit notice, and collect names only the final store.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from test_train_apps import SMALL, run_app

from calql_robot.progress import Progress, line_interval

TASK = ["task=pointmaze_umaze", "task.horizon=20"]
ADROIT_NOTICE = "AdroitHand"
STEPS = 40


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("noise") / "pm.zarr"
    return out, run_app("collect", *TASK, "episodes=3", f"output={out}")


def test_collect_names_the_final_store_only_and_no_adroit_notice(collected):
    out, proc = collected
    assert ".tmp-" not in proc.stdout + proc.stderr
    assert f"wrote {out}:" in proc.stdout
    assert ADROIT_NOTICE not in proc.stderr
    assert re.search(r"generate pointmaze_umaze: 3/3 ep \(100%\)", proc.stdout)  # plain lines, not a tqdm bar


def test_piped_pretrain_prints_periodic_lines_not_one_per_update(collected, tmp_path):
    data, _ = collected
    # progress=true (the default) but stdout/stderr are pipes: no bar, a line every 10% of the run
    args = [a for a in SMALL if not a.startswith("progress=")]
    proc = run_app("pretrain", *TASK, *args, f"dataset={data}", f"pretrain.steps={STEPS}", "eval.every=0",
                   f"run_dir={tmp_path / 'run'}")
    assert "\r" not in proc.stdout + proc.stderr
    assert ADROIT_NOTICE not in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("pretrain pointmaze_umaze [calql]: ")]
    assert [int(re.search(r": (\d+)/", line).group(1)) for line in lines] == list(range(4, STEPS + 1, 4))
    assert all(re.search(r"\d+ upd/s, elapsed", line) for line in lines)
    assert "torch threads: 1 (auto: state-based networks)" in proc.stdout.splitlines()[:3]
    quiet = run_app("pretrain", *TASK, *SMALL, f"dataset={data}", f"pretrain.steps={STEPS}", "eval.every=0",
                    "progress_every=0", f"run_dir={tmp_path / 'quiet'}")
    assert "upd/s" not in quiet.stdout and "checkpoint:" in quiet.stdout
    bad = run_app("pretrain", *TASK, *SMALL, f"dataset={data}", "progress_every=-1", f"run_dir={tmp_path / 'bad'}",
                  check=False)
    assert bad.returncode == 2 and "progress_every=-1" in bad.stderr and not (tmp_path / "bad").exists()


def test_progress_lines_every_interval_and_at_the_end():
    out = io.StringIO()
    progress = Progress(25, "job", "step", bar=False, every=10, out=out)
    for _ in range(25):
        progress.update()
    progress.set_postfix(loss="0.5")
    progress.write("note")
    progress.close()
    text = out.getvalue().splitlines()
    assert [line.split(":")[1].split()[0] for line in text[:3]] == ["10/25", "20/25", "25/25"]
    assert text[3] == "note" and "step/s" in text[0]
    assert line_interval(3000, None) == 300 and line_interval(5, None) == 1 and line_interval(100, 0) == 0
    resumed = io.StringIO()
    progress = Progress(100, "job", "upd", initial=50, bar=False, out=resumed)
    progress.update(5)
    progress.update(5)
    assert resumed.getvalue().splitlines()[0].startswith("job: 60/100 upd (60%)")
    silent = io.StringIO()
    progress = Progress(10, "job", "upd", bar=True, every=0, out=silent)  # not a terminal, lines switched off
    for _ in range(10):
        progress.update()
    assert progress.bar is None and silent.getvalue() == ""
