"""Write LRS3's `file.list` and `label.list` (reference spec 6.1 step 4).

Reads  `{lrs3}/{trainval,test}/{spk}/{clip}.mp4` with their `.txt` transcripts (line 1
       `Text: ...`), and `{lrs3}/short-pretrain.csv` (from `preparation.lrs3.segment`).
Writes `{lrs3}/file.list`: ids `trainval/{spk}/{clip}`, `test/{spk}/{clip}`,
       `short-pretrain/{spk}/{clip}[_k]` (sorted within each subset, in that order), and
       `{lrs3}/label.list`: the transcript of each id, upper case as in LRS3, same order.

Example:

    python -m preparation.lrs3.lists --lrs3 $LRS3
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Tuple

from avdata import atomic, procs

from preparation import common
from preparation.lrs3.segment import CSV_NAME, parse_lrs3_txt, read_segments

logger = logging.getLogger(__name__)

SUBSETS = ("trainval", "test")
PRETRAIN_SUBSET = "short-pretrain"


def list_lrs3(lrs3_dir: str | Path, include_pretrain: bool = True) -> Tuple[List[str], List[str]]:
    """Return `(ids, transcripts)` for LRS3 (see module docstring)."""
    lrs3_dir = Path(lrs3_dir)
    ids: List[str] = []
    texts: List[str] = []
    for subset in SUBSETS:
        videos = sorted((lrs3_dir / subset).glob("*/*.mp4"))
        if not videos:
            logger.warning("no %s/*/*.mp4 under %s", subset, lrs3_dir)
        for video in videos:
            txt = video.with_suffix(".txt")
            if not txt.is_file():
                raise FileNotFoundError(f"{video}: transcript {txt.name} is missing")
            text, _ = parse_lrs3_txt(txt)
            ids.append(f"{subset}/{video.parent.name}/{video.stem}")
            texts.append(text)
    if include_pretrain:
        for seg in sorted(read_segments(lrs3_dir / CSV_NAME), key=lambda s: s.id):
            ids.append(f"{PRETRAIN_SUBSET}/{seg.id}")
            texts.append(seg.text)
    for i, text in zip(ids, texts):
        if "\n" in text or not text.strip():
            raise ValueError(f"{i}: empty or multi-line transcript {text!r}")
    return ids, texts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--lrs3", required=True, help="LRS3 root")
    p.add_argument("--no-pretrain", action="store_true", help="leave out short-pretrain (30h setup only)")
    common.add_common_args(p, sharded=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    lrs3 = Path(args.lrs3)
    file_list, label_list = lrs3 / "file.list", lrs3 / "label.list"
    if file_list.is_file() and label_list.is_file() and not args.overwrite:
        logger.info("%s and %s exist; skipping (--overwrite to redo)", file_list, label_list)
        return 0
    ids, texts = list_lrs3(lrs3, include_pretrain=not args.no_pretrain)
    atomic.write_lines(label_list, texts)
    atomic.write_lines(file_list, ids)
    logger.info("wrote %d ids to %s and %s", len(ids), file_list, label_list)
    return 0


if __name__ == "__main__":
    procs.run_main(main)
