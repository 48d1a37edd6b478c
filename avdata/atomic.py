"""The one atomic-write helper: write to a temporary name in the same folder, fsync, rename.

A reader (or a rerun after a kill) sees either the old file or the complete new one, never a
partial file. The temporary name is `{stem}.tmp{suffix}` (`clip.tmp.mp4`, `train.tmp.tsv`;
a name without a suffix gets `{name}.tmp`), so tools that pick a format from the extension
(ffmpeg, OpenCV, numpy, soundfile) still work, and resumable steps can recognise leftovers.

- `atomic_path(path)`: context manager yielding the temporary path, for writers that take a
  file name (`np.save`, `sf.write`, `cv2.VideoWriter`, ffmpeg);
- `write_text`, `write_bytes`, `write_lines`: the common cases.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

__all__ = ["temp_name", "atomic_path", "write_text", "write_bytes", "write_lines", "fsync_path"]


def temp_name(path: str | os.PathLike) -> Path:
    """The temporary name used for `path`: `{stem}.tmp{suffix}` in the same folder."""
    path = Path(path)
    return path.with_name(f"{path.stem}.tmp{path.suffix}") if path.suffix else path.with_name(f"{path.name}.tmp")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a written file (or a folder's entries) to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True, tmp: str | os.PathLike | None = None,
                before_publish: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`.

    If the block raises, or does not create the temporary file, `path` is left untouched and
    the temporary file is removed. Creates the parent folder. `tmp` overrides the temporary
    name (it must be in the same folder); `before_publish(tmp, path)` runs just before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path) if tmp is None else Path(tmp)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {path}: the block did not write {tmp}")
        if fsync:
            fsync_path(tmp)
        if before_publish is not None:
            before_publish(tmp, path)
        os.replace(tmp, path)
        if fsync:
            fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_lines(path: str | os.PathLike, lines: Iterable[str], fsync: bool = True) -> None:
    """Write newline-terminated UTF-8 lines to `path` atomically (streamed, not joined in memory)."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(f"{line}\n")
