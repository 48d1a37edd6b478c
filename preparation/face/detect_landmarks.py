"""Detect 68-point facial landmarks for every frame of every clip in a file list.

Reads  `{video_dir}/{id}.mp4` for each id of `--file-list` (one id per line, e.g. LRS3's
       `file.list` with ids like `trainval/<spk>/<clip>`).
Writes `{landmark_dir}/{id}.npy`: float32 `[T, 68, 2]` (x, y) pixels, NaN where no face was
       found; `{landmark_dir}/failures.detect_landmarks.{rank}_{nshard}.tsv` on failures and
       `{landmark_dir}/.detect_landmarks.{rank}_{nshard}.done` when a shard finished cleanly.

dlib HOG detector (1 upsample) with the CNN (mmod) detector as fallback, as the reference
`detect_landmark.py`; the face box is tracked between detections (see
`avdata.face.landmarks`), `--redetect-every 1` detects on every frame like the reference.

Example (shard 0 of 4, 2 local processes):

    python -m preparation.face.detect_landmarks --video-dir $LRS3 --file-list $LRS3/file.list \
        --landmark-dir $LRS3/landmark --nshard 4 --rank 0 --num-workers 2

The reference's flags (`--root --landmark --manifest --cnn_detector --face_predictor`, and
the README's `--face_detector`) are accepted as aliases.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from avdata import procs
from preparation import common
from preparation.cli import file_list_items, run_sharded_step
from avdata.face.landmarks import (
    FaceLandmarker,
    LandmarkOptions,
    LandmarkStats,
    default_cnn_detector_path,
    default_predictor_path,
    save_landmarks,
)

logger = logging.getLogger(__name__)

STEP = "detect_landmarks"
LANDMARK_EXT = ".npy"


@dataclass(frozen=True)
class DetectConfig:
    """Everything a worker process needs (picklable)."""

    video_dir: str
    landmark_dir: str
    predictor: Optional[str]
    cnn_detector: Optional[str]
    options: LandmarkOptions
    video_ext: str = ".mp4"


_LANDMARKER_CACHE: dict = {}


def _landmarker(cfg: DetectConfig) -> FaceLandmarker:
    """One `FaceLandmarker` per process and configuration (dlib models are not picklable)."""
    key = (cfg.predictor, cfg.cnn_detector, cfg.options)
    if key not in _LANDMARKER_CACHE:
        _LANDMARKER_CACHE[key] = FaceLandmarker(cfg.predictor, cfg.cnn_detector, cfg.options)
    return _LANDMARKER_CACHE[key]


def landmark_path(landmark_dir: str | Path, item_id: str) -> Path:
    return Path(landmark_dir) / f"{item_id}{LANDMARK_EXT}"


def detect_one(video_path: str | Path, out_path: str | Path, landmarker: FaceLandmarker) -> LandmarkStats:
    """Landmarks of one video file, written to `out_path` (`.npy`). Returns the stats."""
    from preparation.media import read_video

    frames, _ = read_video(video_path, gray=True)
    landmarks, stats = landmarker.process(frames)
    save_landmarks(out_path, landmarks)
    logger.debug("%s: %s", video_path, stats.as_dict())
    return stats


def _work(item_id: str, cfg: DetectConfig) -> dict:
    video = Path(cfg.video_dir) / f"{item_id}{cfg.video_ext}"
    return detect_one(video, landmark_path(cfg.landmark_dir, item_id), _landmarker(cfg)).as_dict()


def _finished(item_id: str, landmark_dir: str) -> bool:
    path = landmark_path(landmark_dir, item_id)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        np.load(path, mmap_mode="r")
        return True
    except (ValueError, OSError):
        return False


def detect_landmarks(
    ids: List[str],
    cfg: DetectConfig,
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> common.StepResult:
    """Detect landmarks for `ids` (already sharded); skips finished ids unless `overwrite`."""
    _landmarker(cfg)  # fail early on a missing model (workers load their own copy once)
    result, outputs = common.run_items(
        ids,
        functools.partial(_work, cfg=cfg),
        is_finished=None if overwrite else functools.partial(_finished, landmark_dir=cfg.landmark_dir),
        num_workers=num_workers,
        desc="landmarks",
        progress=progress,
    )
    if outputs:
        total = {k: sum(o[k] for o in outputs.values()) for k in next(iter(outputs.values()))}
        logger.info("landmark frames: %s", total)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = common.clip_step_parser(__doc__, ffmpeg_help="accepted for compatibility; decoding uses OpenCV")
    add = functools.partial(common.add_alias, p)
    add("--landmark-dir", "--landmark", required=True, help="output folder for {id}.npy")
    add(
        "--face-predictor",
        "--face_predictor",
        "--face_detector",
        default=None,
        help=f"68-point shape predictor (default: {default_predictor_path()})",
    )
    add(
        "--cnn-detector",
        "--cnn_detector",
        default=None,
        help=f"dlib mmod CNN face detector (default: {default_cnn_detector_path()})",
    )
    p.add_argument("--no-cnn", action="store_true", help="no CNN fallback when HOG finds no face")
    p.add_argument(
        "--redetect-every",
        type=int,
        default=LandmarkOptions.redetect_every,
        help="frames between full face detections (1 = every frame, as the reference)",
    )
    p.add_argument("--upsample", type=int, default=LandmarkOptions.upsample, help="detector upsampling")
    p.add_argument(
        "--detect-max-side",
        type=int,
        default=LandmarkOptions.detect_max_side,
        help="downscale larger frames to this side for detection only (0 = never)",
    )
    return p


def _detect_shard(args: argparse.Namespace, ids: List[str]) -> common.StepResult:
    options = LandmarkOptions(
        upsample=args.upsample,
        redetect_every=max(1, args.redetect_every),
        use_cnn=not args.no_cnn,
        detect_max_side=args.detect_max_side,
    )
    cfg = DetectConfig(
        args.video_dir, args.landmark_dir, args.face_predictor, args.cnn_detector, options, args.video_ext
    )
    return detect_landmarks(ids, cfg, args.num_workers, args.overwrite, not args.no_progress)


def main(argv: Optional[List[str]] = None) -> int:
    return run_sharded_step(argv, main, STEP, build_parser(), file_list_items, _detect_shard, lambda a: a.landmark_dir)


if __name__ == "__main__":
    procs.run_main(main)
