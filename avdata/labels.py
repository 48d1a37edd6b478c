"""Label files (`{split}.{km,mfcc,wrd}`): byte-offset index, lazy UTF-8 reads, length checks.

Reference parity with a fix: the reference computed byte offsets but read in text mode, which
misaligns non-ASCII lines (av_hubert #40); here offsets and reads are both in bytes and decoded
as UTF-8. Reads go through one memory map per file (reopened lazily in each worker).
"""

import mmap
from typing import Optional

import numpy as np

__all__ = ["LabelIndex"]


class LabelIndex:
    """Index of a label file: one line per manifest row."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            data = f.read()
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")) + 1
        if len(data) and (not len(ends) or ends[-1] != len(data)):
            ends = np.append(ends, len(data))  # last line without newline
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64) if len(ends) else np.zeros(0, np.int64)
        self.starts, self.ends = starts, ends.astype(np.int64)
        self._mm: Optional[mmap.mmap] = None
        self._file = None

    def __len__(self) -> int:
        return len(self.starts)

    def num_tokens(self) -> np.ndarray:
        """Whitespace-separated token count per line (for frame-label length checks)."""
        with open(self.path, "rb") as f:
            return np.array([len(line.split()) for line in f], dtype=np.int64)

    def read(self, line: int) -> str:
        if self._mm is None:
            self._file = open(self.path, "rb")
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.ends[-1] > 0 else None
        if self._mm is None:
            return ""
        raw = self._mm[self.starts[line] : self.ends[line]]
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}:{line + 1}: not valid UTF-8 ({e})") from None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"], state["_file"] = None, None  # reopened lazily after pickling to a worker
        return state

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._file.close()
        self._mm, self._file = None, None
