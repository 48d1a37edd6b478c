"""Decoding any input for inference (avdata.media), mouth ROIs in memory (avdata.face.roi), the
window plan of long inputs and the subtitle formats."""

from __future__ import annotations

import numpy as np
import pytest

from avdata.ffmpeg import run_ffmpeg
from avdata.media import MediaError, decode_audio, decode_video, iter_video_chunks, probe
from avhubert.api import plan_windows
from avhubert.transcribe import subtitles
from tests.library import helpers


def test_carphone_is_converted_to_25_fps_and_has_no_audio():
    path = helpers.carphone()
    info = probe(path)
    assert info.has_video and not info.has_audio and (info.width, info.height) == (176, 144)
    assert abs(info.fps - 29.97) < 0.01
    frames = decode_video(path)
    assert frames.shape == (100, 144, 176) and frames.dtype == np.uint8  # 120 frames at 29.97 fps = 4.0 s
    with pytest.raises(MediaError, match="has no audio track"):
        decode_audio(path)


@pytest.mark.parametrize("fps,size,codec,ext", [(30, (240, 320), "mpeg4", ".avi"), (15, (200, 150), "libvpx-vp9", ".webm"),
                                                (50, (640, 480), "libx264", ".mkv")])
def test_other_rates_sizes_codecs_and_audio_formats(tmp_path, clips, fps, size, codec, ext):
    """Video at 15/30/50 fps in AVI/WebM/MKV -> 25 fps frames; 44.1 kHz stereo Opus/MP3/AAC -> 16 kHz mono."""
    w, h = size
    audio_codec = {".avi": "libmp3lame", ".webm": "libopus", ".mkv": "aac"}[ext]
    out = tmp_path / f"clip{ext}"
    run_ffmpeg(["-loop", "1", "-framerate", str(fps), "-t", "2", "-i", str(helpers.astronaut()), "-i", str(clips["ast_wav"]),
                "-vf", f"scale={w}:{h}", "-c:v", codec, "-pix_fmt", "yuv420p", "-af", "apad", "-c:a", audio_codec, "-ac", "2",
                "-ar", "48000" if ext == ".webm" else "44100", "-t", "2", str(out)])
    info = probe(out)
    assert info.has_audio and (info.width, info.height) == (w, h)
    frames = decode_video(out)
    assert abs(len(frames) - 50) <= 1 and frames.shape[1:] == (h, w)
    wav = decode_audio(out)
    assert wav.dtype == np.int16 and wav.ndim == 1 and abs(len(wav) - 32000) < 1600
    assert np.abs(wav).max() > 1000  # the speech is there


def test_chunks_are_bounded_and_downscaled(clips):
    chunks = list(iter_video_chunks(clips["ast"], chunk_frames=16, max_side=160))
    assert all(len(c) <= 16 for c in chunks) and chunks[0].shape[1:] == (160, 160)
    assert sum(len(c) for c in chunks) == len(decode_video(clips["ast"]))


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(MediaError, match="bad.mp4: not a readable"):
        probe(bad)
    with pytest.raises(MediaError, match="missing.mp4: file not found"):
        probe(tmp_path / "missing.mp4")


def test_mouth_rois_of_real_faces_and_no_face(clips):
    from avdata.face.roi import MouthRoiExtractor, NoFaceError

    ex = MouthRoiExtractor()
    frames = decode_video(clips["car"])
    rois, quality = ex.extract_chunks([frames[:40], frames[40:]])
    assert rois.shape == (100, 96, 96) and quality.face_fraction == 1.0 and quality.detected >= 2
    assert rois.std() > 10  # a mouth, not black frames
    same, none = ex.extract_chunks([rois])  # frames already 96x96: used as they are
    assert none is None and np.array_equal(same, rois)
    with pytest.raises(NoFaceError, match="no face on most frames: a face was found on 0 of 6"):
        ex.extract(np.random.default_rng(0).integers(0, 255, (6, 60, 80), dtype=np.uint8))


def test_windows_cut_at_the_quietest_point():
    T = 1000  # 40 s
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(T * 640) * 3000).astype(np.int16)
    wav[400 * 640:405 * 640] = 0  # a pause at 16.0-16.2 s
    windows = plan_windows(T, wav, max_frames=500, min_frames=250)
    assert windows[0] == (0, windows[0][1]) and 400 <= windows[0][1] <= 405
    assert all(b - a <= 500 for a, b in windows) and windows[-1][1] == T
    assert all(w[1] == n[0] for w, n in zip(windows, windows[1:]))
    even = plan_windows(T, None, max_frames=300, min_frames=150)
    assert even == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert plan_windows(120, wav, 300, 150) == [(0, 120)]


def test_subtitle_formats():
    record = {"segments": [{"start": 0.0, "end": 11.96, "text": "hello world"}, {"start": 11.96, "end": 12.5, "text": ""},
                           {"start": 12.5, "end": 3725.04, "text": "again"}]}
    assert subtitles(record, "srt") == ("1\n00:00:00,000 --> 00:00:11,960\nhello world\n\n"
                                        "2\n00:00:12,500 --> 01:02:05,040\nagain\n")
    assert subtitles(record, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:11.960\nhello world\n")


def test_real_speech_is_resampled_and_cut_between_words(tmp_path):
    """Real read speech (LibriVox, pocketsphinx's recordings with word alignments), concatenated to
    ~25 s and muxed as 44.1 kHz stereo AAC under a talking-face video: decoded back as 16 kHz mono of
    the same length and envelope, and the window plan of long inputs never cuts inside a word."""
    import soundfile as sf

    recs = helpers.librivox()
    pieces, words, offset = [], [], 0.0
    for wav_path, align in recs:
        wav, rate = sf.read(str(wav_path), dtype="int16")
        assert rate == 16000
        pieces.append(wav)
        words += [(offset + w["b"], offset + w["b"] + w["d"]) for w in align["w"] if not w["t"].startswith("<")]
        offset += len(wav) / rate
    speech = np.concatenate(pieces)
    src = tmp_path / "speech.wav"
    sf.write(str(src), speech, 16000)
    stereo = tmp_path / "speech44k.wav"
    run_ffmpeg(["-i", str(src), "-ar", "44100", "-ac", "2", str(stereo)])
    video = helpers.astronaut_video(tmp_path / "talk.mp4", seconds=offset, size=(160, 160), audio=stereo)
    decoded = decode_audio(video)
    assert abs(len(decoded) / 16000 - offset) < 0.1
    n = min(len(decoded), len(speech)) // 640 * 640
    env = lambda x: np.sqrt((x[:n].astype(np.float64).reshape(-1, 640) ** 2).mean(axis=1))  # noqa: E731
    lag = int(np.argmax([np.corrcoef(env(speech), np.roll(env(decoded), s))[0, 1] for s in range(-3, 4)])) - 3
    assert np.corrcoef(env(speech), np.roll(env(decoded), lag))[0, 1] > 0.95

    frames = int(offset * 25)
    windows = plan_windows(frames, decoded, max_frames=150, min_frames=75)  # 3-6 s windows
    assert len(windows) >= 4 and windows[-1][1] == frames
    for _, cut in windows[:-1]:
        t = cut / 25
        inside = [(b, e) for b, e in words if b + 0.06 < t < e - 0.06]
        assert not inside, f"cut at {t:.2f} s falls inside the word spoken at {inside[0][0]:.2f}-{inside[0][1]:.2f} s"
