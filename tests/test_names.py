"""Counters named for what they count (issue 14, item 4): checkpoint folders ``update_<N>`` / ``env_step_<N>`` /
``episode_<N>`` and CSV index columns ``update`` / ``env_step`` / ``episode``; run directories written before the
rename (``step_<N>`` folders, ``step`` columns) still load and resume, and get the new names from then on."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_train_apps import SMALL, rows, run_app

from calql_robot.training.checkpoint import (
    checkpoint_counter,
    checkpoint_folders,
    find_checkpoint,
    load_checkpoint,
    parse_folder_name,
    save_checkpoint,
)
from calql_robot.training.logger import MetricsLogger

TASK = ["task=pointmaze_umaze", "task.horizon=20"]
COMMON = [*TASK, *SMALL, "threads=1", "eval.every=0", "pretrain.save_every=5"]


def make_legacy(run_dir: Path) -> None:
    """Turn a run directory into what the previous version wrote: ``step_*`` folders, ``step`` columns, and a
    state.json without ``counter``."""
    root = run_dir / "checkpoints"
    for folder in checkpoint_folders(root):
        state_path = folder / "state.json"
        state = json.loads(state_path.read_text())
        state.pop("counter")
        state_path.write_text(json.dumps(state))
        folder.rename(root / f"step_{parse_folder_name(folder.name)[1]:09d}")
    latest = root / "latest"
    latest.write_text("step_" + latest.read_text().strip().rsplit("_", 1)[1] + "\n")
    for table in run_dir.glob("*.csv"):
        lines = table.read_text().splitlines(keepends=True)
        header = lines[0].split(",")
        header[0] = "step"
        table.write_text(",".join(header) + "".join(lines[1:]))


def test_folder_names_and_order(tmp_path):
    for n in (3, 12):
        save_checkpoint(tmp_path, n, {"x": torch.zeros(1)}, {}, counter="episode")
    root = tmp_path / "checkpoints"
    assert [p.name for p in checkpoint_folders(root)] == ["episode_000000003", "episode_000000012"]
    assert parse_folder_name("env_step_000000100") == ("env_step", 100)
    assert parse_folder_name("step_000000007") == ("step", 7) and parse_folder_name("latest") is None
    with pytest.raises(ValueError, match="counter"):
        save_checkpoint(tmp_path, 1, {"x": torch.zeros(1)}, {}, counter="step")  # the old name is never written
    assert checkpoint_counter({"phase": "finetune"}) == "env_step"  # an old state.json: from its phase
    assert checkpoint_counter({"counter": "episode", "phase": "deploy"}) == "episode"


def test_legacy_folders_are_read_and_superseded(tmp_path):
    """An old run's ``step_*`` folders are found (through ``latest`` or without it), count in the 'keep newest'
    rule, and a new checkpoint of the same number replaces its old copy."""
    root = tmp_path / "checkpoints"
    save_checkpoint(tmp_path, 10, {"x": torch.ones(1)}, {}, counter="update")
    save_checkpoint(tmp_path, 20, {"x": torch.full((1,), 2.0)}, {}, counter="update")
    make_legacy_names = {p: root / f"step_{parse_folder_name(p.name)[1]:09d}" for p in checkpoint_folders(root)}
    for old, new in make_legacy_names.items():
        old.rename(new)
    (root / "latest").write_text("step_000000020\n")
    assert find_checkpoint(tmp_path).name == "step_000000020"
    assert load_checkpoint(tmp_path)[0]["x"].item() == 2.0
    (root / "latest").unlink()  # no 'latest': the newest complete folder, old names included
    assert find_checkpoint(tmp_path).name == "step_000000020"
    save_checkpoint(tmp_path, 20, {"x": torch.full((1,), 3.0)}, {}, counter="update")  # the same step again
    assert [p.name for p in checkpoint_folders(root)] == ["step_000000010", "update_000000020"]
    save_checkpoint(tmp_path, 30, {"x": torch.full((1,), 4.0)}, {}, counter="update", keep=2)
    assert [p.name for p in checkpoint_folders(root)] == ["update_000000020", "update_000000030"]
    assert find_checkpoint(tmp_path).name == "update_000000030"


def test_logger_renames_an_old_step_column_on_resume(tmp_path):
    (tmp_path / "train.csv").write_text("step,a\n1,1.0\n2,2.0\n3,3.0\n")
    log = MetricsLogger(tmp_path, resume_step=2, tensorboard=False, index="update")
    log.log("train", 3, {"a": 30.0})
    log.close()
    with (tmp_path / "train.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert reader.fieldnames == ["update", "a"]
    assert [(r["update"], r["a"]) for r in table] == [("1", "1.0"), ("2", "2.0"), ("3", "30.0")]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, a pretrain run of 5 updates written with today's names)."""
    root = tmp_path_factory.mktemp("names")
    data, run_dir = root / "pointmaze.zarr", root / "pre5"
    run_app("collect", *TASK, "episodes=3", f"output={data}")
    run_app("pretrain", *COMMON, f"dataset={data}", "pretrain.steps=5", f"run_dir={run_dir}")
    return data, run_dir


def test_old_pretrain_run_directory_resumes_and_fine_tunes(pretrained, tmp_path):
    """A pretrain run directory in the old layout resumes where it stopped (same numbers as an uninterrupted run),
    writes new-style names from then on, and fine-tuning and evaluation read it."""
    dataset, pre5 = pretrained
    straight, old, old_only = tmp_path / "straight", tmp_path / "old", tmp_path / "old_only"
    run_app("pretrain", *COMMON, f"dataset={dataset}", "pretrain.steps=10", f"run_dir={straight}")
    shutil.copytree(pre5, old)
    make_legacy(old)
    shutil.copytree(old, old_only)
    assert [p.name for p in checkpoint_folders(old / "checkpoints")] == ["step_000000005"]
    out = run_app("pretrain", *COMMON, f"dataset={dataset}", "pretrain.steps=10", f"run_dir={old}").stdout
    assert "step_000000005 at update 5" in out
    assert [p.name for p in checkpoint_folders(old / "checkpoints")] == ["step_000000005", "update_000000010"]
    a, b = load_checkpoint(straight)[0], load_checkpoint(old)[0]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed old run differs from the uninterrupted one"
    assert [r["update"] for r in rows(old / "train.csv")] == [r["update"] for r in rows(straight / "train.csv")]

    fine = tmp_path / "fine"
    run_app("finetune", *TASK, f"checkpoint={old_only}", "finetune.env_steps=25", "finetune.batch_size=16",
            "finetune.log_every=5", "finetune.save_every=1", "eval.every=0", "progress=false", "device=cpu",
            "threads=1", f"run_dir={fine}")
    assert find_checkpoint(fine).name == "env_step_000000025"
    assert list(rows(fine / "episode.csv")[0])[0] == "env_step"
    proc = run_app("evaluate", f"checkpoint={old_only / 'checkpoints' / 'step_000000005'}", "eval.episodes=1",
                   "eval.video=false", f"output={tmp_path / 'eval'}", "device=cpu", "threads=1")
    assert "(update 5)" in proc.stdout
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["counter"] == "update"


def test_old_finetune_run_directory_resumes(pretrained, tmp_path):
    """A finetune run directory in the old layout (``step_*`` folders, ``step`` columns) resumes its counters."""
    fine = tmp_path / "fine"
    args = [*TASK, f"checkpoint={pretrained[1]}", "finetune.batch_size=16", "finetune.log_every=5",
            "finetune.save_every=1", "eval.every=0", "progress=false", "device=cpu", "threads=1", f"run_dir={fine}"]
    run_app("finetune", *args, "finetune.env_steps=20")
    make_legacy(fine)
    out = run_app("finetune", *args, "finetune.env_steps=40").stdout
    assert "resuming fine-tuning" in out and "at env step 20" in out
    assert find_checkpoint(fine).name == "env_step_000000040"
    episodes = rows(fine / "episode.csv")
    assert [int(r["env_step"]) for r in episodes] == [20, 40]  # the old row kept under the new column name
