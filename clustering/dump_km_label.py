"""Label every frame of one feature shard with its nearest k-means centroid.

Reads `{feat_dir}/{split}_{rank}_{nshard}.npy/.len` and a model `km_path` (a joblib object with
`cluster_centers_`: our fast backend's `CentroidModel` or a scikit-learn model as the original's
`learn_kmeans.py` saves; or a bare `[K, D]` `.npy`), writes `{lab_dir}/{split}_{rank}_{nshard}.km`:
one line per utterance, its frame labels separated by spaces. Example:

    python -m clustering.dump_km_label feats/mfcc train km/mfcc.km 10 0 labels/

Reference parity: nearest centroid by squared Euclidean distance as the original (fairseq
`simple_kmeans/dump_km_label.py`); here computed with chunked torch matmuls on CPU or CUDA, streamed
over the memory-mapped shard. Resumable: a finished shard (marker `.km.{split}_{rank}_{nshard}.done`)
is skipped; the output is written through a temp file.

Checks: the centroids must be finite; a frame with NaN/inf features stops the shard with a
`NonFiniteFeatureError` naming the shard file, the row ranges and the utterances (ids with
`--tsv-dir`), nothing written. With `--skip-nonfinite` such a frame is still labelled, so that
the label file keeps exactly one label per frame (the dataset checks label and video lengths):
its NaN/inf values are replaced by 0 and it gets the nearest centroid of that vector; the frames
are counted in a warning. Labels are checked (one per frame, each in `[0, K)`) before written.
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import joblib
import numpy as np
from tqdm import tqdm

from avdata.atomic import atomic_path
from avdata.markers import done_marker, is_done, mark_done
from clustering.kmeans import nearest_centroid
from clustering.shards import (
    NonFiniteFeatureError,
    describe_nonfinite,
    load_feature_shard,
    nonfinite_rows,
    read_shard_rows,
    refusal_exit_code,
    shard_name,
)

logger = logging.getLogger(__name__)

__all__ = ["load_centroids", "dump_km_label", "build_parser", "main"]

# Frames labelled per step (bounds memory: features are read from the mmap step by step).
FRAMES_PER_STEP = 1 << 20


def load_centroids(km_path: str | os.PathLike) -> np.ndarray:
    """float32 `[K, D]` centroids from a `.npy` array or a joblib model / array / dict."""
    km_path = str(km_path)
    if not os.path.isfile(km_path):
        raise FileNotFoundError(f"k-means model not found: {km_path}")
    try:
        obj = np.load(km_path) if km_path.endswith(".npy") else joblib.load(km_path)
    except Exception as e:  # noqa: BLE001 - empty, truncated or not a model: name the file
        raise ValueError(f"{km_path}: not a readable k-means model ({type(e).__name__}: {e}); relearn it") from None
    if km_path.endswith(".npy"):
        centers = obj
    else:
        if isinstance(obj, np.ndarray):
            centers = obj
        elif isinstance(obj, dict) and "cluster_centers_" in obj:
            centers = obj["cluster_centers_"]
        elif hasattr(obj, "cluster_centers_"):
            centers = obj.cluster_centers_
        else:
            raise ValueError(f"{km_path}: {type(obj).__name__} has no cluster_centers_")
    centers = np.asarray(centers, dtype=np.float32)
    if centers.ndim != 2:
        raise ValueError(f"{km_path}: centroids must be [K, D], got shape {centers.shape}")
    if not np.isfinite(centers).all():
        bad = int((~np.isfinite(centers).all(axis=1)).sum())
        raise ValueError(f"{km_path}: {bad} of {centers.shape[0]} centroids are NaN/inf; relearn the k-means model")
    return centers


def dump_km_label(
    feat_dir: str,
    split: str,
    km_path: str,
    nshard: int,
    rank: int,
    lab_dir: str,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    skip_nonfinite: bool = False,
    tsv_dir: Optional[str] = None,
) -> bool:
    """Write `{lab_dir}/{split}_{rank}_{nshard}.km`; returns False when skipped as done.

    NaN/inf frames raise `NonFiniteFeatureError` (`tsv_dir` with `{split}.tsv` names the ids) or,
    with `skip_nonfinite`, are zero-filled, labelled and counted.
    """
    lab_dir_p = Path(lab_dir)
    lab_dir_p.mkdir(parents=True, exist_ok=True)
    out = lab_dir_p / f"{shard_name(split, rank, nshard)}.km"
    marker = done_marker(lab_dir_p, "km", rank, nshard, split=split)
    if not overwrite and is_done(marker, [out]):
        logger.info("skip %s: already done (%s)", out.name, marker.name)
        return False
    marker.unlink(missing_ok=True)
    centers = load_centroids(km_path)
    feats, lens = load_feature_shard(feat_dir, split, rank, nshard)
    if feats.shape[0] and feats.shape[1] != centers.shape[1]:
        raise ValueError(f"features of dim {feats.shape[1]} but {km_path} has centroids of dim {centers.shape[1]}")
    offsets = np.concatenate([[0], np.cumsum(lens)])
    npy = Path(feat_dir) / f"{shard_name(split, rank, nshard)}.npy"

    def describe(bad_rows: np.ndarray) -> str:
        ids = [r.id for r in read_shard_rows(Path(tsv_dir) / f"{split}.tsv", nshard, rank)[1]] if tsv_dir else None
        return describe_nonfinite(npy, bad_rows, lens, ids)

    bar = tqdm(total=len(lens), desc=f"label {split} shard {rank}/{nshard}", disable=not progress or not sys.stderr.isatty())
    filled: List[np.ndarray] = []  # shard rows labelled after zero-filling
    # a refusal or error leaves nothing behind (a kill leaves only the temporary file)
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="ascii") as f:
            first = 0
            while first < len(lens):  # groups of whole utterances of about FRAMES_PER_STEP frames
                last = max(first + 1, int(np.searchsorted(offsets, offsets[first] + FRAMES_PER_STEP, side="right")) - 1)
                last = min(last, len(lens))
                base = offsets[first]
                block = feats[base : offsets[last]]
                bad = nonfinite_rows(block)
                if bad.size:
                    if not skip_nonfinite:
                        rest = nonfinite_rows(feats[offsets[last] :], first_row=int(offsets[last]))
                        raise NonFiniteFeatureError(
                            f"{describe(np.concatenate([bad + base, rest]))}; no labels written. Redo the feature "
                            "dump, or pass --skip-nonfinite to label these frames after zero-filling"
                        )
                    block = np.where(np.isfinite(block), block, 0.0).astype(np.float32)
                    filled.append(bad + base)
                labels = nearest_centroid(block, centers, device=device)
                if labels.shape[0] != block.shape[0] or (labels.size and not 0 <= labels.min() <= labels.max() < len(centers)):
                    raise RuntimeError(f"{out}: {labels.shape[0]} labels for {block.shape[0]} frames or out of [0, {len(centers)})")
                for i in range(first, last):
                    f.write(" ".join(map(str, labels[offsets[i] - base : offsets[i + 1] - base].tolist())) + "\n")
                bar.update(last - first)
                first = last
    bar.close()
    mark_done(marker)
    if filled:
        logger.warning("labelled after zero-filling (--skip-nonfinite): %s", describe(np.concatenate(filled)))
    logger.info("wrote %s: %d utterances, %d frames", out, len(lens), int(offsets[-1]))
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("feat_dir")
    p.add_argument("split")
    p.add_argument("km_path")
    p.add_argument("nshard", type=int)
    p.add_argument("rank", type=int)
    p.add_argument("lab_dir")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--skip-nonfinite", action="store_true", help="label NaN/inf frames after zero-filling (counted)")
    p.add_argument("--tsv-dir", default=None, help="directory with {split}.tsv: error messages name utterance ids")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logger.info("args: %s", vars(args))
    return refusal_exit_code(lambda: dump_km_label(
        args.feat_dir, args.split, args.km_path, args.nshard, args.rank, args.lab_dir,
        args.device, args.overwrite, not args.no_progress, args.skip_nonfinite, args.tsv_dir,
    ))


if __name__ == "__main__":
    from avdata.procs import run_main

    run_main(main)
