"""Packaging: every sub-package is installed, envs/encoders/datasets never appear as top-level modules, and the
config files are package data (``calql_robot.configs``, the checkout's ``configs/`` folder); the built wheel itself
is tested in tests/test_wheel_install.py."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"calql_robot": "calql_robot", "calql_robot.envs": "envs", "calql_robot.encoders": "encoders",
          "calql_robot.datasets": "datasets"}


def test_packages_list_matches_folders():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {k: v for k, v in setuptools["package-dir"].items() if k in MAPPED} == MAPPED
    found = {"calql_robot.configs"}  # data only: no __init__.py
    for package, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == set(setuptools["packages"])


def test_configs_are_package_data_found_through_the_package():
    from calql_robot.app import CONFIG_DIR

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert setuptools["package-dir"]["calql_robot.configs"] == "configs"
    globs = setuptools["package-data"]["calql_robot.configs"]
    configs = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*") if p.is_file())
    assert configs and all(any(p.match(g) and len(p.parts) == len(Path(g).parts) for g in globs) for p in configs)
    assert CONFIG_DIR == ROOT / "configs"  # the checkout: the top-level folder (a wheel: calql_robot/configs)
    scripts = pyproject["project"]["scripts"]
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert function == "main" and (ROOT / (module.replace(".", "/") + ".py")).is_file(), name
    assert set(scripts) == {"calql-pretrain", "calql-finetune", "calql-evaluate", "calql-collect", "calql-convert",
                            "calql-inspect", "calql-deploy", "calql-robot-server", "calql-robot-keys",
                            "calql-train-reward-classifier"}


def test_no_top_level_envs_encoders_or_datasets_module():
    code = (
        "import sys, calql_robot.envs, calql_robot.encoders, calql_robot.datasets.format, calql_robot.training.replay\n"
        "bad = [m for m in ('envs', 'encoders', 'datasets') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == ""
