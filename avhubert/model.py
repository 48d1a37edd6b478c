"""AV-HuBERT pre-training model (`av_hubert`): config dataclass + thin fairseq shell.

Mirrors reference `avhubert/hubert.py` (`AVHubertConfig`, `AVHubertModel`, `SubModel`,
av_hubert@258fb50). Field names, defaults and state-dict keys are the reference's, so released
checkpoints load with `strict=True`. The forward pass is one pipeline of named steps shared by
pre-training, `extract_features` and `extract_finetune`.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules import GradMultiply
from omegaconf import II
from torch import nn

from .config_fields import DecoderConfigFields
from .config_fields import config_field as _f
from .modules.masking import compute_mask_indices, substitute_video
from .modules.resnet import ResEncoder
from .modules.transformer import TransformerEncoder
from .task import AVHubertPretrainingConfig, AVHubertPretrainingTask

logger = logging.getLogger(__name__)

__all__ = ["AVHubertConfig", "AVHubertModel", "SubModel", "MODALITIES", "MODALITY_DROP_CHOICES"]

MODALITIES = ("audio", "video")
MODALITY_DROP_CHOICES = ("sample", "none", "audio", "video")  # `modality_drop` / `drop_modality(which)`
EXTRACTOR_MODE_CHOICES = ChoiceEnum(["default", "layer_norm"])
MASKING_DISTRIBUTION_CHOICES = ChoiceEnum(["static", "uniform", "normal", "poisson"])
MASKING_TYPE_CHOICES = ChoiceEnum(["input", "feature"])
SELECTION_TYPE_CHOICES = ChoiceEnum(["same_other_seq", "same_seq"])
FUSION_CHOICES = ChoiceEnum(["concat", "add"])
SIM_CHOICES = ChoiceEnum(["cosine", "dot"])
RELU_CHOICES = ChoiceEnum(["prelu", "relu"])
ACTIVATION_CHOICES = ChoiceEnum(["relu", "gelu", "gelu_fast", "gelu_accurate", "tanh", "linear"])


@dataclass
class AVHubertOwnConfig(FairseqDataclass):
    """The fields `av_hubert` reads (and legacy ones stored configs carry); see `AVHubertConfig`."""

    label_rate: int = field(default=II("task.label_rate"), metadata={"help": "label frame rate (Hz); -1 for sequence labels"})
    input_modality: Optional[str] = _f(None, "deprecated and unused (reference interpolated a missing task key); kept so stored configs load")
    wav_input: bool = _f(False, "unused YAML-only key of the reference configs; kept so they load")
    extractor_mode: EXTRACTOR_MODE_CHOICES = _f("default", "legacy wav2vec2 field, unused")
    encoder_layers: int = _f(12, "number of transformer layers (Large 24)")
    encoder_embed_dim: int = _f(768, "encoder embedding dim D (Large 1024)")
    encoder_ffn_embed_dim: int = _f(3072, "encoder FFN dim (Large 4096)")
    encoder_attention_heads: int = _f(12, "encoder attention heads (Large 16)")
    activation_fn: ACTIVATION_CHOICES = _f("gelu", "encoder FFN activation")
    dropout: float = _f(0.1, "dropout in the transformer")
    attention_dropout: float = _f(0.1, "dropout on attention weights")
    activation_dropout: float = _f(0.0, "dropout after the FFN activation")
    encoder_layerdrop: float = _f(0.0, "probability of skipping a transformer layer in training")
    dropout_input: float = _f(0.0, "dropout after the fusion projection")
    dropout_features: float = _f(0.0, "legacy: reference applied it to a discarded copy only")
    final_dim: int = _f(0, "logit projection dim (0 = encoder_embed_dim)")
    untie_final_proj: bool = _f(False, "one projection slice per label set")
    layer_norm_first: bool = _f(False, "pre-LN transformer (all configs: true)")
    conv_feature_layers: str = _f("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", "legacy wav2vec2 field, unused")
    conv_bias: bool = _f(False, "legacy wav2vec2 field, unused")
    logit_temp: float = _f(0.1, "temperature dividing the logits")
    target_glu: bool = _f(False, "GLU on the label embeddings")
    feature_grad_mult: float = _f(1.0, "gradient scale into both front-ends (0 = frozen front-ends)")
    mask_length_audio: int = _f(10, "audio mask span length (steps)")
    mask_prob_audio: float = _f(0.65, "audio mask probability")
    mask_length_image: int = _f(10, "video mask span length (frames)")
    mask_prob_image: float = _f(0.65, "video mask probability")
    mask_selection: MASKING_DISTRIBUTION_CHOICES = _f("static", "span length distribution")
    mask_other: float = _f(0, "secondary parameter of the span length distribution")
    no_mask_overlap: bool = _f(False, "forbid overlapping spans")
    mask_min_space: int = _f(1, "min gap between spans when no_mask_overlap")
    mask_channel_length: int = _f(10, "channel mask span length (feature masking only)")
    mask_channel_prob: float = _f(0.0, "channel mask probability (feature masking only)")
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = _f("static", "channel span length distribution")
    mask_channel_other: float = _f(0, "secondary parameter for channel spans")
    no_mask_channel_overlap: bool = _f(False, "forbid overlapping channel spans")
    mask_channel_min_space: int = _f(1, "min gap between channel spans")
    conv_pos: int = _f(128, "positional convolution kernel size")
    conv_pos_groups: int = _f(16, "positional convolution groups")
    latent_temp: Tuple[float, float, float] = _f((2, 0.5, 0.999995), "legacy wav2vec2 field, unused")
    skip_masked: bool = _f(False, "legacy, never read by the reference forward")
    skip_nomask: bool = _f(False, "legacy, never read by the reference forward")
    resnet_relu_type: RELU_CHOICES = _f("prelu", "activation in the visual front-end")
    resnet_weights: Optional[str] = _f(None, "optional ResNet weights file (state dict of the visual front-end)")
    resnet_width: int = _f(64, "base channel width of the visual ResNet (reference: 64; smaller for tiny CPU models)")
    resnet_input_pool: int = _f(
        1, "average-pool video frames by this factor before the ResNet (reference: 1; 2 runs tiny CPU models on "
        "44x44 from 88x88 crops, about 3x less front-end time)",
    )
    sim_type: SIM_CHOICES = _f("cosine", "logit similarity")
    sub_encoder_layers: int = _f(0, "per-modality transformer layers inside each front-end")
    audio_feat_dim: int = _f(-1, "audio input dim (26 x stack_order_audio = 104); must be set")
    modality_dropout: float = _f(0, "probability of dropping one modality per batch (pre-training)")
    audio_dropout: float = _f(0, "given a drop, probability that audio (vs video) is dropped")
    modality_fuse: FUSION_CHOICES = _f("concat", "fusion of the two streams")
    selection_type: SELECTION_TYPE_CHOICES = _f("same_other_seq", "video input-masking substitution source")
    masking_type: MASKING_TYPE_CHOICES = _f("input", "mask raw inputs or fused features")
    bf16_autocast: bool = _f(
        False, "run the forward under torch.autocast(bfloat16) on the input's device, weights and optimizer "
        "in fp32, logits returned in fp32 (for CPUs with native bf16; on GPUs fairseq's common.bf16 / amp)",
    )


@dataclass
class AVHubertConfig(DecoderConfigFields, AVHubertOwnConfig):
    """Config of model `av_hubert`: its own fields, then the seq2seq decoder's fields, unused here but
    kept because the reference reused one config (stored configs and checkpoints carry them), with
    the reference's pre-training defaults where they differ from the seq2seq ones."""

    decoder_dropout: float = _f(0.1, "unused by av_hubert (pre-training default 0.1)")
    decoder_attention_dropout: float = _f(0.1, "unused by av_hubert (pre-training default 0.1)")


def _to_float(value: Any) -> Any:
    """Floating tensors (also inside lists) of an autocast forward's output back in fp32."""
    if isinstance(value, list):
        return [_to_float(v) for v in value]
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
        return value.float()
    return value


def validate_config(cfg: AVHubertConfig) -> None:
    """Cross-field checks, raising `ValueError` with the field names."""
    if cfg.audio_feat_dim <= 0:
        raise ValueError("model.audio_feat_dim must be set (26 * task.stack_order_audio, e.g. 104)")
    if cfg.masking_type == "feature" and (
        cfg.mask_prob_audio != cfg.mask_prob_image or cfg.mask_length_audio != cfg.mask_length_image
    ):
        raise ValueError(
            "masking_type=feature uses one mask: mask_prob_audio/mask_length_audio must equal "
            "mask_prob_image/mask_length_image"
        )


class SubModel(nn.Module):
    """One modality's front-end: optional ResNet, `proj` Linear, optional sub-encoder -> `[B, D, T]`."""

    def __init__(self, resnet: Optional[nn.Module], input_dim: int, cfg: AVHubertConfig) -> None:
        super().__init__()
        self.resnet = resnet
        self.proj = nn.Linear(input_dim, cfg.encoder_embed_dim)
        self.encoder = _build_encoder(cfg, cfg.sub_encoder_layers) if cfg.sub_encoder_layers > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resnet is not None:
            x = self.resnet(x)  # [B, 1, T, H, W] -> [B, 512, T]
        x = self.proj(x.transpose(1, 2))  # [B, T, D]
        if self.encoder is not None:
            x = self.encoder(x)[0]
        return x.transpose(1, 2)


def _build_encoder(cfg: AVHubertConfig, layers: int) -> TransformerEncoder:
    return TransformerEncoder(
        dim=cfg.encoder_embed_dim,
        ffn_dim=cfg.encoder_ffn_embed_dim,
        layers=layers,
        heads=cfg.encoder_attention_heads,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout,
        activation_fn=str(cfg.activation_fn),
        layer_norm_first=cfg.layer_norm_first,
        layerdrop=cfg.encoder_layerdrop,
        conv_pos=cfg.conv_pos,
        conv_pos_groups=cfg.conv_pos_groups,
    )


@register_model("av_hubert", dataclass=AVHubertConfig)
class AVHubertModel(BaseFairseqModel):
    """Masked multimodal cluster prediction. Inputs: audio `[B, F, T]`, video `[B, 1, T, H, W]`."""

    def __init__(self, cfg: AVHubertConfig, task_cfg: AVHubertPretrainingConfig, dictionaries: List[Any]) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        embed = cfg.encoder_embed_dim
        video_fps = task_cfg.sample_rate  # Reference parity: task.sample_rate is the video frame rate
        self.feat2tar_ratio = cfg.label_rate / video_fps if cfg.label_rate > 0 else 1.0
        self.masking_type, self.selection_type = str(cfg.masking_type), str(cfg.selection_type)
        self.modality_fuse = str(cfg.modality_fuse)
        self.logit_temp, self.sim_type = cfg.logit_temp, str(cfg.sim_type)
        self.feature_grad_mult = cfg.feature_grad_mult
        self.bf16_autocast = bool(getattr(cfg, "bf16_autocast", False))

        resnet = ResEncoder(
            relu_type=str(cfg.resnet_relu_type), width=cfg.resnet_width, input_pool=cfg.resnet_input_pool
        )
        if cfg.resnet_weights:
            resnet.load_state_dict(torch.load(cfg.resnet_weights, map_location="cpu", weights_only=True))
        self.feature_extractor_audio = SubModel(None, cfg.audio_feat_dim, cfg)
        self.feature_extractor_video = SubModel(resnet, resnet.out_dim, cfg)

        fused_dim = 2 * embed if self.modality_fuse == "concat" else embed
        self.layer_norm = nn.LayerNorm(fused_dim)
        self.post_extract_proj = nn.Linear(fused_dim, embed) if self.modality_fuse == "concat" else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        mask_dim = cfg.audio_feat_dim if self.masking_type == "input" else embed
        self.mask_emb = nn.Parameter(torch.empty(mask_dim).uniform_())
        self.encoder = _build_encoder(cfg, cfg.encoder_layers)

        final_dim = cfg.final_dim if cfg.final_dim > 0 else embed
        self.num_classes = [len(d) for d in dictionaries]
        self.target_glu = nn.Sequential(nn.Linear(final_dim, final_dim * 2), nn.GLU()) if cfg.target_glu else None
        self.untie_final_proj = cfg.untie_final_proj
        proj_out = final_dim * len(dictionaries) if cfg.untie_final_proj else final_dim
        self.final_proj = nn.Linear(embed, proj_out)
        self.label_embs_concat = nn.Parameter(torch.empty(sum(self.num_classes), final_dim).uniform_())
        self.num_updates = 0

    @classmethod
    def build_model(cls, cfg: AVHubertConfig, task: AVHubertPretrainingTask) -> "AVHubertModel":
        return cls(cfg, task.cfg, task.dictionaries)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    # ----------------------------------------------------------------- pipeline steps
    def mask_inputs(
        self, audio: Optional[torch.Tensor], video: Optional[torch.Tensor], padding_mask: Optional[torch.Tensor],
        mask_audio: Optional[torch.Tensor] = None, mask_video: Optional[torch.Tensor] = None,
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
        """Input masking: returns masked audio, video and the loss mask `[B, T]` (OR of both).

        `mask_audio` / `mask_video` (`[B, T]` bool) inject decisions instead of sampling them.
        """
        ref = audio if audio is not None else video
        bsz, tsz = ref.shape[0], ref.shape[-1] if audio is not None else ref.shape[2]
        cfg = self.cfg
        # masks are sampled on the host (one copy of the padding mask); substitution indices too
        pad_host = None if padding_mask is None else padding_mask.cpu()
        lengths = None if pad_host is None else (~pad_host).sum(-1)
        loss_mask = torch.zeros(bsz, tsz, dtype=torch.bool, device=ref.device)
        if audio is not None:
            if mask_audio is None:
                mask_audio = self._sample_mask(bsz, tsz, pad_host, cfg.mask_prob_audio, cfg.mask_length_audio)
            mask_audio = mask_audio.to(audio.device)
            if bsz == 1:
                audio = audio.masked_fill(mask_audio[:, None, :], 0.0)
            else:  # [B, F, T]: masked steps -> learned vector
                emb = self.mask_emb.to(audio.dtype)[None, :, None]
                audio = torch.where(mask_audio[:, None, :], emb, audio)
            loss_mask |= mask_audio
        if video is not None:
            if mask_video is None:
                mask_video = self._sample_mask(bsz, tsz, pad_host, cfg.mask_prob_image, cfg.mask_length_image)
            video = substitute_video(video, mask_video, self.selection_type, lengths)
            loss_mask |= mask_video.to(video.device)
        return audio, video, loss_mask

    def _sample_mask(self, bsz: int, tsz: int, padding_mask: Optional[torch.Tensor], prob: float, length: int) -> torch.Tensor:
        cfg = self.cfg
        return compute_mask_indices(
            (bsz, tsz), None if padding_mask is None else padding_mask.cpu(), prob, length,
            str(cfg.mask_selection), cfg.mask_other, min_masks=2, no_overlap=cfg.no_mask_overlap,
            min_space=cfg.mask_min_space,
        )

    def front_end(self, modality: str) -> nn.Module:
        """The feature extractor of "audio" or "video"."""
        return {"audio": self.feature_extractor_audio, "video": self.feature_extractor_video}[modality]

    def encode_modality(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Front-end of one modality with the gradient scale `feature_grad_mult` -> `[B, D, T]`."""
        extractor = self.front_end(modality)
        if self.feature_grad_mult > 0:
            feats = extractor(x)
            return GradMultiply.apply(feats, self.feature_grad_mult) if self.feature_grad_mult != 1.0 else feats
        with torch.no_grad():
            return extractor(x)

    def encode_modalities(self, audio: Optional[torch.Tensor], video: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Both front-ends; a missing modality becomes zeros `[B, D, T]` (as modality dropout)."""
        feats = {m: self.encode_modality(x, m) for m, x in (("audio", audio), ("video", video)) if x is not None}
        if not feats:
            raise ValueError("source has neither audio nor video")
        ref = next(iter(feats.values()))
        for m in MODALITIES:
            feats.setdefault(m, torch.zeros_like(ref))
        return feats

    def _zero_gradient_link(self, modality: str) -> Optional[torch.Tensor]:
        """0, tied to every trainable parameter of `modality`'s front-end: a skipped front-end gets
        zero gradients as under the reference's `0 * features` (so Adam's moments and weight decay
        step as there, and DDP without `find_unused_parameters` finds every parameter used). None
        where the reference gives it no gradient either (`feature_grad_mult` 0: run under no_grad)."""
        params = [p for p in self.front_end(modality).parameters() if p.requires_grad]
        if self.feature_grad_mult <= 0 or not params:
            return None
        return torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0

    def resolve_modality_drop(self, which: str = "sample") -> str:
        """The modality dropout decision, "none", "audio" or "video". `which` (`MODALITY_DROP_CHOICES`):

        - "sample": the pre-training draw, training mode only: once per batch with prob
          `modality_dropout`, then audio with prob `audio_dropout` (torch RNG; reference: NumPy);
        - "none": keep both streams; "audio" / "video": zero that stream (a forced decision).
        """
        if which not in MODALITY_DROP_CHOICES:
            hint = " (None is not accepted: 'sample' draws from the config, 'none' drops nothing)" if which is None else ""
            raise ValueError(f"modality_drop must be one of {', '.join(MODALITY_DROP_CHOICES)}, got {which!r}{hint}")
        if which != "sample":
            return which
        if self.training and float(torch.rand(())) < self.cfg.modality_dropout:
            return "audio" if float(torch.rand(())) < self.cfg.audio_dropout else "video"
        return "none"

    def drop_modality(self, feats: Dict[str, torch.Tensor], which: str = "sample") -> Dict[str, torch.Tensor]:
        """Modality dropout: zero one stream after its front-end (`which` as `resolve_modality_drop`)."""
        which = self.resolve_modality_drop(which)
        if which == "none":
            return feats
        return {**feats, which: feats[which] * 0}

    def fuse(self, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
        """`concat` -> `[B, 2D, T]`; `add` -> `[B, D, T]`."""
        if self.modality_fuse == "concat":
            return torch.cat([feats["audio"], feats["video"]], dim=1)
        return feats["audio"] + feats["video"]

    def align_targets(self, features: torch.Tensor, targets: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Trim features so `T * ratio <= label length`; pick labels at `floor(t * ratio)`."""
        feat_tsz = features.size(2)
        targ_tsz = min(t.size(1) for t in targets)
        if self.feat2tar_ratio * feat_tsz > targ_tsz:
            feat_tsz = int(targ_tsz / self.feat2tar_ratio)
            features = features[..., :feat_tsz]
        idx = (torch.arange(feat_tsz, device=features.device).float() * self.feat2tar_ratio).long()
        return features, [t[:, idx] for t in targets]

    def feature_mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], mask_indices: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """HuBERT-style time (learned `mask_emb`) and channel (zeros) masking of `[B, T, D]`."""
        cfg = self.cfg
        bsz, tsz, dim = x.shape
        if mask_indices is None:
            mask_indices = self._sample_mask(bsz, tsz, padding_mask, cfg.mask_prob_image, cfg.mask_length_image)
        mask_indices = mask_indices.to(x.device)
        x = torch.where(mask_indices[..., None], self.mask_emb.to(x.dtype), x)
        if cfg.mask_channel_prob > 0:
            chan = compute_mask_indices(
                (bsz, dim), None, cfg.mask_channel_prob, cfg.mask_channel_length,
                str(cfg.mask_channel_selection), cfg.mask_channel_other, min_masks=0,
                no_overlap=cfg.no_mask_channel_overlap, min_space=cfg.mask_channel_min_space,
            ).to(x.device)
            x = x.masked_fill(chan[:, None, :], 0.0)
        return x, mask_indices

    def compute_logits(self, feats: torch.Tensor, label_embs: torch.Tensor) -> torch.Tensor:
        """`[N, d]` x `[C, d]` -> `[N, C]` cosine (norm product clamped at 1e-6) or dot, / temp."""
        logits = feats @ label_embs.t()
        if self.sim_type == "cosine":
            denom = feats.norm(dim=-1, keepdim=True) * label_embs.norm(dim=-1)[None]
            logits = logits / denom.clamp(min=1e-6)
        return logits / self.logit_temp

    # ----------------------------------------------------------------- public API
    def forward(
        self,
        source: Dict[str, Optional[torch.Tensor]],
        target_list: Optional[List[torch.Tensor]] = None,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        output_layer: Optional[int] = None,
        mask_audio: Optional[torch.Tensor] = None,
        mask_video: Optional[torch.Tensor] = None,
        modality_drop: str = "sample",
    ) -> Dict[str, Any]:
        """Pre-training forward (reference signature plus optional injected decisions: masks, and
        `modality_drop`, see `drop_modality`; the default "sample" is the reference's behaviour).

        Returns `logit_{m,u}_list`, `target_{m,u}_list`, `padding_mask`, `features_pen`, or with
        `features_only` `{x [B, T, D], padding_mask, features [B, T, D] (zeros at padded frames)}`.
        """
        ref = source.get("audio") if source.get("audio") is not None else source.get("video")
        if self.bf16_autocast and ref is not None and not torch.is_autocast_enabled(ref.device.type):
            with torch.autocast(ref.device.type, dtype=torch.bfloat16):
                out = self.forward(source, target_list, padding_mask, mask, features_only, output_layer,
                                   mask_audio, mask_video, modality_drop)
            return {k: _to_float(v) for k, v in out.items()}
        audio, video = source.get("audio"), source.get("video")
        mask_indices = None
        if mask and self.masking_type == "input":
            audio, video, mask_indices = self.mask_inputs(audio, video, padding_mask, mask_audio, mask_video)
        # The decision comes first: a dropped stream's front-end is not run (its output would be
        # multiplied by zero; the ResNet is ~80 % of a small model's step).
        drop = self.resolve_modality_drop(modality_drop)
        skip = drop != "none" and (video if drop == "audio" else audio) is not None  # the other stream is there
        feats = self.drop_modality(self.encode_modalities(
            None if skip and drop == "audio" else audio, None if skip and drop == "video" else video), drop)
        link = self._zero_gradient_link(drop) if skip and torch.is_grad_enabled() else None
        if link is not None:
            feats[drop] = feats[drop] + link
        features = self.fuse(feats)  # [B, C, T]
        if target_list is not None:
            features, target_list = self.align_targets(features, target_list)
        tsz = features.size(2)
        if padding_mask is not None:
            padding_mask = padding_mask[:, :tsz]
        if mask_indices is not None:
            mask_indices = mask_indices[:, :tsz]
        features_pen = features.float().pow(2).mean()
        features = self.layer_norm(features.transpose(1, 2))  # [B, T, C]
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        x = features
        if mask and self.masking_type == "feature":
            x, mask_indices = self.feature_mask(features, padding_mask, mask_video if mask_video is not None else mask_audio)
        x, _ = self.encoder(x, padding_mask, output_layer)
        if features_only:
            if padding_mask is not None:
                # Reference parity: its encoder zeroes padded frames of this very tensor in place
                features = features.masked_fill(padding_mask[..., None], 0.0)
            return {"x": x, "padding_mask": padding_mask, "features": features}
        if target_list is None:
            raise ValueError("target_list is required unless features_only=True")
        return self.predict(x, target_list, padding_mask, mask_indices, features_pen)

    def predict(
        self, x: torch.Tensor, target_list: List[torch.Tensor], padding_mask: Optional[torch.Tensor],
        mask_indices: Optional[torch.Tensor], features_pen: torch.Tensor,
    ) -> Dict[str, Any]:
        """Cosine logits for masked and unmasked, non-padded frames of each label set."""
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if padding_mask is None else ~padding_mask
        if mask_indices is None:
            mask_indices = torch.zeros_like(valid)
        sel_m, sel_u = mask_indices & valid, ~mask_indices & valid
        label_embs = self.label_embs_concat.split(self.num_classes, 0)
        if self.target_glu is not None:
            label_embs = [self.target_glu(e) for e in label_embs]
        out: Dict[str, Any] = {"padding_mask": padding_mask, "features_pen": features_pen}
        for tag, sel in (("m", sel_m), ("u", sel_u)):
            proj = self.final_proj(x[sel])  # [N, final_dim * n_sets]
            projs = proj.chunk(len(target_list), dim=-1) if self.untie_final_proj else [proj] * len(target_list)
            out[f"logit_{tag}_list"] = [self.compute_logits(p, e) for p, e in zip(projs, label_embs)]
            out[f"target_{tag}_list"] = [t[sel] for t in target_list]
        return out

    def extract_features(
        self, source: Dict[str, Optional[torch.Tensor]], padding_mask: Optional[torch.Tensor] = None,
        mask: bool = False, ret_conv: bool = False, output_layer: Optional[int] = None,
        modality_drop: str = "none",
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """`(features [B, T, D], padding_mask)`; `ret_conv` returns the fused front-end features
        (after LayerNorm, projection and `dropout_input`), zeros at padded frames as the reference.

        No modality dropout unless `modality_drop` asks for it (reference: pre-training only).
        """
        res = self.forward(source, padding_mask=padding_mask, mask=mask, features_only=True,
                           output_layer=output_layer, modality_drop=modality_drop)
        return (res["features"] if ret_conv else res["x"]), res["padding_mask"]

    def extract_finetune(
        self, source: Dict[str, Optional[torch.Tensor]], padding_mask: Optional[torch.Tensor] = None,
        mask: bool = False, ret_conv: bool = False, output_layer: Optional[int] = None,
        modality_drop: str = "none",
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """As `extract_features`, tolerating a missing modality (zeros after its front-end).

        Deviation: the reference ignores `ret_conv` here; it is honoured, with the same meaning
        as in `extract_features` (fused front-end features, zeros at padded frames).
        """
        return self.extract_features(source, padding_mask, mask, ret_conv, output_layer, modality_drop)

    def get_extra_losses(self, net_output: Dict[str, Any]) -> Tuple[List[torch.Tensor], List[str]]:
        return [net_output["features_pen"]], ["features_pen"]

    def remove_pretraining_modules(self) -> None:
        self.target_glu = None
        self.final_proj = None

    def get_logits(self, net_output: Dict[str, Any], is_masked: bool = True) -> List[torch.Tensor]:
        raise NotImplementedError("use net_output['logit_m_list'] / ['logit_u_list']")

    def get_targets(self, net_output: Dict[str, Any], is_masked: bool = True) -> List[torch.Tensor]:
        raise NotImplementedError("use net_output['target_m_list'] / ['target_u_list']")
