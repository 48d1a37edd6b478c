"""Allocator setting for data-loader worker processes: reuse freed memory instead of faulting in fresh pages.

A loader worker allocates and frees the same few megabyte-sized arrays for every clip (decoded
BGR frames, the normalised crop, the collated batch). glibc serves blocks above its mmap threshold
(128 KiB, raised on the fly up to the largest freed block) with a fresh `mmap` and returns freed
heap tops to the kernel, so each clip pays ~1,000 page faults: on the 2-core test machine about
2 ms of system time per 3 s clip, a fifth of the loading cost. `keep_freed_memory` sets a fixed
mmap threshold of 32 MiB and a 512 MiB trim threshold (`mallopt`), so those blocks come from the
heap and are reused: page faults per clip drop to ~0 (tests/avdata/test_memory.py) and the
peak RSS of `bench/bench_loading.py` stays the same. Called once per DataLoader worker process by
`AVHubertDataset` (not in the training process, whose memory use is different). A no-op where the C library has no `mallopt` (macOS,
musl) or when another allocator (tcmalloc through `LD_PRELOAD`) ignores it.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory"]

# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's maximum for 64-bit
TRIM_THRESHOLD_BYTES = 512 * 2**20

_done_in_pid = -1


def keep_freed_memory() -> bool:
    """Set the glibc thresholds above for this process (once per pid); True when they were set."""
    global _done_in_pid
    if _done_in_pid == os.getpid():
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if ok:
        _done_in_pid = os.getpid()
    return ok
