"""Utterance classification model `av_hubert_classifier` (word-level lip reading, keyword spotting).

NEW (no reference counterpart). A pre-trained AV-HuBERT encoder (`model.w2v_path`, loaded by the
fine-tuning models' `build_pretrained_encoder`, frozen for `freeze_finetune_updates` updates as
they are, or with LoRA adapters on its frozen weights: `model.lora_r`, `avhubert/lora.py`), pooled over
time (masked mean or attention pooling, `model.pooling`), then dropout and one linear layer over the N
classes of `dict.lbl.txt` (the task's `labels: [lbl]`).
Keys: `encoder.w2v_model.*` (as `av_hubert_seq2seq`), `pool.*` (attention only), `classifier.*`.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model
from torch import nn

from .config_fields import config_field as _f
from .lora import AdapterCheckpointMixin
from .model_asr import AVHubertAsrConfig, HubertEncoderWrapper, _freeze_context, build_pretrained_encoder, setup_lora

__all__ = ["AVHubertClassifierConfig", "AVHubertClassifier", "TimePooling", "POOLING_CHOICES"]

POOLING_CHOICES = ChoiceEnum(["mean", "attention"])


@dataclass
class AVHubertClassifierConfig(AVHubertAsrConfig):
    pooling: POOLING_CHOICES = _f("mean", "pooling over time: masked mean, or attention (a learned score per frame, softmax over the unpadded frames)")


class TimePooling(nn.Module):
    """`[B, T, D]` features + padding mask `[B, T]` (True = padded) -> `[B, D]`."""

    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        if kind not in ("mean", "attention"):
            raise ValueError(f"model.pooling must be 'mean' or 'attention', got {kind!r}")
        self.kind = kind
        self.score = nn.Linear(dim, 1) if kind == "attention" else None

    def weights(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Pooling weights `[B, T]`, zero at padded frames, summing to 1 per row."""
        if self.score is None:
            w = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
            if padding_mask is not None:
                w = w.masked_fill(padding_mask, 0.0)
            return w / w.sum(dim=1, keepdim=True).clamp(min=1.0)
        scores = self.score(x).squeeze(-1)
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask, float("-inf"))
        return torch.softmax(scores.float(), dim=1).type_as(x)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.einsum("bt,btd->bd", self.weights(x, padding_mask), x)


@register_model("av_hubert_classifier", dataclass=AVHubertClassifierConfig)
class AVHubertClassifier(AdapterCheckpointMixin, BaseFairseqModel):
    """Encoder -> time pooling -> dropout (`final_dropout`) -> linear over the classes.

    `forward(source, padding_mask)` returns `{"logits": [B, N], "padding_mask": [B, T] or None}`.
    """

    def __init__(self, encoder: HubertEncoderWrapper, cfg: AVHubertClassifierConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"av_hubert_classifier needs at least 2 classes in dict.lbl.txt, got {num_classes}")
        self.cfg = cfg
        self.encoder = encoder
        dim = encoder.w2v_model.cfg.encoder_embed_dim
        self.pooling = str(cfg.pooling)
        self.pool = TimePooling(dim, self.pooling)
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.classifier = nn.Linear(dim, num_classes)
        self.freeze_finetune_updates = cfg.freeze_finetune_updates
        self.num_updates = 0

    @classmethod
    def build_model(cls, cfg: AVHubertClassifierConfig, task: Any) -> "AVHubertClassifier":
        tgt = task.target_dictionary
        if tgt is None:
            raise ValueError("av_hubert_classifier needs a fine-tuning task with class labels "
                             "(task.fine_tuning=true, task.labels=[lbl], dict.lbl.txt)")
        w2v = build_pretrained_encoder(cfg, task)
        model = cls(HubertEncoderWrapper(w2v, cfg), cfg, len(tgt) - tgt.nspecial)
        setup_lora(model, w2v, cfg)  # model.lora_r > 0: adapters on the frozen encoder, adapter-only checkpoints
        return model

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def forward(self, source: Dict[str, Optional[torch.Tensor]], padding_mask: Optional[torch.Tensor] = None,
                **kwargs: Any) -> Dict[str, Any]:
        with _freeze_context(self):  # only the pre-trained encoder; pooling and classifier always train
            out = self.encoder(source=source, padding_mask=padding_mask)
        x = out["encoder_out"].transpose(0, 1)  # [B, T, D]
        pad = out["padding_mask"]
        pooled = self.pool(x, pad)
        return {"logits": self.classifier(self.final_dropout(pooled)), "padding_mask": pad}

    def get_logits(self, net_output: Dict[str, Any]) -> torch.Tensor:
        return net_output["logits"]

    def get_normalized_probs(self, net_output: Dict[str, Any], log_probs: bool, sample: Any = None) -> torch.Tensor:
        logits = net_output["logits"].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def max_positions(self) -> Any:
        return None
