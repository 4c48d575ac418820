"""Write an output store under a temporary sibling path and move it into place only when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from calql_robot.errors import UserError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def staged_store(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``output`` (``<name>.tmp-<pid>``) to write into; on success move it to ``output``.

    On an exception the temporary path is deleted and an existing ``output`` is left untouched. An existing
    ``output`` raises UserError unless ``overwrite``; with ``overwrite`` it is replaced only after the new store is
    complete (moved aside, the new one renamed into place, then the old one deleted).
    """
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise UserError(f"output {output} already exists; pass overwrite=true to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
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
