"""Merge per-shard label files into `{split}.{ext}` and write the cluster dictionary.

`{lab_dir}/{split}_{r}_{nshard}.km` for r = 0..nshard-1 are concatenated in rank order; the merged
file must have exactly one line per manifest row (checked). `dict.{ext}.txt` lists the cluster ids
`0..K-1` with the dummy count 10000, as the reference `submit_cluster.py` wrote it (fairseq then maps
cluster c to index c + 4). Reference parity fix: the README's loop started at 1, which sent
cluster 0 to `<unk>` (av_hubert #15).
"""

import logging
import os
from pathlib import Path
from typing import List

from avdata.manifest import read_manifest
from clustering.shards import shard_name
from avdata.atomic import write_lines

logger = logging.getLogger(__name__)

__all__ = ["DICT_COUNT", "merge_labels", "write_cluster_dict"]

DICT_COUNT = 10000  # dummy symbol count in dict.{km,mfcc}.txt (reference value)


def merge_labels(lab_dir: str | os.PathLike, split: str, nshard: int, out_path: str | os.PathLike, tsv_path: str | os.PathLike) -> int:
    """Concatenate the shard label files into `out_path` (atomically); returns the line count.

    Raises `ValueError` when the merged line count differs from the manifest's row count.
    """
    _, rows = read_manifest(tsv_path)
    lines: List[str] = []
    for rank in range(nshard):
        part = Path(lab_dir) / f"{shard_name(split, rank, nshard)}.km"
        if not part.is_file():
            raise FileNotFoundError(f"missing label shard {part}")
        with open(part, "r", encoding="utf-8") as f:
            lines.extend(line.rstrip("\n") for line in f)
    if len(lines) != len(rows):
        raise ValueError(
            f"{split}: {len(lines)} label lines in {nshard} shards of {lab_dir} but {len(rows)} rows in {tsv_path}"
        )
    write_lines(out_path, lines)
    logger.info("merged %d shards -> %s (%d lines)", nshard, out_path, len(lines))
    return len(lines)


def write_cluster_dict(path: str | os.PathLike, n_clusters: int) -> None:
    """`dict.{ext}.txt`: lines `"{c} 10000"` for c = 0..n_clusters-1."""
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    write_lines(path, (f"{c} {DICT_COUNT}" for c in range(n_clusters)))
