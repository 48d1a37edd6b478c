"""Safe checkpoint loading: torch's `weights_only` unpickler with an explicit allow-list, and
one-line errors for checkpoints that cannot be used.

Original AV-HuBERT checkpoints pickle fairseq `Dictionary` and `SentencepieceBPE` objects (the
latter holding a `sentencepiece.SentencePieceProcessor`). Only those classes are admitted;
any other pickled object is refused with a clear message instead of running its code.

Two kinds of unusable checkpoint get their own exception, whose message is one line naming the
file (torch's own errors name neither the file nor the problem, and the weights-only refusal
ends by suggesting `weights_only=False`, i.e. running the file's code):

- `UnsafeCheckpointError`: the pickle asks for a class or function outside the allow-list
  (e.g. `posix.system`); nothing of the file was executed.
- `CorruptCheckpointError`: "truncated or not a checkpoint" (empty file, no zip directory,
  a member failing its CRC, a cut-short pickle).

`explain_load_error(path, exc)` turns torch's exception into one of these (used by the fairseq
load hook in `avhubert.checkpoint_io`); command-line entry points wrap their loading in
`exit_on_checkpoint_error()`, which prints the one line and exits with status 1.
"""

import contextlib
import os
import pickle
import re
import zipfile
import zlib
from typing import Any, Dict, Iterator, List, Optional

import torch

__all__ = [
    "ALLOWED_CLASSES",
    "register_safe_globals",
    "load_checkpoint",
    "CheckpointError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "checkpoint_damage",
    "explain_load_error",
    "exit_on_checkpoint_error",
]


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; `str()` is one line naming the file and the problem."""

    def __init__(self, path: str, message: str, short: str) -> None:
        super().__init__(message)
        self.path = path
        self.short = short  # the problem without the path, e.g. "truncated or not a checkpoint: 0 bytes"


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint whose pickle needs a class outside the allow-list (nothing of it ran)."""

    def __init__(self, path: str, wanted: str) -> None:
        super().__init__(
            path,
            f"{path}: refused to load: its pickle asks for {wanted}, which is not on the allow-list of "
            f"classes a checkpoint may contain ({', '.join(ALLOWED_CLASSES)}, tensors and plain "
            "containers); unpickling it could run code from the file, so nothing of it was loaded or run",
            f"refused: its pickle asks for {wanted}, outside the allow-list",
        )
        self.wanted = wanted


class CorruptCheckpointError(CheckpointError):
    """A file that is cut short, damaged, or not a torch checkpoint at all."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            path,
            f"{path}: truncated or not a checkpoint ({reason}); use another checkpoint file, or copy/save this one again",
            f"truncated or not a checkpoint: {reason}",
        )
        self.reason = reason


def _allowed() -> List[Any]:
    import sentencepiece
    from fairseq.data.dictionary import Dictionary
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE

    # `int`: Python 2 `long` in the protocol-2 pickle of the sentencepiece processor
    return [Dictionary, SentencepieceBPE, sentencepiece.SentencePieceProcessor, int]


ALLOWED_CLASSES = ("fairseq.data.dictionary.Dictionary", "fairseq.data.encoders.sentencepiece_bpe.SentencepieceBPE",
                   "sentencepiece.SentencePieceProcessor")

# torch's legacy (pre-1.6, non-zip) format starts with a protocol-2 pickle of a magic number
_LEGACY_HEAD = b"\x80\x02\x8a\x0a"


def register_safe_globals() -> None:
    """Admit the allow-list into torch's weights-only unpickler (used by fairseq's loader)."""
    known = set(map(id, torch.serialization.get_safe_globals()))
    torch.serialization.add_safe_globals([c for c in _allowed() if id(c) not in known])


def checkpoint_damage(path: str, check_crc: bool = True) -> Optional[str]:
    """Why the file at `path` is not a complete torch checkpoint, or None when it looks intact.

    Checks the zip container torch writes: non-empty, a readable central directory (it sits at
    the end, so a cut-short file has none), a `data.pkl` member and, with `check_crc`, every
    member's CRC (reads the whole file once). Legacy non-zip checkpoints are not checked (None).
    """
    size = os.path.getsize(path)
    if size == 0:
        return "empty file, 0 bytes"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_HEAD))
    if head == _LEGACY_HEAD:
        return None
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return f"zip archive of {size} bytes without a data.pkl member"
            if check_crc:
                bad = z.testzip()
                if bad is not None:
                    return f"member {bad} fails its CRC check"
    except zipfile.BadZipFile:
        if head[:4] == b"PK\x03\x04":
            return f"{size} bytes, the zip directory at its end is missing or damaged: cut short?"
        return f"{size} bytes, not a zip archive as torch writes checkpoints"
    except (OSError, EOFError, zlib.error) as e:
        return f"{size} bytes, unreadable zip archive: {e}"
    return None


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def explain_load_error(path: str, exc: BaseException) -> Optional[CheckpointError]:
    """The `CheckpointError` that `exc` (raised by `torch.load` on `path`) stands for, or None.

    None means the failure is something else (a missing file, a code bug): re-raise it as is.
    """
    if isinstance(exc, CheckpointError):
        return exc
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    path = os.fspath(path)
    damage = checkpoint_damage(path)
    if damage is not None:
        return CorruptCheckpointError(path, damage)
    msg = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        m = _GLOBAL_RE.search(msg)
        if m:
            return UnsafeCheckpointError(path, m.group(1))
        if "Weights only load failed" in msg:
            lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
            # torch's first lines are the generic `weights_only` advice; the specific reason follows
            detail = next((ln for ln in lines[1:] if "weights_only" not in ln and "documentation" not in ln), "")
            return UnsafeCheckpointError(path, f"an object outside the allow-list ({detail[:200]})")
        return CorruptCheckpointError(path, f"broken pickle: {msg.splitlines()[0] if msg else type(exc).__name__}")
    if isinstance(exc, (EOFError, zipfile.BadZipFile)):
        return CorruptCheckpointError(path, f"{type(exc).__name__} while reading it")
    if isinstance(exc, RuntimeError) and ("PytorchStreamReader" in msg or "central directory" in msg):
        return CorruptCheckpointError(path, msg.split(".")[0])
    return None


def load_checkpoint(path: str) -> Dict[str, Any]:
    """`torch.load(path, weights_only=True)` with the allow-list; a one-line `CheckpointError` otherwise."""
    register_safe_globals()  # (not the safe_globals context: on exit it drops pre-registered entries)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - translated when it is a checkpoint problem, re-raised otherwise
        err = explain_load_error(path, e)
        if err is None:
            raise
    raise err from None


@contextlib.contextmanager
def exit_on_checkpoint_error() -> Iterator[None]:
    """For command-line entry points: a `CheckpointError` exits with its one-line message, status 1."""
    try:
        yield
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
