"""CTC decoding: greedy, prefix beam search, and a prefix scorer for joint CTC/attention search.

The original shipped no CTC decoding (spec §3.8); these are written from the standard
algorithms: best-path decoding; CTC prefix beam search (Hannun et al. 2014, "First-pass large
vocabulary continuous speech recognition using bi-directional recurrent DNNs"); and the CTC prefix
score of Watanabe et al. 2017 ("Hybrid CTC/attention architecture for end-to-end speech
recognition", Algorithm 2), vectorised over hypotheses and candidate tokens.

All inputs are log-probabilities (`log_softmax` of the CTC head); `blank` is the blank index
(fairseq CTC models use the dictionary's bos index, 0).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "ctc_greedy_decode",
    "ctc_prefix_beam_search",
    "ctc_prefix_beam_search_batch",
    "CTCPrefixState",
    "CTCPrefixScorer",
]

NEG_INF = float("-inf")


def _lengths_or_full(log_probs: Tensor, lengths: Optional[Tensor]) -> List[int]:
    if log_probs.dim() != 3:
        raise ValueError(f"expected log_probs [B, T, V], got shape {tuple(log_probs.shape)}")
    bsz, t_max, _ = log_probs.shape
    if lengths is None:
        return [t_max] * bsz
    if lengths.shape != (bsz,) or int(lengths.max()) > t_max or int(lengths.min()) < 0:
        raise ValueError(f"lengths {lengths.tolist()} do not fit log_probs {tuple(log_probs.shape)}")
    return [int(n) for n in lengths]


def ctc_greedy_decode(log_probs: Tensor, blank: int, lengths: Optional[Tensor] = None) -> List[List[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks.

    `log_probs [B, T, V]` (or raw logits: only the argmax is used), `lengths [B]` valid frames.
    Returns one token-id list per utterance.
    """
    lens = _lengths_or_full(log_probs, lengths)
    best = log_probs.argmax(dim=-1)  # [B, T]
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]  # first frame of each run
    keep &= best != blank
    keep &= torch.arange(best.size(1), device=best.device)[None, :] < torch.tensor(lens, device=best.device)[:, None]
    return [row[mask].tolist() for row, mask in zip(best, keep)]


def ctc_prefix_beam_search(
    log_probs: Tensor, beam: int, blank: int, token_prune: Optional[int] = None
) -> List[Tuple[List[int], float]]:
    """CTC prefix beam search over one utterance `log_probs [T, V]`.

    Keeps `beam` label prefixes, each with the log-probability of ending in blank (`pb`) or in its
    last label (`pnb`); extensions by every token are scored at once as a `[beam, V]` matrix.
    `token_prune` (optional) only extends by the `token_prune` most likely tokens of each frame.
    Returns up to `beam` (tokens, log P(tokens)) pairs, best first. Exact (equal to summing
    over all alignments) when `beam` is at least the number of distinct prefixes.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"expected log_probs [T, V], got shape {tuple(log_probs.shape)}")
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    lp = log_probs.detach().float().cpu()
    vocab = lp.size(1)
    prefixes: List[Tuple[int, ...]] = [()]
    pb = torch.tensor([0.0])
    pnb = torch.tensor([NEG_INF])
    for t in range(lp.size(0)):
        frame = lp[t]
        if token_prune is not None and token_prune < vocab:
            pruned = torch.full_like(frame, NEG_INF)
            top = frame.topk(token_prune).indices
            pruned[top] = frame[top]
            frame = pruned
        last = torch.tensor([p[-1] if p else -1 for p in prefixes])
        total = torch.logaddexp(pb, pnb)
        # staying on the same prefix: emit blank, or repeat the last label
        stay_pb = total + frame[blank]
        stay_pnb = pnb + torch.where(last >= 0, frame[last.clamp(min=0)], torch.full_like(pnb, NEG_INF))
        # extending by token c: after a repeat of the last label only from the blank-ending path
        ext = total[:, None] + frame[None, :]  # [K, V]
        repeat = last >= 0
        ext[repeat, last[repeat]] = pb[repeat] + frame[last[repeat]]
        ext[:, blank] = NEG_INF
        # an extension may equal a prefix already in the beam: merge it there
        index: Dict[Tuple[int, ...], int] = {p: i for i, p in enumerate(prefixes)}
        for i, p in enumerate(prefixes):
            parent = index.get(p[:-1]) if p else None
            if parent is not None:
                stay_pnb[i] = torch.logaddexp(stay_pnb[i], ext[parent, p[-1]])
                ext[parent, p[-1]] = NEG_INF
        scores = torch.cat([torch.logaddexp(stay_pb, stay_pnb), ext.reshape(-1)])
        k = min(beam, int(torch.isfinite(scores).sum()))
        if k == 0:
            raise ValueError(f"no finite path at frame {t}: log_probs contain only -inf")
        chosen = scores.topk(k).indices.tolist()
        new_prefixes, new_pb, new_pnb = [], [], []
        n_stay = len(prefixes)
        for c in chosen:
            if c < n_stay:
                new_prefixes.append(prefixes[c])
                new_pb.append(stay_pb[c])
                new_pnb.append(stay_pnb[c])
            else:
                parent, tok = divmod(c - n_stay, vocab)
                new_prefixes.append(prefixes[parent] + (tok,))
                new_pb.append(torch.tensor(NEG_INF))
                new_pnb.append(ext[parent, tok])
        prefixes, pb, pnb = new_prefixes, torch.stack(new_pb), torch.stack(new_pnb)
    total = torch.logaddexp(pb, pnb)
    order = total.argsort(descending=True).tolist()
    return [(list(prefixes[i]), float(total[i])) for i in order]


def ctc_prefix_beam_search_batch(
    log_probs: Tensor, beam: int, blank: int, lengths: Optional[Tensor] = None, token_prune: Optional[int] = None
) -> List[List[Tuple[List[int], float]]]:
    """`ctc_prefix_beam_search` for each utterance of `log_probs [B, T, V]` with `lengths [B]`."""
    lens = _lengths_or_full(log_probs, lengths)
    return [
        ctc_prefix_beam_search(log_probs[i, : lens[i]], beam, blank, token_prune) for i in range(log_probs.size(0))
    ]


@dataclass
class CTCPrefixState:
    """CTC prefix-scoring state of N hypotheses.

    r: `[T, N, 2]` log forward variables of the prefix ending at frame t in a label (0) or blank (1).
    psi: `[N]` log prefix probability of the prefix. last: `[N]` its last label (-1 if empty).
    length: number of labels in the prefixes (all hypotheses of a beam-search step share it).
    """

    r: Tensor
    psi: Tensor
    last: Tensor
    length: int

    def select(self, rows: Tensor) -> "CTCPrefixState":
        """Keep hypotheses `rows [N']`."""
        return CTCPrefixState(self.r[:, rows], self.psi[rows], self.last[rows], self.length)


class CTCPrefixScorer:
    """CTC prefix probabilities of label prefixes, for joint CTC/attention beam search.

    Args:
        log_probs: `[B, T, V]` CTC log-probabilities per utterance.
        lengths: `[B]` valid frames per utterance (None = all). Frames past an utterance's length
            are treated as certain blanks, so padding leaves every score unchanged.
        blank: blank index; eos: index that means "the hypothesis ends here".
    """

    def __init__(self, log_probs: Tensor, lengths: Optional[Tensor], blank: int, eos: int) -> None:
        lens = _lengths_or_full(log_probs, lengths)
        if min(lens) < 1:
            raise ValueError(f"every utterance needs at least one CTC frame, got lengths {lens}")
        x = log_probs.detach().float().transpose(0, 1).clone()  # [T, B, V]
        pad = torch.arange(x.size(0), device=x.device)[:, None] >= torch.tensor(lens, device=x.device)[None, :]
        x[pad] = NEG_INF
        x[..., blank] = x[..., blank].masked_fill(pad, 0.0)
        self.x, self.blank, self.eos = x, blank, eos
        self.end = torch.tensor(lens, device=x.device) - 1  # last valid frame per utterance
        self.vocab = x.size(2)

    def initial_state(self, utt: Tensor) -> CTCPrefixState:
        """State of the empty prefix for hypotheses belonging to utterances `utt [N]`."""
        xb = self.x[:, utt, self.blank]  # [T, N]
        r = torch.stack([torch.full_like(xb, NEG_INF), torch.cumsum(xb, dim=0)], dim=-1)
        n = utt.numel()
        return CTCPrefixState(r, torch.zeros(n, device=r.device), torch.full((n,), -1, device=r.device), 0)

    def score(self, state: CTCPrefixState, utt: Tensor, cand: Tensor) -> Tuple[Tensor, Tensor]:
        """Prefix log-probabilities of `prefix + c` for candidate tokens `cand [N, K]`.

        `utt [N]` maps hypotheses to utterances. Returns (psi `[N, K]`, r `[T, N, K, 2]`); the
        blank candidate gets -inf; eos gets the probability that the prefix is the whole labelling.
        """
        t_max = self.x.size(0)
        xs = self.x[:, utt[:, None], cand]  # [T, N, K]
        xb = self.x[:, utt, self.blank][:, :, None]  # [T, N, 1]
        r_prev = state.r
        total_prev = torch.logaddexp(r_prev[..., 0], r_prev[..., 1])  # [T, N]
        # phi: paths of the prefix that may be followed by c (a repeat needs a blank in between)
        phi = total_prev[:, :, None].expand_as(xs).clone()
        repeat = cand == state.last[:, None]
        phi[:, repeat] = r_prev[..., 1][:, :, None].expand_as(xs)[:, repeat]

        r = torch.full(xs.shape + (2,), NEG_INF, device=xs.device, dtype=xs.dtype)
        # h = prefix + c has length+1 labels: its first possible frame is t = length
        start = max(state.length, 1)
        if state.length == 0:
            r[0, ..., 0] = xs[0]
        psi = r[0, ..., 0].clone()  # -inf unless the prefix is empty
        for t in range(start, t_max):
            r[t, ..., 0] = torch.logaddexp(r[t - 1, ..., 0], phi[t - 1]) + xs[t]
            r[t, ..., 1] = torch.logaddexp(r[t - 1, ..., 0], r[t - 1, ..., 1]) + xb[t]
            psi = torch.logaddexp(psi, phi[t - 1] + xs[t])
        final = total_prev.gather(0, self.end[utt][None, :]).squeeze(0)  # [N]
        psi = torch.where(cand == self.eos, final[:, None].expand_as(psi), psi)
        psi = psi.masked_fill(cand == self.blank, NEG_INF)
        return psi, r

    @staticmethod
    def advance(r: Tensor, psi: Tensor, cand: Tensor, rows: Tensor, cols: Tensor, length: int) -> CTCPrefixState:
        """State after choosing candidate `cols [N']` of hypotheses `rows [N']` from `score`."""
        return CTCPrefixState(r[:, rows, cols], psi[rows, cols], cand[rows, cols], length + 1)
