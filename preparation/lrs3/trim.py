"""Cut LRS3 `pretrain` videos into the segments of `short-pretrain.csv` (spec 6.1 step 2).

Reads  `{lrs3}/short-pretrain.csv` (from `preparation.lrs3.segment`) and
       `{lrs3}/pretrain/{spk}/{clip}.mp4`.
Writes `{lrs3}/short-pretrain/{id}.mp4` (25 fps H.264, crf 20) and
       `{lrs3}/audio/short-pretrain/{id}.wav` (16 kHz mono int16) for every segment id,
       plus `failures.lrs3_trim.{rank}_{nshard}.tsv` / `.lrs3_trim.{rank}_{nshard}.done` in
       `{lrs3}/short-pretrain/`.

Video frames `[floor(start * 25), min(floor(end * 25), n))` are kept (end = -1: to the last
frame), as the reference, but decoded once with OpenCV and piped to ffmpeg instead of a PNG
round-trip. Audio is decoded once to 16 kHz and sliced at whole milliseconds like the
reference's pydub slicing: samples `[int(start * 1000) * 16, int(end * 1000) * 16)`.
Shards are over *source* videos (sorted), so all segments of a video are in one shard.

Example:

    python -m preparation.lrs3.trim --lrs3 $LRS3 --nshard 8 --rank 0
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections import defaultdict
from dataclasses import dataclass
from math import floor
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from avdata import constants, procs
from avdata.ffmpeg import find_ffmpeg, run_ffmpeg

from preparation import common
from preparation.cli import run_sharded_step
from preparation.lrs3.segment import CSV_NAME, Segment, read_segments

logger = logging.getLogger(__name__)

STEP = "lrs3_trim"
FPS_TOLERANCE = 0.05
SAMPLES_PER_MS = constants.AUDIO_SAMPLE_RATE_HZ // 1000


@dataclass(frozen=True)
class TrimConfig:
    lrs3_dir: str
    csv_path: str
    ffmpeg: Optional[str] = None
    overwrite: bool = False


_SEGMENTS_CACHE: Dict[str, Dict[str, List[Segment]]] = {}


def source_id(segment_id: str) -> str:
    """`spk/clip_3` -> `spk/clip`; `spk/clip` -> itself (clip names have no underscore suffix)."""
    spk, clip = segment_id.split("/", 1)
    base = clip.rsplit("_", 1)[0] if "_" in clip and clip.rsplit("_", 1)[1].isdigit() else clip
    return f"{spk}/{base}"


def segments_by_source(csv_path: str) -> Dict[str, List[Segment]]:
    """Segments grouped by source video id (cached per process)."""
    if csv_path not in _SEGMENTS_CACHE:
        grouped: Dict[str, List[Segment]] = defaultdict(list)
        for seg in read_segments(csv_path):
            grouped[source_id(seg.id)].append(seg)
        _SEGMENTS_CACHE[csv_path] = dict(grouped)
    return _SEGMENTS_CACHE[csv_path]


def _outputs(lrs3_dir: Path, seg_id: str) -> tuple[Path, Path]:
    return (lrs3_dir / "short-pretrain" / f"{seg_id}.mp4", lrs3_dir / "audio" / "short-pretrain" / f"{seg_id}.wav")


def decode_audio(path: str | Path, ffmpeg: Optional[str] = None) -> np.ndarray:
    """The first audio stream of `path` as 16 kHz mono int16 samples `[N]`."""
    raw = run_ffmpeg(
        ["-i", str(path), "-vn", "-ac", "1", "-ar", str(constants.AUDIO_SAMPLE_RATE_HZ), "-f", "s16le", "-"],
        ffmpeg=ffmpeg,
    )
    return np.frombuffer(raw, dtype=np.int16)


def trim_source(
    video_path: str | Path,
    segments: List[Segment],
    lrs3_dir: str | Path,
    ffmpeg: Optional[str] = None,
    overwrite: bool = False,
) -> int:
    """Write the segments of one source video (those not written yet, unless `overwrite`).
    Returns the number of segments written."""
    from avdata.video import write_video

    from preparation.media import read_video, write_wav_int16

    lrs3_dir = Path(lrs3_dir)
    todo = [s for s in segments if overwrite or not all(p.is_file() for p in _outputs(lrs3_dir, s.id))]
    if not todo:
        return 0
    frames, fps = read_video(video_path)
    if abs(fps - constants.VIDEO_FPS) > FPS_TOLERANCE:
        raise ValueError(f"{video_path}: expected {constants.VIDEO_FPS} fps, got {fps:.3f}")
    audio = decode_audio(video_path, ffmpeg)
    n = len(frames)
    for seg in todo:
        first = floor(seg.start_sec * constants.VIDEO_FPS)
        last = n if seg.end_sec < 0 else min(floor(seg.end_sec * constants.VIDEO_FPS), n)
        if last <= first:
            raise ValueError(f"{seg.id}: empty segment ({seg.start_sec}-{seg.end_sec} s) of a {n}-frame video")
        a0 = int(seg.start_sec * 1000) * SAMPLES_PER_MS
        a1 = len(audio) if seg.end_sec < 0 else int(seg.end_sec * 1000) * SAMPLES_PER_MS
        video_out, audio_out = _outputs(lrs3_dir, seg.id)
        write_video(video_out, frames[first:last], fps=constants.VIDEO_FPS, ffmpeg=ffmpeg)
        write_wav_int16(audio_out, np.ascontiguousarray(audio[a0:a1]))
    return len(todo)


def _work(src: str, cfg: TrimConfig) -> int:
    segments = segments_by_source(cfg.csv_path)[src]
    return trim_source(
        Path(cfg.lrs3_dir) / "pretrain" / f"{src}.mp4", segments, cfg.lrs3_dir, cfg.ffmpeg, cfg.overwrite
    )


def _finished(src: str, cfg: TrimConfig) -> bool:
    lrs3 = Path(cfg.lrs3_dir)
    return all(p.is_file() for s in segments_by_source(cfg.csv_path)[src] for p in _outputs(lrs3, s.id))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    p.add_argument("--lrs3", required=True, help="LRS3 root")
    p.add_argument("--csv", default=None, help=f"segments (default: {{lrs3}}/{CSV_NAME})")
    p.add_argument("--ffmpeg", default=None, help="ffmpeg executable (default: from PATH)")
    common.add_common_args(p)
    return p


def _trim_config(args: argparse.Namespace) -> TrimConfig:
    return TrimConfig(str(args.lrs3), str(args.csv or Path(args.lrs3) / CSV_NAME), args.ffmpeg, args.overwrite)


def _trim_shard(args: argparse.Namespace, sources: List[str]) -> common.StepResult:
    find_ffmpeg(args.ffmpeg)
    cfg = _trim_config(args)
    result, _ = common.run_items(
        sources,
        functools.partial(_work, cfg=cfg),
        is_finished=None if args.overwrite else functools.partial(_finished, cfg=cfg),
        num_workers=args.num_workers,
        desc="trim pretrain",
        progress=not args.no_progress,
    )
    return result


def main(argv: Optional[List[str]] = None) -> int:
    return run_sharded_step(
        argv, main, STEP, build_parser(),
        lambda a: sorted(segments_by_source(_trim_config(a).csv_path)), _trim_shard,
        lambda a: Path(a.lrs3) / "short-pretrain",
    )


if __name__ == "__main__":
    procs.run_main(main)
