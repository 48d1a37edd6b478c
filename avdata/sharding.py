"""Sharding: the one shard formula of the project and Slurm job arrays (submitit).

Reference parity (spec section 6, `get_path_iterator`): shard `rank` of `nshard` over `total`
sorted items is the contiguous block `[rank * n, (rank + 1) * n)` with `n = ceil(total / nshard)`,
clipped to `total`; unlike the reference, empty trailing shards are allowed.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

__all__ = ["shard_range", "shard_items", "slurm_executor", "maybe_submit_slurm", "strip_flags"]


def shard_range(total: int, nshard: int, rank: int) -> Tuple[int, int]:
    """`(start, end)` of shard `rank` of `nshard` over `total` items (see the module docstring)."""
    if nshard < 1:
        raise ValueError(f"nshard must be >= 1, got {nshard}")
    if not 0 <= rank < nshard:
        raise ValueError(f"rank must be in [0, {nshard}), got {rank}")
    per_shard = math.ceil(total / nshard) if total else 0
    start = min(rank * per_shard, total)
    end = min((rank + 1) * per_shard, total)
    logger.info("rank %d/%d: %d items (%d-%d) of %d", rank, nshard, end - start, start, end, total)
    return start, end


def shard_items(items: Sequence, nshard: int, rank: int) -> list:
    """The items of shard `rank` (see `shard_range`)."""
    start, end = shard_range(len(items), nshard, rank)
    return list(items[start:end])


def slurm_executor(folder: str, partition: str, timeout_min: int, cpus: int, **params: Any) -> Any:
    """A submitit `AutoExecutor` for `partition` (submitit is imported only here).

    `params` go to `update_parameters` as well (e.g. `gpus_per_node`, `mem_gb`, `name`).
    """
    try:
        import submitit
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("--slurm-partition needs submitit: `pip install submitit`") from exc
    executor = submitit.AutoExecutor(folder=folder)
    executor.update_parameters(slurm_partition=partition, timeout_min=timeout_min, cpus_per_task=cpus, **params)
    return executor


def _run_shard(main: Callable[[List[str]], int], argv: List[str], rank: int, nshard: int) -> int:
    return main(list(argv) + ["--rank", str(rank), "--nshard", str(nshard)])


def maybe_submit_slurm(
    args: argparse.Namespace, main: Callable[[List[str]], int], argv: Optional[Sequence[str]], job_name: str
) -> Optional[int]:
    """If `args.slurm_partition` is set, submit one Slurm array task per shard and return 0.

    Returns `None` when no partition was given (run locally). The submitted tasks call
    `main(argv + ['--rank', r, '--nshard', N])` without the Slurm flag. `args` needs `nshard`,
    `slurm_log_dir`, `slurm_time_min` and `slurm_cpus` (`preparation.common.add_common_args`).
    """
    if not getattr(args, "slurm_partition", None):
        return None
    argv = strip_flags(list(argv or []), {"--slurm-partition", "--slurm_partition", "--rank", "--nshard"})
    executor = slurm_executor(
        args.slurm_log_dir, args.slurm_partition, args.slurm_time_min, args.slurm_cpus,
        name=job_name, slurm_array_parallelism=args.nshard,
    )
    jobs = executor.map_array(
        _run_shard, [main] * args.nshard, [argv] * args.nshard, list(range(args.nshard)), [args.nshard] * args.nshard
    )
    logger.info("submitted %d Slurm tasks: %s", len(jobs), ", ".join(j.job_id for j in jobs))
    return 0


def strip_flags(argv: List[str], flags: set) -> List[str]:
    """Remove `--flag value` and `--flag=value` occurrences of `flags` from `argv`."""
    out: List[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in flags:
            skip = "=" not in tok
            continue
        out.append(tok)
    return out
