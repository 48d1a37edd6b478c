"""One clustering iteration: features -> k-means -> frame labels -> merged labels + dictionary.

Stages (`--stage`/`--stop-stage`; every shard step is resumable, see `clustering.shards`):
1. features of the train split (`--nshard` shards) and of each valid split (`--valid-nshard`
   shards): MFCC (`--feature mfcc`, 100 Hz) or layer `--layer` of checkpoint `--ckpt`
   (`--feature avhubert`, 25 Hz) -> `{out}/feat/{split}_{r}_{N}.npy/.len`;
2. k-means on the train features (`--percent` of the utterances per shard) -> `{out}/kmeans.bin`;
3. labels of every shard -> `{out}/shards/{split}_{r}_{N}.km`;
4. merged `{out}/{split}.{ext}` (line count checked against the manifest; label lengths checked
   against the video durations with the dataset's 0.1 s rule) and `{out}/dict.{ext}.txt`
   (ids 0..K-1, count 10000); `--label-ext mfcc` gives the naming iteration-1 configs expect.

Jobs run in this process, in a local process pool (`--num-workers N`; the workers exit when this
process dies, `avdata.procs`), or on Slurm through submitit when `--slurm-partition` is
given. NaN/inf features stop the iteration with the shard, rows and utterance ids;
`--skip-nonfinite` keeps them in the feature shards, drops them from k-means and labels them
after zero-filling (`clustering.dump_km_label`), with counts in the log. Examples:

    python -m clustering.run_iteration --tsv-dir data --out-dir labels/iter1 --feature mfcc \\
        --n-clusters 100 --nshard 4 --label-ext mfcc --num-workers 2
    python -m clustering.run_iteration --tsv-dir data --out-dir labels/iter2 --feature avhubert \\
        --ckpt ckpt/iter1.pt --layer 9 --n-clusters 500 --nshard 4

Reference parity: the options of `submit_cluster.py` are accepted (`--tsv --output --ckpt --nlayer
--ncluster --nshard --percent --mfcc --slurm-partition`); unlike there, `--percent` is honoured
(the reference hard-coded 0.1, which is this default), the dictionary is written for every
feature type, and MFCC labels can be named `.mfcc`. k-means options as in `learn_kmeans`
(the reference used batch size 20000 here).
"""

import argparse
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from avdata.constants import VIDEO_FPS
from avdata.manifest import read_manifest
from avdata.sharding import slurm_executor
from clustering.kmeans import DEFAULT_LLOYD_TOL
from clustering.merge import merge_labels, write_cluster_dict
from clustering.shards import refusal_exit_code
from avdata.procs import die_with_parent

logger = logging.getLogger(__name__)

__all__ = ["IterationConfig", "run_iteration", "check_label_alignment", "build_parser", "main"]

LABEL_RATE_HZ = {"mfcc": 100, "avhubert": 25}
ALIGN_TOLERANCE_SEC = 0.1  # the dataset drops utterances whose labels differ more from the video


@dataclass
class IterationConfig:
    """Everything a job needs (plain values, picklable for process pools and Slurm)."""

    tsv_dir: str
    out_dir: str
    feature: str = "mfcc"
    ckpt: Optional[str] = None
    layer: int = 12
    n_clusters: int = 500
    nshard: int = 100
    percent: float = 0.1
    train_split: str = "train"
    valid_splits: List[str] = field(default_factory=lambda: ["valid"])
    valid_nshard: int = 1
    label_ext: str = "km"
    backend: str = "fast"
    seed: int = 0
    init: str = "k-means++"
    max_iter: int = 100
    batch_size: int = 20000
    n_init: int = 20
    lloyd_tol: float = DEFAULT_LLOYD_TOL
    device: str = "auto"
    modalities: List[str] = field(default_factory=lambda: ["audio", "video"])
    batch_frames: int = 1000
    loader_workers: int = 0
    max_chunk: int = 1_600_000
    user_dir: Optional[str] = None
    overwrite: bool = False
    skip_nonfinite: bool = False

    @property
    def feat_dir(self) -> str:
        return os.path.join(self.out_dir, "feat")

    @property
    def shard_lab_dir(self) -> str:
        return os.path.join(self.out_dir, "shards")

    @property
    def km_path(self) -> str:
        return os.path.join(self.out_dir, "kmeans.bin")

    def splits(self) -> List[Tuple[str, int]]:
        return [(self.train_split, self.nshard)] + [(s, self.valid_nshard) for s in self.valid_splits]


# ---------------------------------------------------------------------- jobs (top level: picklable)
def feature_job(cfg: IterationConfig, split: str, nshard: int, rank: int) -> bool:
    """Stage 1 for one shard."""
    if cfg.feature == "mfcc":
        from clustering.dump_mfcc_feature import dump_mfcc_shard

        return dump_mfcc_shard(
            cfg.tsv_dir, split, nshard, rank, cfg.feat_dir, overwrite=cfg.overwrite, progress=False,
            allow_nonfinite=cfg.skip_nonfinite,
        )
    if cfg.feature == "avhubert":
        from clustering.dump_hubert_feature import dump_hubert_shard

        if not cfg.ckpt:
            raise ValueError("--feature avhubert needs --ckpt")
        return dump_hubert_shard(
            cfg.tsv_dir, split, cfg.ckpt, cfg.layer, nshard, rank, cfg.feat_dir, cfg.max_chunk, cfg.user_dir,
            cfg.device, cfg.modalities, cfg.batch_frames, cfg.loader_workers, cfg.overwrite, progress=False,
            allow_nonfinite=cfg.skip_nonfinite,
        )
    raise ValueError(f"unknown feature {cfg.feature!r} (mfcc or avhubert)")


def kmeans_job(cfg: IterationConfig) -> Optional[float]:
    """Stage 2."""
    from clustering.learn_kmeans import learn_kmeans

    return learn_kmeans(
        cfg.feat_dir, cfg.train_split, cfg.nshard, cfg.km_path, cfg.n_clusters, seed=cfg.seed, percent=cfg.percent,
        init=cfg.init, max_iter=cfg.max_iter, batch_size=cfg.batch_size, n_init=cfg.n_init, backend=cfg.backend,
        device=cfg.device, lloyd_tol=cfg.lloyd_tol, overwrite=cfg.overwrite, skip_nonfinite=cfg.skip_nonfinite,
        tsv_dir=cfg.tsv_dir,
    )


def label_job(cfg: IterationConfig, split: str, nshard: int, rank: int) -> bool:
    """Stage 3 for one shard."""
    from clustering.dump_km_label import dump_km_label

    return dump_km_label(
        cfg.feat_dir, split, cfg.km_path, nshard, rank, cfg.shard_lab_dir, cfg.device, cfg.overwrite, progress=False,
        skip_nonfinite=cfg.skip_nonfinite, tsv_dir=cfg.tsv_dir,
    )


# ---------------------------------------------------------------------- executors
def _init_worker(threads: int, parent_pid: int) -> None:
    die_with_parent(parent_pid)  # an OOM-killed driver must not leave its workers running
    torch.set_num_threads(threads)


class LocalRunner:
    """Runs jobs in this process (`workers <= 1`) or in a spawn-started process pool."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def map(self, fn: Callable[..., Any], arg_lists: Sequence[Tuple]) -> List[Any]:
        if self.workers <= 1 or len(arg_lists) <= 1:
            return [fn(*a) for a in arg_lists]
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(threads, os.getpid()),
        ) as pool:
            futures = [pool.submit(fn, *a) for a in arg_lists]
            return [f.result() for f in futures]  # re-raises a job's exception


class SlurmRunner:
    """Runs jobs as a Slurm job array through submitit (imported only when used)."""

    def __init__(self, folder: str, partition: str, timeout_min: int = 240, gpus: int = 0, cpus: int = 8, mem_gb: int = 32) -> None:
        self.executor = slurm_executor(folder, partition, timeout_min, cpus, gpus_per_node=gpus, mem_gb=mem_gb)

    def map(self, fn: Callable[..., Any], arg_lists: Sequence[Tuple]) -> List[Any]:
        if not arg_lists:
            return []
        jobs = self.executor.map_array(fn, *zip(*arg_lists))
        logger.info("submitted %d Slurm jobs (%s...)", len(jobs), jobs[0].job_id)
        return [j.result() for j in jobs]


# ---------------------------------------------------------------------- checks and driver
def check_label_alignment(tsv_path: str, label_path: str, label_rate_hz: float) -> List[str]:
    """Ids whose label count differs from the manifest video duration by >= 0.1 s (dataset rule)."""
    _, rows = read_manifest(tsv_path)
    bad = []
    with open(label_path, "r", encoding="utf-8") as f:
        for row, line in zip(rows, f):
            if abs(row.num_video_frames / VIDEO_FPS - len(line.split()) / label_rate_hz) >= ALIGN_TOLERANCE_SEC:
                bad.append(row.id)
    return bad


def run_iteration(cfg: IterationConfig, runner: Any = None, stage: int = 1, stop_stage: int = 4) -> None:
    """Run stages `stage..stop_stage` of one iteration with `runner` (default: in-process)."""
    runner = runner or LocalRunner(1)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    logger.info("iteration config: %s", asdict(cfg))
    shards = [(cfg, split, n, r) for split, n in cfg.splits() for r in range(n)]
    if stage <= 1 <= stop_stage:
        done = runner.map(feature_job, shards)
        logger.info("stage 1 features: %d shards written, %d already done", sum(done), len(done) - sum(done))
    if stage <= 2 <= stop_stage:
        (inertia,) = runner.map(kmeans_job, [(cfg,)])
        logger.info("stage 2 k-means: %s", "already done" if inertia is None else f"inertia/frame {inertia:.4f}")
    if stage <= 3 <= stop_stage:
        done = runner.map(label_job, shards)
        logger.info("stage 3 labels: %d shards written, %d already done", sum(done), len(done) - sum(done))
    if stage <= 4 <= stop_stage:
        rate = LABEL_RATE_HZ[cfg.feature]
        for split, n in cfg.splits():
            tsv = os.path.join(cfg.tsv_dir, f"{split}.tsv")
            out = os.path.join(cfg.out_dir, f"{split}.{cfg.label_ext}")
            merge_labels(cfg.shard_lab_dir, split, n, out, tsv)
            bad = check_label_alignment(tsv, out, rate)
            if bad:
                logger.warning("%s: %d utterances whose labels (%d Hz) and video differ by >= %.1f s; the dataset "
                               "will skip them (first: %s)", out, len(bad), rate, ALIGN_TOLERANCE_SEC, bad[:5])
        write_cluster_dict(os.path.join(cfg.out_dir, f"dict.{cfg.label_ext}.txt"), cfg.n_clusters)
        logger.info("stage 4: labels and dict.%s.txt in %s", cfg.label_ext, cfg.out_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = IterationConfig("", "")
    p.add_argument("--tsv-dir", "--tsv", dest="tsv_dir", required=True, help="directory with {split}.tsv")
    p.add_argument("--out-dir", "--output", dest="out_dir", required=True)
    p.add_argument("--feature", choices=["mfcc", "avhubert"], default=None, help="default: avhubert if --ckpt else mfcc")
    p.add_argument("--mfcc", action="store_true", help="same as --feature mfcc (submit_cluster.py flag)")
    p.add_argument("--ckpt", default=None, help="pre-trained checkpoint for --feature avhubert")
    p.add_argument("--layer", "--nlayer", dest="layer", type=int, default=d.layer)
    p.add_argument("--n-clusters", "--ncluster", dest="n_clusters", type=int, default=d.n_clusters)
    p.add_argument("--nshard", type=int, default=d.nshard, help="shards of the train split")
    p.add_argument("--valid-nshard", type=int, default=d.valid_nshard)
    p.add_argument("--percent", type=float, default=d.percent, help="utterances per shard used by k-means; <0: all")
    p.add_argument("--train-split", default=d.train_split)
    p.add_argument("--valid-splits", nargs="*", default=d.valid_splits)
    p.add_argument("--label-ext", choices=["km", "mfcc"], default=d.label_ext)
    p.add_argument("--backend", choices=["fast", "sklearn"], default=d.backend)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--init", choices=["k-means++", "random"], default=d.init)
    p.add_argument("--max-iter", type=int, default=d.max_iter)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sklearn backend")
    p.add_argument("--n-init", type=int, default=d.n_init)
    p.add_argument("--lloyd-tol", type=float, default=d.lloyd_tol, help="fast backend")
    p.add_argument("--device", default=d.device)
    p.add_argument("--modalities", nargs="+", choices=["audio", "video"], default=d.modalities)
    p.add_argument("--batch-frames", type=int, default=d.batch_frames)
    p.add_argument("--loader-workers", type=int, default=d.loader_workers, help="input-loading processes per AV-HuBERT job")
    p.add_argument("--max-chunk", type=int, default=d.max_chunk)
    p.add_argument("--user-dir", default=None)
    p.add_argument("--num-workers", type=int, default=1, help="local parallel jobs")
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--stop-stage", type=int, default=4)
    p.add_argument("--overwrite", action="store_true", help="redo finished shards and the k-means model")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="keep NaN/inf features, drop them from k-means, label them after zero-filling (counted)")
    p.add_argument("--slurm-partition", "--slurm_partition", dest="slurm_partition", default=None)
    p.add_argument("--slurm-timeout-min", type=int, default=240)
    p.add_argument("--slurm-gpus", type=int, default=0)
    p.add_argument("--slurm-cpus", type=int, default=8)
    p.add_argument("--slurm-mem-gb", type=int, default=32)
    return p


def config_from_args(args: argparse.Namespace) -> IterationConfig:
    """Build the `IterationConfig` of parsed arguments (resolving `--mfcc` / the default feature)."""
    feature = "mfcc" if args.mfcc else (args.feature or ("avhubert" if args.ckpt else "mfcc"))
    fields = {k: v for k, v in vars(args).items() if k in IterationConfig.__dataclass_fields__}
    return IterationConfig(**{**fields, "feature": feature})


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.slurm_partition:
        runner: Any = SlurmRunner(
            os.path.join(cfg.out_dir, "slurm"), args.slurm_partition, args.slurm_timeout_min,
            args.slurm_gpus, args.slurm_cpus, args.slurm_mem_gb,
        )
    else:
        runner = LocalRunner(args.num_workers)
    return refusal_exit_code(lambda: run_iteration(cfg, runner, args.stage, args.stop_stage))


if __name__ == "__main__":
    from avdata.procs import run_main

    run_main(main)
