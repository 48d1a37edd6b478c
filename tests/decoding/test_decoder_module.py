"""TransformerDecoder: key/shape parity with the released checkpoints, numerical parity with
fairseq's TransformerDecoderBase, incremental == full recomputation, padding invariance."""

import json
from pathlib import Path

import pytest
import torch

from avhubert.modules.decoder import SinusoidalPositionalEmbedding, TransformerDecoder, build_decoder_from_cfg
from tests.conftest import KEYS, shared_fixture
from tests.fixed_init import assert_summary, fixed_tensor
from tests.decoding.helpers import PAD, fairseq_decoder_like, random_encoder_out, random_tokens, tiny_decoder

KEYS_BASE = KEYS / "keys_shapes_seq2seq_base_lrs3_433h.json"
KEYS_LARGE = KEYS / "keys_shapes_seq2seq_large_lrs3_433h.json"


def _decoder_keys(path: Path):
    data = json.loads(path.read_text())
    shapes = {k[len("decoder."):]: tuple(v) for k, v in data["state_dict"].items() if k.startswith("decoder.")}
    return data, shapes


@pytest.mark.parametrize("path", [KEYS_BASE, KEYS_LARGE], ids=["base", "large"])
def test_state_dict_keys_and_shapes_match_released_checkpoints(path):
    data, expected = _decoder_keys(path)
    cfg = type("Cfg", (), dict(data["model_cfg"]))
    vocab = expected["embed_tokens.weight"][0]
    enc_dim = expected["layers.0.encoder_attn.k_proj.weight"][1]
    torch.manual_seed(0)
    dec = build_decoder_from_cfg(cfg, vocab, PAD, enc_dim)
    got = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in dec.parameters()) == data["num_params_by_module"]["decoder"]


def test_sinusoidal_table_bit_identical_to_fairseq():
    from fairseq.modules import SinusoidalPositionalEmbedding as FsSinusoidal

    for dim, pad in [(768, 1), (17, 1), (16, 0)]:
        ours = SinusoidalPositionalEmbedding.get_embedding(300, dim, pad)
        ref = FsSinusoidal.get_embedding(300, dim, pad)
        assert torch.equal(ours, ref)
    ours_mod = SinusoidalPositionalEmbedding(8, PAD, init_size=4)  # grows on demand like fairseq
    ref_mod = FsSinusoidal(8, PAD, init_size=4)
    tokens = torch.tensor([[2, 5, 6, 7, 8, 9, 10], [2, 5, 6, 1, 1, 1, 1]])
    assert torch.equal(ours_mod(tokens), ref_mod(tokens))
    assert torch.equal(ours_mod(tokens, incremental=True), ref_mod(tokens, incremental_state={}))


@pytest.mark.parametrize("learned_pos,normalize_before,share",
                         [(False, True, True), (True, False, False), (False, False, True)])
def test_matches_fairseq_transformer_decoder(learned_pos, normalize_before, share):
    vocab, enc_dim = 13, 12
    ours = tiny_decoder(vocab, dim=16, enc_dim=enc_dim, layers=2, heads=4, learned_pos=learned_pos,
                        normalize_before=normalize_before, share_input_output_embed=share)
    ref, _ = fairseq_decoder_like(ours, vocab, enc_dim)
    enc = random_encoder_out([7, 5, 3], dim=enc_dim)
    fs_enc = {"encoder_out": [enc["encoder_out"]], "encoder_padding_mask": [enc["encoder_padding_mask"]]}
    tokens, _ = random_tokens(3, 6, vocab)
    with torch.no_grad():
        full, _ = ours(tokens, enc)
        full_ref, _ = ref(tokens, fs_enc)
        torch.testing.assert_close(full, full_ref, atol=1e-5, rtol=1e-5)
        state, ref_state = {}, {}
        for u in range(1, tokens.size(1) + 1):
            step, _ = ours(tokens[:, :u], enc, incremental_state=state)
            step_ref, _ = ref(tokens[:, :u], fs_enc, incremental_state=ref_state)
            torch.testing.assert_close(step, step_ref, atol=1e-5, rtol=1e-5)


def test_incremental_equals_full_with_reorder():
    dec = tiny_decoder(vocab=11)
    enc = random_encoder_out([6, 4, 5])
    tokens, _ = random_tokens(3, 7, 11)
    order = torch.tensor([2, 0, 1])
    with torch.no_grad():
        full, extra = dec(tokens, enc)
        assert full.shape == (3, 7, 11) and len(extra["inner_states"]) == 3
        state = {}
        steps = []
        for u in range(1, 5):
            out, _ = dec(tokens[:, :u], enc, incremental_state=state)
            steps.append(out)
        torch.testing.assert_close(torch.cat(steps, 1), full[:, :4], atol=1e-5, rtol=1e-5)
        # permute rows of the cache (and the inputs) and continue: equals the permuted full pass
        dec.reorder_incremental_state(state, order)
        enc_perm = {"encoder_out": enc["encoder_out"][:, order],
                    "encoder_padding_mask": enc["encoder_padding_mask"][order]}
        for u in range(5, 8):
            out, _ = dec(tokens[order, :u], enc_perm, incremental_state=state)
            torch.testing.assert_close(out[:, 0], full[order, u - 1], atol=1e-5, rtol=1e-5)


def test_incremental_cache_misuse_raises():
    dec = tiny_decoder()
    enc = random_encoder_out([4])
    tokens, _ = random_tokens(1, 3, 11)
    with pytest.raises(ValueError, match="cache holds 0 steps"):
        dec(tokens, enc, incremental_state={})


def test_encoder_padding_does_not_change_outputs():
    dec = tiny_decoder()
    lengths = [6, 3]
    enc = random_encoder_out(lengths)
    tokens, _ = random_tokens(2, 5, 11)
    with torch.no_grad():
        batched, _ = dec(tokens, enc)
        for i, n in enumerate(lengths):
            unpadded = {"encoder_out": enc["encoder_out"][:n, i : i + 1], "encoder_padding_mask": None}
            alone, _ = dec(tokens[i : i + 1], unpadded)
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_target_right_padding_does_not_change_earlier_positions():
    dec = tiny_decoder()
    enc = random_encoder_out([5])
    tokens, _ = random_tokens(1, 6, 11)
    padded = torch.cat([tokens[:, :4], torch.full((1, 2), PAD)], dim=1)
    with torch.no_grad():
        a, _ = dec(tokens, enc)
        b, _ = dec(padded, enc)
    torch.testing.assert_close(a[:, :4], b[:, :4])


def test_legacy_and_modern_state_dicts_load_strictly():
    dec = tiny_decoder()
    state = dec.state_dict()
    assert "embed_positions._float_tensor" in state and "embed_out" not in state
    modern = {k: v for k, v in state.items() if k != "embed_positions._float_tensor"}
    ancient = dict(state, **{"embed_positions.weights": torch.zeros(3, 16)})
    for sd in (state, modern, ancient):
        fresh = tiny_decoder(seed=5)
        fresh.load_state_dict(sd, strict=True)
        assert torch.equal(fresh.embed_tokens.weight, dec.embed_tokens.weight)


def test_init_and_options():
    torch.manual_seed(0)
    dec = TransformerDecoder(50, PAD, embed_dim=32, ffn_embed_dim=64, layers=1, attention_heads=4,
                             encoder_embed_dim=24, no_scale_embedding=False, share_input_output_embed=False)
    assert torch.count_nonzero(dec.embed_tokens.weight[PAD]) == 0
    assert dec.embed_scale == pytest.approx(32**0.5)
    assert dec.embed_out.shape == (50, 32)
    assert abs(dec.embed_tokens.weight.std().item() - 32**-0.5) < 0.02
    assert dec.layers[0].encoder_attn.k_proj.weight.shape == (32, 24)
    assert dec.layer_norm is None and dec.max_positions() == 2048
    with pytest.raises(ValueError, match="divisible"):
        TransformerDecoder(10, PAD, embed_dim=30, attention_heads=4, layers=1)
    tokens, _ = random_tokens(2, 3, 50)
    logits, _ = dec(tokens, random_encoder_out([4, 2], dim=24))
    probs = dec.get_normalized_probs((logits, None), log_probs=False)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))


def test_training_mode_dropout_and_backward():
    dec = tiny_decoder(dropout=0.3, attention_dropout=0.1, activation_dropout=0.1, layerdrop=0.5,
                       share_input_output_embed=False).train()
    tokens, _ = random_tokens(2, 4, 11)
    enc = random_encoder_out([3, 5])
    logits, _ = dec(tokens, enc)
    logits.logsumexp(-1).sum().backward()
    assert dec.embed_out.grad is not None and torch.isfinite(dec.embed_out.grad).all()
    assert dec.embed_tokens.weight.grad[PAD].abs().sum() == 0  # pad row of the input embedding is frozen
    dec.eval()
    with torch.no_grad():  # eval mode is deterministic (no dropout, no layerdrop)
        assert torch.equal(dec(tokens, enc)[0], dec(tokens, enc)[0])


# Logits of the decoder of `avhubert_tiny_s2s.pt` (the original's weights) for FIXED_TOKENS on a fixed encoder
# output (second utterance padded after 3 frames); recorded regression values, see tests/fixed_init.py.
FIXED_TOKENS = torch.tensor([[2, 10, 25, 40, 7, 99], [2, 5, 6, 7, 8, 9]])
EXPECTED_FIXTURE_LOGITS = {
    "mean": -0.002330822520404278, "std": 0.9464033776359209, "abs_sum": 892.7750542716822,
    "weighted": -18.886239201197654, "x[0]": 0.9229890704154968, "x[399]": 0.15269175171852112,
    "x[799]": 0.37782108783721924, "x[1199]": 0.37020668387413025,
}


def test_released_format_fixture_loads_strictly_and_gives_recorded_logits():
    ckpt = torch.load(shared_fixture("avhubert_tiny_s2s.pt"), map_location="cpu", weights_only=False)
    cfg = ckpt["cfg"]["model"]
    state = {k[len("decoder."):]: v.float() for k, v in ckpt["model"].items() if k.startswith("decoder.")}
    vocab = state["embed_tokens.weight"].size(0)
    enc_dim = state["layers.0.encoder_attn.k_proj.weight"].size(1)
    dec = build_decoder_from_cfg(cfg, vocab, PAD, enc_dim).eval()
    dec.load_state_dict(state, strict=True)
    enc = {"encoder_out": fixed_tensor((5, 2, enc_dim), 2.0),
           "encoder_padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2])}
    with torch.no_grad():
        logits, _ = dec(FIXED_TOKENS, enc)
    assert logits.shape == (2, 6, vocab) == (2, 6, 100)
    assert_summary(logits, EXPECTED_FIXTURE_LOGITS)
