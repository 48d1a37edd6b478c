"""Any media file ffmpeg reads, decoded in memory for the model: video frames at 25 fps
(grayscale, streamed in chunks so long videos never sit in memory whole) and 16 kHz mono int16
audio. `probe` says which streams a file has (ffprobe).

File-to-file conversions for corpus preparation (`preparation.media`) write mp4/wav files
instead; this module is for inference on arbitrary inputs (`avhubert.transcribe`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from avdata.constants import AUDIO_SAMPLE_RATE_HZ, VIDEO_FPS
from avdata.ffmpeg import FFmpegError, find_ffmpeg, run_ffmpeg

__all__ = ["MediaInfo", "MediaError", "probe", "decode_audio", "iter_video_chunks", "decode_video"]


class MediaError(ValueError):
    """A file that is missing, unreadable, or lacks the stream asked for; names the file."""


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` found. `width`/`height` as displayed (after rotation); `fps` the average rate."""

    path: str
    duration_s: float
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0


def _ffprobe(ffmpeg: Optional[str]) -> str:
    exe = find_ffmpeg(ffmpeg)
    probe_exe = shutil.which(os.path.join(os.path.dirname(exe), "ffprobe")) or shutil.which("ffprobe")
    if probe_exe is None:
        raise FileNotFoundError("ffprobe not found beside ffmpeg nor on PATH (Debian: apt-get install ffmpeg)")
    return probe_exe


def _rate(text: str) -> float:
    num, _, den = (text or "0/1").partition("/")
    try:
        return float(num) / float(den or 1) if float(den or 1) else 0.0
    except ValueError:
        return 0.0


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    return int(stream.get("tags", {}).get("rotate", 0) or 0) % 360


def probe(path: str | os.PathLike, ffmpeg: Optional[str] = None) -> MediaInfo:
    """Streams and duration of `path`; `MediaError` when the file is missing or unreadable."""
    path = str(path)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: file not found")
    cmd = [_ffprobe(ffmpeg), "-v", "error", "-show_streams", "-show_format", "-of", "json", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["ffprobe failed"])[-1]
        raise MediaError(f"{path}: not a readable audio/video file ({reason})")
    data = json.loads(proc.stdout or "{}")
    streams = data.get("streams", [])
    # cover art (attached pictures) is not a video track
    video = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    duration = float(data.get("format", {}).get("duration", 0) or 0)
    if not video:
        return MediaInfo(path, duration, False, bool(audio))
    v = video[0]
    w, h = int(v.get("width", 0)), int(v.get("height", 0))
    if _rotation(v) in (90, 270):
        w, h = h, w
    fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    return MediaInfo(path, duration, True, bool(audio), w, h, fps)


def decode_audio(
    path: str | os.PathLike, sample_rate_hz: int = AUDIO_SAMPLE_RATE_HZ, ffmpeg: Optional[str] = None
) -> np.ndarray:
    """The first audio stream as int16 mono samples `[N]` at `sample_rate_hz` (any input rate
    and channel count is resampled and down-mixed). `MediaError` when there is no audio track."""
    try:
        raw = run_ffmpeg(["-i", str(path), "-vn", "-map", "0:a:0", "-ac", "1", "-ar", str(sample_rate_hz),
                          "-f", "s16le", "-acodec", "pcm_s16le", "-"], ffmpeg=ffmpeg)
    except FFmpegError as e:
        if "matches no streams" in str(e) or "does not contain any stream" in str(e):
            raise MediaError(f"{path}: has no audio track") from None
        raise MediaError(f"{path}: audio cannot be decoded ({str(e).splitlines()[-1]})") from None
    return np.frombuffer(raw, dtype=np.int16).copy()


def _output_size(info: MediaInfo, max_side: Optional[int]) -> tuple:
    w, h = info.width, info.height
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
        w, h = int(round(w * scale / 2)) * 2, int(round(h * scale / 2)) * 2
    return w, h


def iter_video_chunks(
    path: str | os.PathLike,
    chunk_frames: int = 250,
    fps: float = VIDEO_FPS,
    max_side: Optional[int] = None,
    info: Optional[MediaInfo] = None,
    ffmpeg: Optional[str] = None,
) -> Iterator[np.ndarray]:
    """Grayscale frames `uint8 [<=chunk_frames, H, W]` at constant `fps` (ffmpeg's `fps` filter:
    frames dropped or repeated by timestamp, so a clip of D seconds gives ~D*fps frames).
    `max_side`: downscale so the longer side is at most this many pixels."""
    info = info or probe(path, ffmpeg)
    if not info.has_video or info.width <= 0 or info.height <= 0:
        raise MediaError(f"{path}: has no video track")
    w, h = _output_size(info, max_side)
    cmd = [find_ffmpeg(ffmpeg), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), "-an",
           "-map", "0:v:0", "-vf", f"fps={fps:g},scale={w}:{h}", "-f", "rawvideo", "-pix_fmt", "gray", "-"]
    frame_bytes = w * h
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while True:
            buf = proc.stdout.read(frame_bytes * chunk_frames)
            n = len(buf) // frame_bytes
            if n:
                yield np.frombuffer(buf[: n * frame_bytes], dtype=np.uint8).reshape(n, h, w)
            if len(buf) < frame_bytes * chunk_frames:
                break
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        tail = (err.strip().splitlines() or ["no message"])[-1]
        raise MediaError(f"{path}: video cannot be decoded (ffmpeg exit {code}: {tail})")


def decode_video(path: str | os.PathLike, fps: float = VIDEO_FPS, max_side: Optional[int] = None,
                 ffmpeg: Optional[str] = None) -> np.ndarray:
    """All frames at once: grayscale `uint8 [T, H, W]` at `fps` (see `iter_video_chunks`)."""
    chunks = list(iter_video_chunks(path, fps=fps, max_side=max_side, ffmpeg=ffmpeg))
    if not chunks:
        raise MediaError(f"{path}: no video frame could be decoded")
    return np.concatenate(chunks)
