"""Video I/O and transforms for 96x96 mouth-ROI clips, and the project's one mp4 writer.

Mirrors reference `avhubert/utils.py` `load_video` + `Compose(Normalize, CenterCrop/RandomCrop,
HorizontalFlip, Normalize)` (av_hubert@258fb50): grayscale uint8 frames, /255, 88x88 crop
(center for evaluation; one random offset per clip + horizontal flip p=0.5 for training),
then (x - 0.421) / 0.165. Vectorised over the whole clip.

`write_video` is the one mp4 writer (preparation, the demo corpus and the synthetic test data):
H.264 through ffmpeg (reference: `-crf 20`) or MPEG-4 part 2 (`mp4v`) through OpenCV, about 25x
cheaper for short 96x96 clips; grayscale or BGR frames; always atomic (`avdata.atomic`).
"""

from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from avdata.atomic import atomic_path
from avdata.constants import VIDEO_FPS
from avdata.ffmpeg import run_ffmpeg

__all__ = [
    "VIDEO_FPS",
    "H264_CRF",
    "CODECS",
    "VideoReadError",
    "load_video",
    "transform_video",
    "count_video_frames",
    "write_video",
]

IMAGE_MEAN, IMAGE_STD, CROP_SIZE = 0.421, 0.165, 88
H264_CRF = 20  # reference: ffmpeg `-crf 20` for trimmed clips and mouth ROIs
CODECS = ("h264", "mp4v")


class VideoReadError(RuntimeError):
    """A video that cannot be opened or decodes to no frames; the message names the file."""


def load_video(path: str) -> np.ndarray:
    """Decode all frames as grayscale `uint8 [T, H, W]`."""
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"cannot open video {path} (missing or not a video file)")
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise VideoReadError(f"video {path} decoded to 0 frames (empty or corrupt)")
    clip = np.stack(frames)  # [T, H, W, 3] BGR or [T, H, W]
    if clip.ndim == 4:
        t, h, w, _ = clip.shape
        clip = cv2.cvtColor(clip.reshape(t * h, w, 3), cv2.COLOR_BGR2GRAY).reshape(t, h, w)
    return clip


def transform_video(
    frames: np.ndarray,
    train: bool,
    crop_size: int = CROP_SIZE,
    mean: float = IMAGE_MEAN,
    std: float = IMAGE_STD,
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """`uint8 [T, H, W]` -> normalised `float32 [T, crop, crop]`.

    `train`: random crop offset and horizontal flip with p=0.5 (both per clip) from `rng`.
    """
    t, h, w = frames.shape
    if h < crop_size or w < crop_size:
        raise ValueError(f"frames {h}x{w} smaller than crop {crop_size}")
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        top, left = int(rng.integers(0, h - crop_size + 1)), int(rng.integers(0, w - crop_size + 1))
        flip = bool(rng.random() < 0.5)
    else:
        top, left, flip = (h - crop_size) // 2, (w - crop_size) // 2, False
    x = frames[:, top : top + crop_size, left : left + crop_size]
    if flip:
        x = x[:, :, ::-1]
    x = x.astype(np.float32) / 255.0
    return (x - mean) / std


def count_video_frames(path: str | os.PathLike) -> int:
    """Number of frames that actually decode (not the container's frame-count metadata).

    Raises `FileNotFoundError` for a missing file and `ValueError` when OpenCV cannot open it.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"OpenCV cannot open video {path}")
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = VIDEO_FPS,
    codec: str = "h264",
    crf: int = H264_CRF,
    ffmpeg: Optional[str] = None,
    verify: bool = False,
) -> None:
    """Encode uint8 frames (`[T, H, W]` grayscale or `[T, H, W, 3]` BGR) to an mp4, atomically.

    `codec="h264"`: frames are piped to ffmpeg as raw video (libx264, `crf`, yuv420p; odd sizes
    are padded to even). `codec="mp4v"`: OpenCV's MPEG-4 part 2 writer, in process (grayscale
    is stored as 3 equal channels). `verify`: decode the result and raise `RuntimeError` unless
    it has exactly `T` frames (before it is renamed into place).
    """
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"write_video expects uint8 frames, got {frames.dtype}")
    if not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)):
        raise ValueError(f"write_video expects [T,H,W] or [T,H,W,3] frames, got shape {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError(f"write_video: no frames to write to {path}")
    if codec not in CODECS:
        raise ValueError(f"write_video: unknown codec {codec!r} (one of {', '.join(CODECS)})")
    with atomic_path(path) as tmp:
        if codec == "h264":
            _write_h264(tmp, frames, fps, crf, ffmpeg)
        else:
            _write_mp4v(tmp, frames, fps)
        if verify:
            decoded = count_video_frames(tmp)
            if decoded != frames.shape[0]:
                raise RuntimeError(f"{path}: wrote {frames.shape[0]} frames but {decoded} decode")


def _write_h264(path: os.PathLike, frames: np.ndarray, fps: float, crf: int, ffmpeg: Optional[str]) -> None:
    height, width = frames.shape[1:3]
    pix_fmt = "gray" if frames.ndim == 3 else "bgr24"
    run_ffmpeg(
        ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-", "-an",
         "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf),
         "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)],
        ffmpeg=ffmpeg,
        input_bytes=frames.tobytes(),
    )


def _write_mp4v(path: os.PathLike, frames: np.ndarray, fps: float) -> None:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height), True)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot open an mp4v writer for {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame)
    finally:
        writer.release()
