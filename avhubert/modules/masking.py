"""Span masking for AV-HuBERT pre-training (vectorised, torch RNG).

Semantics of reference `avhubert/utils.compute_mask_indices` (av_hubert@258fb50), itself
wav2vec2's sampler plus a batch-equalisation step:
  * per row of (unpadded) length L: `num_spans = max(min_masks, int(prob * L / span + U(0,1)))`,
    distinct span starts drawn uniformly from `[0, L - min_span)`, spans clipped to L;
  * then every row is randomly sub-sampled to the smallest masked-frame count of the batch.
Input masking substitutes masked video frames (`same_seq` / `same_other_seq`) and replaces
masked audio steps with a learned vector. The RNG call order differs from the reference (torch
instead of NumPy, no Python loops); the distribution is the same. Decisions can be injected.
"""

from typing import Optional

import torch

__all__ = ["compute_mask_indices", "mask_runs", "substitute_video"]


def _span_lengths(
    num: torch.Tensor, span: int, selection: str, other: float, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """Span lengths `[B, S]` for `selection` in static/uniform/normal/poisson."""
    shape = num.shape if num.dim() == 2 else tuple(num.shape)
    if selection == "static":
        return torch.full(shape, span, dtype=torch.long)
    if selection == "uniform":
        lo, hi = int(other), 2 * span - int(other)
        return torch.randint(lo, hi + 1, shape, generator=generator)
    if selection == "normal":
        return torch.normal(float(span), float(other), shape, generator=generator).round().long().clamp(min=1)
    if selection == "poisson":
        return torch.poisson(torch.full(shape, float(span)), generator=generator).round().long()
    raise ValueError(f"unknown mask_selection {selection!r}; expected static, uniform, normal or poisson")


def compute_mask_indices(
    shape: tuple[int, int],
    padding_mask: Optional[torch.Tensor],
    mask_prob: float,
    mask_length: int,
    mask_selection: str = "static",
    mask_other: float = 0.0,
    min_masks: int = 2,
    no_overlap: bool = False,
    min_space: int = 1,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Bool mask `[B, T]` (True = masked); never covers padding (`padding_mask` True = pad).

    `no_overlap` keeps spans at least `min_space` apart (approximated by rejecting starts
    that fall inside an earlier span's guard band).
    """
    bsz, tsz = shape
    if mask_prob <= 0:
        return torch.zeros(bsz, tsz, dtype=torch.bool)
    lengths = torch.full((bsz,), tsz, dtype=torch.long)
    if padding_mask is not None:
        lengths = lengths - padding_mask.long().sum(-1).cpu()
    rand = torch.rand(bsz, generator=generator)
    num = (mask_prob * lengths.float() / float(mask_length) + rand).long().clamp(min=min_masks)
    max_spans = int(num.max())
    span_len = _span_lengths(torch.zeros(bsz, max_spans), mask_length, mask_selection, mask_other, generator)
    span_len = span_len.clamp(min=1)
    # starts: distinct positions in [0, L - min_len) chosen by ranking random scores
    min_len = span_len.min(dim=1).values.clamp(max=lengths - 1).clamp(min=0)
    valid_hi = (lengths - min_len).clamp(min=1)  # [B]
    num = torch.minimum(num, valid_hi)
    pos = torch.arange(tsz)
    scores = torch.rand(bsz, tsz, generator=generator).masked_fill(pos[None] >= valid_hi[:, None], 2.0)
    order = scores.argsort(dim=1)[:, :max_spans]  # [B, S] candidate starts, best first
    keep = torch.arange(max_spans)[None] < num[:, None]  # [B, S]
    if no_overlap:
        keep = keep & _non_overlapping(order, span_len, min_space, keep)
    # paint spans with a difference array: +1 at start, -1 at end, cumsum > 0
    ends = (order + span_len).clamp(max=tsz)
    diff = torch.zeros(bsz, tsz + 1, dtype=torch.long)
    diff.scatter_add_(1, order, keep.long())
    diff.scatter_add_(1, ends, -keep.long())
    mask = diff.cumsum(1)[:, :tsz] > 0
    mask &= pos[None] < lengths[:, None]
    return _equalize(mask, generator)


def _non_overlapping(order: torch.Tensor, span_len: torch.Tensor, min_space: int, keep: torch.Tensor) -> torch.Tensor:
    """Greedy rejection of spans overlapping an earlier kept span (loop over spans, not frames)."""
    ok = keep.clone()
    starts, ends = order, order + span_len + min_space
    for j in range(1, order.shape[1]):
        prev = ok[:, :j]
        clash = (starts[:, j : j + 1] < ends[:, :j]) & (starts[:, :j] < ends[:, j : j + 1]) & prev
        ok[:, j] &= ~clash.any(1)
    return ok


def _equalize(mask: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Randomly un-mask frames so every row has the batch's minimum masked count."""
    counts = mask.sum(1)
    target = int(counts.min())
    if bool((counts == target).all()):
        return mask
    scores = torch.rand(mask.shape, generator=generator).masked_fill(~mask, 2.0)
    rank = scores.argsort(1).argsort(1)  # rank of each masked frame among the row's masked frames
    return mask & (rank < target)


def mask_runs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contiguous runs of True in `mask [B, T]`: `(batch_idx, starts, ends)` (end exclusive)."""
    padded = torch.nn.functional.pad(mask.long(), (1, 1))
    edge = padded[:, 1:] - padded[:, :-1]  # [B, T+1]: +1 at run start, -1 at run end
    b_start, starts = (edge == 1).nonzero(as_tuple=True)
    _, ends = (edge == -1).nonzero(as_tuple=True)
    return b_start, starts, ends


def substitute_video(
    video: torch.Tensor,
    mask: torch.Tensor,
    selection_type: str,
    lengths: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Replace masked frames of `video [B, C, T, H, W]` (mask `[B, T]`) by other frames.

    `same_other_seq`: the same time positions of another utterance (batch rolled by a random
    non-zero offset). `same_seq`: for each masked span [s, e) of length l, frames [r, r + l) of the
    same utterance with r drawn uniformly outside [s - l, e) within the utterance's length
    (reference: within the padded length; clipped at T - 1). Batch size 1: masked frames -> 0.

    Devices: the span arithmetic runs on `mask`'s device (`lengths [B]` is moved there; random
    draws use `generator`'s device, by default `mask`'s) and only the frame copy on `video`'s.
    With a host mask, as pre-training samples it, an accelerator never waits for the host.
    """
    bsz, tsz = mask.shape
    if not bool(mask.any()):
        return video
    if bsz == 1:
        return video.masked_fill(mask.to(video.device)[:, None, :, None, None], 0.0)
    if selection_type == "same_other_seq":
        shift = int(torch.randint(1, bsz, (1,), generator=generator))
        other = video.roll(shift, dims=0)
        return torch.where(mask.to(video.device)[:, None, :, None, None], other, video)
    if selection_type != "same_seq":
        raise ValueError(f"unknown selection_type {selection_type!r}; expected same_seq or same_other_seq")
    dev = mask.device
    lengths = torch.full((bsz,), tsz, dtype=torch.long, device=dev) if lengths is None else lengths.to(dev)
    b, s, e = mask_runs(mask)
    span = e - s
    lo = (s - span).clamp(min=0)
    length = lengths[b]
    excluded = (e.clamp(max=length) - lo).clamp(min=0)
    n_valid = (length - excluded).clamp(min=1)
    rand_dev = generator.device if generator is not None else dev
    u = (torch.rand(len(s), generator=generator, device=rand_dev).to(dev) * n_valid).long()
    r = torch.where(u < lo, u, u + excluded)  # skip the excluded window
    # per masked frame: its run id and offset inside the run
    total = int(span.sum())
    run_id = torch.repeat_interleave(torch.arange(len(s), device=dev), span, output_size=total)
    offset = torch.arange(total, device=dev) - (span.cumsum(0) - span)[run_id]
    tgt_t = s[run_id] + offset
    src_t = torch.minimum(r[run_id] + offset, (length[run_id] - 1).clamp(min=0)).clamp(max=tsz - 1)
    bi = b[run_id]
    if dev != video.device:  # one copy of the frame indices [3, N]
        bi, tgt_t, src_t = torch.stack([bi, tgt_t, src_t]).to(video.device, non_blocking=True).unbind(0)
    out = video.clone()
    out[bi, :, tgt_t] = video[bi, :, src_t]
    return out
