"""Criterion `av_hubert_seq2seq_ctc`: the joint CTC + attention loss (NEW).

For `av_hubert_seq2seq` models built with `model.ctc_weight = w > 0` (an extra `ctc_proj` head):
loss = (1 - w) * label-smoothed CE + w * CTC (blank = `<s>`, targets without eos). Such a model
can then decode with joint CTC/attention scoring (`infer_s2s.py ... override.ctc_weight=w`).
The reference had no CTC training at all.
"""

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions.label_smoothed_cross_entropy import (LabelSmoothedCrossEntropyCriterion,
                                                            LabelSmoothedCrossEntropyCriterionConfig)

from .registration import register_criterion_once

__all__ = ["Seq2SeqCtcCriterionConfig", "Seq2SeqCtcCriterion"]


@dataclass
class Seq2SeqCtcCriterionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    pass


@register_criterion_once("av_hubert_seq2seq_ctc", dataclass=Seq2SeqCtcCriterionConfig)
class Seq2SeqCtcCriterion(LabelSmoothedCrossEntropyCriterion):
    def forward(self, model: Any, sample: Dict[str, Any], reduce: bool = True):
        net_output = model(**sample["net_input"])
        att_loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        weight = float(getattr(model.cfg, "ctc_weight", 0.0))
        extra = net_output[1]
        if weight <= 0 or "ctc_logits" not in extra:
            raise ValueError("av_hubert_seq2seq_ctc needs a model with a CTC head: set model.ctc_weight > 0")
        ctc_loss = self.ctc_loss(extra["ctc_logits"], extra["encoder_padding_mask"], sample)
        loss = (1 - weight) * att_loss + weight * ctc_loss
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        log = {"loss": loss.data, "nll_loss": nll_loss.data, "ctc_loss": ctc_loss.data, "ntokens": sample["ntokens"],
               "nsentences": sample["target"].size(0), "sample_size": sample_size}
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            log["n_correct"], log["total"] = n_correct.data, total.data
        return loss, sample_size, log

    def ctc_loss(self, logits: torch.Tensor, padding_mask: Any, sample: Dict[str, Any]) -> torch.Tensor:
        """CTC (sum over the batch) of `[T, B, V]` logits against the targets without eos/pad."""
        lprobs = F.log_softmax(logits.float(), dim=-1)
        input_lengths = (~padding_mask).sum(-1) if padding_mask is not None else torch.full(
            (logits.size(1),), logits.size(0), dtype=torch.long, device=logits.device)
        target = sample["target"]  # [B, S]: tokens, eos, then padding
        keep = (target != self.padding_idx) & (target != self.task.target_dictionary.eos())
        blank = self.task.target_dictionary.bos()
        # padded [B, S] targets with lengths: the kept tokens are each row's prefix, so this equals the
        # concatenated `target[keep]` without its host sync
        return F.ctc_loss(lprobs, target, input_lengths, keep.sum(-1), blank=blank, reduction="sum", zero_infinity=True)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        ctc = sum(log.get("ctc_loss", 0) for log in logging_outputs)
        metrics.log_scalar("ctc_loss", ctc / max(sample_size, 1) / 0.6931471805599453, sample_size, round=3)

