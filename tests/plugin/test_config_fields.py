"""Config fields declared once: the decoder's 14 fields (shared by `av_hubert` and `av_hubert_seq2seq`,
names and defaults as the reference's, since stored configs and checkpoints carry them) and one
`config_field` helper."""

import ast
import dataclasses
from pathlib import Path

from avhubert.config_fields import DecoderConfigFields
from avhubert.model import AVHubertConfig
from avhubert.model_asr import AVHubertCtcConfig, AVHubertSeq2SeqConfig

SEQ2SEQ_DECODER_DEFAULTS = {  # reference AVHubertSeq2SeqConfig
    "decoder_embed_dim": 768, "decoder_ffn_embed_dim": 3072, "decoder_layers": 6, "decoder_layerdrop": 0.0,
    "decoder_attention_heads": 4, "decoder_learned_pos": False, "decoder_normalize_before": False,
    "no_token_positional_embeddings": False, "decoder_dropout": 0.0, "decoder_attention_dropout": 0.0,
    "decoder_activation_dropout": 0.0, "max_target_positions": 2048, "share_decoder_input_output_embed": False,
    "no_scale_embedding": True,
}
PRETRAIN_DECODER_DEFAULTS = {**SEQ2SEQ_DECODER_DEFAULTS, "decoder_dropout": 0.1, "decoder_attention_dropout": 0.1}


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_decoder_fields_once_with_the_reference_names_and_defaults():
    names = [f.name for f in dataclasses.fields(DecoderConfigFields)]
    assert names == list(SEQ2SEQ_DECODER_DEFAULTS)
    seq2seq, pretrain = _defaults(AVHubertSeq2SeqConfig), _defaults(AVHubertConfig)
    assert {k: seq2seq[k] for k in names} == SEQ2SEQ_DECODER_DEFAULTS
    assert {k: pretrain[k] for k in names} == PRETRAIN_DECODER_DEFAULTS
    assert not set(names) & set(_defaults(AVHubertCtcConfig))  # the CTC model has no decoder


def test_field_order_is_kept():
    """Own fields first, then the decoder's (then `ctc_weight`), as the configs were declared."""
    n = len(SEQ2SEQ_DECODER_DEFAULTS)
    assert [f.name for f in dataclasses.fields(AVHubertConfig)][-n:] == list(SEQ2SEQ_DECODER_DEFAULTS)
    seq2seq = [f.name for f in dataclasses.fields(AVHubertSeq2SeqConfig)]
    assert seq2seq[-n - 1 : -1] == list(SEQ2SEQ_DECODER_DEFAULTS) and seq2seq[-1] == "ctc_weight"
    assert seq2seq[:2] == ["_name", "w2v_path"]


def test_no_local_copy_of_the_field_helper():
    plugin = Path(__file__).resolve().parents[2] / "avhubert"
    copies = [f"{p.name}:{node.lineno}" for p in plugin.rglob("*.py")
              for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
              if isinstance(node, ast.FunctionDef) and node.name in ("_f", "config_field") and p.name != "config_fields.py"]
    assert copies == []
