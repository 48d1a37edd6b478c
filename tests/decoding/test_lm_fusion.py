"""Language-model shallow fusion: parity with fairseq's `SequenceGenerator(lm_model=, lm_weight=)`
on identical weights, `lm_weight=0` equals no LM, the task's `build_generator` takes the
original's `extra_gen_cls_kwargs`, joint CTC + LM, dictionary checks."""

from argparse import Namespace

import pytest
import torch

from avhubert.beam_search import BeamSearchConfig, beam_search
from avhubert.sequence_generator import FairseqLMScorer, Seq2SeqGenerator, check_lm_dictionary
from tests.decoding.helpers import EOS, PAD, UNK, eos_friendly_decoder, fairseq_generate, random_encoder_out

LENGTHS = [9, 4, 7, 8]
VOCAB, ENC_DIM = 11, 12


def target_dictionary(vocab: int = VOCAB):
    """The tiny seq2seq model's dictionary (helpers.fairseq_decoder_like): specials + w0..w6."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(vocab - len(d)):
        d.add_symbol(f"w{i}")
    return d


def tiny_lm(dictionary, seed: int = 0, scale: float = 6.0):
    """A randomly initialised fairseq `transformer_lm` (2 layers, 16-d), eval mode; its output
    projection is scaled so that its preferences are strong enough to change the search."""
    from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

    torch.manual_seed(seed)
    cfg = TransformerLanguageModelConfig(decoder_embed_dim=16, decoder_ffn_embed_dim=32, decoder_layers=2,
                                         decoder_attention_heads=2, dropout=0.0, tokens_per_sample=64,
                                         max_target_positions=64)
    task = Namespace(source_dictionary=dictionary, target_dictionary=dictionary)
    lm = TransformerLanguageModel.build_model(cfg, task)
    with torch.no_grad():
        lm.decoder.output_projection.weight.mul_(scale)
    return lm.eval()


def _ours(dec, enc, cfg, lm=None, **kw):
    return beam_search(dec, enc, eos=EOS, pad=PAD, unk=UNK, config=cfg, lm=None if lm is None else FairseqLMScorer(lm), **kw)


def _fairseq(dec, enc, cfg, max_len, lm=None, lm_weight=1.0, prefix_tokens=None):
    return fairseq_generate(dec, enc, VOCAB, ENC_DIM, cfg, max_len, prefix_tokens=prefix_tokens, lm_model=lm,
                            lm_weight=lm_weight)


def _assert_equal_to_fairseq(ours, ref):
    for hyps, ref_hyps in zip(ours, ref):
        assert [h.tokens.tolist() for h in hyps] == [r["tokens"].tolist() for r in ref_hyps]
        for h, r in zip(hyps, ref_hyps):
            assert h.score == pytest.approx(float(r["score"]), abs=1e-4)
            torch.testing.assert_close(h.positional_scores, r["positional_scores"], atol=1e-4, rtol=0)


CONFIGS = {
    "default": BeamSearchConfig(beam=4, max_len_a=0.0, max_len_b=6),
    "lenpen_minlen_unk_temp": BeamSearchConfig(beam=3, max_len_a=0.0, max_len_b=6, min_len=2, lenpen=0.5, unkpen=1.0,
                                               temperature=1.5),
    "greedy_unnormalized": BeamSearchConfig(beam=1, max_len_a=0.0, max_len_b=6, normalize_scores=False),
}


@pytest.mark.parametrize("lm_weight", [0.4, 1.5])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_fairseq_sequence_generator_with_lm(name, lm_weight):
    cfg = BeamSearchConfig(**{**CONFIGS[name].__dict__, "lm_weight": lm_weight})
    dec = eos_friendly_decoder(vocab=VOCAB, seed=3)
    enc = random_encoder_out(LENGTHS, seed=3)
    lm = tiny_lm(target_dictionary(), seed=5)
    fused = _ours(dec, enc, cfg, lm)
    _assert_equal_to_fairseq(fused, _fairseq(dec, enc, cfg, max_len=6, lm=lm, lm_weight=lm_weight))
    # the LM matters here: other scores, and with a strong LM other hypotheses
    plain = _ours(dec, enc, cfg)
    assert all(abs(a[0].score - b[0].score) > 1e-3 for a, b in zip(fused, plain))
    if lm_weight > 1:
        assert any([h.tokens.tolist() for h in a] != [h.tokens.tolist() for h in b] for a, b in zip(fused, plain))


def test_lm_with_prefix_tokens_matches_fairseq():
    cfg = BeamSearchConfig(beam=3, max_len_a=0.0, max_len_b=6, lm_weight=0.8)
    dec = eos_friendly_decoder(vocab=VOCAB, seed=4)
    enc = random_encoder_out(LENGTHS, seed=4)
    lm = tiny_lm(target_dictionary(), seed=6)
    prefix = torch.tensor([[7, 8], [9, PAD], [6, 6], [10, 7]])
    ours = _ours(dec, enc, cfg, lm, prefix_tokens=prefix)
    _assert_equal_to_fairseq(ours, _fairseq(dec, enc, cfg, max_len=6, lm=lm, lm_weight=0.8, prefix_tokens=prefix))


def test_lm_weight_zero_equals_no_lm():
    dec = eos_friendly_decoder(vocab=VOCAB, seed=1)
    enc = random_encoder_out(LENGTHS, seed=1)
    cfg = BeamSearchConfig(beam=4, max_len_a=1.0, max_len_b=0)
    plain = _ours(dec, enc, cfg)
    zero = _ours(dec, enc, BeamSearchConfig(**{**cfg.__dict__, "lm_weight": 0.0}), tiny_lm(target_dictionary(), seed=2))
    for a, b in zip(plain, zero):
        assert [h.tokens.tolist() for h in a] == [h.tokens.tolist() for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


def test_fused_scores_are_decoder_plus_weighted_lm_log_probs():
    """Rescoring each returned hypothesis by hand: positional score = log p_dec + w * log p_lm."""
    w = 0.7
    dec = eos_friendly_decoder(vocab=VOCAB, seed=2)
    enc = random_encoder_out(LENGTHS, seed=2)
    lm = tiny_lm(target_dictionary(), seed=3)
    hyps = _ours(dec, enc, BeamSearchConfig(beam=3, max_len_a=1.0, max_len_b=0, lm_weight=w), lm)
    with torch.no_grad():
        for i, n in enumerate(LENGTHS):
            one = {"encoder_out": enc["encoder_out"][:n, i : i + 1], "encoder_padding_mask": torch.zeros(1, n, dtype=torch.bool)}
            for h in hyps[i]:
                prev = torch.cat([torch.tensor([EOS]), h.tokens[:-1]])[None]
                d_lp = torch.log_softmax(dec(prev, one)[0].float(), -1)[0]
                l_lp = lm.get_normalized_probs(lm(prev), log_probs=True)[0]
                want = (d_lp + w * l_lp).gather(1, h.tokens[:, None])[:, 0]
                torch.testing.assert_close(h.positional_scores, want, atol=1e-4, rtol=0)
                assert h.score == pytest.approx(float(want.sum()) / len(h.tokens), abs=1e-4)


def test_joint_ctc_and_lm_add_up():
    """With CTC the LM term is added to the joint score: (1-c) att + c ctc + w lm."""
    dec = eos_friendly_decoder(vocab=VOCAB, seed=5)
    enc = random_encoder_out(LENGTHS, seed=5)
    g = torch.Generator().manual_seed(0)
    ctc = torch.log_softmax(torch.randn(len(LENGTHS), max(LENGTHS), VOCAB, generator=g) * 3, -1)
    lm = tiny_lm(target_dictionary(), seed=7)
    base = dict(beam=3, max_len_a=1.0, max_len_b=0, ctc_weight=0.3)
    joint = _ours(dec, enc, BeamSearchConfig(**base), ctc_log_probs=ctc)
    fused = _ours(dec, enc, BeamSearchConfig(**base, lm_weight=0.5), lm, ctc_log_probs=ctc)
    zero = _ours(dec, enc, BeamSearchConfig(**base, lm_weight=0.0), lm, ctc_log_probs=ctc)
    for a, b in zip(joint, zero):
        assert [h.tokens.tolist() for h in a] == [h.tokens.tolist() for h in b]
    assert any([h.tokens.tolist() for h in a] != [h.tokens.tolist() for h in b] for a, b in zip(joint, fused))
    # each fused positional score minus 0.5 x the LM's log-prob is the joint CTC/attention score
    for i, hyps in enumerate(fused):
        for h in hyps:
            prev = torch.cat([torch.tensor([EOS]), h.tokens[:-1]])[None]
            with torch.no_grad():
                l_lp = lm.get_normalized_probs(lm(prev), log_probs=True)[0].gather(1, h.tokens[:, None])[:, 0]
            no_lm = h.positional_scores - 0.5 * l_lp
            assert torch.isfinite(no_lm).all()


class _FixedEncoder(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, source, padding_mask=None):
        return dict(self.enc)

    @staticmethod
    def reorder_encoder_out(encoder_out, new_order):
        from avhubert.beam_search import reorder_encoder_out

        return reorder_encoder_out(encoder_out, new_order)


class _Seq2Seq(torch.nn.Module):
    def __init__(self, dec, enc):
        super().__init__()
        self.encoder, self.decoder = _FixedEncoder(enc), dec


def _task(tmp_path):
    from avhubert.task import AVHubertPretrainingConfig, AVHubertPretrainingTask

    target_dictionary().save(str(tmp_path / "dict.wrd.txt"))
    cfg = AVHubertPretrainingConfig(data=str(tmp_path), label_dir=str(tmp_path), labels=["wrd"], fine_tuning=True)
    return AVHubertPretrainingTask(cfg)


def test_build_generator_takes_the_originals_lm_kwargs(tmp_path):
    """The original's infer_s2s: build_generator(models, cfg.generation, extra_gen_cls_kwargs=
    {"lm_model": lm, "lm_weight": w}) (this raised TypeError in BeamSearchConfig before)."""
    from fairseq.dataclass.configs import GenerationConfig

    task = _task(tmp_path)
    dec = eos_friendly_decoder(vocab=VOCAB, seed=3)
    enc = random_encoder_out(LENGTHS, seed=3)
    model = _Seq2Seq(dec, enc)
    gen_cfg = GenerationConfig(beam=4, max_len_a=0.0, max_len_b=6)
    lm = tiny_lm(target_dictionary(), seed=5)
    sample = {"net_input": {"source": None, "padding_mask": None}}
    gen = task.build_generator([model], gen_cfg, extra_gen_cls_kwargs={"lm_model": lm, "lm_weight": 1.5})
    ours = gen.generate([model], sample)
    ref = _fairseq(dec, enc, BeamSearchConfig(beam=4, max_len_a=0.0, max_len_b=6), max_len=6, lm=lm, lm_weight=1.5)
    for hyps, ref_hyps in zip(ours, ref):
        assert [h["tokens"].tolist() for h in hyps] == [r["tokens"].tolist() for r in ref_hyps]
        assert [h["score"] for h in hyps] == pytest.approx([float(r["score"]) for r in ref_hyps], abs=1e-4)
    # the original passes lm_model=None with its lm_weight: plain beam search
    plain = task.build_generator([model], gen_cfg, extra_gen_cls_kwargs={"lm_model": None, "lm_weight": 0.0})
    want = _fairseq(dec, enc, BeamSearchConfig(beam=4, max_len_a=0.0, max_len_b=6), max_len=6)
    assert [[h["tokens"].tolist() for h in u] for u in plain.generate([model], sample)] == \
        [[r["tokens"].tolist() for r in u] for u in want]


def test_lm_with_another_dictionary_is_refused():
    other = target_dictionary(VOCAB + 1)
    with pytest.raises(ValueError, match=r"12 vs 11 symbols"):
        check_lm_dictionary(other, target_dictionary())
    swapped = target_dictionary()
    swapped.symbols[5], swapped.symbols[6] = swapped.symbols[6], swapped.symbols[5]
    with pytest.raises(ValueError, match="index 5: LM 'w2' vs target 'w1'"):
        Seq2SeqGenerator(target_dictionary(), BeamSearchConfig(), lm_model=tiny_lm(swapped))
    with pytest.raises(ValueError, match="lm_weight must be finite"):
        Seq2SeqGenerator(target_dictionary(), BeamSearchConfig(), lm_weight=float("nan"))


def test_ctc_models_refuse_an_lm(tmp_path):
    from avhubert.model_asr import AVHubertCtc

    task = _task(tmp_path)
    model = AVHubertCtc.__new__(AVHubertCtc)  # only its class matters for the generator choice
    with pytest.raises(ValueError, match="seq2seq models only"):
        task.build_generator([model], Namespace(beam=1), extra_gen_cls_kwargs={"lm_model": tiny_lm(target_dictionary())})
    assert task.build_generator([model], Namespace(beam=1), extra_gen_cls_kwargs={"lm_model": None, "lm_weight": 0})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fusion_on_cuda_equals_cpu():
    cfg = BeamSearchConfig(beam=4, max_len_a=1.0, max_len_b=0, lm_weight=0.6)
    dec = eos_friendly_decoder(vocab=VOCAB, seed=3)
    enc = random_encoder_out(LENGTHS, seed=3)
    lm = tiny_lm(target_dictionary(), seed=5)
    cpu = _ours(dec, enc, cfg, lm)
    cuda = _ours(dec.cuda(), {k: v.cuda() for k, v in enc.items()}, cfg, lm.cuda())
    for a, b in zip(cpu, cuda):
        assert [h.tokens.tolist() for h in a] == [h.tokens.tolist() for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_fusion_stays_on_the_accelerator_and_adds_no_host_sync():
    """Under the simulated accelerator (tests/device_guard.py): the LM's scores, its incremental
    state and its reordering never mix devices; the fused search's own code syncs exactly where
    the plain one does (the search's bookkeeping), and no more often."""
    from collections import Counter

    from tests.device_guard import DeviceGuard

    cfg = BeamSearchConfig(beam=3, max_len_a=1.0, max_len_b=0)
    runs = {}
    for name, with_lm in (("plain", False), ("fused", True)):
        dec = eos_friendly_decoder(vocab=VOCAB, seed=3)
        enc = random_encoder_out(LENGTHS, seed=3)
        lm = tiny_lm(target_dictionary(), seed=5) if with_lm else None
        # weight 0: the same hypotheses, so both searches take the same steps
        c = BeamSearchConfig(**{**cfg.__dict__, "lm_weight": 0.0})
        guard = DeviceGuard()
        guard.place(dec, enc, *([lm] if lm is not None else []))
        with guard:
            hyps = _ours(dec, enc, c, lm)
        assert not guard.violations, guard.violations
        runs[name] = (Counter(e.where for e in guard.syncs), hyps)
    # fairseq's own transformer_lm checks its input for pad (`tokens.eq(pad).any()`) each step:
    # its code, not the search's
    fused = Counter({w: n for w, n in runs["fused"][0].items() if "site-packages/fairseq/" not in w})
    assert fused == runs["plain"][0]
    assert all("beam_search.py" in where for where in fused)
    for a, b in zip(runs["plain"][1], runs["fused"][1]):
        assert [h.tokens.tolist() for h in a] == [h.tokens.tolist() for h in b]
