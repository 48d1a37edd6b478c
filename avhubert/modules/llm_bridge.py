"""Plain torch parts between the AV-HuBERT encoder and a causal LM (`av_hubert_llm`).

- `dedup_frames`: merge runs of consecutive near-identical frames (cosine similarity >= threshold)
  into their mean, per utterance (VSP-LLM merges runs of equal k-means units; this needs no k-means
  model and reduces to it when frames of one unit are identical).
- `stack_frames`: temporal down-sampling by concatenating `k` consecutive frames.
- `Projector`: Linear -> GELU -> Linear -> RMSNorm into the LM's hidden size.

Shapes: frames `[B, T, D]`, padding masks `[B, T]` with True at padded steps.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["dedup_frames", "stack_frames", "Projector", "lengths_to_padding_mask"]


def lengths_to_padding_mask(lengths: Tensor, width: Optional[int] = None) -> Tensor:
    """`[B]` lengths -> `[B, width]` bool mask, True at padded steps."""
    width = int(lengths.max()) if width is None else width
    return torch.arange(width, device=lengths.device)[None, :] >= lengths[:, None]


def dedup_frames(x: Tensor, padding_mask: Tensor, threshold: float) -> Tuple[Tensor, Tensor]:
    """Average each run of consecutive frames whose cosine similarity to the previous frame is
    >= `threshold`. `[B, T, D]`, `[B, T]` -> `[B, T', D]`, `[B, T']` (T' = longest merged row)."""
    bsz, tsz, dim = x.shape
    valid = ~padding_mask
    sim = F.cosine_similarity(x[:, 1:].float(), x[:, :-1].float(), dim=-1)  # [B, T-1]
    starts = torch.ones(bsz, tsz, dtype=torch.bool, device=x.device)
    starts[:, 1:] = sim < threshold
    starts &= valid
    seg = starts.long().cumsum(1) - 1  # segment index of every frame
    seg = seg.clamp(min=0)
    weight = valid.to(x.dtype)[..., None]
    pooled = x.new_zeros(bsz, tsz, dim).scatter_add_(1, seg[..., None].expand(-1, -1, dim), x * weight)
    counts = x.new_zeros(bsz, tsz, 1).scatter_add_(1, seg[..., None], weight)
    lengths = starts.sum(1)
    width = max(int(lengths.max()), 1)
    pooled = pooled[:, :width] / counts[:, :width].clamp(min=1)
    return pooled, lengths_to_padding_mask(lengths, width)


def stack_frames(x: Tensor, padding_mask: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Concatenate `k` consecutive frames (zero-padded at the end): `[B, T, D]` -> `[B, ceil(T/k), k*D]`;
    a stacked step is padding when all its frames are."""
    if k <= 1:
        return x, padding_mask
    bsz, tsz, dim = x.shape
    extra = (-tsz) % k
    if extra:
        x = F.pad(x, (0, 0, 0, extra))
        padding_mask = F.pad(padding_mask, (0, extra), value=True)
    x = x.masked_fill(padding_mask[..., None], 0.0).reshape(bsz, -1, k * dim)
    return x, padding_mask.reshape(bsz, -1, k).all(-1)


class Projector(nn.Module):
    """`[B, T, in_dim]` -> `[B, T, out_dim]`: Linear -> GELU -> Linear -> RMSNorm.

    `out_scale` initialises the RMSNorm gain (e.g. the RMS of the LM's token embeddings, so the
    projected frames start on the scale of the embeddings the LM was trained on)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, out_scale: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.norm = nn.RMSNorm(out_dim, eps=eps)
        with torch.no_grad():
            self.norm.weight.fill_(out_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.fc2(F.gelu(self.fc1(x))))
