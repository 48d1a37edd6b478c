"""Criterion `av_hubert_classification`: cross-entropy (optional label smoothing) over utterance classes.

NEW (no reference counterpart), for `av_hubert_classifier`. Logged: `loss` (base 2, per utterance),
`nll_loss`, `accuracy` and `top{k}_accuracy` (%, k = `report_top_k`). In evaluation mode each batch
also logs its `[N, N]` confusion counts, which sum over the validation set and the ranks like the
scalars (fairseq's summed statistics sync, which also works on CPU with gloo). At the end of each validation pass
(`post_validate`, called by the task) the rank-0 process writes into `report_dir` (default the
checkpoint dir): `classification/valid_per_class.json` (per-class accuracy and counts),
`classification/valid_confusion.tsv` (counts, rows = target) and `classification/valid_confusion.png`,
and adds the image to TensorBoard (`tensorboard_dir`, default `common.tensorboard_logdir`, under
`valid/confusion`).
"""

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from avdata.atomic import atomic_path, write_text

from .config_fields import config_field as _f
from .registration import register_criterion_once

logger = logging.getLogger(__name__)

__all__ = ["ClassificationCriterionConfig", "ClassificationCriterion", "confusion_matrix", "per_class_accuracy",
           "plot_confusion"]

CONFUSION_KEY = "_confusion"  # summed [N, N] int64 tensor in the metrics aggregator (rows: target, cols: prediction)


@dataclass
class ClassificationCriterionConfig(FairseqDataclass):
    label_smoothing: float = _f(0.0, "label smoothing epsilon (0 = plain cross-entropy)")
    report_top_k: int = _f(5, "also log top-k accuracy for this k (clipped to the number of classes)")
    report_dir: Optional[str] = _f(II("checkpoint.save_dir"), "where the per-class accuracy JSON and the confusion-matrix PNG go (under classification/)")
    tensorboard_dir: Optional[str] = _f(II("common.tensorboard_logdir"), "TensorBoard dir for the confusion-matrix image (none: no image)")
    max_plot_classes: int = _f(60, "confusion-matrix PNG: label the axes with class names up to this many classes")


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`[N, N]` int64 counts of class indices `[B]`; row = target class, column = predicted class."""
    pairs = targets.long() * num_classes + predictions.long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per class present in the targets: `{"accuracy": %, "count": n, "top_confusion": name or None}`."""
    out: Dict[str, Dict[str, float]] = {}
    for i, name in enumerate(names):
        count = int(confusion[i].sum())
        if count == 0:
            continue
        wrong = confusion[i].copy()
        wrong[i] = 0
        out[name] = {"accuracy": round(100.0 * confusion[i, i] / count, 2), "count": count,
                     "top_confusion": names[int(wrong.argmax())] if wrong.any() else None}
    return out


def plot_confusion(confusion: np.ndarray, names: Sequence[str], title: str, max_labels: int = 60) -> Any:
    """A matplotlib figure (Agg) of the row-normalised confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    norm = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = min(4.0 + 0.18 * n, 16.0)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    if n <= max_labels:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("target")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


@register_criterion_once("av_hubert_classification", dataclass=ClassificationCriterionConfig)
class ClassificationCriterion(FairseqCriterion):
    def __init__(self, task: Any, label_smoothing: float = 0.0, report_top_k: int = 5, report_dir: Optional[str] = None,
                 tensorboard_dir: Optional[str] = None, max_plot_classes: int = 60) -> None:
        super().__init__(task)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"criterion.label_smoothing must be in [0, 1), got {label_smoothing}")
        if report_top_k < 1:
            raise ValueError(f"criterion.report_top_k must be >= 1, got {report_top_k}")
        self.label_smoothing, self.report_top_k = label_smoothing, report_top_k
        self.report_dir, self.tensorboard_dir, self.max_plot_classes = report_dir, tensorboard_dir, max_plot_classes
        self._tb_writer = None

    def forward(self, model: torch.nn.Module, sample: Dict[str, Any], reduce: bool = True):
        net_output = model(**sample["net_input"])
        logits = net_output["logits"].float()  # [B, N]
        target = sample["target"].view(-1)  # [B]
        if target.numel() != logits.shape[0]:
            raise ValueError(f"classification needs one label per utterance, got target shape {tuple(sample['target'].shape)}")
        lprobs = F.log_softmax(logits, dim=-1)
        nll = F.nll_loss(lprobs, target, reduction="sum")
        loss = F.cross_entropy(logits, target, reduction="sum", label_smoothing=self.label_smoothing)
        k = min(self.report_top_k, logits.shape[1])
        topk = logits.topk(k, dim=-1).indices  # [B, k]
        pred = topk[:, 0]
        n = target.numel()
        num_classes = logits.shape[1]
        log: Dict[str, Any] = {
            "loss": loss.detach(), "nll_loss": nll.detach(), "ntokens": n, "nsentences": n, "sample_size": n,
            "correct": (pred == target).sum().detach(), f"correct_top{k}": (topk == target[:, None]).any(-1).sum().detach(),
        }
        if not model.training:  # [N, N] counts: summed over batches and ranks like the scalars
            log[CONFUSION_KEY] = confusion_matrix(target.detach(), pred.detach(), num_classes)
        return loss, n, log

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True  # every value (the confusion matrix too) sums over batches and ranks

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, Any]]) -> None:
        def total(key: str) -> float:
            return float(sum(float(log.get(key, 0)) for log in logging_outputs))

        n = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(n, 1) / math.log(2), n, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / max(n, 1) / math.log(2), n, round=3)
        metrics.log_scalar_sum("_correct", total("correct"))
        metrics.log_scalar_sum("_total", n)
        metrics.log_derived("accuracy", lambda m: round(100.0 * m["_correct"].sum / max(m["_total"].sum, 1), 3))
        topk_keys = [key for key in (logging_outputs[0] if logging_outputs else {}) if key.startswith("correct_top")]
        for key in topk_keys:  # `correct_top{k}` -> `top{k}_accuracy`
            metrics.log_scalar_sum("_" + key, total(key))
            metrics.log_derived(key[len("correct_"):] + "_accuracy",
                                lambda m, key=key: round(100.0 * m["_" + key].sum / max(m["_total"].sum, 1), 3))
        confusions = [log[CONFUSION_KEY] for log in logging_outputs if CONFUSION_KEY in log]
        if confusions:
            # a tensor, not an array: fairseq saves the "valid" meters in checkpoints, whose loader admits tensors only
            metrics.log_scalar_sum(CONFUSION_KEY, torch.stack([c.detach().cpu().double() for c in confusions]).sum(0))

    # ------------------------------------------------------------------ end-of-validation report
    def class_names(self) -> List[str]:
        d = self.task.target_dictionary
        return [d[i] for i in range(d.nspecial, len(d))]

    def post_validate(self, stats: Dict[str, Any], agg: Any, num_updates: int) -> Optional[Dict[str, Any]]:
        """Write the per-class accuracy JSON and the confusion PNG (+ TensorBoard image) of the pass
        just aggregated in `agg`; rank 0 only. Returns the report (or None when nothing was logged)."""
        meter = agg.get(CONFUSION_KEY) if CONFUSION_KEY in agg.keys() else None
        if meter is None or not torch.is_tensor(meter.sum):
            return None
        confusion = meter.sum.round().long().numpy()
        names = self.class_names()
        if len(names) != confusion.shape[0]:
            raise ValueError(f"dict.lbl.txt has {len(names)} classes but the model predicts {confusion.shape[0]}")
        per_class = per_class_accuracy(confusion, names)
        report = {"num_updates": num_updates, "accuracy": stats.get("accuracy"), "per_class": per_class}
        worst = sorted(per_class.items(), key=lambda kv: kv[1]["accuracy"])[:5]
        logger.info("validation at update %d: accuracy %s%%; lowest per-class: %s", num_updates, stats.get("accuracy"),
                    ", ".join(f"{k} {v['accuracy']:.0f}% (-> {v['top_confusion']})" for k, v in worst))
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return report
        title = f"valid confusion, update {num_updates}, accuracy {stats.get('accuracy')}%"
        fig = plot_confusion(confusion, names, title, self.max_plot_classes)
        try:
            if self.report_dir:
                out = os.path.join(self.report_dir, "classification")
                os.makedirs(out, exist_ok=True)
                write_text(os.path.join(out, "valid_per_class.json"), json.dumps(report, indent=1) + "\n")
                rows = ["target\\predicted\t" + "\t".join(names)]
                rows += [name + "\t" + "\t".join(map(str, row)) for name, row in zip(names, confusion.tolist())]
                write_text(os.path.join(out, "valid_confusion.tsv"), "\n".join(rows) + "\n")
                with atomic_path(os.path.join(out, "valid_confusion.png")) as tmp:
                    fig.savefig(str(tmp), dpi=100, format="png")
            if self.tensorboard_dir:
                self._add_tensorboard_image(fig, num_updates)
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)
        return report

    def _add_tensorboard_image(self, fig: Any, step: int) -> None:
        from tensorboardX import SummaryWriter  # only when asked for: its import is slow

        if self._tb_writer is None:
            self._tb_writer = SummaryWriter(os.path.join(self.tensorboard_dir, "valid_classification"))
        fig.canvas.draw()
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3]  # [H, W, 3] uint8
        self._tb_writer.add_image("valid/confusion", image, step, dataformats="HWC")
        self._tb_writer.flush()
