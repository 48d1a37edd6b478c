"""VoxCeleb2 pre-training manifests (reference spec 6.2 step 4, `vox_manifest.py`).

Reads  `{vox}/file.list`, `{vox}/nframes.tsv` (from `preparation.count_frames --merge`) and the
       English id list `--en-ids` (the reference's `vox-en.id`, decompressed; one id per line,
       with or without the `dev/mp4/` prefix).
Writes `{vox}/en_data/train.tsv` (English subset) and `{vox}/all_data/train.tsv` (every clip).
As in the reference there is no valid split and no labels: pre-training combines these with
LRS3's, whose `valid.tsv` and labels you copy or link next to them.

Example:

    python -m preparation.vox2.manifest --vox $VOX --en-ids vox-en.id
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Sequence

from avdata import procs

from preparation import common
from preparation.count_frames import MERGED_NAME, read_counts
from preparation.manifests import log_missing, make_rows, write_split

logger = logging.getLogger(__name__)


def _short(item_id: str) -> str:
    """`dev/mp4/idX/yt/clip` -> `idX/yt/clip` (the en list may use either form)."""
    parts = item_id.split("/")
    return "/".join(parts[2:]) if len(parts) == 5 and parts[1] == "mp4" else item_id


def make_vox_manifests(vox_dir: str | Path, en_ids: Optional[Sequence[str]], absolute: bool = False) -> List[Path]:
    vox = Path(vox_dir)
    ids = common.read_list(vox / "file.list")
    counts = read_counts(vox / MERGED_NAME)
    written = []
    sets = {"all_data": ids}
    if en_ids is not None:
        en = {_short(i) for i in en_ids}
        sets["en_data"] = [i for i in ids if _short(i) in en]
    for name, subset in sets.items():
        rows, missing = make_rows(subset, counts, vox, vox / "video", vox / "audio", absolute)
        log_missing(missing, f"{name}/train.tsv")
        written.append(write_split(vox / name, "train", vox, rows, None, absolute))
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--vox", required=True, help="VoxCeleb2 root")
    common.add_alias(p, "--en-ids", "--en_ids", default=None, help="English id list (vox-en.id)")
    p.add_argument("--absolute-paths", action="store_true", help="root '/' and absolute paths (reference layout)")
    common.add_common_args(p, sharded=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = common.parse_args(build_parser(), argv)
    en = common.read_list(args.en_ids) if args.en_ids else None
    make_vox_manifests(args.vox, en, args.absolute_paths)
    return 0


if __name__ == "__main__":
    procs.run_main(main)
