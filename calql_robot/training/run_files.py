"""What a run wrote, listed from disk: the closing lines every app prints about its run directory.

Nothing here assumes which files an app writes: each entry of the folder is looked at, so a file that was not
written (``eval.csv`` with ``eval.every=0``) is not named, and one that was (a video) is. docs/run_directory.md says
what each app's folder holds.
"""

from __future__ import annotations

from pathlib import Path

from calql_robot.training.checkpoint import checkpoint_folders

DESCRIPTIONS = {
    "config.yaml": "the resolved config",
    "train.csv": "training metrics",
    "eval.csv": "evaluation rollouts",
    "episode.csv": "one row per online episode",
    "episodes.csv": "one row per evaluation episode",
    "summary.json": "success rate, interval, returns",
    "online.zarr": "every finished online episode (a dataset)",
}
LISTED = 4  # folders with more files than this show the first and last ones and a count


def _rows(path: Path) -> int:
    """Data rows of a CSV file (lines after the header)."""
    with path.open("rb") as f:
        return max(sum(1 for _ in f) - 1, 0)


def _names(names: list[str]) -> str:
    if len(names) <= LISTED:
        return ", ".join(names)
    return f"{', '.join(names[:2])}, ..., {', '.join(names[-2:])} ({len(names)} files)"


def _folder_line(path: Path) -> str:
    name = path.name
    if name == "tb":
        return f"tb/  TensorBoard: tensorboard --logdir {path}"
    if name == "checkpoints":
        folders = [p.name for p in checkpoint_folders(path)]
        latest = path / "latest"
        if latest.is_file():
            return f"checkpoints/  {_names(folders) or 'none'} (latest: {latest.read_text().strip()})"
        return f"checkpoints/  {_names(folders) or 'none'}"
    if name.endswith(".zarr"):
        return f"{name}/  {DESCRIPTIONS.get(name, 'a zarr dataset store')}"
    files = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    return f"{name}/  {_names(files) or 'empty'}"


def run_dir_lines(run_dir: str | Path) -> list[str]:
    """One line per entry of ``run_dir`` (hidden and temporary entries left out), sorted by name."""
    lines = []
    for path in sorted(Path(run_dir).iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            lines.append(_folder_line(path))
            continue
        detail = DESCRIPTIONS.get(path.name, "")
        if path.suffix == ".csv":
            detail = f"{detail}, {_rows(path)} rows" if detail else f"{_rows(path)} rows"
        lines.append(f"{path.name}  {detail}".rstrip())
    return lines


def print_run_dir(run_dir: str | Path, heading: str = "run directory") -> None:
    """Print ``<heading> <run_dir> holds:`` and :func:`run_dir_lines`, indented."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        print(f"{heading} {run_dir} does not exist")
        return
    print(f"{heading} {run_dir} holds:")
    for line in run_dir_lines(run_dir):
        print(f"  {line}")
