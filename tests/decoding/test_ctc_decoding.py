"""CTC greedy decoding, prefix beam search and prefix scoring against hand-built matrices and
brute-force enumeration of all alignments."""

import itertools
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from avhubert.modules.ctc import (
    CTCPrefixScorer,
    ctc_greedy_decode,
    ctc_prefix_beam_search,
    ctc_prefix_beam_search_batch,
)

BLANK = 0


def _collapse(path):
    out, prev = [], None
    for s in path:
        if s != prev and s != BLANK:
            out.append(s)
        prev = s
    return tuple(out)


def brute_force(log_probs: torch.Tensor) -> dict:
    """Exact P(labelling) for every labelling, by enumerating all V**T alignments (float64)."""
    probs = log_probs.double().exp()
    t_max, vocab = probs.shape
    dist = defaultdict(float)
    for path in itertools.product(range(vocab), repeat=t_max):
        p = 1.0
        for t, s in enumerate(path):
            p *= float(probs[t, s])
        dist[_collapse(path)] += p
    return dist


def _random_log_probs(t_max, vocab, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(t_max, vocab, generator=g), dim=-1)


def test_greedy_collapses_repeats_and_removes_blanks():
    # argmax per frame: a a _ a b b _ (a=1, b=2) -> "a a b"; the second utterance stops after 3 frames
    frames = [1, 1, 0, 1, 2, 2, 0]
    lp = torch.log(torch.full((2, 7, 3), 0.1))
    for t, s in enumerate(frames):
        lp[:, t, s] = math.log(0.8)
    assert ctc_greedy_decode(lp, BLANK) == [[1, 1, 2], [1, 1, 2]]
    assert ctc_greedy_decode(lp, BLANK, lengths=torch.tensor([7, 3])) == [[1, 1, 2], [1]]
    assert ctc_greedy_decode(lp, blank=2) == [[1, 0, 1, 0], [1, 0, 1, 0]]  # other blank index
    with pytest.raises(ValueError, match="lengths"):
        ctc_greedy_decode(lp, BLANK, lengths=torch.tensor([8, 3]))


def test_prefix_beam_search_beats_greedy_on_classic_example():
    # two frames, P(blank) = 0.6, P(a) = 0.4: best path is blank-blank (0.36), but "a" has 0.64
    lp = torch.log(torch.tensor([[0.6, 0.4], [0.6, 0.4]]))
    assert ctc_greedy_decode(lp[None], BLANK) == [[]]
    result = ctc_prefix_beam_search(lp, beam=2, blank=BLANK)
    assert [tokens for tokens, _ in result] == [[1], []]
    assert result[0][1] == pytest.approx(math.log(0.64), abs=1e-6)
    assert result[1][1] == pytest.approx(math.log(0.36), abs=1e-6)


def test_repeated_label_needs_a_blank():
    # "a a" needs a blank between the a's: with frames a, _, a it has probability 0.9**3
    lp = torch.log(torch.tensor([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]))
    best_tokens, best_score = ctc_prefix_beam_search(lp, beam=4, blank=BLANK)[0]
    assert best_tokens == [1, 1]
    exact = brute_force(lp)[(1, 1)]
    assert best_score == pytest.approx(math.log(exact), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_beam_search_with_wide_beam_is_exact(seed):
    lp = _random_log_probs(4, 4, seed)
    exact = brute_force(lp)
    result = ctc_prefix_beam_search(lp, beam=200, blank=BLANK)
    assert len(result) == len(exact)
    for tokens, score in result:
        assert score == pytest.approx(math.log(exact[tuple(tokens)]), abs=1e-5)
    best = max(exact, key=exact.get)
    assert tuple(result[0][0]) == best
    # a narrow beam prunes paths: it still finds the best labelling here, with a lower-bound score
    narrow = ctc_prefix_beam_search(lp, beam=3, blank=BLANK)
    assert len(narrow) == 3 and tuple(narrow[0][0]) == best
    for tokens, score in narrow:
        assert score <= math.log(exact[tuple(tokens)]) + 1e-6


def test_scores_equal_ctc_loss():
    # 6 frames, 2 labels: at most 127 labellings, so beam 200 keeps every prefix and is exact
    lp = _random_log_probs(6, 3, seed=3, scale=3.0)
    result = ctc_prefix_beam_search(lp, beam=200, blank=BLANK)
    assert sum(math.exp(score) for _, score in result) == pytest.approx(1.0, abs=1e-5)
    for tokens, score in result[:20]:
        if not tokens:
            continue
        loss = F.ctc_loss(lp[:, None], torch.tensor([tokens]), torch.tensor([6]), torch.tensor([len(tokens)]),
                          blank=BLANK, reduction="sum")
        assert score == pytest.approx(-loss.item(), abs=1e-4)


def test_batch_with_lengths_and_token_pruning():
    lp = torch.stack([_random_log_probs(8, 5, seed=4), _random_log_probs(8, 5, seed=5)])
    lengths = torch.tensor([8, 5])
    batched = ctc_prefix_beam_search_batch(lp, beam=4, blank=BLANK, lengths=lengths)
    assert batched[0] == ctc_prefix_beam_search(lp[0], 4, BLANK)
    assert batched[1] == ctc_prefix_beam_search(lp[1, :5], 4, BLANK)
    assert ctc_prefix_beam_search(lp[0], 4, BLANK, token_prune=5) == batched[0]
    pruned = ctc_prefix_beam_search(lp[0], 4, BLANK, token_prune=1)  # only the argmax token per frame
    assert pruned[0][0] == ctc_greedy_decode(lp[:1], BLANK)[0]


def _prefix_probability(exact: dict, prefix: tuple) -> float:
    return sum(p for labels, p in exact.items() if labels[: len(prefix)] == prefix)


def test_prefix_scorer_matches_brute_force_and_ignores_padding():
    eos, vocab, t_max = 4, 5, 4  # token 4 plays eos; the CTC head gives it no mass
    logits = 2.0 * torch.randn(t_max, vocab, generator=torch.Generator().manual_seed(6))
    logits[:, eos] = -1e9
    lp = torch.log_softmax(logits, -1)
    exact = brute_force(lp[:, :eos])  # eos never emitted
    # utterance 1 is utterance 0 followed by 3 garbage frames (masked by its length)
    padded = torch.cat([lp, torch.log_softmax(torch.randn(3, vocab), -1)])
    batch = torch.stack([torch.cat([lp, lp[:3]]), padded])
    scorer = CTCPrefixScorer(batch, torch.tensor([t_max, t_max]), blank=BLANK, eos=eos)
    utt = torch.tensor([0, 1])
    state = scorer.initial_state(utt)
    cand = torch.arange(vocab).expand(2, vocab)
    path = ()
    for chosen in [1, 2, 2, 3]:
        psi, r = scorer.score(state, utt, cand)
        assert torch.equal(psi[0], psi[1])  # padding changes nothing, bit for bit
        assert psi[0, BLANK] == float("-inf")
        for c in range(1, eos):
            want = _prefix_probability(exact, path + (c,))
            got = float(psi[0, c])
            if want == 0.0:
                assert got == float("-inf")
            else:
                assert got == pytest.approx(math.log(want), abs=1e-5)
        if path in exact:  # eos: the prefix is the whole labelling
            assert float(psi[0, eos]) == pytest.approx(math.log(exact[path]), abs=1e-5)
        both = torch.tensor([0, 1])
        state = CTCPrefixScorer.advance(r, psi, cand, both, torch.tensor([chosen, chosen]), state.length)
        path = path + (chosen,)
    assert state.length == 4 and state.last.tolist() == [3, 3]


def test_prefix_scorer_candidate_subset_equals_full_vocabulary():
    lp = torch.log_softmax(torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(7)), -1)
    scorer = CTCPrefixScorer(lp, torch.tensor([6, 4]), blank=BLANK, eos=2)
    utt = torch.tensor([0, 0, 1])
    state = scorer.initial_state(utt)
    full = torch.arange(7).expand(3, 7)
    psi, r = scorer.score(state, utt, full)
    state = CTCPrefixScorer.advance(r, psi, full, torch.arange(3), torch.tensor([3, 4, 3]), 0)
    psi_full, _ = scorer.score(state, utt, full)
    subset = torch.tensor([[5, 3, 2], [2, 6, 1], [4, 4, 0]])
    psi_sub, _ = scorer.score(state, utt, subset)
    assert torch.equal(psi_sub, psi_full.gather(1, subset))
    with pytest.raises(ValueError, match="at least one"):
        CTCPrefixScorer(lp, torch.tensor([6, 0]), blank=BLANK, eos=2)
