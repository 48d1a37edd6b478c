"""k-means speed and quality: the fast backend vs scikit-learn MiniBatchKMeans (reference settings).

Data: `--frames` x 39 float32 features from an anisotropic Gaussian mixture with `--components`
components of uneven weight (`--data gmm`, default), or real MFCC + delta features of generated
speech-like audio (`--data mfcc`, via `clustering.dump_mfcc_feature`). Each backend fits
`--clusters` centroids for each seed in its own spawned process (so peak memory is per backend):
- `sklearn`: `MiniBatchKMeans(init="k-means++", max_iter=100, batch_size=10000, tol=0,
  max_no_improvement=100, n_init=20, reassignment_ratio=0, compute_labels=False, init_size=None)`,
  the reference `learn_kmeans.py` defaults;
- `fast`: `clustering.kmeans.fit_kmeans` with the `learn_kmeans --backend fast` defaults.
Prints per run: fit wall and CPU time, inertia per frame (the same exact computation for both, on all frames),
peak RSS; then the speed-up of the median times and the relative inertia difference.
Target (issue 4): >= 5x faster at an inertia no worse than 1 % above scikit-learn's.

Example:
    PYTHONPATH=. .venv/bin/python bench/bench_kmeans.py --threads 2 --seeds 0 1 2
"""

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from typing import Dict, List, Optional

import numpy as np


def gmm_features(frames: int, components: int, dim: int = 39, seed: int = 1234) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (components, dim))
    scales = rng.uniform(0.5, 2.0, (components, dim))
    comp = rng.choice(components, frames, p=rng.dirichlet(np.ones(components)))
    return (means[comp] + rng.normal(size=(frames, dim)) * scales[comp]).astype(np.float32)


def mfcc_features(frames: int, seed: int = 1234) -> np.ndarray:
    from clustering.dump_mfcc_feature import mfcc_with_deltas
    from tests.clustering.synth import speech_like

    rng = np.random.default_rng(seed)
    out, total = [], 0
    while total < frames:
        wav = speech_like(int(rng.integers(3, 12) * 16000), rng).astype(np.float32) / 32768
        feats = mfcc_with_deltas(wav)
        out.append(feats)
        total += len(feats)
    return np.concatenate(out)[:frames]


def _run(backend: str, data: np.ndarray, clusters: int, seed: int, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from clustering.kmeans import fit_kmeans, inertia

    start, cpu_start = time.perf_counter(), time.process_time()
    if backend == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        model = MiniBatchKMeans(
            n_clusters=clusters, init="k-means++", max_iter=100, batch_size=10000, tol=0.0,
            max_no_improvement=100, n_init=20, reassignment_ratio=0.0, compute_labels=False,
            init_size=None, random_state=seed,
        ).fit(data)
        extra = f"steps {model.n_steps_}"
    else:
        model = fit_kmeans(data, clusters, seed=seed)
        extra = f"lloyd passes {model.n_iter_}"
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    total, n = inertia(data, model.cluster_centers_)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"time": elapsed, "cpu": cpu, "inertia": total / n, "peak_mb": peak_mb, "extra": extra})


def run_backend(backend: str, data: np.ndarray, clusters: int, seed: int, threads: int) -> Dict:
    """Fit in a fresh spawned process (thread env set before numpy/torch load there)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(backend, data, clusters, seed, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{backend} run failed with exit code {proc.exitcode}")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--components", type=int, default=300, help="Gaussian mixture components (gmm data)")
    p.add_argument("--data", choices=["gmm", "mfcc"], default="gmm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--backends", nargs="+", default=["sklearn", "fast"], choices=["sklearn", "fast"])
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    data = gmm_features(args.frames, args.components) if args.data == "gmm" else mfcc_features(args.frames)
    print(f"data: {args.data} {data.shape[0]} x {data.shape[1]}, {args.clusters} clusters, {args.threads} threads")
    results: Dict[str, List[Dict]] = {b: [] for b in args.backends}
    for seed in args.seeds:
        for backend in args.backends:
            r = run_backend(backend, data, args.clusters, seed, args.threads)
            results[backend].append(r)
            print(f"{backend:8s} seed {seed}: {r['time']:7.2f} s wall {r['cpu']:7.2f} s CPU  inertia/frame {r['inertia']:.4f}  "
                  f"peak RSS {r['peak_mb']:.0f} MB  ({r['extra']})")
    summary = {
        b: (statistics.median(x["time"] for x in rs), statistics.median(x["cpu"] for x in rs), statistics.mean(x["inertia"] for x in rs))
        for b, rs in results.items()
    }
    for b, (t, c, i) in summary.items():
        print(f"{b:8s} median {t:.2f} s wall ({data.shape[0] / t:,.0f} frames/s), {c:.2f} s CPU; mean inertia/frame {i:.4f}")
    if "sklearn" in summary and "fast" in summary:
        (ts, cs, i_s), (tf, cf, i_f) = summary["sklearn"], summary["fast"]
        print(f"speed-up {ts / tf:.1f}x wall, {cs / cf:.1f}x CPU; fast inertia {100 * (i_f / i_s - 1):+.2f} % vs sklearn")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
