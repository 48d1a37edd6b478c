"""Vectorised k-means in torch (CPU or CUDA): nearest-centroid assignment, k-means++, Lloyd.

The "fast" backend of `learn_kmeans` (`fit_kmeans`): greedy k-means++ (`n_init` seedings run as
one batched computation on a small sample), the few best seedings refined by Lloyd on a larger
sample, then full-batch Lloyd passes over all frames. Distances are computed chunk by chunk as
`|x|^2 - 2 x c^T + |c|^2` with one matmul, so memory is bounded by `chunk_rows x K` floats and the
data may be a list of memory-mapped shards. Empty clusters are moved to the points farthest from
their centroids. The fitted `CentroidModel` exposes `cluster_centers_` like a scikit-learn model.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LLOYD_TOL",
    "CentroidModel",
    "iter_chunks",
    "assign",
    "nearest_centroid",
    "inertia",
    "kmeans_plus_plus",
    "lloyd",
    "fit_kmeans",
]

# Rows per distance chunk are chosen so a chunk's [rows, K] distance matrix holds ~this many floats
# (small on CPU, where cache-sized blocks are fastest; large on GPU).
CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 26}
# Lloyd stops when a pass lowers the inertia by less than this fraction. On 200k x 39 MFCC and
# Gaussian-mixture data (bench/bench_kmeans.py) it ends ~0.2 % above the inertia reached with 1e-4
# in ~0.7x the time; both are below scikit-learn MiniBatchKMeans' inertia.
DEFAULT_LLOYD_TOL = 3e-4
# Empty clusters relocated per Lloyd pass at most (to the farthest points of that pass).
MAX_RELOCATED = 256
# Upper bound on the float32 elements of the warm-start sample (1 GiB).
MAX_WARM_ELEMENTS = 1 << 28


@dataclass
class CentroidModel:
    """A fitted k-means model: `cluster_centers_` float32 `[K, D]` (scikit-learn attribute name)."""

    cluster_centers_: np.ndarray
    inertia_: float = float("nan")  # sum of squared distances on the training frames
    n_iter_: int = 0
    history: List[float] = field(default_factory=list)  # inertia per frame after each Lloyd pass

    @property
    def n_clusters(self) -> int:
        return int(self.cluster_centers_.shape[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Nearest-centroid labels int64 `[N]` of `[N, D]` features."""
        return nearest_centroid(x, self.cluster_centers_)


def _chunk_rows(n_clusters: int, chunk_rows: Optional[int], device: torch.device) -> int:
    elements = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"])
    return chunk_rows or max(1024, elements // max(n_clusters, 1))


def iter_chunks(data: np.ndarray | torch.Tensor | Sequence[np.ndarray], rows: int, device: torch.device) -> Iterator[torch.Tensor]:
    """float32 tensors of at most `rows` rows from one array or a list of arrays (e.g. mmaps)."""
    arrays = [data] if isinstance(data, (np.ndarray, torch.Tensor)) else list(data)
    for arr in arrays:
        for start in range(0, arr.shape[0], rows):
            block = arr[start : start + rows]
            if isinstance(block, np.ndarray):
                block = np.ascontiguousarray(block, dtype=np.float32)
                if not block.flags.writeable:  # read-only mmap: torch needs a writable buffer
                    block = block.copy()
                block = torch.from_numpy(block)
            yield block.to(device=device, dtype=torch.float32)


def assign(x: torch.Tensor, centers: torch.Tensor, centers_sq: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row: `x [n, D]`, `centers [K, D]` -> (labels int64 `[n]`, sq. dist `[n]`)."""
    if centers_sq is None:
        centers_sq = (centers * centers).sum(1)
    # |c|^2 - 2 x.c ; |x|^2 is constant per row so it is added after the min.
    partial = torch.addmm(centers_sq.unsqueeze(0), x, centers.T, alpha=-2.0)  # [n, K]
    min_partial, labels = partial.min(dim=1)
    dist = (min_partial + (x * x).sum(1)).clamp_min_(0.0)
    return labels, dist


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def nearest_centroid(
    x: np.ndarray | Sequence[np.ndarray],
    centers: np.ndarray,
    device: str | torch.device | None = "cpu",
    chunk_rows: Optional[int] = None,
) -> np.ndarray:
    """Labels int64 `[N]` of features `[N, D]` (chunked matmul; squared Euclidean distance)."""
    dev = _device(device)
    c = torch.as_tensor(np.asarray(centers, dtype=np.float32), device=dev)
    c_sq = (c * c).sum(1)
    rows = _chunk_rows(c.shape[0], chunk_rows, dev)
    out = [assign(chunk, c, c_sq)[0].cpu() for chunk in iter_chunks(x, rows, dev)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def inertia(
    x: np.ndarray | Sequence[np.ndarray],
    centers: np.ndarray,
    device: str | torch.device | None = "cpu",
    chunk_rows: Optional[int] = None,
) -> Tuple[float, int]:
    """(sum of squared distances to the nearest centroid, number of frames)."""
    dev = _device(device)
    c = torch.as_tensor(np.asarray(centers, dtype=np.float32), device=dev)
    c_sq = (c * c).sum(1)
    total, n = 0.0, 0
    for chunk in iter_chunks(x, _chunk_rows(c.shape[0], chunk_rows, dev), dev):
        total += float(assign(chunk, c, c_sq)[1].double().sum())
        n += chunk.shape[0]
    return total, n


def kmeans_plus_plus(
    sample: torch.Tensor,
    n_clusters: int,
    n_init: int = 1,
    generator: Optional[torch.Generator] = None,
    n_local_trials: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ seeding, `n_init` independent runs batched: `[S, D]` -> `[n_init, K, D]`.

    Each new centre is the best (lowest resulting potential) of `n_local_trials`
    (default `2 + ln K`, as scikit-learn) candidates drawn with probability proportional to the
    squared distance to the nearest chosen centre. Also returns the final potential `[n_init]`
    (sum of squared distances of the sample to its nearest seed).
    """
    num, dim = sample.shape
    if num < n_clusters:
        raise ValueError(f"cannot pick {n_clusters} centres from {num} samples")
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    dev = sample.device
    runs = torch.arange(n_init, device=dev)
    x_sq = (sample * sample).sum(1)  # [S]
    first = torch.randint(num, (n_init,), generator=generator, device="cpu").to(dev)
    centers = torch.empty(n_init, n_clusters, dim, device=dev)
    centers[:, 0] = sample[first]
    # [I, S] squared distance of every sample to its nearest chosen centre
    closest = (x_sq[None] - 2 * centers[:, 0] @ sample.T + x_sq[first][:, None]).clamp_min_(0)
    for k in range(1, n_clusters):
        cum = closest.cumsum(1)  # [I, S]
        draws = torch.rand(n_init, trials, generator=generator, device="cpu").to(dev) * cum[:, -1:]
        cand = torch.searchsorted(cum, draws).clamp_max_(num - 1)  # [I, L]
        cand_x = sample[cand]  # [I, L, D]
        d = x_sq[None, None] - 2 * torch.bmm(cand_x, sample.T.expand(n_init, dim, num)) + x_sq[cand][..., None]
        d = torch.minimum(d.clamp_min_(0), closest[:, None])  # [I, L, S]
        best = d.sum(2).argmin(1)  # [I]
        closest = d[runs, best]
        centers[:, k] = cand_x[runs, best]
    return centers, closest.double().sum(1)


def lloyd(
    data: np.ndarray | Sequence[np.ndarray],
    init_centers: torch.Tensor,
    max_iter: int = 100,
    tol: float = DEFAULT_LLOYD_TOL,
    device: str | torch.device | None = "cpu",
    chunk_rows: Optional[int] = None,
    progress: bool = False,
) -> CentroidModel:
    """Full-batch Lloyd iterations from `init_centers [K, D]` over `data` (array or list of arrays).

    Stops after `max_iter` passes or when a pass lowers the inertia by less than `tol` (relative).
    `history` holds the inertia per frame of each pass, measured before that pass's update, so the
    returned centres are at least as good as `history[-1]`.
    """
    dev = _device(device)
    centers = init_centers.to(dev, torch.float32).clone()
    k, dim = centers.shape
    rows = _chunk_rows(k, chunk_rows, dev)
    n_far = min(k, MAX_RELOCATED)
    history: List[float] = []
    prev = math.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        c_sq = (centers * centers).sum(1)
        sums = torch.zeros(k, dim, dtype=torch.float64, device=dev)
        counts = torch.zeros(k, dtype=torch.float64, device=dev)
        total_t, n = torch.zeros((), dtype=torch.float64, device=dev), 0  # summed on the device: no sync per chunk
        # running top-`n_far` farthest points: where empty clusters are moved
        far_d = torch.empty(0, device=dev)
        far_x = torch.empty(0, dim, device=dev)
        for chunk in iter_chunks(data, rows, dev):
            labels, dist = assign(chunk, centers, c_sq)
            sums += torch.zeros(k, dim, device=dev).index_add_(0, labels, chunk).double()
            counts += torch.bincount(labels, minlength=k).double()
            total_t += dist.double().sum()
            n += chunk.shape[0]
            top = dist.topk(min(n_far, dist.shape[0]))
            far_d, far_x = torch.cat([far_d, top.values]), torch.cat([far_x, chunk[top.indices]])
            if far_d.numel() > n_far:
                keep = far_d.topk(n_far).indices
                far_d, far_x = far_d[keep], far_x[keep]
        if n == 0:
            raise ValueError("no data to cluster")
        total = float(total_t)  # one host sync per pass (the stopping rule)
        if not math.isfinite(total):  # NaN/inf rows would silently poison every centroid
            raise FloatingPointError(
                f"lloyd pass {n_iter}: non-finite distances; the features hold NaN/inf rows or values too large "
                "for float32 (learn_kmeans checks its input: see --skip-nonfinite)"
            )
        empty = (counts == 0).nonzero().flatten()
        new_centers = (sums / counts.clamp_min(1)[:, None]).float()
        if empty.numel():
            order = far_d.argsort(descending=True)[: empty.numel()]
            new_centers[empty[: order.numel()]] = far_x[order]
            logger.info("lloyd iter %d: moved %d empty clusters to far points", n_iter, empty.numel())
        centers = new_centers
        history.append(total / n)
        if progress:
            logger.info("lloyd iter %d: inertia/frame %.4f", n_iter, total / n)
        if prev - total <= tol * total and not empty.numel():
            break
        prev = total
    return CentroidModel(centers.cpu().numpy(), inertia_=math.nan, n_iter_=n_iter, history=history)


def _sample_rows(data: Sequence[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` rows drawn without replacement from the concatenation of `data`, float32 `[size, D]`."""
    lens = np.array([a.shape[0] for a in data])
    offsets = np.concatenate([[0], np.cumsum(lens)])
    idx = np.sort(rng.choice(offsets[-1], size=size, replace=False))
    which = np.searchsorted(offsets, idx, side="right") - 1
    return np.concatenate([np.asarray(data[s][idx[which == s] - offsets[s]], dtype=np.float32) for s in np.unique(which)])


def fit_kmeans(
    data: np.ndarray | Sequence[np.ndarray],
    n_clusters: int,
    seed: int = 0,
    init: str = "k-means++",
    n_init: int = 20,
    init_size: Optional[int] = None,
    warm_size: Optional[int] = None,
    warm_inits: int = 3,
    max_iter: int = 100,
    tol: float = DEFAULT_LLOYD_TOL,
    device: str | torch.device | None = "cpu",
    chunk_rows: Optional[int] = None,
    progress: bool = False,
) -> CentroidModel:
    """Fit k-means on `[N, D]` frames (one array or a list of shard arrays, e.g. mmaps).

    1. Seeding: `n_init` runs of `init` (`k-means++` or `random`: K distinct random frames) on a
       random sample of `init_size` frames (default `min(N, max(3072, 30 K))`).
    2. Warm start: the `warm_inits` seedings of lowest sample inertia are each refined by Lloyd on
       a random sample of `warm_size` frames (default `min(N, 256 K)`, at most ~1 GiB of float32);
       the best result is kept. (Lloyd's local minimum depends on the seeds much more than on
       the sample, so refining a few candidates cheaply pays off.)
    3. Lloyd on all frames until a pass improves the inertia by less than `tol` (relative); when
       the warm sample is all frames, step 2 already was this.
    Deterministic for a given seed and device.
    """
    arrays = [data] if isinstance(data, np.ndarray) else list(data)
    arrays = [a for a in arrays if a.shape[0] > 0]
    total = sum(a.shape[0] for a in arrays)
    if total < n_clusters:
        raise ValueError(f"{total} frames cannot make {n_clusters} clusters")
    dim = arrays[0].shape[1]
    dev = _device(device)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    size = min(total, init_size or max(3072, 30 * n_clusters))
    sample = torch.from_numpy(_sample_rows(arrays, size, rng)).to(dev)
    if init == "k-means++":
        seeds, pot = kmeans_plus_plus(sample, n_clusters, n_init, gen)
    elif init == "random":
        seeds = torch.stack([sample[torch.randperm(size, generator=gen)[:n_clusters].to(dev)] for _ in range(n_init)])
        pot = torch.stack([assign(sample, s)[1].double().sum() for s in seeds])
    else:
        raise ValueError(f"unknown init {init!r} (k-means++ or random)")
    candidates = pot.argsort()[: max(1, warm_inits)].tolist()
    logger.info("seeding: %d x %s on %d frames, best sample inertia/frame %.4f", n_init, init, size, float(pot.min()) / size)
    del sample
    warm = min(total, warm_size or min(256 * n_clusters, MAX_WARM_ELEMENTS // dim))
    warm_data = arrays if warm == total else [_sample_rows(arrays, warm, rng)]
    best: Optional[CentroidModel] = None
    for i in candidates:
        model = lloyd(warm_data, seeds[i], max_iter, tol, dev, chunk_rows, progress)
        if best is None or model.history[-1] < best.history[-1]:
            best = model
    assert best is not None
    logger.info("warm start: %d candidates on %d frames, best inertia/frame %.4f after %d passes", len(candidates), warm, best.history[-1], best.n_iter_)
    if warm < total:
        best = lloyd(arrays, torch.from_numpy(best.cluster_centers_), max_iter, tol, dev, chunk_rows, progress)
        logger.info("lloyd: %d passes on %d frames, inertia/frame %.4f", best.n_iter_, total, best.history[-1])
    best.inertia_ = best.history[-1] * total
    return best
