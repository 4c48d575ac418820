"""Issue 14, item 2: the package installs anywhere. A wheel built from the checkout, installed into a fresh venv, runs
its console scripts from a folder outside the checkout with the config files it carries as package data.

Nothing is downloaded: the wheel is built without build isolation (setuptools and wheel come from this venv), pip
installs it with ``--no-deps --no-index``, and the fresh venv reaches the pinned dependencies of this venv through a
``.pth`` line naming this venv's site-packages (a plain path line: this venv's editable finder of calql_robot is not
loaded, so ``import calql_robot`` is the installed wheel's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "calql_robot", "envs", "encoders", "datasets", "configs")
SCRIPTS = ("calql-pretrain", "calql-finetune", "calql-evaluate", "calql-collect", "calql-convert", "calql-inspect",
           "calql-deploy", "calql-robot-server", "calql-robot-keys")
TINY = ["pretrain.steps=2", "pretrain.batch_size=8", "pretrain.log_every=1", "eval.every=0", "progress=false",
        "device=cpu", "threads=1", "agent.actor_hidden=[16,16]", "agent.critic_hidden=[16,16]",
        "agent.cql_n_actions=2"]


def run(cmd: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("MUJOCO_GL", "egl")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's sources (the build writes build/ and egg-info in its source)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out),
         str(src)], cwd=src)
    (found,) = out.glob("calql_robot-*.whl")
    return found


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv outside the checkout with only the wheel installed in it; its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        cwd=venv.parent)
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent)
    (Path(site.stdout.strip()) / "calql_base_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_wheel_carries_the_configs_and_the_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for path in ROOT.joinpath("configs").rglob("*.yaml"):
        assert f"calql_robot/configs/{path.relative_to(ROOT / 'configs').as_posix()}" in names, path
    for name in SCRIPTS:
        assert f"{name} = calql_robot." in entry_points, name
    assert "calql-inspect = calql_robot.inspect_dataset:main" in entry_points


def test_installed_scripts_run_outside_the_checkout(fresh_venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([str(fresh_venv / "python"), "-c", "import calql_robot.app as a; print(a.__file__); "
                 "print(a.CONFIG_DIR)"], cwd=work).stdout.split()
    assert where[0].startswith(str(fresh_venv.parent)) and not where[0].startswith(str(ROOT))
    assert Path(where[1]) == Path(where[0]).parent / "configs"  # the package data, not the checkout's folder
    for name in SCRIPTS:
        assert (fresh_venv / name).is_file(), name

    shown = run([str(fresh_venv / "calql-inspect"), "--help"], cwd=work).stdout
    assert "dataset=???" in shown and "verify=false" in shown and "path of the STORE.zarr" in shown

    run([str(fresh_venv / "calql-collect"), "task=pointmaze_umaze", "episodes=2", "output=pm.zarr"], cwd=work)
    out = run([str(fresh_venv / "calql-pretrain"), "task=pointmaze_umaze", "dataset=pm.zarr", *TINY, "run_dir=run"],
              cwd=work).stdout
    assert f"run directory: {work / 'run'}" in out
    checkpoints = list((work / "run" / "checkpoints").glob("*/tensors.safetensors"))
    assert len(checkpoints) == 1 and checkpoints[0].stat().st_size > 1000
    assert (work / "run" / "config.yaml").is_file()
