"""Preparation errors name the problem: a video without an audio track is one line (the file,
"has no audio track", what to do) instead of ffmpeg's "Output file #0 does not contain any
stream", and a run that exits 1 because clips failed ends with a line saying how many failed and
where they are listed. (Checkpoint errors: tests/plugin/test_checkpoint_safety.py.)"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preparation.media import NoAudioTrackError, extract_wav

REPO = Path(__file__).resolve().parents[2]


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def test_video_without_audio_track_is_one_clear_line(make_clip, tmp_path):
    video = make_clip(tmp_path / "mute.mp4", np.zeros((10, 32, 32, 3), np.uint8), audio_sec=0)
    with pytest.raises(NoAudioTrackError) as e:
        extract_wav(video, tmp_path / "mute.wav")
    msg = str(e.value)
    assert msg.startswith(f"{video}: has no audio track") and "re-export the video with its sound" in msg
    assert "\n" not in msg and "does not contain any stream" not in msg
    assert not list(tmp_path.glob("mute*.wav")), "no partial wav is left"


def test_other_ffmpeg_failures_keep_ffmpeg_words(tmp_path):
    from avdata.ffmpeg import FFmpegError

    bad = tmp_path / "junk.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(FFmpegError) as e:
        extract_wav(bad, tmp_path / "junk.wav")
    assert not isinstance(e.value, NoAudioTrackError) and str(bad) in str(e.value)


def test_extract_audio_cli_lists_the_mute_clip(make_clip, tmp_path):
    frames = np.full((10, 32, 32, 3), 128, np.uint8)
    make_clip(tmp_path / "v" / "talk.mp4", frames)
    make_clip(tmp_path / "v" / "mute.mp4", frames, audio_sec=0)
    (tmp_path / "ids").write_text("talk\nmute\n")
    proc = subprocess.run(
        [sys.executable, "-m", "preparation.extract_audio", "--video-dir", str(tmp_path / "v"), "--file-list",
         str(tmp_path / "ids"), "--audio-dir", str(tmp_path / "a"), "--no-progress"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    failures = tmp_path / "a" / "failures.extract_audio.0_1.tsv"
    line = failures.read_text().strip()
    assert line.startswith("mute\tNoAudioTrackError: ") and "mute.mp4: has no audio track" in line
    assert "1 failures listed in" in last_line(proc.stderr) and str(failures) in last_line(proc.stderr)
    assert (tmp_path / "a" / "talk.wav").is_file()


def test_own_videos_run_ends_with_the_failure_count_and_lists(make_clip, face25, tmp_path):
    _, frames = face25
    make_clip(tmp_path / "in" / "talk.mp4", frames[:25])
    make_clip(tmp_path / "in" / "mute.mp4", frames[:25], audio_sec=0)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "preparation.own_videos.prepare", "--in-dir", str(tmp_path / "in"), "--out-dir",
         str(out), "--no-cnn", "--no-progress"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = last_line(proc.stderr)
    failures = out / "failures.own_audio.0_1.tsv"
    assert "1 of 2 clips failed (audio: 1)" in line and str(failures) in line, proc.stderr[-3000:]
    assert "mute.mp4: has no audio track" in failures.read_text()
    assert (out / "test.tsv").read_text().count("\n") == 2, "the good clip is still prepared (header + 1 row)"
