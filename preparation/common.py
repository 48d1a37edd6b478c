"""Helpers specific to the preparation steps: failure logs, the per-item worker loop, list files
and the common CLI flags. Sharding, atomic writes, done markers, ffmpeg and the rates live in
`avdata` (shared with clustering, the plugin and the demo).

Conventions (STYLE.md 7.6):

- Inputs come from a sorted id list, sharded with `avdata.sharding.shard_items`.
- Outputs are written through `avdata.atomic` (temp name in the same folder, renamed).
- A shard that finished with zero failures gets its `avdata.markers` marker
  `.{step}.{rank}_{nshard}.done`.
- Per-item failures go to `failures.{step}.{rank}_{nshard}.tsv` (`id<TAB>error`) and make the
  CLI exit non-zero.
- ffmpeg is always called through `avdata.ffmpeg.run_ffmpeg` (argument list, checked return code).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from avdata.atomic import write_lines
from avdata.markers import done_marker, mark_done
from avdata.procs import die_with_parent

logger = logging.getLogger(__name__)

__all__ = [
    "FailureLog",
    "StepResult",
    "run_items",
    "finish_shard",
    "add_common_args",
    "add_reference_step_args",
    "clip_step_parser",
    "reference_step_argv",
    "add_alias",
    "HelpFormatter",
    "read_list",
    "parse_args",
    "set_verbosity",
]


# --------------------------------------------------------------------------------------------
# list files
# --------------------------------------------------------------------------------------------


def read_list(path: str | os.PathLike) -> List[str]:
    """Read a list file: one entry per line, blank lines dropped, order kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


# --------------------------------------------------------------------------------------------


class FailureLog:
    """Collects `(item_id, error)` pairs and writes them as `id<TAB>error` lines."""

    def __init__(self) -> None:
        self.entries: List[Tuple[str, str]] = []

    def add(self, item_id: str, error: str) -> None:
        one_line = " | ".join(str(error).strip().splitlines()) or "unknown error"
        self.entries.append((item_id, one_line))

    def __len__(self) -> int:
        return len(self.entries)

    def write(self, path: str | os.PathLike) -> None:
        """Write the log; removes a stale log when there are no failures."""
        path = Path(path)
        if not self.entries:
            if path.exists():
                path.unlink()
            return
        write_lines(path, (f"{i}\t{e}" for i, e in self.entries))


@dataclass
class StepResult:
    """Outcome of one shard of one step."""

    processed: int = 0
    skipped: int = 0
    failures: FailureLog = field(default_factory=FailureLog)

    @property
    def ok(self) -> bool:
        return len(self.failures) == 0


def _call(worker: Callable[[str], object], item: str) -> Tuple[str, Optional[str], object]:
    try:
        return item, None, worker(item)
    except Exception as exc:  # noqa: BLE001 - each item's failure is recorded, never swallowed
        return item, f"{type(exc).__name__}: {exc}", None


def run_items(
    items: Sequence[str],
    worker: Callable[[str], object],
    is_finished: Optional[Callable[[str], bool]] = None,
    num_workers: int = 1,
    desc: str = "items",
    progress: bool = True,
) -> Tuple[StepResult, dict]:
    """Run `worker(item)` on each item not already finished; collect failures.

    `worker` must be picklable (a module-level function or `functools.partial`) when
    `num_workers > 1`, which uses a local process pool. Returns `(result, outputs)` where
    `outputs[item]` is the worker's return value for the items processed now.
    """
    from tqdm import tqdm

    result = StepResult()
    todo = []
    for item in items:
        if is_finished is not None and is_finished(item):
            result.skipped += 1
        else:
            todo.append(item)
    if result.skipped:
        logger.info("%s: %d already finished, %d to do", desc, result.skipped, len(todo))
    outputs: dict = {}
    bar = tqdm(total=len(todo), desc=desc, disable=not progress or not todo, unit="item")
    if num_workers > 1 and len(todo) > 1:
        # "spawn": forking a process that holds OpenCV/dlib threads can deadlock the children.
        # Workers exit when this process dies (e.g. OOM-killed): avdata.procs.
        with ProcessPoolExecutor(
            max_workers=num_workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=die_with_parent, initargs=(os.getpid(),),
        ) as pool:
            futures = [pool.submit(_call, worker, item) for item in todo]
            for fut in futures:
                _record(fut.result(), result, outputs)
                bar.update(1)
    else:
        for item in todo:
            _record(_call(worker, item), result, outputs)
            bar.update(1)
    bar.close()
    return result, outputs


def _record(res: Tuple[str, Optional[str], object], result: StepResult, outputs: dict) -> None:
    item, error, value = res
    if error is None:
        result.processed += 1
        outputs[item] = value
    else:
        logger.error("%s: %s", item, error)
        result.failures.add(item, error)


def finish_shard(result: StepResult, out_dir: str | os.PathLike, step: str, rank: int, nshard: int) -> int:
    """Write the failures file, touch the done marker on success; return the exit code."""
    out_dir = Path(out_dir)
    failures_path = out_dir / f"failures.{step}.{rank}_{nshard}.tsv"
    result.failures.write(failures_path)
    logger.info(
        "%s shard %d/%d: %d processed, %d skipped, %d failed",
        step,
        rank,
        nshard,
        result.processed,
        result.skipped,
        len(result.failures),
    )
    if result.ok:
        mark_done(done_marker(out_dir, step, rank, nshard))
        return 0
    logger.error("%d failures listed in %s", len(result.failures), failures_path)
    return 1


# --------------------------------------------------------------------------------------------
# CLI helpers
# --------------------------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the module docstring's layout and shows every default."""


def add_alias(parser: argparse.ArgumentParser, *names: str, **kwargs) -> argparse.Action:
    """`add_argument` whose first name is the kebab-case primary flag; the rest are aliases
    kept for the original scripts' spelling (e.g. `--landmark-dir` with `--landmark`).
    Aliases are listed in the help text."""
    if len(names) > 1:
        extra = ", ".join(names[1:])
        kwargs["help"] = f"{kwargs.get('help', '')} (alias: {extra})".strip()
    return parser.add_argument(*names, **kwargs)


def clip_step_parser(
    doc: Optional[str],
    video_aliases: Sequence[str] = ("--root",),
    list_aliases: Sequence[str] = ("--manifest",),
    ffmpeg_help: str = "ffmpeg executable (default: from PATH)",
) -> argparse.ArgumentParser:
    """Parser of a per-clip step over `--file-list` ids and `--video-dir/{id}{--video-ext}`, with
    `--ffmpeg` and the common flags; the step adds its own options."""
    p = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    add_alias(p, "--video-dir", *video_aliases, required=True, help="folder holding {id}.mp4")
    add_alias(p, "--file-list", *list_aliases, required=True, help="ids, one per line")
    p.add_argument("--video-ext", default=".mp4")
    p.add_argument("--ffmpeg", default=None, help=ffmpeg_help)
    add_common_args(p)
    return p


def add_reference_step_args(parser: argparse.ArgumentParser) -> None:
    """`--ffmpeg --rank --nshard --num-workers --no-progress` of the reference's `--step` scripts
    (`lrs3_prepare`, `vox_prepare`)."""
    parser.add_argument("--ffmpeg", default=None)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--nshard", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")


def reference_step_argv(args: argparse.Namespace) -> Tuple[List[str], List[str]]:
    """`(shard + ffmpeg flags, progress flag)` to pass from a `--step` script to the sharded steps."""
    shard = ["--rank", str(args.rank), "--nshard", str(args.nshard), "--num-workers", str(args.num_workers)]
    quiet = ["--no-progress"] if args.no_progress else []
    return shard + (["--ffmpeg", args.ffmpeg] if args.ffmpeg else []), quiet


def add_common_args(parser: argparse.ArgumentParser, sharded: bool = True) -> None:
    """Flags shared by every step: sharding, workers, overwrite, progress, verbosity, Slurm."""
    if sharded:
        parser.add_argument("--nshard", type=int, default=1, help="number of shards")
        parser.add_argument("--rank", type=int, default=0, help="0-based shard index")
        parser.add_argument("--num-workers", type=int, default=1, help="local worker processes per shard")
        parser.add_argument(
            "--slurm-partition",
            "--slurm_partition",
            default=None,
            help="submit all --nshard shards as a Slurm array on this partition (needs submitit)",
        )
        parser.add_argument("--slurm-time-min", type=int, default=240, help="Slurm time limit per shard")
        parser.add_argument("--slurm-cpus", type=int, default=4, help="CPUs per Slurm task")
        parser.add_argument("--slurm-log-dir", default="slurm_logs", help="submitit log folder")
    parser.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse a step's command line and apply `--verbose` (every step's first two lines)."""
    args = parser.parse_args(argv)
    set_verbosity(args.verbose)
    return args


def set_verbosity(verbose: bool) -> None:
    """`--verbose`: debug messages from the preparation package."""
    if verbose:
        logging.getLogger("preparation").setLevel(logging.DEBUG)
