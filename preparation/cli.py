"""The one runner of a sharded step's command line: parse -> verbosity -> Slurm -> shard -> work -> finish.

A step module defines its parser (with `common.add_common_args`), what its items are, the work
on one shard's items and the folder that gets the failures file and done marker, then:

    def main(argv=None) -> int:
        return run_sharded_step(argv, main, STEP, build_parser(), items, work, out_dir)

`main` itself is handed to `avdata.sharding.maybe_submit_slurm`, so it must be a module-level
function (the Slurm tasks call it again with `--rank r --nshard N`).
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Callable, List, Optional, Sequence

from avdata import sharding

from preparation import common

__all__ = ["run_sharded_step", "file_list_items", "run_alias"]


def run_sharded_step(
    argv: Optional[Sequence[str]],
    main: Callable[[List[str]], int],
    step: str,
    parser: argparse.ArgumentParser,
    items: Callable[[argparse.Namespace], Sequence],
    work: Callable[[argparse.Namespace, list], common.StepResult],
    out_dir: Callable[[argparse.Namespace], str | os.PathLike],
) -> int:
    """Run one shard of `step` (or submit all shards to Slurm); returns the exit code.

    `items(args)` lists every item of the step in a stable order; `work(args, shard)` processes
    the items of shard `--rank` of `--nshard`; `out_dir(args)` gets
    `failures.{step}.{rank}_{nshard}.tsv` and, when nothing failed, the `.done` marker.
    """
    args = common.parse_args(parser, argv)
    submitted = sharding.maybe_submit_slurm(args, main, argv, step)
    if submitted is not None:
        return submitted
    shard = sharding.shard_items(items(args), args.nshard, args.rank)
    result = work(args, shard)
    return common.finish_shard(result, out_dir(args), step, args.rank, args.nshard)


def file_list_items(args: argparse.Namespace) -> List[str]:
    """The ids of `--file-list` (the items of the per-clip steps)."""
    return common.read_list(args.file_list)


def run_alias(old: str, new: str) -> None:
    """Run module `new` as `__main__` for the deprecated `python -m old` (kept one release).

    Prints the deprecation to stderr first; the command line (`sys.argv`) is passed on unchanged.
    """
    print(f"warning: `python -m {old}` is deprecated and will be removed in the next release; "
          f"use `python -m {new}`", file=sys.stderr)
    runpy.run_module(new, run_name="__main__", alter_sys=True)
