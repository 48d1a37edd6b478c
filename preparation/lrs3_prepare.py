"""The reference's `lrs3_prepare.py --step S` command line, mapped onto this package's
single-purpose steps (so existing commands keep working).

    step 1: preparation.lrs3.segment   (short-pretrain.csv)
    step 2: preparation.lrs3.trim      (short-pretrain/ clips and wavs; sharded)
    step 3: preparation.extract_audio  for trainval/ and test/ (sharded)
    step 4: preparation.lrs3.lists     (file.list, label.list)

Example (reference spelling):

    python -m preparation.lrs3_prepare --lrs3 $LRS3 --ffmpeg /usr/bin/ffmpeg --rank 0 --nshard 1 --step 2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from avdata import atomic, procs

from preparation import common, extract_audio
from preparation.lrs3 import lists as lrs3_lists
from preparation.lrs3 import segment as lrs3_segment
from preparation.lrs3 import trim as lrs3_trim

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--lrs3", required=True, help="LRS3 root")
    p.add_argument("--step", type=int, required=True, choices=[1, 2, 3, 4])
    common.add_reference_step_args(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    lrs3 = Path(args.lrs3)
    shard, quiet = common.reference_step_argv(args)
    if args.step == 1:
        return lrs3_segment.main(["--lrs3", str(lrs3)] + quiet)
    if args.step == 2:
        return lrs3_trim.main(["--lrs3", str(lrs3)] + shard + quiet)
    if args.step == 3:
        ids, _ = lrs3_lists.list_lrs3(lrs3, include_pretrain=False)
        id_list = lrs3 / "trainval_test.list"
        atomic.write_lines(id_list, ids)
        return extract_audio.main(
            ["--video-dir", str(lrs3), "--file-list", str(id_list), "--audio-dir", str(lrs3 / "audio")]
            + shard
            + quiet
        )
    return lrs3_lists.main(["--lrs3", str(lrs3)] + quiet)


if __name__ == "__main__":
    procs.run_main(main)
