"""Read the tables of a raw episode folder (CSV, JSONL or NPZ) into {field: (M, ...)} arrays plus timestamps.

CSV: one row per sample; a column ``name`` is a scalar field, columns ``name.0``, ``name.1``, ... form a vector field
``name`` (ordered by the number). JSONL: one JSON object per line, values numbers or (nested) lists. NPZ: one array
per field with the sample along axis 0 (no pickled objects). Every table has a ``timestamp`` field in seconds.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from calql_robot.datasets.converters.common import read_json_lines
from calql_robot.datasets.converters.timestamps import check_timestamps
from calql_robot.errors import UserError

TABLE_SUFFIXES = (".csv", ".jsonl", ".npz")
TIMESTAMP = "timestamp"
_VECTOR_COLUMN = re.compile(r"^(.+)\.(\d+)$")


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    try:
        table = pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"table {path} cannot be read as CSV ({err})") from None
    scalars: dict[str, np.ndarray] = {}
    vectors: dict[str, dict[int, np.ndarray]] = {}
    for name in table.column_names:
        column = table.column(name).to_numpy(zero_copy_only=False)
        if column.dtype == object:
            raise UserError(f"table {path}, column {name}: values must be numbers")
        match = _VECTOR_COLUMN.match(name)
        if match:
            vectors.setdefault(match.group(1), {})[int(match.group(2))] = column
        else:
            scalars[name] = column
    for name, parts in vectors.items():
        if sorted(parts) != list(range(len(parts))):
            raise UserError(f"table {path}: columns {name}.<i> must be numbered 0..{len(parts) - 1}, got "
                            f"{sorted(parts)}")
        if name in scalars:
            raise UserError(f"table {path}: both a column {name} and columns {name}.<i>")
        scalars[name] = np.stack([parts[i] for i in range(len(parts))], axis=1)
    return scalars


def _read_jsonl(path: Path) -> dict[str, np.ndarray]:
    rows = read_json_lines(path, "table")
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"table {path}: expected one JSON object per line")
    fields = list(rows[0])
    out = {}
    for name in fields:
        try:
            out[name] = np.asarray([r[name] for r in rows], dtype=np.float64)
        except KeyError:
            raise UserError(f"table {path}, field {name}: missing on some lines") from None
        except (TypeError, ValueError):
            raise UserError(f"table {path}, field {name}: values must be numbers or equally long lists") from None
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise UserError(f"table {path} holds a single .npy array, not an NPZ archive of named fields")
            return {name: np.asarray(npz[name]) for name in npz.files}
    except ValueError as err:
        if "allow_pickle" in str(err) or "pickle" in str(err).lower():
            raise UserError(f"table {path}: cannot be read without unpickling objects ({err})") from None
        raise UserError(f"table {path} cannot be read as NPZ ({err}); the file is truncated or corrupt") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError) as err:
        raise UserError(f"table {path} cannot be read as NPZ ({type(err).__name__}: {err}); the file is truncated or "
                        "corrupt") from None


def read_table(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read one table -> (timestamps (M,) float64, {field: (M, ...)}) without the timestamp field."""
    reader = {".csv": _read_csv, ".jsonl": _read_jsonl, ".npz": _read_npz}[path.suffix]
    fields = reader(path)
    if TIMESTAMP not in fields:
        raise UserError(f"table {path}: no '{TIMESTAMP}' column (seconds); have {sorted(fields)}")
    times = check_timestamps(fields.pop(TIMESTAMP), f"table {path}, field {TIMESTAMP}")
    for name, values in fields.items():
        if values.ndim == 0:
            raise UserError(f"table {path}, field {name}: a single value; expected one row per timestamp")
        if values.shape[0] != times.shape[0]:
            raise UserError(f"table {path}, field {name}: {values.shape[0]} rows but {times.shape[0]} timestamps")
    return times, fields


def table_paths(folder: Path) -> list[Path]:
    """The table files of an episode folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in TABLE_SUFFIXES)
