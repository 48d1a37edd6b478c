"""Building blocks of the noise sets: chunking, babble mixing, seeded list splits.

Every random choice takes an explicit seed (the reference used the global, mostly unseeded
NumPy/`random` state), so noise sets are reproducible.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from avdata.constants import AUDIO_SAMPLE_RATE_HZ

__all__ = ["chunk_bounds", "babble", "split_items", "read_16k_mono", "repeat_to"]


def read_16k_mono(path: str | Path) -> np.ndarray:
    """int16 samples `[N]` of a 16 kHz mono wav; raises naming the file otherwise."""
    from preparation.media import read_wav_int16

    samples, rate = read_wav_int16(path)
    if rate != AUDIO_SAMPLE_RATE_HZ or samples.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {rate} Hz with shape {samples.shape}")
    return samples


def chunk_bounds(num_samples: int, chunk_samples: int, min_samples: int = 1) -> List[Tuple[int, int]]:
    """`[start, end)` of consecutive chunks; a last partial chunk is kept if >= `min_samples`."""
    bounds = [(s, min(s + chunk_samples, num_samples)) for s in range(0, num_samples, chunk_samples)]
    return [(s, e) for s, e in bounds if e - s >= min_samples]


def babble(signals: Sequence[np.ndarray]) -> np.ndarray:
    """Average of `signals` (int16 `[N_i]`), truncated to the shortest; int16 `[min N_i]`."""
    if not signals:
        raise ValueError("babble needs at least one signal")
    n = min(len(s) for s in signals)
    mix = np.mean(np.stack([s[:n].astype(np.float64) for s in signals]), axis=0)
    return np.clip(np.round(mix), -32768, 32767).astype(np.int16)


def split_items(items: Sequence[str], fractions: Sequence[float], seed: int, shuffle: bool = True) -> List[List[str]]:
    """Split `items` into consecutive parts with the given fractions (after a seeded shuffle).

    Part sizes are `floor(fraction * n)`, the last part takes the remainder."""
    items = list(items)
    if shuffle:
        random.Random(seed).shuffle(items)
    parts, start = [], 0
    for k, frac in enumerate(fractions):
        end = len(items) if k == len(fractions) - 1 else start + int(frac * len(items))
        parts.append(items[start:end])
        start = end
    return parts


def repeat_to(items: Sequence[str], count: int) -> List[str]:
    """`items` repeated (in order) and truncated to exactly `count` entries."""
    if not items:
        return []
    reps = -(-count // len(items))
    return (list(items) * reps)[:count]


def pick(rng: np.random.Generator, pool: Sequence[str], k: int) -> List[str]:
    """`k` distinct items of `pool` (all of them, in random order, when the pool is smaller)."""
    idx = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[i] for i in idx]


def group_sizes(groups: Dict[str, List[str]]) -> str:
    return ", ".join(f"{k}: {len(v)}" for k, v in groups.items())
