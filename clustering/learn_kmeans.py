"""Learn k-means centroids on the feature shards `{feat_dir}/{split}_{r}_{nshard}.npy`, r < nshard.

Writes the model to `km_path` (atomically) and logs the inertia per frame. Example:

    python -m clustering.learn_kmeans feats/mfcc train 10 km/mfcc.km 100 --percent 0.1

Backends (`--backend`):
- `fast` (default): `clustering.kmeans.fit_kmeans`: batched k-means++ seeding (`--n_init` runs on
  `--init-size` frames), the `--warm-inits` best seedings refined by Lloyd on `--warm-size` frames,
  then full-batch Lloyd on all frames until the relative inertia gain of a pass is below
  `--lloyd-tol` or `--max_iter` passes; torch on CPU or CUDA (`--device`). Saves a joblib `CentroidModel` (attribute `cluster_centers_`), or the bare
  `[K, D]` centroid array when `km_path` ends in `.npy`.
- `sklearn`: scikit-learn `MiniBatchKMeans` with the reference's settings (`compute_labels=False`,
  `init_size=None`, the options below), saved with joblib. Reference parity: this is the original
  `learn_kmeans.py` (fairseq `simple_kmeans`), with `--seed` passed as `random_state`.

`--percent p` (0 < p <= 1) loads `ceil(p * n_utts)` random utterances per shard (seeded);
`p < 0` uses all frames (the fast backend streams them from the memory-mapped shards; sklearn
needs them in memory). Rerunning skips a finished model (marker `.kmeans.<km name>.done`).

Non-finite features: the frames used (all, or the sampled utterances) are checked first; NaN/inf
rows stop the step with a `NonFiniteFeatureError` naming each shard file, the row ranges and the
utterances (ids when `--tsv-dir` gives the manifest, else manifest row numbers). With
`--skip-nonfinite` those rows are dropped (count logged; a shard with dropped rows is copied into
memory). The centroids are checked finite before the model is written.
"""

import argparse
import logging
import math
import os
import time
from pathlib import Path
from typing import List, Optional

import joblib
import numpy as np

from avdata.atomic import atomic_path
from avdata.markers import is_done, mark_done
from clustering.kmeans import DEFAULT_LLOYD_TOL, fit_kmeans, inertia
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

__all__ = ["load_features", "learn_kmeans", "save_model", "build_parser", "main"]


def load_features(
    feat_dir: str,
    split: str,
    nshard: int,
    percent: float = -1.0,
    seed: int = 0,
    skip_nonfinite: bool = False,
    tsv_dir: Optional[str] = None,
) -> List[np.ndarray]:
    """Features of all shards, one array per non-empty shard, checked finite.

    `percent < 0`: the memory-mapped shards themselves; else an in-memory float32 sample of
    `ceil(percent * n_utts)` whole utterances per shard (same selection for the same seed).
    Rows with NaN/inf raise `NonFiniteFeatureError` (all shards are checked first, so the message
    lists every bad shard), or are dropped when `skip_nonfinite`. `tsv_dir` (holding
    `{split}.tsv`) lets the message name utterance ids.
    """
    if percent == 0 or percent > 1:
        raise ValueError(f"percent must be in (0, 1] or negative (all frames), got {percent}")
    rng = np.random.default_rng(seed)
    out = []
    problems: List[str] = []
    dropped = first_utt = 0
    for rank in range(nshard):
        feats, lens = load_feature_shard(feat_dir, split, rank, nshard)
        offsets = np.concatenate([[0], np.cumsum(lens)])
        used = None  # shard row of each loaded row (None: all rows, in order)
        if percent > 0 and len(lens):
            pick = np.sort(rng.choice(len(lens), size=math.ceil(len(lens) * percent), replace=False))
            used = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in pick])
            feats = np.concatenate([feats[offsets[i] : offsets[i + 1]] for i in pick]).astype(np.float32)
        bad = nonfinite_rows(feats)
        if bad.size:
            ids = None
            if tsv_dir is not None:
                ids = [r.id for r in read_shard_rows(Path(tsv_dir) / f"{split}.tsv", nshard, rank)[1]]
            npy = Path(feat_dir) / f"{shard_name(split, rank, nshard)}.npy"
            problems.append(describe_nonfinite(npy, bad if used is None else used[bad], lens, ids, first_utt))
            if skip_nonfinite:
                keep = np.ones(feats.shape[0], dtype=bool)
                keep[bad] = False
                feats = np.asarray(feats[keep], dtype=np.float32)
                dropped += int(bad.size)
        first_utt += len(lens)
        if feats.shape[0]:
            out.append(feats)
    if problems and not skip_nonfinite:
        raise NonFiniteFeatureError(
            "; ".join(problems) + ". Redo the feature dump (a diverged checkpoint gives NaN features), "
            "or pass --skip-nonfinite to drop these frames"
        )
    for p in problems:
        logger.warning("dropped (--skip-nonfinite): %s", p)
    if not out:
        raise ValueError(f"no frames in {feat_dir}/{split}_*_{nshard}.npy")
    logger.info(
        "loaded %d frames of dim %d from %d shards%s", sum(f.shape[0] for f in out), out[0].shape[1], nshard,
        f"; dropped {dropped} non-finite frames" if skip_nonfinite else "",
    )
    return out


def save_model(model: object, km_path: str | os.PathLike) -> None:
    """joblib-dump `model` (or np.save its centroids for a `.npy` path) through a temp file."""
    km_path = Path(km_path)
    with atomic_path(km_path) as tmp:
        if km_path.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(model.cluster_centers_, dtype=np.float32))
        else:
            joblib.dump(model, tmp)


def learn_kmeans(
    feat_dir: str,
    split: str,
    nshard: int,
    km_path: str,
    n_clusters: int,
    seed: int = 0,
    percent: float = -1.0,
    init: str = "k-means++",
    max_iter: int = 100,
    batch_size: int = 10000,
    tol: float = 0.0,
    max_no_improvement: int = 100,
    n_init: int = 20,
    reassignment_ratio: float = 0.0,
    backend: str = "fast",
    device: str = "auto",
    lloyd_tol: float = DEFAULT_LLOYD_TOL,
    init_size: Optional[int] = None,
    warm_size: Optional[int] = None,
    warm_inits: int = 3,
    overwrite: bool = False,
    skip_nonfinite: bool = False,
    tsv_dir: Optional[str] = None,
) -> Optional[float]:
    """Fit and save the model; returns the inertia per frame on the training frames (None if skipped).

    Raises `NonFiniteFeatureError` on NaN/inf features (unless `skip_nonfinite`: dropped) and
    `FloatingPointError` (nothing written) when the fitted centroids are not finite.
    """
    km = Path(km_path)
    marker = km.with_name(f".kmeans.{km.name}.done")
    if not overwrite and is_done(marker, [km]):
        logger.info("skip: %s already done (%s)", km, marker.name)
        return None
    marker.unlink(missing_ok=True)
    feats = load_features(feat_dir, split, nshard, percent, seed, skip_nonfinite, tsv_dir)
    start = time.perf_counter()
    if backend == "fast":
        model: object = fit_kmeans(
            feats, n_clusters, seed=seed, init=init, n_init=n_init, init_size=init_size,
            warm_size=warm_size, warm_inits=warm_inits, max_iter=max_iter, tol=lloyd_tol, device=device,
        )
    elif backend == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        model = MiniBatchKMeans(
            n_clusters=n_clusters, init=init, max_iter=max_iter, batch_size=batch_size, verbose=1,
            compute_labels=False, tol=tol, max_no_improvement=max_no_improvement, init_size=None,
            n_init=n_init, reassignment_ratio=reassignment_ratio, random_state=seed,
        )
        model.fit(np.concatenate(feats) if len(feats) > 1 else np.asarray(feats[0]))
    else:
        raise ValueError(f"unknown backend {backend!r} (fast or sklearn)")
    elapsed = time.perf_counter() - start
    centers = np.asarray(model.cluster_centers_)
    if not np.isfinite(centers).all():
        bad = int((~np.isfinite(centers).all(axis=1)).sum())
        raise FloatingPointError(f"{km}: {bad} of {centers.shape[0]} centroids are NaN/inf; model not written")
    save_model(model, km)
    mark_done(marker)
    total, n = inertia(feats, model.cluster_centers_, device=device)
    logger.info("%s k-means: %d clusters in %.1f s; inertia per frame %.5f on %d frames -> %s", backend, n_clusters, elapsed, total / n, n, km)
    return total / n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("feat_dir")
    p.add_argument("split")
    p.add_argument("nshard", type=int)
    p.add_argument("km_path")
    p.add_argument("n_clusters", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--percent", type=float, default=-1, help="fraction of utterances per shard; <0: all")
    p.add_argument("--init", default="k-means++", choices=["k-means++", "random"])
    p.add_argument("--max-iter", "--max_iter", dest="max_iter", type=int, default=100)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=10000, help="sklearn only")
    p.add_argument("--tol", type=float, default=0.0, help="sklearn only")
    p.add_argument("--max-no-improvement", "--max_no_improvement", dest="max_no_improvement", type=int, default=100, help="sklearn only")
    p.add_argument("--n-init", "--n_init", dest="n_init", type=int, default=20)
    p.add_argument("--reassignment-ratio", "--reassignment_ratio", dest="reassignment_ratio", type=float, default=0.0, help="sklearn only")
    p.add_argument("--backend", choices=["fast", "sklearn"], default="fast")
    p.add_argument("--device", default="auto", help="fast backend / inertia: cpu, cuda or auto")
    p.add_argument("--lloyd-tol", type=float, default=DEFAULT_LLOYD_TOL, help="fast: stop when a pass gains less (relative)")
    p.add_argument("--init-size", type=int, default=None, help="fast: frames sampled for seeding")
    p.add_argument("--warm-size", type=int, default=None, help="fast: frames sampled for the warm start")
    p.add_argument("--warm-inits", type=int, default=3, help="fast: best seedings refined on the warm sample")
    p.add_argument("--overwrite", action="store_true", help="refit even if the model is done")
    p.add_argument("--skip-nonfinite", action="store_true", help="drop NaN/inf frames (counted) instead of stopping")
    p.add_argument("--tsv-dir", default=None, help="directory with {split}.tsv: error messages name utterance ids")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logger.info("args: %s", vars(args))
    return refusal_exit_code(lambda: learn_kmeans(**vars(args)))


if __name__ == "__main__":
    from avdata.procs import run_main

    run_main(main)
