"""Video I/O and transforms for 96x96 mouth-ROI clips.

Mirrors reference `avhubert/utils.py` `load_video` + `Compose(Normalize, CenterCrop/RandomCrop,
HorizontalFlip, Normalize)` (av_hubert@258fb50): grayscale uint8 frames, /255, 88x88 crop
(center for evaluation; one random offset per clip + horizontal flip p=0.5 for training),
then (x - 0.421) / 0.165. Vectorised over the whole clip.
"""

from typing import Optional

import cv2
import numpy as np

from avdata.constants import VIDEO_FPS

__all__ = ["VIDEO_FPS", "VideoReadError", "load_video", "transform_video"]

IMAGE_MEAN, IMAGE_STD, CROP_SIZE = 0.421, 0.165, 88


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
