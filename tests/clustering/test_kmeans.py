"""Fast k-means backend: assignment correctness, seeding, Lloyd behaviour, quality vs scikit-learn."""

import numpy as np
import pytest
import torch

from clustering.kmeans import fit_kmeans, inertia, kmeans_plus_plus, lloyd, nearest_centroid


def gaussian_mixture(n: int, dim: int = 39, components: int = 40, seed: int = 0) -> np.ndarray:
    """float32 `[n, dim]` from an anisotropic Gaussian mixture with uneven weights."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (components, dim))
    scales = rng.uniform(0.5, 2.0, (components, dim))
    comp = rng.choice(components, n, p=rng.dirichlet(np.ones(components)))
    return (means[comp] + rng.normal(size=(n, dim)) * scales[comp]).astype(np.float32)


def test_nearest_centroid_equals_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 39)).astype(np.float32)
    c = rng.normal(size=(50, 39)).astype(np.float32)
    brute = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1).argmin(1)
    # chunk_rows=1024 exercises several chunks (incl. a ragged last one); shards as a list too
    assert np.array_equal(nearest_centroid(x, c, chunk_rows=1024), brute)
    assert np.array_equal(nearest_centroid([x[:1234], x[1234:]], c, chunk_rows=1000), brute)
    total, n = inertia(x, c, chunk_rows=1024)
    expected = ((x.astype(np.float64) - c[brute]) ** 2).sum()
    assert n == 3000 and total == pytest.approx(expected, rel=1e-5)


def test_kmeans_plus_plus_picks_distinct_sample_rows_and_spreads():
    # 5 tight, far-apart blobs: k-means++ with 5 centres must hit every blob
    rng = np.random.default_rng(0)
    blobs = np.repeat(np.arange(5)[:, None] * 100.0, 200, axis=0) + rng.normal(size=(1000, 2))
    sample = torch.from_numpy(blobs.astype(np.float32))
    centers, pot = kmeans_plus_plus(sample, 5, n_init=3, generator=torch.Generator().manual_seed(0))
    assert centers.shape == (3, 5, 2) and pot.shape == (3,)
    for run in centers:
        rows = [int(torch.where((sample == c).all(1))[0][0]) for c in run]  # each centre is a sample row
        assert sorted(r // 200 for r in rows) == [0, 1, 2, 3, 4]


def test_lloyd_inertia_never_increases_and_recovers_empty_clusters():
    x = gaussian_mixture(4000, dim=8, components=6)
    init = torch.from_numpy(x[:6].copy())
    init[0] = 1e4  # a centroid far from all data: empty after the first assignment
    model = lloyd(x, init, max_iter=50, tol=0.0, chunk_rows=1000)
    hist = np.array(model.history)
    assert np.all(np.diff(hist) <= 1e-6 * hist[0])
    counts = np.bincount(model.predict(x), minlength=6)
    assert (counts > 0).all()


def test_fit_is_deterministic_for_a_seed():
    x = gaussian_mixture(5000)
    a = fit_kmeans(x, 20, seed=3, n_init=4)
    b = fit_kmeans([x[:2000], x[2000:]], 20, seed=3, n_init=4)  # same frames split in two shards
    c = fit_kmeans(x, 20, seed=4, n_init=4)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-4)
    assert not np.allclose(a.cluster_centers_, c.cluster_centers_)


def test_fast_inertia_close_to_sklearn_minibatch():
    from sklearn.cluster import MiniBatchKMeans

    x = gaussian_mixture(20000)
    sk = MiniBatchKMeans(
        n_clusters=50, init="k-means++", max_iter=100, batch_size=10000, tol=0.0, max_no_improvement=100,
        n_init=20, reassignment_ratio=0.0, compute_labels=False, random_state=0,
    ).fit(x)
    fast = fit_kmeans(x, 50, seed=0, n_init=20)
    sk_inertia = inertia(x, sk.cluster_centers_)[0]
    fast_inertia = inertia(x, fast.cluster_centers_)[0]
    assert fast_inertia <= 1.01 * sk_inertia, (fast_inertia, sk_inertia)


def test_fit_rejects_too_few_frames():
    with pytest.raises(ValueError, match="cannot make"):
        fit_kmeans(np.zeros((3, 2), np.float32), 5)
