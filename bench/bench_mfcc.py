"""MFCC (+ deltas) dumping speed, in seconds of audio processed per second.

Writes `--utterances` speech-like 16 kHz wavs of `--seconds` each into a temporary directory with a
manifest, then measures
1. `compute`: `clustering.dump_mfcc_feature.mfcc_with_deltas` on in-memory waveforms;
2. `dump`: the whole shard dump (`dump_mfcc_shard`: read wav, features, streamed `.npy` + `.len`).
Prints wall and CPU time, audio seconds per wall second (real-time factor) and peak RSS.

Example:
    PYTHONPATH=. .venv/bin/python bench/bench_mfcc.py --threads 1 --utterances 40 --seconds 10
"""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import soundfile as sf


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=40)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each utterance")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="best of N for each measurement")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from avdata.manifest import ManifestRow, write_manifest
    from clustering.dump_mfcc_feature import dump_mfcc_shard, mfcc_with_deltas
    from tests.clustering.synth import speech_like

    rng = np.random.default_rng(0)
    n = int(args.seconds * 16000)
    wavs = [speech_like(n, rng) for _ in range(args.utterances)]
    total_sec = args.utterances * args.seconds
    print(f"{args.utterances} utterances x {args.seconds:.1f} s = {total_sec:.0f} s of audio, {args.threads} thread(s)")

    floats = [w.astype(np.float32) / 32768 for w in wavs]
    best = None
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        frames = sum(len(mfcc_with_deltas(x)) for x in floats)
        t, c = time.perf_counter() - t0, time.process_time() - c0
        best = min(best or (t, c), (t, c))
    t, c = best
    print(f"compute: {t:.3f} s wall, {c:.3f} s CPU for {frames} frames -> {total_sec / t:,.0f} s audio / s")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for i, w in enumerate(wavs):
            sf.write(root / f"{i}.wav", w, 16000, subtype="PCM_16")
            rows.append(ManifestRow(f"u{i}", None, f"{i}.wav", len(w) // 640, len(w)))
        write_manifest(root / "train.tsv", str(root), rows)
        best = None
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            dump_mfcc_shard(str(root), "train", 1, 0, str(root / "feat"), overwrite=True, progress=False)
            t, c = time.perf_counter() - t0, time.process_time() - c0
            best = min(best or (t, c), (t, c))
        size_mb = os.path.getsize(root / "feat" / "train_0_1.npy") / 2**20
    t, c = best
    print(f"dump:    {t:.3f} s wall, {c:.3f} s CPU ({size_mb:.1f} MB npy) -> {total_sec / t:,.0f} s audio / s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
