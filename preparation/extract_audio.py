"""Extract 16 kHz mono 16-bit wav audio from the videos of a file list.

Reads  `{video_dir}/{id}{video_ext}` for each id of `--file-list`.
Writes `{audio_dir}/{id}.wav` (PCM int16, mono, 16 kHz: resampled and down-mixed as needed),
       `{audio_dir}/failures.extract_audio.{rank}_{nshard}.tsv` on failures and
       `{audio_dir}/.extract_audio.{rank}_{nshard}.done` when a shard finished cleanly.
Existing non-empty wavs are kept (so LRS3 `short-pretrain` wavs cut by `lrs3_trim` are not
redone).

This is reference spec 6.1 step 3 (LRS3 `trainval`/`test`) and 6.2 step 2 (VoxCeleb2).

Example:

    python -m preparation.extract_audio --video-dir $LRS3 --file-list $LRS3/file.list \
        --audio-dir $LRS3/audio --nshard 4 --rank 0
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import List, Optional

from avdata.ffmpeg import find_ffmpeg

from avdata import procs
from preparation import common
from preparation.cli import file_list_items, run_sharded_step

logger = logging.getLogger(__name__)

STEP = "extract_audio"


def _work(item_id: str, video_dir: str, audio_dir: str, video_ext: str, ffmpeg: Optional[str]) -> None:
    from preparation.media import extract_wav

    extract_wav(Path(video_dir) / f"{item_id}{video_ext}", Path(audio_dir) / f"{item_id}.wav", ffmpeg=ffmpeg)


def _finished(item_id: str, audio_dir: str) -> bool:
    path = Path(audio_dir) / f"{item_id}.wav"
    return path.is_file() and path.stat().st_size > 44  # more than a bare wav header


def extract_audio(
    ids: List[str],
    video_dir: str | Path,
    audio_dir: str | Path,
    video_ext: str = ".mp4",
    ffmpeg: Optional[str] = None,
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> common.StepResult:
    """Extract wavs for `ids` (already sharded)."""
    find_ffmpeg(ffmpeg)
    result, _ = common.run_items(
        ids,
        functools.partial(
            _work, video_dir=str(video_dir), audio_dir=str(audio_dir), video_ext=video_ext, ffmpeg=ffmpeg
        ),
        is_finished=None if overwrite else functools.partial(_finished, audio_dir=str(audio_dir)),
        num_workers=num_workers,
        desc="audio",
        progress=progress,
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    p = common.clip_step_parser(__doc__)
    p.add_argument("--audio-dir", required=True, help="output folder for {id}.wav")
    return p


def _extract_shard(args: argparse.Namespace, ids: List[str]) -> common.StepResult:
    return extract_audio(
        ids,
        args.video_dir,
        args.audio_dir,
        args.video_ext,
        args.ffmpeg,
        args.num_workers,
        args.overwrite,
        not args.no_progress,
    )


def main(argv: Optional[List[str]] = None) -> int:
    return run_sharded_step(argv, main, STEP, build_parser(), file_list_items, _extract_shard, lambda a: a.audio_dir)


if __name__ == "__main__":
    procs.run_main(main)
