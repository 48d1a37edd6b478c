"""Video I/O and transforms for 96x96 mouth-ROI clips, and the project's one mp4 writer.

Mirrors reference `avhubert/utils.py` `load_video` + `Compose(Normalize, CenterCrop/RandomCrop,
HorizontalFlip, Normalize)` (av_hubert@258fb50): grayscale uint8 frames, /255, 88x88 crop
(center for evaluation; one random offset per clip + horizontal flip p=0.5 for training),
then (x - 0.421) / 0.165. Vectorised over the whole clip.

`write_video` is the one mp4 writer (preparation, the demo corpus and the synthetic test data):
H.264 through ffmpeg (reference: `-crf 20`; x264's `fastdecode` tune by default: no CABAC and no
deblocking filter, which a loader worker decodes ~1.9x faster at the same PSNR for ~16 % more bytes)
or MPEG-4 part 2 (`mp4v`) through OpenCV, about 25x cheaper to write for short 96x96 clips;
grayscale or BGR frames; always atomic (`avdata.atomic`).
"""

from __future__ import annotations

import functools
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


def load_video(path: str, threads: int = 1) -> np.ndarray:
    """Decode all frames as grayscale `uint8 [T, H, W]`.

    Same pixels as the reference (OpenCV's FFmpeg backend to BGR, then `BGR2GRAY`), but decoded
    with `threads` decoder threads (1: a 96x96 clip gains nothing from frame threading, which
    only adds CPU time; a loader worker is the unit of parallelism), read straight into one
    preallocated `[T, H, W, 3]` array and converted to gray in one call.
    """
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    if not cap.isOpened():
        cap.release()
        cap = cv2.VideoCapture(path)  # another backend, as the reference's plain `VideoCapture(path)`
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"cannot open video {path} (missing or not a video file)")
    try:
        ok, first = cap.read()
        if not ok:
            raise VideoReadError(f"video {path} decoded to 0 frames (empty or corrupt)")
        # container frame count is a hint only: the buffer grows when more frames decode
        hint = min(max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 1), 4096)
        buf = np.empty((hint + 1,) + first.shape, np.uint8)
        buf[0], num = first, 1
        while True:
            if num == len(buf):
                buf = np.concatenate([buf, np.empty_like(buf)])
            dst = buf[num]
            ok, frame = cap.read(dst)
            if not ok:
                break
            if frame is not dst:  # OpenCV allocated a new array instead of writing into `dst`
                if frame.shape != dst.shape:
                    raise VideoReadError(f"video {path}: frame {num} is {frame.shape}, frame 0 was {first.shape}")
                dst[...] = frame
            num += 1
    finally:
        cap.release()
    clip = buf[:num]  # [T, H, W, 3] BGR or [T, H, W]
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
    One pass over the crop: flip and a 256-entry lookup table (`cv2.LUT`) replace the
    float conversion, division and normalisation (same float32 values, about 7x less time).
    """
    if frames.dtype != np.uint8 or frames.ndim != 3:
        raise TypeError(f"transform_video expects uint8 [T, H, W] frames, got {frames.dtype} {frames.shape}")
    t, h, w = frames.shape
    if h < crop_size or w < crop_size:
        raise ValueError(f"frames {h}x{w} smaller than crop {crop_size}")
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        top, left = int(rng.integers(0, h - crop_size + 1)), int(rng.integers(0, w - crop_size + 1))
        flip = bool(rng.random() < 0.5)
    else:
        top, left, flip = (h - crop_size) // 2, (w - crop_size) // 2, False
    x = np.ascontiguousarray(frames[:, top : top + crop_size, left : left + crop_size])
    if t == 0:
        return np.zeros((0, crop_size, crop_size), np.float32)
    x = x.reshape(t * crop_size, crop_size)  # 2-D for OpenCV
    if flip:
        x = cv2.flip(x, 1)
    return cv2.LUT(x, _normalize_table(mean, std)).reshape(t, crop_size, crop_size)


@functools.lru_cache(maxsize=8)
def _normalize_table(mean: float, std: float) -> np.ndarray:
    """`float32 [256]`: `(v / 255 - mean) / std` for every uint8 `v`, computed in the reference's
    float32 steps, so a table lookup is bit-identical to normalising the clip."""
    table = (np.arange(256, dtype=np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    table.flags.writeable = False
    return table


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
    fast_decode: bool = True,
) -> None:
    """Encode uint8 frames (`[T, H, W]` grayscale or `[T, H, W, 3]` BGR) to an mp4, atomically.

    `codec="h264"`: frames are piped to ffmpeg as raw video (libx264, `crf`, yuv420p; odd sizes
    are padded to even; `fast_decode`: x264 `-tune fastdecode`, the training loader's decode is the
    cost of every epoch, the write is paid once). `codec="mp4v"`: OpenCV's MPEG-4 part 2 writer, in process (grayscale
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
            _write_h264(tmp, frames, fps, crf, ffmpeg, fast_decode)
        else:
            _write_mp4v(tmp, frames, fps)
        if verify:
            decoded = count_video_frames(tmp)
            if decoded != frames.shape[0]:
                raise RuntimeError(f"{path}: wrote {frames.shape[0]} frames but {decoded} decode")


def _write_h264(
    path: os.PathLike, frames: np.ndarray, fps: float, crf: int, ffmpeg: Optional[str], fast_decode: bool
) -> None:
    height, width = frames.shape[1:3]
    pix_fmt = "gray" if frames.ndim == 3 else "bgr24"
    tune = ["-tune", "fastdecode"] if fast_decode else []
    run_ffmpeg(
        ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-", "-an",
         "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", *tune,
         "-crf", str(crf), "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)],
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
