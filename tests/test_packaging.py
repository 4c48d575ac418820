"""Packaging: every sub-package is installed, and envs/encoders/datasets never appear as top-level modules."""

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
    found = set()
    for package, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == set(setuptools["packages"])


def test_no_top_level_envs_encoders_or_datasets_module():
    code = (
        "import sys, calql_robot.envs, calql_robot.encoders, calql_robot.datasets.format, calql_robot.training.replay\n"
        "bad = [m for m in ('envs', 'encoders', 'datasets') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == ""
