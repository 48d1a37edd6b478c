"""The one set of `.done` markers of sharded, resumable steps.

A shard of a step is finished when its marker exists (and, if the caller names them, all its
outputs: an output deleted later means redo). Marker names:

- `.{step}.{rank}_{nshard}.done` (preparation steps);
- `.{step}.{split}_{rank}_{nshard}.done` when a split is given (clustering: `feat`, `km`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from avdata.atomic import write_bytes

__all__ = ["done_marker", "is_done", "mark_done"]


def done_marker(out_dir: str | os.PathLike, step: str, rank: int, nshard: int, split: Optional[str] = None) -> Path:
    """Path of the marker of shard `rank` of `nshard` of `step` (of `split`, if given) in `out_dir`."""
    shard = f"{rank}_{nshard}" if split is None else f"{split}_{rank}_{nshard}"
    return Path(out_dir) / f".{step}.{shard}.done"


def is_done(marker: str | os.PathLike, outputs: Sequence[str | os.PathLike] = ()) -> bool:
    """True when `marker` and every one of `outputs` exist."""
    return Path(marker).is_file() and all(Path(p).is_file() for p in outputs)


def mark_done(marker: str | os.PathLike) -> Path:
    """Create the (empty) marker atomically; returns its path."""
    write_bytes(marker, b"")
    return Path(marker)
