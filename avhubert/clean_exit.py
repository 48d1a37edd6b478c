"""Stop fairseq's prefetch threads before the interpreter exits, so trainers exit with status 0.

fairseq wraps each epoch iterator in a `BufferedIterator` when `dataset.data_buffer_size > 0` (the
default, 10): a daemon `BackgroundConsumer` thread loads batches ahead of the trainer. When training
stops mid-epoch (`max_update`), that thread is often still inside the dataset, decoding video with
OpenCV/FFmpeg or running torch ops, with the GIL released. At exit CPython (before 3.14) ends every
daemon thread that asks for the GIL back with `pthread_exit`; its forced stack unwinding runs
through the C++ frame that re-acquires the GIL (OpenCV's `PyAllowThreads` / pybind11's
`gil_scoped_release` destructor, which may not throw), so the C++ runtime calls `std::terminate`:
"terminate called without an active exception" (or "FATAL: exception not rethrown"), exit status
-6 / 134 after a successful run. The faster the trainer (a GPU) relative to the loader, the more
often the thread is mid-batch at exit.

`install()` registers, once per process, an `atexit` hook that asks each live consumer to stop after
its current batch (fairseq's own `count >= _max_len` check), drains its queue so that the final puts
cannot block, and joins it: when the interpreter finalises, no thread is left in native code.
"""

import atexit
import logging
import queue
import threading
import time

from fairseq.data.iterators import BackgroundConsumer

logger = logging.getLogger(__name__)

__all__ = ["install", "stop_prefetch_threads"]

STOP_TIMEOUT_S = 120.0  # one batch of the slowest loader; a stuck thread is reported, not waited for forever
_lock = threading.Lock()
_installed = False


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


def stop_prefetch_threads(timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Stop and join every live fairseq prefetch thread; returns how many were running.

    Each thread finishes the batch it is loading, then stops. Batches still buffered are dropped.
    """
    consumers = [t for t in threading.enumerate() if isinstance(t, BackgroundConsumer) and t.is_alive()]
    for t in consumers:
        t._max_len = 0  # fairseq-fixed 0.12.3.1 `BackgroundConsumer.run`: breaks once count >= _max_len
    deadline = time.monotonic() + timeout_s
    for t in consumers:
        while t.is_alive() and time.monotonic() < deadline:
            _drain(t._queue)  # a full queue would block the consumer's last put forever
            t.join(0.02)
        if t.is_alive():
            logger.warning("prefetch thread %s did not stop within %.0f s; the exit may abort", t.name, timeout_s)
    return len(consumers)


def install() -> None:
    """Register `stop_prefetch_threads` to run at interpreter exit (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            atexit.register(stop_prefetch_threads)
            _installed = True
