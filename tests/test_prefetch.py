"""BatchPrefetcher: the same batches in the same order as drawing them in the loop, and an exact resume state."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from calql_robot.training.prefetch import BatchPrefetcher


def draws(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1000, size=8) for _ in range(count)]


def test_prefetched_batches_equal_sequential_draws_and_resume_is_exact() -> None:
    rng = np.random.default_rng(7)
    with BatchPrefetcher(lambda: rng.integers(0, 1000, size=8), lambda: copy.deepcopy(rng.bit_generator.state)) as pf:
        got = [pf.next() for _ in range(5)]
        state = pf.resume_state()
        following = pf.next()
    want = draws(7, 6)
    for g, w in zip(got + [following], want):
        np.testing.assert_array_equal(g, w)
    resumed = np.random.default_rng()
    resumed.bit_generator.state = state
    np.testing.assert_array_equal(resumed.integers(0, 1000, size=8), following)
    assert pf.wait_s >= 0.0


def test_prefetch_error_surfaces_in_next_and_close_is_final() -> None:
    calls = {"n": 0}

    def make() -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("corrupt chunk")
        return calls["n"]

    pf = BatchPrefetcher(make, lambda: None)
    assert pf.next() == 1
    with pytest.raises(ValueError, match="corrupt chunk"):
        pf.next()
    pf.close()
    pf.close()
    with pytest.raises(RuntimeError, match="after close"):
        pf.next()


def test_prefetch_auto_only_for_lazy_stores_and_bad_values_refused() -> None:
    from calql_robot.errors import UserError
    from calql_robot.training.prefetch import prefetch_wanted

    assert prefetch_wanted("auto", lazy=True) and not prefetch_wanted("auto", lazy=False)
    assert prefetch_wanted(True, lazy=False) and not prefetch_wanted("false", lazy=True)
    with pytest.raises(UserError, match="data.prefetch is 'often'"):
        prefetch_wanted("often", lazy=False)
