"""Keep large freed tensors in the C heap instead of returning them to the OS after every update (glibc only).

A CQL update on CPU allocates and frees tens of activation buffers of ~16 MB each. glibc serves blocks this large
with mmap and unmaps them on free, so every update page-faults (and zeroes) that memory again; on a 2-core machine
that costs a visible share of the update. Raising glibc's mmap and trim thresholds makes the allocator reuse the
blocks, as jemalloc/tcmalloc (which PyTorch's CPU tuning guide recommends) would. Process-wide, idempotent, and a
no-op where glibc's ``mallopt`` is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
_applied = False


def tune_cpu_allocator() -> bool:
    """Apply the thresholds once; returns True when glibc accepted them (now or earlier)."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )
    return _applied
