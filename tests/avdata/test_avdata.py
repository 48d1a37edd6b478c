"""The shared data layer: shard formula, atomic writes, done markers, and its import boundary."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avdata import atomic, constants, markers, sharding

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("total,nshard", [(0, 3), (1, 4), (10, 3), (12, 4), (7, 7), (5, 8)])
def test_shard_range_contiguous_ceil_blocks(total, nshard):
    ranges = [sharding.shard_range(total, nshard, r) for r in range(nshard)]
    per = math.ceil(total / nshard) if total else 0
    covered = [i for s, e in ranges for i in range(s, e)]
    assert covered == list(range(total))  # union = everything, no overlap, in order
    for r, (s, e) in enumerate(ranges):
        assert s == min(r * per, total) and e == min((r + 1) * per, total)
    assert [sharding.shard_range(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_shard_range_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        sharding.shard_range(10, 2, 2)
    with pytest.raises(ValueError, match="nshard"):
        sharding.shard_range(10, 0, 0)


def test_strip_flags_for_slurm_resubmission():
    argv = ["--a", "1", "--rank", "3", "--nshard=4", "--slurm-partition", "p", "--b"]
    assert sharding.strip_flags(argv, {"--rank", "--nshard", "--slurm-partition"}) == ["--a", "1", "--b"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    out = tmp_path / "x.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert list(tmp_path.iterdir()) == [out]  # no leftover temp file
    with atomic.atomic_path(out) as tmp:
        assert tmp == tmp_path / "x.tmp.txt"  # same folder, extension kept for format sniffing
        tmp.write_text("new")
    assert out.read_text() == "new"


def test_atomic_path_refuses_a_block_that_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not write"):
        with atomic.atomic_path(tmp_path / "a" / "y.npy"):
            pass
    assert not (tmp_path / "a" / "y.npy").exists()


def test_atomic_writers_for_text_bytes_lines_and_numpy(tmp_path):
    atomic.write_text(tmp_path / "t.json", "{}\n")
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic.write_lines(tmp_path / "sub" / "l.tsv", (f"{i}" for i in range(3)))
    with atomic.atomic_path(tmp_path / "a.npy") as tmp:
        np.save(tmp, np.arange(4))  # np.save would append .npy to a name without the suffix
    assert (tmp_path / "t.json").read_text() == "{}\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "l.tsv").read_text() == "0\n1\n2\n"
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3]
    assert atomic.temp_name(tmp_path / "noext") == tmp_path / "noext.tmp"
    assert sorted(p.name for p in tmp_path.rglob("*") if "tmp" in p.name) == []


def test_done_markers_with_and_without_split(tmp_path):
    prep = markers.done_marker(tmp_path, "crop", 1, 4)
    clus = markers.done_marker(tmp_path, "feat", 0, 2, split="train")
    assert prep.name == ".crop.1_4.done" and clus.name == ".feat.train_0_2.done"
    out = tmp_path / "train_0_2.npy"
    assert not markers.is_done(clus)
    assert markers.mark_done(clus) == clus
    assert markers.is_done(clus) and not markers.is_done(clus, [out])  # an output deleted later: redo
    out.write_bytes(b"")
    assert markers.is_done(clus, [out])


def test_constants():
    assert (constants.VIDEO_FPS, constants.AUDIO_SAMPLE_RATE_HZ, constants.AUDIO_SAMPLES_PER_FRAME) == (25, 16_000, 640)


def test_avdata_imports_neither_fairseq_nor_torch():
    code = (
        "import sys, avdata.atomic, avdata.audio, avdata.constants, avdata.labels, avdata.manifest, "
        "avdata.markers, avdata.noise, avdata.procs, avdata.sharding, avdata.video\n"
        "print(sorted(m for m in ('fairseq', 'torch', 'avhubert', 'preparation') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("codec", ["h264", "mp4v"])
@pytest.mark.parametrize("color", [False, True])
def test_write_video_codecs_gray_and_color(tmp_path, codec, color):
    from avdata.video import count_video_frames, load_video, write_video

    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, None], (9, 32, 1))  # [9, 32, 32]
    frames = np.repeat(ramp[..., None], 3, axis=3) if color else ramp
    out = tmp_path / "sub" / f"clip_{codec}.mp4"
    write_video(out, frames, fps=25, codec=codec, verify=True)
    assert count_video_frames(out) == 9
    assert np.abs(load_video(str(out)).astype(int) - ramp).mean() < 4
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left


@pytest.mark.parametrize("fast_decode", [True, False])
def test_write_video_h264_fast_decode_settings(tmp_path, fast_decode):
    """x264 records its settings in the stream: the default H.264 clip has no CABAC and no deblocking
    (the settings that make the training loader's decode ~1.9x cheaper), and the opt-out keeps both."""
    from avdata.video import load_video, write_video

    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    out = tmp_path / "clip.mp4"
    write_video(out, frames, fps=25, fast_decode=fast_decode)
    settings = out.read_bytes()
    assert (b"cabac=0" in settings) is fast_decode and (b"cabac=1" in settings) is not fast_decode
    assert (b"deblock=0:" in settings) is fast_decode and (b"deblock=1:" in settings) is not fast_decode
    assert load_video(str(out)).shape == (6, 32, 32)


def test_write_video_rejects_bad_input_and_keeps_old_file(tmp_path):
    from avdata.video import write_video

    out = tmp_path / "x.mp4"
    out.write_bytes(b"old")
    with pytest.raises(TypeError, match="uint8"):
        write_video(out, np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="no frames"):
        write_video(out, np.zeros((0, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="codec"):
        write_video(out, np.zeros((2, 16, 16), np.uint8), codec="vp9")
    assert out.read_bytes() == b"old"
