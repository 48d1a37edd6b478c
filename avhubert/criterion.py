"""Criterion `av_hubert`: masked / unmasked cluster cross-entropy + feature penalty.

Mirrors reference `avhubert/hubert_criterion.py` (av_hubert@258fb50, including the 2022-09 fix of
the accuracy counters). Logged metrics: `loss_m_i`, `loss_u_i`, `loss_features_pen`,
`correct_{m,u}_i` / `count_{m,u}_i` (reduced to accuracies), losses in base 2 per sample.
Logged losses and counts stay tensors on the model's device (no host sync per step); fairseq reads
them at its log interval, as for its own criterions' `loss.data`.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion
from fairseq.dataclass import FairseqDataclass

from .registration import register_criterion_once

__all__ = ["AVHubertCriterionConfig", "AVHubertCriterion"]


@dataclass
class AVHubertCriterionConfig(FairseqDataclass):
    pred_masked_weight: float = field(default=1.0, metadata={"help": "weight of the CE on masked frames"})
    pred_nomask_weight: float = field(default=0.0, metadata={"help": "weight of the CE on unmasked frames (Large: 1.0)"})
    loss_weights: Optional[List[float]] = field(default=None, metadata={"help": "weights of extra losses (configs: [10] for the feature penalty)"})
    log_keys: List[str] = field(default_factory=list, metadata={"help": "net-output keys to log"})


@register_criterion_once("av_hubert", dataclass=AVHubertCriterionConfig)
class AVHubertCriterion(FairseqCriterion):
    def __init__(self, task: Any, pred_masked_weight: float, pred_nomask_weight: float,
                 loss_weights: Optional[List[float]] = None, log_keys: Optional[List[str]] = None) -> None:
        super().__init__(task)
        self.pred_masked_weight, self.pred_nomask_weight = pred_masked_weight, pred_nomask_weight
        self.loss_weights = list(loss_weights) if loss_weights is not None else None
        self.log_keys = list(log_keys or [])

    def forward(self, model: torch.nn.Module, sample: Dict[str, Any], reduce: bool = True):
        net_output = model(target_list=sample["target_list"], **sample["net_input"])
        reduction = "sum" if reduce else "none"
        loss: torch.Tensor = torch.zeros((), device=net_output["features_pen"].device)
        sample_size = 0
        log: Dict[str, Any] = {}
        for tag, weight in (("m", self.pred_masked_weight), ("u", self.pred_nomask_weight)):
            logits, targets = net_output[f"logit_{tag}_list"], net_output[f"target_{tag}_list"]
            losses = [F.cross_entropy(lg, tg, reduction=reduction) for lg, tg in zip(logits, targets)]
            for i, l in enumerate(losses):
                log[f"loss_{tag}_{i}"] = l.detach()
            if weight > 0:
                loss = loss + weight * sum(losses)
                sample_size += targets[0].numel()
        if self.loss_weights is not None:
            extra, names = model.get_extra_losses(net_output)
            weights = self.loss_weights * len(extra) if len(self.loss_weights) == 1 else self.loss_weights
            if len(weights) != len(extra):
                raise ValueError(f"criterion.loss_weights has {len(self.loss_weights)} values for {len(extra)} extra losses")
            for p, n, coef in zip(extra, names, weights):
                if coef != 0 and p is not None:
                    p = coef * p.float() * sample_size
                    loss = loss + p
                    log[f"loss_{n}"] = p.detach()
        log = {"loss": loss.detach() if reduce else loss, "ntokens": sample_size,
               "nsentences": sample["id"].numel(), "sample_size": sample_size, **log}
        for key in self.log_keys:
            if key in net_output:
                log[key] = float(net_output[key])
        with torch.no_grad():
            for tag in ("m", "u"):
                for i, (lg, tg) in enumerate(zip(net_output[f"logit_{tag}_list"], net_output[f"target_{tag}_list"])):
                    log[f"correct_{tag}_{i}"] = (lg.argmax(-1) == tg).sum() if lg.numel() else 0
                    log[f"count_{tag}_{i}"] = int(tg.numel())
        return loss, sample_size, log

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> None:
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        denom = max(sample_size, 1)
        metrics.log_scalar("loss", loss_sum / denom / math.log(2), sample_size, round=3)
        if sample_size != ntokens:
            metrics.log_scalar("nll_loss", loss_sum / max(ntokens, 1) / math.log(2), ntokens, round=3)
        counts = {}
        for key in logging_outputs[0]:
            if key.startswith("count_"):
                counts[key] = sum(log[key] for log in logging_outputs)
                metrics.log_scalar(key, counts[key])
        for key in logging_outputs[0]:
            if key.startswith("loss_"):
                metrics.log_scalar(key, sum(log[key] for log in logging_outputs) / denom / math.log(2), round=3)
            elif key.startswith("correct_"):
                count = counts[re.sub("correct", "count", key)]
                metrics.log_scalar(key, sum(log[key] for log in logging_outputs) / max(count, 1), round=6)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        """True: every logged value is a sum, so summing across workers first is exact.

        Deviation from the reference (False), which forces fairseq's `all_gather_list` path: it is
        slower and allocates CUDA buffers, so multi-process CPU training could not run.
        """
        return True

