"""Criterion `av_hubert_llm`: cross-entropy of the LM decoder on the transcript tokens (NEW).

For `av_hubert_llm` models: the sample's `target` holds the LM tokenizer's ids (transcript + eos,
padded; `target_lengths` the real lengths); only those positions are scored, never the prompt or
the frames. Optional label smoothing (fairseq's formula). Logged as fairseq's
`label_smoothed_cross_entropy` logs (loss and nll_loss in bits, ppl, accuracy), so training logs,
`best_checkpoint_metric` and the validation WER read the same as for seq2seq.
"""

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion, label_smoothed_nll_loss
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from .config_fields import config_field as _f
from .registration import register_criterion_once

__all__ = ["LlmCriterionConfig", "LlmCriterion"]


@dataclass
class LlmCriterionConfig(FairseqDataclass):
    label_smoothing: float = _f(0.0, "label smoothing epsilon (0: plain cross-entropy)")
    report_accuracy: bool = _f(True, "log token accuracy")
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion_once("av_hubert_llm", dataclass=LlmCriterionConfig)
class LlmCriterion(FairseqCriterion):
    def __init__(self, task: Any, label_smoothing: float = 0.0, report_accuracy: bool = True, sentence_avg: bool = True) -> None:
        super().__init__(task)
        self.eps, self.report_accuracy, self.sentence_avg = label_smoothing, report_accuracy, sentence_avg

    def forward(self, model: Any, sample: Dict[str, Any], reduce: bool = True):
        if getattr(model, "generator_kind", None) != "llm":
            raise ValueError(f"criterion av_hubert_llm trains av_hubert_llm models, not {type(model).__name__}")
        net_input = sample["net_input"]
        out = model(source=net_input["source"], padding_mask=net_input.get("padding_mask"), target=sample["target"],
                    target_lengths=sample.get("target_lengths"))
        target = out["target"]
        keep = target != -100
        lprobs = F.log_softmax(out["logits"][keep].float(), dim=-1)  # [N, V] over the real target tokens
        gold = target[keep]
        loss, nll_loss = label_smoothed_nll_loss(lprobs, gold[:, None], self.eps, ignore_index=None, reduce=True)
        ntokens = int(keep.sum())
        nsentences = target.size(0)
        sample_size = nsentences if self.sentence_avg else ntokens
        log = {"loss": loss.data, "nll_loss": nll_loss.data, "ntokens": ntokens, "nsentences": nsentences,
               "sample_size": sample_size}
        if self.report_accuracy:
            log["n_correct"] = (lprobs.argmax(-1) == gold).sum().data
            log["total"] = torch.tensor(ntokens)
        return loss, sample_size, log

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        LabelSmoothedCrossEntropyCriterion.reduce_metrics(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
