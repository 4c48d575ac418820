"""Time a training loop's updates apart from everything else it does (evaluation, checkpoints, logging).

``updates_per_s`` counts the wall time of getting the batch (what prefetching did not hide) plus the update itself,
so it compares with ``bench/update_speed.py`` for the same configuration. A compiled agent's first update, which
builds the graph, is reported apart (``compile_s``) and left out of the rate.
"""

from __future__ import annotations

import time
from typing import Any


class UpdateTimer:
    """``with timer: agent.update(batch)`` around each update; ``rates(wait_s)`` for the logs."""

    def __init__(self, agent: Any):
        self._agent = agent
        self.updates, self.seconds, self.compile_s = 0, 0.0, 0.0
        self._first_compiled = bool(getattr(agent, "compiled", False))
        self._start = 0.0

    def __enter__(self) -> UpdateTimer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self._start
        if self._first_compiled:
            self.compile_s, self._first_compiled = elapsed, False
            print(f"first (compiling) update: {elapsed:.1f} s")
            return
        self.updates += 1
        self.seconds += elapsed

    def rates(self, wait_s: float) -> dict[str, float]:
        """updates_per_s (batch wait + update) and sample_wait_ms (mean wait for a batch per update)."""
        if self.updates == 0:
            return {}
        return {"updates_per_s": self.updates / max(self.seconds, 1e-9),
                "sample_wait_ms": 1000.0 * wait_s / self.updates}

    def summary(self, wait_s: float) -> str:
        """One line for the end of a run."""
        rates = self.rates(wait_s)
        if not rates:
            return "updates: none timed"
        text = (f"updates: {rates['updates_per_s']:.2f}/s over {self.updates} updates (batch wait "
                f"{rates['sample_wait_ms']:.1f} ms per update; evaluation and checkpoints not counted)")
        return text + (f"; compile {self.compile_s:.1f} s" if self.compile_s else "")
