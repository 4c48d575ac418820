"""``export_policy(source, out_dir)``: a weights-only copy of a checkpoint's policy (encoder + actor).

``OUT_DIR/policy.safetensors`` holds the acting encoder and actor (the Polyak-averaged pair when the agent kept one)
under ``encoder.`` and ``actor.``; ``OUT_DIR/policy.json`` holds what rebuilds them and where they came from. No
critics, target critics, optimizer state or RNG state: a fraction of the checkpoint's size. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from calql_robot.api.loading import EXPORT_FORMAT, EXPORT_JSON, EXPORT_TENSORS, EXPORT_VERSION, load_policy
from calql_robot.api.policy import Policy
from calql_robot.errors import UserError


def export_policy(source: str | Path | Policy, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``policy.safetensors`` + ``policy.json`` for ``source`` into ``out_dir``; returns ``out_dir``.

    ``source``: a run directory, one of its ``checkpoints/*`` folders, an earlier export, or a loaded :class:`Policy`.
    An existing non-empty ``out_dir`` is refused unless ``overwrite=True``. The files are written to a temporary
    sibling folder, read back, and only then renamed to ``out_dir``: an interrupted export leaves no partial folder.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"export_policy: '{out}' exists and is not a folder; pass a folder to write the policy into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"export_policy: '{out}' exists and is not empty; pass overwrite=True to replace it, or "
                        "choose another folder")
    policy = source if isinstance(source, Policy) else load_policy(source, device="cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = {f"encoder.{k}": v for k, v in policy.encoder.state_dict().items()}
        tensors.update({f"actor.{k}": v for k, v in policy.actor.state_dict().items()})
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / EXPORT_TENSORS),
                  metadata={"format": EXPORT_FORMAT, "format_version": str(EXPORT_VERSION)})
        (tmp / EXPORT_JSON).write_text(json.dumps(export_info(policy), indent=1) + "\n")
        load_policy(tmp, device="cpu")  # read back: a folder that does not load is never put in place
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_info(policy: Policy) -> dict[str, Any]:
    """The content of ``policy.json``: format, networks' config and shapes, task, and the source checkpoint."""
    meta = policy.metadata
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "tensors": EXPORT_TENSORS,
        "agent_config": meta["agent_config"],
        "obs_spec": policy.obs_spec,
        "action_dim": policy.action_dim,
        "task": policy.task,
        "task_config": meta.get("task_config"),
        "networks": meta.get("networks"),
        "action_scaling": meta.get("action_scaling"),
        "source": {"checkpoint": meta.get("source_checkpoint"), "step": meta.get("step"),
                   "counter": meta.get("counter"), "phase": meta.get("phase")},
    }


def _replace_folder(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted once ``tmp`` is in place."""
    previous = None
    if out.exists():
        previous = out.parent / f".{out.name}.old_{os.getpid()}"
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(out, previous)
    try:
        os.replace(tmp, out)
    except OSError:
        if previous is not None:
            os.replace(previous, out)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
