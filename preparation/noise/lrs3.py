"""LRS3-derived noise: one babble signal and an interfering-speech set (reference spec 6.4).

Reads  `{lrs3}/433h_data/train.tsv` (`--manifest`) and the wavs it lists.
Writes - babble: `{lrs3}/noise/babble/noise.wav`, the average of `--num-speakers` (30) random
         training utterances longer than `--babble-min-sec` (15 s), truncated to the shortest;
         `{lrs3}/noise/babble/{valid,test}.tsv` each list that file (as the reference);
       - speech: `{lrs3}/noise/speech/wav/{spk}_{clip}.wav`, the first `--speech-sec` (20 s)
         of every training utterance longer than that; `{lrs3}/noise/speech/{train,valid,test}.tsv`
         split 60/20/20 in manifest order.
Noise lists hold one absolute wav path per line (the dataset's `noise_wav` format).
The babble draw is seeded (`--seed`); the reference's was not.

Example:

    python -m preparation.noise.lrs3 --lrs3 $LRS3
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from avdata import atomic, constants, procs

from preparation import common
from preparation.noise.mix_babble import long_enough, read_wav_list, write_mixture
from preparation.noise.sets import read_16k_mono, split_items

logger = logging.getLogger(__name__)

BABBLE_MIN_SEC = 15.0
SPEECH_SEC = 20.0
SPEECH_FRACTIONS = (0.6, 0.2, 0.2)


def make_babble(wavs: List[str], out_dir: Path, num_speakers: int, min_sec: float, seed: int) -> Path:
    pool = long_enough(wavs, min_sec)
    if not pool:
        raise ValueError(f"no training utterance longer than {min_sec} s for LRS3 babble")
    out = out_dir / "babble" / "noise.wav"
    write_mixture(0, pool, out, num_speakers, seed)
    for split in ("valid", "test"):
        atomic.write_lines(out_dir / "babble" / f"{split}.tsv", [str(out.resolve())])
    return out


def make_speech(wavs: List[str], out_dir: Path, seconds: float) -> List[List[str]]:
    from preparation.media import count_wav_samples, write_wav_int16

    n = int(seconds * constants.AUDIO_SAMPLE_RATE_HZ)
    written = []
    for wav in wavs:
        if count_wav_samples(wav) <= n:
            continue
        p = Path(wav)
        out = out_dir / "speech" / "wav" / f"{p.parent.name}_{p.stem}.wav"
        if not out.is_file():
            write_wav_int16(out, read_16k_mono(wav)[:n])
        written.append(str(out.resolve()))
    parts = split_items(written, SPEECH_FRACTIONS, seed=0, shuffle=False)
    for split, part in zip(("train", "valid", "test"), parts):
        atomic.write_lines(out_dir / "speech" / f"{split}.tsv", part)
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--lrs3", required=True, help="LRS3 root")
    p.add_argument("--manifest", default=None, help="training manifest (default: {lrs3}/433h_data/train.tsv)")
    p.add_argument("--num-speakers", type=int, default=30)
    p.add_argument("--babble-min-sec", type=float, default=BABBLE_MIN_SEC)
    p.add_argument("--speech-sec", type=float, default=SPEECH_SEC)
    p.add_argument("--seed", type=int, default=0)
    common.add_common_args(p, sharded=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    lrs3 = Path(args.lrs3)
    wavs = read_wav_list(args.manifest or lrs3 / "433h_data" / "train.tsv")
    out_dir = lrs3 / "noise"
    babble = out_dir / "babble" / "noise.wav"
    if args.overwrite or not babble.is_file():
        make_babble(wavs, out_dir, args.num_speakers, args.babble_min_sec, args.seed)
    parts = make_speech(wavs, out_dir, args.speech_sec)
    logger.info("LRS3 noise: babble %s; speech train/valid/test %s", babble, [len(x) for x in parts])
    return 0


if __name__ == "__main__":
    procs.run_main(main)
