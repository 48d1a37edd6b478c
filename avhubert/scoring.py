"""Word and character error rates, and sentencepiece detokenisation, as the original's decoding.

Reference parity (`infer_s2s.py`, av_hubert@258fb50): WER is corpus-level — the word edit
distance (`editdistance` over whitespace-split words) summed over utterances, divided by the
total number of reference words, times 100. Texts are compared as given (no case or punctuation
normalisation; the labels are already lower-case). CER is the same over characters of the
text, spaces included. Counts are kept as integers so shards decoded by several processes merge
exactly (`ErrorCounts.merge`).
"""

from dataclasses import dataclass
from typing import Iterable, Sequence, Tuple

import editdistance

__all__ = [
    "SPM_SPACE",
    "detokenize_sentencepiece",
    "word_errors",
    "char_errors",
    "ErrorCounts",
    "corpus_wer",
    "corpus_cer",
]

SPM_SPACE = "\u2581"  # sentencepiece word-boundary marker "▁"


def detokenize_sentencepiece(pieces: str) -> str:
    """Space-separated sentencepiece pieces -> text: drop spaces, "▁" -> space, strip.

    Mirrors fairseq's `sentencepiece` post-processing used by the original's decoding.
    """
    return pieces.replace(" ", "").replace(SPM_SPACE, " ").strip()


def word_errors(ref: str, hyp: str) -> Tuple[int, int]:
    """(word edit distance, number of reference words)."""
    ref_words = ref.split()
    return int(editdistance.eval(ref_words, hyp.split())), len(ref_words)


def char_errors(ref: str, hyp: str) -> Tuple[int, int]:
    """(character edit distance, number of reference characters); spaces count as characters."""
    return int(editdistance.eval(ref, hyp)), len(ref)


@dataclass
class ErrorCounts:
    """Corpus-level error counts; `wer`/`cer` in percent."""

    word_errors: int = 0
    ref_words: int = 0
    char_errors: int = 0
    ref_chars: int = 0
    utterances: int = 0

    def add(self, ref: str, hyp: str) -> None:
        """Count one utterance."""
        we, rw = word_errors(ref, hyp)
        ce, rc = char_errors(ref, hyp)
        self.word_errors += we
        self.ref_words += rw
        self.char_errors += ce
        self.ref_chars += rc
        self.utterances += 1

    def merge(self, other: "ErrorCounts") -> "ErrorCounts":
        """Sum of two sets of counts (e.g. shards of one test set)."""
        return ErrorCounts(
            self.word_errors + other.word_errors,
            self.ref_words + other.ref_words,
            self.char_errors + other.char_errors,
            self.ref_chars + other.ref_chars,
            self.utterances + other.utterances,
        )

    @property
    def wer(self) -> float:
        """Word error rate in percent. Raises ValueError when there are no reference words."""
        if self.ref_words == 0:
            raise ValueError("WER is undefined: the references contain no words")
        return 100.0 * self.word_errors / self.ref_words

    @property
    def cer(self) -> float:
        """Character error rate in percent. Raises ValueError when there are no reference characters."""
        if self.ref_chars == 0:
            raise ValueError("CER is undefined: the references contain no characters")
        return 100.0 * self.char_errors / self.ref_chars


def _count(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    counts = ErrorCounts()
    for ref, hyp in zip(refs, hyps):
        counts.add(ref, hyp)
    return counts


def corpus_wer(refs: Iterable[str], hyps: Iterable[str]) -> float:
    """Corpus-level WER in percent (summed word edit distances / total reference words x 100)."""
    return _count(list(refs), list(hyps)).wer


def corpus_cer(refs: Iterable[str], hyps: Iterable[str]) -> float:
    """Corpus-level CER in percent (summed character edit distances / total reference characters x 100)."""
    return _count(list(refs), list(hyps)).cer
