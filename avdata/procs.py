"""Process helpers: logging setup for command-line entry points, and worker processes that exit
when their parent dies (the project's one implementation).

When a job's parent is killed with SIGKILL (the out-of-memory killer, a pre-empted node, `kill -9`)
its pool workers would otherwise live on, idle or still computing, holding memory and GPUs. Pool
initializers call `die_with_parent(parent_pid)`:

1. Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)` through ctypes, so the kernel kills the worker when
   its parent goes. (The signal follows the parent *thread* that started the worker: create pools
   from a thread that outlives them, e.g. the main thread, as every pool in this project does.)
2. Everywhere, and as a fallback for (1): a daemon thread that polls `os.getppid()` every
   `WATCHDOG_INTERVAL_S` and exits the process when the parent pid changed (the orphan was
   re-parented to init or a subreaper).

A parent that died before the worker got here is caught by the same `getppid()` comparison.
torch `DataLoader` workers need none of this: torch's own worker loop watches the parent pid
(`torch.utils.data._utils.worker.ManagerWatchdog`) and exits within ~5 s (tested in
`tests/faults/test_orphans.py`); fairseq's training loaders are such DataLoaders.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

__all__ = ["setup_logging", "run_main", "PARENT_DIED_EXIT_CODE", "WATCHDOG_INTERVAL_S", "set_parent_death_signal", "die_with_parent"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_INTERVAL_S = 1.0
PARENT_DIED_EXIT_CODE = 70  # os._exit code of a worker whose parent is gone


def setup_logging() -> None:
    """Configure the root logger at INFO; call from `__main__` only."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_main(main: Callable[[], int]) -> None:
    """The `if __name__ == "__main__"` of a command: INFO logging, then exit with `main()`'s code."""
    setup_logging()
    raise SystemExit(main())


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the Linux kernel to send `sig` to this process when its parent dies; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_orphan(parent_pid: int) -> None:
    sys.stderr.write(f"worker {os.getpid()}: parent process {parent_pid} is gone; exiting\n")
    sys.stderr.flush()
    os._exit(PARENT_DIED_EXIT_CODE)


def _watch(parent_pid: int, interval: float) -> None:
    while True:
        if os.getppid() != parent_pid:
            _exit_orphan(parent_pid)
        time.sleep(interval)


def die_with_parent(parent_pid: int, interval: float = WATCHDOG_INTERVAL_S) -> None:
    """Make this (worker) process exit when `parent_pid`, its parent, dies.

    Call it first thing in a pool initializer, passing the parent's `os.getpid()` taken in the
    parent (`initargs=(os.getpid(),)`). Exits at once when the parent is already gone.
    """
    set_parent_death_signal()
    if os.getppid() != parent_pid:  # died before prctl took effect
        _exit_orphan(parent_pid)
    threading.Thread(target=_watch, args=(parent_pid, interval), name="parent-watchdog", daemon=True).start()
