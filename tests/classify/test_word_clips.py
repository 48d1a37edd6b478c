"""`demo.word_clips`: single-word clips cut from a tiny generated demo corpus (needs libespeak-ng)."""

import json
from pathlib import Path

import numpy as np
import pytest

from avdata.constants import AUDIO_SAMPLES_PER_FRAME
from avdata.manifest import read_manifest, resolve
from avdata.video import count_video_frames
from demo.corpus import CorpusConfig, generate_corpus
from demo.corpus.tts import Phone
from demo.corpus.vocabulary import VOCABULARY
from demo.word_clips import ClipSettings, clip_frames, main, split_words
from preparation.media import read_wav_int16
from tests.demo.test_corpus import TINY, _have_espeak


def test_split_words_skips_pauses_and_refuses_a_mismatch():
    phones = [Phone(n, i * 0.1, i * 0.1 + 0.1) for i, n in enumerate(["_", "g", "oU", "_", ";", "s", "t", "0", "p", "_:"])]
    assert split_words(phones, [2, 4]) == [(pytest.approx(0.1), pytest.approx(0.3)), (pytest.approx(0.5), pytest.approx(0.9))]
    with pytest.raises(ValueError, match="the words have 5 phones alone but 6 in the utterance"):
        split_words(phones, [2, 3])


def test_clip_frames_context_and_fixed_length():
    assert clip_frames(0.5, 0.9, 40, ClipSettings(context_sec=0.1)) == (10, 25)
    assert clip_frames(0.02, 0.3, 40, ClipSettings(context_sec=0.1)) == (0, 10)
    assert clip_frames(0.5, 0.9, 40, ClipSettings(frames=29)) == (3, 32)  # centred on frame 17.5
    assert clip_frames(1.4, 1.5, 40, ClipSettings(frames=29)) == (11, 40)  # clamped to the end
    assert clip_frames(0.1, 0.2, 20, ClipSettings(frames=29)) == (0, 20)  # shorter utterance: all of it


@pytest.mark.skipif(not _have_espeak(), reason="libespeak-ng missing: apt-get install -y espeak-ng")
def test_word_clips_of_a_tiny_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    small = {"num_train": 2, "num_valid": 1, "num_test": 1, "num_noise_train": 0, "num_noise_valid": 0, "num_noise_test": 0}
    generate_corpus(corpus, CorpusConfig(**{**TINY.__dict__, **small}), num_workers=1, progress=False)
    out = tmp_path / "words"
    assert main(["--corpus", str(corpus), "--out-dir", str(out), "--num-workers", "1", "--no-progress"]) == 0
    failed = (out / "failures.word_clips.tsv").read_text().splitlines() if (out / "failures.word_clips.tsv").is_file() else []
    failed_ids = {line.split("\t")[0] for line in failed}
    assert len(failed_ids) <= 1
    assert [l.split()[0] for l in (out / "dict.lbl.txt").read_text().splitlines()] == list(VOCABULARY)
    for split in ("train", "valid", "test"):
        _, utts = read_manifest(corpus / f"{split}.tsv")
        texts = (corpus / f"{split}.wrd").read_text().splitlines()
        expected = [(f"{u.id}-w{k}", w) for u, t in zip(utts, texts) if u.id not in failed_ids for k, w in enumerate(t.split())]
        root, rows = read_manifest(out / f"{split}.tsv")
        labels = (out / f"{split}.lbl").read_text().split()
        assert [(r.id, l) for r, l in zip(rows, labels)] == expected
        lengths = {u.id: u.num_video_frames for u in utts}
        for row, label in zip(rows, labels):
            video, wav = Path(resolve(root, row.video)), Path(resolve(root, row.audio))
            assert video.parent.name == wav.parent.name == label  # the class folder
            assert count_video_frames(video) == row.num_video_frames <= lengths[row.id.rsplit("-w", 1)[0]]
            samples, _ = read_wav_int16(wav)
            assert len(samples) == row.num_audio_samples == row.num_video_frames * AUDIO_SAMPLES_PER_FRAME
            assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 300  # speech, not the silence around it


def test_word_demo_chance_and_report(tmp_path):
    from demo.word_demo import chance_accuracy, report

    (tmp_path / "train.lbl").write_text("go\ngo\nstop\n")
    (tmp_path / "test.lbl").write_text("go\nstop\nstop\nup\n")
    assert chance_accuracy(tmp_path) == 25.0
    meta = {"clips": {"train": 3, "valid": 0, "test": 4}, "classes": 30, "frames_mean": 14.8}
    text = report(tmp_path, {"pre-trained": {"audio": 90.0, "video": 40.5, "audio-visual": 91.25}}, 25.0, meta)
    assert "| pre-trained | 90.0 | 40.5 | 91.2 |" in text and "chance (most frequent training word) 25.0%" in text
    assert (tmp_path / "results.md").read_text() == text
    assert json.loads((tmp_path / "results.json").read_text())["accuracy"]["pre-trained"]["video"] == 40.5
