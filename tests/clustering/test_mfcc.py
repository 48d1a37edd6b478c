"""MFCC values against an independent float64 implementation of the Kaldi formulas, known values,
frame counts and the 100 Hz / 25 fps alignment the pre-training dataset expects."""

import math

import numpy as np
import pytest
import soundfile as sf

from clustering.dump_mfcc_feature import (
    MFCC_DIM,
    MfccFeatureReader,
    compute_deltas,
    frame_count,
    kaldi_mfcc,
    mfcc_with_deltas,
)
from tests.clustering.synth import speech_like

FLT_EPSILON = 1.1920928955078125e-07


def _kaldi_frame_reference(x: np.ndarray, frame: int) -> np.ndarray:
    """13 MFCCs of one frame, float64, written from the Kaldi C++ procedure step by step."""
    sig = np.array(x[frame * 160 : frame * 160 + 400], dtype=np.float64)
    sig -= sig.mean()  # remove_dc_offset
    for i in range(399, 0, -1):  # Preemphasize(): in place, backwards
        sig[i] -= 0.97 * sig[i - 1]
    sig[0] -= 0.97 * sig[0]
    a = 2 * math.pi / 399
    sig *= np.array([(0.5 - 0.5 * math.cos(a * i)) ** 0.85 for i in range(400)])  # povey
    padded = np.zeros(512)
    padded[:400] = sig
    power = np.abs(np.fft.fft(padded)[:257]) ** 2

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(8000.0)
    delta = (hi - lo) / 24
    log_energies = []
    for b in range(23):  # MelBanks: triangle weights over the 256 non-Nyquist FFT bins
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        energy = 0.0
        for i in range(256):
            m = mel(i * 16000 / 512)
            if left < m < right:
                weight = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
                energy += weight * power[i]
        log_energies.append(math.log(max(energy, FLT_EPSILON)))
    ceps = []
    for k in range(13):  # ComputeDctMatrix rows, then the cepstral lifter
        scale = math.sqrt(1 / 23) if k == 0 else math.sqrt(2 / 23)
        c = scale * sum(log_energies[m] * math.cos(math.pi / 23 * (m + 0.5) * k) for m in range(23))
        ceps.append(c * (1 + 11 * math.sin(math.pi * k / 22)))
    return np.array(ceps)


@pytest.fixture(scope="module")
def wav() -> np.ndarray:
    """1.2 s of speech-like audio as floats in [-1, 1] (how the reference reads wavs)."""
    return speech_like(19_200, np.random.default_rng(1)).astype(np.float32) / 32768


def test_mfcc_matches_independent_kaldi_formulas(wav):
    ours = kaldi_mfcc(wav).numpy()
    assert ours.shape == (frame_count(len(wav)), 13) == (118, 13)
    for frame in (0, 1, 37, 64, 117):
        ref = _kaldi_frame_reference(wav, frame)
        np.testing.assert_allclose(ours[frame], ref, atol=2e-3, rtol=1e-4)


def test_deltas_match_regression_formula():
    feats = np.random.default_rng(0).normal(size=(9, 13)).astype(np.float32)
    import torch

    d = compute_deltas(torch.from_numpy(feats)).numpy()
    t_max = len(feats) - 1
    for t in range(len(feats)):
        ref = sum(k * (feats[min(t + k, t_max)] - feats[max(t - k, 0)]) for k in (1, 2)) / 10
        np.testing.assert_allclose(d[t], ref, atol=1e-6)


@pytest.mark.parametrize("num_samples,frames", [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)])
def test_frame_count(num_samples, frames):
    assert frame_count(num_samples) == frames
    assert mfcc_with_deltas(np.zeros(num_samples, np.float32)).shape == (frames, MFCC_DIM)


def test_silence_known_values():
    feats = mfcc_with_deltas(np.full(1600, 0.25, np.float32))  # DC only: removed -> zero frames
    # every log mel energy hits the float32-epsilon floor: c0 = sqrt(23) ln(eps), c1..c12 = 0
    np.testing.assert_allclose(feats[:, 0], math.sqrt(23) * math.log(FLT_EPSILON), atol=1e-3)
    np.testing.assert_allclose(feats[:, 1:], 0, atol=1e-3)


def test_scale_only_shifts_c0(wav):
    """Kaldi's binary reads int16-scale samples: c0 shifts by sqrt(23) * 2 ln 32768, rest equal."""
    # a little white noise keeps every mel energy above the log floor at both scales
    x = wav + np.random.default_rng(2).normal(scale=1e-3, size=wav.shape).astype(np.float32)
    a = mfcc_with_deltas(x)
    b = mfcc_with_deltas(x * 32768)
    np.testing.assert_allclose(b[:, 0] - a[:, 0], math.sqrt(23) * 2 * math.log(32768), atol=2e-3)
    np.testing.assert_allclose(b[:, 1:], a[:, 1:], atol=2e-3)


def test_reader_reads_int16_wav_and_averages_stereo(tmp_path, wav):
    pcm = np.round(wav * 32768).astype(np.int16)
    mono, stereo = tmp_path / "m.wav", tmp_path / "s.wav"
    sf.write(mono, pcm, 16000, subtype="PCM_16")
    sf.write(stereo, np.stack([pcm, pcm], axis=1), 16000, subtype="PCM_16")
    reader = MfccFeatureReader()
    feats = reader.get_feats(str(mono))
    np.testing.assert_allclose(feats, mfcc_with_deltas(pcm.astype(np.float32) / 32768), atol=1e-5)
    np.testing.assert_allclose(reader.get_feats(str(stereo)), feats, atol=1e-5)
    sf.write(tmp_path / "r.wav", pcm, 8000, subtype="PCM_16")
    with pytest.raises(ValueError, match="8000"):
        reader.get_feats(str(tmp_path / "r.wav"))


@pytest.mark.parametrize("num_video_frames", [1, 7, 25, 63, 250])
def test_mfcc_labels_align_with_25fps_video(num_video_frames):
    """A T-frame 25 fps clip has 640 T samples -> 4T - 2 MFCC frames; the dataset's 0.1 s check passes."""
    num_samples = 640 * num_video_frames
    frames = frame_count(num_samples)
    assert frames == 1 + (num_samples - 400) // 160 == 4 * num_video_frames - 2
    assert abs(num_video_frames / 25 - frames / 100) < 0.1
