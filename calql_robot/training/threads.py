"""How many CPU threads PyTorch uses: ``threads=auto`` (the default), an explicit whole number, or null.

PyTorch's default (one thread per core) pays off only when one operation is big enough to split: convolutions over
camera images, or very large batches. The networks of state-based tasks are small MLPs, whose operations take
microseconds; with one thread per core on a machine that other processes also use, every operation waits for the
slowest thread, and a PointMaze fine-tuning run was measured at 5.1 env steps/s against 97.7 with one thread.
Acting (one observation per forward pass) never gains from more threads either.

The rule of ``threads=auto`` (:func:`choose_threads`), first match wins:

1. a CUDA device: 1 (the networks run on the GPU; the CPU only samples batches and steps the env);
2. acting only (the evaluate app): 1;
3. an image observation (a CNN / ResNet encoder): PyTorch's default, one per core;
4. a training batch of at least :data:`LARGE_BATCH` rows: PyTorch's default;
5. otherwise (state-based networks): 1.

An explicit ``threads=N`` is used as given; ``threads=null`` keeps PyTorch's default. Each run prints its choice and
the reason in its first lines, e.g. ``torch threads: 1 (auto: state-based networks)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from calql_robot.config_rules import is_whole
from calql_robot.errors import UserError

AUTO = "auto"
LARGE_BATCH = 4096  # rows per batch from which a state-based update is worth splitting across cores
_TORCH_DEFAULT = torch.get_num_threads()  # PyTorch's own choice, read before anything changes it


def has_images(obs_spec: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether an observation spec holds a camera image (an rgb key)."""
    return any(spec.get("kind") == "rgb" or str(spec.get("dtype")) == "uint8" for spec in obs_spec.values())


def choose_threads(setting: Any, obs_spec: Mapping[str, Mapping[str, Any]], device: torch.device | str,
                   batch_size: int | None = None, acting_only: bool = False) -> tuple[int, str]:
    """(threads, reason) for a ``threads`` setting: ``auto`` applies the module's rule, N is N, None the default."""
    if setting is None:
        return _TORCH_DEFAULT, "threads=null: PyTorch's default, one per core"
    if setting != AUTO:
        value = int(setting) if isinstance(setting, str) and setting.isdigit() else setting
        if not is_whole(value) or int(value) < 1:
            raise UserError(f"threads={setting!r}: expected auto, a positive whole number of CPU threads, or null")
        return int(value), f"threads={int(value)}"
    if torch.device(device).type == "cuda":
        return 1, "auto: networks on the GPU"
    if acting_only:
        return 1, "auto: acting only"
    if has_images(obs_spec):
        return _TORCH_DEFAULT, "auto: image encoder, PyTorch's default of one per core"
    if batch_size is not None and int(batch_size) >= LARGE_BATCH:
        return _TORCH_DEFAULT, f"auto: batch of {int(batch_size)} >= {LARGE_BATCH} rows, PyTorch's default"
    return 1, "auto: state-based networks"


def apply_threads(setting: Any, obs_spec: Mapping[str, Mapping[str, Any]], device: torch.device | str,
                  batch_size: int | None = None, acting_only: bool = False) -> int:
    """Set PyTorch's intra-op threads by :func:`choose_threads`, print the choice and why; returns the count."""
    threads, reason = choose_threads(setting, obs_spec, device, batch_size, acting_only)
    torch.set_num_threads(threads)
    print(f"torch threads: {threads} ({reason})", flush=True)
    return threads
