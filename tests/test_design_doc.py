"""docs/DESIGN.md cites only things that exist (issue 14, item 5): module paths (``calql_robot/training/x.py``),
dotted modules and their names (``calql_robot.datasets.format.ZarrDataset``, ``training.session.x``), folders and
file names (``encoders/normalize.py``, ``remote.py``), and run-directory files (documented in run_directory.md)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DESIGN = REPO / "docs" / "DESIGN.md"
RUN_DIRECTORY = REPO / "docs" / "run_directory.md"
PACKAGE_DIRS = {"envs": REPO / "envs", "encoders": REPO / "encoders", "datasets": REPO / "datasets",
                "configs": REPO / "configs"}  # calql_robot.<name> is installed from these folders
SKIPPED = (".venv", ".git", "runs", "data")


def repo_files() -> list[Path]:
    return [p for p in REPO.rglob("*") if not any(part in SKIPPED for part in p.relative_to(REPO).parts)]


def resolve_dotted(name: str) -> str | None:
    """None when ``calql_robot.a.b.c`` names an existing module (and, after the module, a name defined or imported
    in it); else what is missing."""
    parts = name.split(".")[1:]
    if not parts:
        return None
    folder = PACKAGE_DIRS.get(parts[0])
    rest = parts[1:] if folder else parts
    folder = folder or REPO / "calql_robot"
    while rest and (folder / rest[0]).is_dir():
        folder, rest = folder / rest[0], rest[1:]
    module = folder / "__init__.py"
    if rest and (folder / f"{rest[0]}.py").is_file():
        module, rest = folder / f"{rest[0]}.py", rest[1:]
    if not module.is_file():
        return f"{name}: no module {module.relative_to(REPO)}"
    if rest and not re.search(rf"\b{re.escape(rest[0])}\b", module.read_text()):
        return f"{name}: {module.relative_to(REPO)} defines no '{rest[0]}'"
    return None


def cited_dotted(text: str) -> set[str]:
    """``calql_robot.x.y`` anywhere, ``training.x`` / ``deployment.x`` in inline code, and ``from calql_robot.x
    import a, b`` lines (each imported name)."""
    names = set(re.findall(r"(?<![\"'\w])calql_robot(?:\.\w+)+", text))  # not a quoted value ("calql_robot.x")
    for code in re.findall(r"`([^`\n]+)`", text):
        names.update("calql_robot." + m for m in re.findall(r"^(?:training|deployment)(?:\.\w+)+", code))
    for module, imported in re.findall(r"from (calql_robot[\w.]*) import ([\w, ]+)", text):
        names.update(f"{module}.{item.strip()}" for item in imported.split(",") if item.strip())
    return {n.rstrip(".") for n in names}


def cited_paths(text: str) -> set[str]:
    """Inline-code tokens that look like repository paths: ``a/b.py``, ``x.py``, ``folder/``, ``a/b.yaml``."""
    paths = set()
    for code in re.findall(r"`([^`\n]+)`", text):
        token = code.strip()
        if " " in token or "<" in token or "*" in token or token.isupper() or ".zarr" in token:
            continue
        if re.fullmatch(r"[\w./-]+\.(py|yaml|md)", token) or re.fullmatch(r"[a-z_][\w/]*/", token):
            paths.add(token)
    return paths


def test_every_cited_module_exists():
    text = DESIGN.read_text()
    names = cited_dotted(text)
    assert "calql_robot.training.session.fit_to_offline_data" in names  # the checker reads the short form too
    problems = [p for p in (resolve_dotted(n) for n in sorted(names)) if p]
    assert not problems, "docs/DESIGN.md cites modules that do not exist:\n" + "\n".join(problems)


def test_every_cited_path_exists():
    files = repo_files()
    rel = {str(p.relative_to(REPO)) + ("/" if p.is_dir() else "") for p in files}
    names = {p.name + ("/" if p.is_dir() else "") for p in files}
    paths = cited_paths(DESIGN.read_text())
    assert "calql_robot/training/plots.py" in paths and "encoders/normalize.py" in paths
    missing = [p for p in sorted(paths) if p not in rel and p not in names]
    assert not missing, f"docs/DESIGN.md cites paths that do not exist: {missing}"


def test_run_directory_files_in_design_are_documented():
    """Every run-directory file DESIGN.md names (``DIR/x.csv``) is one run_directory.md documents (and
    tests/test_run_dir_contents.py checks run_directory.md against real runs)."""
    cited = set(re.findall(r"DIR/([\w.]+\.(?:csv|png|yaml|json|zarr))", DESIGN.read_text()))
    assert {"train.csv", "config.yaml"} <= cited
    documented = set(re.findall(r"`(?:plots/)?([\w.]+\.(?:csv|png|yaml|json|zarr))/?`", RUN_DIRECTORY.read_text()))
    assert cited <= documented, f"DESIGN.md names run files run_directory.md does not: {sorted(cited - documented)}"


def test_checker_catches_what_the_old_page_cited():
    """The checks fail on the names the page used to cite (``metrics.csv``, a ``training/loops`` module)."""
    assert resolve_dotted("calql_robot.training.loops") is not None
    assert resolve_dotted("calql_robot.training.session.no_such_function") is not None
    assert resolve_dotted("calql_robot.datasets.format.ZarrDataset") is None
    documented = set(re.findall(r"`(?:plots/)?([\w.]+\.csv)`", RUN_DIRECTORY.read_text()))
    assert "metrics.csv" not in documented
