"""The clustering CLIs and the iteration driver on a tiny generated corpus: formats, sharding,
resume after an interruption, model formats, label alignment and the dictionary."""

import sys
import types

import joblib
import numpy as np
import pytest

import clustering.dump_km_label as dump_km_label_mod
from avdata.manifest import read_manifest
from clustering import dump_km_label, dump_mfcc_feature, learn_kmeans
from clustering.dump_mfcc_feature import frame_count
from clustering.kmeans import CentroidModel
from clustering.run_iteration import IterationConfig, LocalRunner, SlurmRunner, check_label_alignment, main, run_iteration
from clustering.shards import load_feature_shard
from tests.clustering.synth import make_corpus

K = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), num_utts=(7, 2), frames=(12, 40))


@pytest.fixture(scope="module")
def mfcc_feats(corpus, tmp_path_factory):
    """MFCC features of train in 3 shards and in 1 shard, through the original command line."""
    feat_dir = tmp_path_factory.mktemp("feat")
    for rank in range(3):
        assert dump_mfcc_feature.main([str(corpus), "train", "3", str(rank), str(feat_dir), "--sample_rate", "16000"]) == 0
    dump_mfcc_feature.main([str(corpus), "train", "1", "0", str(feat_dir)])
    return feat_dir


def test_feature_shard_format(corpus, mfcc_feats):
    _, rows = read_manifest(corpus / "train.tsv")
    lens = np.concatenate([load_feature_shard(mfcc_feats, "train", r, 3)[1] for r in range(3)])
    assert lens.tolist() == [frame_count(r.num_audio_samples) for r in rows]
    one, one_lens = load_feature_shard(mfcc_feats, "train", 0, 1)
    assert one.dtype == np.float32 and one.shape == (one_lens.sum(), 39)
    three = np.concatenate([load_feature_shard(mfcc_feats, "train", r, 3)[0] for r in range(3)])
    np.testing.assert_array_equal(three, one)  # N shards concatenate to the 1-shard features


@pytest.mark.parametrize("backend", ["fast", "sklearn"])
def test_learn_and_label_shards_merge_like_one_shard(tmp_path, mfcc_feats, backend):
    km = tmp_path / f"{backend}.km"
    assert learn_kmeans.main([str(mfcc_feats), "train", "3", str(km), str(K), "--seed", "1", "--percent", "-1",
                              "--max_iter", "50", "--n_init", "3", "--batch_size", "500", "--backend", backend]) == 0
    centers = dump_km_label.load_centroids(km)
    assert centers.shape == (K, 39)
    lab = tmp_path / "lab"
    for rank in range(3):
        dump_km_label.main([str(mfcc_feats), "train", str(km), "3", str(rank), str(lab)])
    dump_km_label.main([str(mfcc_feats), "train", str(km), "1", "0", str(lab)])
    merged = "".join((lab / f"train_{r}_3.km").read_text() for r in range(3))
    assert merged == (lab / "train_0_1.km").read_text()
    feats, lens = load_feature_shard(mfcc_feats, "train", 0, 1)
    lines = merged.splitlines()
    assert [len(line.split()) for line in lines] == lens.tolist()
    labels = np.array([int(t) for line in lines for t in line.split()])
    brute = ((feats[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(labels, brute)


def test_learn_kmeans_percent_sampling_is_seeded(mfcc_feats):
    a = learn_kmeans.load_features(str(mfcc_feats), "train", 3, percent=0.5, seed=7)
    b = learn_kmeans.load_features(str(mfcc_feats), "train", 3, percent=0.5, seed=7)
    assert [x.shape for x in a] == [x.shape for x in b] and all(np.array_equal(x, y) for x, y in zip(a, b))
    full = learn_kmeans.load_features(str(mfcc_feats), "train", 3)
    assert sum(x.shape[0] for x in a) < sum(x.shape[0] for x in full)
    with pytest.raises(ValueError):
        learn_kmeans.load_features(str(mfcc_feats), "train", 3, percent=1.5)


def test_load_centroids_reads_every_model_format(tmp_path):
    from sklearn.cluster import MiniBatchKMeans

    x = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)
    sk = MiniBatchKMeans(n_clusters=3, n_init=1, random_state=0).fit(x)
    joblib.dump(sk, tmp_path / "sk.bin")  # what the original learn_kmeans.py writes
    joblib.dump(CentroidModel(sk.cluster_centers_), tmp_path / "fast.bin")
    np.save(tmp_path / "c.npy", sk.cluster_centers_)
    joblib.dump(sk.cluster_centers_, tmp_path / "arr.bin")
    for name in ("sk.bin", "fast.bin", "c.npy", "arr.bin"):
        np.testing.assert_allclose(dump_km_label.load_centroids(tmp_path / name), sk.cluster_centers_, rtol=1e-6)
    joblib.dump({"x": 1}, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="cluster_centers_"):
        dump_km_label.load_centroids(tmp_path / "bad.bin")
    with pytest.raises(FileNotFoundError):
        dump_km_label.load_centroids(tmp_path / "missing.bin")


def test_learn_kmeans_writes_npy_centroids_and_skips_when_done(tmp_path, mfcc_feats):
    km = tmp_path / "c.npy"
    args = (str(mfcc_feats), "train", 3, str(km), K)
    assert learn_kmeans.learn_kmeans(*args, n_init=2) is not None
    assert np.load(km).shape == (K, 39)
    assert learn_kmeans.learn_kmeans(*args, n_init=2) is None  # finished: skipped


def _cfg(corpus, out, **kw):
    return IterationConfig(str(corpus), str(out), feature="mfcc", n_clusters=K, nshard=3, percent=-1, n_init=3, **kw)


def test_run_iteration_mfcc_end_to_end(corpus, tmp_path):
    out = tmp_path / "iter1"
    assert main(["--tsv", str(corpus), "--output", str(out), "--mfcc", "--ncluster", str(K), "--nshard", "3",
                 "--percent", "-1", "--n-init", "3", "--label-ext", "mfcc"]) == 0
    for split in ("train", "valid"):
        _, rows = read_manifest(corpus / f"{split}.tsv")
        lines = (out / f"{split}.mfcc").read_text().splitlines()
        assert len(lines) == len(rows)
        for row, line in zip(rows, lines):
            ids = [int(t) for t in line.split()]
            assert len(ids) == 4 * row.num_video_frames - 2 and all(0 <= i < K for i in ids)
        assert check_label_alignment(str(corpus / f"{split}.tsv"), str(out / f"{split}.mfcc"), 100) == []
    assert (out / "dict.mfcc.txt").read_text().splitlines() == [f"{c} 10000" for c in range(K)]


def test_run_iteration_resumes_after_interruption(corpus, tmp_path, monkeypatch):
    out = tmp_path / "iter"
    cfg = _cfg(corpus, out)
    real = dump_km_label_mod.nearest_centroid
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(*a, **kw)

    monkeypatch.setattr(dump_km_label_mod, "nearest_centroid", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        run_iteration(cfg)
    lab = out / "shards"
    assert (lab / "train_0_3.km").is_file() and not (lab / "train_1_3.km").exists()
    assert not list(lab.glob("train_1_3*"))  # an error removes the partial file (a SIGKILL leaves it: tests/faults)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "feat").glob("*.npy")}
    first_label = (lab / "train_0_3.km").stat().st_mtime_ns
    km_mtime = (out / "kmeans.bin").stat().st_mtime_ns

    monkeypatch.setattr(dump_km_label_mod, "nearest_centroid", real)
    run_iteration(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "feat").glob("*.npy")} == before  # not redone
    assert (lab / "train_0_3.km").stat().st_mtime_ns == first_label
    assert (out / "kmeans.bin").stat().st_mtime_ns == km_mtime
    assert not list(lab.glob("*.tmp*"))
    _, rows = read_manifest(corpus / "train.tsv")
    assert len((out / "train.km").read_text().splitlines()) == len(rows)


def test_merge_checks_line_count_against_manifest(corpus, tmp_path):
    out = tmp_path / "it"
    cfg = _cfg(corpus, out)
    run_iteration(cfg, stop_stage=3)
    (out / "shards" / "train_2_3.km").write_text("0 1\n0 1\n")  # 2 lines for a 1-row shard
    with pytest.raises(ValueError, match="rows in"):
        run_iteration(cfg, stage=4)


def test_process_pool_runner_matches_in_process(corpus, tmp_path):
    a, b = _cfg(corpus, tmp_path / "a"), _cfg(corpus, tmp_path / "b")
    run_iteration(a, LocalRunner(1), stop_stage=1)
    run_iteration(b, LocalRunner(2), stop_stage=1)
    for r in range(3):
        np.testing.assert_array_equal(load_feature_shard(a.feat_dir, "train", r, 3)[0], load_feature_shard(b.feat_dir, "train", r, 3)[0])


def test_slurm_runner_uses_submitit_job_arrays(monkeypatch, tmp_path):
    """Without a cluster: a stand-in `submitit` module records parameters and runs jobs inline."""
    recorded = {}

    class FakeJob:
        def __init__(self, value):
            self.value, self.job_id = value, "42_0"

        def result(self):
            return self.value

    class FakeExecutor:
        def __init__(self, folder):
            recorded["folder"] = folder

        def update_parameters(self, **kw):
            recorded.update(kw)

        def map_array(self, fn, *columns):
            return [FakeJob(fn(*args)) for args in zip(*columns)]

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeExecutor))
    runner = SlurmRunner(str(tmp_path), "dev", timeout_min=5, gpus=1)
    assert runner.map(pow, [(2, 3), (3, 2)]) == [8, 9]
    assert recorded["slurm_partition"] == "dev" and recorded["gpus_per_node"] == 1
