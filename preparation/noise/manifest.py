"""Noise lists for training and evaluation (reference spec 6.5, `noise_manifest.py`).

Reads  `{musan}/short-musan/nframes.audio` (from `preparation.noise.musan`) and
       `{lrs3}/noise/speech/{train,valid,test}.tsv` (from `preparation.noise.lrs3`).
Writes `{musan}/tsv/{babble,music,noise}/{train,valid,test}.tsv` and
       `{musan}/tsv/all/{train,valid,test}.tsv`: one absolute wav path per line, no header (the
       dataset's `noise_wav` directory format).

Rules (reference): only chunks with `--min-sec` (3) <= duration < `--max-sec` (11) are used;
babble is split by its file-name prefix (`train-`, `valid-`, `test-`); music and noise are
shuffled (seeded with `--seed`; the reference did not seed) and split 80/10/10. `all/train`
takes `--per-category` (20000) entries of each of noise, music, babble and LRS3 speech
(lists repeated to reach that count); `all/valid` and `all/test` concatenate every entry of
each category.

Example:

    python -m preparation.noise.manifest --musan $MUSAN --lrs3 $LRS3
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional

from avdata import atomic, constants, procs

from preparation import common
from preparation.noise.sets import repeat_to, split_items

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MIN_SEC, MAX_SEC = 3.0, 11.0
PER_CATEGORY = 20_000
MUSIC_NOISE_FRACTIONS = (0.8, 0.1, 0.1)


def read_nframes(path: Path) -> Dict[str, int]:
    out = {}
    for lineno, line in enumerate(common.read_list(path), start=1):
        cols = line.split("\t")
        if len(cols) != 2:
            raise ValueError(f"{path}:{lineno}: expected path<TAB>samples, got {line!r}")
        out[cols[0]] = int(cols[1])
    return out


def category_lists(
    nframes: Dict[str, int], min_sec: float, max_sec: float, seed: int
) -> Dict[str, Dict[str, List[str]]]:
    rate = constants.AUDIO_SAMPLE_RATE_HZ
    kept = sorted(p for p, n in nframes.items() if min_sec * rate <= n < max_sec * rate)
    out: Dict[str, Dict[str, List[str]]] = {}
    babble = [p for p in kept if "/babble/" in p]
    out["babble"] = {s: [p for p in babble if Path(p).name.startswith(f"{s}-")] for s in SPLITS}
    for k, cat in enumerate(("music", "noise")):
        paths = [p for p in kept if f"/short-musan/{cat}/" in p]
        out[cat] = dict(zip(SPLITS, split_items(paths, MUSIC_NOISE_FRACTIONS, seed + k)))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--musan", required=True, help="MUSAN root (with short-musan/)")
    p.add_argument("--lrs3", required=True, help="LRS3 root (with noise/speech/)")
    p.add_argument("--min-sec", type=float, default=MIN_SEC)
    p.add_argument("--max-sec", type=float, default=MAX_SEC)
    p.add_argument("--per-category", type=int, default=PER_CATEGORY, help="entries per category in all/train")
    p.add_argument("--seed", type=int, default=0)
    common.add_common_args(p, sharded=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    musan, lrs3 = Path(args.musan), Path(args.lrs3)
    lists = category_lists(read_nframes(musan / "short-musan" / "nframes.audio"), args.min_sec, args.max_sec, args.seed)
    lists["speech"] = {s: common.read_list(lrs3 / "noise" / "speech" / f"{s}.tsv") for s in SPLITS}
    tsv = musan / "tsv"
    for cat in ("babble", "music", "noise"):
        for split in SPLITS:
            atomic.write_lines(tsv / cat / f"{split}.tsv", lists[cat][split])
    order = ("noise", "music", "babble", "speech")
    all_lists = {"train": [p for cat in order for p in repeat_to(lists[cat]["train"], args.per_category)]}
    for split in ("valid", "test"):
        all_lists[split] = [p for cat in order for p in lists[cat][split]]
    for split, paths in all_lists.items():
        atomic.write_lines(tsv / "all" / f"{split}.tsv", paths)
    logger.info("noise lists: %s", {cat: {s: len(v) for s, v in d.items()} for cat, d in lists.items()})
    return 0


if __name__ == "__main__":
    procs.run_main(main)
