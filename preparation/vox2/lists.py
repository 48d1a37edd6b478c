"""List VoxCeleb2 clips (reference spec 6.2 step 1, `vox_prepare.py --step 1`).

Reads  `{vox}/{dev,test}/mp4/{speaker}/{youtube id}/{clip}.mp4`.
Writes `{vox}/file.list`: ids `dev/mp4/{speaker}/{youtube id}/{clip}` (sorted, dev then test).

Then, as LRS3 (with `--video-dir {vox}`): `preparation.extract_audio` (-> `{vox}/audio/{id}.wav`),
`detect_landmarks`, `crop_mouth_rois` (-> `{vox}/video/{id}.mp4`), `count_frames`, and
`preparation.vox2.manifest`.

Example:

    python -m preparation.vox2.lists --vox $VOX
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from avdata import atomic, procs

from preparation import common

logger = logging.getLogger(__name__)

SUBSETS = ("dev", "test")


def list_vox(vox_dir: str | Path) -> List[str]:
    vox = Path(vox_dir)
    ids: List[str] = []
    for subset in SUBSETS:
        ids += sorted(p.relative_to(vox).with_suffix("").as_posix() for p in (vox / subset / "mp4").glob("*/*/*.mp4"))
    if not ids:
        raise FileNotFoundError(f"no {{dev,test}}/mp4/*/*/*.mp4 under {vox}")
    return ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    common.add_alias(p, "--vox", "--root", required=True, help="VoxCeleb2 root")
    common.add_common_args(p, sharded=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    out = Path(args.vox) / "file.list"
    if out.is_file() and not args.overwrite:
        logger.info("%s exists; skipping (--overwrite to redo)", out)
        return 0
    ids = list_vox(args.vox)
    atomic.write_lines(out, ids)
    logger.info("wrote %d ids to %s", len(ids), out)
    return 0


if __name__ == "__main__":
    procs.run_main(main)
