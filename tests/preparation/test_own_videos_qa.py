"""`prepare_own_videos` on a folder of odd inputs, and the QA report's flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avdata.ffmpeg import run_ffmpeg
from avdata import manifest as api
from avdata.video import count_video_frames
from preparation.own_videos import prepare as prepare_own_videos
from preparation.own_videos import qa_report
from preparation.media import count_wav_samples, read_video, write_wav_int16

pytest.importorskip("dlib")  # safety net only: dlib-bin is part of the setup


def _speech(duration_sec: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(duration_sec * rate)) / rate
    sig = (8000 * np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.int16)
    return np.stack([sig] * channels, axis=1) if channels > 1 else sig


@pytest.fixture(scope="module")
def videos(tmp_path_factory, carphone_path, face25, make_clip) -> Path:
    """in/talk.mov: the real 29.97 fps clip (60 frames) with 22.05 kHz stereo audio and a
    transcript; in/sub/late.mp4: 25 fps face with 3 s more audio than video; in/black.mp4:
    black frames; in/noface.mp4: noise."""
    _, frames = face25
    d = tmp_path_factory.mktemp("own")
    (d / "in").mkdir()
    wav = d / "stereo.wav"
    write_wav_int16(wav, _speech(2.0, 22_050, channels=2), 22_050)
    run_ffmpeg(
        [
            "-i",
            carphone_path,
            "-i",
            wav,
            "-t",
            "2.002",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            d / "in" / "talk.mov",
        ]
    )
    wav.unlink()
    (d / "in" / "talk.txt").write_text("Hello From The Car\n")
    make_clip(d / "in" / "sub" / "late.mp4", frames[:25], audio_sec=4.0)
    make_clip(d / "in" / "black.mp4", np.zeros((20, 64, 64, 3), np.uint8))
    noise = np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    make_clip(d / "in" / "noface.mp4", noise)
    return d


@pytest.fixture(scope="module")
def prepared(videos) -> tuple:
    out = videos / "out"
    rc = prepare_own_videos.main(
        [
            "--in-dir",
            str(videos / "in"),
            "--out-dir",
            str(out),
            "--split",
            "test",
            "--vocab-size",
            "30",
            "--no-cnn",
            "--no-progress",
        ]
    )
    return out, rc


def test_own_videos_produce_rois_wavs_manifest_labels(prepared):
    out, rc = prepared
    assert rc == 1  # black and noface clips fail the crop step and are reported
    failures = (out / "failures.own_crop.0_1.tsv").read_text()
    assert "black\t" in failures and "noface\t" in failures
    assert (out / "file.list").read_text().split() == ["black", "noface", "sub/late", "talk"]
    # 29.97 fps -> 25 fps: 60 frames = 2.002 s -> 50 frames
    assert count_video_frames(out / "video25/talk.mp4") == 50
    roi, fps = read_video(out / "video/talk.mp4")
    assert roi.shape == (50, 96, 96, 3) and fps == pytest.approx(25)
    assert abs(count_wav_samples(out / "audio/talk.wav") - 32_000) < 800  # 2 s at 16 kHz, mono
    root, rows = api.read_manifest(out / "test.tsv")
    assert [r.id for r in rows] == ["sub/late", "talk"]
    assert rows[1].num_video_frames == 50
    assert Path(api.resolve(root, rows[1].video)).is_file()
    wrd = (out / "test.wrd").exists()
    assert not wrd  # 'sub/late' has no transcript: labels would be incomplete
    assert (out / "dict.wrd.txt").read_text().strip()
    assert (out / "label.list").read_text().splitlines()[3] == "Hello From The Car"


def test_qa_flags_black_noface_and_av_mismatch(prepared):
    out, _ = prepared
    flagged = dict(line.split("\t") for line in (out / "qa/flagged.tsv").read_text().splitlines())
    assert "black" in flagged["black"].split(",") and "no_face" in flagged["black"].split(",")
    assert "no_face" in flagged["noface"].split(",") and "black" not in flagged["noface"]
    assert flagged["sub/late"] == "av_mismatch"
    assert "talk" not in flagged
    summary = json.loads((out / "qa/summary.json").read_text())
    assert summary["clips"] == 4 and summary["flagged"] == 3
    rows = (out / "qa/clips.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    talk = dict(zip(header, next(r for r in rows if r.startswith("talk\t")).split("\t")))
    assert float(talk["face_rate"]) == 1.0 and float(talk["av_mismatch_sec"]) < 0.1
    import cv2

    sheet = cv2.imread(str(out / "qa/contact_sheet.png"))
    assert sheet.shape == (2 * 96, 6 * 96, 3)  # the two clips that have ROIs


def test_qa_cli_exit_code_and_with_spm_model(prepared, tmp_path):
    out, _ = prepared
    args = [
        "--file-list",
        str(out / "file.list"),
        "--landmark-dir",
        str(out / "landmark"),
        "--roi-dir",
        str(out / "video"),
        "--audio-dir",
        str(out / "audio"),
        "--video-dir",
        str(out / "video25"),
        "--out-dir",
        str(tmp_path / "qa"),
        "--no-progress",
    ]
    assert qa_report.main(args) == 0
    assert qa_report.main(args + ["--fail-on-flags"]) == 1
    assert (
        qa_report.main(
            args
            + [
                "--fail-on-flags",
                "--max-av-mismatch-sec",
                "10",
                "--file-list",
                str(_write(tmp_path / "ok.list", "talk\nsub/late\n")),
            ]
        )
        == 0
    )


def test_clip_list_jsonl_and_csv(videos, tmp_path):
    jsonl = tmp_path / "clips.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "video": str(videos / "in/talk.mov"), "transcript": "Hi  there"}) + "\n")
    clips = prepare_own_videos.read_clip_list(jsonl)
    assert clips[0].id == "a" and clips[0].transcript == "Hi there"
    csv_path = _write(tmp_path / "clips.csv", "id,video,transcript\nb,missing.mp4,\n")
    clips = prepare_own_videos.read_clip_list(csv_path)
    assert clips[0].video == str((tmp_path / "missing.mp4").resolve()) and clips[0].transcript is None
    with pytest.raises(ValueError, match="duplicate id"):
        prepare_own_videos.read_clip_list(_write(tmp_path / "dup.csv", "id,video\nb,x.mp4\nb,y.mp4\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_own_videos_manifest_with_existing_spm_model(prepared):
    out, _ = prepared
    model = out / "spm30" / "spm_unigram30.model"
    assert model.is_file()
    before = (out / "dict.wrd.txt").read_text()
    rc = prepare_own_videos.main(
        [
            "--in-dir",
            str(out.parent / "in"),
            "--out-dir",
            str(out),
            "--split",
            "again",
            "--stages",
            "manifest",
            "--spm-model",
            str(model),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (out / "dict.wrd.txt").read_text() == before  # same pieces as the model's
    assert (out / "again.tsv").read_text().splitlines()[1:] == (out / "test.tsv").read_text().splitlines()[1:]


def test_qa_drift_flags_landmarks_that_do_not_fit_a_face(prepared):
    from preparation.face.landmarks import load_landmarks
    from preparation.face.mouth_roi import DEFAULT_MEAN_FACE

    out, _ = prepared
    lm = load_landmarks(out / "landmark/talk.npy")
    good = qa_report.landmark_metrics(lm, DEFAULT_MEAN_FACE)
    assert good["drift_px"] < 15 and good["face_rate"] == 1.0
    bad = lm.copy()
    bad[20:25, 48:68] += np.array([0.0, 25.0], dtype=np.float32)  # mouth points on the chin
    bad[30:33] = np.nan
    metrics = qa_report.landmark_metrics(bad, DEFAULT_MEAN_FACE)
    assert metrics["drift_px"] > qa_report.QAThresholds().max_drift_px
    assert metrics["interpolated"] == 3 and metrics["longest_gap"] == 3
