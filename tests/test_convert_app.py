"""The convert app end to end: --help, a real conversion from the command line, refusals and dispatch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calql_robot.convert import load_config, run_conversion
from calql_robot.datasets.format import ZarrDataset
from calql_robot.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calql_robot.convert", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def make_raw(root: Path, successes: list[bool]) -> None:
    for i, success in enumerate(successes):
        ep = root / f"ep{i}"
        ep.mkdir(parents=True)
        t = np.arange(4 + i) * 0.05
        np.savez(ep / "steps.npz", timestamp=t, action=np.full((t.size, 2), 0.1 * i), state=t[:, None] * [1, 2])
        (ep / "episode.json").write_text(json.dumps({"success": success}))


def test_help_documents_options():
    proc = run_app("--help")
    assert proc.returncode == 0
    for text in ("source=S input=PATH output=STORE.zarr", "reward.rule", "align.method", "skip_bad", "keys.cameras"):
        assert text in proc.stdout


def test_cli_conversion_summary_and_refusal(tmp_path):
    make_raw(tmp_path / "logs", [True, False, True])
    out = tmp_path / "o.zarr"
    proc = run_app("source=raw", f"input={tmp_path / 'logs'}", f"output={out}")
    assert proc.returncode == 0, proc.stderr
    assert "episodes:     3" in proc.stdout and "transitions:  12" in proc.stdout
    assert "success rate: 0.667 (2 of 3)" in proc.stdout and "dropped:      0" in proc.stdout
    assert ZarrDataset(out).n_transitions == 12
    again = run_app("source=raw", f"input={tmp_path / 'logs'}", f"output={out}")
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "overwrite=true" in again.stderr
    assert "Traceback" not in again.stderr


def test_cli_bad_input_exit_2(tmp_path):
    proc = run_app("source=nope", "input=x", f"output={tmp_path / 'o.zarr'}")
    assert proc.returncode == 2 and "source='nope' is not known" in proc.stderr
    proc = run_app("source=raw", f"output={tmp_path / 'o.zarr'}")
    assert proc.returncode == 2 and "input=PATH is required" in proc.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_dispatch_to_minari_converter(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    cfg = load_config(["source=minari", "input=nobody/absent-v0", f"output={tmp_path / 'o.zarr'}"])
    with pytest.raises(UserError, match="nobody/absent-v0"):
        run_conversion(cfg)
    assert not (tmp_path / "o.zarr").exists()


def test_every_episode_dropped_leaves_nothing(tmp_path):
    make_raw(tmp_path / "logs", [True])
    (tmp_path / "logs" / "ep0" / "episode.json").write_text("not json")
    with pytest.raises(UserError, match="every episode was dropped"):
        run_conversion(load_config(["source=raw", f"input={tmp_path / 'logs'}", f"output={tmp_path / 'o.zarr'}",
                                    "skip_bad=true"]))
    assert list(tmp_path.iterdir()) == [tmp_path / "logs"]


def test_action_bounds(tmp_path):
    logs = tmp_path / "logs"
    make_raw(logs, [True, True])
    np.savez(logs / "ep1" / "steps.npz", timestamp=np.arange(3) * 0.05, action=[[0.0, 0.0], [2.5, 0.0], [0.0, 0.0]],
             state=np.zeros((3, 2)))
    base = ["source=raw", f"input={logs}"]
    with pytest.raises(UserError, match=r"episode ep1, field action: value 2.5 at step 1, dimension 0 lies outside"):
        run_conversion(load_config([*base, f"output={tmp_path / 'a.zarr'}"]))
    run_conversion(load_config([*base, f"output={tmp_path / 'b.zarr'}", "action_bounds=[[-3,-1],[3,1]]"]))
    ds = ZarrDataset(tmp_path / "b.zarr")
    assert ds.attrs["action_low"] == [-3.0, -1.0] and ds.attrs["action_high"] == [3.0, 1.0]
    with pytest.raises(UserError, match="lists of 2 values"):
        run_conversion(load_config([*base, f"output={tmp_path / 'c.zarr'}", "action_bounds=[[-3,-1,0],3]"]))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_overlapping_raw_input_is_refused_and_input_kept(tmp_path, where):
    """Repro 5: output=<input> overwrite=true used to delete the raw folder."""
    logs = tmp_path / "logs"
    make_raw(logs, [True, False])
    before = _tree(tmp_path)
    output = {"same": logs, "inside": logs / "o.zarr", "parent": tmp_path}[where]
    relation = {"same": "is the same path as", "inside": "lies inside", "parent": "contains"}[where]
    with pytest.raises(UserError, match=f"{relation} input=.*would change or, with overwrite=true, delete"):
        run_conversion(load_config(["source=raw", f"input={logs}", f"output={output}", "overwrite=true"]))
    assert _tree(tmp_path) == before


def test_output_equal_to_hdf5_input_is_refused_from_the_cli(tmp_path):
    """Repro 5 for a file input (robomimic HDF5), through a symlinked directory, as a user runs it."""
    (tmp_path / "real").mkdir()
    demo = tmp_path / "real" / "demo.hdf5"
    demo.write_bytes(b"\x89HDF\r\n\x1a\n not really a file, never opened")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    proc = run_app("source=robomimic", f"input={demo}", f"output={tmp_path / 'alias' / 'demo.hdf5'}",
                   "overwrite=true")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "is the same path as input=" in proc.stderr
    assert demo.read_bytes().startswith(b"\x89HDF") and sorted(p.name for p in (tmp_path / "real").iterdir()) == [
        "demo.hdf5"]
