"""fairseq-facing generators over our own batched beam search and CTC decoders.

`task.build_generator` returns `Seq2SeqGenerator` for `av_hubert_seq2seq` models (attention
beam search, joint CTC/attention scoring when the model has a CTC head and `ctc_weight > 0`)
and `CTCGenerator` for `av_hubert_ctc`. Both expose fairseq's `generate(models, sample)` ->
per utterance a list of `{"tokens", "score", "positional_scores", "alignment"}` (best first).
Output lengths are bounded by `max_len_a * encoder time steps + max_len_b` (the reference used
the audio feature dimension, 104, whenever audio was present).

`Seq2SeqGenerator(..., lm_model=, lm_weight=)` adds shallow fusion with a fairseq language model
(fairseq `SequenceGenerator`'s `lm_model` / `lm_weight`): see `avhubert.beam_search`.
"""

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from torch import Tensor

from .beam_search import BeamSearchConfig, beam_search
from .modules.ctc import ctc_greedy_decode, ctc_prefix_beam_search_batch

__all__ = ["Seq2SeqGenerator", "CTCGenerator", "FairseqLMScorer", "check_lm_dictionary"]

Hypos = List[List[Dict[str, Any]]]


def check_lm_dictionary(lm_dict: Dictionary, tgt_dict: Dictionary, where: str = "language model") -> None:
    """Raise ValueError unless `lm_dict` has the target dictionary's symbols in the same order
    (shallow fusion adds scores index by index)."""
    lm_syms, tgt_syms = list(lm_dict.symbols), list(tgt_dict.symbols)
    if lm_syms == tgt_syms:
        return
    first = next((i for i, (a, b) in enumerate(zip(lm_syms, tgt_syms)) if a != b), min(len(lm_syms), len(tgt_syms)))
    at = (f"index {first}: LM {lm_syms[first]!r} vs target {tgt_syms[first]!r}"
          if first < min(len(lm_syms), len(tgt_syms)) else f"one is a prefix of the other, from index {first}")
    raise ValueError(
        f"{where}: dictionary differs from the model's target dictionary ({len(lm_syms)} vs {len(tgt_syms)} "
        f"symbols; first difference at {at}). Train the LM on the same sentencepiece pieces with the target "
        "dictionary: fairseq-preprocess --only-source --srcdict <dict.wrd.txt> ...")


class FairseqLMScorer:
    """A fairseq language model (`FairseqLanguageModel`, e.g. `transformer_lm`) as the beam
    search's `LanguageModel`: next-token log-probabilities via the model's own
    `get_normalized_probs`, with its incremental state when its decoder has one (else the whole
    prefix is recomputed every step, as fairseq's generator always does)."""

    def __init__(self, model: torch.nn.Module) -> None:
        from fairseq.models import FairseqIncrementalDecoder

        self.model = model.eval()
        self.incremental = isinstance(getattr(model, "decoder", None), FairseqIncrementalDecoder)

    def __call__(self, tokens: Tensor, incremental_state: Dict[str, Any]) -> Tensor:
        """`[N, U]` prefix -> `[N, V]` log-probabilities (float32) of the next token."""
        if self.incremental:
            out = self.model(tokens, incremental_state=incremental_state)
        else:
            out = self.model(tokens)
        return self.model.get_normalized_probs(out, log_probs=True, sample=None)[:, -1, :]

    def reorder_incremental_state(self, incremental_state: Dict[str, Any], new_order: Tensor) -> None:
        if self.incremental and incremental_state:
            self.model.decoder.reorder_incremental_state_scripting(incremental_state, new_order)


class Seq2SeqGenerator:
    """Beam search (optionally joint CTC/attention, optionally fused with a language model)."""

    def __init__(self, tgt_dict: Dictionary, config: BeamSearchConfig, lm_model: Optional[torch.nn.Module] = None,
                 lm_weight: Optional[float] = None) -> None:
        if lm_weight is not None:
            config = BeamSearchConfig(**{**config.__dict__, "lm_weight": float(lm_weight)})
        config.validate()
        self.tgt_dict, self.config = tgt_dict, config
        self.lm_model = lm_model
        self.lm = None
        if lm_model is not None:
            lm_dict = getattr(getattr(lm_model, "decoder", None), "dictionary", None)
            if lm_dict is not None:
                check_lm_dictionary(lm_dict, tgt_dict)
            self.lm = FairseqLMScorer(lm_model)

    @torch.no_grad()
    def generate(self, models: List[torch.nn.Module], sample: Dict[str, Any], prefix_tokens: Optional[torch.Tensor] = None, **kwargs: Any) -> Hypos:
        if len(models) != 1:
            raise ValueError(f"ensembles are not supported; got {len(models)} models")
        model = models[0]
        net_input = sample["net_input"]
        encoder_out = model.encoder(source=net_input["source"], padding_mask=net_input.get("padding_mask"))
        ctc = None
        if self.config.ctc_weight > 0:
            if getattr(model, "ctc_proj", None) is None:
                raise ValueError("ctc_weight > 0 needs a model trained with a CTC head (model.ctc_weight > 0)")
            ctc = F.log_softmax(model.ctc_proj(encoder_out["encoder_out"]).float(), dim=-1).transpose(0, 1)
        d = self.tgt_dict
        if self.lm_model is not None:
            self.lm_model.to(encoder_out["encoder_out"].device)  # no-op once it is there
        hyps = beam_search(model.decoder, encoder_out, eos=d.eos(), pad=d.pad(), unk=d.unk(), config=self.config,
                           encoder_reorder=model.encoder.reorder_encoder_out, ctc_log_probs=ctc, ctc_blank=d.bos(),
                           prefix_tokens=prefix_tokens, lm=self.lm)
        return [[{"tokens": h.tokens, "score": float(h.score), "positional_scores": h.positional_scores, "alignment": None}
                 for h in utt] for utt in hyps]


class CTCGenerator:
    """Greedy (beam 1) or prefix beam search over `av_hubert_ctc` outputs; blank = `<s>`."""

    def __init__(self, tgt_dict: Dictionary, beam: int = 1) -> None:
        self.tgt_dict, self.beam, self.blank = tgt_dict, beam, tgt_dict.bos()

    @torch.no_grad()
    def generate(self, models: List[torch.nn.Module], sample: Dict[str, Any], prefix_tokens: Optional[torch.Tensor] = None, **kwargs: Any) -> Hypos:
        if prefix_tokens is not None:
            raise ValueError("CTC decoding cannot force prefix tokens (generation.prefix_size must be 0)")
        model = models[0]
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1)  # [B, T, V]
        pad = net_output["padding_mask"]
        lengths = (~pad).sum(1) if pad is not None else None
        if self.beam <= 1:
            seqs = [(s, 0.0) for s in ctc_greedy_decode(lprobs, self.blank, lengths)]
            results = [[seq] for seq in seqs]
        else:
            results = ctc_prefix_beam_search_batch(lprobs.cpu(), self.beam, self.blank, None if lengths is None else lengths.cpu())
        out: Hypos = []
        for utt in results:
            out.append([{"tokens": torch.tensor(toks, dtype=torch.long), "score": float(score),
                         "positional_scores": None, "alignment": None} for toks, score in utt])
        return out
