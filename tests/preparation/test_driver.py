"""The staged `prepare_lrs3.sh` driver: stage selection, .done guards, full run (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "preparation" / "prepare_lrs3.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False)


def _tiny_tree(root: Path) -> None:
    for cid, text in (("trainval/s1/00001", "HELLO"), ("test/s2/00001", "BYE")):
        (root / cid).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{cid}.txt").write_text(f"Text:  {text}\nConf:  3\n")
        (root / f"{cid}.mp4").write_bytes(b"")  # not decoded in stages 0-1
    (root / "pretrain/s3").mkdir(parents=True)
    (root / "pretrain/s3/00001.txt").write_text(
        "Text:  A B\nConf:  3\n\nWORD START END ASDSCORE\nA 0.1 0.5 1\nB 0.6 1.0 1\n"
    )


def test_driver_stages_and_done_guards(tmp_path):
    _tiny_tree(tmp_path)
    res = _run("--lrs3", str(tmp_path), "--stage", "0", "--stop-stage", "1")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "file.list").read_text().split() == [
        "trainval/s1/00001",
        "test/s2/00001",
        "short-pretrain/s3/00001",
    ]
    assert (tmp_path / ".prepare_lrs3.0_segment.done").exists() and (tmp_path / ".prepare_lrs3.1_lists.done").exists()
    res = _run("--lrs3", str(tmp_path), "--stage", "0", "--stop-stage", "1")
    assert res.stdout.count("done before, skipping") == 2
    assert _run("--lrs3", str(tmp_path), "--bogus").returncode == 2
    assert _run("--stage", "0").returncode == 2  # --lrs3 missing


@pytest.mark.slow
def test_driver_full_run_on_mini_lrs3(tmp_path, face25, make_clip):
    _, frames = face25
    for k, cid in enumerate(("trainval/s1/00001", "trainval/s1/00002", "test/s2/00001", "pretrain/s3/00001")):
        make_clip(tmp_path / f"{cid}.mp4", frames[k * 20 : k * 20 + 25], seed=k)
        words = "\n\nWORD START END ASDSCORE\nWORD 0.1 0.5 1\n" if cid.startswith("pretrain") else "\n"
        (tmp_path / f"{cid}.txt").write_text(f"Text:  SOME WORDS {k}\nConf:  3{words}")
    (tmp_path / "valid.id").write_text("trainval/s1/00002\n")
    res = _run(
        "--lrs3",
        str(tmp_path),
        "--stop-stage",
        "8",
        "--nshard",
        "2",
        "--vocab-size",
        "20",
        "--valid-ids",
        str(tmp_path / "valid.id"),
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for setup in ("30h_data", "433h_data"):
        for split in ("train", "valid", "test"):
            assert (tmp_path / setup / f"{split}.tsv").read_text().count("\n") >= 2
    ids = [line.split("\t")[0] for line in (tmp_path / "433h_data/train.tsv").read_text().splitlines()[1:]]
    assert ids == ["trainval/s1/00001", "short-pretrain/s3/00001"]
    assert (tmp_path / "qa/summary.json").exists()
