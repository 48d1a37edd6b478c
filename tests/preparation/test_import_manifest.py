"""`preparation.import_manifest`: CSV/JSONL lists of mouth-ROI clips -> manifests, labels, dictionary,
with every bad row reported (file:line and reason) and the text normalisation shared with scoring."""

import csv
import json
import subprocess
from pathlib import Path

import pytest

from avdata.manifest import read_manifest
from avdata.text_norm import TextNorm, read_text_norm
from avhubert.scoring import ErrorCounts
from preparation.import_manifest import main as import_main
from preparation.records import read_records

TEXTS = ["Hello, World!", "one two three", "Don't STOP now", "four five", "six seven eight", "nine ten"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, synthetic_corpus) -> Path:
    """Copies of the synthetic ROI clips under `clips/`, one with an audio track, one at 30 fps."""
    src = synthetic_corpus
    out = tmp_path_factory.mktemp("clips")
    (out / "v").mkdir()
    (out / "a").mkdir()
    root, rows = read_manifest(src / "train.tsv")
    for r in rows[:6]:
        (out / "v" / f"{r.id}.mp4").write_bytes((Path(root) / r.video).read_bytes())
        (out / "a" / f"{r.id}.wav").write_bytes((Path(root) / r.audio).read_bytes())
    first = rows[0].id
    # the same clip with its audio muxed in (for "no audio column: extract from the video")
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(out / "v" / f"{first}.mp4"), "-i",
                    str(out / "a" / f"{first}.wav"), "-c:v", "copy", "-c:a", "aac", "-shortest",
                    str(out / "v" / "with_audio.mp4")], check=True)
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(out / "v" / f"{first}.mp4"), "-r", "30",
                    str(out / "v" / "fps30.mp4")], check=True)
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(out / "a" / f"{first}.wav"), "-ar", "44100",
                    "-ac", "2", str(out / "a" / "stereo44k.wav")], check=True)
    (out / "v" / "broken.mp4").write_bytes(b"not a video at all")
    return out


def _frames(clips: Path, item_id: str) -> int:
    from avdata.video import count_video_frames

    return count_video_frames(clips / "v" / f"{item_id}.mp4")


def _write_csv(path: Path, rows, fields=("id", "video", "audio", "duration", "transcript")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def test_good_lists_import_and_train_the_vocabulary(clips, tmp_path):
    ids = [p.stem for p in sorted((clips / "a").glob("train_*.wav"))]
    train = _write_csv(clips / "train.csv", [
        {"id": i, "video": f"v/{i}.mp4", "audio": f"a/{i}.wav", "duration": _frames(clips, i) / 25, "transcript": t}
        for i, t in zip(ids[:4], TEXTS)])
    # JSONL valid split: one wav at 44.1 kHz stereo (converted), one clip without audio column (extracted)
    valid = clips / "valid.jsonl"
    valid.write_text("\n".join(json.dumps(r) for r in [
        {"id": "v_conv", "video": f"v/{ids[4]}.mp4", "wav": "a/stereo44k.wav", "text": TEXTS[4]},
        {"id": "v_extract", "video": "v/with_audio.mp4", "text": TEXTS[5]},
    ]) + "\n")
    out = tmp_path / "data"
    assert import_main(["--train", str(train), "--valid", str(valid), "--out", str(out), "--punctuation", "drop",
                        "--vocab-size", "40"]) == 0
    root, rows = read_manifest(out / "train.tsv")
    assert [r.id for r in rows] == ids[:4]
    for r in rows:
        assert (Path(root) / r.video).is_file() and (Path(root) / r.audio).is_file()
        assert r.num_video_frames == _frames(clips, r.id) and r.num_audio_samples > 0
    assert (out / "train.wrd").read_text().splitlines() == ["hello world", "one two three", "dont stop now", "four five"]
    _, vrows = read_manifest(out / "valid.tsv")
    assert [r.id for r in vrows] == ["v_conv", "v_extract"]
    import soundfile as sf

    for r in vrows:  # both audios are now 16 kHz mono files under DATA/audio
        info = sf.info(str(out / r.audio))
        assert (info.samplerate, info.channels) == (16000, 1) and r.audio.startswith("audio/")
    assert (out / "dict.wrd.txt").is_file() and (out / "spm40" / "spm_unigram40.model").is_file()
    assert read_text_norm(out) == TextNorm("lower", "drop")
    assert (out / "import_report.tsv").read_text().splitlines() == ["split\twhere\tid\treason"]


def test_bad_rows_are_reported_with_line_and_reason(clips, tmp_path):
    ids = [p.stem for p in sorted((clips / "a").glob("train_*.wav"))]
    n0 = _frames(clips, ids[0])
    rows = [
        {"id": ids[0], "video": f"v/{ids[0]}.mp4", "audio": f"a/{ids[0]}.wav", "duration": n0 / 25, "transcript": "ok"},
        {"id": "missing", "video": "v/nope.mp4", "audio": f"a/{ids[0]}.wav", "transcript": "x"},
        {"id": "fps", "video": "v/fps30.mp4", "audio": f"a/{ids[0]}.wav", "transcript": "x"},
        {"id": "dur", "video": f"v/{ids[1]}.mp4", "audio": f"a/{ids[1]}.wav", "duration": "99", "transcript": "x"},
        {"id": ids[0], "video": f"v/{ids[2]}.mp4", "audio": f"a/{ids[2]}.wav", "transcript": "dup"},
        {"id": "punct", "video": f"v/{ids[3]}.mp4", "audio": f"a/{ids[3]}.wav", "transcript": "?!"},
        {"id": "broken", "video": "v/broken.mp4", "audio": f"a/{ids[3]}.wav", "transcript": "x"},
        {"id": "noaudio", "video": f"v/{ids[4]}.mp4", "transcript": "x"},
        {"id": "notext", "video": f"v/{ids[5]}.mp4", "audio": f"a/{ids[5]}.wav", "transcript": ""},
    ]
    lst = _write_csv(clips / "bad.csv", rows)
    out = tmp_path / "data"
    assert import_main(["--train", str(lst), "--out", str(out), "--punctuation", "drop", "--no-spm"]) == 0
    report = [line.split("\t") for line in (out / "import_report.tsv").read_text().splitlines()[1:]]
    reasons = {r[2]: (r[1], r[3]) for r in report}
    assert len(report) == 8  # every row but the first is bad; none silently dropped
    assert reasons["missing"][0] == f"{lst}:3" and "video not found" in reasons["missing"][1]
    assert "30 fps" in reasons["fps"][1]
    assert "duration 99 s" in reasons["dur"][1]
    assert reasons[ids[0]][0] == f"{lst}:6" and "duplicate id" in reasons[ids[0]][1]
    assert "empty after normalisation" in reasons["punct"][1]
    assert "cannot be" in reasons["broken"][1]
    assert "no audio track" in reasons["noaudio"][1]
    assert "no transcript" in reasons["notext"][1]
    _, kept = read_manifest(out / "train.tsv")
    assert [r.id for r in kept] == [ids[0]] and (out / "train.wrd").read_text().split("\n")[0] == "ok"

    out2 = tmp_path / "data2"
    assert import_main(["--train", str(lst), "--out", str(out2), "--fail-on-bad", "--no-spm"]) == 1
    assert not (out2 / "train.tsv").exists() and (out2 / "import_report.tsv").is_file()


def test_invalid_json_names_file_and_line(tmp_path):
    bad = tmp_path / "l.jsonl"
    bad.write_text('{"id": "a", "video": "a.mp4"}\n\n{"id": oops}\n')
    with pytest.raises(ValueError, match=rf"{bad}:3: invalid JSON"):
        read_records(bad)
    assert import_main(["--train", str(bad), "--out", str(tmp_path / "o")]) == 1


@pytest.mark.parametrize("case,punct,text,expected", [
    ("lower", "keep", "Hello, World!", "hello, world!"),
    ("upper", "drop", "Don't stop: 3 times", "DONT STOP 3 TIMES"),
    ("none", "keep:'", "Don't  stop-now.", "Don't stop now"),
    ("lower", "drop", "naïve café, $5", "naïve café 5"),
])
def test_text_norm_policies(case, punct, text, expected):
    assert TextNorm(case, punct)(text) == expected


def test_scoring_with_the_same_normaliser_compares_like_with_like():
    norm = TextNorm("lower", "drop")
    raw = ErrorCounts()
    raw.add("Hello, world!", "hello world")
    normed = ErrorCounts()
    normed.add(norm("Hello, world!"), norm("hello world"))
    assert raw.wer == 100.0 and normed.wer == 0.0
    with pytest.raises(ValueError, match="punctuation must be"):
        TextNorm("lower", "sometimes")


def test_validation_wer_reads_the_same_normalisation(tmp_path):
    """The task's validation WER (task.eval_wer) uses the label folder's text_norm.json too."""
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask

    (tmp_path / "text_norm.json").write_text(TextNorm("upper", "keep:'").to_json())
    task = AVHubertPretrainingTask(AVHubertPretrainingConfig(data=str(tmp_path), label_dir=str(tmp_path)))
    assert task._text_norm() == TextNorm("upper", "keep:'") and task._text_norm()("it's ok.") == "IT'S OK"
    plain = AVHubertPretrainingTask(AVHubertPretrainingConfig(data=str(tmp_path / "none")))
    assert plain._text_norm() is None
