"""Synthesise babble noise: each output is the average of N random utterances (seeded).

This is the babble-mixing step the reference README names (`mix_babble.py`) but never shipped
(issue #114); `musan_prepare` and `lrs3_noise` use the same function.

Reads  16 kHz mono wavs listed in `--wav-list` (one path per line; a 5-column manifest `.tsv`
       is accepted too: its audio column is used, resolved against its root line).
Writes `{out_dir}/{prefix}-{index:05d}.wav` for index in `[0, --num-mixtures)` and
       `{out_dir}/{prefix}.tsv` (one absolute wav path per line, the noise-list format).

Mixture `i` draws `--num-speakers` distinct utterances with `numpy.random.default_rng((seed, i))`
among those at least `--min-sec` long, averages them and truncates to the shortest, so any
mixture can be regenerated alone and shards give the same files as one run.

Example:

    python -m preparation.noise.mix_babble --wav-list $LRS3/433h_data/train.tsv --min-sec 15 \
        --num-mixtures 100 --out-dir $LRS3/noise/babble100 --prefix babble
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from avdata import atomic, constants, procs
from avdata.manifest import read_manifest, resolve

from preparation import common
from preparation.cli import run_sharded_step
from preparation.noise.sets import babble, pick, read_16k_mono

logger = logging.getLogger(__name__)

STEP = "mix_babble"
DEFAULT_SPEAKERS = 30


def read_wav_list(path: str | Path) -> List[str]:
    """Wav paths from a plain list or a 5-column manifest (audio column, resolved)."""
    lines = common.read_list(path)
    if len(lines) > 1 and len(lines[1].split("\t")) == 5:
        root, rows = read_manifest(path)
        return [resolve(root, r.audio) for r in rows if r.audio]
    return lines


def mixture_sources(pool: Sequence[str], index: int, num_speakers: int, seed: int) -> List[str]:
    """The utterances averaged into mixture `index` (deterministic in `(seed, index)`)."""
    return pick(np.random.default_rng((seed, index)), pool, num_speakers)


def write_mixture(index: int, pool: Sequence[str], out_path: str | Path, num_speakers: int, seed: int) -> int:
    """Write mixture `index` to `out_path`; returns its length in samples."""
    from preparation.media import write_wav_int16

    mix = babble([read_16k_mono(p) for p in mixture_sources(pool, index, num_speakers, seed)])
    write_wav_int16(out_path, mix)
    return len(mix)


def long_enough(paths: Sequence[str], min_sec: float) -> List[str]:
    """The paths whose wav lasts at least `min_sec` (header read only)."""
    from preparation.media import count_wav_samples

    min_samples = int(min_sec * constants.AUDIO_SAMPLE_RATE_HZ)
    return [p for p in paths if count_wav_samples(p) >= min_samples]


def _work(item: str, pool: Sequence[str], out_dir: str, prefix: str, num_speakers: int, seed: int) -> int:
    return write_mixture(int(item), pool, Path(out_dir) / f"{prefix}-{int(item):05d}.wav", num_speakers, seed)


def mix_babble(
    pool: Sequence[str],
    out_dir: str | Path,
    indices: Sequence[int],
    prefix: str = "babble",
    num_speakers: int = DEFAULT_SPEAKERS,
    seed: int = 0,
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> common.StepResult:
    """Write the mixtures `indices` drawn from `pool` into `out_dir`."""
    if len(pool) < num_speakers:
        logger.warning("only %d source utterances for %d-speaker babble", len(pool), num_speakers)
    if not pool:
        raise ValueError("no source utterance to mix babble from")
    out_dir = str(out_dir)
    items = [str(i) for i in indices]
    result, _ = common.run_items(
        items,
        functools.partial(_work, pool=list(pool), out_dir=out_dir, prefix=prefix, num_speakers=num_speakers, seed=seed),
        is_finished=None if overwrite else (lambda i: (Path(out_dir) / f"{prefix}-{int(i):05d}.wav").is_file()),
        num_workers=num_workers,
        desc=f"babble {prefix}",
        progress=progress,
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--wav-list", required=True, help="wav paths, one per line, or a manifest .tsv")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--prefix", default="babble", help="output names {prefix}-NNNNN.wav")
    p.add_argument("--num-mixtures", type=int, default=1)
    p.add_argument("--num-speakers", type=int, default=DEFAULT_SPEAKERS, help="utterances per mixture")
    p.add_argument("--min-sec", type=float, default=0.0, help="only mix utterances at least this long")
    p.add_argument("--seed", type=int, default=0)
    common.add_common_args(p)
    return p


def _mix_shard(args: argparse.Namespace, indices: List[int]) -> common.StepResult:
    pool = long_enough(read_wav_list(args.wav_list), args.min_sec)
    result = mix_babble(
        pool,
        args.out_dir,
        indices,
        args.prefix,
        args.num_speakers,
        args.seed,
        args.num_workers,
        args.overwrite,
        not args.no_progress,
    )
    if args.nshard == 1:
        out = Path(args.out_dir).resolve()
        atomic.write_lines(
            out / f"{args.prefix}.tsv", (str(out / f"{args.prefix}-{i:05d}.wav") for i in range(args.num_mixtures))
        )
    return result


def main(argv: Optional[List[str]] = None) -> int:
    return run_sharded_step(
        argv, main, STEP, build_parser(), lambda a: list(range(a.num_mixtures)), _mix_shard, lambda a: a.out_dir
    )


if __name__ == "__main__":
    procs.run_main(main)
