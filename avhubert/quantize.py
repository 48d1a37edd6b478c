"""Opt-in int8 seq2seq decoder for CPU decoding (dynamic quantization).

A CPU beam-search step of the Base decoder reads its ~200 MB of float32 linear weights once per
step: that memory traffic, not arithmetic, bounds it. `quantize_decoder` stores the decoder's
linear layers that run at every step (self-attention q/k/v/out projections, encoder-attention
q/out projections, FFN fc1/fc2) as int8 with one scale per output channel
(`torch.ao.nn.quantized.dynamic.Linear`); inputs are quantized to 8 bits on the fly at every
product (fbgemm / qnnpack kernels). The beam-search fast path
(`TransformerDecoder.beam_step`) then runs int8 products too, with q/k/v fused into one.

What stays float32: the encoder, token and position embeddings, layer norms, the output
projection (the shared embedding matrix, or `embed_out`; not an `nn.Linear`, and small), and the
encoder-attention key/value projections: they run once per utterance, not per step, and an input
is quantized with one scale for all its rows, so int8 there would let one utterance's (or padded
frames') large encoder outputs coarsen the keys of the whole batch.

Hypotheses may differ from float32 ones (and, since an input is quantized with one scale for all
its rows, may depend on which utterances share a batch). CPU only: quantized kernels do not run
on CUDA.
"""

import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

__all__ = ["QUANTIZE_CHOICES", "check_quantize_options", "is_quantized", "quantize_decoder", "quantize_model_decoder"]

QUANTIZE_CHOICES = ("none", "int8")  # "none": the float decoder
_FLOAT_LINEARS = ("encoder_attn.k_proj", "encoder_attn.v_proj")  # once per utterance: kept float32


def _normalise(kind: Optional[str]) -> str:
    kind = "none" if kind is None else str(kind).lower()
    if kind not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize_decoder must be one of {', '.join(QUANTIZE_CHOICES)}, got {kind!r}")
    return kind


def check_quantize_options(kind: Optional[str], device: Union[str, torch.device]) -> bool:
    """Validate a `quantize_decoder` choice (None / "none" / "int8") for decoding on `device`;
    True when the decoder is to be quantized. Raises ValueError for an unknown choice, for int8
    on a non-CPU device, or when this torch build has no quantized CPU engine."""
    if _normalise(kind) == "none":
        return False
    device = torch.device(device)
    if device.type != "cpu":
        raise ValueError(f"quantize_decoder=int8 runs on the CPU only (dynamic int8 kernels), but decoding is on "
                         f"{device}; decode on the CPU (infer_s2s: common.cpu=true; transcribe: --device cpu; "
                         "avhubert.load: device='cpu') or drop the option")
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        raise ValueError("quantize_decoder=int8: this torch build has no quantized CPU engine (fbgemm / qnnpack)")
    return True


def is_quantized(decoder: nn.Module) -> bool:
    """Whether `decoder` has int8 dynamically quantized linear layers."""
    import torch.ao.nn.quantized.dynamic as nnqd

    return any(isinstance(m, nnqd.Linear) for m in decoder.modules())


def quantize_decoder(decoder: nn.Module, kind: str = "int8") -> nn.Module:
    """Replace the `nn.Linear` layers of `decoder` (in place; also returned) with int8 dynamically
    quantized ones, weights quantized per output channel, except the encoder-attention key/value
    projections (`*.encoder_attn.{k,v}_proj`, once per utterance; see the module docstring).
    `decoder` must be on the CPU, float32, and is put in eval mode. Raises ValueError on another
    device or dtype, or for an unknown kind."""
    if not check_quantize_options(kind, "cpu"):
        return decoder
    devices = {p.device for p in decoder.parameters()} | {b.device for b in decoder.buffers()}
    if any(d.type != "cpu" for d in devices):
        raise ValueError(f"quantize_decoder=int8 runs on the CPU only; the decoder is on "
                         f"{', '.join(sorted(str(d) for d in devices))}. Move the model to the CPU first")
    linears = {name: m for name, m in decoder.named_modules()
               if type(m) is nn.Linear and not name.endswith(_FLOAT_LINEARS)}
    if not linears:
        raise ValueError(f"{type(decoder).__name__} has no float nn.Linear layers to quantize (already quantized?)")
    dtypes = {m.weight.dtype for m in linears.values()}
    if dtypes != {torch.float32}:
        raise ValueError(f"quantize_decoder=int8 needs a float32 decoder, got {sorted(map(str, dtypes))} "
                         "(no fp16 / bf16 with int8)")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    decoder.eval()
    with warnings.catch_warnings():  # torch 2.13 flags torch.ao.quantization and quantized tensors as deprecated
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions", category=UserWarning)
        quantize_dynamic(decoder, {name: per_channel_dynamic_qconfig for name in linears}, dtype=torch.qint8,
                         inplace=True)
    decoder.train(False)  # drops step weights built from the float layers (TransformerDecoder)
    return decoder


def quantize_model_decoder(model: Any, kind: Optional[str], device: Union[str, torch.device]) -> bool:
    """Quantize the seq2seq decoder (`model.decoder`) of a loaded model as `kind` asks (None /
    "none": nothing); True when it was quantized. Raises ValueError for models without a seq2seq
    decoder (CTC, pre-training) and for the cases of `check_quantize_options`."""
    if not check_quantize_options(kind, device):
        return False
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Module) or not hasattr(decoder, "init_beam_cache"):
        raise ValueError(f"quantize_decoder=int8 applies to seq2seq models (av_hubert_seq2seq); "
                         f"{type(model).__name__} has no seq2seq decoder")
    quantize_decoder(decoder, kind or "int8")
    return True
