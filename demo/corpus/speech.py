"""Audio post-processing of TTS output: resampling, level, silence padding, microphone noise,
int16 conversion and the per-video-frame energy envelope."""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import resample_poly

__all__ = ["resample", "set_peak_level", "pad_or_trim", "add_noise_floor", "to_int16", "frame_rms", "frame_envelope"]

INT16_FULL_SCALE = 32768.0
ENVELOPE_RANGE_DB = 30.0  # envelope 0 at this many dB below the loudest frame, 1 at the loudest


def resample(samples: np.ndarray, rate_in_hz: int, rate_out_hz: int) -> np.ndarray:
    """Polyphase resampling of int16-scale or float samples `[N]` -> float64 in -1..1 `[N']`."""
    x = np.asarray(samples, dtype=np.float64)
    if np.issubdtype(np.asarray(samples).dtype, np.integer):
        x = x / INT16_FULL_SCALE
    if rate_in_hz == rate_out_hz:
        return x
    g = gcd(int(rate_in_hz), int(rate_out_hz))
    return resample_poly(x, rate_out_hz // g, rate_in_hz // g)


def set_peak_level(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scale float samples so that the absolute peak is `peak_dbfs` (dB re full scale)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 0:
        return x
    return x * (10.0 ** (peak_dbfs / 20.0) / peak)


def pad_or_trim(x: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad or cut `x` at the end to exactly `length` samples."""
    if len(x) >= length:
        return x[:length]
    return np.concatenate([x, np.zeros(length - len(x), dtype=x.dtype)])


def add_noise_floor(x: np.ndarray, rms_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian microphone noise of the given RMS level."""
    return x + (10.0 ** (rms_dbfs / 20.0)) * rng.standard_normal(len(x))


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples in -1..1 -> int16 (clipped)."""
    return np.clip(np.rint(x * INT16_FULL_SCALE), -32768, 32767).astype(np.int16)


def frame_rms(x: np.ndarray, samples_per_frame: int) -> np.ndarray:
    """RMS of each block of `samples_per_frame` samples, `[N] -> [N // samples_per_frame]`."""
    num_frames = len(x) // samples_per_frame
    blocks = np.asarray(x[: num_frames * samples_per_frame], dtype=np.float64).reshape(num_frames, samples_per_frame)
    return np.sqrt(np.mean(blocks * blocks, axis=1))


def frame_envelope(x: np.ndarray, samples_per_frame: int, range_db: float = ENVELOPE_RANGE_DB) -> np.ndarray:
    """Per-frame loudness in 0..1: frame RMS in dB mapped linearly from (max - range_db) to max."""
    rms = frame_rms(x, samples_per_frame)
    db = 20.0 * np.log10(rms + 1e-10)
    return np.clip((db - (db.max() - range_db)) / range_db, 0.0, 1.0)
