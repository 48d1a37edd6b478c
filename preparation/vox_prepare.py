"""The reference's `vox_prepare.py --step S` command line, mapped onto this package's steps.

    step 1: preparation.vox2.lists     ({vox}/file.list)
    step 2: preparation.extract_audio ({vox}/audio/{id}.wav; sharded)

Example (reference spelling; its README's `--root` is accepted for `--vox`):

    python -m preparation.vox_prepare --vox $VOX --ffmpeg /usr/bin/ffmpeg --step 2 --rank 0 --nshard 4
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from avdata import procs

from preparation import common, extract_audio
from preparation.vox2 import lists as vox_lists


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    common.add_alias(p, "--vox", "--root", required=True, help="VoxCeleb2 root")
    p.add_argument("--step", type=int, required=True, choices=[1, 2])
    common.add_reference_step_args(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    vox = Path(args.vox)
    shard, quiet = common.reference_step_argv(args)
    if args.step == 1:
        return vox_lists.main(["--vox", str(vox)] + quiet)
    return extract_audio.main(
        ["--video-dir", str(vox), "--file-list", str(vox / "file.list"), "--audio-dir", str(vox / "audio")] + shard + quiet
    )


if __name__ == "__main__":
    procs.run_main(main)
