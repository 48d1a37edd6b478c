"""Opt-in int8 decoder (`avhubert.quantize`): which layers become int8, the beam-search fast path
runs int8 products (not float copies), the best hypotheses of a trained tiny model equal the float32 ones,
CPU-only refusals, and the `override.quantize_decoder` / `load(quantize_decoder=)` wiring."""

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.ao.nn.quantized.dynamic as nnqd
import torch.nn.functional as F
from omegaconf import OmegaConf

import avhubert.infer_s2s as infer_s2s
from avhubert.beam_search import BeamSearchConfig, beam_search
from avhubert.modules.decoder import _Int8StepLinear, _StepLinear
from avhubert.quantize import check_quantize_options, is_quantized, quantize_decoder, quantize_model_decoder
from tests.decoding.helpers import EOS, PAD, UNK, random_encoder_out, tiny_decoder

LENGTHS = [9, 4, 7, 8]
VOCAB = 13


def _trained_decoder(seed: int, steps: int = 150):
    """A tiny decoder that memorised one target per utterance (peaked next-token distributions)."""
    dec = tiny_decoder(vocab=VOCAB, dim=32, seed=seed).train()
    enc = random_encoder_out(LENGTHS, seed=seed)
    g = torch.Generator().manual_seed(seed)
    targets = torch.cat([torch.randint(4, VOCAB, (len(LENGTHS), 6), generator=g),
                         torch.full((len(LENGTHS), 1), EOS)], 1)
    prev = torch.cat([torch.full((len(LENGTHS), 1), EOS), targets[:, :-1]], 1)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for _ in range(steps):
        logits, _ = dec(prev, enc)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dec.eval(), enc, targets


def test_step_linear_layers_become_int8_and_the_rest_stays_float():
    dec = tiny_decoder(vocab=VOCAB, dim=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torch deprecation notices are silenced
        q = quantize_decoder(copy.deepcopy(dec))
    assert is_quantized(q) and not is_quantized(dec)
    for layer in q.layers:
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
                  layer.encoder_attn.q_proj, layer.encoder_attn.out_proj, layer.fc1, layer.fc2):
            assert isinstance(m, nnqd.Linear) and m.weight().qscheme() == torch.per_channel_affine
        # encoder keys/values: once per utterance, kept float32
        assert type(layer.encoder_attn.k_proj) is torch.nn.Linear and type(layer.encoder_attn.v_proj) is torch.nn.Linear
    assert q.embed_tokens.weight.dtype == torch.float32
    weights = q._step_weights()
    for w in weights.layers:
        assert all(isinstance(s, _Int8StepLinear) for s in (w.qkv, w.self_out, w.enc_q, w.enc_out, w.fc1, w.fc2))
    assert isinstance(weights.output, _StepLinear)  # output projection (shared embeddings) stays float
    with pytest.raises(ValueError, match="no float nn.Linear"):
        quantize_decoder(q)


def test_fast_path_runs_int8_products_and_equals_the_quantized_forward():
    dec = quantize_decoder(tiny_decoder(vocab=VOCAB, dim=32))
    enc = random_encoder_out(LENGTHS, seed=3)
    beam = 3
    rows = torch.arange(len(LENGTHS)).repeat_interleave(beam)
    repeated = {"encoder_out": enc["encoder_out"].index_select(1, rows),
                "encoder_padding_mask": enc["encoder_padding_mask"].index_select(0, rows)}
    prefix = torch.full((len(LENGTHS) * beam, 1), EOS)
    state = {}  # the forward path, one step at a time: inputs quantized over the same rows as beam_step's
    with torch.no_grad():
        cache = dec.init_beam_cache(enc, beam, max_steps=4)
        for step in range(3):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                logits = dec.beam_step(prefix, cache)
            ops = [e.name for e in prof.events()]
            # per layer: fused q/k/v, self out, encoder q, encoder out, fc1, fc2; no float products but the output
            assert ops.count("quantized::linear_dynamic") == 6 * len(dec.layers)
            assert "aten::addmm" not in ops and ops.count("aten::mm") == 1
            incremental, _ = dec(prefix, repeated, state)
            torch.testing.assert_close(logits, incremental[:, -1], atol=1e-4, rtol=1e-4)
            prefix = torch.cat([prefix, torch.full_like(prefix[:, :1], 4 + step)], 1)
            dec.reorder_beam_cache(cache, torch.arange(prefix.size(0)))


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_beam_search_finds_the_float32_hypotheses_of_a_trained_model(seed):
    dec, enc, targets = _trained_decoder(seed)
    cfg = BeamSearchConfig(beam=3, max_len_a=0, max_len_b=10)
    ref = beam_search(dec, enc, eos=EOS, pad=PAD, unk=UNK, config=cfg)
    assert [h[0].tokens.tolist() for h in ref] == targets.tolist()  # the float model learnt its targets
    out = beam_search(quantize_decoder(copy.deepcopy(dec)), enc, eos=EOS, pad=PAD, unk=UNK, config=cfg)
    for hyps, ref_hyps in zip(out, ref):  # the clear best choice; runners-up (scores ~ -1.5) may differ
        assert hyps[0].tokens.tolist() == ref_hyps[0].tokens.tolist()
        assert hyps[0].score == pytest.approx(ref_hyps[0].score, abs=1e-3)
        assert hyps[0].positional_scores.tolist() == pytest.approx(ref_hyps[0].positional_scores.tolist(), abs=1e-3)


def test_int8_is_refused_off_the_cpu_and_for_bad_choices():
    assert check_quantize_options(None, "cpu") is False and check_quantize_options("none", "cuda") is False
    assert check_quantize_options("int8", torch.device("cpu")) is True
    with pytest.raises(ValueError, match="CPU only.*cuda:0"):
        check_quantize_options("int8", "cuda:0")
    with pytest.raises(ValueError, match="one of none, int8"):
        check_quantize_options("int4", "cpu")
    with pytest.raises(ValueError, match="CPU only; the decoder is on meta"):
        quantize_decoder(tiny_decoder().to("meta"))
    with pytest.raises(ValueError, match="needs a float32 decoder"):
        quantize_decoder(tiny_decoder().half())
    with pytest.raises(ValueError, match="applies to seq2seq models"):
        quantize_model_decoder(SimpleNamespace(w2v_encoder=None), "int8", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_int8_refuses_a_decoder_on_cuda():
    with pytest.raises(ValueError, match="CPU only; the decoder is on cuda"):
        quantize_decoder(tiny_decoder().cuda())


class _Loaded(Exception):
    pass


def test_infer_s2s_override_quantizes_the_loaded_decoder(monkeypatch, tmp_path):
    model = SimpleNamespace(decoder=tiny_decoder())
    monkeypatch.setattr(infer_s2s, "load_finetuned", lambda path, device, fp16: (model, OmegaConf.create({}), None))

    def stop(task, cfg):  # the model is loaded (and quantized); the rest of decoding is not under test
        raise _Loaded

    monkeypatch.setattr(infer_s2s, "configure_task", stop)
    cfg = infer_s2s.prepare_config(OmegaConf.from_dotlist(["override.quantize_decoder=int8", "common.cpu=true"]))
    assert cfg.override.quantize_decoder == "int8"
    cfg.common_eval.results_path = str(tmp_path)
    with pytest.raises(_Loaded):
        infer_s2s.decode(cfg)
    assert is_quantized(model.decoder)
    cfg.override.quantize_decoder = "fp8"
    with pytest.raises(ValueError, match="one of none, int8"):
        infer_s2s.decode(cfg)
    assert OmegaConf.structured(infer_s2s.InferConfig).override.quantize_decoder == "none"


def test_load_checks_the_choice_before_reading_the_checkpoint(tmp_path):
    from avhubert.api import load

    with pytest.raises(ValueError, match="CPU only"):
        load(tmp_path / "missing.pt", device="cuda", quantize_decoder="int8")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt", device="cpu", quantize_decoder="int8")
