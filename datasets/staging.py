"""Write an output store under a temporary sibling path and move it into place only when complete.

Staging paths are ``<output>.tmp-<pid>`` (nested writers add another ``.tmp-<pid>``); while replacing an existing
output the old one is ``<output>.old-<pid>`` for a moment. A run killed with SIGKILL leaves them behind: the next
:func:`staged_store` for the same output removes those whose owning processes are all gone, and reports (does not
touch) those of a process that still runs and an ``.old-`` copy that may hold the only copy of the previous output.
:func:`check_output_apart_from_input` refuses an output that overlaps the input it is made from.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from calql_robot.errors import UserError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _notice(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def clean_stale_staging(output: str | Path) -> list[Path]:
    """Remove staging leftovers of ``output`` left by killed processes; returns the paths removed.

    A leftover is a sibling named ``<output name>`` followed by one or more ``.tmp-<pid>`` / ``.old-<pid>``
    suffixes. It is removed when none of its pids runs (those of the current process are left alone). An ``.old-`` copy
    is removed only when ``output`` exists (then it is the replaced store); otherwise it is reported, since it holds
    the previous output moved aside by a run killed before the new one took its place.
    """
    output = Path(output).expanduser()
    parent = output.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(output.name)}((?:\.(?:tmp|old)-\d+)+)$")
    removed: list[Path] = []
    for entry in sorted(parent.iterdir()):
        match = pattern.match(entry.name)
        if match is None:
            continue
        pids = [int(p) for p in re.findall(r"\d+", match.group(1))]
        if os.getpid() in pids:
            continue  # this process's own staging path (replaced by the caller)
        owners = [p for p in pids if _pid_alive(p)]
        if owners:
            _notice(f"{entry} is a staging directory of process {owners[0]}, which is still running; left in place")
            continue
        if ".old-" in match.group(1) and not (output.exists() or output.is_symlink()):
            _notice(f"{entry} holds the previous {output.name}, moved aside by a run that was killed before its new "
                    f"output took its place; rename it back to {output} or delete it")
            continue
        _remove(entry)
        removed.append(entry)
        _notice(f"removed {entry}, left by process {pids[0]} which no longer runs (a killed write)")
    return removed


def check_output_apart_from_input(output: str | Path, source: str | Path, output_key: str = "output",
                                  input_key: str = "input") -> None:
    """Refuse an ``output`` that is, contains or lies inside an existing ``source`` path (symlinks resolved).

    Writing there would change the source while it is read, and replacing it (overwrite=true) would delete it.
    A ``source`` that is not an existing path (e.g. a dataset id) is not checked.
    """
    source_path = Path(str(source)).expanduser()
    if not (source_path.exists() or source_path.is_symlink()):
        return
    src = source_path.resolve()
    out = Path(str(output)).expanduser().resolve()
    if out == src:
        relation = "is the same path as"
    elif src in out.parents:
        relation = "lies inside"
    elif out in src.parents:
        relation = "contains"
    else:
        return
    raise UserError(
        f"{output_key}={output} {relation} {input_key}={source} (resolved: {out} and {src}); writing the store there "
        f"would change or, with overwrite=true, delete the source data. Choose an {output_key} outside the "
        f"{input_key}, e.g. data/<name>.zarr"
    )


@contextmanager
def staged_store(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``output`` (``<name>.tmp-<pid>``) to write into; on success move it to ``output``.

    On an exception the temporary path is deleted and an existing ``output`` is left untouched. An existing
    ``output`` raises UserError unless ``overwrite``; with ``overwrite`` it is replaced only after the new store is
    complete (moved aside, the new one renamed into place, then the old one deleted). Staging leftovers of killed
    runs for the same output are cleaned up first (:func:`clean_stale_staging`).
    """
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise UserError(f"output {output} already exists; pass overwrite=true to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(output)
    tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    if tmp.exists():
        _remove(tmp)
    try:
        yield tmp
    except BaseException:
        if tmp.exists():
            _remove(tmp)
        raise
    if not tmp.exists():
        raise UserError(f"output {output}: nothing was written to the staging path {tmp}")
    old = output.with_name(f"{output.name}.old-{os.getpid()}")
    if output.exists() or output.is_symlink():
        os.replace(output, old)
    os.replace(tmp, output)
    if old.exists() or old.is_symlink():
        _remove(old)
