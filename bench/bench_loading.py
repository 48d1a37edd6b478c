"""Data-loading speed per loader process: `AVHubertDataset` items + collate on 3 s clips.

Writes `--clips` synthetic utterances of `--frames` video frames (96x96 mouth-ROI-like mp4 + 16 kHz
wav, `demo.synthetic_data.make_corpus`; `--codec h264` re-encodes the videos as preparation writes
them, `mp4v` keeps the demo corpus's MPEG-4 part 2), then, for the training transforms (random
88x88 crop + flip, random time crop) and the valid ones (center crop), runs `ds[i]` + `ds.collater`
in batches of `--batch` in this one process and prints:

- clips/s per process, by wall clock and by CPU time (`time.process_time`, all threads of the
  process: the rate of one loader worker on a core of its own, robust to other load on the machine);
  the process is set up as a DataLoader worker of the dataset would be (1 torch thread, the
  allocator setting of `avdata.memory`);
- where the CPU time goes: video decode, video transforms, audio read, audio features, labels,
  collate, other (timers wrapped around the dataset's own calls);
- peak RSS; with `--workers N`, the rate of a `torch.utils.data.DataLoader` with N workers;
- loader workers one GPU needs to be fed `--gpu-frames-per-s` video frames (default 40,000/s, the
  issue-13 target for Base pre-training on an H200; 533 clips/s of 3 s) = that rate / the
  per-worker CPU rate.

`--repo PATH` imports the project from another checkout (e.g. a `git worktree` of an older
commit) for A/B runs of the same script in one sitting; alternate the runs, the machine's load
moves the numbers by +-20 %. Examples:
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_loading.py --codec mp4v --workers 1
    git worktree add /tmp/base 8cea09d
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_loading.py --repo /tmp/base --corpus /tmp/clips
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_loading.py --corpus /tmp/clips
"""

import argparse
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

STAGES = ("video decode", "video transforms", "audio read", "audio features", "labels", "collate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--frames", type=int, default=75, help="video frames per clip (25 fps: 75 = 3 s)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--codec", choices=("h264", "mp4v", "both"), default="both")
    p.add_argument("--repeats", type=int, default=5, help="passes over the corpus per measurement (median)")
    p.add_argument("--modes", nargs="+", choices=("train", "valid"), default=["train", "valid"])
    p.add_argument("--workers", type=int, nargs="*", default=[], help="also time a DataLoader with N workers")
    p.add_argument("--gpu-frames-per-s", type=float, default=40000.0)
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                   help="checkout to import the project from (default: this one)")
    p.add_argument("--corpus", type=Path, default=None, help="reuse/keep the generated corpus here")
    return p


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_clips(out: Path, clips: int, frames: int, codec: str) -> Path:
    """The synthetic corpus (mp4v videos), re-encoded to `codec`; reused when `out` holds it."""
    from avdata.manifest import read_manifest, resolve
    from avdata.video import load_video, write_video
    from demo.synthetic_data import make_corpus

    if (out / "train.tsv").is_file():
        return out
    make_corpus(out, {"train": clips}, num_classes=8, min_frames=frames, max_frames=frames, seed=0)
    if codec == "h264":
        root, rows = read_manifest(str(out / "train.tsv"))
        for r in rows:
            path = resolve(root, r.video)
            write_video(path, load_video(path), codec="h264")
    return out


def build_dataset(corpus: Path, frames: int, train: bool):
    from fairseq.data import Dictionary

    from avhubert.dataset import AVHubertDataset
    from avhubert.task import LabelEncoder

    d = Dictionary.load(str(corpus / "dict.km.txt"))
    return AVHubertDataset(
        str(corpus / "train.tsv"), 25, [str(corpus / "train.km")], [25], [d.pad()], [d.eos()], [LabelEncoder(d)],
        max_sample_size=frames, stack_order_audio=4, normalize=True, image_aug=train, random_crop=train,
    )


class StageTimer:
    """CPU seconds per stage, by wrapping the callables the dataset module looks up."""

    def __init__(self) -> None:
        self.cpu: Dict[str, float] = {s: 0.0 for s in STAGES}

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[stage] += time.process_time() - t0

        return timed

    @contextmanager
    def installed(self, ds) -> Iterator[None]:
        import avhubert.dataset as mod

        names = {"load_video": "video decode", "transform_video": "video transforms", "read_wav": "audio read",
                 "audio_features": "audio features"}
        saved = {n: getattr(mod, n) for n in names}
        for n, stage in names.items():
            setattr(mod, n, self.wrap(stage, saved[n]))
        ds.get_labels = self.wrap("labels", ds.get_labels)
        ds.collater = self.wrap("collate", ds.collater)
        try:
            yield
        finally:
            for n, fn in saved.items():
                setattr(mod, n, fn)
            del ds.get_labels, ds.collater


def one_pass(ds, batch: int) -> None:
    for start in range(0, len(ds), batch):
        ds.collater([ds[i] for i in range(start, min(start + batch, len(ds)))])


def measure(ds, batch: int, repeats: int) -> Dict[str, float]:
    one_pass(ds, batch)  # warm-up: page cache, lazy imports, cached tables
    walls, cpus = [], []
    for epoch in range(repeats):
        ds.set_epoch(epoch + 2)  # fresh crops and flips each pass
        w0, c0 = time.perf_counter(), time.process_time()
        one_pass(ds, batch)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    timer = StageTimer()
    with timer.installed(ds):
        c0 = time.process_time()
        one_pass(ds, batch)
        total = time.process_time() - c0
    n = len(ds)
    out = {"wall": n / statistics.median(walls), "cpu": n / statistics.median(cpus)}
    out.update({s: 1e3 * v / n for s, v in timer.cpu.items()})
    out["other"] = 1e3 * (total - sum(timer.cpu.values())) / n
    return out


def loader_rate(ds, batch: int, workers: int, repeats: int) -> Dict[str, float]:
    """A DataLoader over `repeats` passes: clips/s by wall clock, and per CPU-second of the
    workers (their rusage once joined; fork and start-up included) and of this process."""
    import torch

    batches = [list(range(s, min(s + batch, len(ds)))) for s in range(0, len(ds), batch)] * repeats
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=ds.collater, num_workers=workers)
    clips = len(ds) * repeats
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0, m0 = time.perf_counter(), time.process_time()
    for _ in loader:
        pass
    wall, main_cpu = time.perf_counter() - w0, time.process_time() - m0
    del loader  # workers joined
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"wall": clips / wall, "worker_cpu": clips / child_cpu if child_cpu else float("nan"),
            "main_cpu": clips / main_cpu}


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    sys.path.insert(0, str(a.repo.resolve()))
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker
    import avdata

    keep_freed_memory = None  # the allocator setting AVHubertDataset applies in its DataLoader workers
    if (Path(avdata.__file__).parent / "memory.py").is_file():  # older checkouts have none
        from avdata.memory import keep_freed_memory
    worker_setup = "none" if keep_freed_memory is None else ("glibc keep_freed_memory" if keep_freed_memory() else "none (no mallopt)")
    codecs = ("h264", "mp4v") if a.codec == "both" else (a.codec,)
    print(f"project {a.repo.resolve()}, {a.clips} clips x {a.frames} frames ({a.frames / 25:g} s, 96x96 mp4 + "
          f"16 kHz wav), batches of {a.batch}, 1 process, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; loader-worker setup: {worker_setup}")
    with tempfile.TemporaryDirectory() as tmp:
        for codec in codecs:
            corpus = make_clips((a.corpus or Path(tmp)) / codec, a.clips, a.frames, codec)
            for mode in a.modes:
                ds = build_dataset(corpus, a.frames, mode == "train")
                r = measure(ds, a.batch, a.repeats)
                print(f"{codec:4s} {mode:5s}: {r['cpu']:6.1f} clips/s per CPU-second ({r['wall']:6.1f} by wall "
                      f"clock); ms per clip: " + ", ".join(f"{s} {r[s]:.2f}" for s in STAGES + ("other",)))
                gpu_clips = a.gpu_frames_per_s / a.frames
                print(f"           one GPU at {a.gpu_frames_per_s:,.0f} frames/s ({gpu_clips:,.0f} clips/s) needs "
                      f"{math.ceil(gpu_clips / r['cpu'])} loader workers (one core each)")
                for n in a.workers:
                    lr = loader_rate(ds, a.batch, n, a.repeats)
                    print(f"           DataLoader, {n} workers: {lr['wall']:.1f} clips/s by wall clock; "
                          f"{lr['worker_cpu']:.1f} clips per CPU-second of the workers, "
                          f"{lr['main_cpu']:.0f} per CPU-second of the receiving process")
    print(f"peak RSS {peak_rss_mb():.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
