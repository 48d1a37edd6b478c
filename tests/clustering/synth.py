"""Tiny synthetic audio-only corpora for the clustering tests (written under a tmp dir)."""

from pathlib import Path
from typing import List, Sequence

import numpy as np
import soundfile as sf

from avdata.manifest import ManifestRow, write_manifest

SAMPLE_RATE_HZ = 16_000
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps


def speech_like(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """int16 waveform: harmonic 'vowels' with a drifting f0 alternating with noise bursts."""
    t = np.arange(num_samples) / SAMPLE_RATE_HZ
    f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ
    voiced = sum(np.sin(h * phase) / h for h in range(1, 12))
    envelope = (np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)) > 0).astype(float)
    x = envelope * voiced + (1 - envelope) * rng.normal(scale=0.3, size=num_samples)
    x = 0.3 * x / (np.abs(x).max() + 1e-9)
    return np.round(x * 32767).astype(np.int16)


def make_corpus(
    root: Path,
    splits: Sequence[str] = ("train", "valid"),
    num_utts: Sequence[int] = (6, 2),
    frames: tuple = (20, 60),
    seed: int = 0,
) -> Path:
    """Write wavs and `{split}.tsv` manifests (no video) under `root`; returns the manifest dir.

    For audio-visual data use the shared `synthetic_corpus` fixture (`tests/conftest.py`).
    """
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for split, n in zip(splits, num_utts):
        rows: List[ManifestRow] = []
        for i in range(n):
            uid = f"{split}{i:03d}"
            num_frames = int(rng.integers(*frames))
            wav = speech_like(num_frames * SAMPLES_PER_FRAME, rng)
            sf.write(root / "audio" / f"{uid}.wav", wav, SAMPLE_RATE_HZ, subtype="PCM_16")
            rows.append(ManifestRow(uid, None, f"audio/{uid}.wav", num_frames, len(wav)))
        write_manifest(root / f"{split}.tsv", str(root), rows)
    return root
