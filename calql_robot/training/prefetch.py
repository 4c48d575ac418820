"""Draw the next training batch in a background thread while the current update runs.

Sampling (index draws, gathering rows, with ``data.lazy=true`` reading and decompressing zarr chunks) and the copy to
the device overlap the update instead of adding to it. The batches and their order are exactly those of drawing
them in the loop: one worker draws them one after the other from the same generator. Resuming stays exact too:
:meth:`BatchPrefetcher.resume_state` is the generator state from before the batch that comes next, which is what a
checkpoint must store.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from calql_robot.errors import UserError


class BatchPrefetcher:
    """``next()`` returns ``make_batch()``'s results in order, each drawn one call ahead in a worker thread.

    ``rng_state()`` is called in the worker right before each draw; ``resume_state()`` returns the value it gave
    for the batch ``next()`` returns next. ``wait_s`` totals the time ``next()`` waited for a batch (the part of
    sampling the update did not hide).
    """

    def __init__(self, make_batch: Callable[[], Any], rng_state: Callable[[], Any]):
        self._make_batch, self._rng_state = make_batch, rng_state
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch")
        self._pending: Future | None = self._submit()
        self.wait_s = 0.0

    def _submit(self) -> Future:
        def draw() -> tuple[Any, Any]:
            state = self._rng_state()
            return state, self._make_batch()

        return self._pool.submit(draw)

    def next(self) -> Any:
        """The next batch (re-raising an error of its draw), and start drawing the one after it."""
        if self._pending is None:
            raise RuntimeError("BatchPrefetcher.next() after close()")
        start = time.perf_counter()
        _, batch = self._pending.result()
        self.wait_s += time.perf_counter() - start
        self._pending = self._submit()
        return batch

    def resume_state(self) -> Any:
        """The generator state to save: drawing from it gives the batch ``next()`` returns next."""
        if self._pending is None:
            raise RuntimeError("BatchPrefetcher.resume_state() after close()")
        state, _ = self._pending.result()
        return state

    def close(self) -> None:
        """Finish the draw in flight and stop the worker (idempotent)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._pool.shutdown(wait=True)

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SequentialBatches:
    """The same interface drawing each batch when asked (``data.prefetch=false``); ``wait_s`` is then the whole
    sampling time."""

    def __init__(self, make_batch: Callable[[], Any], rng_state: Callable[[], Any]):
        self._make_batch, self._rng_state = make_batch, rng_state
        self.wait_s = 0.0

    def next(self) -> Any:
        start = time.perf_counter()
        batch = self._make_batch()
        self.wait_s += time.perf_counter() - start
        return batch

    def resume_state(self) -> Any:
        return self._rng_state()

    def close(self) -> None:
        pass


def prefetch_wanted(setting: Any, lazy: bool) -> bool:
    """``data.prefetch``: true / false as given; auto = only for lazily read stores. In RAM a batch takes well under
    a millisecond to draw, and a worker thread then costs more than it hides: measured with AntMaze-sized networks
    on PointMaze data, 3.90 updates/s with the worker against 4.27 without (docs/results.md)."""
    text = str(setting).lower()
    if text not in ("auto", "true", "false"):
        raise UserError(f"data.prefetch is {setting!r}; expected auto, true or false")
    return lazy if text == "auto" else text == "true"


def training_batches(cfg: Any, sampler: Any, device: Any,
                     batch_size: int | None = None) -> BatchPrefetcher | SequentialBatches:
    """Batches of ``batch_size`` rows (default ``cfg.pretrain.batch_size``; one rank's shard of it under torchrun)
    from ``sampler`` (a MixedSampler) as torch tensors on ``device``, drawn one ahead in a worker thread when
    :func:`prefetch_wanted` says so."""
    from omegaconf import OmegaConf

    from calql_robot.training.replay import batch_to_torch

    batch_size = int(cfg.pretrain.batch_size) if batch_size is None else int(batch_size)
    make = lambda: batch_to_torch(sampler.sample(batch_size), device)
    state = lambda: copy.deepcopy(sampler.rng.bit_generator.state)
    lazy = bool(OmegaConf.select(cfg, "data.lazy", default=False))
    if prefetch_wanted(OmegaConf.select(cfg, "data.prefetch", default="auto"), lazy):
        print("batches: drawn one ahead in a worker thread (data.prefetch)")
        return BatchPrefetcher(make, state)
    return SequentialBatches(make, state)
