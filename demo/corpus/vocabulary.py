"""The demo corpus vocabulary (digits and command words) and seeded transcript sampling."""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["VOCABULARY", "sample_transcript"]

VOCABULARY: Tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "go", "stop", "left", "right", "up", "down", "yes", "no", "on", "off",
    "open", "close", "start", "back", "next", "play", "wait", "move", "turn", "help",
)


def sample_transcript(rng: np.random.Generator, min_words: int = 1, max_words: int = 4) -> str:
    """A lower-case transcript of `min_words`..`max_words` words drawn uniformly (with repeats)."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    num_words = int(rng.integers(min_words, max_words + 1))
    return " ".join(VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), size=num_words))
