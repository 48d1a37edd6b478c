"""Speed of the built-in demo corpus generator (`demo.corpus.generate_corpus`).

Generates a corpus from scratch into a temporary folder (or `--out-dir`, which must be empty
or absent) and prints wall time, utterances per second, seconds of audio-visual data per
second, and peak resident memory of the driver and of its worker processes.
Target (issue 6): the default corpus (600/60/100 utterances + 16 babble files) in about
1-2 minutes on 2 cores.

Example:
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/bench_demo_corpus.py --num-workers 2
"""

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

from demo.corpus import SPLITS, CorpusConfig, generate_corpus


def main() -> None:
    d = CorpusConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=None, help="keep the corpus here (default: a temporary folder)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--num-train", type=int, default=d.num_train)
    p.add_argument("--num-valid", type=int, default=d.num_valid)
    p.add_argument("--num-test", type=int, default=d.num_test)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = CorpusConfig(seed=args.seed, num_train=args.num_train, num_valid=args.num_valid, num_test=args.num_test)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out_dir or Path(tmp) / "corpus")
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out} is not empty; the benchmark needs a fresh folder")
        load_before = os.getloadavg()
        start = time.perf_counter()
        paths = generate_corpus(out, cfg, num_workers=args.num_workers, progress=False)
        wall = time.perf_counter() - start
        from avdata.manifest import read_manifest

        rows = [r for s in SPLITS for r in read_manifest(paths.manifests[s])[1]]
        audio_sec = sum(r.num_audio_samples for r in rows) / 16000
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n_noise = cfg.num_noise_train + cfg.num_noise_valid + cfg.num_noise_test
    print(f"utterances: {len(rows)} ({args.num_train}/{args.num_valid}/{args.num_test}) + {n_noise} babble files")
    print(f"workers: {args.num_workers}, cpus: {os.cpu_count()}, load average before: {load_before[0]:.1f}")
    print(f"wall time: {wall:.1f} s  ({len(rows) / wall:.1f} utterances/s, {audio_sec / wall:.1f} s of AV data/s)")
    print(f"data: {audio_sec / 60:.1f} min of audio-visual speech, {size_mb:.1f} MiB on disk")
    print(f"peak RSS: driver {peak_self:.0f} MiB, largest worker/child {peak_children:.0f} MiB")


if __name__ == "__main__":
    main()
