"""Shard layout, file formats and the resumable feature-dump loop of the clustering pipeline.

Formats (fairseq `examples/hubert/simple_kmeans`, as used by reference `avhubert/clustering`):

- `{feat_dir}/{split}_{rank}_{nshard}.npy`: float32 `[sum(T_i), D]`, the frames of every utterance of
  the shard concatenated in manifest order;
- `{feat_dir}/{split}_{rank}_{nshard}.len`: one line per utterance, its frame count `T_i`;
- `{lab_dir}/{split}_{rank}_{nshard}.km`: one line per utterance, space-separated cluster ids.

Sharding: `preparation.common.shard_range` (the one shard formula of the project): shard `rank` of
`nshard` is the contiguous block of `ceil(n / nshard)` manifest rows starting at
`rank * ceil(n / nshard)` (reference `get_path_iterator`); unlike the reference, an empty trailing
shard is allowed and yields empty outputs.

Resumability: every output is written to `<path>.tmp` and renamed; a shard is finished when its
marker `.{step}.{split}_{rank}_{nshard}.done` exists next to the outputs. A rerun skips finished
shards and redoes any other (a leftover `.tmp` is never taken as output).
"""

import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from avhubert.features.manifest import ManifestRow, read_manifest
from preparation.common import shard_range, write_lines

logger = logging.getLogger(__name__)

__all__ = [
    "shard_range",
    "shard_name",
    "read_shard_rows",
    "done_marker",
    "is_done",
    "mark_done",
    "NpyStreamWriter",
    "read_lengths",
    "load_feature_shard",
    "dump_feature_shard",
]

# Fixed .npy header size so the shape can be rewritten in place once all frames are appended.
_NPY_HEADER_BYTES = 128


def shard_name(split: str, rank: int, nshard: int) -> str:
    """`{split}_{rank}_{nshard}` (the basename shared by `.npy`, `.len`, `.km`)."""
    return f"{split}_{rank}_{nshard}"


def read_shard_rows(tsv_path: str | os.PathLike, nshard: int, rank: int) -> Tuple[str, List[ManifestRow]]:
    """Manifest root and the rows of shard `rank` of `nshard`; logs the range."""
    root, rows = read_manifest(tsv_path)
    start, end = shard_range(len(rows), nshard, rank)
    logger.info("%s: rank %d/%d: %d rows (%d-%d) of %d", tsv_path, rank, nshard, end - start, start, end, len(rows))
    return root, rows[start:end]


def done_marker(out_dir: str | os.PathLike, step: str, split: str, rank: int, nshard: int) -> Path:
    """Path of the `.done` marker of one shard of one step (e.g. step `feat` or `km`)."""
    return Path(out_dir) / f".{step}.{shard_name(split, rank, nshard)}.done"


def is_done(marker: Path, outputs: Sequence[Path]) -> bool:
    """True when the marker and every output exist (an output deleted later means: redo)."""
    return marker.is_file() and all(p.is_file() for p in outputs)


def mark_done(marker: Path) -> None:
    """Create the marker (atomically: an empty temp file renamed)."""
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text("")
    os.replace(tmp, marker)


class NpyStreamWriter:
    """Append `[t, D]` float32 blocks to a `.npy` file without holding them in memory.

    Writes to `path.tmp` with a fixed-size header, rewrites the header with the final shape on
    `close()` and renames to `path`; an interrupted writer leaves only the `.tmp` file.
    `dim` may be left `None` and is taken from the first block (an empty file gets `[0, 0]` unless
    `dim` is given).
    """

    def __init__(self, path: str | os.PathLike, dim: Optional[int] = None, dtype: str = "<f4") -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._f = open(self.tmp, "wb")
        self._f.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        shape = (rows, self.dim or 0)
        body = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (self.dtype.str, shape)
        prefix = b"\x93NUMPY\x01\x00"
        pad = _NPY_HEADER_BYTES - len(prefix) - 2 - len(body) - 1
        if pad < 0:
            raise ValueError(f"npy header too long for shape {shape}")
        header = (body + " " * pad + "\n").encode("latin1")
        return prefix + len(header).to_bytes(2, "little") + header

    def append(self, block: np.ndarray) -> None:
        """Append `[t, D]` rows (cast to the writer's dtype)."""
        if block.ndim != 2:
            raise ValueError(f"expected a [T, D] block, got shape {block.shape}")
        if self.dim is None:
            self.dim = block.shape[1]
        elif block.shape[1] != self.dim:
            raise ValueError(f"{self.path}: block dim {block.shape[1]} != {self.dim}")
        self._f.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        """Finalise the header and rename the temp file to the final path."""
        self._f.seek(0)
        self._f.write(self._header(self.rows))
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close and delete the temp file."""
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "NpyStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_lengths(len_path: str | os.PathLike) -> np.ndarray:
    """Frame counts of a `.len` file, int64 `[n_utts]`."""
    with open(len_path, "r", encoding="utf-8") as f:
        return np.array([int(line) for line in f if line.strip()], dtype=np.int64)


def load_feature_shard(feat_dir: str | os.PathLike, split: str, rank: int, nshard: int) -> Tuple[np.ndarray, np.ndarray]:
    """Memory-mapped features `[N, D]` and lengths `[n_utts]` of one shard (checked consistent)."""
    base = Path(feat_dir) / shard_name(split, rank, nshard)
    npy, lens_path = base.with_suffix(".npy"), base.with_suffix(".len")
    for p in (npy, lens_path):
        if not p.is_file():
            raise FileNotFoundError(f"missing feature shard file {p}")
    feats = np.load(npy, mmap_mode="r")
    lens = read_lengths(lens_path)
    if int(lens.sum()) != feats.shape[0]:
        raise ValueError(f"{npy}: {feats.shape[0]} frames but {lens_path} sums to {int(lens.sum())}")
    return feats, lens


def dump_feature_shard(
    extract: Callable[[Sequence[Tuple[str, ManifestRow]]], Iterator[np.ndarray]],
    tsv_dir: str | os.PathLike,
    split: str,
    nshard: int,
    rank: int,
    feat_dir: str | os.PathLike,
    dim: Optional[int] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> bool:
    """Write `{split}_{rank}_{nshard}.npy/.len` for one shard; returns False when skipped as done.

    `extract(items)` receives `(root, row)` pairs of the shard in manifest order and yields one
    float32 `[T_i, D]` array per item in the same order (it may batch internally). Output is
    streamed: memory holds only what `extract` keeps.
    """
    feat_dir = Path(feat_dir)
    feat_dir.mkdir(parents=True, exist_ok=True)
    base = feat_dir / shard_name(split, rank, nshard)
    npy, len_path = base.with_suffix(".npy"), base.with_suffix(".len")
    marker = done_marker(feat_dir, "feat", split, rank, nshard)
    if not overwrite and is_done(marker, [npy, len_path]):
        logger.info("skip %s: already done (%s)", base.name, marker.name)
        return False
    marker.unlink(missing_ok=True)
    root, rows = read_shard_rows(Path(tsv_dir) / f"{split}.tsv", nshard, rank)
    items = [(root, r) for r in rows]
    lengths: List[int] = []
    bar = tqdm(total=len(items), desc=f"dump {split} shard {rank}/{nshard}", disable=not progress or not sys.stderr.isatty())
    with NpyStreamWriter(npy, dim=dim) as writer:
        for feat in extract(items):
            writer.append(feat)
            lengths.append(int(feat.shape[0]))
            bar.update(1)
        bar.close()
        if len(lengths) != len(items):
            raise RuntimeError(f"extractor returned {len(lengths)} features for {len(items)} rows")
    write_lines(len_path, (str(n) for n in lengths))
    mark_done(marker)
    logger.info("wrote %s: %d utterances, %d frames", npy, len(lengths), sum(lengths))
    return True
