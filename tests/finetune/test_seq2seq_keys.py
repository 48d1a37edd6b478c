"""Base/Large `av_hubert_seq2seq` state-dict keys and shapes equal the released listings."""

import json

import pytest
import torch
from fairseq.data import Dictionary
from omegaconf import OmegaConf

from avhubert.model import AVHubertConfig, AVHubertModel
from avhubert.model_asr import AVHubertSeq2Seq, AVHubertSeq2SeqConfig, HubertEncoderWrapper
from avhubert.modules.decoder import build_decoder_from_cfg
from avhubert.task import AVHubertPretrainingConfig
from tests.plugin.test_state_dict_keys import assert_same_layout


def _dict(n: int) -> Dictionary:
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"s{i}")
    return d


def seq2seq_on_meta(spec_keys, size: str):
    """The released `size` seq2seq model on meta tensors (no memory), and its key/shape listing."""
    s2s = json.loads((spec_keys / f"keys_shapes_seq2seq_{size}_lrs3_433h.json").read_text())
    pre = json.loads((spec_keys / f"keys_shapes_pretrain_{size}_lrs3_iter5.json").read_text())
    enc_cfg = OmegaConf.merge(OmegaConf.structured(AVHubertConfig), {k: v for k, v in pre["model_cfg"].items() if k != "_name"})
    cfg = OmegaConf.merge(OmegaConf.structured(AVHubertSeq2SeqConfig),
                          {k: v for k, v in s2s["model_cfg"].items() if k not in ("_name", "w2v_args", "normalize", "data")})
    tgt = _dict(s2s["dictionary"]["n_symbols_in_file"])
    assert len(tgt) == s2s["dictionary"]["len_Dictionary"]
    with torch.device("meta"):
        w2v = AVHubertModel(enc_cfg, AVHubertPretrainingConfig(data="-", sample_rate=25, label_rate=25),
                            [_dict(pre["dictionary"]["n_symbols_in_file"])])
        w2v.remove_pretraining_modules()
        decoder = build_decoder_from_cfg(cfg, len(tgt), tgt.pad(), encoder_embed_dim=w2v.cfg.encoder_embed_dim)
        model = AVHubertSeq2Seq(HubertEncoderWrapper(w2v, cfg), decoder, cfg)
    return model, s2s


@pytest.mark.parametrize("size", ["base", "large"])
def test_seq2seq_keys_match_listing(size, spec_keys):
    model, s2s = seq2seq_on_meta(spec_keys, size)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == s2s["state_dict"]
    assert_same_layout(model, s2s)
