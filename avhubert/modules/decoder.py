"""Pre-/post-LN Transformer decoder of the seq2seq fine-tuning model, with incremental decoding.

Mirrors the original's `avhubert/decoder.py::TransformerDecoder` (av_hubert@258fb50), which stacks
fairseq `TransformerDecoderLayer`s (fairseq afc77bd). Numerics equal fairseq's for the same weights
(tested against `fairseq.models.transformer.TransformerDecoderBase` in eval mode); attention uses
`torch.nn.functional.scaled_dot_product_attention`.

Attribute names reproduce the released checkpoints' `decoder.*` keys: `embed_tokens.weight`,
`embed_positions._float_tensor` (sinusoidal) or `embed_positions.weight` (learned),
`layers.{i}.{self_attn,encoder_attn}.{q,k,v,out}_proj.{weight,bias}`,
`layers.{i}.{self_attn,encoder_attn,final}_layer_norm.*`, `layers.{i}.fc{1,2}.*`, `layer_norm.*`
(pre-LN only) and `embed_out` (unshared output projection only).

Differences from the original, on purpose:
- Encoder-attention key/value sizes come from the explicit `encoder_embed_dim` argument (the
  original took them from a config field that recent fairseq defaults to 512; spec §11.4).
- The legacy `embed_positions._float_tensor` buffer `[1]` is kept as a persistent buffer (its value
  is never used), so state dicts have exactly the original's keys; a state dict without it (saved by
  fairseq >= 0.12) also loads strictly, and the older `embed_positions.weights` key is dropped.
- No attention weights are returned (`extra["attn"] == [None]`): SDPA does not expose them and
  nothing in training or decoding needs them.
"""

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.ao.nn.quantized.dynamic as nnqd
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BeamCache",
    "IncrementalState",
    "MultiheadAttention",
    "SinusoidalPositionalEmbedding",
    "LearnedPositionalEmbedding",
    "TransformerDecoderLayer",
    "TransformerDecoder",
    "unpack_encoder_out",
    "build_decoder_from_cfg",
]

# Opaque cache owned by the decoder: "<layer>.self.{k,v}" grow by one step per call;
# "<layer>.enc.{k,v}" and "enc_mask" are the projected encoder keys/values and padding mask.
IncrementalState = Dict[str, Tensor]
_ENCODER_CACHE_MARK = ".enc."
_ENCODER_MASK_KEY = "enc_mask"


def make_positions(tokens: Tensor, padding_idx: int) -> Tensor:
    """fairseq `utils.make_positions`: non-pad tokens numbered from `padding_idx + 1`, pads get
    `padding_idx`. `[B, U] -> [B, U]` long."""
    mask = tokens.ne(padding_idx).long()
    return torch.cumsum(mask, dim=1) * mask + padding_idx


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sin/cos positions, bit-identical to fairseq's `SinusoidalPositionalEmbedding`.

    Row `padding_idx` of the table is zero; position `p` of a non-pad token is `padding_idx + 1 + p`.
    The table grows on demand (fairseq behaviour), so `max_positions` is only advisory.
    """

    max_positions = int(1e5)

    def __init__(self, embedding_dim: int, padding_idx: int, init_size: int) -> None:
        super().__init__()
        self.embedding_dim, self.padding_idx = embedding_dim, padding_idx
        self.register_buffer("weights", self.get_embedding(init_size, embedding_dim, padding_idx), persistent=False)
        # Legacy fairseq buffer kept for key parity with the released checkpoints (value unused).
        self.register_buffer("_float_tensor", torch.zeros(1))

    @staticmethod
    def get_embedding(num_embeddings: int, embedding_dim: int, padding_idx: Optional[int]) -> Tensor:
        """tensor2tensor-style table `[num_embeddings, embedding_dim]` (sin half, then cos half)."""
        half_dim = embedding_dim // 2
        scale = math.log(10000) / (half_dim - 1)
        freqs = torch.exp(torch.arange(half_dim, dtype=torch.float) * -scale)
        angles = torch.arange(num_embeddings, dtype=torch.float).unsqueeze(1) * freqs.unsqueeze(0)
        table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).view(num_embeddings, -1)
        if embedding_dim % 2 == 1:
            table = torch.cat([table, torch.zeros(num_embeddings, 1)], dim=1)
        if padding_idx is not None:
            table[padding_idx, :] = 0
        return table

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        state_dict.pop(prefix + "weights", None)  # very old fairseq stored the table itself
        if prefix + "_float_tensor" not in state_dict:  # fairseq >= 0.12 no longer saves it
            state_dict[prefix + "_float_tensor"] = self._float_tensor.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, tokens: Tensor, incremental: bool = False) -> Tensor:
        """`tokens [B, U]` -> `[B, U, D]`, or `[B, 1, D]` for the last position when incremental."""
        bsz, seq_len = tokens.shape
        needed = self.padding_idx + 1 + seq_len
        if needed > self.weights.size(0):
            self.weights = self.get_embedding(needed, self.embedding_dim, self.padding_idx).to(self.weights)
        if incremental:
            return self.weights[self.padding_idx + seq_len].expand(bsz, 1, -1)
        positions = make_positions(tokens, self.padding_idx)
        return self.weights.index_select(0, positions.view(-1)).view(bsz, seq_len, -1).detach()


class LearnedPositionalEmbedding(nn.Embedding):
    """Learned positions (fairseq `PositionalEmbedding(learned=True)`): table of
    `max_positions + padding_idx + 1` rows, pad row zero, same position numbering as sinusoidal."""

    def __init__(self, max_positions: int, embedding_dim: int, padding_idx: int) -> None:
        super().__init__(max_positions + padding_idx + 1, embedding_dim, padding_idx)
        nn.init.normal_(self.weight, mean=0.0, std=embedding_dim**-0.5)
        nn.init.constant_(self.weight[padding_idx], 0.0)
        self.max_positions = max_positions

    def forward(self, tokens: Tensor, incremental: bool = False) -> Tensor:  # type: ignore[override]
        """`tokens [B, U]` -> `[B, U, D]`, or `[B, 1, D]` for the last position when incremental."""
        if incremental:
            positions = tokens.new_full((tokens.size(0), 1), self.padding_idx + tokens.size(1))
        else:
            positions = make_positions(tokens, self.padding_idx)
        return F.embedding(positions, self.weight, self.padding_idx)


class MultiheadAttention(nn.Module):
    """fairseq-named multi-head attention (`q_proj`, `k_proj`, `v_proj`, `out_proj`) on SDPA.

    fairseq scales `q` by `head_dim**-0.5` before `q @ k^T`; SDPA applies the same scale to the
    product, which is equal up to float rounding.
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(kdim, embed_dim)
        self.v_proj = nn.Linear(vdim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # fairseq MultiheadAttention.reset_parameters
        gain = 1 / math.sqrt(2) if kdim == vdim == embed_dim else 1.0
        for proj in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(proj.weight, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def _heads(self, x: Tensor) -> Tensor:
        # [B, L, D] -> [B, H, L, D/H]
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_dim).transpose(1, 2)

    def project_query(self, query: Tensor) -> Tensor:
        """`[B, Lq, D] -> [B, H, Lq, D/H]`."""
        return self._heads(self.q_proj(query))

    def project_key_value(self, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor]:
        """`[B, Lk, kdim], [B, Lk, vdim] -> ([B, H, Lk, D/H], [B, H, Lk, D/H])`."""
        return self._heads(self.k_proj(key)), self._heads(self.v_proj(value))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], is_causal: bool) -> Tensor:
        """Attention over projected heads. `key_padding_mask [B, Lk]` True = pad. -> `[B, Lq, D]`."""
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # SDPA: True = may attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )
        bsz, _, q_len, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(bsz, q_len, self.embed_dim))


class TransformerDecoderLayer(nn.Module):
    """fairseq `TransformerDecoderLayer`: causal self-attention, encoder attention, ReLU FFN;
    LayerNorm before (pre-LN) or after (post-LN) each block. Works on `[B, U, D]`."""

    def __init__(
        self,
        embed_dim: int,
        ffn_embed_dim: int,
        attention_heads: int,
        encoder_embed_dim: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        normalize_before: bool,
    ) -> None:
        super().__init__()
        self.normalize_before = normalize_before
        self.dropout, self.activation_dropout = dropout, activation_dropout
        self.self_attn = MultiheadAttention(embed_dim, attention_heads, embed_dim, embed_dim, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.encoder_attn = MultiheadAttention(
            embed_dim, attention_heads, encoder_embed_dim, encoder_embed_dim, attention_dropout
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_embed_dim)
        self.fc2 = nn.Linear(ffn_embed_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def _block(self, x: Tensor, norm: nn.LayerNorm, fn) -> Tensor:  # noqa: ANN001
        residual = x
        if self.normalize_before:
            x = norm(x)
        x = residual + F.dropout(fn(x), p=self.dropout, training=self.training)
        if not self.normalize_before:
            x = norm(x)
        return x

    def _self_attention(self, x: Tensor, cache: Optional[IncrementalState], prefix: str) -> Tensor:
        q = self.self_attn.project_query(x)
        k, v = self.self_attn.project_key_value(x, x)
        if cache is not None:
            if prefix + "k" in cache:
                k = torch.cat([cache[prefix + "k"], k], dim=2)
                v = torch.cat([cache[prefix + "v"], v], dim=2)
            cache[prefix + "k"], cache[prefix + "v"] = k, v
        # full recomputation: causal mask; incremental: the single query sees every cached step
        return self.self_attn.attend(q, k, v, None, is_causal=cache is None and x.size(1) > 1)

    def _encoder_attention(
        self, x: Tensor, enc: Tensor, enc_mask: Optional[Tensor], cache: Optional[IncrementalState], prefix: str
    ) -> Tensor:
        q = self.encoder_attn.project_query(x)
        if cache is not None and prefix + "k" in cache:
            k, v = cache[prefix + "k"], cache[prefix + "v"]
        else:
            k, v = self.encoder_attn.project_key_value(enc, enc)
            if cache is not None:
                cache[prefix + "k"], cache[prefix + "v"] = k, v
        return self.encoder_attn.attend(q, k, v, enc_mask, is_causal=False)

    def forward(
        self,
        x: Tensor,
        enc: Optional[Tensor],
        enc_mask: Optional[Tensor],
        cache: Optional[IncrementalState] = None,
        name: str = "0",
    ) -> Tensor:
        """`x [B, U, D]`, `enc [B, T, C]`, `enc_mask [B, T]` (True = pad) -> `[B, U, D]`.

        With `cache`, `x` holds only the newest step; keys/values are stored under `name`.
        """
        x = self._block(x, self.self_attn_layer_norm, lambda h: self._self_attention(h, cache, f"{name}.self."))
        x = self._block(
            x,
            self.encoder_attn_layer_norm,
            lambda h: self._encoder_attention(h, enc, enc_mask, cache, f"{name}{_ENCODER_CACHE_MARK}"),
        )
        return self._block(x, self.final_layer_norm, self._ffn)

    def _ffn(self, h: Tensor) -> Tensor:
        h = F.dropout(F.relu(self.fc1(h)), p=self.activation_dropout, training=self.training)
        return self.fc2(h)

    def beam_step(self, x: Tensor, weights: "_LayerStepWeights", cache: "BeamCache", index: int, self_mask: Tensor) -> Tensor:
        """One decoding step of layer `index` for `x [N, D]` (the newest position of every row),
        with the step weights and the beam cache (see `TransformerDecoder.beam_step`)."""
        dim = x.size(1)

        def self_attention(h: Tensor) -> Tensor:
            q, k, v = weights.qkv(h).split(dim, dim=1)
            return weights.self_out(cache.attend_self(index, q, k, v, self_mask))

        def encoder_attention(h: Tensor) -> Tensor:
            return weights.enc_out(cache.attend_encoder(index, weights.enc_q(h)))

        x = self._block(x, self.self_attn_layer_norm, self_attention)
        x = self._block(x, self.encoder_attn_layer_norm, encoder_attention)
        return self._block(x, self.final_layer_norm, lambda h: weights.fc2(F.relu(weights.fc1(h))))


def unpack_encoder_out(encoder_out: Optional[Mapping[str, Any]]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Return (`encoder_out [T, B, C]`, padding mask `[B, T]` True = pad, or None).

    Accepts the original's dict (tensors under `encoder_out` and `encoder_padding_mask` /
    `padding_mask`) and modern fairseq's (the same tensors wrapped in one-element lists).
    """
    if encoder_out is None:
        return None, None

    def first(value: Any) -> Optional[Tensor]:
        if isinstance(value, (list, tuple)):
            return value[0] if len(value) > 0 else None
        return value

    enc = first(encoder_out.get("encoder_out"))
    mask = first(encoder_out.get("encoder_padding_mask"))
    if mask is None:
        mask = first(encoder_out.get("padding_mask"))
    if enc is not None and mask is not None and mask.shape != (enc.size(1), enc.size(0)):
        raise ValueError(
            f"encoder padding mask {tuple(mask.shape)} does not match encoder_out {tuple(enc.shape)} [T, B, C]"
        )
    return enc, mask


class _StepLinear:
    """Linear layers applied together to one input, their weights concatenated and stored
    transposed (`[in, out]`, contiguous): one matrix product per step, and MKL's sgemm is faster
    on that layout than on `nn.Linear`'s `[out, in]` when only a few rows are multiplied."""

    __slots__ = ("weight", "bias")

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]]) -> None:
        self.weight = torch.cat([w.detach() for w in weights], dim=0).t().contiguous()
        has_bias = [b is not None for b in biases]
        if any(has_bias) and not all(has_bias):
            raise ValueError("_StepLinear: either every layer has a bias or none has")
        self.bias = torch.cat([b.detach() for b in biases if b is not None]) if all(has_bias) else None

    @classmethod
    def of(cls, *linears: nn.Linear) -> "_StepLinear":
        return cls([m.weight for m in linears], [m.bias for m in linears])

    def __call__(self, x: Tensor) -> Tensor:
        """`[N, in] -> [N, out]`."""
        return torch.mm(x, self.weight) if self.bias is None else torch.addmm(self.bias, x, self.weight)


class _Int8StepLinear:
    """Dynamically quantized linear layers (`torch.ao.nn.quantized.dynamic.Linear`, made by
    `avhubert.quantize.quantize_decoder`) applied together to one input: their int8 weights
    concatenated into one packed matrix, so one int8 product per step; the input is quantized
    on the fly, as the modules' own `forward` does (CPU only)."""

    __slots__ = ("packed", "reduce_range")

    def __init__(self, linears: Sequence[nnqd.Linear]) -> None:
        if len({m.version for m in linears}) != 1:
            raise ValueError("_Int8StepLinear: the quantized layers have different versions")
        self.reduce_range = linears[0].version is not None and linears[0].version >= 4  # as nnqd.Linear.forward
        if len(linears) == 1:
            self.packed = linears[0]._packed_params._packed_params
            return
        weights, biases = zip(*(m._weight_bias() for m in linears))
        scales, zero_points = [], []
        for w in weights:  # per-output-channel scales for every layer, so the rows can be stacked
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                scales.append(w.q_per_channel_scales().double())
                zero_points.append(w.q_per_channel_zero_points().long())
            else:
                scales.append(torch.full((w.size(0),), w.q_scale(), dtype=torch.double))
                zero_points.append(torch.full((w.size(0),), w.q_zero_point(), dtype=torch.long))
        has_bias = [b is not None for b in biases]
        if any(has_bias) and not all(has_bias):
            raise ValueError("_Int8StepLinear: either every layer has a bias or none has")
        with warnings.catch_warnings():  # torch 2.13 flags quantized tensor creation as deprecated
            warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions", category=UserWarning)
            # exact: every dequantized value is a multiple of its row's scale
            weight = torch.quantize_per_channel(torch.cat([w.dequantize() for w in weights]), torch.cat(scales),
                                                torch.cat(zero_points), 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(weight, torch.cat(biases) if all(has_bias) else None)

    def __call__(self, x: Tensor) -> Tensor:
        """`[N, in] -> [N, out]` (float32)."""
        return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=self.reduce_range)


_AnyStepLinear = Union[_StepLinear, _Int8StepLinear]


def _step_linear(*linears: nn.Module) -> _AnyStepLinear:
    """Step weights of `linears` (all `nn.Linear`, or all dynamically quantized int8)."""
    quantized = [isinstance(m, nnqd.Linear) for m in linears]
    if all(quantized):
        if any(m._packed_params.dtype != torch.qint8 for m in linears):
            raise TypeError("beam_step supports int8 dynamically quantized linear layers only")
        return _Int8StepLinear(linears)
    if any(quantized):
        names = [type(m).__name__ for m in linears]
        raise TypeError(f"beam_step cannot fuse quantized with float linear layers: {names}")
    return _StepLinear.of(*linears)


@dataclass
class _LayerStepWeights:
    """One decoder layer's weights for `TransformerDecoderLayer.beam_step`."""

    qkv: _AnyStepLinear  # self-attention q, k, v projections in one product
    self_out: _AnyStepLinear
    enc_q: _AnyStepLinear
    enc_out: _AnyStepLinear
    fc1: _AnyStepLinear
    fc2: _AnyStepLinear

    @classmethod
    def of(cls, layer: TransformerDecoderLayer) -> "_LayerStepWeights":
        sa, ea = layer.self_attn, layer.encoder_attn
        return cls(
            qkv=_step_linear(sa.q_proj, sa.k_proj, sa.v_proj),
            self_out=_step_linear(sa.out_proj),
            enc_q=_step_linear(ea.q_proj),
            enc_out=_step_linear(ea.out_proj),
            fc1=_step_linear(layer.fc1),
            fc2=_step_linear(layer.fc2),
        )


@dataclass
class BeamCache:
    """What `TransformerDecoder.beam_step` keeps between the steps of one beam search.

    Rows are utterance-major: row `u * beam + b` is beam `b` of utterance `u` (`n` utterances).
    Self-attention keys/values of step `t` are written in place at `[:, :, t]` of
    `[n, H, capacity, beam, D/H]` buffers, in the row's beam slot, and are never moved when the
    search reorders beams: `origin [n * beam, steps]` says, for each earlier step of a row's
    prefix, which beam slot of its utterance computed it, and attention masks the other slots.
    Encoder keys/values are projected once per utterance (`[n, H, T, D/H]`) and shared by its
    beams. Only `TransformerDecoder.reorder_beam_cache` with `keep` (finished utterances leave)
    copies tensors.
    """

    beam: int
    weights: "_StepWeights"  # the decoder's step weights when the search started
    enc_k: List[Tensor]  # per layer [n, H, T, D/H]
    enc_v: List[Tensor]
    enc_mask: Optional[Tensor]  # [n, 1, 1, T], True = attend; None: no padding mask given
    self_k: List[Tensor]  # per layer [n, H, capacity, beam, D/H]
    self_v: List[Tensor]
    origin: Tensor  # [n * beam, steps] long: beam slot holding each step of each row's prefix
    slots: Tensor  # [beam] long: 0 .. beam - 1
    steps: int = 0

    def _grow(self) -> None:
        """Double the self-attention buffers' capacity (steps already written are kept)."""
        for buffers in (self.self_k, self.self_v):
            for i, buf in enumerate(buffers):
                bigger = buf.new_empty(buf.size(0), buf.size(1), 2 * buf.size(2), *buf.shape[3:])
                bigger[:, :, : buf.size(2)] = buf
                buffers[i] = bigger

    def _begin_step(self) -> Tensor:
        """Extend `origin` by this step (every row computes it in its own slot) and return the
        self-attention mask `[n, 1, beam, (steps + 1) * beam]` (True = attend)."""
        n = self.origin.size(0) // self.beam
        if self.self_k and self.steps >= self.self_k[0].size(2):
            self._grow()
        own = self.slots.repeat(n)[:, None]
        self.origin = torch.cat([self.origin, own], dim=1)
        seen = self.origin.view(n, self.beam, self.steps + 1, 1) == self.slots
        return seen.view(n, 1, self.beam, (self.steps + 1) * self.beam)

    def attend_self(self, layer: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Store this step's `k, v [N, D]` of layer `layer` and attend with `q [N, D]` over each
        row's prefix -> `[N, D]`."""
        rows, dim = q.shape
        n, t = rows // self.beam, self.steps
        kb, vb = self.self_k[layer], self.self_v[layer]
        heads, head_dim = kb.size(1), kb.size(4)

        def per_slot(x: Tensor) -> Tensor:  # [N, D] -> [n, H, beam, D/H]
            return x.view(n, self.beam, heads, head_dim).transpose(1, 2)

        kb[:, :, t] = per_slot(k)
        vb[:, :, t] = per_slot(v)
        keys = kb[:, :, : t + 1].view(n, heads, (t + 1) * self.beam, head_dim)
        values = vb[:, :, : t + 1].view(n, heads, (t + 1) * self.beam, head_dim)
        out = F.scaled_dot_product_attention(per_slot(q), keys, values, attn_mask=mask)  # [n, H, beam, D/H]
        return out.transpose(1, 2).reshape(rows, dim)

    def attend_encoder(self, layer: int, q: Tensor) -> Tensor:
        """Encoder attention of layer `layer` for `q [N, D]` -> `[N, D]`."""
        rows, dim = q.shape
        k, v = self.enc_k[layer], self.enc_v[layer]
        n, heads, _, head_dim = k.shape
        qh = q.view(n, self.beam, heads, head_dim).transpose(1, 2)  # the beams of an utterance share its keys
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=self.enc_mask)
        return out.transpose(1, 2).reshape(rows, dim)


class TransformerDecoder(nn.Module):
    """Seq2seq decoder. Config fields of `AVHubertSeq2SeqConfig` map one-to-one onto the keyword
    arguments (`decoder_embed_dim` -> `embed_dim`, ...; see `build_decoder_from_cfg`).

    Args:
        num_embeddings: target dictionary size V.
        padding_idx: target dictionary pad index.
        encoder_embed_dim: size C of the encoder output (key/value size of encoder attention).
        embed_tokens: optional shared embedding `[V, embed_dim]`; built here otherwise.
    """

    def __init__(
        self,
        num_embeddings: int,
        padding_idx: int,
        *,
        embed_dim: int = 768,
        ffn_embed_dim: int = 3072,
        layers: int = 6,
        attention_heads: int = 4,
        encoder_embed_dim: int = 768,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        learned_pos: bool = False,
        no_token_positional_embeddings: bool = False,
        normalize_before: bool = False,
        share_input_output_embed: bool = False,
        no_scale_embedding: bool = True,
        max_target_positions: int = 2048,
        layerdrop: float = 0.0,
        embed_tokens: Optional[nn.Embedding] = None,
    ) -> None:
        super().__init__()
        if embed_tokens is None:
            embed_tokens = nn.Embedding(num_embeddings, embed_dim, padding_idx=padding_idx)
            nn.init.normal_(embed_tokens.weight, mean=0.0, std=embed_dim**-0.5)
            nn.init.constant_(embed_tokens.weight[padding_idx], 0.0)
        if tuple(embed_tokens.weight.shape) != (num_embeddings, embed_dim):
            shape = tuple(embed_tokens.weight.shape)
            raise ValueError(f"embed_tokens has shape {shape}, expected {(num_embeddings, embed_dim)}")
        self.padding_idx, self.max_target_positions = padding_idx, max_target_positions
        self.dropout, self.layerdrop = dropout, layerdrop
        self.share_input_output_embed = share_input_output_embed
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if no_scale_embedding else math.sqrt(embed_dim)
        self.embed_positions: Optional[nn.Module] = None
        if not no_token_positional_embeddings:
            if learned_pos:
                self.embed_positions = LearnedPositionalEmbedding(max_target_positions, embed_dim, padding_idx)
            else:
                self.embed_positions = SinusoidalPositionalEmbedding(
                    embed_dim, padding_idx, init_size=max_target_positions + padding_idx + 1
                )
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(
                embed_dim,
                ffn_embed_dim,
                attention_heads,
                encoder_embed_dim,
                dropout,
                attention_dropout,
                activation_dropout,
                normalize_before,
            )
            for _ in range(layers)
        )
        self.layer_norm = nn.LayerNorm(embed_dim) if normalize_before else None
        if not share_input_output_embed:
            self.embed_out = nn.Parameter(torch.empty(num_embeddings, embed_dim))
            nn.init.normal_(self.embed_out, mean=0.0, std=embed_dim**-0.5)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Mapping[str, Any]] = None,
        incremental_state: Optional[IncrementalState] = None,
        features_only: bool = False,
        **unused: Any,
    ) -> Tuple[Tensor, Dict[str, List[Optional[Tensor]]]]:
        """`prev_output_tokens [B, U]` -> (`logits [B, U, V]` (or `[B, 1, V]` when incremental),
        extra `{"attn": [None], "inner_states": [[U, B, D], ...]}`).

        With `incremental_state` (a dict, empty at the first step), pass the whole prefix each
        call: only its last token is computed, earlier steps come from the cache. After the first
        call the cached encoder keys/values/mask are used and `encoder_out` is not read again.
        """
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Mapping[str, Any]] = None,
        incremental_state: Optional[IncrementalState] = None,
        **unused: Any,
    ) -> Tuple[Tensor, Dict[str, List[Optional[Tensor]]]]:
        """Decoder features `[B, U, D]` (before the output projection) and `extra`."""
        incremental = incremental_state is not None
        enc, enc_mask = unpack_encoder_out(encoder_out)
        if incremental:
            self._check_cache(incremental_state, prev_output_tokens.size(1))
            if _ENCODER_MASK_KEY in incremental_state:
                enc_mask = incremental_state[_ENCODER_MASK_KEY]
            elif enc_mask is not None:
                incremental_state[_ENCODER_MASK_KEY] = enc_mask
        if enc is None and not (incremental and "0.enc.k" in incremental_state) and len(self.layers) > 0:
            raise ValueError("encoder_out['encoder_out'] is required (encoder attention)")
        enc_bt = enc.transpose(0, 1) if enc is not None else None  # [T, B, C] -> [B, T, C]

        x = self._embed(prev_output_tokens, incremental)
        inner_states: List[Optional[Tensor]] = [x.transpose(0, 1)]
        for idx, layer in enumerate(self.layers):
            if self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop:
                continue
            x = layer(x, enc_bt, enc_mask, incremental_state, name=str(idx))
            inner_states.append(x.transpose(0, 1))
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x, {"attn": [None], "inner_states": inner_states}

    def _embed(self, prev_output_tokens: Tensor, incremental: bool) -> Tensor:
        """Token plus position embeddings `[B, U, D]` (`[B, 1, D]`: the last position only)."""
        positions = None
        if self.embed_positions is not None:
            positions = self.embed_positions(prev_output_tokens, incremental=incremental)
        tokens = prev_output_tokens[:, -1:] if incremental else prev_output_tokens
        x = self.embed_scale * self.embed_tokens(tokens)
        if positions is not None:
            x = x + positions
        return F.dropout(x, p=self.dropout, training=self.training)

    def output_layer(self, features: Tensor) -> Tensor:
        """`[B, U, D] -> [B, U, V]` logits."""
        weight = self.embed_tokens.weight if self.share_input_output_embed else self.embed_out
        return F.linear(features, weight)

    @staticmethod
    def _check_cache(incremental_state: IncrementalState, num_tokens: int) -> None:
        cached = incremental_state["0.self.k"].size(2) if "0.self.k" in incremental_state else 0
        if cached != num_tokens - 1:
            raise ValueError(
                f"incremental decoding got {num_tokens} tokens but the cache holds {cached} steps; "
                "pass the whole prefix, one new token per call, starting from an empty state"
            )

    # ------------------------------------------------------------------ helpers
    def get_normalized_probs(self, net_output: Tuple[Tensor, Any], log_probs: bool, sample: Any = None) -> Tensor:
        """(log-)softmax over the vocabulary in float32 of `net_output[0]`."""
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def max_positions(self) -> int:
        """Longest target the decoder supports."""
        if self.embed_positions is None:
            return self.max_target_positions
        return min(self.max_target_positions, self.embed_positions.max_positions)

    def reorder_incremental_state(
        self, incremental_state: IncrementalState, new_order: Tensor, reorder_encoder_cache: bool = True
    ) -> IncrementalState:
        """Select rows `new_order [N']` of every cached tensor, in place (also returned).

        `reorder_encoder_cache=False` leaves the cached encoder keys/values/mask untouched; only
        valid when `new_order` keeps the row count and moves rows only between rows with the same
        encoder output (beams of one utterance) — it saves a large copy per beam-search step.
        """
        for key in list(incremental_state):
            is_encoder = _ENCODER_CACHE_MARK in key or key == _ENCODER_MASK_KEY
            if is_encoder and not reorder_encoder_cache:
                continue
            incremental_state[key] = incremental_state[key].index_select(0, new_order)
        return incremental_state


    # ------------------------------------------------------------------ beam search
    def init_beam_cache(self, encoder_out: Mapping[str, Any], beam: int, max_steps: Optional[int] = None) -> BeamCache:
        """Start a beam search over `encoder_out` (`[T, B, C]` plus padding mask, as `forward`)
        with `beam` rows per utterance: projects the encoder keys/values once per utterance.
        `max_steps` sizes the self-attention buffers (they grow when exceeded). Eval mode only."""
        if self.training:
            raise ValueError("beam_step runs in eval mode (dropout off); call decoder.eval() first")
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        enc, mask = unpack_encoder_out(encoder_out)
        if enc is None:
            raise ValueError("encoder_out['encoder_out'] is required (encoder attention)")
        n = enc.size(1)
        enc_bt = enc.transpose(0, 1)  # [B, T, C]
        weights = self._step_weights()
        enc_k, enc_v, self_k, self_v = [], [], [], []
        capacity = max(1, max_steps if max_steps is not None else 32)
        for layer in self.layers:
            k, v = layer.encoder_attn.project_key_value(enc_bt, enc_bt)  # [B, H, T, D/H]
            enc_k.append(k)
            enc_v.append(v)
            attn = layer.self_attn
            shape = (n, attn.num_heads, capacity, beam, attn.head_dim)
            self_k.append(k.new_empty(shape))
            self_v.append(k.new_empty(shape))
        enc_mask = None if mask is None else ~mask[:, None, None, :]
        return BeamCache(beam=beam, weights=weights, enc_k=enc_k, enc_v=enc_v, enc_mask=enc_mask, self_k=self_k, self_v=self_v,
                         origin=torch.zeros(n * beam, 0, dtype=torch.long, device=enc.device),
                         slots=torch.arange(beam, device=enc.device))

    def beam_step(self, prev_output_tokens: Tensor, cache: BeamCache) -> Tensor:
        """Next-token logits `[N, V]` for the prefixes `prev_output_tokens [N, U]` (N = utterances
        * beam, utterance-major; U = the cache's steps + 1): the same numbers as `forward` with an
        incremental state, without copying cached keys/values when beams are reordered
        (`reorder_beam_cache`)."""
        rows, length = prev_output_tokens.shape
        if length != cache.steps + 1:
            raise ValueError(
                f"beam_step got {length} tokens but the cache holds {cache.steps} steps; "
                "pass the whole prefix, one new token per call"
            )
        if rows != cache.origin.size(0):
            raise ValueError(f"beam_step got {rows} rows, the cache has {cache.origin.size(0)}")
        weights = cache.weights
        x = self._embed(prev_output_tokens, incremental=True)[:, 0]  # [N, D]
        mask = cache._begin_step()
        for index, (layer, w) in enumerate(zip(self.layers, weights.layers)):
            x = layer.beam_step(x, w, cache, index, mask)
        cache.steps += 1
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return weights.output(x)

    @staticmethod
    def reorder_beam_cache(cache: BeamCache, rows: Tensor, keep: Optional[Tensor] = None) -> None:
        """Continue row `rows[i]` as row `i` (in place). `keep [n']`, when utterances leave the
        search, lists the utterances that stay (in order); `rows` must then only name rows of kept
        utterances, `rows[u' * beam + b]` one of utterance `keep[u']`. Without `keep`, every row
        must stay within its utterance (as the beam search's reordering does)."""
        cache.origin = cache.origin.index_select(0, rows)
        if keep is None:
            return
        for tensors in (cache.enc_k, cache.enc_v, cache.self_k, cache.self_v):
            for i, t in enumerate(tensors):
                tensors[i] = t.index_select(0, keep)
        if cache.enc_mask is not None:
            cache.enc_mask = cache.enc_mask.index_select(0, keep)

    def _step_weights(self) -> "_StepWeights":
        """The `_StepLinear` copies of the weights, rebuilt when a parameter changed (in-place
        update, new device or dtype) and dropped by `train()`."""
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        cached = self.__dict__.get("_step_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            weight = self.embed_tokens.weight if self.share_input_output_embed else self.embed_out
            built = _StepWeights(layers=[_LayerStepWeights.of(layer) for layer in self.layers],
                                 output=_StepLinear([weight], [None]))
        self.__dict__["_step_cache"] = (key, built)
        return built

    def train(self, mode: bool = True) -> "TransformerDecoder":
        self.__dict__.pop("_step_cache", None)  # training changes the weights: free the copies
        return super().train(mode)

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k != "_step_cache"}  # copies are rebuilt on demand


@dataclass
class _StepWeights:
    layers: List[_LayerStepWeights]
    output: _StepLinear  # output projection


class _AttrView:
    """Attribute access to a plain mapping (configs stored in checkpoints are dicts)."""

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        self._mapping = mapping

    def __getattr__(self, name: str) -> Any:
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(f"decoder config has no field {name!r}") from None


def build_decoder_from_cfg(
    cfg: Any, num_embeddings: int, padding_idx: int, encoder_embed_dim: int, embed_tokens: Optional[nn.Embedding] = None
) -> TransformerDecoder:
    """Build from an `AVHubertSeq2SeqConfig` (dataclass, DictConfig or plain dict; spec §2.3 names)."""
    if isinstance(cfg, Mapping):
        cfg = _AttrView(cfg)
    return TransformerDecoder(
        num_embeddings,
        padding_idx,
        embed_dim=cfg.decoder_embed_dim,
        ffn_embed_dim=cfg.decoder_ffn_embed_dim,
        layers=cfg.decoder_layers,
        attention_heads=cfg.decoder_attention_heads,
        encoder_embed_dim=encoder_embed_dim,
        dropout=cfg.decoder_dropout,
        attention_dropout=cfg.decoder_attention_dropout,
        activation_dropout=cfg.decoder_activation_dropout,
        learned_pos=cfg.decoder_learned_pos,
        no_token_positional_embeddings=cfg.no_token_positional_embeddings,
        normalize_before=cfg.decoder_normalize_before,
        share_input_output_embed=cfg.share_decoder_input_output_embed,
        no_scale_embedding=cfg.no_scale_embedding,
        max_target_positions=cfg.max_target_positions,
        layerdrop=cfg.decoder_layerdrop,
        embed_tokens=embed_tokens,
    )
