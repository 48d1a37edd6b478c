"""ffmpeg as a subprocess: always an argument list, a checked return code, and an error that
quotes the command and the last lines of ffmpeg's stderr.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Optional, Sequence

__all__ = ["FFmpegError", "find_ffmpeg", "run_ffmpeg"]

FFMPEG_STDERR_TAIL_LINES = 15


class FFmpegError(RuntimeError):
    """ffmpeg returned non-zero; the message holds the command and the last stderr lines."""


def find_ffmpeg(ffmpeg: Optional[str] = None) -> str:
    """Resolve the ffmpeg executable (`ffmpeg` flag, else `$PATH`), with an install hint."""
    candidate = ffmpeg or "ffmpeg"
    resolved = shutil.which(candidate)
    if resolved is None:
        raise FileNotFoundError(
            f"ffmpeg not found ({candidate!r}); install it (Debian: `apt-get install ffmpeg`) "
            "or pass its path with --ffmpeg"
        )
    return resolved


def run_ffmpeg(args: Sequence[str], ffmpeg: Optional[str] = None, input_bytes: Optional[bytes] = None) -> bytes:
    """Run `ffmpeg -nostdin -hide_banner -loglevel error -y <args>`; return its stdout.

    Raises `FFmpegError` with the last stderr lines when the return code is non-zero.
    """
    cmd = [find_ffmpeg(ffmpeg), "-hide_banner", "-loglevel", "error", "-y"]
    if input_bytes is None:
        cmd.insert(1, "-nostdin")
    cmd += [str(a) for a in args]
    proc = subprocess.run(cmd, input=input_bytes, capture_output=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.decode("utf-8", "replace").strip().splitlines()[-FFMPEG_STDERR_TAIL_LINES:])
        raise FFmpegError(f"ffmpeg failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout
