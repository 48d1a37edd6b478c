"""The decoder's beam-search fast path (`init_beam_cache` / `beam_step` / `reorder_beam_cache`):
equal to full recomputation under beam reordering and utterance removal, equal hypotheses to the
generic dict-cache path, at most one host sync per search step, step weights follow the module."""

from collections import Counter

import pytest
import torch

from avhubert.beam_search import BeamSearchConfig, beam_search
from tests.decoding.helpers import EOS, PAD, UNK, eos_friendly_decoder, random_encoder_out, tiny_decoder
from tests.device_guard import DeviceGuard

LENGTHS = [9, 4, 7, 8]


def _repeat(enc, rows):
    return {"encoder_out": enc["encoder_out"].index_select(1, rows),
            "encoder_padding_mask": enc["encoder_padding_mask"].index_select(0, rows)}


@pytest.mark.parametrize("normalize_before,learned_pos,share", [(True, False, True), (False, True, False)])
def test_beam_step_equals_full_recomputation_with_reorders_and_removals(normalize_before, learned_pos, share):
    vocab, beam, steps = 13, 3, 9
    dec = tiny_decoder(vocab=vocab, normalize_before=normalize_before, learned_pos=learned_pos,
                       share_input_output_embed=share)
    enc = random_encoder_out(LENGTHS, seed=4)
    g = torch.Generator().manual_seed(0)
    utts = torch.arange(len(LENGTHS))
    prefix = torch.full((len(LENGTHS) * beam, 1), EOS)
    with torch.no_grad():
        cache = dec.init_beam_cache(enc, beam, max_steps=2)  # capacity 2: the buffers must grow
        for step in range(steps):
            logits = dec.beam_step(prefix, cache)
            full, _ = dec(prefix, _repeat(enc, utts.repeat_interleave(beam)))
            torch.testing.assert_close(logits, full[:, -1], atol=1e-5, rtol=1e-5)
            n = utts.numel()
            # each new row continues a random row of its own utterance; at steps 3 and 6 one utterance leaves
            parents = torch.randint(0, beam, (n, beam), generator=g) + torch.arange(n)[:, None] * beam
            keep = None
            if step in (3, 6):
                keep = torch.tensor([u for u in range(n) if u != 1])
                parents, utts = parents[keep], utts[keep]
            rows = parents.reshape(-1)
            new_tok = torch.randint(4, vocab, (rows.numel(), 1), generator=g)
            prefix = torch.cat([prefix[rows], new_tok], 1)
            dec.reorder_beam_cache(cache, rows, keep)
    assert cache.steps == steps and utts.tolist() == [0, 3]


class DictCacheOnly(torch.nn.Module):
    """Hides the fast path: the search steps the decoder through its dict incremental state."""

    def __init__(self, dec):
        super().__init__()
        self.dec = dec

    def forward(self, tokens, encoder_out, incremental_state):
        return self.dec(tokens, encoder_out, incremental_state)

    def reorder_incremental_state(self, incremental_state, new_order, reorder_encoder_cache=True):
        return self.dec.reorder_incremental_state(incremental_state, new_order, reorder_encoder_cache)

    def max_positions(self):
        return self.dec.max_positions()


@pytest.mark.parametrize("cfg", [
    BeamSearchConfig(beam=4, max_len_a=1.0, max_len_b=0),
    BeamSearchConfig(beam=3, max_len_a=0.5, max_len_b=3, min_len=2, lenpen=0.5, unkpen=1.0, no_repeat_ngram_size=2),
])
def test_fast_path_equals_dict_cache_path(cfg):
    dec = eos_friendly_decoder(seed=5)
    enc = random_encoder_out(LENGTHS, seed=5)
    fast = beam_search(dec, enc, eos=EOS, pad=PAD, unk=UNK, config=cfg)
    generic = beam_search(DictCacheOnly(dec), enc, eos=EOS, pad=PAD, unk=UNK, config=cfg)
    lengths = set()
    for a, b in zip(fast, generic):
        assert [h.tokens.tolist() for h in a] == [h.tokens.tolist() for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        lengths.update(len(h.tokens) for h in a)
    assert len(lengths) > 2  # hypotheses end at different steps: utterances leave the batch


def test_search_waits_for_the_device_once_per_step_and_never_mixes_devices():
    cfg = BeamSearchConfig(beam=3, max_len_a=1.0, max_len_b=0, no_repeat_ngram_size=2, min_len=2)
    dec = eos_friendly_decoder(seed=6)
    enc = random_encoder_out(LENGTHS, seed=6)
    guard = DeviceGuard()
    guard.place(dec, enc)
    with guard:
        hyps = beam_search(dec, enc, eos=EOS, pad=PAD, unk=UNK, config=cfg)
    assert not guard.violations, guard.violations
    steps = max(len(h.tokens) for utt in hyps for h in utt)
    sites = Counter(e.where for e in guard.syncs)
    assert all("avhubert/beam_search.py" in where for where in sites), sites
    # one per step (finished counts), plus the lengths at the start and the hypotheses at the end
    per_step = [n for where, n in sites.items() if "in beam_search" in where]
    assert max(per_step) <= steps + 1 and sum(sites.values()) <= steps + 8, sites


def test_step_weights_follow_parameter_updates_and_training_mode():
    dec = tiny_decoder(vocab=11)
    enc = random_encoder_out([5, 3])
    prefix = torch.full((4, 1), EOS)
    with torch.no_grad():
        before = dec.beam_step(prefix, dec.init_beam_cache(enc, 2))
        dec.layers[0].fc2.weight.mul_(3.0)  # an in-place update (as an optimizer step)
        after = dec.beam_step(prefix, dec.init_beam_cache(enc, 2))
        full, _ = dec(prefix, _repeat(enc, torch.tensor([0, 0, 1, 1])))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, full[:, -1], atol=1e-5, rtol=1e-5)
    dec.train()
    assert "_step_cache" not in dec.__dict__
    with pytest.raises(ValueError, match="eval mode"):
        dec.init_beam_cache(enc, 2)
    with pytest.raises(ValueError, match="cache holds 0 steps"):
        dec.eval().beam_step(torch.full((4, 2), EOS), dec.init_beam_cache(enc, 2))
