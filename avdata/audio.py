"""Audio I/O and the AV-HuBERT audio features (log filterbank, stacking, alignment, norm).

Mirrors reference `hubert_dataset.AVHubertDataset.load_feature` / `stacker` (av_hubert@258fb50):
`python_speech_features.logfbank` with its defaults on the raw int16-scale 16 kHz waveform
(25 ms frames, 10 ms hop, rectangular window, pre-emphasis 0.97, NFFT 512, 26 mel filters),
zero-padded and stacked 4 frames -> 104-d at 25 Hz, forced to the video length, per-frame
layer norm. Shared by the dataset and the clustering scripts (one implementation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from avdata.constants import AUDIO_SAMPLE_RATE_HZ

if TYPE_CHECKING:  # torch is imported only by `audio_features`, which hands a tensor to the model
    import torch

__all__ = [
    "AUDIO_SAMPLE_RATE_HZ",
    "FBANK_FILTERS",
    "AudioFormatError",
    "read_wav",
    "log_filterbank",
    "stack_frames",
    "align_to_length",
    "normalize_frames",
    "audio_features",
]

FBANK_FILTERS = 26


class AudioFormatError(ValueError):
    """A wav that is not 16 kHz mono; the message names the file."""


def read_wav(path: str, expected_rate_hz: int = AUDIO_SAMPLE_RATE_HZ) -> np.ndarray:
    """Read a mono wav as int16-scale samples `[N]` (float64 input is rescaled to int16 range).

    Raises `AudioFormatError` for another sample rate, more than one channel or NaN/inf samples
    in a float wav (which would become arbitrary int16 values), and `FileNotFoundError` for a
    missing file.
    """
    try:
        info = sf.info(path)
    except RuntimeError as e:  # soundfile reports missing and corrupt files alike
        raise FileNotFoundError(f"cannot read audio {path}: {e}") from None
    if info.samplerate != expected_rate_hz:
        raise AudioFormatError(
            f"{path}: sample rate {info.samplerate} Hz, expected {expected_rate_hz} Hz "
            "(resample with: ffmpeg -i in.wav -ac 1 -ar 16000 out.wav)"
        )
    if info.channels != 1:
        raise AudioFormatError(f"{path}: {info.channels} channels, expected mono (ffmpeg -ac 1)")
    if info.subtype in ("FLOAT", "DOUBLE"):
        bad = int((~np.isfinite(sf.read(path, dtype="float64")[0])).sum())
        if bad:
            raise AudioFormatError(f"{path}: {bad} NaN/inf samples (a float wav); fix or drop the file")
    wav, _ = sf.read(path, dtype="int16")
    return wav


def log_filterbank(wav: np.ndarray, sample_rate_hz: int = AUDIO_SAMPLE_RATE_HZ) -> np.ndarray:
    """26-d log mel filterbank at 100 Hz, `[N] -> [1 + ceil((N - 400) / 160), 26]` float32."""
    from python_speech_features import logfbank

    return logfbank(np.asarray(wav), samplerate=sample_rate_hz).astype(np.float32)


def stack_frames(feats: np.ndarray, stack_order: int) -> np.ndarray:
    """Zero-pad `[T, F]` to a multiple of `stack_order` frames, concat groups: `[ceil(T/k), F*k]`."""
    num_frames, dim = feats.shape
    pad = -num_frames % stack_order
    if pad:
        feats = np.concatenate([feats, np.zeros((pad, dim), dtype=feats.dtype)], axis=0)
    # [T', F] -> [T'/k, k*F]; frame-major order [f0, f1, ..., f(k-1)]
    return feats.reshape(-1, stack_order * dim)


def align_to_length(feats: np.ndarray, num_frames: int) -> np.ndarray:
    """Truncate or zero-pad (at the end) `[T, F]` to exactly `num_frames` rows."""
    diff = len(feats) - num_frames
    if diff > 0:
        return feats[:num_frames]
    if diff < 0:
        return np.concatenate([feats, np.zeros((-diff, feats.shape[1]), dtype=feats.dtype)], axis=0)
    return feats


def normalize_frames(feats: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-time-step layer norm over the feature axis (no affine), `[T, F] -> [T, F]`.

    Equals `F.layer_norm(x, x.shape[-1:])` (biased variance, eps 1e-5). Computed in NumPy on
    purpose: it runs in the data loader, where a torch op on a tiny tensor wakes torch's OpenMP
    pool and, on a 2-core machine, stalls for milliseconds against the training threads.
    """
    feats = feats.astype(np.float32, copy=False)
    mean = feats.mean(axis=-1, keepdims=True)
    var = np.square(feats - mean).mean(axis=-1, keepdims=True)
    return (feats - mean) / np.sqrt(var + eps)


def audio_features(
    wav: np.ndarray,
    stack_order: int = 4,
    num_video_frames: int | None = None,
    normalize: bool = True,
) -> "torch.Tensor":
    """int16-scale wav `[N]` -> model input `[T, 26 * stack_order]` float32 at 25 Hz."""
    import torch

    feats = stack_frames(log_filterbank(wav), stack_order)
    if num_video_frames is not None:
        feats = align_to_length(feats, num_video_frames)
    if normalize:
        feats = normalize_frames(feats)
    return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
