"""LRS3 preparation end to end on a miniature LRS3-shaped tree made from a real face video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avdata import manifest as api
from avdata.video import count_video_frames
from preparation import count_frames, extract_audio
from preparation.face import crop_mouth_rois, detect_landmarks
from preparation.lrs3 import lists as lrs3_lists
from preparation.lrs3 import manifest as lrs3_manifest
from preparation.lrs3 import segment as lrs3_segment
from preparation.lrs3 import trim as lrs3_trim
from preparation.lrs3.segment import Word, split_utterance
from preparation.media import count_wav_samples, read_video

pytest.importorskip("dlib")  # safety net only: dlib-bin is part of the setup

PRETRAIN_WORDS = [
    ("SO", 0.10, 0.40),
    ("WE", 0.50, 0.90),
    ("STARTED", 1.00, 1.80),
    ("AGAIN", 2.40, 3.00),
    ("TODAY", 3.10, 3.80),
]


def test_split_utterance_reference_rules():
    words = [Word(w, s, e) for w, s, e in [("A", 0.0, 5.0), ("B", 5.1, 9.0), ("C", 9.6, 14.0), ("D", 14.2, 16.0)]]
    segs = split_utterance("spk/00001", "A B C D", words, max_len_sec=15, min_pause_sec=0.4)
    assert [(s.id, s.text, s.start_sec, s.end_sec) for s in segs] == [
        ("spk/00001_0", "A B", 0.0, 9.3),
        ("spk/00001_1", "C D", 9.3, -1.0),
    ]
    short = split_utterance("spk/00002", "A B", words[:2], max_len_sec=15)
    assert [(s.id, s.start_sec, s.end_sec) for s in short] == [("spk/00002", 0.0, -1.0)]
    no_pause = [Word("A", 0.0, 10.0), Word("B", 10.1, 16.0)]
    assert split_utterance("s/1", "A B", no_pause)[0].id == "s/1"  # nothing to cut at


def _txt(path: Path, text: str, words=None) -> None:
    lines = [f"Text:  {text}", "Conf:  3", ""]
    if words:
        lines += ["WORD START END ASDSCORE"] + [f"{w} {s:.2f} {e:.2f} 1.0" for w, s, e in words]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def lrs3_tree(tmp_path_factory, face25, make_clip) -> Path:
    """trainval: 3 clips, test: 1 clip, pretrain: one 4-s clip with a pause and one short clip."""
    _, frames = face25
    root = tmp_path_factory.mktemp("lrs3")
    clips = {
        "trainval/spkA/00001": (frames[0:30], "HELLO THERE"),
        "trainval/spkA/00002": (frames[30:60], "HOW ARE YOU"),
        "trainval/spkB/00001": (frames[60:90], "I AM FINE THANKS"),
        "test/spkC/00001": (frames[10:40], "SEE YOU LATER"),
        "pretrain/spkD/00002": (frames[70:95], "SHORT ONE"),
    }
    for i, (cid, (clip, text)) in enumerate(clips.items()):
        make_clip(root / f"{cid}.mp4", clip, seed=i)
        _txt(root / f"{cid}.txt", text, [(w, 0.1, 0.5) for w in text.split()] if "pretrain" in cid else None)
    make_clip(root / "pretrain/spkD/00001.mp4", frames, seed=9)  # 100 frames = 4 s
    _txt(root / "pretrain/spkD/00001.txt", " ".join(w for w, _, _ in PRETRAIN_WORDS), PRETRAIN_WORDS)
    return root


@pytest.fixture(scope="module")
def prepared(lrs3_tree) -> Path:
    """Run every LRS3 step on the tree through the CLIs' `main`."""
    d = str(lrs3_tree)
    common = ["--no-progress"]
    assert lrs3_segment.main(["--lrs3", d, "--max-len-sec", "3"] + common) == 0
    assert lrs3_lists.main(["--lrs3", d] + common) == 0
    assert lrs3_trim.main(["--lrs3", d] + common) == 0
    assert (
        extract_audio.main(["--video-dir", d, "--file-list", f"{d}/file.list", "--audio-dir", f"{d}/audio"] + common)
        == 0
    )
    # reference flag spellings (detect_landmark.py / align_mouth.py) on purpose
    assert (
        detect_landmarks.main(
            [
                "--root",
                d,
                "--manifest",
                f"{d}/file.list",
                "--landmark",
                f"{d}/landmark",
                "--cnn_detector",
                "",
                "--face_predictor",
                "",
            ]
            + common
        )
        == 0
    )
    assert (
        crop_mouth_rois.main(
            [
                "--video-direc",
                d,
                "--landmark-direc",
                f"{d}/landmark",
                "--filename-path",
                f"{d}/file.list",
                "--save-direc",
                f"{d}/video",
                "--window-margin",
                "12",
            ]
            + common
        )
        == 0
    )
    for rank in range(2):
        assert (
            count_frames.main(
                [
                    "--video-dir",
                    f"{d}/video",
                    "--audio-dir",
                    f"{d}/audio",
                    "--file-list",
                    f"{d}/file.list",
                    "--out-dir",
                    d,
                    "--nshard",
                    "2",
                    "--rank",
                    str(rank),
                ]
                + common
            )
            == 0
        )
    assert (
        count_frames.main(
            [
                "--video-dir",
                f"{d}/video",
                "--audio-dir",
                f"{d}/audio",
                "--file-list",
                f"{d}/file.list",
                "--out-dir",
                d,
                "--nshard",
                "2",
                "--merge",
            ]
        )
        == 0
    )
    (lrs3_tree / "valid.id").write_text("trainval/spkA/00002\n")
    assert lrs3_manifest.main(["--lrs3", d, "--valid-ids", f"{d}/valid.id", "--vocab-size", "40"] + common) == 0
    return lrs3_tree


def test_segments_and_lists(prepared):
    csv = (prepared / "short-pretrain.csv").read_text().splitlines()
    assert csv == [
        "id,text,start,end",
        "spkD/00001_0,SO WE STARTED,0.000,2.100",
        "spkD/00001_1,AGAIN TODAY,2.100,-1.000",
        "spkD/00002,SHORT ONE,0.000,-1.000",
    ]
    ids = (prepared / "file.list").read_text().split()
    assert ids == [
        "trainval/spkA/00001",
        "trainval/spkA/00002",
        "trainval/spkB/00001",
        "test/spkC/00001",
        "short-pretrain/spkD/00001_0",
        "short-pretrain/spkD/00001_1",
        "short-pretrain/spkD/00002",
    ]
    labels = (prepared / "label.list").read_text().splitlines()
    assert labels[0] == "HELLO THERE" and labels[4] == "SO WE STARTED"


def test_trimmed_segments_frames_and_samples(prepared):
    sp = prepared / "short-pretrain" / "spkD"
    n0, n1 = count_video_frames(sp / "00001_0.mp4"), count_video_frames(sp / "00001_1.mp4")
    assert (n0, n1) == (52, 48)  # floor(2.1 * 25) and the remaining frames of 100
    full = count_wav_samples(prepared / "audio/short-pretrain/spkD/00001_1.wav")
    assert count_wav_samples(prepared / "audio/short-pretrain/spkD/00001_0.wav") == 2100 * 16
    assert abs(full + 2100 * 16 - 4 * 16_000) < 0.03 * 16_000
    # the trimmed video is the right part of the source
    src, _ = read_video(prepared / "pretrain/spkD/00001.mp4")
    seg, _ = read_video(sp / "00001_1.mp4")
    assert np.abs(seg[0].astype(int) - src[52]).mean() < np.abs(seg[0].astype(int) - src[40]).mean()


def test_manifests_splits_and_labels(prepared):
    expected = {
        "30h_data": {
            "train": ["trainval/spkA/00001", "trainval/spkB/00001"],
            "valid": ["trainval/spkA/00002"],
            "test": ["test/spkC/00001"],
        },
    }
    expected["433h_data"] = dict(expected["30h_data"])
    expected["433h_data"]["train"] = expected["30h_data"]["train"] + [
        "short-pretrain/spkD/00001_0",
        "short-pretrain/spkD/00001_1",
        "short-pretrain/spkD/00002",
    ]
    for setup, splits in expected.items():
        for split, ids in splits.items():
            root, rows = api.read_manifest(prepared / setup / f"{split}.tsv")
            assert Path(root) == prepared.resolve()
            assert [r.id for r in rows] == ids
            wrd = (prepared / setup / f"{split}.wrd").read_text().splitlines()
            assert len(wrd) == len(rows) and all(w == w.lower() for w in wrd)
            for r in rows:
                video, audio = api.resolve(root, r.video), api.resolve(root, r.audio)
                assert video.endswith(f"video/{r.id}.mp4") and audio.endswith(f"audio/{r.id}.wav")
                assert r.num_video_frames == count_video_frames(video) > 0
                assert r.num_audio_samples == count_wav_samples(audio)
                assert abs(r.num_audio_samples / 16_000 - r.num_video_frames / 25) < 0.1  # A/V agree
        dict_lines = (prepared / setup / "dict.wrd.txt").read_text().splitlines()
        assert dict_lines and all(line.endswith(" 1") for line in dict_lines)
    assert (prepared / "30h_data/train.wrd").read_text().splitlines() == ["hello there", "i am fine thanks"]
    assert (prepared / "spm40/spm_unigram40.model").is_file()


def test_roi_frames_match_source_frames(prepared):
    src, _ = read_video(prepared / "trainval/spkB/00001.mp4")
    roi, fps = read_video(prepared / "video/trainval/spkB/00001.mp4")
    assert roi.shape == (len(src), 96, 96, 3) and fps == pytest.approx(25)


def test_fine_tuning_task_loads_the_manifests(prepared):
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask

    cfg = AVHubertPretrainingConfig(
        data=str(prepared / "433h_data"),
        labels=["wrd"],
        label_rate=-1,
        single_target=True,
        is_s2s=True,
        fine_tuning=True,
        tokenizer_bpe_name="sentencepiece",
        tokenizer_bpe_model=str(prepared / "spm40/spm_unigram40.model"),
        stack_order_audio=4,
        normalize=True,
        sample_rate=25,
        max_sample_size=500,
        max_trim_sample_size=500,
        modalities=["audio", "video"],
    )
    task = AVHubertPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    dataset = task.dataset("train")
    assert len(dataset) == 5
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    video = batch["net_input"]["source"]["video"]
    audio = batch["net_input"]["source"]["audio"]
    assert video.shape[:2] == (5, 1) and video.shape[-2:] == (88, 88)
    assert audio.shape[0] == 5 and audio.shape[1] == 104
    assert batch["target"].shape[0] == 5
