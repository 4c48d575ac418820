"""Whether a run compiles the agent's update (``compile=auto|true|false``), and saying so.

``auto`` compiles on CUDA, where an update of small networks is bound by kernel launches and
``torch.compile(mode="reduce-overhead")`` replays it as CUDA graphs, once the run does at least
``AUTO_MIN_UPDATES`` updates (the compile costs tens of seconds once per process). On CPU ``auto`` stays eager:
measured on this project's 2-core AVX2 machine, inductor's generated elementwise kernels were slower than ATen's
for the ensemble's (2, 7936, 256) activations (compiled / eager 0.85-0.9, docs/results.md "Update speed"), so
``compile=true`` there is an explicit choice.
"""

from __future__ import annotations

from typing import Any

import torch

from calql_robot.errors import UserError

AUTO_MIN_UPDATES = 1000


def choose_compile(setting: Any, device: torch.device, updates: int | None) -> tuple[bool, str]:
    """(compile?, reason) for ``setting`` (auto / true / false), the run's device and its number of updates."""
    text = str(setting).lower()
    if text in ("true", "1"):
        return True, "compile=true"
    if text in ("false", "0", "none"):
        return False, "compile=false"
    if text != "auto":
        raise UserError(f"compile is {setting!r}; expected auto, true or false")
    if device.type != "cuda":
        return False, "auto: eager on CPU, where compiling measured slower"
    if updates is not None and updates < AUTO_MIN_UPDATES:
        return False, f"auto: {updates} updates do not repay the compile"
    return True, "auto: CUDA graphs on a GPU"


def apply_compile(agent: Any, setting: Any, device: torch.device, updates: int | None) -> bool:
    """Switch ``agent`` to its compiled update when :func:`choose_compile` says so; prints the choice."""
    compile_update, reason = choose_compile(setting, device, updates)
    if compile_update:
        agent.enable_compile("reduce-overhead" if device.type == "cuda" else None)
        print(f"update: compiled ({reason}); the first update builds the graph, typically 20-60 s, once per process")
    else:
        print(f"update: eager ({reason})")
    return compile_update
