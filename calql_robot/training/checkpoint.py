"""Checkpoints as safetensors (every tensor) plus JSON (counters, RNG states, config): nothing is pickled.

Layout: ``<run_dir>/checkpoints/step_<N>/{tensors.safetensors, state.json}`` and ``<run_dir>/checkpoints/latest``,
a text file naming the newest complete checkpoint. A checkpoint folder is written under a temporary name and renamed
when complete, then ``latest`` is replaced atomically, so a crash never leaves a half-written checkpoint in use.
"""

from __future__ import annotations

import json
import os
import random
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
                        "another checkpoints/step_* folder or start a new run_dir") from None


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
                        f"checkpoints/step_* folder or start a new run_dir")


def saved_step(state: dict[str, Any], folder: str | Path) -> int:
    """The checkpoint's ``step`` as an int; UserError naming ``folder`` if it is not a non-negative whole number."""
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"checkpoint '{folder}': {STATE_FILE} has step={step!r}; expected a non-negative whole number")
    return step


def save_checkpoint(
    run_dir: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 3
) -> Path:
    """Write tensors (name -> Tensor) and JSON-able ``state`` as checkpoint ``step``; keep the newest ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:09d}"
    tmp = ckpt_root / f".tmp_step_{step:09d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    rng_tensors, rng_meta = rng_state()
    all_tensors = {k: v.detach().to("cpu").contiguous() for k, v in {**tensors, **rng_tensors}.items()}
    save_file(all_tensors, str(tmp / TENSORS_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "rng": rng_meta}, indent=1))
    previous = None
    if final.exists():  # the same step saved again: keep the old copy until the new one is in place
        previous = ckpt_root / f".old_step_{step:09d}_{os.getpid()}"
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    os.replace(tmp, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    latest_tmp = ckpt_root / f".latest_{os.getpid()}"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, ckpt_root / "latest")
    for old in sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())[:-keep]:
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
        # no usable 'latest' (e.g. a crash while a step was re-saved): the newest complete step folder
        complete = sorted(p for p in root.glob("step_*") if (p / TENSORS_FILE).is_file() and (p / STATE_FILE).is_file())
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
