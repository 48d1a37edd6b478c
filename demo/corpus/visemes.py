"""Viseme table and per-frame articulation tracks from timed phonemes.

A mouth shape is 5 numbers in 0-1: `open` (jaw/lip opening), `spread` (lip corners pulled
back), `round` (lips rounded and protruded), `teeth` (upper teeth visible) and `tongue`
(tongue visible). Each espeak-ng phoneme (ASCII mnemonics, e.g. `i:`, `aI`, `T`) maps to a
target shape, diphthongs to a start and an end shape. Targets are placed at fixed points of the
phoneme's span, interpolated, smoothed (coarticulation) and averaged over each video frame's
exposure.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .tts import Phone

__all__ = ["SHAPE_FIELDS", "REST", "VISEMES", "phone_targets", "articulation_tracks", "couple_to_envelope"]

SHAPE_FIELDS = ("open", "spread", "round", "teeth", "tongue")
OPEN, SPREAD, ROUND, TEETH, TONGUE = range(5)
GRID_STEPS_PER_FRAME = 8  # 200 Hz articulation grid at 25 fps
MIN_PAUSE_SEC = 0.06  # pauses at least this long return the mouth to rest
ENVELOPE_FLOOR = 0.5  # share of the viseme opening kept at the quietest frames

Shape = Tuple[float, float, float, float, float]

REST: Shape = (0.02, 0.35, 0.1, 0.0, 0.0)
_CLOSED: Shape = (0.0, 0.35, 0.1, 0.0, 0.0)
_S = {  # named shapes (open, spread, round, teeth, tongue)
    "labiodental": (0.1, 0.45, 0.0, 1.0, 0.0),
    "dental": (0.22, 0.45, 0.0, 0.8, 1.0),
    "sibilant": (0.1, 0.65, 0.0, 0.9, 0.0),
    "alveolar": (0.2, 0.5, 0.05, 0.5, 0.3),
    "lateral": (0.3, 0.45, 0.0, 0.4, 0.7),
    "postalveolar": (0.18, 0.2, 0.7, 0.7, 0.0),
    "rhotic": (0.2, 0.25, 0.55, 0.2, 0.1),
    "labiovelar": (0.08, 0.0, 1.0, 0.0, 0.0),
    "palatal": (0.18, 0.75, 0.0, 0.6, 0.2),
    "velar": (0.3, 0.45, 0.05, 0.3, 0.1),
    "glottal": (0.4, 0.45, 0.05, 0.2, 0.0),
    "i": (0.3, 1.0, 0.0, 0.8, 0.1),
    "I": (0.4, 0.8, 0.0, 0.6, 0.1),
    "E": (0.55, 0.7, 0.0, 0.4, 0.1),
    "a": (0.85, 0.6, 0.0, 0.3, 0.1),
    "A": (1.0, 0.4, 0.1, 0.2, 0.05),
    "0": (0.8, 0.3, 0.45, 0.1, 0.05),
    "O": (0.7, 0.15, 0.75, 0.1, 0.0),
    "V": (0.65, 0.45, 0.1, 0.2, 0.05),
    "@": (0.4, 0.45, 0.1, 0.3, 0.05),
    "3": (0.4, 0.3, 0.45, 0.2, 0.05),
    "U": (0.35, 0.15, 0.7, 0.1, 0.0),
    "u": (0.2, 0.0, 1.0, 0.05, 0.0),
    "o": (0.55, 0.2, 0.7, 0.1, 0.0),
}

# espeak-ng English phoneme mnemonic -> one target or (start, end) targets
VISEMES: Dict[str, Tuple[Shape, ...]] = {
    **{p: (_CLOSED,) for p in ("p", "b", "m")},
    **{p: (_S["labiodental"],) for p in ("f", "v")},
    **{p: (_S["dental"],) for p in ("T", "D")},
    **{p: (_S["sibilant"],) for p in ("s", "z")},
    **{p: (_S["alveolar"],) for p in ("t", "d", "n", "t2", "d2", "t#", "d#", "n-")},
    **{p: (_S["lateral"],) for p in ("l", "l/", "@L")},
    **{p: (_S["postalveolar"],) for p in ("S", "Z", "tS", "dZ")},
    **{p: (_S["rhotic"],) for p in ("r", "r-", "R")},
    "w": (_S["labiovelar"],),
    "j": (_S["palatal"],),
    **{p: (_S["velar"],) for p in ("k", "g", "N", "x")},
    "h": (_S["glottal"],),
    **{p: (_S["i"],) for p in ("i:", "i", "i2")},
    **{p: (_S["I"],) for p in ("I", "I2", "I#", "y")},
    **{p: (_S["E"],) for p in ("E", "e", "E2")},
    **{p: (_S["a"],) for p in ("a", "a#", "&")},
    **{p: (_S["A"],) for p in ("A:", "A", "aa", "A#")},
    **{p: (_S["0"],) for p in ("0", "O2")},
    **{p: (_S["O"],) for p in ("O:", "O")},
    "V": (_S["V"],),
    **{p: (_S["@"],) for p in ("@", "@2", "@5", "3")},
    **{p: (_S["3"],) for p in ("3:", "VR", "IR", "@r")},
    "U": (_S["U"],),
    **{p: (_S["u"],) for p in ("u:", "u")},
    **{p: (_S["E"], _S["I"]) for p in ("eI",)},
    **{p: (_S["a"], _S["I"]) for p in ("aI", "aI2", "aI@", "aI3")},
    "OI": (_S["O"], _S["I"]),
    **{p: (_S["a"], _S["U"]) for p in ("aU", "aU@")},
    **{p: (_S["o"], _S["U"]) for p in ("oU", "o")},
    "i@": (_S["i"], _S["@"]),
    "i@3": (_S["i"], _S["3"]),
    "e@": (_S["E"], _S["@"]),
    "U@": (_S["U"], _S["@"]),
    "A@": (_S["A"], _S["3"]),
    **{p: (_S["O"], _S["3"]) for p in ("o@", "O@")},
}
_VOWEL_INITIALS = set("aeiouAEIOUV@03&y")
_CLOSURES = {"p", "b", "m"}


def phone_targets(name: str) -> Tuple[Shape, ...]:
    """Target shape(s) of an espeak phoneme; unknown names fall back by their stem/first char."""
    if name.startswith("_") or not name:
        return (REST,)
    if name in VISEMES:
        return VISEMES[name]
    stem = name.rstrip("0123456789#[-/;!")
    for candidate in (stem, stem.rstrip(":"), stem[:2], stem[:1]):
        if candidate in VISEMES:
            return VISEMES[candidate]
    return (_S["@"],) if name[0] in _VOWEL_INITIALS else (_S["alveolar"],)


def _keypoints(phones: Sequence[Phone], end_sec: float) -> Tuple[np.ndarray, np.ndarray]:
    times = [0.0]
    shapes = [REST]
    for ph in phones:
        dur = max(ph.end_sec - ph.start_sec, 0.0)
        if ph.name.startswith("_"):
            if dur >= MIN_PAUSE_SEC:
                times.append(ph.start_sec + 0.5 * dur)
                shapes.append(REST)
            continue
        targets = phone_targets(ph.name)
        if len(targets) == 2:
            fractions = (0.25, 0.8)
        elif ph.name in _CLOSURES:  # hold the closure: it is the most visible event
            fractions, targets = (0.25, 0.75), targets * 2
        else:
            fractions = (0.5,)
        for frac, shape in zip(fractions, targets):
            times.append(ph.start_sec + frac * dur)
            shapes.append(shape)
    times.append(max(end_sec, times[-1]))
    shapes.append(REST)
    order = np.argsort(np.asarray(times), kind="stable")
    return np.asarray(times)[order], np.asarray(shapes, dtype=np.float64)[order]


def articulation_tracks(
    phones: Sequence[Phone], num_frames: int, fps: float, smoothing_sec: float = 0.025
) -> np.ndarray:
    """Per-frame mouth shapes `[num_frames, 5]` (float32, fields `SHAPE_FIELDS`).

    Keypoints: rest at both ends and in pauses >= `MIN_PAUSE_SEC`; one target at the middle
    of each phoneme, two for diphthongs (25% / 80%) and for bilabial closures (held). Linear
    interpolation on a 200 Hz grid, Gaussian smoothing with std `smoothing_sec`, then the mean
    over each frame's 40 ms.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    grid_hz = fps * GRID_STEPS_PER_FRAME
    times, shapes = _keypoints(phones, num_frames / fps)
    grid = (np.arange(num_frames * GRID_STEPS_PER_FRAME) + 0.5) / grid_hz
    values = np.stack([np.interp(grid, times, shapes[:, c]) for c in range(shapes.shape[1])], axis=1)
    if smoothing_sec > 0:
        values = gaussian_filter1d(values, sigma=smoothing_sec * grid_hz, axis=0, mode="nearest")
    # [T * 8, 5] -> [T, 8, 5] -> mean over each frame's exposure
    return values.reshape(num_frames, GRID_STEPS_PER_FRAME, -1).mean(axis=1).astype(np.float32)


def couple_to_envelope(shapes: np.ndarray, envelope: np.ndarray, openness: float) -> np.ndarray:
    """Scale the opening by the speaker's `openness` and the audio envelope `[T]` in 0..1.

    `open *= openness * (ENVELOPE_FLOOR + (1 - ENVELOPE_FLOOR) * envelope)`: louder frames open
    the mouth wider, as in real speech. Returns a new `[T, 5]` array.
    """
    shapes = np.array(shapes, dtype=np.float32, copy=True)
    if envelope.shape != (shapes.shape[0],):
        raise ValueError(f"envelope must be [{shapes.shape[0]}], got {envelope.shape}")
    gain = openness * (ENVELOPE_FLOOR + (1.0 - ENVELOPE_FLOOR) * np.clip(envelope, 0.0, 1.0))
    shapes[:, OPEN] = np.clip(shapes[:, OPEN] * gain, 0.0, 1.0)
    return shapes
