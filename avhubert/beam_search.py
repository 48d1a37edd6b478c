"""Batched beam search for the seq2seq model, with optional joint CTC/attention scoring.

Written for this project (the original used a patched copy of fairseq's `SequenceGenerator`). It
follows the same search so that results are comparable (tested equal to fairseq 0.12's generator
on identical weights):

- decoding starts from `bos` (fairseq convention: the eos index); each step takes the top
  `2 * beam` (hypothesis, token) candidates of the cumulative log-probabilities; an eos among the
  first `beam` candidates finishes a hypothesis with score `sum / length**lenpen` (length counts
  the final eos); the first `beam` non-eos candidates continue; an utterance is done once it has
  `beam` finished hypotheses or reached its maximum length, and leaves the batch;
- pad is never produced, `unkpen` is subtracted from unk, eos is banned before `min_len`, logits
  are divided by `temperature`, `no_repeat_ngram_size` bans repeated n-grams.

Differences from the original, on purpose:
- The maximum length is `int(max_len_a * T_i + max_len_b)` for each utterance, with `T_i` its number
  of ENCODER TIME STEPS (from the padding mask), capped at `max_target_positions - 1`. The original
  used the padded batch length, and for audio the feature dimension 104 (spec §5, §11.9). Because
  every limit is per utterance, padding and batch composition do not change any hypothesis.
- Joint CTC/attention scoring (`ctc_weight > 0`): the score of a token is
  `(1 - ctc_weight) * log p_att + ctc_weight * (log psi(prefix + token) - log psi(prefix))` with
  the CTC prefix probability psi (Watanabe et al. 2017), see `avhubert.modules.ctc.CTCPrefixScorer`.

Language-model shallow fusion (`lm` given, fairseq `SequenceGenerator(lm_model=, lm_weight=)`):
the score of a token is `log p_s2s + lm_weight * log p_LM`, added before the pad/unk/length rules
exactly as fairseq does (so hypotheses, scores and positional scores are the fused ones). The
LM sees the same prefix as the decoder (starting with bos) and keeps an incremental state that
is reordered with the beams (fairseq recomputes the LM on the whole prefix every step: same
numbers, quadratic cost). With joint CTC the LM term is added to the joint score
(`(1 - ctc_weight) * att + ctc_weight * ctc + lm_weight * lm`, ESPnet's weighting).

Speed: our `TransformerDecoder` (eval mode) is stepped through its beam cache
(`init_beam_cache` / `beam_step` / `reorder_beam_cache`): keys/values are written once in place
and never copied when beams are reordered, encoder keys/values are projected once per utterance
(not per beam), q/k/v are one product with pre-transposed weights. Other decoders go through the
`IncrementalDecoder` protocol (a dict cache reordered row by row). Finished hypotheses stay on the
device until the end; the host waits for the device once per step (to stop, and to drop finished
utterances), so the search does not stall a GPU on bookkeeping.
"""

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from avhubert.modules.ctc import CTCPrefixScorer, CTCPrefixState
from avhubert.modules.decoder import unpack_encoder_out

__all__ = ["BeamSearchConfig", "Hypothesis", "IncrementalDecoder", "LanguageModel", "reorder_encoder_out", "beam_search"]

logger = logging.getLogger(__name__)

NEG_INF = float("-inf")
EncoderOut = Dict[str, Any]


@dataclass
class BeamSearchConfig:
    """Search options; defaults are fairseq `GenerationConfig`'s (s2s_decode.yaml sets
    `max_len_a=1.0, max_len_b=0`)."""

    beam: int = 5
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1
    lenpen: float = 1.0
    unkpen: float = 0.0
    temperature: float = 1.0
    no_repeat_ngram_size: int = 0
    normalize_scores: bool = True  # fairseq `not unnormalized`
    max_target_positions: Optional[int] = None  # None: the decoder's `max_positions()` if it has one
    ctc_weight: float = 0.0
    ctc_pre_beam: int = 0  # >0: CTC-score only this many best attention candidates per hypothesis
    lm_weight: float = 1.0  # shallow fusion weight when a language model is given (fairseq default)

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.no_repeat_ngram_size == 1 or self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be 0 (off) or >= 2, got {self.no_repeat_ngram_size}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.ctc_pre_beam < 0:
            raise ValueError(f"ctc_pre_beam must be >= 0, got {self.ctc_pre_beam}")
        if not math.isfinite(self.lm_weight):
            raise ValueError(f"lm_weight must be finite, got {self.lm_weight}")

    @classmethod
    def from_generation_cfg(cls, gen: Any, **overrides: Any) -> "BeamSearchConfig":
        """From a fairseq `GenerationConfig` (attribute access); `overrides` win."""
        opts = dict(
            beam=gen.beam,
            max_len_a=gen.max_len_a,
            max_len_b=gen.max_len_b,
            min_len=gen.min_len,
            lenpen=gen.lenpen,
            unkpen=gen.unkpen,
            temperature=gen.temperature,
            no_repeat_ngram_size=gen.no_repeat_ngram_size,
            normalize_scores=not gen.unnormalized,
        )
        opts.update(overrides)
        return cls(**opts)


@dataclass
class Hypothesis:
    """A finished hypothesis: `tokens [L]` (ends with eos, no bos), `score` (length-normalised
    unless `normalize_scores=False`), `positional_scores [L]` (per-token log-probabilities, joint
    scores when CTC is used)."""

    tokens: Tensor
    score: float
    positional_scores: Tensor


class IncrementalDecoder(Protocol):
    """What the search needs from a decoder (`avhubert.modules.decoder.TransformerDecoder`)."""

    def __call__(
        self, prev_output_tokens: Tensor, encoder_out: Any, incremental_state: Dict[str, Tensor]
    ) -> Tuple[Tensor, Any]:
        """`[N, U]` prefix -> (`[N, U or 1, V]` logits, extra); only the last position is used."""

    def reorder_incremental_state(self, incremental_state: Dict[str, Tensor], new_order: Tensor) -> Any:
        """Keep cache rows `new_order` (may also accept `reorder_encoder_cache: bool`)."""


class LanguageModel(Protocol):
    """What shallow fusion needs from a language model over the target dictionary
    (`avhubert.sequence_generator.FairseqLMScorer` adapts a fairseq LM)."""

    def __call__(self, tokens: Tensor, incremental_state: Dict[str, Any]) -> Tensor:
        """`[N, U]` prefix (starting with bos) -> `[N, V]` log-probabilities of the next token."""

    def reorder_incremental_state(self, incremental_state: Dict[str, Any], new_order: Tensor) -> None:
        """Keep cache rows `new_order`."""


def reorder_encoder_out(encoder_out: Mapping[str, Any], new_order: Tensor) -> EncoderOut:
    """Select utterances `new_order` of an encoder output dict: `[T, B, C]` tensors on dim 1,
    `[B, T]` masks on dim 0 (also inside one-element lists, modern fairseq style)."""
    out: EncoderOut = {}
    for key, value in encoder_out.items():
        wrapped = isinstance(value, list)
        items = value if wrapped else [value]
        new_items = []
        for item in items:
            if isinstance(item, Tensor) and key == "encoder_out":
                item = item.index_select(1, new_order)
            elif isinstance(item, Tensor) and item.dim() >= 1:
                item = item.index_select(0, new_order)
            new_items.append(item)
        out[key] = new_items if wrapped else new_items[0]
    return out


def _encoder_lengths(encoder_out: Mapping[str, Any]) -> Tuple[int, Tensor]:
    """Batch size and `[B]` encoder time steps per utterance (on the host)."""
    enc, mask = unpack_encoder_out(encoder_out)
    if enc is None:
        raise ValueError("encoder_out['encoder_out'] is required")
    bsz, t_max = enc.size(1), enc.size(0)
    if mask is None:
        return bsz, torch.full((bsz,), t_max, dtype=torch.long)
    return bsz, (~mask).sum(dim=1).long().cpu()


def _without_padding_mask(encoder_out: Mapping[str, Any]) -> Dict[str, Any]:
    """`encoder_out` without its padding mask (when no frame is padded, so that attention can
    use its unmasked kernels)."""
    return {k: v for k, v in encoder_out.items() if k not in ("encoder_padding_mask", "padding_mask")}


def _ban_repeated_ngrams(tokens: Tensor, lprobs: Tensor, n: int) -> None:
    """Set -inf for every token that would repeat an n-gram of `tokens [N, L]` (in place)."""
    if tokens.size(1) < n:
        return
    windows = tokens.unfold(1, n, 1)  # [N, L - n + 1, n]: all n-grams so far
    current = tokens[:, tokens.size(1) - n + 1 :]  # [N, n - 1]: the n-gram being completed
    match = (windows[:, :, :-1] == current[:, None, :]).all(dim=2)
    # -inf for the last token of every matching n-gram; "amin" keeps a ban when a token also ends
    # non-matching n-grams (+inf), and needs no host sync (no nonzero)
    ban = torch.full(match.shape, float("inf"), dtype=lprobs.dtype, device=lprobs.device).masked_fill_(match, NEG_INF)
    lprobs.scatter_reduce_(1, windows[:, :, -1], ban, reduce="amin")


class _DictCacheStepper:
    """Steps any `IncrementalDecoder`: a dict cache reordered row by row, and the encoder output
    repeated for every beam (`encoder_reorder`)."""

    def __init__(self, decoder: IncrementalDecoder, encoder_out: Mapping[str, Any], beam: int,
                 encoder_reorder: Callable[[Mapping[str, Any], Tensor], Mapping[str, Any]], device: torch.device) -> None:
        bsz = unpack_encoder_out(encoder_out)[0].size(1)
        self.decoder, self.encoder_reorder = decoder, encoder_reorder
        self.encoder_out = encoder_reorder(encoder_out, torch.arange(bsz, device=device).repeat_interleave(beam))
        self.state: Dict[str, Tensor] = {}
        self.reorder_kw = "reorder_encoder_cache" in inspect.signature(decoder.reorder_incremental_state).parameters

    def step(self, tokens: Tensor) -> Tensor:
        logits, _ = self.decoder(tokens, self.encoder_out, self.state)
        return logits[:, -1, :]

    def reorder(self, rows: Tensor, keep: Optional[Tensor]) -> None:
        shrink = keep is not None  # rows of one utterance share the encoder output: only removals need a reorder
        if self.reorder_kw:
            self.decoder.reorder_incremental_state(self.state, rows, reorder_encoder_cache=shrink)
        else:
            self.decoder.reorder_incremental_state(self.state, rows)
        if shrink:
            self.encoder_out = self.encoder_reorder(self.encoder_out, rows)


class _BeamCacheStepper:
    """Steps a decoder with `init_beam_cache` / `beam_step` / `reorder_beam_cache`
    (`avhubert.modules.decoder.TransformerDecoder`): keys/values written in place, never copied
    when beams are reordered, encoder keys/values once per utterance."""

    def __init__(self, decoder: Any, encoder_out: Mapping[str, Any], beam: int, max_steps: int) -> None:
        self.decoder = decoder
        self.cache = decoder.init_beam_cache(encoder_out, beam, max_steps)

    def step(self, tokens: Tensor) -> Tensor:
        return self.decoder.beam_step(tokens, self.cache)

    def reorder(self, rows: Tensor, keep: Optional[Tensor]) -> None:
        self.decoder.reorder_beam_cache(self.cache, rows, keep)


class _Finished:
    """Finished hypotheses, kept on the search's device until the search ends (no host sync per
    hypothesis): per utterance `beam` slots in the order they finished, plus one slot that takes
    the writes of candidates that do not finish. Scores are stored unnormalised and divided by
    `length ** lenpen` in double precision at the end, as fairseq does."""

    def __init__(self, bsz: int, beam: int, max_tokens: int, device: torch.device) -> None:
        self.beam = beam
        self.tokens = torch.zeros(bsz, beam + 1, max_tokens, dtype=torch.long, device=device)
        self.pos_scores = torch.zeros(bsz, beam + 1, max_tokens, device=device)
        self.scores = torch.full((bsz, beam + 1), NEG_INF, device=device)
        self.lengths = torch.zeros(bsz, beam + 1, dtype=torch.long, device=device)
        self.count = torch.zeros(bsz, dtype=torch.long, device=device)

    def add(self, utts: Tensor, finish: Tensor, tokens: Tensor, pos_scores: Tensor, rows: Tensor, scores: Tensor,
            last_lp: Tensor, eos: int) -> None:
        """Store the candidates `finish [n, c]` (best first) of utterances `utts [n]` that still
        have room: `rows [n, c]` their rows of `tokens [N, L]` / `pos_scores [N, L - 1]`, their
        cumulative `scores` and eos log-probabilities `last_lp` `[n, c]`."""
        n, c = finish.shape
        length = tokens.size(1)
        slot = self.count.index_select(0, utts)[:, None] + finish.long().cumsum(1) - 1
        slot = torch.where(finish & (slot < self.beam), slot, self.beam).view(-1)  # others: the spare slot
        utt = utts[:, None].expand(n, c).reshape(-1)
        flat = rows.reshape(-1)
        hyp = torch.cat([tokens.index_select(0, flat)[:, 1:], tokens.new_full((n * c, 1), eos)], dim=1)
        self.tokens[utt, slot, :length] = hyp
        self.pos_scores[utt, slot, :length] = torch.cat([pos_scores.index_select(0, flat), last_lp.reshape(-1, 1)], 1)
        self.scores[utt, slot] = scores.reshape(-1).to(self.scores.dtype)
        self.lengths[utt, slot] = length
        self.count.index_add_(0, utts, (slot.view(n, c) < self.beam).long().sum(1))

    def hypotheses(self, normalize: bool, lenpen: float) -> List[List[Hypothesis]]:
        """Per utterance its finished hypotheses, best first (one transfer to the host)."""
        count, lengths, scores = self.count.tolist(), self.lengths.cpu(), self.scores.cpu()
        tokens, pos_scores = self.tokens.cpu(), self.pos_scores.cpu()
        out: List[List[Hypothesis]] = []
        for u, k in enumerate(count):
            hyps = []
            for j in range(k):
                length = int(lengths[u, j])
                score = float(scores[u, j])
                if normalize:
                    score /= length**lenpen
                hyps.append(Hypothesis(tokens=tokens[u, j, :length].clone(), score=score,
                                       positional_scores=pos_scores[u, j, :length].clone()))
            hyps.sort(key=lambda h: h.score, reverse=True)
            out.append(hyps)
        return out


@torch.no_grad()
def beam_search(
    decoder: IncrementalDecoder,
    encoder_out: Mapping[str, Any],
    *,
    eos: int,
    pad: int,
    unk: int,
    config: Optional[BeamSearchConfig] = None,
    bos: Optional[int] = None,
    encoder_reorder: Callable[[Mapping[str, Any], Tensor], Mapping[str, Any]] = reorder_encoder_out,
    src_lengths: Optional[Tensor] = None,
    ctc_log_probs: Optional[Tensor] = None,
    ctc_blank: int = 0,
    prefix_tokens: Optional[Tensor] = None,
    lm: Optional[LanguageModel] = None,
) -> List[List[Hypothesis]]:
    """Beam search over a batch of encoder outputs.

    Args:
        decoder: incremental decoder (called as `decoder(tokens, encoder_out, incremental_state)`);
            one with `init_beam_cache` / `beam_step` / `reorder_beam_cache` (our
            `TransformerDecoder`, in eval mode) is stepped through those instead.
        encoder_out: dict with `encoder_out [T, B, C]` and optional `encoder_padding_mask` /
            `padding_mask [B, T]` (True = pad); other entries are reordered with it.
        eos, pad, unk: target dictionary indices; `bos` defaults to eos (fairseq convention).
        encoder_reorder: `(encoder_out, new_order) -> encoder_out` selecting utterance rows.
        src_lengths: `[B]` encoder time steps per utterance (default: from the padding mask).
        ctc_log_probs: `[B, T, V]` CTC log-probabilities (same dictionary) for joint scoring when
            `config.ctc_weight > 0`; `ctc_blank` is their blank index.
        prefix_tokens: `[B, P]` tokens every hypothesis must start with (fairseq `prefix_size`,
            e.g. a language tag); `pad` entries leave that step free.
        lm: language model over the same dictionary for shallow fusion with weight
            `config.lm_weight` (fairseq `lm_model`); it must be on the encoder output's device.

    Returns:
        for each utterance, `beam` hypotheses sorted by score (best first).

    On an accelerator the search waits for the device once per step (how many hypotheses each
    utterance has finished, to stop and to drop finished utterances), plus once at the start
    (lengths) and once at the end (the hypotheses).
    """
    cfg = config or BeamSearchConfig()
    cfg.validate()
    bos = eos if bos is None else bos
    bsz, lengths = _encoder_lengths(encoder_out)
    padded = bsz > 0 and int(lengths.min()) < unpack_encoder_out(encoder_out)[0].size(0)
    if src_lengths is not None:
        lengths = src_lengths.long().cpu()
    if bsz == 0:
        return []
    beam = cfg.beam
    cap = cfg.max_target_positions
    if cap is None and hasattr(decoder, "max_positions"):
        cap = int(decoder.max_positions())
    max_len_t = (cfg.max_len_a * lengths.double() + cfg.max_len_b).long()  # int() truncation, as fairseq
    if cap is not None:
        max_len_t = max_len_t.clamp(max=cap - 1)
    max_len: List[int] = max_len_t.clamp(min=0).tolist()

    enc, _ = unpack_encoder_out(encoder_out)
    device = enc.device
    use_ctc = cfg.ctc_weight > 0
    scorer: Optional[CTCPrefixScorer] = None
    if use_ctc:
        if ctc_log_probs is None:
            raise ValueError("ctc_weight > 0 needs ctc_log_probs [B, T, V]")
        scorer = CTCPrefixScorer(ctc_log_probs, lengths.to(ctc_log_probs.device), ctc_blank, eos)

    stepper: Any
    if hasattr(decoder, "init_beam_cache") and not getattr(decoder, "training", False):
        stepper = _BeamCacheStepper(decoder, encoder_out if padded else _without_padding_mask(encoder_out), beam,
                                    max(max_len) + 1)
    else:
        stepper = _DictCacheStepper(decoder, encoder_out, beam, encoder_reorder, device)
    active = list(range(bsz))  # original indices of the utterances still searched
    active_dev = torch.arange(bsz, device=device)
    max_len_dev = torch.tensor(max_len, device=device)
    lm_state: Dict[str, Any] = {}
    tokens = torch.full((bsz * beam, 1), bos, dtype=torch.long, device=device)
    scores = torch.zeros(bsz * beam, device=device)
    pos_scores = torch.zeros(bsz * beam, 0, device=device)
    ctc_state: Optional[CTCPrefixState] = None
    if scorer is not None:
        ctc_state = scorer.initial_state(active_dev.to(scorer.x.device).repeat_interleave(beam))
    finished = _Finished(bsz, beam, max(max_len) + 1, device)
    k = 2 * beam  # candidates per utterance: 2x so that `beam` non-eos candidates always remain

    step = 0
    while True:
        n = len(active)
        lprobs = F.log_softmax(stepper.step(tokens).float() / cfg.temperature, dim=-1)  # [n * beam, V]
        vocab = lprobs.size(1)
        lm_lprobs = None
        if lm is not None:
            lm_lprobs = _lm_scores(lm, tokens, lm_state, vocab, cfg.lm_weight).to(lprobs)  # [n * beam, V]
            if scorer is None:  # fairseq order: fused before the search rules
                lprobs = lprobs + lm_lprobs
        row_max = max_len_dev.index_select(0, active_dev).repeat_interleave(beam)  # each row's maximum length
        lprobs = _constrain(lprobs, tokens, step, row_max, eos, pad, unk, cfg)
        if prefix_tokens is not None and step < prefix_tokens.size(1):
            lprobs = _force_prefix(lprobs, prefix_tokens, step, active_dev, row_max, beam, pad)
        ctc_cand = ctc_psi = ctc_r = None
        if scorer is not None and ctc_state is not None:
            lprobs, ctc_cand, ctc_psi, ctc_r = _joint_ctc(lprobs, scorer, ctc_state, active_dev, beam, cfg)
            if lm_lprobs is not None:
                lprobs = lprobs + lm_lprobs.masked_fill(torch.isnan(lm_lprobs), NEG_INF)

        # candidates: [n, beam * V] cumulative scores; at step 0 all beams are equal, use the first
        cand = (scores[:, None] + lprobs).view(n, beam * vocab)
        token_lp_all = lprobs.view(n, beam * vocab)
        if step == 0:
            cand, token_lp_all = cand[:, :vocab], token_lp_all[:, :vocab]
        if cand.size(1) < k:  # tiny vocabularies: pad with impossible candidates
            filler = cand.new_full((n, k - cand.size(1)), NEG_INF)
            cand, token_lp_all = torch.cat([cand, filler], 1), torch.cat([token_lp_all, filler], 1)
        top_scores, top_idx = cand.topk(k, dim=1)  # [n, k]
        token_lp = token_lp_all.gather(1, top_idx)
        cand_tok = top_idx % vocab
        cand_beam = (top_idx // vocab).clamp(max=beam - 1)
        cand_row = torch.arange(n, device=device)[:, None] * beam + cand_beam  # current batch rows

        # finish: finite eos candidates among the first `beam`, until an utterance has `beam`
        is_eos = cand_tok == eos
        finish = is_eos[:, :beam] & torch.isfinite(top_scores[:, :beam])
        finished.add(active_dev, finish, tokens, pos_scores, cand_row[:, :beam], top_scores[:, :beam],
                     token_lp[:, :beam], eos)
        counts = finished.count.index_select(0, active_dev).tolist()  # the step's one host sync
        for s, sent in enumerate(active):
            if step >= max_len[sent] and counts[s] == 0:
                _finish_unended(finished, s, sent, max_len[sent], beam, eos, tokens, scores, pos_scores)
                counts[s] = 1
        keep = [s for s, sent in enumerate(active) if counts[s] < beam and step < max_len[sent]]
        if not keep:
            break

        # continue: the first `beam` non-eos candidates of each remaining utterance
        rank = torch.arange(k, device=device)[None, :] + k * is_eos.long()
        chosen = rank.topk(beam, dim=1, largest=False).indices  # [n, beam], best first
        keep_dev = None
        if len(keep) < n:
            keep_dev = torch.tensor(keep, device=device)
            chosen, cand_row, cand_tok, top_scores, token_lp = (
                t.index_select(0, keep_dev) for t in (chosen, cand_row, cand_tok, top_scores, token_lp))
        sel_row = cand_row.gather(1, chosen).view(-1)
        sel_tok = cand_tok.gather(1, chosen).view(-1)
        scores = top_scores.gather(1, chosen).view(-1)
        sel_lp = token_lp.gather(1, chosen).view(-1)
        tokens = torch.cat([tokens.index_select(0, sel_row), sel_tok[:, None]], dim=1)
        pos_scores = torch.cat([pos_scores.index_select(0, sel_row), sel_lp[:, None]], dim=1)

        stepper.reorder(sel_row, keep_dev)
        if lm is not None:
            lm.reorder_incremental_state(lm_state, sel_row)
        if ctc_state is not None and ctc_cand is not None and ctc_psi is not None and ctc_r is not None:
            col = (ctc_cand[sel_row] == sel_tok[:, None]).long().argmax(dim=1)
            ctc_state = CTCPrefixScorer.advance(ctc_r, ctc_psi, ctc_cand, sel_row, col, ctc_state.length)
        if keep_dev is not None:
            active = [active[s] for s in keep]
            active_dev = active_dev.index_select(0, keep_dev)
        step += 1

    return finished.hypotheses(cfg.normalize_scores, cfg.lenpen)


def _finish_unended(finished: _Finished, s: int, sent: int, limit: int, beam: int, eos: int, tokens: Tensor,
                    scores: Tensor, pos_scores: Tensor) -> None:
    """Nothing could end within `limit` tokens (joint CTC can rule out every ending): keep the
    best prefix of utterance `sent` (position `s` in the batch), marked impossible (score -inf),
    rather than return no hypothesis at all."""
    logger.warning("utterance %d: no hypothesis could end within %d tokens", sent, limit)
    row = s * beam + scores[s * beam : (s + 1) * beam].argmax()
    finished.add(torch.tensor([sent], device=tokens.device), torch.ones(1, 1, dtype=torch.bool, device=tokens.device),
                 tokens, pos_scores, row.view(1, 1), scores.new_full((1, 1), NEG_INF),
                 pos_scores.new_full((1, 1), NEG_INF), eos)


def _lm_scores(lm: LanguageModel, tokens: Tensor, lm_state: Dict[str, Any], vocab: int, weight: float) -> Tensor:
    """`lm_weight * log p_LM(next | prefix)` as `[N, V]` (fairseq: `probs * lm_weight`, so an
    impossible LM token stays impossible even at weight 0: -inf * 0 = nan -> -inf)."""
    lm_lprobs = lm(tokens, lm_state)
    if lm_lprobs.dim() != 2 or lm_lprobs.size(1) != vocab:
        raise ValueError(
            f"language model scores have shape {tuple(lm_lprobs.shape)}; expected [{tokens.size(0)}, {vocab}] "
            "(the LM must use the target dictionary)")
    return lm_lprobs.float() * weight


def _constrain(
    lprobs: Tensor,
    tokens: Tensor,
    step: int,
    row_max: Tensor,
    eos: int,
    pad: int,
    unk: int,
    cfg: BeamSearchConfig,
) -> Tensor:
    """Apply pad/unk/length/n-gram rules to `lprobs [N, V]` (fairseq order); `row_max [N]` is
    each row's maximum length."""
    lprobs = lprobs.masked_fill(torch.isnan(lprobs), NEG_INF)
    lprobs[:, pad] = NEG_INF
    lprobs[:, unk] -= cfg.unkpen
    at_max = step >= row_max  # force eos (without asking the host whether any row is there)
    eos_col = lprobs[:, eos].clone()
    lprobs.masked_fill_(at_max[:, None], NEG_INF)
    if step < cfg.min_len:
        eos_col.masked_fill_(~at_max, NEG_INF)
    lprobs[:, eos] = eos_col
    if cfg.no_repeat_ngram_size > 0:
        _ban_repeated_ngrams(tokens, lprobs, cfg.no_repeat_ngram_size)
    return lprobs


def _force_prefix(
    lprobs: Tensor, prefix_tokens: Tensor, step: int, active: Tensor, row_max: Tensor, beam: int, pad: int
) -> Tensor:
    """Allow only the prefix token at `step` (its score unchanged); rows whose prefix entry is
    `pad`, or that reached their maximum length, stay free (fairseq `_prefix_tokens`)."""
    forced = prefix_tokens.to(lprobs.device)[active.to(lprobs.device), step].repeat_interleave(beam)  # [N]
    apply = (forced != pad) & (step < row_max)
    kept = lprobs.gather(1, forced[:, None])
    only = torch.full_like(lprobs, NEG_INF).scatter_(1, forced[:, None], kept)
    return torch.where(apply[:, None], only, lprobs)


def _joint_ctc(
    lprobs: Tensor, scorer: CTCPrefixScorer, state: CTCPrefixState, active: Tensor, beam: int, cfg: BeamSearchConfig
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Joint scores `[N, V]` (-inf outside the CTC-scored candidates) and what `advance` needs."""
    n_rows, vocab = lprobs.shape
    if scorer.vocab != vocab:
        raise ValueError(f"CTC vocabulary {scorer.vocab} differs from the decoder's {vocab}")
    ctc_device = scorer.x.device
    att = lprobs.to(ctc_device)
    if 0 < cfg.ctc_pre_beam < vocab:
        # the best attention candidates, plus eos so that every hypothesis can always end
        top = att.topk(cfg.ctc_pre_beam, dim=1).indices
        cand = torch.cat([top, top.new_full((n_rows, 1), scorer.eos)], dim=1)
    else:
        cand = torch.arange(vocab, device=ctc_device).expand(n_rows, vocab)
    utt = active.to(ctc_device).repeat_interleave(beam)
    psi, r = scorer.score(state, utt, cand)
    delta = psi - state.psi[:, None]
    att_c = att.gather(1, cand)
    joint_c = (1.0 - cfg.ctc_weight) * att_c + cfg.ctc_weight * delta
    joint_c = joint_c.masked_fill(torch.isnan(joint_c) | (att_c == NEG_INF), NEG_INF)
    joint = torch.full_like(att, NEG_INF).scatter_(1, cand, joint_c)
    return joint.to(lprobs.device), cand, psi, r
