"""Sharded runs equal one shard; interrupted runs resume; failures are listed, never silent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from avdata.video import write_video
from preparation.face import crop_mouth_rois, detect_landmarks
from preparation.face.landmarks import load_landmarks
from preparation.media import read_video

pytest.importorskip("dlib")  # safety net only: dlib-bin is part of the setup

IDS = ["s1/a", "s1/b", "s2/c"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, face25) -> Path:
    _, frames = face25
    root = tmp_path_factory.mktemp("clips")
    for k, cid in enumerate(IDS):
        write_video(root / "videos" / f"{cid}.mp4", frames[k * 20 : k * 20 + 14])
    (root / "file.list").write_text("\n".join(IDS) + "\n")
    return root


def _detect(root: Path, out: str, *extra: str) -> int:
    return detect_landmarks.main(
        [
            "--video-dir",
            str(root / "videos"),
            "--file-list",
            str(root / "file.list"),
            "--landmark-dir",
            str(root / out),
            "--no-progress",
            *extra,
        ]
    )


def _crop(root: Path, lm: str, out: str, *extra: str) -> int:
    return crop_mouth_rois.main(
        [
            "--video-dir",
            str(root / "videos"),
            "--landmark-dir",
            str(root / lm),
            "--file-list",
            str(root / "file.list"),
            "--out-dir",
            str(root / out),
            "--no-progress",
            *extra,
        ]
    )


def test_sharded_runs_equal_one_shard(clips):
    assert _detect(clips, "lm1") == 0
    for rank in range(2):
        assert _detect(clips, "lm2", "--nshard", "2", "--rank", str(rank)) == 0
    assert (clips / "lm2/.detect_landmarks.0_2.done").exists() and (clips / "lm2/.detect_landmarks.1_2.done").exists()
    for cid in IDS:
        np.testing.assert_array_equal(
            load_landmarks(clips / f"lm1/{cid}.npy"), load_landmarks(clips / f"lm2/{cid}.npy")
        )
    assert _crop(clips, "lm1", "roi1") == 0
    for rank in range(4):  # more shards than clips: the last shard is empty but still done
        assert _crop(clips, "lm2", "roi4", "--nshard", "4", "--rank", str(rank)) == 0
    assert (clips / "roi4/.crop_mouth_rois.3_4.done").exists()
    for cid in IDS:
        one, _ = read_video(clips / f"roi1/{cid}.mp4")
        many, _ = read_video(clips / f"roi4/{cid}.mp4")
        assert one.shape == (14, 96, 96, 3)
        np.testing.assert_array_equal(one, many)


def test_interrupted_run_resumes_without_redoing_finished_clips(clips):
    assert _detect(clips, "lm_resume", "--nshard", "1") == 0
    out = clips / "lm_resume"
    # Simulate an interruption: one output never written, one truncated, a stale temp file, no marker.
    os.remove(out / "s1/b.npy")
    (out / "s2/c.npy").write_bytes(b"")
    (out / "s1/b.tmp.npy").write_bytes(b"garbage")
    os.remove(out / ".detect_landmarks.0_1.done")
    finished_mtime = os.stat(out / "s1/a.npy").st_mtime_ns
    assert _detect(clips, "lm_resume", "--num-workers", "2") == 0
    assert os.stat(out / "s1/a.npy").st_mtime_ns == finished_mtime  # not redone
    for cid in IDS:
        assert load_landmarks(out / f"{cid}.npy").shape == (14, 68, 2)
    assert not (out / "s1/b.tmp.npy").exists()
    assert (out / ".detect_landmarks.0_1.done").exists()
    # --overwrite redoes everything
    assert _detect(clips, "lm_resume", "--overwrite") == 0
    assert os.stat(out / "s1/a.npy").st_mtime_ns != finished_mtime


def test_failures_are_listed_and_exit_non_zero(clips, tmp_path):
    bad_list = tmp_path / "bad.list"
    bad_list.write_text("s1/a\nnot/there\n")
    rc = detect_landmarks.main(
        [
            "--video-dir",
            str(clips / "videos"),
            "--file-list",
            str(bad_list),
            "--landmark-dir",
            str(tmp_path / "lm"),
            "--no-progress",
        ]
    )
    assert rc == 1
    failures = (tmp_path / "lm/failures.detect_landmarks.0_1.tsv").read_text().splitlines()
    assert len(failures) == 1 and failures[0].startswith("not/there\tFileNotFoundError")
    assert not (tmp_path / "lm/.detect_landmarks.0_1.done").exists()
    assert (tmp_path / "lm/s1/a.npy").exists()  # the good clip was still processed
