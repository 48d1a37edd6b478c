"""Audio I/O and the AV-HuBERT audio features (log filterbank, stacking, alignment, norm).

Mirrors reference `hubert_dataset.AVHubertDataset.load_feature` / `stacker` (av_hubert@258fb50):
`python_speech_features.logfbank` with its defaults on the raw int16-scale 16 kHz waveform
(25 ms frames, 10 ms hop, rectangular window, pre-emphasis 0.97, NFFT 512, 26 mel filters;
the same numbers, computed here vectorised, about 3x faster),
zero-padded and stacked 4 frames -> 104-d at 25 Hz, forced to the video length, per-frame
layer norm. Shared by the dataset and the clustering scripts (one implementation).
"""

from __future__ import annotations

import decimal
import functools
import math
from typing import TYPE_CHECKING, Tuple

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
_PREEMPHASIS, _NFFT = 0.97, 512  # python_speech_features defaults used by the reference


class AudioFormatError(ValueError):
    """A wav that is not 16 kHz mono; the message names the file."""


def read_wav(path: str, expected_rate_hz: int = AUDIO_SAMPLE_RATE_HZ) -> np.ndarray:
    """Read a mono wav as int16-scale samples `[N]` (float64 input is rescaled to int16 range).

    Raises `AudioFormatError` for another sample rate, more than one channel or NaN/inf samples
    in a float wav (which would become arbitrary int16 values), and `FileNotFoundError` for a
    missing file. The file is opened once (header checks, then the samples).
    """
    try:
        f = sf.SoundFile(path)
    except (RuntimeError, OSError) as e:  # soundfile reports missing and corrupt files alike
        raise FileNotFoundError(f"cannot read audio {path}: {e}") from None
    with f:
        if f.samplerate != expected_rate_hz:
            raise AudioFormatError(
                f"{path}: sample rate {f.samplerate} Hz, expected {expected_rate_hz} Hz "
                "(resample with: ffmpeg -i in.wav -ac 1 -ar 16000 out.wav)"
            )
        if f.channels != 1:
            raise AudioFormatError(f"{path}: {f.channels} channels, expected mono (ffmpeg -ac 1)")
        if f.subtype in ("FLOAT", "DOUBLE"):
            bad = int((~np.isfinite(f.read(dtype="float64"))).sum())
            if bad:
                raise AudioFormatError(f"{path}: {bad} NaN/inf samples (a float wav); fix or drop the file")
            f.seek(0)
        return f.read(dtype="int16")


def log_filterbank(wav: np.ndarray, sample_rate_hz: int = AUDIO_SAMPLE_RATE_HZ, warp: float = 1.0) -> np.ndarray:
    """26-d log mel filterbank at 100 Hz, `[N] -> [1 + ceil((N - 400) / 160), 26]` float32.

    The numbers of `python_speech_features.logfbank` with its defaults (pre-emphasis 0.97, 25 ms
    rectangular frames every 10 ms, zero-padded at the end, 512-point power spectrum, 26
    triangular mel filters from 0 Hz to Nyquist, log; float64 throughout), computed without its
    per-call index tables and filterbank loops: frames are a strided view, the filterbank is
    built once per sample rate. Equal to the package's output (tests/plugin/test_audio_features.py).

    `warp != 1` applies vocal tract length perturbation (VTLP, Jaitly & Hinton 2013): the filters'
    frequencies are scaled by `warp` below a boundary and mapped linearly above it so that Nyquist
    stays put, as if the speaker's vocal tract were shorter or longer (training augmentation).
    """
    frame_len, step, filters = _frame_layout(sample_rate_hz)
    if warp != 1.0:
        filters = _warped_filters(sample_rate_hz, round(float(warp), 2))  # 0.01 steps: few cached banks
    x = np.asarray(wav).astype(np.float64, copy=False)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"log_filterbank expects a non-empty 1-D waveform, got shape {x.shape}")
    n = len(x)
    num_frames = 1 if n <= frame_len else 1 + math.ceil((n - frame_len) / step)
    padded = np.zeros((num_frames - 1) * step + frame_len)
    padded[0] = x[0]
    np.subtract(x[1:], _PREEMPHASIS * x[:-1], out=padded[1:n])
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_len)[::step]  # [T, frame_len]
    power = np.square(np.abs(np.fft.rfft(frames, _NFFT))) * (1.0 / _NFFT)  # [T, NFFT/2+1]
    feats = np.dot(power, filters.T)  # [T, 26]
    feats[feats == 0] = np.finfo(np.float64).eps  # log(0) guard, as the package
    return np.log(feats).astype(np.float32)


VTLP_BOUNDARY = 0.8  # fraction of Nyquist below which VTLP scales frequencies by the warp factor


def _mel_edges_hz(sample_rate_hz: int) -> np.ndarray:
    """The 28 band edges (26 filters) of the mel filterbank in Hz, 0 to Nyquist."""

    def hz_to_mel(hz):
        return 2595 * np.log10(1 + hz / 700.0)

    edges_mel = np.linspace(hz_to_mel(0), hz_to_mel(sample_rate_hz / 2), FBANK_FILTERS + 2)
    return 700 * (10 ** (edges_mel / 2595.0) - 1)


def _triangles(edges: np.ndarray) -> np.ndarray:
    """Triangular filters `[len(edges) - 2, NFFT/2+1]` over FFT bins from band edges given in bins."""
    k = np.arange(_NFFT // 2 + 1, dtype=np.float64)[None]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # empty slopes (equal edges) are masked out
        rising = np.where((k >= lo) & (k < mid), (k - lo) / (mid - lo), 0.0)
        falling = np.where((k >= mid) & (k < hi), (hi - k) / (hi - mid), 0.0)
    return rising + falling


@functools.lru_cache(maxsize=4)
def _frame_layout(sample_rate_hz: int) -> Tuple[int, int, np.ndarray]:
    """(frame length, hop, mel filterbank `[26, NFFT/2+1]` float64) for 25 ms / 10 ms frames."""

    def round_half_up(v: float) -> int:
        return int(decimal.Decimal(v).quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP))

    filters = _triangles(np.floor((_NFFT + 1) * _mel_edges_hz(sample_rate_hz) / sample_rate_hz))  # FFT bins
    filters.flags.writeable = False
    return round_half_up(0.025 * sample_rate_hz), round_half_up(0.01 * sample_rate_hz), filters


@functools.lru_cache(maxsize=128)
def _warped_filters(sample_rate_hz: int, warp: float) -> np.ndarray:
    """The mel filterbank with VTLP-warped band edges (piecewise linear, Nyquist fixed)."""
    nyquist = sample_rate_hz / 2
    edges = _mel_edges_hz(sample_rate_hz)
    boundary = VTLP_BOUNDARY * nyquist * min(warp, 1.0) / warp
    warped = np.where(
        edges <= boundary,
        edges * warp,
        nyquist - (nyquist - edges) * (nyquist - boundary * warp) / (nyquist - boundary),
    )
    filters = _triangles(np.floor((_NFFT + 1) * warped / sample_rate_hz))  # FFT bins, as the unwarped bank
    filters.flags.writeable = False
    return filters


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
    warp: float = 1.0,
) -> "torch.Tensor":
    """int16-scale wav `[N]` -> model input `[T, 26 * stack_order]` float32 at 25 Hz (`warp`: VTLP
    factor of `log_filterbank`, 1 = none)."""
    import torch

    feats = stack_frames(log_filterbank(wav, warp=warp), stack_order)
    if num_video_frames is not None:
        feats = align_to_length(feats, num_video_frames)
    if normalize:
        feats = normalize_frames(feats)
    return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
