"""A tiny `AVHubertModel` builder shared by the plugin tests (not a test module)."""

from typing import Any

import torch
from fairseq.data import Dictionary
from omegaconf import OmegaConf

from avhubert.model import AVHubertConfig, AVHubertModel
from avhubert.task import AVHubertPretrainingConfig


def tiny_model(num_classes: int = 8, label_rate: int = 25, seed: int = 0, **overrides: Any) -> AVHubertModel:
    cfg = dict(
        label_rate=label_rate, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
        encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, resnet_width=4, final_dim=16,
        audio_feat_dim=104, layer_norm_first=True, untie_final_proj=True, dropout=0.0,
        attention_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0, selection_type="same_seq",
    )
    cfg.update(overrides)
    model_cfg = OmegaConf.merge(OmegaConf.structured(AVHubertConfig), cfg)
    task_cfg = AVHubertPretrainingConfig(data="unused", sample_rate=25, label_rate=label_rate)
    d = Dictionary()
    for i in range(num_classes):
        d.add_symbol(str(i))
    torch.manual_seed(seed)
    return AVHubertModel(model_cfg, task_cfg, [d])


def random_batch(bsz: int = 3, tsz: int = 20, lengths=None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(bsz, 104, tsz, generator=g)
    video = torch.randn(bsz, 1, tsz, 88, 88, generator=g)
    lengths = torch.tensor(lengths if lengths is not None else [tsz] * bsz)
    padding_mask = torch.arange(tsz)[None] >= lengths[:, None]
    audio = audio.masked_fill(padding_mask[:, None, :], 0.0)  # the collater zero-pads
    video = video.masked_fill(padding_mask[:, None, :, None, None], 0.0)
    return audio, video, padding_mask
