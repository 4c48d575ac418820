"""What is printed exists (issue 14, item 5): each app's closing listing names exactly the entries of its run
directory (or output folder), listed from disk, and docs/run_directory.md documents every one of them.

Tiny PointMaze runs through the real apps: pretrain with ``eval.every=0`` (so no ``eval.csv``), finetune with
evaluation videos, evaluate. Deploy's listing is checked in tests/test_deploy.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_train_apps import SMALL, run_app

REPO = Path(__file__).resolve().parent.parent
TASK = ["task=pointmaze_umaze", "task.horizon=15"]
QUIET = ["progress=false", "device=cpu", "threads=1"]


def listing(stdout: str, folder: Path) -> dict[str, str]:
    """The closing listing of ``folder`` in an app's output: entry name (``tb/`` for a folder) -> rest of its line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith(f"{folder} holds:"))
    entries = {}
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        name, _, rest = line.strip().partition("  ")
        entries[name] = rest
    return entries


def on_disk(folder: Path) -> dict[str, Path]:
    return {p.name + ("/" if p.is_dir() else ""): p for p in folder.iterdir() if not p.name.startswith(".")}


def documented(app: str) -> list[tuple[str, re.Pattern]]:
    """The paths docs/run_directory.md's section for ``app`` names in backticks, each with a regular expression
    that reads ``<N>``-style placeholders as wildcards."""
    text = (REPO / "docs" / "run_directory.md").read_text()
    section = re.search(rf"^## {app}\b.*?(?=^## |\Z)", text, re.S | re.M).group(0)
    tokens = [t for t in re.findall(r"`([^`\s]+)`", section) if "." in t or "/" in t]
    return [(t, re.compile(re.sub(r"<\w+>", r"\\w+", re.escape(t)))) for t in tokens]


def check_folder(stdout: str, folder: Path, app: str) -> dict[str, str]:
    """The listing names exactly what is on disk, and run_directory.md documents every entry (and the files in
    plots/, videos/ and checkpoints/)."""
    printed, disk = listing(stdout, folder), on_disk(folder)
    assert set(printed) == set(disk), f"{app} printed {sorted(printed)} but {folder} holds {sorted(disk)}"
    docs = documented(app)
    tops = {t.split("/")[0] + ("/" if "/" in t else "") for t, _ in docs}
    for name, path in disk.items():
        assert name in tops, f"{app}: {name} is not in docs/run_directory.md"
        if name in ("plots/", "videos/", "checkpoints/"):
            for child in path.iterdir():
                rel = f"{name}{child.name}" + ("/" if child.is_dir() else "")
                assert any(regex.fullmatch(rel) for _, regex in docs), f"{app}: {rel} is not in run_directory.md"
                assert child.name in printed[name], f"{app} did not print {rel}: {printed[name]}"
    return printed


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("contents")
    data = root / "pointmaze.zarr"
    run_app("collect", *TASK, "episodes=3", f"output={data}")
    pre, fine, evaluation = root / "pre", root / "fine", root / "eval"
    out = {"pretrain": (pre, run_app("pretrain", *TASK, *SMALL, *QUIET, f"dataset={data}", "pretrain.steps=10",
                                     "eval.every=0", f"run_dir={pre}").stdout)}
    out["finetune"] = (fine, run_app("finetune", *TASK, *QUIET, f"checkpoint={pre}", "finetune.env_steps=30",
                                     "finetune.batch_size=16", "finetune.log_every=5", "eval.every=30",
                                     "eval.episodes=1", f"run_dir={fine}").stdout)
    out["evaluate"] = (evaluation, run_app("evaluate", *QUIET[1:], f"checkpoint={fine}", "eval.episodes=2",
                                           "eval.video_episodes=1", f"output={evaluation}").stdout)
    return out


def test_pretrain_without_evaluation_names_no_eval_csv(runs):
    folder, stdout = runs["pretrain"]
    printed = check_folder(stdout, folder, "pretrain")
    assert "eval.csv" not in stdout and not (folder / "eval.csv").exists()
    assert "train.csv" in printed and "checkpoints/" in printed and "update_000000010" in printed["checkpoints/"]
    assert sorted(p.name for p in (folder / "plots").iterdir()) == ["q_calibration.png"]  # no eval rows: no curve


def test_finetune_names_its_csv_files_videos_and_online_store(runs):
    folder, stdout = runs["finetune"]
    printed = check_folder(stdout, folder, "finetune")
    assert {"train.csv", "episode.csv", "eval.csv", "online.zarr/", "videos/"} <= set(printed)
    assert "finetune_env_step_000000000.mp4" in printed["videos/"]  # the evaluation before fine-tuning
    assert printed["episode.csv"].endswith("2 rows")  # horizon 15, 30 env steps


def test_evaluate_names_its_output_folder(runs):
    folder, stdout = runs["evaluate"]
    printed = check_folder(stdout, folder, "evaluate")
    assert set(printed) == {"episodes.csv", "summary.json", "videos/"}
