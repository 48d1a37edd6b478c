"""Noise sets: MUSAN chunking and babble, LRS3 babble/speech, noise lists; seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avdata import manifest as api
from preparation.noise import lrs3 as lrs3_noise
from preparation.noise import mix_babble
from preparation.noise import musan as musan_prepare
from preparation.noise import manifest as noise_manifest
from preparation.media import read_wav_int16, write_wav_int16
from preparation.noise.sets import babble, chunk_bounds, repeat_to, split_items

RATE = 16_000


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (3000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_babble_chunks_and_splits():
    a, b = np.array([100, 200, 300], np.int16), np.array([-100, 0], np.int16)
    np.testing.assert_array_equal(babble([a, b]), [0, 100])
    assert chunk_bounds(25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert chunk_bounds(25, 10, min_samples=6) == [(0, 10), (10, 20)]
    parts = split_items([str(i) for i in range(10)], (0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in parts] == [8, 1, 1] and sorted(sum(parts, [])) == sorted(str(i) for i in range(10))
    assert parts == split_items([str(i) for i in range(10)], (0.8, 0.1, 0.1), seed=3)  # seeded
    assert repeat_to(["a", "b"], 5) == ["a", "b", "a", "b", "a"]


@pytest.fixture()
def musan(tmp_path) -> Path:
    root = tmp_path / "musan"
    for k in range(10):
        write_wav_int16(root / f"speech/librivox/speech-librivox-{k:04d}.wav", _tone(2.5, 200 + 20 * k))
    write_wav_int16(root / "speech/librivox/speech-librivox-short.wav", _tone(0.5, 100))
    write_wav_int16(root / "music/fma/music-fma-0000.wav", _tone(3.2, 440))
    write_wav_int16(root / "noise/free-sound/noise-free-sound-0000.wav", _tone(2.2, 1000))
    return root


def _musan(root: Path, *extra: str) -> int:
    return musan_prepare.main(
        [
            "--musan",
            str(root),
            "--chunk-sec",
            "1",
            "--num-babble",
            "4",
            "2",
            "2",
            "--num-speakers",
            "3",
            "--seed",
            "1",
            "--no-progress",
            *extra,
        ]
    )


def test_musan_prepare_chunks_split_babble_count(musan):
    assert _musan(musan) == 0
    short = musan / "short-musan"
    chunks = sorted(p.name for p in (short / "speech/librivox").glob("*.wav"))
    assert "speech-librivox-0000-0.wav" in chunks and "speech-librivox-0000-2.wav" in chunks
    assert not any("short" in c for c in chunks)  # files not longer than a chunk are skipped
    assert len(read_wav_int16(short / "speech/librivox/speech-librivox-0000-2.wav")[0]) == RATE // 2
    spk = {s: (short / f"speech/spk.{s}").read_text().split() for s in ("train", "valid", "test")}
    assert [len(v) for v in spk.values()] == [8, 1, 1]
    babble_files = sorted(p.name for p in (short / "babble/wav").glob("*.wav"))
    assert babble_files == [
        "test-00000.wav",
        "test-00001.wav",
        "train-00000.wav",
        "train-00001.wav",
        "train-00002.wav",
        "train-00003.wav",
        "valid-00000.wav",
        "valid-00001.wav",
    ]
    counts = (short / "nframes.audio").read_text().splitlines()
    assert len(counts) == 8 + 4 + 3  # babble + music chunks + noise chunks
    first = {p.name: p.read_bytes() for p in (short / "babble/wav").glob("*.wav")}
    # reproducible: a sharded rerun from scratch gives the same files
    for p in (short / "babble/wav").glob("*.wav"):
        p.unlink()
    for rank in range(3):
        assert _musan(musan, "--steps", "babble", "--nshard", "3", "--rank", str(rank)) == 0
    assert {p.name: p.read_bytes() for p in (short / "babble/wav").glob("*.wav")} == first


def test_mix_babble_cli_from_manifest(tmp_path):
    rows = []
    for k, sec in enumerate([2.0, 1.0, 3.0, 2.5]):
        write_wav_int16(tmp_path / f"audio/u{k}.wav", _tone(sec, 300 + 50 * k))
        rows.append(api.ManifestRow(f"u{k}", f"video/u{k}.mp4", f"audio/u{k}.wav", int(sec * 25), int(sec * RATE)))
    api.write_manifest(tmp_path / "train.tsv", str(tmp_path), rows)
    out = tmp_path / "babble"
    assert (
        mix_babble.main(
            [
                "--wav-list",
                str(tmp_path / "train.tsv"),
                "--out-dir",
                str(out),
                "--num-mixtures",
                "2",
                "--num-speakers",
                "2",
                "--min-sec",
                "1.5",
                "--no-progress",
            ]
        )
        == 0
    )
    listed = (out / "babble.tsv").read_text().split()
    assert listed == [str((out / "babble-00000.wav").resolve()), str((out / "babble-00001.wav").resolve())]
    mix, rate = read_wav_int16(out / "babble-00000.wav")
    pool = mix_babble.long_enough(mix_babble.read_wav_list(tmp_path / "train.tsv"), 1.5)
    assert sorted(Path(p).name for p in pool) == ["u0.wav", "u2.wav", "u3.wav"]  # u1 is 1 s
    sources = [read_wav_int16(p)[0] for p in mix_babble.mixture_sources(pool, 0, 2, 0)]
    assert rate == RATE and len(mix) == min(len(s) for s in sources)  # truncated to the shortest
    np.testing.assert_array_equal(mix, babble(sources))

    # LRS3 noise from the same manifest: babble of utterances >= 2 s, first 2 s of those > 2 s
    lrs3 = tmp_path
    assert (
        lrs3_noise.main(
            [
                "--lrs3",
                str(lrs3),
                "--manifest",
                str(tmp_path / "train.tsv"),
                "--num-speakers",
                "2",
                "--babble-min-sec",
                "2",
                "--speech-sec",
                "2",
            ]
        )
        == 0
    )
    assert (lrs3 / "noise/babble/valid.tsv").read_text().strip().endswith("noise/babble/noise.wav")
    speech = sorted(p.name for p in (lrs3 / "noise/speech/wav").glob("*.wav"))
    assert speech == ["audio_u2.wav", "audio_u3.wav"]  # {parent folder}_{stem}, like {spk}_{clip}
    assert len(read_wav_int16(lrs3 / "noise/speech/wav" / speech[0])[0]) == 2 * RATE


def test_noise_manifest_lists(musan, tmp_path):
    assert _musan(musan) == 0
    lrs3 = tmp_path / "lrs3"
    for split, n in (("train", 2), ("valid", 1), ("test", 1)):
        (lrs3 / "noise/speech").mkdir(parents=True, exist_ok=True)
        (lrs3 / f"noise/speech/{split}.tsv").write_text("".join(f"/sp/{split}{i}.wav\n" for i in range(n)))
    assert (
        noise_manifest.main(
            ["--musan", str(musan), "--lrs3", str(lrs3), "--min-sec", "0.5", "--max-sec", "1.1", "--per-category", "5"]
        )
        == 0
    )
    tsv = musan / "tsv"
    babble_train = (tsv / "babble/train.tsv").read_text().split()
    assert len(babble_train) == 4 and all(Path(p).name.startswith("train-") for p in babble_train)
    music = sum(((tsv / f"music/{s}.tsv").read_text().split() for s in ("train", "valid", "test")), [])
    assert len(music) == 3 and len(set(music)) == 3  # 3.2 s -> three 1-s chunks; the 0.2-s rest is < min-sec
    all_train = (tsv / "all/train.tsv").read_text().split()
    assert len(all_train) == 4 * 5
    assert all_train[15:] == ["/sp/train0.wav", "/sp/train1.wav", "/sp/train0.wav", "/sp/train1.wav", "/sp/train0.wav"]
    all_valid = (tsv / "all/valid.tsv").read_text().split()
    assert "/sp/valid0.wav" in all_valid and len(set(all_valid)) == len(all_valid)
