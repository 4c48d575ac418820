"""Staging of whole stores: leftovers of killed runs are cleaned up or reported; outputs never overlap inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calql_robot.app import REPO_ROOT
from calql_robot.datasets.format import ZarrDataset
from calql_robot.datasets.staging import check_output_apart_from_input, clean_stale_staging, staged_store
from calql_robot.errors import UserError


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftover(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    (path / "zarr.json").write_text("{}")
    return path


def test_killed_collect_leaves_staging_that_the_next_collect_removes(tmp_path: Path) -> None:
    """Repro 9: SIGKILL a real collect while it writes, then collect into the same output again."""
    output = tmp_path / "pm.zarr"
    cmd = [sys.executable, "-m", "calql_robot.collect", "task=pointmaze_umaze", f"output={output}"]
    proc = subprocess.Popen([*cmd, "episodes=100000"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    staging = tmp_path / f"pm.zarr.tmp-{proc.pid}.tmp-{proc.pid}"  # collect's staging, and the generator's inside
    deadline = time.monotonic() + 240
    while not (staging / "meta").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and staging.exists(), "collect did not start writing"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging.is_dir() and not output.exists()  # the orphan the issue describes

    result = subprocess.run([*cmd, "episodes=2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"removed {staging}" in result.stderr and "no longer runs" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pm.zarr"]
    assert ZarrDataset(output).n_episodes == 2


def test_leftovers_of_dead_processes_are_removed_others_reported(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    gone = dead_pid()
    stale = [leftover(tmp_path, f"x.zarr.tmp-{gone}"), leftover(tmp_path, f"x.zarr.tmp-{gone}.tmp-{gone}")]
    running = leftover(tmp_path, f"x.zarr.tmp-{os.getppid()}")  # pytest's parent: alive
    other_output = leftover(tmp_path, f"y.zarr.tmp-{gone}")  # another output's staging: not ours to judge
    previous = leftover(tmp_path, f"x.zarr.old-{gone}")  # x.zarr is missing: this may be its only copy
    removed = clean_stale_staging(tmp_path / "x.zarr")
    assert sorted(removed) == sorted(stale) and not any(p.exists() for p in stale)
    assert running.exists() and other_output.exists() and previous.exists()
    err = capsys.readouterr().err
    assert f"{running} is a staging directory of process {os.getppid()}, which is still running" in err
    assert f"{previous} holds the previous x.zarr" in err and "rename it back" in err
    (tmp_path / "x.zarr").mkdir()  # once the output exists, the .old- copy is the replaced store: removed
    assert clean_stale_staging(tmp_path / "x.zarr") == [previous]


def test_staged_store_cleans_before_writing(tmp_path: Path) -> None:
    gone = dead_pid()
    stale = leftover(tmp_path, f"out.zarr.tmp-{gone}")
    with staged_store(tmp_path / "out.zarr") as tmp:
        assert not stale.exists()
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


@pytest.mark.parametrize("relation, make_output", [
    ("is the same path as", lambda src: src),
    ("lies inside", lambda src: src / "sub" / "o.zarr"),
    ("contains", lambda src: src.parent),
])
def test_output_overlapping_input_is_refused(tmp_path: Path, relation: str, make_output) -> None:
    source = tmp_path / "logs"
    source.mkdir()
    with pytest.raises(UserError, match=f"output=.* {relation} input="):
        check_output_apart_from_input(make_output(source), source)


def test_output_overlap_is_found_through_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    demo = tmp_path / "real" / "demo.hdf5"
    demo.write_bytes(b"\x89HDF")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(UserError, match="is the same path as"):
        check_output_apart_from_input(tmp_path / "alias" / "demo.hdf5", demo)
    with pytest.raises(UserError, match="contains"):
        check_output_apart_from_input(tmp_path / "alias", demo)
    check_output_apart_from_input(tmp_path / "o.zarr", demo)  # apart: fine
    check_output_apart_from_input(tmp_path / "o.zarr", "D4RL/antmaze/umaze-v1")  # a dataset id: not a path
