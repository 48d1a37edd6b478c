"""Config-dataclass helpers shared by the task and the models.

`config_field(default, help)` is a dataclass field with fairseq's `help` metadata (fairseq's
argparse bridge shows it). `DecoderConfigFields` declares the seq2seq decoder's 14 fields once:
`av_hubert_seq2seq` uses them; the pre-training config `av_hubert` carries them unused because the
reference reused one config (stored configs and checkpoints hold them, so names and defaults stay).
"""

from dataclasses import dataclass, field
from typing import Any

__all__ = ["config_field", "DecoderConfigFields"]


def config_field(default: Any, help: str) -> Any:
    """`dataclasses.field(default=default, metadata={"help": help})`."""
    return field(default=default, metadata={"help": help})


@dataclass
class DecoderConfigFields:
    """The transformer decoder's config fields with the reference seq2seq defaults (a mixin: list it
    before the `FairseqDataclass` base so that these fields follow the base's own)."""

    decoder_embed_dim: int = config_field(768, "decoder embedding dim")
    decoder_ffn_embed_dim: int = config_field(3072, "decoder FFN dim")
    decoder_layers: int = config_field(6, "decoder layers")
    decoder_layerdrop: float = config_field(0.0, "decoder layerdrop")
    decoder_attention_heads: int = config_field(4, "decoder attention heads")
    decoder_learned_pos: bool = config_field(False, "learned (vs sinusoidal) decoder positions")
    decoder_normalize_before: bool = config_field(False, "pre-LN decoder (configs: true)")
    no_token_positional_embeddings: bool = config_field(False, "no decoder positions")
    decoder_dropout: float = config_field(0.0, "decoder dropout")
    decoder_attention_dropout: float = config_field(0.0, "decoder attention dropout")
    decoder_activation_dropout: float = config_field(0.0, "decoder activation dropout")
    max_target_positions: int = config_field(2048, "longest target")
    share_decoder_input_output_embed: bool = config_field(False, "tie the output projection to the embeddings")
    no_scale_embedding: bool = config_field(True, "do not scale token embeddings by sqrt(dim)")
