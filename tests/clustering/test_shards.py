"""Shard ranges, the streaming .npy writer and resumable shard dumping."""

import os

import numpy as np
import pytest

from avdata.manifest import ManifestRow, write_manifest
from avdata.markers import done_marker
from avdata.sharding import shard_range
from clustering.shards import NpyStreamWriter, dump_feature_shard, load_feature_shard


@pytest.mark.parametrize("total", [0, 1, 7, 10, 101])
@pytest.mark.parametrize("nshard", [1, 3, 4, 10])
def test_shard_ranges_partition_the_rows(total, nshard):
    ranges = [shard_range(total, nshard, r) for r in range(nshard)]
    covered = [i for s, e in ranges for i in range(s, e)]
    assert covered == list(range(total))  # contiguous, in order, no overlap, nothing missing
    size = -(-total // nshard)
    assert all(e - s <= size for s, e in ranges)


def test_shard_range_reference_formula_and_errors():
    assert [shard_range(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shard_range(9, 4, 3) == (9, 9)  # empty trailing shard is allowed
    with pytest.raises(ValueError):
        shard_range(10, 4, 4)
    with pytest.raises(ValueError):
        shard_range(10, 0, 0)


def test_npy_stream_writer_roundtrip(tmp_path):
    blocks = [np.random.default_rng(i).normal(size=(n, 5)).astype(np.float32) for i, n in enumerate([3, 0, 7])]
    path = tmp_path / "a.npy"
    with NpyStreamWriter(path) as w:
        for b in blocks:
            w.append(b)
        assert not path.exists()  # only the .tmp exists until close
    np.testing.assert_array_equal(np.load(path), np.concatenate(blocks))
    assert not (tmp_path / "a.npy.tmp").exists()
    with NpyStreamWriter(tmp_path / "empty.npy", dim=39):
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0, 39)


def test_npy_stream_writer_error_leaves_no_output(tmp_path):
    path = tmp_path / "b.npy"
    with pytest.raises(ValueError, match="dim"):
        with NpyStreamWriter(path) as w:
            w.append(np.zeros((2, 3), np.float32))
            w.append(np.zeros((2, 4), np.float32))
    assert not path.exists() and not (tmp_path / "b.npy.tmp").exists()


def _manifest(tmp_path, n=5):
    rows = [ManifestRow(f"u{i}", None, f"a{i}.wav", i + 1, 640 * (i + 1)) for i in range(n)]
    write_manifest(tmp_path / "train.tsv", str(tmp_path), rows)


class CountingExtractor:
    """Fake feature extractor: utterance i -> [i+1, 4] filled with i; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, items):
        self.calls += 1
        for _, row in items:
            n = row.num_video_frames
            yield np.full((n, 4), n - 1, np.float32)


def test_dump_shard_resume_skips_done_and_ignores_planted_tmp(tmp_path):
    _manifest(tmp_path)
    feat_dir = tmp_path / "feat"
    feat_dir.mkdir()
    (feat_dir / "train_0_2.tmp.npy").write_bytes(b"partial garbage from a killed run")
    (feat_dir / "train_0_2.tmp.len").write_text("1\n")
    ex = CountingExtractor()
    assert dump_feature_shard(ex, tmp_path, "train", 2, 0, feat_dir) is True
    feats, lens = load_feature_shard(feat_dir, "train", 0, 2)
    assert lens.tolist() == [1, 2, 3] and feats.shape == (6, 4)
    assert feats[:, 0].tolist() == [0, 1, 1, 2, 2, 2]
    assert not (feat_dir / "train_0_2.tmp.npy").exists()
    assert done_marker(feat_dir, "feat", 0, 2, split="train").is_file()

    mtime = os.stat(feat_dir / "train_0_2.npy").st_mtime_ns
    assert dump_feature_shard(ex, tmp_path, "train", 2, 0, feat_dir) is False  # finished: skipped
    assert ex.calls == 1 and os.stat(feat_dir / "train_0_2.npy").st_mtime_ns == mtime

    os.remove(feat_dir / "train_0_2.len")  # an output lost after the marker -> redone
    assert dump_feature_shard(ex, tmp_path, "train", 2, 0, feat_dir) is True
    assert ex.calls == 2


def test_dump_shard_interrupted_is_not_done(tmp_path):
    _manifest(tmp_path)
    feat_dir = tmp_path / "feat"

    def dies_midway(items):
        yield np.zeros((1, 4), np.float32)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dump_feature_shard(dies_midway, tmp_path, "train", 1, 0, feat_dir)
    assert not (feat_dir / "train_0_1.npy").exists()
    assert not done_marker(feat_dir, "feat", 0, 1, split="train").exists()
    assert dump_feature_shard(CountingExtractor(), tmp_path, "train", 1, 0, feat_dir) is True
    assert load_feature_shard(feat_dir, "train", 0, 1)[1].tolist() == [1, 2, 3, 4, 5]


def test_empty_shard_gives_empty_outputs(tmp_path):
    _manifest(tmp_path, n=3)
    feat_dir = tmp_path / "feat"
    assert dump_feature_shard(CountingExtractor(), tmp_path, "train", 4, 3, feat_dir, dim=4) is True
    feats, lens = load_feature_shard(feat_dir, "train", 3, 4)
    assert feats.shape == (0, 4) and lens.tolist() == []
