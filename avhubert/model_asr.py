"""Fine-tuning models `av_hubert_seq2seq` and `av_hubert_ctc` (+ configs, encoder wrappers).

Mirrors reference `avhubert/hubert_asr.py` (av_hubert@258fb50) with its fairseq-drift bugs
fixed: the pre-training task state (cluster dictionaries) is passed explicitly instead of
through fairseq's once-global task state, unknown legacy config keys are dropped
(`from_checkpoint=True`), the decoder's encoder-attention size comes from the encoder, and a
fine-tuned checkpoint given as `w2v_path` gets a clear error. Keys: `encoder.w2v_model.*` +
`decoder.*` (seq2seq), `w2v_encoder.w2v_model.*` + `w2v_encoder.proj` (CTC).
"""

import contextlib
import logging
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils, tasks
from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import BaseFairseqModel, FairseqEncoder, register_model
from omegaconf import II, MISSING, DictConfig, open_dict
from torch import nn

from .checkpoint import exit_on_checkpoint_error
from .config_fields import DecoderConfigFields
from .config_fields import config_field as _f
from .lora import AdapterCheckpointMixin, BaseReference, apply_lora, file_sha256, parameter_report, require_base_file
from .model import MASKING_DISTRIBUTION_CHOICES, AVHubertModel
from .modules.decoder import build_decoder_from_cfg

logger = logging.getLogger(__name__)

__all__ = ["AVHubertAsrConfig", "AVHubertSeq2SeqConfig", "AVHubertCtcConfig", "AVHubertSeq2Seq", "AVHubertCtc",
           "HubertEncoderWrapper", "HubertEncoder", "CheckpointKindError"]


class CheckpointKindError(ValueError):
    """A fine-tuned checkpoint where a pre-trained one is expected, or the reverse."""


@dataclass
class AVHubertAsrConfig(FairseqDataclass):
    w2v_path: str = field(default=MISSING, metadata={"help": "path of the PRE-TRAINED AV-HuBERT checkpoint"})
    no_pretrained_weights: bool = _f(False, "build the encoder from the checkpoint's config without loading its weights")
    dropout_input: float = _f(0.0, "encoder override: dropout after the fusion projection")
    final_dropout: float = _f(0.0, "dropout after the encoder (CTC)")
    dropout: float = _f(0.0, "encoder override: dropout")
    attention_dropout: float = _f(0.0, "encoder override: attention dropout")
    activation_dropout: float = _f(0.0, "encoder override: activation dropout")
    apply_mask: bool = _f(False, "mask the encoder input while fine-tuning (CTC only)")
    mask_length: int = _f(10, "mask span length (mapped to the encoder's audio/image fields)")
    mask_prob: float = _f(0.5, "mask probability (mapped to the encoder's audio/image fields)")
    mask_selection: MASKING_DISTRIBUTION_CHOICES = _f("static", "span length distribution")
    mask_other: float = _f(0, "secondary parameter of the span length distribution")
    no_mask_overlap: bool = _f(False, "forbid overlapping spans")
    mask_channel_length: int = _f(10, "channel mask span length")
    mask_channel_prob: float = _f(0.0, "channel mask probability")
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = _f("static", "channel span length distribution")
    mask_channel_other: float = _f(0, "secondary parameter for channel spans")
    no_mask_channel_overlap: bool = _f(False, "forbid overlapping channel spans")
    freeze_finetune_updates: int = _f(0, "the encoder is frozen (no-grad) for this many updates")
    feature_grad_mult: float = _f(0.0, "encoder override; 0 freezes both front-ends (configs set 1.0)")
    layerdrop: float = _f(0.0, "encoder override: encoder_layerdrop")
    normalize: bool = _f(II("task.normalize"), "must equal the pre-training task's normalize")
    data: str = _f(II("task.data"), "fine-tuning data dir (copied into the pre-training task config)")
    w2v_args: Any = _f(None, "the pre-training config, stored at first build so reloading needs no w2v_path")
    finetune_modality_dropout: float = _f(0.0, "NEW: per-batch probability of zeroing one modality while fine-tuning (reference: 0), for one model that decodes audio-only, video-only and audio-visual")
    finetune_audio_dropout: float = _f(0.5, "NEW: given a drop, probability that audio (vs video) is zeroed")
    lora_r: int = _f(0, "NEW: LoRA rank on the pre-trained encoder (0 = off, every weight trains); with LoRA its base weights stay frozen and checkpoints hold only adapters + heads + a reference to w2v_path (avhubert/lora.py)")
    lora_alpha: float = _f(16.0, "NEW: LoRA scale: adapter output x lora_alpha / lora_r")
    lora_dropout: float = _f(0.0, "NEW: dropout on the LoRA adapters' input")
    lora_targets: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"], metadata={"help": "NEW: encoder modules that get LoRA adapters: names, suffixes after a '.' (fc1), or regexes over whole names (encoder\\.layers\\.1[01]\\..*_proj); Linear and Conv layers"})


@dataclass
class AVHubertCtcConfig(AVHubertAsrConfig):
    pass


@dataclass
class AVHubertSeq2SeqConfig(DecoderConfigFields, AVHubertAsrConfig):
    """The fine-tuning fields, then the decoder's (`DecoderConfigFields`), then `ctc_weight`."""

    ctc_weight: float = _f(0.0, "NEW: weight of an auxiliary CTC head on the encoder (0 = none, the reference)")


def _as_omegaconf(args: Any) -> DictConfig:
    if isinstance(args, Namespace):
        return convert_namespace_to_omegaconf(args)
    if isinstance(args, dict):
        from omegaconf import OmegaConf

        return OmegaConf.create(args)
    return args


def build_pretrained_encoder(cfg: AVHubertAsrConfig, task: Any) -> AVHubertModel:
    """Pre-trained `AVHubertModel` from `cfg.w2v_path` (or stored `cfg.w2v_args`), with overrides."""
    overrides = {
        "dropout": cfg.dropout, "activation_dropout": cfg.activation_dropout, "dropout_input": cfg.dropout_input,
        "attention_dropout": cfg.attention_dropout, "mask_length_audio": cfg.mask_length, "mask_length_image": cfg.mask_length,
        "mask_prob_audio": cfg.mask_prob, "mask_prob_image": cfg.mask_prob, "mask_selection": cfg.mask_selection,
        "mask_other": cfg.mask_other, "no_mask_overlap": cfg.no_mask_overlap, "mask_channel_length": cfg.mask_channel_length,
        "mask_channel_prob": cfg.mask_channel_prob, "mask_channel_selection": cfg.mask_channel_selection,
        "mask_channel_other": cfg.mask_channel_other, "no_mask_channel_overlap": cfg.no_mask_channel_overlap,
        "encoder_layerdrop": cfg.layerdrop, "feature_grad_mult": cfg.feature_grad_mult,
    }
    state = None
    lora = getattr(cfg, "lora_r", 0) > 0
    if cfg.w2v_args is None or lora:  # with LoRA the frozen base weights always come from w2v_path
        if lora:
            require_base_file(cfg.w2v_path, "model.w2v_path")
        with exit_on_checkpoint_error():  # a refused or damaged w2v_path: one line, exit 1
            state = checkpoint_utils.load_checkpoint_to_cpu(cfg.w2v_path)
    if cfg.w2v_args is None:
        w2v_args = _as_omegaconf(state.get("cfg") or state.get("args"))
        with open_dict(cfg):
            cfg.w2v_args = w2v_args
    else:
        w2v_args = _as_omegaconf(cfg.w2v_args)
    name = w2v_args.model.get("_name")
    if name != "av_hubert":
        raise CheckpointKindError(
            f"model.w2v_path={cfg.w2v_path!r} holds a {name!r} model; fine-tuning starts from a PRE-TRAINED "
            "av_hubert checkpoint (e.g. base_lrs3_iter5.pt), not a fine-tuned one"
        )
    if bool(w2v_args.task.normalize) != bool(cfg.normalize):
        raise ValueError(
            f"task.normalize={cfg.normalize} differs from the pre-training task's normalize={w2v_args.task.normalize}"
        )
    with open_dict(w2v_args):
        w2v_args.task.data = cfg.data
        for key, value in overrides.items():
            w2v_args.model[key] = value
    pretrain_task = tasks.setup_task(w2v_args.task, from_checkpoint=True)
    if state is not None and "task_state" in state:
        pretrain_task.load_state_dict(state["task_state"])
    elif "dictionaries" in getattr(task.state, "_state", {}):
        pretrain_task.state.merge_state_dict({"dictionaries": task.state.dictionaries})
    # keep the cluster dictionaries in the fine-tuning task state: they size label_embs_concat
    task.state.merge_state_dict({"dictionaries": pretrain_task.dictionaries})
    model = pretrain_task.build_model(w2v_args.model, from_checkpoint=True)
    if state is not None and not cfg.no_pretrained_weights:
        weights = {k: v for k, v in state["model"].items() if k != "mask_emb"}  # reference: mask_emb not loaded
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if set(missing) - {"mask_emb"} or unexpected:
            raise RuntimeError(f"{cfg.w2v_path}: missing keys {missing}, unexpected keys {unexpected}")
    model.remove_pretraining_modules()
    return model


# ResEncoder.stem_conv uses this convolution's weight directly on CPU: an adapter on it would be bypassed
NO_ADAPTER = {"feature_extractor_video.resnet.frontend3D.0": "the CPU stem convolution uses its weight directly"}


def setup_lora(model: nn.Module, w2v: AVHubertModel, cfg: AVHubertAsrConfig) -> None:
    """With `cfg.lora_r > 0`: LoRA adapters on the encoder `w2v` (its base frozen; `mask_emb` trains, the
    pre-trained checkpoint does not hold it) and the base reference that makes checkpoints adapter-only.
    Logs trainable / total parameters in any case."""
    if cfg.lora_r > 0:
        if cfg.no_pretrained_weights:
            raise ValueError("model.lora_r > 0 needs the pre-trained weights: drop model.no_pretrained_weights=true")
        apply_lora(w2v, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, list(cfg.lora_targets), exclude=NO_ADAPTER)
        w2v.mask_emb.requires_grad_(True)
        model.lora_base = BaseReference(cfg.w2v_path, file_sha256(cfg.w2v_path))
    logger.info("%s %s", type(model).__name__, parameter_report(model))


def sample_modality_drop(module: nn.Module, cfg: Any, source: Dict[str, Optional[torch.Tensor]]) -> str:
    """Per-batch fine-tuning modality dropout decision ("none", "audio" or "video")."""
    p = float(getattr(cfg, "finetune_modality_dropout", 0.0))
    if not module.training or p <= 0 or any(source.get(m) is None for m in ("audio", "video")):
        return "none"
    if float(torch.rand(())) >= p:
        return "none"
    return "audio" if float(torch.rand(())) < float(cfg.finetune_audio_dropout) else "video"


class HubertEncoderWrapper(FairseqEncoder):
    """Seq2seq encoder: `extract_finetune` (no masking), output `[T, B, D]` + padding masks."""

    def __init__(self, w2v_model: AVHubertModel, cfg: Optional[AVHubertAsrConfig] = None) -> None:
        super().__init__(None)
        self.w2v_model = w2v_model
        self.asr_cfg = cfg

    def forward(self, source: Dict[str, Optional[torch.Tensor]], padding_mask: Optional[torch.Tensor] = None, **kwargs: Any) -> Dict[str, Any]:
        drop = sample_modality_drop(self, self.asr_cfg, source)
        x, padding_mask = self.w2v_model.extract_finetune(source, padding_mask, modality_drop=drop)
        return {"encoder_out": x.transpose(0, 1), "encoder_padding_mask": padding_mask, "padding_mask": padding_mask}

    def reorder_encoder_out(self, encoder_out: Dict[str, Any], new_order: torch.Tensor) -> Dict[str, Any]:
        out = dict(encoder_out)
        if encoder_out["encoder_out"] is not None:
            out["encoder_out"] = encoder_out["encoder_out"].index_select(1, new_order)
        for key in ("encoder_padding_mask", "padding_mask"):
            if encoder_out.get(key) is not None:
                out[key] = encoder_out[key].index_select(0, new_order)
        return out


def _freeze_context(module: nn.Module) -> Any:
    """No-grad while training and `num_updates < freeze_finetune_updates` (reference schedule)."""
    frozen = module.training and module.num_updates < module.freeze_finetune_updates
    return torch.no_grad() if frozen else contextlib.nullcontext()


@register_model("av_hubert_seq2seq", dataclass=AVHubertSeq2SeqConfig)
class AVHubertSeq2Seq(AdapterCheckpointMixin, BaseFairseqModel):
    """Encoder-decoder. A `BaseFairseqModel` (not `FairseqEncoderDecoderModel`) because the
    decoder is a plain torch module; fairseq reaches it through `get_normalized_probs`."""

    generator_kind = "seq2seq"  # read by the task's build_generator: beam search

    def __init__(self, encoder: HubertEncoderWrapper, decoder: nn.Module, cfg: AVHubertSeq2SeqConfig) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.cfg = cfg
        self.freeze_finetune_updates = cfg.freeze_finetune_updates
        self.num_updates = 0
        embed = encoder.w2v_model.cfg.encoder_embed_dim
        self.ctc_proj = nn.Linear(embed, decoder.embed_tokens.num_embeddings) if cfg.ctc_weight > 0 else None

    @classmethod
    def build_model(cls, cfg: AVHubertSeq2SeqConfig, task: Any) -> "AVHubertSeq2Seq":
        w2v = build_pretrained_encoder(cfg, task)
        tgt_dict = task.target_dictionary
        if tgt_dict is None:
            raise ValueError("av_hubert_seq2seq needs a fine-tuning task (task.fine_tuning=true, labels=[wrd])")
        decoder = build_decoder_from_cfg(cfg, len(tgt_dict), tgt_dict.pad(), encoder_embed_dim=w2v.cfg.encoder_embed_dim)
        model = cls(HubertEncoderWrapper(w2v, cfg), decoder, cfg)
        setup_lora(model, w2v, cfg)
        return model

    def forward(self, **kwargs: Any) -> Any:
        with _freeze_context(self):  # only the pre-trained encoder; the decoder (and ctc_proj) always train
            encoder_out = self.encoder(**kwargs)
        logits, extra = self.decoder(prev_output_tokens=kwargs["prev_output_tokens"], encoder_out=encoder_out)
        if self.ctc_proj is not None:
            extra["ctc_logits"] = self.ctc_proj(encoder_out["encoder_out"])  # [T, B, V]
            extra["encoder_padding_mask"] = encoder_out["encoder_padding_mask"]
        return logits, extra

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def max_positions(self) -> Any:
        return None

    def max_decoder_positions(self) -> int:
        return self.decoder.max_positions()


class HubertEncoder(FairseqEncoder):
    """CTC encoder: `extract_finetune` (optional masking), final dropout, projection to V.

    While `num_updates < freeze_finetune_updates` only `w2v_model` runs under no-grad;
    `final_dropout` and `proj` train from the first update (reference `HubertEncoder`).
    """

    def __init__(self, w2v_model: AVHubertModel, cfg: AVHubertAsrConfig, output_dim: int) -> None:
        super().__init__(None)
        self.w2v_model = w2v_model
        self.asr_cfg = cfg
        self.apply_mask = cfg.apply_mask
        self.freeze_finetune_updates = cfg.freeze_finetune_updates
        self.num_updates = 0
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.proj = nn.Linear(w2v_model.cfg.encoder_embed_dim, output_dim)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def forward(self, source: Dict[str, Optional[torch.Tensor]], padding_mask: Optional[torch.Tensor] = None,
                tbc: bool = True, **kwargs: Any) -> Dict[str, Any]:
        drop = sample_modality_drop(self, self.asr_cfg, source)
        with _freeze_context(self):
            x, padding_mask = self.w2v_model.extract_finetune(
                source, padding_mask, mask=self.apply_mask and self.training, modality_drop=drop
            )
        x = self.proj(self.final_dropout(x))  # [B, T, V]
        if tbc:
            x = x.transpose(0, 1)
        return {"encoder_out": x, "encoder_padding_mask": padding_mask, "padding_mask": padding_mask}

    def reorder_encoder_out(self, encoder_out: Dict[str, Any], new_order: torch.Tensor) -> Dict[str, Any]:
        return HubertEncoderWrapper.reorder_encoder_out(self, encoder_out, new_order)


@register_model("av_hubert_ctc", dataclass=AVHubertCtcConfig)
class AVHubertCtc(AdapterCheckpointMixin, BaseFairseqModel):
    generator_kind = "ctc"  # read by the task's build_generator: CTC decoding

    def __init__(self, cfg: AVHubertCtcConfig, w2v_encoder: HubertEncoder) -> None:
        super().__init__()
        self.cfg = cfg
        self.w2v_encoder = w2v_encoder  # holds the freeze schedule
        self.num_updates = 0

    @classmethod
    def build_model(cls, cfg: AVHubertCtcConfig, task: Any) -> "AVHubertCtc":
        if task.target_dictionary is None:
            raise ValueError("av_hubert_ctc needs a fine-tuning task (task.fine_tuning=true)")
        w2v = build_pretrained_encoder(cfg, task)
        model = cls(cfg, HubertEncoder(w2v, cfg, len(task.target_dictionary)))
        setup_lora(model, w2v, cfg)
        return model

    def forward(self, **kwargs: Any) -> Dict[str, Any]:
        return self.w2v_encoder(**kwargs)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def get_logits(self, net_output: Dict[str, Any]) -> torch.Tensor:
        """`[T, B, V]` logits with padded frames forced to blank (index 0) — the reference's intent."""
        logits = net_output["encoder_out"]
        pad = net_output["padding_mask"]
        if pad is not None:  # no `pad.any()` test: it would sync with the accelerator; where() is exact
            blank = torch.full_like(logits[0, 0], float("-inf"))
            blank[0] = 0
            logits = torch.where(pad.t()[..., None], blank, logits)
        return logits

    def get_normalized_probs(self, net_output: Dict[str, Any], log_probs: bool, sample: Any = None) -> torch.Tensor:
        logits = self.get_logits(net_output).float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)
