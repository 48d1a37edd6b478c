"""The staged drivers `vox2/prepare_vox2.sh` and `noise/prepare_noise.sh`: stages, .done guards,
option errors, and full runs on miniature trees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avdata import manifest as api
from preparation.media import write_wav_int16

PREP = Path(__file__).resolve().parents[2] / "preparation"
VOX_IDS = ["dev/mp4/id00012/abc/00001", "dev/mp4/id00077/xyz/00001", "test/mp4/id00500/qqq/00001"]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(PREP / script), *args], capture_output=True, text=True, env=env, check=False)


def test_vox2_driver_full_run_and_guards(tmp_path, face25, make_clip):
    pytest.importorskip("dlib")
    _, frames = face25
    vox = tmp_path / "vox"
    for k, cid in enumerate(VOX_IDS):
        make_clip(vox / f"{cid}.mp4", frames[k * 10 : k * 10 + 12], seed=k)
    (tmp_path / "en.id").write_text("id00077/xyz/00001\n")
    res = _run("vox2/prepare_vox2.sh", "--vox", str(vox), "--en-ids", str(tmp_path / "en.id"), "--nshard", "2")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    _, all_rows = api.read_manifest(vox / "all_data/train.tsv")
    _, en_rows = api.read_manifest(vox / "en_data/train.tsv")
    assert [r.id for r in all_rows] == VOX_IDS and [r.id for r in en_rows] == [VOX_IDS[1]]
    assert all(r.num_video_frames == 12 for r in all_rows)
    names = ["0_lists", "1_audio", "2_landmarks", "3_crop", "4_count", "5_manifest"]
    assert all((vox / f".prepare_vox2.{n}.done").exists() for n in names)
    again = _run("vox2/prepare_vox2.sh", "--vox", str(vox))
    assert again.returncode == 0 and again.stdout.count("done before, skipping") == 6
    assert _run("vox2/prepare_vox2.sh", "--vox", str(vox), "--bogus").returncode == 2
    assert _run("vox2/prepare_vox2.sh", "--vox", str(tmp_path / "nope")).returncode == 2
    assert "Stages:" in _run("vox2/prepare_vox2.sh", "--help").stdout


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (3000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_noise_driver_musan_stages_lrs3_stages_and_lists(tmp_path):
    musan, lrs3 = tmp_path / "musan", tmp_path / "lrs3"
    for k in range(10):
        write_wav_int16(musan / f"speech/librivox/speech-librivox-{k:04d}.wav", _tone(8, 200 + 20 * k))
    write_wav_int16(musan / "music/fma/music-fma-0000.wav", _tone(9, 440))
    write_wav_int16(musan / "noise/free-sound/noise-free-sound-0000.wav", _tone(9, 1000))
    opts = ["--musan", str(musan), "--chunk-sec", "4", "--num-babble", "4 2 2", "--num-speakers", "3", "--seed", "1"]
    assert _run("noise/prepare_noise.sh", *opts).returncode == 2  # stages 4-5 need --lrs3
    res = _run("noise/prepare_noise.sh", *opts, "--stop-stage", "3", "--nshard", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    short = musan / "short-musan"
    assert len(list((short / "babble/wav").glob("*.wav"))) == 8
    assert len((short / "nframes.audio").read_text().splitlines()) == 8 + 3 + 3  # babble + music + noise chunks (4, 4 and 1 s)
    # stages 4-5 on a miniature LRS3 training manifest (4 utterances of 21 s)
    rows = []
    for k in range(4):
        write_wav_int16(lrs3 / f"audio/u{k}.wav", _tone(21, 300 + 50 * k))
        rows.append(api.ManifestRow(f"s{k}/u{k}", f"video/u{k}.mp4", f"audio/u{k}.wav", 21 * 25, 21 * 16_000))
    api.write_manifest(lrs3 / "433h_data/train.tsv", str(lrs3), rows)
    res = _run("noise/prepare_noise.sh", *opts, "--lrs3", str(lrs3), "--num-workers", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("done before, skipping") == 4
    assert (lrs3 / "noise/babble/noise.wav").is_file()
    for cat in ("babble", "music", "noise", "all"):
        assert (musan / "tsv" / cat / "train.tsv").read_text().strip(), cat
    assert all((musan / f".prepare_noise.{n}.done").exists() for n in ["0_chunk", "1_split", "2_babble", "3_count", "4_lrs3", "5_lists"])
