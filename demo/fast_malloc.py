"""Run CPU trainer processes with tcmalloc instead of glibc malloc.

The visual front-end allocates activations larger than glibc's 32 MB mmap ceiling (e.g. 1000
frames x 8 x 44 x 44 floats); glibc hands each one back to the kernel when freed, so every step
page-faults them in again. On the demo's 2 CPU cores that is a fifth of the run (sys time 26 s of
74 s for 60 pre-training updates; 57 s in all with tcmalloc). tcmalloc keeps the pages.

It cannot be switched on from inside a running Python process (the allocator is chosen when the
process starts), so launchers pass `with_tcmalloc(env)` to the subprocesses they start. Debian/Ubuntu
package: `libtcmalloc-minimal4` (`make setup` installs it). `AVHUBERT_NO_TCMALLOC=1` opts out.
"""

import ctypes.util
import os
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["find_tcmalloc", "with_tcmalloc"]

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)


def find_tcmalloc() -> Optional[str]:
    """Path (or soname) of libtcmalloc_minimal, or None when it is not installed."""
    for path in _CANDIDATES:
        if Path(path).is_file():
            return path
    return ctypes.util.find_library("tcmalloc_minimal")


def with_tcmalloc(env: Mapping[str, str]) -> dict:
    """A copy of `env` whose LD_PRELOAD starts with tcmalloc (unchanged when it is missing,
    already preloaded, or `AVHUBERT_NO_TCMALLOC=1`)."""
    out = dict(env)
    preload = out.get("LD_PRELOAD", "")
    if out.get("AVHUBERT_NO_TCMALLOC") == "1" or "tcmalloc" in preload:
        return out
    lib = find_tcmalloc()
    if lib is not None:
        out["LD_PRELOAD"] = lib + (os.pathsep + preload if preload else "")
    return out
