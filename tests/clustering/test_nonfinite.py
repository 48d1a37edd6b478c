"""NaN/inf features never turn into silent labels (issue 12, item 2).

Shards, k-means and labels: NaN rows stop each step with the shard file, the row ranges and the
utterance ids, or are dropped / labelled and counted with `--skip-nonfinite`; centroids and labels
are checked before they are written; a diverged checkpoint stops the AV-HuBERT feature dump.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from avdata.manifest import ManifestRow, write_manifest
from clustering.dump_km_label import dump_km_label, load_centroids
from clustering.kmeans import lloyd
from clustering.learn_kmeans import learn_kmeans
from clustering.learn_kmeans import main as learn_main
from clustering.run_iteration import IterationConfig, run_iteration
from clustering.shards import NonFiniteFeatureError, dump_feature_shard, format_row_ranges, shard_name
from tests.clustering.synth import make_corpus

REPO = Path(__file__).resolve().parents[2]
NSHARD = 3
DIM = 39
BAD_SHARD = 1
BAD_UTT = 2  # utterance of the bad shard holding the NaN rows
BAD_OFFSET = 5  # first NaN row inside that utterance
N_BAD = 10


@pytest.fixture()
def nan_feats(tmp_path):
    """3 MFCC-like shards of 8 utterances (ids u00..u23); 10 NaN rows in utterance u10 of shard 1."""
    rng = np.random.default_rng(0)
    feat_dir, rows = tmp_path / "feat", []
    feat_dir.mkdir()
    for rank in range(NSHARD):
        lens = rng.integers(60, 140, size=8)
        feats = (rng.normal(size=(int(lens.sum()), DIM)) + rng.integers(0, 4, size=(int(lens.sum()), 1)) * 3).astype(np.float32)
        if rank == BAD_SHARD:
            start = int(lens[:BAD_UTT].sum()) + BAD_OFFSET
            feats[start : start + N_BAD, 3] = np.nan
        np.save(feat_dir / f"{shard_name('train', rank, NSHARD)}.npy", feats)
        (feat_dir / f"{shard_name('train', rank, NSHARD)}.len").write_text("".join(f"{n}\n" for n in lens))
        rows += [ManifestRow(f"u{rank * 8 + i:02d}", None, f"a{rank * 8 + i}.wav", int(n) // 4, int(n) * 160) for i, n in enumerate(lens)]
    write_manifest(tmp_path / "train.tsv", str(tmp_path), rows)
    lens1 = [int(x) for x in (feat_dir / f"train_{BAD_SHARD}_{NSHARD}.len").read_text().split()]
    bad_start = sum(lens1[:BAD_UTT]) + BAD_OFFSET
    return tmp_path, feat_dir, bad_start


def test_row_ranges_are_compact():
    assert format_row_ranges(np.array([3, 4, 5, 9, 11, 12])) == "3-5, 9, 11-12"


def test_learn_kmeans_names_shard_rows_and_ids(nan_feats, caplog):
    root, feat_dir, start = nan_feats
    km = root / "km.bin"
    args = [str(feat_dir), "train", str(NSHARD), str(km), "8", "--device", "cpu", "--tsv-dir", str(root)]
    assert learn_main(args) == 1
    msg = caplog.text
    assert f"train_{BAD_SHARD}_{NSHARD}.npy" in msg and f"rows {start}-{start + N_BAD - 1}" in msg
    assert "'u10'" in msg and "--skip-nonfinite" in msg
    assert not km.exists()
    # without the manifest the utterance is named by its manifest row
    with pytest.raises(NonFiniteFeatureError, match="manifest row 10"):
        learn_kmeans(str(feat_dir), "train", NSHARD, str(km), 8, device="cpu")


def test_learn_kmeans_cli_exits_nonzero(nan_feats):
    root, feat_dir, start = nan_feats
    proc = subprocess.run(
        [sys.executable, "-m", "clustering.learn_kmeans", str(feat_dir), "train", str(NSHARD), str(root / "km.bin"), "8",
         "--device", "cpu", "--tsv-dir", str(root)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert f"train_{BAD_SHARD}_{NSHARD}.npy" in proc.stderr and "'u10'" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("percent", [-1.0, 1.0])
def test_learn_kmeans_skip_nonfinite_drops_and_counts(nan_feats, caplog, percent):
    root, feat_dir, _ = nan_feats
    km = root / "km.npy"
    caplog.set_level("INFO")
    learn_kmeans(str(feat_dir), "train", NSHARD, str(km), 8, device="cpu", percent=percent, skip_nonfinite=True, tsv_dir=str(root))
    assert f"dropped {N_BAD} non-finite frames" in caplog.text
    centers = np.load(km)
    assert centers.shape == (8, DIM) and np.isfinite(centers).all()


def test_centroids_are_checked_before_written(nan_feats, monkeypatch):
    root, feat_dir, _ = nan_feats
    from clustering import learn_kmeans as lk

    real = lk.fit_kmeans

    def poisoned(*a, **kw):
        model = real(*a, **kw)
        model.cluster_centers_[2] = np.inf
        return model

    monkeypatch.setattr(lk, "fit_kmeans", poisoned)
    km = root / "km.bin"
    with pytest.raises(FloatingPointError, match="1 of 8 centroids are NaN/inf; model not written"):
        learn_kmeans(str(feat_dir), "train", NSHARD, str(km), 8, device="cpu", skip_nonfinite=True)
    assert not km.exists()


def test_lloyd_refuses_nan_data():
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    x[7, 1] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite distances"):
        lloyd(x, torch.from_numpy(x[[0, 50]].copy()), device="cpu")


def test_load_centroids_refuses_nan(tmp_path):
    c = np.zeros((4, 3), dtype=np.float32)
    c[1, 0] = np.nan
    np.save(tmp_path / "c.npy", c)
    with pytest.raises(ValueError, match=r"c\.npy: 1 of 4 centroids are NaN/inf"):
        load_centroids(tmp_path / "c.npy")


def test_dump_km_label_refuses_or_labels_and_counts(nan_feats, caplog):
    root, feat_dir, start = nan_feats
    km = root / "km.npy"
    learn_kmeans(str(feat_dir), "train", NSHARD, str(km), 8, device="cpu", skip_nonfinite=True)
    lab = root / "lab"
    with pytest.raises(NonFiniteFeatureError, match=rf"rows {start}-{start + N_BAD - 1}\) in 1 utterances: 'u10'"):
        dump_km_label(str(feat_dir), "train", str(km), NSHARD, BAD_SHARD, str(lab), device="cpu", tsv_dir=str(root))
    assert not any(lab.iterdir())  # neither the label file nor its temp file nor a done marker
    caplog.set_level("INFO")
    dump_km_label(str(feat_dir), "train", str(km), NSHARD, BAD_SHARD, str(lab), device="cpu", skip_nonfinite=True, tsv_dir=str(root))
    assert f"{N_BAD} of " in caplog.text and "labelled after zero-filling" in caplog.text
    lines = (lab / f"train_{BAD_SHARD}_{NSHARD}.km").read_text().splitlines()
    lens = [int(x) for x in (feat_dir / f"train_{BAD_SHARD}_{NSHARD}.len").read_text().split()]
    assert [len(line.split()) for line in lines] == lens  # one label per frame: alignment kept
    feats = np.load(feat_dir / f"train_{BAD_SHARD}_{NSHARD}.npy")
    centers = np.load(km)
    filled = np.nan_to_num(feats[start], nan=0.0)
    expected = int(((centers - filled) ** 2).sum(1).argmin())
    assert int(lines[BAD_UTT].split()[BAD_OFFSET]) == expected


def test_feature_dump_stops_on_nan_features(tmp_path, caplog):
    make_corpus(tmp_path, splits=("train",), num_utts=(5,))

    def extract(items):
        for i, (_, row) in enumerate(items):
            feat = np.ones((row.num_video_frames, 4), dtype=np.float32)
            if i == 3:
                feat[2:4] = np.inf
            yield feat

    out = tmp_path / "feat"
    with pytest.raises(NonFiniteFeatureError, match=r"train_0_1\.npy: 2 of \d+ rows .* in 1 utterances: 'train003'"):
        dump_feature_shard(extract, tmp_path, "train", 1, 0, out)
    assert sorted(p.name for p in out.iterdir()) == []  # nothing partial is visible
    assert dump_feature_shard(extract, tmp_path, "train", 1, 0, out, allow_nonfinite=True)
    assert "kept non-finite features" in caplog.text


def test_diverged_checkpoint_stops_hubert_dump(tmp_path, synthetic_corpus):
    from clustering.dump_hubert_feature import dump_hubert_shard
    from tests.clustering.tiny_checkpoint import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", layers=1)
    state = torch.load(ckpt, weights_only=False)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, ckpt)
    with pytest.raises(NonFiniteFeatureError, match=r"train_0_4\.npy: .* NaN/inf .* 4 utterances: '[^']+', .*diverged"):
        dump_hubert_shard(str(synthetic_corpus), "train", str(ckpt), 1, 4, 0, str(tmp_path / "feat"), device="cpu", progress=False)
    assert not (tmp_path / "feat" / "train_0_4.npy").exists()


def test_run_iteration_with_nan_audio(tmp_path, caplog):
    """A float wav holding NaN samples: the iteration stops naming it, or with --skip-nonfinite
    finishes with one finite-centroid label per frame for every utterance."""
    corpus = make_corpus(tmp_path / "data", num_utts=(6, 2))
    wav_path = corpus / "audio" / "train004.wav"
    wav, sr = sf.read(wav_path, dtype="float32")
    wav[1000:3000] = np.nan
    sf.write(wav_path, wav, sr, subtype="FLOAT")
    cfg = IterationConfig(str(corpus), str(tmp_path / "it"), n_clusters=4, nshard=2, percent=-1, device="cpu", n_init=2)
    with pytest.raises(NonFiniteFeatureError, match=r"train_1_2\.npy: .* 'train004'"):
        run_iteration(cfg)
    assert not (tmp_path / "it" / "feat" / "train_1_2.npy").exists()
    caplog.set_level("INFO")
    cfg.skip_nonfinite = True
    run_iteration(cfg)
    assert "non-finite frames" in caplog.text and "labelled after zero-filling" in caplog.text
    labels = (tmp_path / "it" / "train.km").read_text().splitlines()
    lens = []
    for rank in range(2):
        lens += [int(x) for x in (tmp_path / "it" / "feat" / f"train_{rank}_2.len").read_text().split()]
    assert [len(line.split()) for line in labels] == lens
