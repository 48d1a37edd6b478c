"""Crop 96x96 mouth regions of interest from videos and their landmarks, as 25 fps mp4.

Reads  `{video_dir}/{id}.mp4` and `{landmark_dir}/{id}.npy` (or the reference's `{id}.pkl`)
       for each id of `--file-list`.
Writes `{out_dir}/{id}.mp4`: H.264 (crf 20), 25 fps, `crop_height x crop_width`, colour;
       `{out_dir}/failures.crop_mouth_rois.{rank}_{nshard}.tsv` on failures and
       `{out_dir}/.crop_mouth_rois.{rank}_{nshard}.done` when a shard finished cleanly.

Alignment (see `avdata.face.mouth_roi`): interpolate missing landmarks, average them over a
12-frame window, similarity-align the stable points (nose tip, eye corners) to a mean face in
a 256x256 canvas, crop around the mouth (landmarks 48-67). A clip without any landmark fails
(`--no-face fail`, default) or, like the reference, is resized whole (`--no-face resize`).

Example:

    python -m preparation.face.crop_mouth_rois --video-dir $LRS3 --landmark-dir $LRS3/landmark \
        --file-list $LRS3/file.list --out-dir $LRS3/video --nshard 4 --rank 0

The reference `align_mouth.py` flags (`--video-direc --landmark-direc --filename-path
--save-direc --mean-face --crop-width --crop-height --start-idx --stop-idx --window-margin`)
are accepted.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from avdata import constants, procs
from avdata.ffmpeg import find_ffmpeg

from preparation import common
from preparation.cli import file_list_items, run_sharded_step
from avdata.face.mouth_roi import CropOptions, crop_geometry, load_mean_face, resize_frames, warp_crops

logger = logging.getLogger(__name__)

STEP = "crop_mouth_rois"
NO_FACE_CHOICES = ("fail", "resize")


@dataclass(frozen=True)
class CropConfig:
    """Everything a worker needs (picklable)."""

    video_dir: str
    landmark_dir: str
    out_dir: str
    mean_face: np.ndarray = field(compare=False, hash=False, repr=False)
    options: CropOptions = field(default_factory=CropOptions)
    no_face: str = "fail"
    ffmpeg: Optional[str] = None
    video_ext: str = ".mp4"


def find_landmarks(landmark_dir: str | Path, item_id: str) -> Path:
    """`{id}.npy`, else the reference's `{id}.pkl`."""
    for ext in (".npy", ".pkl"):
        path = Path(landmark_dir) / f"{item_id}{ext}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no landmarks for {item_id} in {landmark_dir} (expected {item_id}.npy or .pkl)")


def crop_frames(
    frames: np.ndarray,
    landmarks: np.ndarray,
    mean_face: np.ndarray,
    options: Optional[CropOptions] = None,
    no_face: str = "fail",
) -> np.ndarray:
    """Mouth crops `[T, h, w(, 3)]` uint8 of `frames [T, H, W(, 3)]` given `landmarks [T, 68, 2]`.

    Raises `ValueError` on a frame/landmark count mismatch, a clip without landmarks
    (`no_face='fail'`) or a crop centre clamped by more than `options.max_clamp_px`."""
    opts = options or CropOptions()
    if len(frames) != len(landmarks):
        raise ValueError(f"{len(frames)} decoded frames but {len(landmarks)} landmark frames")
    geometry = crop_geometry(landmarks, mean_face, opts)
    if geometry is None:
        if no_face == "resize":
            return resize_frames(frames, opts.crop_width, opts.crop_height)
        if no_face == "fail":
            raise ValueError("no face detected in any frame (use --no-face resize to keep the whole frame)")
        raise ValueError(f"unknown no_face policy {no_face!r}; expected one of {NO_FACE_CHOICES}")
    worst = float(geometry.clamp_px.max())
    if worst > opts.max_clamp_px:
        frame = int(geometry.clamp_px.argmax())
        raise ValueError(
            f"mouth crop leaves the aligned face canvas by {worst:.1f} px at frame {frame} "
            f"(limit {opts.max_clamp_px} px): landmarks are probably wrong"
        )
    return warp_crops(frames, geometry.matrices, opts.crop_width, opts.crop_height)


def crop_one(video_path: str | Path, landmarks_path: str | Path, out_path: str | Path, cfg: CropConfig) -> int:
    """Crop one clip to `out_path` (mp4, 25 fps). Returns the number of frames written."""
    from avdata.face.landmarks import load_landmarks
    from avdata.video import write_video

    from preparation.media import read_video

    frames, _ = read_video(video_path)
    landmarks = load_landmarks(landmarks_path)
    crops = crop_frames(frames, landmarks, cfg.mean_face, cfg.options, cfg.no_face)
    write_video(out_path, crops, fps=constants.VIDEO_FPS, ffmpeg=cfg.ffmpeg)
    return len(crops)


def _work(item_id: str, cfg: CropConfig) -> int:
    video = Path(cfg.video_dir) / f"{item_id}{cfg.video_ext}"
    out = Path(cfg.out_dir) / f"{item_id}.mp4"
    return crop_one(video, find_landmarks(cfg.landmark_dir, item_id), out, cfg)


def _finished(item_id: str, out_dir: str) -> bool:
    path = Path(out_dir) / f"{item_id}.mp4"
    return path.is_file() and path.stat().st_size > 0


def crop_mouth_rois(
    ids: List[str], cfg: CropConfig, num_workers: int = 1, overwrite: bool = False, progress: bool = True
) -> common.StepResult:
    """Crop all `ids` (already sharded); skips existing outputs unless `overwrite`."""
    find_ffmpeg(cfg.ffmpeg)
    result, _ = common.run_items(
        ids,
        functools.partial(_work, cfg=cfg),
        is_finished=None if overwrite else functools.partial(_finished, out_dir=cfg.out_dir),
        num_workers=num_workers,
        desc="mouth ROIs",
        progress=progress,
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    p = common.clip_step_parser(__doc__, ("--video-direc",), ("--filename-path", "--manifest"))
    add = functools.partial(common.add_alias, p)
    d = CropOptions()
    add("--landmark-dir", "--landmark-direc", required=True, help="folder holding {id}.npy / {id}.pkl")
    add("--out-dir", "--save-direc", required=True, help="output folder for {id}.mp4")
    p.add_argument(
        "--mean-face",
        default=None,
        help="[68,2] mean face .npy in 256x256 pixels, e.g. 20words_mean_face.npy "
        "(default: built-in dlib-derived mean face)",
    )
    p.add_argument("--crop-width", type=int, default=d.crop_width)
    p.add_argument("--crop-height", type=int, default=d.crop_height)
    p.add_argument("--start-idx", type=int, default=d.start_idx, help="first mouth landmark")
    p.add_argument("--stop-idx", type=int, default=d.stop_idx, help="one past the last mouth landmark")
    p.add_argument("--window-margin", type=int, default=d.window_margin, help="smoothing window (frames)")
    p.add_argument(
        "--max-clamp-px",
        type=float,
        default=d.max_clamp_px,
        help="fail a clip whose crop must be moved more than this to fit the canvas",
    )
    p.add_argument(
        "--no-face",
        choices=NO_FACE_CHOICES,
        default="fail",
        help="clips without any landmark: fail, or resize whole frames (reference)",
    )
    return p


def _crop_shard(args: argparse.Namespace, ids: List[str]) -> common.StepResult:
    options = CropOptions(
        args.crop_width, args.crop_height, args.start_idx, args.stop_idx, args.window_margin, args.max_clamp_px
    )
    cfg = CropConfig(
        args.video_dir,
        args.landmark_dir,
        args.out_dir,
        load_mean_face(args.mean_face),
        options,
        args.no_face,
        args.ffmpeg,
        args.video_ext,
    )
    return crop_mouth_rois(ids, cfg, args.num_workers, args.overwrite, not args.no_progress)


def main(argv: Optional[List[str]] = None) -> int:
    return run_sharded_step(argv, main, STEP, build_parser(), file_list_items, _crop_shard, lambda a: a.out_dir)


if __name__ == "__main__":
    procs.run_main(main)
