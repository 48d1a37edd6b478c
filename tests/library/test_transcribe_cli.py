"""`python -m avhubert.transcribe`: inputs (files, folders, list files), output formats, reruns,
bad inputs and exit codes, features of a pre-training checkpoint, and (slow) a 2-minute video."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from avdata.ffmpeg import run_ffmpeg
from avhubert.transcribe import main
from tests.conftest import REPO
from tests.library.conftest import TEXTS


@pytest.fixture(scope="module")
def folder(clips, tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    shutil.copy(clips["car"], d / "car.mp4")
    sub = d / "sub"
    sub.mkdir()
    shutil.copy(clips["ast"], sub / "ast.mp4")
    (d / "notes.md").write_text("not media: ignored in folders")
    return d


def test_folder_to_jsonl_then_rerun_skips(folder, s2s_ckpt, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main([str(folder), "--checkpoint", str(s2s_ckpt), "--output", str(out), "--beam", "3"]) == 0
    records = {r["path"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["car.mp4"]["text"] == TEXTS["car"] and records["ast.mp4"]["text"] == TEXTS["ast"]
    car = records["car.mp4"]
    assert car["modality"] == "audio-visual" and car["face"]["face_fraction"] == 1.0
    assert car["segments"] == [{"start": 0.0, "end": 4.0, "text": TEXTS["car"]}]
    before = out.read_text()
    capsys.readouterr()
    assert main([str(folder), "--checkpoint", str(s2s_ckpt), "--output", str(out)]) == 0
    assert "skipping 2 input(s) already in" in capsys.readouterr().err and out.read_text() == before
    # a .json of one input is only "done" for that input
    single = tmp_path / "one.json"
    assert main([str(folder / "car.mp4"), "--checkpoint", str(s2s_ckpt), "--output", str(single), "--modality", "audio"]) == 0
    assert main([str(folder / "sub" / "ast.mp4"), "--checkpoint", str(s2s_ckpt), "--output", str(single),
                 "--modality", "audio"]) == 0
    assert "skipping" not in capsys.readouterr().err
    assert [r["path"].rsplit("/", 1)[-1] for r in json.loads(single.read_text())] == ["car.mp4", "ast.mp4"]


def test_formats_by_suffix(clips, s2s_ckpt, tmp_path, capsys):
    video = str(clips["ast"])
    assert main([video, "--checkpoint", str(s2s_ckpt), "--output", str(tmp_path / "o.json")]) == 0
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["text"] == TEXTS["ast"] and data["segments"][0]["start"] == 0.0 and data["modality"] == "audio-visual"
    assert set(data["face"]) >= {"face_fraction", "detected", "tracked", "missing", "longest_gap_s", "max_clamp_px"}
    # audio alone (no face tracking: quick) for the other formats
    audio = ["--checkpoint", str(s2s_ckpt), "--modality", "audio"]
    for suffix in (".srt", ".vtt", ".txt"):
        assert main([video, *audio, "--output", str(tmp_path / f"o{suffix}")]) == 0
    text = (tmp_path / "o.txt").read_text()
    assert text.strip() and text.endswith("\n") and "\t" not in text
    assert (tmp_path / "o.srt").read_text().startswith(f"1\n00:00:00,000 --> 00:00:01,")
    assert (tmp_path / "o.vtt").read_text().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.")
    assert main([video, str(clips["car"]), *audio, "--output", str(tmp_path / "subs") + "/", "--format", "vtt"]) == 0
    assert sorted(p.name for p in (tmp_path / "subs").iterdir()) == ["ast.vtt", "car.vtt"]
    with pytest.raises(SystemExit, match="subtitles hold one input, got 2"):
        main([video, str(clips["car"]), *audio, "--output", str(tmp_path / "two.srt")])
    capsys.readouterr()
    assert main([video, *audio]) == 0
    assert capsys.readouterr().out == text  # stdout without --output: the same text


def test_bad_inputs_one_line_each_and_exit_codes(clips, s2s_ckpt, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{clips['car']}\n# a comment\nmissing.mp4\n{bad}\n")
    out = tmp_path / "out.jsonl"
    code = main([str(listing), str(clips["noaudio"]), "--checkpoint", str(s2s_ckpt), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 0  # something was transcribed
    assert f"error: {tmp_path / 'missing.mp4'}: file not found (line 3 of {listing})" in err
    assert f"error: {bad}: not a readable audio/video file" in err
    assert f"note: {clips['noaudio']}: no audio track: decoded from video only" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["modality"] for r in records] == ["audio-visual", "video"]
    assert records[0]["text"] == TEXTS["car"]
    # nothing transcribable: exit 1, one line per file
    code = main([str(bad), str(clips["noaudio"]), "--checkpoint", str(s2s_ckpt), "--modality", "audio"])
    err = capsys.readouterr().err
    assert code == 1 and "has no audio track, which --modality audio needs" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 2


def test_checkpoint_errors_are_one_line(clips, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 truncated")
    proc = subprocess.run([sys.executable, "-m", "avhubert.transcribe", str(clips["car"]), "--checkpoint", str(junk)],
                          cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                                         "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(f"error: {junk}: truncated")


def test_pretraining_checkpoint_gives_features(clips, tmp_path, s2s_ckpt):
    pre = s2s_ckpt.parent / "pretrain" / "tiny.pt"  # the encoder the tiny models were fine-tuned from
    out = tmp_path / "feats"
    assert main([str(clips["car"]), "--checkpoint", str(pre), "--features", "--layer", "1", "--output", str(out)]) == 0
    feats = np.load(out / "car.npy")
    assert feats.shape == (100, 32) and np.isfinite(feats).all()
    with pytest.raises(SystemExit, match="gives features, not text"):
        main([str(clips["car"]), "--checkpoint", str(pre)])


@pytest.mark.slow
def test_two_minute_video_is_cut_into_windows(clips, s2s_ckpt, tmp_path):
    """75 copies of the 1.6-s astronaut clip (120 s): windows of at most 12 s cut in the pauses."""
    part = clips["ast"]
    listing = tmp_path / "concat.txt"
    listing.write_text("".join(f"file '{part}'\n" for _ in range(75)))
    long = tmp_path / "long.mp4"
    run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-c:v", "libx264", "-c:a", "aac", str(long)])
    out = tmp_path / "long.json"
    assert main([str(long), "--checkpoint", str(s2s_ckpt), "--output", str(out), "--batch-size", "4"]) == 0
    data = json.loads(out.read_text())
    segs = data["segments"]
    assert 118 <= data["duration_s"] <= 122 and segs[-1]["end"] == data["duration_s"]
    assert all(s["end"] - s["start"] <= 12.0 for s in segs) and len(segs) >= 10
    assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:]))
    # the model learnt one phrase per clip: each window says it (at least once)
    assert sum("good morning" in s["text"] for s in segs) >= 0.8 * len(segs)


@pytest.mark.slow  # fairseq-train of a tiny language model
def test_language_model_fusion(clips, s2s_ckpt, tmp_path):
    from avhubert.language_model import prepare_lm_text, train_language_model
    from tests.library.helpers import FIXTURES

    text = tmp_path / "text.wrd"
    text.write_text((TEXTS["car"] + "\n" + TEXTS["ast"] + "\n") * 20)
    prepare_lm_text(text, FIXTURES / "spm_unigram100.model", tmp_path / "lm" / "text" / "train.txt")
    lm = train_language_model(tmp_path / "lm" / "text", FIXTURES / "dict.wrd.txt", tmp_path / "lm" / "model",
                              layers=1, dim=32, max_update=20, max_tokens=64, tokens_per_sample=32)
    outs = {}
    for name, extra in {"plain": [], "zero": ["--lm", str(lm)], "fused": ["--lm", str(lm), "--lm-weight", "0.5"]}.items():
        out = tmp_path / f"{name}.json"
        assert main([str(clips["car"]), "--checkpoint", str(s2s_ckpt), "--output", str(out), *extra]) == 0
        outs[name] = json.loads(out.read_text())["text"]
    assert outs["zero"] == outs["plain"] == TEXTS["car"] and outs["fused"]
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(lm, bad / "lm.pt")
    lines = (lm.parent / "dict.txt").read_text().splitlines()
    (bad / "dict.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(SystemExit, match="dictionary differs from the model's target dictionary"):
        main([str(clips["car"]), "--checkpoint", str(s2s_ckpt), "--lm", str(bad / "lm.pt")])
