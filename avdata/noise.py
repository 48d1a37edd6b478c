"""Additive noise at a target SNR (reference `AVHubertDataset.add_noise`, av_hubert@258fb50).

Same mixing math as the reference: `noise_num` random noise files (with replacement) truncated to
the shortest and averaged (floored), tiled from offset 0 to the speech length, scaled so the RMS
ratio gives the SNR, added, rescaled if the mix leaves the int16 range. Unlike the reference, all
randomness comes from an explicit `numpy.random.Generator`, so evaluation is reproducible.
"""

import ast
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np

__all__ = ["parse_snr", "mix_noise"]

INT16_MAX, INT16_MIN = np.iinfo(np.int16).max, np.iinfo(np.int16).min


def parse_snr(spec: Union[str, float, int]) -> Union[float, Tuple[int, int]]:
    """`'5'` -> 5.0; `'(-5, 5)'` -> (-5, 5) (integer SNR drawn uniformly, inclusive). No `eval`."""
    if isinstance(spec, (int, float)):
        return float(spec)
    try:
        value = ast.literal_eval(str(spec).strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"noise_snr must be a number or a (lo, hi) tuple, got {spec!r}") from None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        lo, hi = int(value[0]), int(value[1])
        if lo > hi:
            raise ValueError(f"noise_snr range {spec!r}: low > high")
        return lo, hi
    raise ValueError(f"noise_snr must be a number or a (lo, hi) tuple, got {spec!r}")


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def mix_noise(
    clean: np.ndarray,
    noise_paths: Sequence[str],
    read: Callable[[str], np.ndarray],
    snr: Union[float, Tuple[int, int]],
    noise_num: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mix noise into int16-scale `clean [N]`; returns int16 `[N]`."""
    if not noise_paths:
        raise ValueError("noise list is empty")
    picks: List[np.ndarray] = [read(noise_paths[int(i)]).astype(np.float64) for i in rng.integers(0, len(noise_paths), noise_num)]
    if len(picks) > 1:
        shortest = min(len(p) for p in picks)
        noise = np.floor(np.stack([p[:shortest] for p in picks]).mean(0))
    else:
        noise = picks[0]
    if len(noise) == 0:
        raise ValueError("noise wav is empty")
    reps = -(-len(clean) // len(noise))
    noise = np.tile(noise, reps)[: len(clean)]
    snr_db = float(rng.integers(snr[0], snr[1] + 1)) if isinstance(snr, tuple) else float(snr)
    clean_f = clean.astype(np.float64)
    noise_rms = _rms(noise)
    if noise_rms > 0:
        noise = noise * (_rms(clean_f) / 10 ** (snr_db / 20) / noise_rms)
    mixed = clean_f + noise
    if mixed.max() > INT16_MAX:
        mixed = mixed * (INT16_MAX / mixed.max())
    if mixed.min() < INT16_MIN:
        mixed = mixed * (INT16_MIN / mixed.min())
    return mixed.astype(np.int16)
