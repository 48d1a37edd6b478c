"""Audio features equal a direct python_speech_features computation; bad wavs fail clearly."""

import numpy as np
import pytest
import soundfile as sf
import torch
from python_speech_features import logfbank

from avdata.audio import AudioFormatError, audio_features, read_wav, stack_frames


def _speechlike(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(n)
    return (wav * 32767).astype(np.int16)


def test_matches_python_speech_features_within_1e_5():
    num_frames = 37
    wav = _speechlike(640 * num_frames)
    ours = audio_features(wav, stack_order=4, num_video_frames=num_frames, normalize=True).numpy()
    fb = logfbank(wav, samplerate=16000).astype(np.float32)  # [4T-1, 26] at 100 Hz
    assert fb.shape == (4 * num_frames - 1, 26)
    fb = np.concatenate([fb, np.zeros((1, 26), np.float32)])  # zero-pad to a multiple of 4
    stacked = fb.reshape(num_frames, 104)  # frame-major: [f0, f1, f2, f3]
    mean = stacked.mean(1, keepdims=True)
    var = stacked.var(1, keepdims=True)
    expected = (stacked - mean) / np.sqrt(var + 1e-5)
    assert ours.shape == (num_frames, 104)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # the original normalises with torch's layer norm; ours runs in NumPy (data-loader speed)
    torch_ln = torch.nn.functional.layer_norm(torch.from_numpy(stacked), (104,)).numpy()
    np.testing.assert_allclose(ours, torch_ln, atol=1e-5)


def test_stacking_is_frame_major_and_alignment_pads_or_truncates():
    feats = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    out = stack_frames(feats, 4)
    assert out.shape == (2, 8)
    np.testing.assert_array_equal(out[0], [0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(out[1], [8, 9, 0, 0, 0, 0, 0, 0])
    wav = _speechlike(640 * 10)
    assert audio_features(wav, 4, num_video_frames=12, normalize=False).shape == (12, 104)
    short = audio_features(wav, 4, num_video_frames=7, normalize=False)
    np.testing.assert_array_equal(short.numpy(), audio_features(wav, 4, None, False)[:7].numpy())


def test_read_wav_rejects_wrong_rate_and_stereo(tmp_path):
    wav = _speechlike(8000)
    sf.write(tmp_path / "ok.wav", wav, 16000, subtype="PCM_16")
    np.testing.assert_array_equal(read_wav(str(tmp_path / "ok.wav")), wav)
    sf.write(tmp_path / "8k.wav", wav, 8000, subtype="PCM_16")
    with pytest.raises(AudioFormatError, match=r"8k\.wav: sample rate 8000 Hz"):
        read_wav(str(tmp_path / "8k.wav"))
    sf.write(tmp_path / "stereo.wav", np.stack([wav, wav], 1), 16000, subtype="PCM_16")
    with pytest.raises(AudioFormatError, match=r"stereo\.wav: 2 channels"):
        read_wav(str(tmp_path / "stereo.wav"))
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_wav(str(tmp_path / "missing.wav"))


@pytest.mark.parametrize("rate", [16000, 8000, 22050])
def test_log_filterbank_equals_python_speech_features_exactly(rate):
    """Vectorised filterbank: the package's numbers (float64 inside) for short, edge and long inputs."""
    from avdata.audio import log_filterbank

    wav = _speechlike(3 * rate // 2, seed=rate)
    wav[100:300] = 0  # silent stretch
    frame = int(round(0.025 * rate))
    for n in (1, frame - 1, frame, frame + 1, frame + 161, len(wav)):
        ours = log_filterbank(wav[:n], rate)
        theirs = logfbank(wav[:n], samplerate=rate).astype(np.float32)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape, n
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{n} samples at {rate} Hz")
    silence = np.zeros(4000, np.int16)  # log(eps) guard
    np.testing.assert_array_equal(log_filterbank(silence, rate), logfbank(silence, samplerate=rate).astype(np.float32))


def test_read_wav_float_files_convert_like_soundfile_and_reject_nan(tmp_path):
    wav = _speechlike(4000).astype(np.float64) / 32768
    sf.write(tmp_path / "f.wav", wav, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(read_wav(str(tmp_path / "f.wav")), sf.read(tmp_path / "f.wav", dtype="int16")[0])
    wav[7] = np.nan
    sf.write(tmp_path / "nan.wav", wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioFormatError, match=r"nan\.wav: 1 NaN/inf samples"):
        read_wav(str(tmp_path / "nan.wav"))
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wav" * 10)
    with pytest.raises(FileNotFoundError, match="junk.wav"):
        read_wav(str(tmp_path / "junk.wav"))


def _centres(filters: np.ndarray) -> np.ndarray:
    return (filters * np.arange(filters.shape[1])).sum(1) / filters.sum(1)


def test_vtlp_warp_scales_filter_frequencies_and_is_off_at_one():
    from avdata.audio import VTLP_BOUNDARY, _frame_layout, _warped_filters, log_filterbank

    wav = _speechlike(16000)
    np.testing.assert_array_equal(log_filterbank(wav, warp=1.0), log_filterbank(wav))
    base = _frame_layout(16000)[2]
    np.testing.assert_array_equal(_warped_filters(16000, 1.0), base)
    for warp in (0.9, 1.1):
        filters = _warped_filters(16000, warp)
        assert filters.shape == base.shape and (filters.sum(1) > 0).all()  # no empty filter
        ratio = _centres(filters) / _centres(base)
        mid = slice(8, 18)  # mid-band filters, away from the floor-rounded lowest bins and the fixed Nyquist
        np.testing.assert_allclose(ratio[mid], warp, atol=0.03)
        assert abs(ratio[-1] - 1.0) < abs(warp - 1.0)  # pulled back towards Nyquist at the top
    warped = log_filterbank(wav, warp=1.1)
    assert warped.shape == log_filterbank(wav).shape and not np.allclose(warped, log_filterbank(wav))
    assert 0 < VTLP_BOUNDARY < 1


def test_audio_features_pass_the_warp_through():
    wav = _speechlike(640 * 20)
    plain = audio_features(wav, stack_order=4, num_video_frames=20)
    assert torch.equal(audio_features(wav, stack_order=4, num_video_frames=20, warp=1.0), plain)
    assert not torch.allclose(audio_features(wav, stack_order=4, num_video_frames=20, warp=0.92), plain)
