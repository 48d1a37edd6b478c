"""Small shared builders for the decoding tests (tiny random decoders and encoder outputs)."""

from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from avhubert.modules.decoder import TransformerDecoder

# fairseq Dictionary convention: bos=0, pad=1, eos=2, unk=3
BOS, PAD, EOS, UNK = 0, 1, 2, 3


def tiny_decoder(vocab: int = 11, dim: int = 16, enc_dim: int = 12, layers: int = 2, heads: int = 2,
                 seed: int = 0, **kwargs) -> TransformerDecoder:
    """Randomly initialised eval-mode decoder; output logits scaled up so beams are decisive."""
    torch.manual_seed(seed)
    opts = dict(embed_dim=dim, ffn_embed_dim=2 * dim, layers=layers, attention_heads=heads,
                encoder_embed_dim=enc_dim, normalize_before=True, share_input_output_embed=True,
                max_target_positions=64)
    opts.update(kwargs)
    dec = TransformerDecoder(vocab, PAD, **opts)
    with torch.no_grad():
        dec.embed_tokens.weight.mul_(4.0)
    return dec.eval()


def random_encoder_out(lengths: List[int], dim: int = 12, seed: int = 1) -> Dict[str, Tensor]:
    """`{"encoder_out": [T, B, C], "encoder_padding_mask": [B, T]}` with garbage in padded frames."""
    g = torch.Generator().manual_seed(seed)
    t_max = max(lengths)
    enc = torch.randn(t_max, len(lengths), dim, generator=g)
    mask = torch.arange(t_max)[None, :] >= torch.tensor(lengths)[:, None]
    enc = enc.masked_fill(mask.t()[:, :, None], 0.0) + mask.t()[:, :, None] * 123.0  # padding must not matter
    return {"encoder_out": enc, "encoder_padding_mask": mask}


def slice_encoder_out(enc: Dict[str, Tensor], i: int, length: int) -> Dict[str, Tensor]:
    """Utterance `i` alone, without padding."""
    return {"encoder_out": enc["encoder_out"][:length, i : i + 1].clone(),
            "encoder_padding_mask": torch.zeros(1, length, dtype=torch.bool)}


def random_tokens(bsz: int, length: int, vocab: int, seed: int = 2) -> Tuple[Tensor, Tensor]:
    """prev_output_tokens starting with eos, no pad/eos inside: `[B, U]`."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(4, vocab, (bsz, length - 1), generator=g)
    return torch.cat([torch.full((bsz, 1), EOS), body], dim=1), body


def fairseq_decoder_like(ours: TransformerDecoder, vocab: int, enc_dim: int):
    """fairseq `TransformerDecoderBase` with `ours`' architecture and weights (eval mode)."""
    from fairseq.data import Dictionary
    from fairseq.models.transformer import TransformerConfig, TransformerDecoderBase

    layer = ours.layers[0]
    cfg = TransformerConfig()
    cfg.decoder.embed_dim = cfg.decoder.output_dim = cfg.decoder.input_dim = ours.embed_tokens.weight.size(1)
    cfg.decoder.ffn_embed_dim = layer.fc1.out_features
    cfg.decoder.layers = len(ours.layers)
    cfg.decoder.attention_heads = layer.self_attn.num_heads
    cfg.decoder.normalize_before = layer.normalize_before
    cfg.decoder.learned_pos = not hasattr(ours.embed_positions, "_float_tensor")
    cfg.encoder.embed_dim = enc_dim
    cfg.share_decoder_input_output_embed = ours.share_input_output_embed
    cfg.no_scale_embedding = ours.embed_scale == 1.0
    cfg.max_target_positions = ours.max_target_positions
    cfg.dropout = cfg.attention_dropout = cfg.activation_dropout = 0.0
    dictionary = Dictionary()
    for i in range(vocab - len(dictionary)):
        dictionary.add_symbol(f"w{i}")
    assert len(dictionary) == vocab and dictionary.pad() == PAD and dictionary.eos() == EOS
    embed = torch.nn.Embedding(vocab, cfg.decoder.embed_dim, PAD)
    ref = TransformerDecoderBase(cfg, dictionary, embed)
    state = dict(ours.state_dict())
    state.pop("embed_positions._float_tensor", None)
    if ours.share_input_output_embed:
        state["output_projection.weight"] = state["embed_tokens.weight"]
    else:
        state["output_projection.weight"] = state.pop("embed_out")
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"version"}, (missing, unexpected)
    return ref.eval(), dictionary


def eos_friendly_decoder(vocab: int = 11, seed: int = 0, eos_boost: float = 1.5, **kwargs) -> TransformerDecoder:
    """Tiny decoder whose eos embedding row is scaled so hypotheses end at varied lengths."""
    dec = tiny_decoder(vocab=vocab, seed=seed, **kwargs)
    with torch.no_grad():
        dec.embed_tokens.weight[EOS].mul_(eos_boost)
    return dec


def fairseq_generate(dec: TransformerDecoder, enc: Dict[str, Tensor], vocab: int, enc_dim: int, cfg, max_len: int,
                     prefix_tokens: Tensor = None, **generator_kwargs) -> List[List[Dict[str, Tensor]]]:
    """fairseq's own `SequenceGenerator` over `dec`'s weights and a fixed encoder output (the parity reference).

    `max_len_a` is 0: fairseq limits every utterance to the same `max_len`. Extra keyword arguments
    (e.g. `lm_model`, `lm_weight`) go to the generator.
    """
    return fairseq_reference(dec, vocab, enc_dim, cfg, max_len, **generator_kwargs)(enc, prefix_tokens)


def fairseq_reference(dec: TransformerDecoder, vocab: int, enc_dim: int, cfg, max_len: int,
                      **generator_kwargs) -> Callable[..., List[List[Dict[str, Tensor]]]]:
    """Build once, call per batch: `generate(enc, prefix_tokens=None)` decodes a fixed encoder output
    with fairseq's `TransformerDecoder` (holding `dec`'s weights) and `SequenceGenerator`, the
    original AV-HuBERT's decoding path."""
    from fairseq.models import FairseqEncoder, FairseqEncoderDecoderModel
    from fairseq.sequence_generator import SequenceGenerator

    ref_dec, dictionary = fairseq_decoder_like(dec, vocab, enc_dim)

    class FixedEncoder(FairseqEncoder):
        def forward(self, src_tokens, src_lengths=None, enc=None, **unused):
            return {"encoder_out": [enc["encoder_out"]], "encoder_padding_mask": [enc["encoder_padding_mask"]]}

        def reorder_encoder_out(self, encoder_out, new_order):
            return {"encoder_out": [encoder_out["encoder_out"][0].index_select(1, new_order)],
                    "encoder_padding_mask": [encoder_out["encoder_padding_mask"][0].index_select(0, new_order)]}

    model = FairseqEncoderDecoderModel(FixedEncoder(dictionary), ref_dec).eval()
    gen = SequenceGenerator([model], dictionary, beam_size=cfg.beam, max_len_a=0, max_len_b=max_len,
                            min_len=cfg.min_len, normalize_scores=cfg.normalize_scores, len_penalty=cfg.lenpen,
                            unk_penalty=cfg.unkpen, temperature=cfg.temperature,
                            no_repeat_ngram_size=cfg.no_repeat_ngram_size, **generator_kwargs)

    def generate(enc: Dict[str, Tensor], prefix_tokens: Tensor = None) -> List[List[Dict[str, Tensor]]]:
        bsz, t_max = enc["encoder_padding_mask"].shape
        sample = {"net_input": {"src_tokens": torch.full((bsz, t_max), 5), "src_lengths": torch.full((bsz,), t_max),
                                "enc": enc}}
        with torch.no_grad():
            return gen.generate([model], sample, prefix_tokens=prefix_tokens)

    return generate
