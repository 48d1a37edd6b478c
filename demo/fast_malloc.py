"""tcmalloc for CPU trainer subprocesses: the helpers live in `avdata.fast_malloc` (the plugin uses
them too); this module keeps the demo's import path."""

from avdata.fast_malloc import find_tcmalloc, with_tcmalloc

__all__ = ["find_tcmalloc", "with_tcmalloc"]
