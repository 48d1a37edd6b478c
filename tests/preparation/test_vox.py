"""VoxCeleb2 lists, audio, ROIs, counts and the English-subset manifest on a miniature tree."""

from __future__ import annotations

import pytest

from avdata import manifest as api
from preparation import count_frames, extract_audio
from preparation.face import crop_mouth_rois, detect_landmarks
from preparation.vox2 import lists as vox_lists
from preparation.vox2 import manifest as vox_manifest

pytest.importorskip("dlib")  # safety net only: dlib-bin is part of the setup

IDS = [
    "dev/mp4/id00012/abcDEF/00001",
    "dev/mp4/id00012/abcDEF/00002",
    "dev/mp4/id00077/xyz/00001",
    "test/mp4/id00500/qqq/00001",
]


def test_vox_pipeline(tmp_path, face25, make_clip):
    _, frames = face25
    vox = tmp_path / "vox"
    for k, cid in enumerate(IDS):
        make_clip(vox / f"{cid}.mp4", frames[k * 10 : k * 10 + 12], seed=k)
    d = str(vox)
    quiet = ["--no-progress"]
    assert vox_lists.main(["--vox", d] + quiet) == 0
    assert (vox / "file.list").read_text().split() == IDS
    assert (
        extract_audio.main(["--video-dir", d, "--file-list", f"{d}/file.list", "--audio-dir", f"{d}/audio"] + quiet)
        == 0
    )
    assert (
        detect_landmarks.main(
            ["--video-dir", d, "--file-list", f"{d}/file.list", "--landmark-dir", f"{d}/landmark", "--no-cnn"] + quiet
        )
        == 0
    )
    assert (
        crop_mouth_rois.main(
            [
                "--video-dir",
                d,
                "--landmark-dir",
                f"{d}/landmark",
                "--file-list",
                f"{d}/file.list",
                "--out-dir",
                f"{d}/video",
            ]
            + quiet
        )
        == 0
    )
    assert (
        count_frames.main(
            ["--video-dir", f"{d}/video", "--audio-dir", f"{d}/audio", "--file-list", f"{d}/file.list", "--out-dir", d]
            + quiet
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
                "--merge",
            ]
        )
        == 0
    )
    (vox / "en.id").write_text("id00012/abcDEF/00002\ntest/mp4/id00500/qqq/00001\n")  # both id spellings
    assert vox_manifest.main(["--vox", d, "--en-ids", f"{d}/en.id"] + quiet) == 0
    _, all_rows = api.read_manifest(vox / "all_data/train.tsv")
    _, en_rows = api.read_manifest(vox / "en_data/train.tsv")
    assert [r.id for r in all_rows] == IDS
    assert [r.id for r in en_rows] == [IDS[1], IDS[3]]
    assert all(r.num_video_frames == 12 and abs(r.num_audio_samples - 12 * 640) < 400 for r in all_rows)
    assert not (vox / "all_data/valid.tsv").exists()  # reference: no valid split for VoxCeleb2
