"""Shard layout, file formats and the resumable feature-dump loop of the clustering pipeline.

Formats (fairseq `examples/hubert/simple_kmeans`, as used by reference `avhubert/clustering`):

- `{feat_dir}/{split}_{rank}_{nshard}.npy`: float32 `[sum(T_i), D]`, the frames of every utterance of
  the shard concatenated in manifest order;
- `{feat_dir}/{split}_{rank}_{nshard}.len`: one line per utterance, its frame count `T_i`;
- `{lab_dir}/{split}_{rank}_{nshard}.km`: one line per utterance, space-separated cluster ids.

Sharding: `avdata.sharding.shard_range` (the one shard formula of the project): shard `rank` of
`nshard` is the contiguous block of `ceil(n / nshard)` manifest rows starting at
`rank * ceil(n / nshard)` (reference `get_path_iterator`); unlike the reference, an empty trailing
shard is allowed and yields empty outputs.

Resumability: every output is written to a temporary name (`{stem}.tmp{suffix}`, `avdata.atomic`)
and renamed; a shard is finished when its marker `.{step}.{split}_{rank}_{nshard}.done`
(`avdata.markers`) exists next to the outputs. A rerun skips finished shards and redoes any other
(a leftover temporary file is never taken as output).

Non-finite features (NaN or inf, e.g. from a diverged checkpoint or a float wav holding NaN samples)
are refused where they appear: the feature dump stops before the shard is written
(`NonFiniteFeatureError` names the shard file, the row ranges and the utterance ids) unless
`allow_nonfinite` is set; `learn_kmeans` and `dump_km_label` check again (`--skip-nonfinite`).
"""

import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from avdata.atomic import fsync_path, temp_name, write_lines
from avdata.manifest import ManifestRow, read_manifest
from avdata.markers import done_marker, is_done, mark_done
from avdata.sharding import shard_range

logger = logging.getLogger(__name__)

__all__ = [
    "shard_name",
    "read_shard_rows",
    "NpyStreamWriter",
    "read_lengths",
    "load_feature_shard",
    "dump_feature_shard",
    "NonFiniteFeatureError",
    "nonfinite_rows",
    "format_row_ranges",
    "describe_nonfinite",
    "refusal_exit_code",
]

# Fixed .npy header size so the shape can be rewritten in place once all frames are appended.
_NPY_HEADER_BYTES = 128
# A feature dump stops after this many utterances with non-finite features (a diverged checkpoint
# makes every utterance NaN: no need to encode the whole shard to say so).
MAX_NONFINITE_UTTS = 10
# Rows checked for non-finite values per step (bounds the temporary boolean array).
CHECK_ROWS = 1 << 18


class NonFiniteFeatureError(ValueError):
    """Features with NaN or infinite values; the message names the file, rows and utterances."""


def nonfinite_rows(feats: np.ndarray, first_row: int = 0) -> np.ndarray:
    """Indices (plus `first_row`) of the rows of `[N, D]` `feats` holding a NaN or inf, int64 `[n]`.

    Reads `feats` (e.g. a memory map) in blocks of `CHECK_ROWS` rows.
    """
    bad = []
    for start in range(0, feats.shape[0], CHECK_ROWS):
        block = np.asarray(feats[start : start + CHECK_ROWS])
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if rows.size:
            bad.append(rows + start + first_row)
    return np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, dtype=np.int64)


def format_row_ranges(rows: np.ndarray, limit: int = 8) -> str:
    """`"100-109, 250"` for sorted row indices (the first `limit` contiguous runs, then a count)."""
    if rows.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(rows, breaks)]
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:limit])
    return text + (f" and {len(runs) - limit} more runs" if len(runs) > limit else "")


def describe_nonfinite(
    path: str | os.PathLike,
    bad_rows: np.ndarray,
    lens: np.ndarray,
    ids: Optional[Sequence[str]] = None,
    first_utt: int = 0,
    limit: int = 10,
) -> str:
    """One line: `path`, how many rows (which ranges) of which utterances are non-finite.

    `bad_rows` are sorted row indices into the shard, `lens` the shard's frames per utterance,
    `ids` its utterance ids (if known; else utterances are named by manifest row, the shard's
    first utterance being manifest row `first_utt`).
    """
    offsets = np.concatenate([[0], np.cumsum(lens)])
    utts = np.unique(np.searchsorted(offsets, bad_rows, side="right") - 1)
    names = [repr(ids[u]) if ids is not None else f"manifest row {first_utt + int(u)}" for u in utts[:limit]]
    more = f" and {len(utts) - limit} more" if len(utts) > limit else ""
    return (
        f"{path}: {bad_rows.size} of {int(offsets[-1])} rows have NaN/inf features (rows {format_row_ranges(bad_rows)}) "
        f"in {len(utts)} utterances: {', '.join(names)}{more}"
    )


def refusal_exit_code(work: Callable[[], object]) -> int:
    """A command's exit code: 0 when `work()` finishes, 1 (the message logged) when it refuses
    NaN/inf features (`NonFiniteFeatureError`) or non-finite centroids (`FloatingPointError`).

    A shard step's `True`/`False` result is logged as written / skipped (finished before).
    """
    try:
        result = work()
    except (NonFiniteFeatureError, FloatingPointError) as e:
        logger.error("%s", e)
        return 1
    if isinstance(result, bool):
        logger.info("done: %s", "written" if result else "skipped (finished before)")
    return 0


def shard_name(split: str, rank: int, nshard: int) -> str:
    """`{split}_{rank}_{nshard}` (the basename shared by `.npy`, `.len`, `.km`)."""
    return f"{split}_{rank}_{nshard}"


def read_shard_rows(tsv_path: str | os.PathLike, nshard: int, rank: int) -> Tuple[str, List[ManifestRow]]:
    """Manifest root and the rows of shard `rank` of `nshard`; logs the range."""
    root, rows = read_manifest(tsv_path)
    start, end = shard_range(len(rows), nshard, rank)
    logger.info("%s: rank %d/%d: %d rows (%d-%d) of %d", tsv_path, rank, nshard, end - start, start, end, len(rows))
    return root, rows[start:end]


class NpyStreamWriter:
    """Append `[t, D]` float32 blocks to a `.npy` file without holding them in memory.

    Writes to `avdata.atomic.temp_name(path)` with a fixed-size header, rewrites the header with
    the final shape on `close()`, fsyncs and renames to `path`; an interrupted writer leaves only
    the temporary file.
    `dim` may be left `None` and is taken from the first block (an empty file gets `[0, 0]` unless
    `dim` is given).
    """

    def __init__(self, path: str | os.PathLike, dim: Optional[int] = None, dtype: str = "<f4") -> None:
        self.path = Path(path)
        self.tmp = temp_name(self.path)
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
        fsync_path(self.tmp)
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
        lines = [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
    bad = [(i, t) for i, t in lines if not t.isdigit()]
    if bad:
        raise ValueError(f"{len_path}:{bad[0][0]}: expected a frame count, got {bad[0][1][:40]!r}")
    return np.array([int(t) for _, t in lines], dtype=np.int64)


def load_feature_shard(feat_dir: str | os.PathLike, split: str, rank: int, nshard: int) -> Tuple[np.ndarray, np.ndarray]:
    """Memory-mapped features `[N, D]` and lengths `[n_utts]` of one shard (checked consistent)."""
    base = Path(feat_dir) / shard_name(split, rank, nshard)
    npy, lens_path = base.with_suffix(".npy"), base.with_suffix(".len")
    for p in (npy, lens_path):
        if not p.is_file():
            raise FileNotFoundError(f"missing feature shard file {p}")
    try:
        feats = np.load(npy, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # empty, truncated or not an .npy file
        raise ValueError(f"{npy}: not a readable feature shard ({e}); redo the feature dump") from None
    if feats.ndim != 2:
        raise ValueError(f"{npy}: expected [frames, dim] features, got shape {feats.shape}")
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
    allow_nonfinite: bool = False,
) -> bool:
    """Write `{split}_{rank}_{nshard}.npy/.len` for one shard; returns False when skipped as done.

    `extract(items)` receives `(root, row)` pairs of the shard in manifest order and yields one
    float32 `[T_i, D]` array per item in the same order (it may batch internally). Output is
    streamed: memory holds only what `extract` keeps. An utterance with NaN/inf features stops
    the dump (after at most `MAX_NONFINITE_UTTS` such utterances; nothing is written) with a
    `NonFiniteFeatureError` naming them, unless `allow_nonfinite` (then they are written and
    counted in a warning, for `learn_kmeans`/`dump_km_label --skip-nonfinite`).
    """
    feat_dir = Path(feat_dir)
    feat_dir.mkdir(parents=True, exist_ok=True)
    base = feat_dir / shard_name(split, rank, nshard)
    npy, len_path = base.with_suffix(".npy"), base.with_suffix(".len")
    marker = done_marker(feat_dir, "feat", rank, nshard, split=split)
    if not overwrite and is_done(marker, [npy, len_path]):
        logger.info("skip %s: already done (%s)", base.name, marker.name)
        return False
    marker.unlink(missing_ok=True)
    root, rows = read_shard_rows(Path(tsv_dir) / f"{split}.tsv", nshard, rank)
    items = [(root, r) for r in rows]
    lengths: List[int] = []
    bad_rows: List[np.ndarray] = []  # shard row indices of non-finite frames
    bar = tqdm(total=len(items), desc=f"dump {split} shard {rank}/{nshard}", disable=not progress or not sys.stderr.isatty())
    with NpyStreamWriter(npy, dim=dim) as writer:
        for feat in extract(items):
            bad = nonfinite_rows(feat, first_row=writer.rows)
            if bad.size:
                bad_rows.append(bad)
                if not allow_nonfinite and len(bad_rows) >= MAX_NONFINITE_UTTS:
                    lengths.append(int(feat.shape[0]))
                    break
            writer.append(feat)
            lengths.append(int(feat.shape[0]))
            bar.update(1)
        bar.close()
        if bad_rows:
            rows_all = np.concatenate(bad_rows)
            ids = [r.id for _, r in items[: len(lengths)]]
            msg = describe_nonfinite(npy, rows_all, np.array(lengths), ids)
            if not allow_nonfinite:
                stopped = f" (stopped after {len(lengths)} of {len(items)} utterances)" if len(lengths) < len(items) else ""
                raise NonFiniteFeatureError(
                    f"{msg}{stopped}; shard not written. The checkpoint may have diverged or the inputs hold NaN "
                    "samples: fix them, or keep such frames (allow_nonfinite / --keep-nonfinite) and let "
                    "learn_kmeans/dump_km_label --skip-nonfinite handle them"
                )
            logger.warning("kept non-finite features: %s", msg)
        if len(lengths) != len(items):
            raise RuntimeError(f"extractor returned {len(lengths)} features for {len(items)} rows")
    write_lines(len_path, (str(n) for n in lengths))
    mark_done(marker)
    logger.info("wrote %s: %d utterances, %d frames", npy, len(lengths), sum(lengths))
    return True
