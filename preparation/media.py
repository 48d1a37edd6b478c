"""Video and audio file I/O for preparation: OpenCV decoding, 25 fps conversion and 16 kHz mono
wav extraction. The mp4 writer and decode-based frame counting are `avdata.video.write_video` /
`count_video_frames`.

Frames are uint8 arrays `[T, H, W, 3]` in OpenCV's BGR order (or `[T, H, W]` grayscale).
No scikit-video (broken on NumPy 2) and no PNG round-trips: frames are piped to ffmpeg.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from avdata.atomic import atomic_path
from avdata.constants import AUDIO_SAMPLE_RATE_HZ, VIDEO_FPS
from avdata.ffmpeg import FFmpegError, run_ffmpeg

__all__ = [
    "read_video",
    "video_fps",
    "convert_fps",
    "extract_wav",
    "NoAudioTrackError",
    "count_wav_samples",
    "read_wav_int16",
    "write_wav_int16",
]

# ffmpeg's words for "the input has no stream of the kind asked for" (versions 4 to 7)
_NO_STREAM_RE = re.compile(r"does not contain any stream|matches no streams")


class NoAudioTrackError(FFmpegError):
    """A video without an audio track, where its audio was asked for."""


def _open(path: str | os.PathLike):
    import cv2

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open video {path}")
    return cap


def read_video(
    path: str | os.PathLike, max_frames: Optional[int] = None, gray: bool = False
) -> Tuple[np.ndarray, float]:
    """Decode all frames (or the first `max_frames`). Returns `(frames [T,H,W,3] BGR, fps)`;
    `[T,H,W]` when `gray`. Raises if no frame decodes."""
    import cv2

    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        frames = []
        while max_frames is None or len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if gray else frame)
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"no frame could be decoded from {path}")
    return np.stack(frames), fps


def video_fps(path: str | os.PathLike) -> float:
    """Container frame rate reported by OpenCV."""
    import cv2

    cap = _open(path)
    try:
        return float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()


def convert_fps(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fps: float = VIDEO_FPS,
    ffmpeg: Optional[str] = None,
    crf: int = 18,
) -> None:
    """Re-encode `src` to constant `fps` (video only) with ffmpeg's timestamp-based `fps`
    filter, which handles variable-frame-rate input; a clip of duration D gets ~D*fps frames."""
    with atomic_path(dst) as tmp:
        run_ffmpeg(
            [
                "-i",
                str(src),
                "-an",
                "-vf",
                f"fps={fps:g},pad=ceil(iw/2)*2:ceil(ih/2)*2",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                str(crf),
                "-pix_fmt",
                "yuv420p",
                str(tmp),
            ],
            ffmpeg=ffmpeg,
        )


def extract_wav(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    ffmpeg: Optional[str] = None,
    sample_rate_hz: int = AUDIO_SAMPLE_RATE_HZ,
) -> None:
    """Extract the first audio stream of `src` as 16-bit PCM mono wav at `sample_rate_hz`,
    resampling and down-mixing as needed (the reference assumed LRS3 was already 16 kHz).

    Raises `NoAudioTrackError` (one line: the file, "has no audio track", what to do) when `src`
    has no audio stream, instead of ffmpeg's "Output file #0 does not contain any stream"."""
    try:
        with atomic_path(dst) as tmp:
            run_ffmpeg(
                [
                    "-i",
                    str(src),
                    "-vn",
                    "-ac",
                    "1",
                    "-ar",
                    str(sample_rate_hz),
                    "-acodec",
                    "pcm_s16le",
                    "-f",
                    "wav",
                    str(tmp),
                ],
                ffmpeg=ffmpeg,
            )
    except FFmpegError as e:
        if not _NO_STREAM_RE.search(str(e)):
            raise
        raise NoAudioTrackError(
            f"{src}: has no audio track, so no wav can be extracted; re-export the video with its sound, "
            "or leave the clip out of the list"
        ) from None


def count_wav_samples(path: str | os.PathLike) -> int:
    """Number of samples per channel from the wav header."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"wav not found: {path}")
    return int(sf.info(str(path)).frames)


def read_wav_int16(path: str | os.PathLike) -> Tuple[np.ndarray, int]:
    """Read a wav as int16 samples `[N]` (mono) or `[N, C]`; returns `(samples, rate)`."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"wav not found: {path}")
    data, rate = sf.read(str(path), dtype="int16", always_2d=False)
    return data, int(rate)


def write_wav_int16(path: str | os.PathLike, samples: np.ndarray, rate: int = AUDIO_SAMPLE_RATE_HZ) -> None:
    """Write int16 samples `[N]` as a PCM_16 wav, atomically."""
    import soundfile as sf

    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise TypeError(f"write_wav_int16 expects int16 samples, got {samples.dtype}")
    path = Path(path)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), samples, rate, subtype="PCM_16", format="WAV")
