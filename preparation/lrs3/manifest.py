"""Make the LRS3 30h/433h manifests, `.wrd` labels and the sentencepiece vocabulary
(reference spec 6.1 step 5, `lrs3_manifest.py`).

Reads  `{lrs3}/file.list`, `{lrs3}/label.list` (from `preparation.lrs3.lists`),
       `{lrs3}/nframes.tsv` (from `preparation.count_frames --merge`), `{lrs3}/video/{id}.mp4`
       and `{lrs3}/audio/{id}.wav`, and the valid id list (`--valid-ids`, the standard
       `lrs3-valid.id`: one `trainval/{spk}/{clip}` per line).
Writes `{lrs3}/spm{V}/spm_unigram{V}.{model,vocab,txt}` (unigram, trained on the lower-cased
       `label.list`) and, for `30h_data` and `433h_data`, `{split}.tsv`, `{split}.wrd` for
       split in train/valid/test and `dict.wrd.txt` (the spm `.txt`).

Splits: test = `test/*`; valid = ids of the valid list; 30h train = the other `trainval/*`;
433h train = those plus `short-pretrain/*`. Ids without frame counts (e.g. clips the crop step
rejected) are left out with a warning. Without `--valid-ids`, `--num-valid` trainval ids are
drawn with `--seed` (results are then not comparable with published numbers).

Manifests have the dataset folder as root and relative paths; `--absolute-paths` writes the
reference's root `/` with absolute paths.

Example:

    python -m preparation.lrs3.manifest --lrs3 $LRS3 --valid-ids lrs3-valid.id --vocab-size 1000
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from avdata import procs

from preparation import common
from preparation.count_frames import MERGED_NAME, read_counts
from preparation.manifests import log_missing, make_rows, write_split
from preparation.tokenizer import train_sentencepiece

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 1000
DEFAULT_NUM_VALID = 1200


def split_ids(
    ids: Sequence[str], valid_ids: Optional[Sequence[str]] = None, num_valid: int = DEFAULT_NUM_VALID, seed: int = 0
) -> Dict[str, Dict[str, List[str]]]:
    """`{"30h_data": {"train": [...], "valid": [...], "test": [...]}, "433h_data": {...}}`."""
    trainval = [i for i in ids if i.startswith("trainval/")]
    if valid_ids is None:
        rng = random.Random(seed)
        chosen = set(rng.sample(trainval, min(num_valid, len(trainval))))
        logger.warning("no valid id list: drew %d random trainval ids (seed %d)", len(chosen), seed)
    else:
        chosen = set(valid_ids)
        unknown = chosen.difference(trainval)
        if unknown:
            logger.warning(
                "%d valid ids are not trainval ids of this file list, e.g. %s", len(unknown), sorted(unknown)[0]
            )
    valid = [i for i in trainval if i in chosen]
    train30 = [i for i in trainval if i not in chosen]
    test = [i for i in ids if i.startswith("test/")]
    pretrain = [i for i in ids if i.startswith("short-pretrain/")]
    return {
        "30h_data": {"train": train30, "valid": valid, "test": test},
        "433h_data": {"train": train30 + pretrain, "valid": valid, "test": test},
    }


def make_lrs3_manifests(
    lrs3_dir: str | Path,
    valid_ids: Optional[Sequence[str]] = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    num_valid: int = DEFAULT_NUM_VALID,
    seed: int = 0,
    absolute: bool = False,
) -> Dict[str, Path]:
    """Write vocabulary, manifests and labels; returns `{setup name: folder}`."""
    lrs3 = Path(lrs3_dir)
    ids = common.read_list(lrs3 / "file.list")
    labels = common.read_list(lrs3 / "label.list")
    if len(ids) != len(labels):
        raise ValueError(f"{lrs3}/file.list has {len(ids)} lines but label.list has {len(labels)}")
    transcripts = dict(zip(ids, labels))
    counts = read_counts(lrs3 / MERGED_NAME)

    spm_dir = lrs3 / f"spm{vocab_size}"
    _, dict_path = train_sentencepiece(labels, spm_dir / f"spm_unigram{vocab_size}", vocab_size)

    out: Dict[str, Path] = {}
    for setup, splits in split_ids(ids, valid_ids, num_valid, seed).items():
        setup_dir = lrs3 / setup
        for split, split_ids_ in splits.items():
            rows, missing = make_rows(split_ids_, counts, lrs3, lrs3 / "video", lrs3 / "audio", absolute)
            log_missing(missing, f"{setup}/{split}")
            write_split(setup_dir, split, lrs3, rows, transcripts, absolute)
        shutil.copyfile(dict_path, setup_dir / "dict.wrd.txt")
        out[setup] = setup_dir
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--lrs3", required=True, help="LRS3 root")
    common.add_alias(p, "--valid-ids", "--valid_ids", default=None, help="valid id list (lrs3-valid.id)")
    common.add_alias(p, "--vocab-size", "--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE)
    p.add_argument("--num-valid", type=int, default=DEFAULT_NUM_VALID, help="random valid ids without --valid-ids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--absolute-paths", action="store_true", help="root '/' and absolute paths (reference layout)")
    p.add_argument("--manifest", default=None, help="ignored; the reference README listed it by mistake (PR #47)")
    common.add_common_args(p, sharded=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    valid = common.read_list(args.valid_ids) if args.valid_ids else None
    make_lrs3_manifests(args.lrs3, valid, args.vocab_size, args.num_valid, args.seed, args.absolute_paths)
    return 0


if __name__ == "__main__":
    procs.run_main(main)
