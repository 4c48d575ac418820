"""Checkpoints as safetensors (every tensor) plus JSON (counters, RNG states, config): nothing is pickled.

Layout: ``<run_dir>/checkpoints/<counter>_<N>/{tensors.safetensors, state.json}`` and ``<run_dir>/checkpoints/latest``,
a text file naming the newest complete checkpoint. The folder is named for what ``N`` counts: ``update_<N>`` (gradient
updates, pretrain), ``env_step_<N>`` (environment steps, finetune), ``episode_<N>`` (finished episodes, deploy).
Run directories written before these names hold ``step_<N>`` folders: they are read (and resumed) the same way, and
new checkpoints of such a run get the new names. A checkpoint folder is written under a temporary name and renamed
when complete, then ``latest`` is replaced atomically, so a crash never leaves a half-written checkpoint in use.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from calql_robot.errors import UserError

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
APP_COUNTER = {"pretrain": "update", "finetune": "env_step", "deploy": "episode"}  # what each app's N counts
LEGACY_COUNTER = "step"  # the folder prefix of run directories written before the counters were named
_FOLDER = re.compile(r"(update|env_step|episode|step)_(\d+)")


def checkpoint_folder_name(counter: str, number: int) -> str:
    """``update_000000030`` etc.: the folder of checkpoint ``number`` of a run counting ``counter``."""
    if counter not in APP_COUNTER.values():
        raise ValueError(f"checkpoint counter must be one of {sorted(APP_COUNTER.values())}, got {counter!r}")
    return f"{counter}_{number:09d}"


def parse_folder_name(name: str) -> tuple[str, int] | None:
    """``("update", 30)`` for ``update_000000030`` (``("step", N)`` for an old ``step_N`` folder), else None."""
    match = _FOLDER.fullmatch(name)
    return (match.group(1), int(match.group(2))) if match else None


def checkpoint_folders(root: Path) -> list[Path]:
    """The checkpoint folders directly under ``root`` (any counter, old ``step_*`` too), oldest first.

    Ordered by number; at an equal number a new-style name comes after (is newer than) an old ``step_*`` one.
    """
    found = []
    for path in root.glob("*_*"):
        parsed = parse_folder_name(path.name)
        if parsed is not None and path.is_dir():
            found.append((parsed[1], parsed[0] != LEGACY_COUNTER, path.name, path))
    return [entry[-1] for entry in sorted(found)]


def checkpoint_counter(state: dict[str, Any]) -> str:
    """What a checkpoint's ``step`` counts: ``update``, ``env_step`` or ``episode`` (from ``counter``, else from
    the ``phase`` of checkpoints written before ``counter`` was saved); ``step`` when neither says."""
    counter = state.get("counter")
    if counter in APP_COUNTER.values():
        return str(counter)
    return APP_COUNTER.get(str(state.get("phase")), LEGACY_COUNTER)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch RNG states as tensors and Python/numpy global RNG states as JSON-able values."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = state
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str = "checkpoint") -> None:
    """Inverse of :func:`rng_state`; a missing or malformed state is a UserError naming ``where``."""
    try:
        torch_state = tensors["rng/torch"]
        py = meta["python"]
        nps = meta["numpy"]
        python_state = (int(py[0]), tuple(int(v) for v in py[1]), None if py[2] is None else float(py[2]))
        numpy_state = (str(nps[0]), np.asarray(nps[1], dtype=np.uint32), int(nps[2]), int(nps[3]), float(nps[4]))
        torch.set_rng_state(torch_state)
        if torch.cuda.is_available():
            states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
            if states:
                torch.cuda.set_rng_state_all(states)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise UserError(f"{where}: the saved random-number state is missing or malformed ({type(err).__name__}: "
                        f"{err}); the checkpoint was not written by pretrain/finetune or was edited: resume from "
                        "another checkpoint folder under checkpoints/ or start a new run_dir") from None


def restore_generator(rng: np.random.Generator, saved: Any, where: str) -> None:
    """Set ``rng``'s bit generator state from a saved ``bit_generator.state`` dict; UserError if it does not fit."""
    try:
        rng.bit_generator.state = saved
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise UserError(f"{where}: the saved sampler state is malformed ({type(err).__name__}: {err}); expected "
                        f"numpy's {type(rng.bit_generator).__name__} state as written by pretrain/finetune") from None


def check_state_keys(state: dict[str, Any], folder: str | Path, keys: tuple[str, ...], purpose: str) -> None:
    """Raise UserError naming ``folder``'s state.json if it lacks any of ``keys`` (needed for ``purpose``)."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise UserError(f"checkpoint '{folder}': {STATE_FILE} lacks {missing}, which {purpose} needs; it was not "
                        f"written by this version of pretrain/finetune, or was edited. Resume from another "
                        f"checkpoint folder under checkpoints/ or start a new run_dir")


def saved_step(state: dict[str, Any], folder: str | Path) -> int:
    """The checkpoint's ``step`` as an int; UserError naming ``folder`` if it is not a non-negative whole number."""
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"checkpoint '{folder}': {STATE_FILE} has step={step!r}; expected a non-negative whole number")
    return step


def save_checkpoint(run_dir: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 3, *, counter: str) -> Path:
    """Write tensors (name -> Tensor) and JSON-able ``state`` as checkpoint ``<counter>_<step>``; keep the newest
    ``keep`` checkpoint folders (old ``step_*`` ones included). ``counter``: update | env_step | episode."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_folder_name(counter, step)
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp_{name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    rng_tensors, rng_meta = rng_state()
    all_tensors = {k: v.detach().to("cpu").contiguous() for k, v in {**tensors, **rng_tensors}.items()}
    save_file(all_tensors, str(tmp / TENSORS_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "counter": counter, "rng": rng_meta}, indent=1))
    previous = None
    if final.exists():  # the same step saved again: keep the old copy until the new one is in place
        previous = ckpt_root / f".old_{name}_{os.getpid()}"
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    os.replace(tmp, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    latest_tmp = ckpt_root / f".latest_{os.getpid()}"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, ckpt_root / "latest")
    legacy = ckpt_root / f"{LEGACY_COUNTER}_{step:09d}"  # an old run's copy of this very step: superseded
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)
    for old in checkpoint_folders(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path | None:
    """Resolve a run directory, a checkpoints folder or a checkpoint folder to the checkpoint folder to load.

    Returns None when ``path`` is a run directory without any checkpoint yet.
    """
    path = Path(path).expanduser()
    if (path / TENSORS_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            candidate = root / latest.read_text().strip()
            if (candidate / TENSORS_FILE).is_file() and (candidate / STATE_FILE).is_file():
                return candidate
        # no usable 'latest' (e.g. a crash while a step was re-saved): the newest complete checkpoint folder
        complete = [p for p in checkpoint_folders(root) if (p / TENSORS_FILE).is_file() and (p / STATE_FILE).is_file()]
        if complete:
            return complete[-1]
    return None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load (tensors, state) from a checkpoint, a run directory or its checkpoints folder."""
    folder = find_checkpoint(path)
    if folder is None:
        raise UserError(
            f"no checkpoint found at '{path}': expected a run directory with checkpoints/latest, or a checkpoint "
            f"folder holding {TENSORS_FILE} and {STATE_FILE} (written by pretrain or finetune)"
        )
    try:
        tensors = load_file(str(folder / TENSORS_FILE))
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"checkpoint '{folder}' is unreadable or corrupt ({err}); expected a safetensors file "
                        f"{TENSORS_FILE} and a JSON file {STATE_FILE}") from err
    if not isinstance(state, dict):
        raise UserError(f"checkpoint '{folder}': {STATE_FILE} holds a JSON {type(state).__name__}; expected an object "
                        "with the step, RNG states and config written by pretrain/finetune")
    return tensors, state


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix/`` with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
