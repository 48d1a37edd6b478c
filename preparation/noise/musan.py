"""MUSAN noise: 10-s chunks, a speaker split of the speech, babble mixtures and sample counts
(reference spec 6.3, `musan_prepare.py`).

Reads  `{musan}/{speech,music,noise}/{sub}/{name}.wav` (16 kHz mono).
Writes (steps, `--steps`, default all, in this order)
- chunk: `{musan}/short-musan/{cat}/{sub}/{name}-{i}.wav`, consecutive 10-s chunks of every
  file longer than 10 s (shorter files are skipped, as the reference); the last partial
  chunk is kept (the noise manifests later drop chunks under 3 s). Sharded over files.
- split: `{musan}/short-musan/speech/spk.{train,valid,test}`: the speech *source files*
  (MUSAN's unit of speaker) split 80/10/10 after a shuffle seeded with `--seed` (the
  reference's shuffle was unseeded).
- babble: `{musan}/short-musan/babble/wav/{split}-{index:05d}.wav`, `--num-babble` (8000 1000
  1000) mixtures per split, each the average of `--num-speakers` (30) random speech chunks of
  that split's speakers, truncated to the shortest (`preparation.noise.mix_babble`, seeded by
  `(seed, index)`). Sharded over mixtures.
- count: `{musan}/short-musan/nframes.audio`: `path<TAB>samples` for the babble, music and
  noise chunks.

Example:

    for r in 0 1 2 3; do python -m preparation.noise.musan --musan $MUSAN --steps chunk \
        --nshard 4 --rank $r; done
    python -m preparation.noise.musan --musan $MUSAN --steps split babble count
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from avdata import atomic, constants, procs, sharding

from preparation import common
from preparation.noise.mix_babble import mix_babble
from preparation.noise.sets import chunk_bounds, read_16k_mono, split_items

logger = logging.getLogger(__name__)

CATEGORIES = ("speech", "music", "noise")
SPLITS = ("train", "valid", "test")
CHUNK_SEC = 10.0
SPEAKER_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_NUM_BABBLE = (8000, 1000, 1000)
STEPS = ("chunk", "split", "babble", "count")


def source_files(musan: Path) -> List[str]:
    """`{cat}/{sub}/{name}` of every MUSAN wav, sorted."""
    out = []
    for cat in CATEGORIES:
        out += sorted(p.relative_to(musan).with_suffix("").as_posix() for p in (musan / cat).glob("*/*.wav"))
    if not out:
        raise FileNotFoundError(f"no {{speech,music,noise}}/*/*.wav under {musan}")
    return out


def chunk_file(rel: str, musan: str | Path, chunk_sec: float = CHUNK_SEC) -> int:
    """Cut `{musan}/{rel}.wav` into chunks under `short-musan/`; returns the number written."""
    from preparation.media import write_wav_int16

    musan = Path(musan)
    samples = read_16k_mono(musan / f"{rel}.wav")
    chunk = int(chunk_sec * constants.AUDIO_SAMPLE_RATE_HZ)
    if len(samples) <= chunk:
        return 0
    bounds = chunk_bounds(len(samples), chunk)
    for i, (s, e) in enumerate(bounds):
        out = musan / "short-musan" / f"{rel}-{i}.wav"
        if not out.is_file():
            write_wav_int16(out, samples[s:e])
    return len(bounds)


def _chunked(rel: str, musan: str) -> bool:
    return (Path(musan) / "short-musan" / f"{rel}-0.wav").is_file()


def speech_chunks(short: Path, sources: Sequence[str]) -> List[str]:
    """Absolute paths of the chunks of the given speech sources (`speech/{sub}/{name}`)."""
    out = []
    for rel in sources:
        src = short / rel
        out += sorted(str(p.resolve()) for p in src.parent.glob(f"{src.name}-*.wav"))
    return out


def split_speakers(musan: Path, seed: int) -> Dict[str, List[str]]:
    short = musan / "short-musan"
    speakers = sorted({p.relative_to(short).as_posix().rsplit("-", 1)[0] for p in (short / "speech").glob("*/*.wav")})
    parts = dict(zip(SPLITS, split_items(speakers, SPEAKER_FRACTIONS, seed)))
    for split, names in parts.items():
        atomic.write_lines(short / "speech" / f"spk.{split}", names)
    logger.info("speech speakers: %s", {k: len(v) for k, v in parts.items()})
    return parts


def count_chunks(musan: Path) -> Path:
    short = musan / "short-musan"
    from preparation.media import count_wav_samples

    wavs = sorted((short / "babble" / "wav").glob("*.wav"))
    for cat in ("music", "noise"):
        wavs += sorted((short / cat).glob("*/*.wav"))
    out = short / "nframes.audio"
    atomic.write_lines(out, (f"{p.resolve()}\t{count_wav_samples(p)}" for p in wavs))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--musan", required=True, help="MUSAN root (speech/, music/, noise/)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--chunk-sec", type=float, default=CHUNK_SEC)
    p.add_argument(
        "--num-babble", type=int, nargs=3, default=list(DEFAULT_NUM_BABBLE), metavar=("TRAIN", "VALID", "TEST")
    )
    p.add_argument("--num-speakers", type=int, default=30, help="speech chunks per babble mixture")
    p.add_argument("--seed", type=int, default=0)
    common.add_common_args(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    submitted = sharding.maybe_submit_slurm(args, main, argv, "musan_prepare")
    if submitted is not None:
        return submitted
    musan = Path(args.musan)
    short = musan / "short-musan"
    progress = not args.no_progress
    code = 0
    if "chunk" in args.steps:
        files = sharding.shard_items(source_files(musan), args.nshard, args.rank)
        result, _ = common.run_items(
            files,
            functools.partial(chunk_file, musan=str(musan), chunk_sec=args.chunk_sec),
            is_finished=None if args.overwrite else functools.partial(_chunked, musan=str(musan)),
            num_workers=args.num_workers,
            desc="chunk",
            progress=progress,
        )
        code |= common.finish_shard(result, short, "musan_chunk", args.rank, args.nshard)
    if "split" in args.steps:
        split_speakers(musan, args.seed)
    if "babble" in args.steps:
        for split, num in zip(SPLITS, args.num_babble):
            names = common.read_list(short / "speech" / f"spk.{split}")
            pool = speech_chunks(short, names)
            indices = sharding.shard_items(list(range(num)), args.nshard, args.rank)
            result = mix_babble(
                pool,
                short / "babble" / "wav",
                indices,
                split,
                args.num_speakers,
                args.seed,
                args.num_workers,
                args.overwrite,
                progress,
            )
            code |= common.finish_shard(result, short / "babble", f"musan_babble_{split}", args.rank, args.nshard)
    if "count" in args.steps:
        logger.info("wrote %s", count_chunks(musan))
    return code


if __name__ == "__main__":
    procs.run_main(main)
