"""Align streams recorded at different rates onto one reference clock.

A *stream* is a 1-D array of timestamps (M,) in seconds, strictly increasing, plus values (M, ...) sampled at those
times. Alignment picks, for every reference time (T,), a value from the stream: the nearest sample, or the linear
interpolation between the two samples around it (low-dim streams only; images always use the nearest frame).
"""

from __future__ import annotations

import numpy as np

from calql_robot.errors import ConfigError, UserError

ALIGN_METHODS = ("nearest", "linear")


def check_timestamps(times: np.ndarray, where: str) -> np.ndarray:
    """Return ``times`` as float64 (M,) after checking it is finite and strictly increasing; ``where`` names it."""
    try:
        times = np.asarray(times, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: timestamps must be numbers (seconds)") from None
    if times.ndim != 1 or times.shape[0] == 0:
        raise UserError(f"{where}: timestamps must be a non-empty 1-D array of seconds, got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise UserError(f"{where}: timestamps contain NaN or infinite values")
    if times.shape[0] > 1 and not np.all(np.diff(times) > 0):
        bad = int(np.argmin(np.diff(times) > 0))
        raise UserError(
            f"{where}: timestamps must be strictly increasing, but row {bad + 1} ({times[bad + 1]!r}) does not come "
            f"after row {bad} ({times[bad]!r})"
        )
    return times


def default_tolerance(times: np.ndarray) -> float:
    """How far (s) a reference time may lie from the nearest sample: 1.5 x the stream's median period."""
    if times.shape[0] < 2:
        return float("inf")
    return 1.5 * float(np.median(np.diff(times)))


def nearest_indices(ref_times: np.ndarray, times: np.ndarray, where: str, tolerance: float | None = None) -> np.ndarray:
    """Index (T,) int64 of the stream sample nearest to each reference time (ties go to the earlier sample).

    Raises UserError naming ``where`` if a reference time is farther than ``tolerance`` seconds (default
    :func:`default_tolerance`) from every sample: the stream has a gap or does not cover the reference clock.
    """
    ref_times = np.asarray(ref_times, dtype=np.float64)
    tol = default_tolerance(times) if tolerance is None else float(tolerance)
    right = np.clip(np.searchsorted(times, ref_times, side="left"), 0, times.shape[0] - 1)
    left = np.clip(right - 1, 0, times.shape[0] - 1)
    pick_left = np.abs(ref_times - times[left]) <= np.abs(times[right] - ref_times)
    idx = np.where(pick_left, left, right).astype(np.int64)
    gap = np.abs(times[idx] - ref_times)
    if np.any(gap > tol):
        worst = int(np.argmax(gap))
        raise UserError(
            f"{where}: no sample within {tol:.4g} s of reference time {ref_times[worst]:.6g} s (nearest is "
            f"{gap[worst]:.4g} s away); the stream has a gap or does not cover the episode (set align.tolerance_s "
            "to accept larger gaps)"
        )
    return idx


def align_stream(
    ref_times: np.ndarray,
    times: np.ndarray,
    values: np.ndarray,
    method: str,
    where: str,
    tolerance: float | None = None,
) -> np.ndarray:
    """Resample ``values`` (M, ...) taken at ``times`` (M,) onto ``ref_times`` (T,); returns (T, ...).

    ``method`` is "nearest" or "linear"; linear interpolation applies to floating-point values, integer and bool
    values (and images) always take the nearest sample. Reference times outside the stream's range take the end
    sample, subject to the same ``tolerance`` check as :func:`nearest_indices`.
    """
    if method not in ALIGN_METHODS:
        raise ConfigError(f"align.method={method!r} is not known; expected one of {list(ALIGN_METHODS)}")
    values = np.asarray(values)
    if values.shape[0] != times.shape[0]:
        raise UserError(f"{where}: {values.shape[0]} values but {times.shape[0]} timestamps")
    idx = nearest_indices(ref_times, times, where, tolerance)
    if method == "nearest" or not np.issubdtype(values.dtype, np.floating) or times.shape[0] < 2:
        return values[idx]
    ref = np.clip(np.asarray(ref_times, dtype=np.float64), times[0], times[-1])
    hi = np.clip(np.searchsorted(times, ref, side="right"), 1, times.shape[0] - 1)
    lo = hi - 1
    frac = ((ref - times[lo]) / (times[hi] - times[lo])).reshape((-1,) + (1,) * (values.ndim - 1))
    out = values[lo].astype(np.float64) * (1.0 - frac) + values[hi].astype(np.float64) * frac
    return out.astype(values.dtype)
