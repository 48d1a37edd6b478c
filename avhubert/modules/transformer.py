"""wav2vec2-style Transformer encoder with convolutional positional embedding.

Numerically mirrors fairseq `wav2vec2.TransformerEncoder` / `TransformerSentenceEncoderLayer`
(fairseq afc77bd, used by av_hubert@258fb50) with attention computed by
`torch.nn.functional.scaled_dot_product_attention`. Attribute names reproduce the released
checkpoints' keys: `pos_conv.0.{weight_g,weight_v,bias}`, `layers.{i}.self_attn.{q,k,v,out}_proj`,
`self_attn_layer_norm`, `fc1`, `fc2`, `final_layer_norm`, `layer_norm`.
"""

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WeightNormConv1d", "SelfAttention", "EncoderLayer", "TransformerEncoder"]


def _act(name: str):
    table = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "linear": lambda x: x}
    if name == "gelu_accurate":
        return lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if name not in table:
        raise ValueError(f"unknown activation_fn {name!r}; expected one of {sorted(table)}")
    return table[name]


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalisation over all dims but `dim=2` (kernel axis).

    Keeps the legacy `weight_g` `[1, 1, K]` / `weight_v` `[C, C/groups, K]` parameter names of
    `torch.nn.utils.weight_norm(conv, dim=2)`, so released checkpoints load strictly.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.padding, self.groups = kernel_size // 2, groups
        std = math.sqrt((4 * (1.0 - dropout)) / (kernel_size * channels))
        weight = torch.randn(channels, channels // groups, kernel_size) * std
        self.weight_v = nn.Parameter(weight)
        self.weight_g = nn.Parameter(weight.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T] -> [B, C, T + 1 - K % 2]`."""
        v = self.weight_v
        weight = v * (self.weight_g / v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class _PositionalConv(nn.Sequential):
    """`pos_conv` = [weight-normed conv, SamePad (drop last frame for even K), GELU]."""

    def __init__(self, dim: int, kernel_size: int, groups: int, dropout: float) -> None:
        super().__init__(WeightNormConv1d(dim, kernel_size, groups, dropout), nn.Identity(), nn.GELU())
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[0](x)
        if self.remove:
            x = x[..., : -self.remove]
        return self[2](x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fairseq's parameter names, via SDPA."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed dim {dim} not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`x [B, T, C]`, `padding_mask [B, T]` (True = pad) -> `[B, T, C]`."""
        b, t, c = x.shape
        # [B, T, C] -> [B, H, T, C/H]
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # True = attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class EncoderLayer(nn.Module):
    """Transformer layer (pre-LN when `layer_norm_first`, else post-LN as wav2vec2)."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        heads: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        activation_fn: str,
        layer_norm_first: bool,
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout, self.activation_dropout = dropout, activation_dropout
        self.activation = _act(activation_fn)
        self.layer_norm_first = layer_norm_first

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`[B, T, C] -> [B, T, C]`."""
        if self.layer_norm_first:
            x = x + F.dropout(self.self_attn(self.self_attn_layer_norm(x), padding_mask), self.dropout, self.training)
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + F.dropout(self.self_attn(x, padding_mask), self.dropout, self.training))
        return self.final_layer_norm(x + self._ffn(x))


class TransformerEncoder(nn.Module):
    """Positional conv + N layers + final LayerNorm (applied only when the full stack runs)."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        layers: int,
        heads: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        activation_fn: str = "gelu",
        layer_norm_first: bool = False,
        layerdrop: float = 0.0,
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
    ) -> None:
        super().__init__()
        self.dropout, self.layerdrop, self.layer_norm_first = dropout, layerdrop, layer_norm_first
        self.pos_conv = _PositionalConv(dim, conv_pos, conv_pos_groups, dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, ffn_dim, heads, dropout, attention_dropout, activation_dropout, activation_fn, layer_norm_first)
            for _ in range(layers)
        )
        self.layer_norm = nn.LayerNorm(dim)
        for m in self.layers.modules():  # fairseq init_bert_params
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        output_layer: Optional[int] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """`x [B, T, C]`, `padding_mask [B, T]` (True = pad).

        `output_layer` is 1-based: the output of layer k is returned without the final LayerNorm
        (reference `output_layer` semantics); `None` runs all layers and applies `layer_norm`
        when `layer_norm_first`. Returns `(x [B, T, C], per-layer outputs)`.
        """
        if output_layer is not None and not 1 <= output_layer <= len(self.layers):
            raise ValueError(f"output_layer must be in 1..{len(self.layers)}, got {output_layer}")
        if padding_mask is not None and padding_mask.any():
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        else:
            padding_mask = None
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, self.dropout, self.training)
        hidden: List[torch.Tensor] = []
        drop = torch.rand(len(self.layers)) if self.training and self.layerdrop > 0 else None
        for i, layer in enumerate(self.layers):
            if drop is None or drop[i] > self.layerdrop:
                x = layer(x, padding_mask)
            hidden.append(x)
            if output_layer is not None and i + 1 == output_layer:
                return x, hidden
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, hidden
