"""Count decoded video frames and wav samples for the ids of a file list (spec 6.1 step 4).

Reads  `{video_dir}/{id}.mp4` (mouth ROIs) and `{audio_dir}/{id}.wav` for each id.
Writes `{out_dir}/nframes_{rank}_{nshard}.tsv` (`id<TAB>video frames<TAB>audio samples`) and
       `{out_dir}/missing_{rank}_{nshard}.list` (ids whose video or wav does not exist, e.g.
       clips the crop step rejected); with `--merge`, checks that every shard is there and
       concatenates them into `{out_dir}/nframes.tsv` and `{out_dir}/missing.list`.

Video frames are counted by decoding (OpenCV `grab`), not from the container's frame-count
metadata the reference used, so the manifest sizes equal what the dataset will decode.
Files that exist but cannot be read are failures (failures file, non-zero exit).

Example:

    for r in 0 1 2 3; do python -m preparation.count_frames --video-dir $LRS3/video \
        --audio-dir $LRS3/audio --file-list $LRS3/file.list --out-dir $LRS3 --nshard 4 --rank $r; done
    python -m preparation.count_frames ... --out-dir $LRS3 --nshard 4 --merge
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from avdata import atomic, markers, procs, sharding

from preparation import common

logger = logging.getLogger(__name__)

STEP = "count_frames"
MERGED_NAME = "nframes.tsv"
MISSING_NAME = "missing.list"


def count_one(video_path: str | Path, audio_path: str | Path) -> Optional[Tuple[int, int]]:
    """`(decoded video frames, wav samples)`, or None when either file does not exist."""
    from avdata.video import count_video_frames

    from preparation.media import count_wav_samples

    if not Path(video_path).is_file() or not Path(audio_path).is_file():
        return None
    return count_video_frames(video_path), count_wav_samples(audio_path)


def _work(item_id: str, video_dir: str, audio_dir: str) -> Optional[Tuple[int, int]]:
    return count_one(Path(video_dir) / f"{item_id}.mp4", Path(audio_dir) / f"{item_id}.wav")


def count_frames(
    ids: List[str], video_dir: str | Path, audio_dir: str | Path, num_workers: int = 1, progress: bool = True
) -> Tuple[common.StepResult, Dict[str, Tuple[int, int]], List[str]]:
    """Returns `(result, counts by id, missing ids)` for `ids` in order."""
    result, outputs = common.run_items(
        ids,
        functools.partial(_work, video_dir=str(video_dir), audio_dir=str(audio_dir)),
        num_workers=num_workers,
        desc="count frames",
        progress=progress,
    )
    counts = {i: outputs[i] for i in ids if outputs.get(i) is not None}
    missing = [i for i in ids if i in outputs and outputs[i] is None]
    return result, counts, missing


def read_counts(path: str | Path) -> Dict[str, Tuple[int, int]]:
    """Read an `nframes` tsv into `{id: (video frames, audio samples)}`."""
    out: Dict[str, Tuple[int, int]] = {}
    for lineno, line in enumerate(common.read_list(path), start=1):
        cols = line.split("\t")
        if len(cols) != 3:
            raise ValueError(f"{path}:{lineno}: expected id<TAB>video frames<TAB>audio samples, got {line!r}")
        out[cols[0]] = (int(cols[1]), int(cols[2]))
    return out


def shard_paths(out_dir: str | Path, rank: int, nshard: int) -> Tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"nframes_{rank}_{nshard}.tsv", out_dir / f"missing_{rank}_{nshard}.list"


def merge_counts(out_dir: str | Path, nshard: int) -> Tuple[Path, Path]:
    """Concatenate all shards (in rank order) into `nframes.tsv` and `missing.list`."""
    out_dir = Path(out_dir)
    counts_lines: List[str] = []
    missing_lines: List[str] = []
    for rank in range(nshard):
        counts_path, missing_path = shard_paths(out_dir, rank, nshard)
        if not markers.is_done(markers.done_marker(out_dir, STEP, rank, nshard)):
            raise FileNotFoundError(f"shard {rank}/{nshard} of {STEP} is not finished in {out_dir}")
        counts_lines += common.read_list(counts_path) if counts_path.stat().st_size else []
        missing_lines += common.read_list(missing_path) if missing_path.stat().st_size else []
    merged, missing = out_dir / MERGED_NAME, out_dir / MISSING_NAME
    atomic.write_lines(merged, counts_lines)
    atomic.write_lines(missing, missing_lines)
    logger.info("merged %d shards: %d counted, %d missing", nshard, len(counts_lines), len(missing_lines))
    return merged, missing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    add = functools.partial(common.add_alias, p)
    p.add_argument(
        "--root",
        default=None,
        help="reference layout: defaults --video-dir ROOT/video, --audio-dir ROOT/audio, --out-dir ROOT",
    )
    p.add_argument("--video-dir", default=None, help="folder holding {id}.mp4 (mouth ROIs)")
    p.add_argument("--audio-dir", default=None, help="folder holding {id}.wav")
    add("--file-list", "--manifest", required=True, help="ids, one per line")
    p.add_argument("--out-dir", default=None, help="where the count files go")
    p.add_argument("--merge", action="store_true", help="merge finished shards instead of counting")
    common.add_common_args(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = common.parse_args(parser, argv)
    if args.root:
        args.video_dir = args.video_dir or str(Path(args.root) / "video")
        args.audio_dir = args.audio_dir or str(Path(args.root) / "audio")
        args.out_dir = args.out_dir or args.root
    if not (args.video_dir and args.audio_dir and args.out_dir):
        parser.error("give --video-dir, --audio-dir and --out-dir, or --root")
    if args.merge:
        merge_counts(args.out_dir, args.nshard)
        return 0
    submitted = sharding.maybe_submit_slurm(args, main, argv, STEP)
    if submitted is not None:
        return submitted
    if markers.is_done(markers.done_marker(args.out_dir, STEP, args.rank, args.nshard)) and not args.overwrite:
        logger.info("shard %d/%d already counted; skipping (--overwrite to redo)", args.rank, args.nshard)
        return 0
    ids = sharding.shard_items(common.read_list(args.file_list), args.nshard, args.rank)
    result, counts, missing = count_frames(ids, args.video_dir, args.audio_dir, args.num_workers, not args.no_progress)
    counts_path, missing_path = shard_paths(args.out_dir, args.rank, args.nshard)
    atomic.write_lines(counts_path, (f"{i}\t{v}\t{a}" for i, (v, a) in counts.items()))
    atomic.write_lines(missing_path, missing)
    if missing:
        logger.warning("%d ids have no video or wav; listed in %s", len(missing), missing_path)
    return common.finish_shard(result, args.out_dir, STEP, args.rank, args.nshard)


if __name__ == "__main__":
    procs.run_main(main)
