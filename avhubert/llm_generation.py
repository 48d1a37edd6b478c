"""Decoding for `av_hubert_llm`: batched greedy search and beam search over the causal LM.

`LlmGenerator.generate(models, sample)` -> per utterance a list of `{"tokens", "score",
"positional_scores", "alignment"}` (best first; tokens end with the LM's eos), as fairseq's
generators return. The prefix (prompt + projected frames, left-padded) is run once; every step then
feeds one token per row with the LM's KV cache (`use_cache=True`, the default), or recomputes the
whole sequence (`use_cache=False`: same results, quadratic cost; kept as the reference the tests
compare the cache against).

Rules, as `avhubert.beam_search` (and fairseq's generator) apply them:
- the maximum length of utterance i is `int(max_len_a * T_i + max_len_b)` tokens including eos,
  `T_i` its number of encoder time steps (before de-duplication / stacking), capped by the LM's
  `max_position_embeddings`; at that length eos is forced;
- eos is banned before `min_len`; `unkpen` is subtracted from unk; the pad token is never produced
  (unless it is eos); logits are divided by `temperature`;
- beam search takes the top `2 * beam` (hypothesis, token) candidates of the cumulative
  log-probabilities; an eos among the first `beam` finishes a hypothesis with score
  `sum / length**lenpen`; the first `beam` non-eos candidates continue; an utterance is done with
  `beam` finished hypotheses. Greedy search is the same with beam 1 (tested equal).
"""

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .beam_search import BeamSearchConfig

__all__ = ["LlmGenerator", "LmStepper"]

Hypos = List[List[Dict[str, Any]]]
NEG_INF = float("-inf")


class LmStepper:
    """Next-token logits of N rows that share a prefix layout; with or without the KV cache."""

    def __init__(self, model: Any, use_cache: bool = True) -> None:
        self.model, self.use_cache = model, use_cache
        self.cache: Any = None
        self.embeds: Optional[Tensor] = None  # no-cache mode: every input embedding so far
        self.mask: Optional[Tensor] = None

    def start(self, prefix: Tensor, mask: Tensor) -> Tensor:
        """`[N, L, H]` prefix, `[N, L]` mask -> `[N, V]` float32 logits of the first token."""
        self.mask = mask
        if self.use_cache:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=self.model.lm.config)
            out = self.model.run_lm(prefix, mask, cache=self.cache, logits_to_keep=1)
            self.cache = out.cache if getattr(out, "cache", None) is not None else self.cache
        else:
            self.embeds = prefix
            out = self.model.run_lm(prefix, mask, logits_to_keep=1)
        return out.logits[:, -1].float()

    def step(self, tokens: Tensor) -> Tensor:
        """`[N]` tokens just chosen -> `[N, V]` float32 logits of the next one."""
        new = self.model.embed_tokens(tokens[:, None])
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], dim=1)
        if self.use_cache:
            out = self.model.run_lm(new, self.mask, cache=self.cache, logits_to_keep=1)
            self.cache = out.cache if getattr(out, "cache", None) is not None else self.cache
        else:
            self.embeds = torch.cat([self.embeds, new], dim=1)
            out = self.model.run_lm(self.embeds, self.mask, logits_to_keep=1)
        return out.logits[:, -1].float()

    def reorder(self, order: Tensor) -> None:
        """Keep rows `order` (repeats allowed: beam expansion and selection)."""
        self.mask = self.mask.index_select(0, order)
        if self.use_cache:
            self.cache.reorder_cache(order)
        else:
            self.embeds = self.embeds.index_select(0, order)


class LlmGenerator:
    """Greedy (`beam == 1`) or beam search for `av_hubert_llm` models."""

    def __init__(self, config: BeamSearchConfig, use_cache: bool = True) -> None:
        config.validate()
        if config.no_repeat_ngram_size or config.ctc_weight > 0:
            raise ValueError("av_hubert_llm decoding supports neither no_repeat_ngram_size nor ctc_weight")
        self.config, self.use_cache = config, use_cache

    # ------------------------------------------------------------- shared parts
    def _prepare(self, model: Any, sample: Dict[str, Any]) -> Tuple[Tensor, Tensor, Tensor]:
        net_input = sample["net_input"]
        frames, frame_pad, steps = model.encode(net_input["source"], net_input.get("padding_mask"))
        prefix, mask = model.build_prefix(frames, frame_pad)
        c = self.config
        max_len = (c.max_len_a * steps.float() + c.max_len_b).long()
        if model.max_positions_llm:
            max_len = max_len.clamp(max=model.max_positions_llm - mask.sum(1))
        return prefix, mask, max_len.clamp(min=1)

    def _log_probs(self, logits: Tensor, step: int, max_len: Tensor, codec: Any, unk: Optional[int]) -> Tensor:
        """Apply the rules to `[N, V]` logits at `step` (0-based) -> log-probabilities."""
        c = self.config
        lp = F.log_softmax(logits / c.temperature, dim=-1)
        if codec.pad != codec.eos:
            lp[:, codec.pad] = NEG_INF
        if unk is not None and c.unkpen:
            lp[:, unk] -= c.unkpen
        if step + 1 < c.min_len:
            lp[:, codec.eos] = NEG_INF
        at_max = step + 1 >= max_len  # [N]: only eos allowed now
        if bool(at_max.any()):
            eos_lp = lp[:, codec.eos].clone()
            lp[at_max] = NEG_INF
            lp[at_max, codec.eos] = torch.where(torch.isfinite(eos_lp[at_max]), eos_lp[at_max], torch.zeros_like(eos_lp[at_max]))
        return lp

    def _score(self, total: float, length: int) -> float:
        return total / length ** self.config.lenpen if self.config.normalize_scores else total

    @torch.no_grad()
    def generate(self, models: List[Any], sample: Dict[str, Any], prefix_tokens: Optional[Tensor] = None, **kwargs: Any) -> Hypos:
        if len(models) != 1:
            raise ValueError(f"ensembles are not supported; got {len(models)} models")
        if prefix_tokens is not None:
            raise ValueError("av_hubert_llm decoding cannot force prefix tokens (generation.prefix_size must be 0)")
        model = models[0]
        if self.config.beam == 1:
            return self.greedy(model, sample)
        return self.beam_search(model, sample)

    # ------------------------------------------------------------- greedy
    def greedy(self, model: Any, sample: Dict[str, Any]) -> Hypos:
        codec = model.codec
        unk = model.tokenizer.unk_token_id
        prefix, mask, max_len = self._prepare(model, sample)
        bsz = prefix.size(0)
        stepper = LmStepper(model, self.use_cache)
        logits = stepper.start(prefix, mask)
        tokens: List[Tensor] = []
        scores: List[Tensor] = []
        done = torch.zeros(bsz, dtype=torch.bool, device=prefix.device)
        for step in range(int(max_len.max())):
            lp = self._log_probs(logits, step, max_len, codec, unk)
            score, tok = lp.max(-1)
            tok = tok.masked_fill(done, codec.eos)
            tokens.append(tok)
            scores.append(score.masked_fill(done, 0.0))
            done |= tok == codec.eos
            if bool(done.all()):
                break
            logits = stepper.step(tok)
        toks, pos = torch.stack(tokens, 1).cpu(), torch.stack(scores, 1).float().cpu()
        out: Hypos = []
        for i in range(bsz):
            row = toks[i].tolist()
            n = row.index(codec.eos) + 1 if codec.eos in row else len(row)
            ps = pos[i, :n]
            out.append([{"tokens": toks[i, :n], "score": self._score(float(ps.sum()), n), "positional_scores": ps,
                         "alignment": None}])
        return out

    # ------------------------------------------------------------- beam search
    def beam_search(self, model: Any, sample: Dict[str, Any]) -> Hypos:
        codec = model.codec
        unk = model.tokenizer.unk_token_id
        k = self.config.beam
        prefix, mask, max_len = self._prepare(model, sample)
        bsz, dev = prefix.size(0), prefix.device
        stepper = LmStepper(model, self.use_cache)
        logits = stepper.start(prefix, mask)
        expand = torch.arange(bsz, device=dev).repeat_interleave(k)
        stepper.reorder(expand)
        logits = logits.index_select(0, expand)
        max_len_rows = max_len.index_select(0, expand)
        scores = torch.full((bsz, k), NEG_INF, device=dev)
        scores[:, 0] = 0.0  # step 0: expand only the first copy of each prefix
        seqs: List[List[int]] = [[] for _ in range(bsz * k)]
        pos_scores: List[List[float]] = [[] for _ in range(bsz * k)]
        finished: List[List[Dict[str, Any]]] = [[] for _ in range(bsz)]
        done = [False] * bsz
        for step in range(int(max_len.max())):
            lp = self._log_probs(logits, step, max_len_rows, codec, unk)  # [B*K, V]
            vocab = lp.size(-1)
            cand = (scores.view(-1, 1) + lp).view(bsz, k * vocab)
            top_s, top_i = cand.topk(min(2 * k, k * vocab), dim=-1)
            top_s, top_i, prev = top_s.cpu(), top_i.cpu(), scores.cpu()
            order, next_tok, next_scores, new_seqs, new_pos = [], [], [], [], []
            for b in range(bsz):
                alive: List[Tuple[int, int, float, float]] = []  # (row, token, cumulative score, token score)
                if not done[b]:
                    for r in range(top_s.size(1)):
                        s = float(top_s[b, r])
                        if s == NEG_INF:
                            break
                        beam, tok = divmod(int(top_i[b, r]), vocab)
                        row, tok_lp = b * k + beam, s - float(prev[b, beam])
                        if tok == codec.eos:
                            if r < k:  # an eos among the first `beam` candidates finishes a hypothesis
                                toks = seqs[row] + [tok]
                                finished[b].append({"tokens": torch.tensor(toks, dtype=torch.long),
                                                    "score": self._score(s, len(toks)),
                                                    "positional_scores": torch.tensor(pos_scores[row] + [tok_lp]),
                                                    "alignment": None})
                        elif len(alive) < k:
                            alive.append((row, tok, s, tok_lp))
                        if len(alive) == k:  # every rank < k has been seen (r >= k - 1)
                            break
                    if len(finished[b]) >= k or step + 1 >= int(max_len[b]) or not alive:
                        done[b] = True
                if done[b]:
                    alive = []
                alive += [(b * k, codec.eos, NEG_INF, 0.0)] * (k - len(alive))  # dead rows keep the shape
                for row, tok, s, tok_lp in alive:
                    order.append(row)
                    next_tok.append(tok)
                    next_scores.append(s)
                    new_seqs.append(seqs[row] + [tok])
                    new_pos.append(pos_scores[row] + [tok_lp])
            if all(done):
                break
            order_t = torch.tensor(order, dtype=torch.long, device=dev)
            scores = torch.tensor(next_scores, device=dev).view(bsz, k)
            seqs, pos_scores = new_seqs, new_pos
            stepper.reorder(order_t)
            logits = stepper.step(torch.tensor(next_tok, dtype=torch.long, device=dev))
        return [sorted(f, key=lambda h: -h["score"])[:k] for f in finished]
