"""WER/CER with hand-computed values and sentencepiece detokenisation."""

import pytest

from avhubert.scoring import (
    ErrorCounts,
    char_errors,
    corpus_cer,
    corpus_wer,
    detokenize_sentencepiece,
    word_errors,
)


def test_word_errors_count_substitutions_insertions_deletions():
    assert word_errors("the cat sat", "the cat sat") == (0, 3)
    assert word_errors("the cat sat", "the bat sat") == (1, 3)  # substitution
    assert word_errors("the cat sat", "the cat sat down") == (1, 3)  # insertion
    assert word_errors("the cat sat", "cat sat") == (1, 3)  # deletion
    assert word_errors("a b c d", "") == (4, 4)
    assert word_errors("", "x y") == (2, 0)
    assert word_errors("  spaced   words ", "spaced words") == (0, 2)  # whitespace split


def test_corpus_wer_is_summed_errors_over_summed_reference_words():
    refs = ["the cat sat", "hello world", "a b c d e"]
    hyps = ["the bat sat", "hello", "a b c d e f g"]
    # errors 1 + 1 + 2 = 4 over 3 + 2 + 5 = 10 words (not the mean of per-utterance rates)
    assert corpus_wer(refs, hyps) == pytest.approx(40.0)
    assert corpus_wer(refs, refs) == 0.0


def test_cer_counts_characters_with_spaces():
    assert char_errors("ab cd", "ab cd") == (0, 5)
    assert char_errors("ab cd", "abcd") == (1, 5)
    assert char_errors("kitten", "sitting") == (3, 6)
    assert corpus_cer(["kitten", "ab"], ["sitting", "ab"]) == pytest.approx(100 * 3 / 8)


def test_error_counts_merge_equals_single_pass():
    refs = ["one two three", "four five", "six"]
    hyps = ["one too three", "four", "seven six"]
    whole = ErrorCounts()
    for r, h in zip(refs, hyps):
        whole.add(r, h)
    a, b = ErrorCounts(), ErrorCounts()
    a.add(refs[0], hyps[0])
    for r, h in zip(refs[1:], hyps[1:]):
        b.add(r, h)
    merged = a.merge(b)
    assert merged == whole
    assert (merged.word_errors, merged.ref_words, merged.utterances) == (3, 6, 3)
    assert merged.wer == pytest.approx(50.0)


def test_undefined_rates_and_mismatched_lists_raise():
    with pytest.raises(ValueError, match="no words"):
        ErrorCounts().wer
    with pytest.raises(ValueError, match="no characters"):
        ErrorCounts().cer
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_wer(["a", "b"], ["a"])


def test_detokenize_sentencepiece():
    assert detokenize_sentencepiece("\u2581hel lo \u2581wor ld") == "hello world"
    assert detokenize_sentencepiece("\u2581a \u2581b\u2581c ") == "a b c"
    assert detokenize_sentencepiece("") == ""
    assert detokenize_sentencepiece("\u2581") == ""


def test_detokenize_round_trips_real_sentencepiece_model(tmp_path):
    import sentencepiece as spm

    from tests.conftest import DATA

    model = DATA / "fixtures" / "spm_unigram100.model"  # the tiny s2s fixture's tokenizer (tests/data/README.md)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    text = "and the people were there"
    pieces = " ".join(sp.encode(text, out_type=str))
    assert detokenize_sentencepiece(pieces) == sp.decode(sp.encode(text)) == text
