"""Beam search: batched == one-by-one, incremental == full recomputation, parity with fairseq's
SequenceGenerator, exhaustive search on a toy model, length limits, joint CTC/attention."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from avhubert.beam_search import BeamSearchConfig, _ban_repeated_ngrams, beam_search, reorder_encoder_out
from tests.decoding.helpers import (
    EOS,
    PAD,
    UNK,
    eos_friendly_decoder,
    fairseq_generate,
    random_encoder_out,
    slice_encoder_out,
)

LENGTHS = [9, 4, 7, 8]

CONFIGS = {
    "default": BeamSearchConfig(beam=4, max_len_a=1.0, max_len_b=0),
    "lenpen_minlen_unk": BeamSearchConfig(beam=3, max_len_a=0.5, max_len_b=3, min_len=2, lenpen=0.5, unkpen=1.0),
    "ngram_temp": BeamSearchConfig(beam=5, max_len_a=1.0, max_len_b=2, no_repeat_ngram_size=2, temperature=1.5,
                                   lenpen=2.0),
    "greedy_unnormalized": BeamSearchConfig(beam=1, max_len_a=1.0, max_len_b=0, normalize_scores=False),
}


def _search(dec, enc, cfg, **kwargs):
    return beam_search(dec, enc, eos=EOS, pad=PAD, unk=UNK, config=cfg, **kwargs)


def _assert_same(a, b, atol=1e-4):
    assert len(a) == len(b)
    for ha, hb in zip(a, b):
        assert ha.tokens.tolist() == hb.tokens.tolist()
        assert ha.score == pytest.approx(hb.score, abs=atol)
        torch.testing.assert_close(ha.positional_scores, hb.positional_scores, atol=atol, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_equals_one_by_one(name):
    cfg = CONFIGS[name]
    dec = eos_friendly_decoder(seed=1)
    enc = random_encoder_out(LENGTHS, seed=1)
    batched = _search(dec, enc, cfg)
    assert len(batched) == len(LENGTHS)
    for i, n in enumerate(LENGTHS):
        alone = _search(dec, slice_encoder_out(enc, i, n), cfg)[0]
        assert len(alone) == cfg.beam
        _assert_same(batched[i], alone)
        assert [h.score for h in alone] == sorted((h.score for h in alone), reverse=True)
        for h in alone:
            assert h.tokens[-1] == EOS and (h.tokens[:-1] != EOS).all() and (h.tokens != PAD).all()
            if cfg.normalize_scores:
                want = h.positional_scores.sum().item() / len(h.tokens) ** cfg.lenpen
            else:
                want = h.positional_scores.sum().item()
            assert h.score == pytest.approx(want, abs=1e-4)
            assert len(h.tokens) >= cfg.min_len + 1 or len(h.tokens) == int(cfg.max_len_a * n + cfg.max_len_b) + 1


class FullRecompute(torch.nn.Module):
    """Wraps a decoder so every step recomputes the whole prefix (no cache)."""

    def __init__(self, dec):
        super().__init__()
        self.dec = dec

    def forward(self, tokens, encoder_out, incremental_state):
        return self.dec(tokens, encoder_out)

    def reorder_incremental_state(self, incremental_state, new_order):
        return incremental_state

    def max_positions(self):
        return self.dec.max_positions()


@pytest.mark.parametrize("name", ["default", "ngram_temp"])
def test_incremental_equals_full_recomputation(name):
    dec = eos_friendly_decoder(seed=2)
    enc = random_encoder_out(LENGTHS, seed=2)
    incremental = _search(dec, enc, CONFIGS[name])
    full = _search(FullRecompute(dec), enc, CONFIGS[name])
    for a, b in zip(incremental, full):
        _assert_same(a, b)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_fairseq_sequence_generator(name):
    # fairseq limits every utterance to the same max_len (from the padded batch), so compare with
    # max_len_a = 0 where both searches use the same limit
    # fairseq 0.12's CPU n-gram blocker reads the last n-1 entries of its whole token buffer (pad),
    # so it never blocks anything; n-gram blocking is compared separately below
    base = CONFIGS[name]
    cfg = BeamSearchConfig(**{**base.__dict__, "max_len_a": 0.0, "max_len_b": 6, "no_repeat_ngram_size": 0})
    vocab, enc_dim = 11, 12
    dec = eos_friendly_decoder(vocab=vocab, seed=3)
    enc = random_encoder_out(LENGTHS, seed=3)
    ours = _search(dec, enc, cfg)
    ref = fairseq_generate(dec, enc, vocab, enc_dim, cfg, max_len=6)
    for hyps, ref_hyps in zip(ours, ref):
        assert [h.tokens.tolist() for h in hyps] == [r["tokens"].tolist() for r in ref_hyps]
        for h, r in zip(hyps, ref_hyps):
            assert h.score == pytest.approx(float(r["score"]), abs=1e-4)
            torch.testing.assert_close(h.positional_scores, r["positional_scores"], atol=1e-4, rtol=0)


def test_prefix_tokens_match_fairseq_and_start_every_hypothesis():
    cfg = BeamSearchConfig(beam=3, max_len_a=0.0, max_len_b=6)
    vocab, enc_dim = 11, 12
    dec = eos_friendly_decoder(vocab=vocab, seed=4)
    enc = random_encoder_out(LENGTHS, seed=4)
    free = _search(dec, enc, cfg)
    # per utterance a 2-token prefix the free search did not choose; pad = no constraint
    prefix = torch.tensor([[7, 8], [9, PAD], [6, 6], [10, 7]])
    ours = _search(dec, enc, cfg, prefix_tokens=prefix)
    ref = fairseq_generate(dec, enc, vocab, enc_dim, cfg, max_len=6, prefix_tokens=prefix)
    for i, (hyps, ref_hyps) in enumerate(zip(ours, ref)):
        want = [t for t in prefix[i].tolist() if t != PAD]
        assert all(h.tokens[: len(want)].tolist() == want for h in hyps)
        assert free[i][0].tokens[: len(want)].tolist() != want
        assert [h.tokens.tolist() for h in hyps] == [r["tokens"].tolist() for r in ref_hyps]
        for h, r in zip(hyps, ref_hyps):
            assert h.score == pytest.approx(float(r["score"]), abs=1e-4)
            torch.testing.assert_close(h.positional_scores, r["positional_scores"], atol=1e-4, rtol=0)


class MarkovToy(torch.nn.Module):
    """Decoder whose next-token logits depend only on the last token (a fixed table)."""

    def __init__(self, vocab, seed=0):
        super().__init__()
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))

    def forward(self, tokens, encoder_out, incremental_state):
        return self.table[tokens[:, -1:]], None

    def reorder_incremental_state(self, incremental_state, new_order):
        return incremental_state


def _exhaustive(table, max_len, min_len, lenpen, unkpen, vocab):
    lp = F.log_softmax(table, dim=-1)
    results = []
    body_tokens = [t for t in range(vocab) if t not in (PAD, EOS)]
    for length in range(min_len, max_len + 1):
        for body in itertools.product(body_tokens, repeat=length):
            prev, total = EOS, 0.0
            for tok in (*body, EOS):
                step_lp = lp[prev].clone()
                step_lp[UNK] -= unkpen
                total += float(step_lp[tok])
                prev = tok
            results.append(((*body, EOS), total / (length + 1) ** lenpen))
    return sorted(results, key=lambda r: r[1], reverse=True)


@pytest.mark.parametrize("lenpen,unkpen,min_len", [(1.0, 0.0, 1), (0.3, 2.0, 2), (1.7, -0.5, 0)])
def test_wide_beam_finds_every_hypothesis_with_exact_scores(lenpen, unkpen, min_len):
    vocab, max_len = 6, 3  # generable tokens 0, 3, 4, 5 -> at most 4 + 16 + 64 (+1) hypotheses
    toy = MarkovToy(vocab)
    exact = _exhaustive(toy.table, max_len, min_len, lenpen, unkpen, vocab)
    cfg = BeamSearchConfig(beam=len(exact), max_len_a=0.0, max_len_b=max_len, min_len=min_len, lenpen=lenpen,
                           unkpen=unkpen)
    enc = random_encoder_out([2])
    hyps = _search(toy, enc, cfg)[0]
    assert [tuple(h.tokens.tolist()) for h in hyps] == [tokens for tokens, _ in exact]
    for h, (_, score) in zip(hyps, exact):
        assert h.score == pytest.approx(score, abs=1e-5)


class NoEos(torch.nn.Module):
    """Wraps a decoder and makes eos (almost) impossible, so hypotheses run to the length limit."""

    def __init__(self, dec):
        super().__init__()
        self.dec = dec

    def forward(self, tokens, encoder_out, incremental_state):
        logits, extra = self.dec(tokens, encoder_out, incremental_state)
        logits = logits.clone()
        logits[..., EOS] = -1e4
        return logits, extra

    def reorder_incremental_state(self, incremental_state, new_order, reorder_encoder_cache=True):
        return self.dec.reorder_incremental_state(incremental_state, new_order, reorder_encoder_cache)

    def max_positions(self):
        return self.dec.max_positions()


def test_max_length_follows_each_utterances_encoder_time_steps():
    dec = NoEos(eos_friendly_decoder(seed=4))
    enc = random_encoder_out([6, 3, 5, 11], seed=4)
    cfg = BeamSearchConfig(beam=2, max_len_a=0.5, max_len_b=1)
    out = _search(dec, enc, cfg)
    # max_len = int(0.5 * T + 1) tokens before the forced eos: 4, 2, 3, 6
    assert [[len(h.tokens) for h in hyps] for hyps in out] == [[5, 5], [3, 3], [4, 4], [7, 7]]
    # explicit src_lengths override the padding mask; max_target_positions caps the length
    out = _search(dec, enc, BeamSearchConfig(beam=2, max_len_a=1.0, max_len_b=0, max_target_positions=6),
                  src_lengths=torch.tensor([2, 3, 20, 20]))
    assert [len(hyps[0].tokens) for hyps in out] == [3, 4, 6, 6]
    # the decoder's own limit is used when the config sets none (max_target_positions=64)
    out = _search(dec, slice_encoder_out(enc, 3, 11), BeamSearchConfig(beam=1, max_len_a=10.0, max_len_b=0))
    assert len(out[0][0].tokens) == 64


@pytest.mark.parametrize("n", [2, 3, 4])
def test_ngram_ban_matches_fairseq_reference_loop(n):
    from fairseq.ngram_repeat_block import NGramRepeatBlock

    g = torch.Generator().manual_seed(n)
    for step in range(0, 9):
        tokens = torch.randint(4, 8, (6, step + 1), generator=g)
        tokens[:, 0] = EOS
        ours = torch.zeros(6, 9)
        _ban_repeated_ngrams(tokens, ours, n)
        # fairseq's loop, given the generated prefix only (as its CUDA kernel sees it)
        ref = NGramRepeatBlock(n, use_extension=False)._no_repeat_ngram(tokens, torch.zeros(6, 9), 3, 2, step)
        assert torch.equal(ours, ref)


def test_no_repeat_ngram_blocking():
    tokens = torch.tensor([[2, 5, 6, 5, 6, 7, 5], [2, 4, 4, 4, 4, 4, 4]])
    lprobs = torch.zeros(2, 9)
    _ban_repeated_ngrams(tokens, lprobs, 2)
    # row 0 ends in 5: bigrams (5,6) seen twice -> 6 banned; row 1 ends in 4: (4,4) seen -> 4 banned
    assert (lprobs[0] == float("-inf")).nonzero().flatten().tolist() == [6]
    assert (lprobs[1] == float("-inf")).nonzero().flatten().tolist() == [4]
    lprobs = torch.zeros(2, 9)
    _ban_repeated_ngrams(tokens, lprobs, 3)  # row 0 ends (7, 5): never seen; row 1 (4, 4) -> 4
    assert torch.isinf(lprobs[0]).sum() == 0 and (lprobs[1] == float("-inf")).nonzero().flatten().tolist() == [4]
    dec = eos_friendly_decoder(seed=5, eos_boost=0.5)  # repetitive without blocking
    out = _search(dec, random_encoder_out([12]), BeamSearchConfig(beam=3, max_len_a=1.0, max_len_b=0,
                                                                   no_repeat_ngram_size=2))
    for h in out[0]:
        body = [2] + h.tokens.tolist()
        bigrams = list(zip(body, body[1:]))
        assert len(bigrams) == len(set(bigrams))


def _peaked_ctc(labels, t_max, vocab, blank=0, seed=0):
    """CTC log-probs whose best labelling is `labels` (one label per frame, blanks between)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t_max, vocab, generator=g)
    logits[:, EOS] = -1e4  # a CTC head never emits eos mass here
    frames = [blank] * t_max
    for i, lab in enumerate(labels):
        frames[2 * i + 1] = lab
    for t, s in enumerate(frames):
        logits[t, s] += 8.0
    return torch.log_softmax(logits, -1)


def test_ctc_weight_one_decodes_the_ctc_labelling():
    vocab = 11
    labels = [5, 7, 7, 4]
    t_max = 10
    ctc = _peaked_ctc(labels, t_max, vocab)[None]
    dec = eos_friendly_decoder(seed=6)
    cfg = BeamSearchConfig(beam=3, max_len_a=1.0, max_len_b=0, ctc_weight=1.0, normalize_scores=False)
    hyps = _search(dec, random_encoder_out([t_max], seed=6), cfg, ctc_log_probs=ctc, ctc_blank=0)[0]
    assert hyps[0].tokens.tolist() == labels + [EOS]
    loss = F.ctc_loss(ctc.transpose(0, 1), torch.tensor([labels]), torch.tensor([t_max]), torch.tensor([4]),
                      blank=0, reduction="sum")
    assert hyps[0].score == pytest.approx(-loss.item(), abs=1e-3)  # unnormalised joint score = log P_ctc


def test_joint_ctc_batched_equals_one_by_one_and_pre_beam():
    vocab = 11
    dec = eos_friendly_decoder(seed=7)
    enc = random_encoder_out(LENGTHS, seed=7)
    g = torch.Generator().manual_seed(7)
    ctc = torch.log_softmax(2 * torch.randn(len(LENGTHS), max(LENGTHS), vocab, generator=g), -1)
    cfg = BeamSearchConfig(beam=3, max_len_a=1.0, max_len_b=0, ctc_weight=0.3)
    batched = _search(dec, enc, cfg, ctc_log_probs=ctc)
    for i, n in enumerate(LENGTHS):
        alone = _search(dec, slice_encoder_out(enc, i, n), cfg, ctc_log_probs=ctc[i : i + 1, :n])
        _assert_same(batched[i], alone[0])
    full_pre_beam = _search(dec, enc, BeamSearchConfig(**{**cfg.__dict__, "ctc_pre_beam": vocab}), ctc_log_probs=ctc)
    for a, b in zip(batched, full_pre_beam):
        _assert_same(a, b, atol=1e-6)
    pruned = _search(dec, enc, BeamSearchConfig(**{**cfg.__dict__, "ctc_pre_beam": 4}), ctc_log_probs=ctc)
    assert all(len(h) == 3 and all(math.isfinite(x.score) for x in h) for h in pruned)
    plain = _search(dec, enc, BeamSearchConfig(**{**cfg.__dict__, "ctc_weight": 0.0}), ctc_log_probs=ctc)
    assert plain[0][0].tokens.tolist() == _search(dec, enc, CONFIGS["default"].__class__(
        beam=3, max_len_a=1.0, max_len_b=0))[0][0].tokens.tolist()
    assert [h.tokens.tolist() for h in batched[0]] != [h.tokens.tolist() for h in plain[0]]


def test_ctc_that_rules_out_every_ending_still_returns_a_hypothesis(caplog):
    # 2 CTC frames cannot produce 3 labels: with max_len 3 and eos impossible before, nothing ends
    vocab = 11
    ctc = torch.log_softmax(torch.randn(1, 2, vocab, generator=torch.Generator().manual_seed(8)), -1)
    ctc[..., EOS] = float("-inf")
    dec = NoEos(eos_friendly_decoder(seed=8))
    cfg = BeamSearchConfig(beam=2, max_len_a=0.0, max_len_b=3, min_len=3, ctc_weight=0.5)
    hyps = _search(dec, slice_encoder_out(random_encoder_out([2]), 0, 2), cfg, ctc_log_probs=ctc)[0]
    assert len(hyps) == 1 and hyps[0].score == float("-inf") and len(hyps[0].tokens) == 4
    assert "no hypothesis could end" in caplog.text


def test_bad_options_raise():
    dec = eos_friendly_decoder()
    enc = random_encoder_out([3])
    for bad, msg in [(dict(beam=0), "beam"), (dict(temperature=0.0), "temperature"),
                     (dict(no_repeat_ngram_size=1), "no_repeat_ngram_size"), (dict(ctc_weight=1.5), "ctc_weight")]:
        with pytest.raises(ValueError, match=msg):
            _search(dec, enc, BeamSearchConfig(**bad))
    with pytest.raises(ValueError, match="ctc_log_probs"):
        _search(dec, enc, BeamSearchConfig(ctc_weight=0.5))
    with pytest.raises(ValueError, match="CTC vocabulary"):
        _search(dec, enc, BeamSearchConfig(ctc_weight=0.5), ctc_log_probs=torch.zeros(1, 3, 7))
    empty = {"encoder_out": torch.zeros(3, 0, 12), "encoder_padding_mask": torch.zeros(0, 3, dtype=torch.bool)}
    assert _search(dec, empty, BeamSearchConfig()) == []


def test_reorder_encoder_out_handles_tensors_and_lists():
    enc = random_encoder_out([3, 2, 4])
    order = torch.tensor([2, 2, 0])
    out = reorder_encoder_out(enc, order)
    assert torch.equal(out["encoder_out"], enc["encoder_out"][:, order])
    assert torch.equal(out["encoder_padding_mask"], enc["encoder_padding_mask"][order])
    wrapped = {"encoder_out": [enc["encoder_out"]], "encoder_padding_mask": [],
               "padding_mask": [enc["encoder_padding_mask"]]}
    out = reorder_encoder_out(wrapped, order)
    assert out["encoder_padding_mask"] == [] and torch.equal(out["padding_mask"][0], enc["encoder_padding_mask"][order])


def test_generation_config_mapping():
    from fairseq.dataclass.configs import GenerationConfig

    gen = GenerationConfig()
    gen.beam, gen.lenpen, gen.max_len_a, gen.max_len_b, gen.unnormalized = 7, 0.5, 1.0, 0, True
    cfg = BeamSearchConfig.from_generation_cfg(gen, ctc_weight=0.2)
    assert (cfg.beam, cfg.lenpen, cfg.max_len_a, cfg.max_len_b, cfg.normalize_scores, cfg.ctc_weight) == (
        7, 0.5, 1.0, 0, False, 0.2)
    assert math.isclose(cfg.temperature, 1.0) and cfg.min_len == 1
