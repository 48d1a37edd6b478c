"""fairseq-facing generators over our own batched beam search and CTC decoders.

`task.build_generator` returns `Seq2SeqGenerator` for `av_hubert_seq2seq` models (attention
beam search, joint CTC/attention scoring when the model has a CTC head and `ctc_weight > 0`)
and `CTCGenerator` for `av_hubert_ctc`. Both expose fairseq's `generate(models, sample)` ->
per utterance a list of `{"tokens", "score", "positional_scores", "alignment"}` (best first).
Output lengths are bounded by `max_len_a * encoder time steps + max_len_b` (the reference used
the audio feature dimension, 104, whenever audio was present).
"""

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.data import Dictionary

from .beam_search import BeamSearchConfig, beam_search
from .modules.ctc import ctc_greedy_decode, ctc_prefix_beam_search_batch

__all__ = ["Seq2SeqGenerator", "CTCGenerator"]

Hypos = List[List[Dict[str, Any]]]


class Seq2SeqGenerator:
    def __init__(self, tgt_dict: Dictionary, config: BeamSearchConfig) -> None:
        self.tgt_dict, self.config = tgt_dict, config

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
        hyps = beam_search(model.decoder, encoder_out, eos=d.eos(), pad=d.pad(), unk=d.unk(), config=self.config,
                           encoder_reorder=model.encoder.reorder_encoder_out, ctc_log_probs=ctc, ctc_blank=d.bos(),
                           prefix_tokens=prefix_tokens)
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
