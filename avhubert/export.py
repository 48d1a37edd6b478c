"""Export a checkpoint: the AV-HuBERT encoder to ONNX or TorchScript, or the weights to safetensors.

    python -m avhubert.export --checkpoint CKPT --format onnx|torchscript|safetensors [--out DIR]
        [--modality audio video audio-visual] [--no-padding-mask] [--layer K] [--atol 1e-4]

CKPT: a fairseq checkpoint (pre-training `av_hubert`, fine-tuned `av_hubert_seq2seq` /
`av_hubert_ctc`, released ones included) or a folder / `.safetensors` file this command wrote.

- `onnx` / `torchscript`: one file per modality, `encoder_{audio,video,audio_visual}.{onnx,pt}`.
  Inputs: `audio` `[B, F, T]` float (F = 26 * stack_order_audio, stacked log filterbanks),
  `video` `[B, 1, T, H, W]` float (normalized grayscale mouth crops), `padding_mask` `[B, T]`
  bool, True = padded frame (all False for unpadded batches; left out with `--no-padding-mask`).
  Outputs: `features` `[B, T, D]` (the encoder output, or layer K's with `--layer K`), plus
  `logits` `[B, T, V]` for CTC models (and seq2seq models with a CTC head). Batch and length are
  dynamic. After writing, each file is run (onnxruntime / `torch.jit.load`) on random inputs of
  two other lengths and batch sizes and compared with the PyTorch model; the max abs difference
  is printed and a file above `--atol` is not kept (exit status 1). `export.json` beside them
  lists the files, their inputs and outputs, the preprocessing settings and the differences.
- `safetensors`: `model.safetensors` + `config.json` (+ `sentencepiece.model`), loadable without
  pickle (`avhubert.safetensors_io.load_safetensors`, `avhubert.load`), checked by loading it back.
"""

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from avdata.atomic import atomic_path, temp_name, write_text
from torch import nn

from .checkpoint import exit_on_checkpoint_error
from .model import AVHubertModel
from .safetensors_io import find_av_hubert, load_safetensors, load_safetensors_with_task, save_safetensors

__all__ = ["FORMATS", "MODALITY_CHOICES", "EncoderExport", "ExportCheckError", "load_for_export", "ctc_head",
           "export_onnx", "export_torchscript", "check_export", "export_checkpoint", "main"]

FORMATS = ("onnx", "torchscript", "safetensors")
MODALITY_CHOICES = ("audio", "video", "audio-visual")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
# (batch, length, valid length of the last item) of the example used to trace, and of the checks
EXAMPLE = (2, 12, 9)
CHECKS = ((3, 7, 4), (1, 23, 23))


class ExportCheckError(RuntimeError):
    """An exported file whose outputs differ from the PyTorch model's by more than the tolerance."""


def ctc_head(model: nn.Module) -> Optional[nn.Linear]:
    """The projection to CTC logits: `w2v_encoder.proj` (`av_hubert_ctc`), `ctc_proj` (seq2seq with a
    CTC head), else None."""
    head = getattr(getattr(model, "w2v_encoder", None), "proj", None)
    return head if head is not None else getattr(model, "ctc_proj", None)


class EncoderExport(nn.Module):
    """The encoder of one modality setting as a module of positional tensor inputs, for tracing.

    `forward(*inputs)` takes the tensors named by `input_names` (`audio`, `video`,
    `padding_mask`) and returns `features` `[B, T, D]` (and `logits` `[B, T, V]` with a CTC head):
    the model's `extract_finetune` (eval mode, no masking, a missing modality is zeros after its
    front-end). It calls the model's submodules; only the visual stem differs with
    `conv3d_stem=True`: the 3-D convolution runs as `nn.Conv3d` (an ONNX Conv) instead of the
    model's CPU path (frames stacked as channels of a 2-D convolution, same weights).
    Trace it with a padded example: the encoder's "any padding?" test is fixed at trace time, and
    the padded branch gives the same result for unpadded inputs.
    """

    def __init__(self, model: nn.Module, modality: str, padding_mask: bool = True, layer: Optional[int] = None,
                 conv3d_stem: bool = False) -> None:
        super().__init__()
        if modality not in MODALITY_CHOICES:
            raise ValueError(f"modality must be one of {', '.join(MODALITY_CHOICES)}, got {modality!r}")
        av = find_av_hubert(model)
        self._model = (model, av)  # a tuple: not registered, so the traced file holds only the parts used
        n_layers = len(av.encoder.layers)
        if layer is not None and not 1 <= layer <= n_layers:
            raise ValueError(f"layer must be in 1..{n_layers}, got {layer}")
        self.streams = ["audio", "video"] if modality == "audio-visual" else [modality]
        self.front_ends = nn.ModuleDict({s: getattr(av, f"feature_extractor_{s}") for s in self.streams})
        self.modality_fuse = av.modality_fuse
        self.layer_norm, self.post_extract_proj, self.encoder = av.layer_norm, av.post_extract_proj, av.encoder
        self.head = ctc_head(model) if layer is None else None
        self.input_names = self.streams + (["padding_mask"] if padding_mask else [])
        self.output_names = ["features"] + (["logits"] if self.head is not None else [])
        self.layer, self.conv3d_stem = layer, conv3d_stem

    @property
    def av(self) -> AVHubertModel:
        """The model's `AVHubertModel` (not a submodule of the wrapper)."""
        return self._model[1]

    def _video_trunk(self, video: torch.Tensor) -> torch.Tensor:
        """`[B, 1, T, H, W] -> [B, C, T]` through the ResNet."""
        resnet = self.front_ends["video"].resnet
        if not self.conv3d_stem:
            return resnet(video)
        batch, _, time = video.shape[:3]
        x = resnet.frontend3D(video).transpose(1, 2).flatten(0, 1)  # [B*T, w, H', W']
        return resnet.trunk(x).view(batch, time, -1).transpose(1, 2)

    def _front_end(self, x: torch.Tensor, stream: str) -> torch.Tensor:
        """`SubModel.forward` of one stream -> `[B, D, T]`."""
        sub = self.front_ends[stream]
        if sub.resnet is not None:
            x = self._video_trunk(x)
        x = sub.proj(x.transpose(1, 2))  # [B, T, D]
        if sub.encoder is not None:
            x = sub.encoder(x)[0]
        return x.transpose(1, 2)

    def forward(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs))
        feats = {s: self._front_end(named[s], s) for s in self.streams}
        for s in ("audio", "video"):
            feats.setdefault(s, torch.zeros_like(feats[self.streams[0]]))
        if self.modality_fuse == "concat":  # AVHubertModel.fuse
            fused = torch.cat([feats["audio"], feats["video"]], dim=1)  # [B, 2D, T]
        else:
            fused = feats["audio"] + feats["video"]
        x = self.layer_norm(fused.transpose(1, 2))  # [B, T, C]
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x, _ = self.encoder(x, named.get("padding_mask"), self.layer)  # [B, T, D]
        return (x,) if self.head is None else (x, self.head(x))


def reference_outputs(model: nn.Module, wrapper: EncoderExport, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """What the PyTorch model's own forward gives for `inputs` (the wrapper's input layout)."""
    named = dict(zip(wrapper.input_names, inputs))
    source, pad = {s: named.get(s) for s in ("audio", "video")}, named.get("padding_mask")
    with torch.no_grad():
        x, _ = wrapper.av.extract_finetune(source, pad, output_layer=wrapper.layer)
        if wrapper.head is None:
            return [x]
        if hasattr(model, "w2v_encoder"):  # av_hubert_ctc
            return [x, model.w2v_encoder(source=source, padding_mask=pad, tbc=False)["encoder_out"]]
        encoder_out = model.encoder(source=source, padding_mask=pad)["encoder_out"]  # [T, B, D]
        return [x, model.ctc_proj(encoder_out).transpose(0, 1)]


def example_inputs(wrapper: EncoderExport, batch: int, length: int, valid: int, task_cfg: Any,
                   seed: int = 0) -> List[torch.Tensor]:
    """Random inputs in the wrapper's layout; the last item is padded after `valid` frames (zeros, as
    the collater pads)."""
    g = torch.Generator().manual_seed(seed)
    pad = torch.arange(length)[None] >= torch.tensor([length] * (batch - 1) + [valid])[:, None]  # [B, T]
    crop = int(getattr(task_cfg, "image_crop_size", 88))
    out = []
    for name in wrapper.input_names:
        if name == "audio":
            x = torch.randn(batch, wrapper.av.cfg.audio_feat_dim, length, generator=g)
            out.append(x.masked_fill(pad[:, None], 0.0))
        elif name == "video":
            x = torch.randn(batch, 1, length, crop, crop, generator=g)
            out.append(x.masked_fill(pad[:, None, :, None, None], 0.0))
        else:
            out.append(pad)
    return out


def _dynamic_axes(wrapper: EncoderExport) -> Dict[str, Dict[int, str]]:
    time_axis = {"audio": 2, "video": 2, "padding_mask": 1, "features": 1, "logits": 1}
    return {n: {0: "batch", time_axis[n]: "time"} for n in wrapper.input_names + wrapper.output_names}


def export_onnx(wrapper: EncoderExport, example: Sequence[torch.Tensor], path: Path) -> None:
    """Trace `wrapper` on `example` into an ONNX file with dynamic batch and time axes."""
    with torch.no_grad(), warnings.catch_warnings():
        # torch's TorchScript-based exporter (deprecated for torch.export's, which takes ~10x longer here
        # and gives the same graph); the tracer warns about the padding test fixed at trace time (see EncoderExport)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, tuple(example), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=wrapper.input_names, output_names=wrapper.output_names,
                          dynamic_axes=_dynamic_axes(wrapper))


def export_torchscript(wrapper: EncoderExport, example: Sequence[torch.Tensor], path: Path) -> None:
    """Trace `wrapper` on `example` (`torch.jit.trace`) and save it."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, tuple(example), check_trace=False)
    torch.jit.save(traced, str(path))


def _run_exported(fmt: str, path: Path) -> Any:
    """A callable `inputs -> list of numpy outputs` for an exported file."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda inputs: session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    module = torch.jit.load(str(path), map_location="cpu")

    def run(inputs: Sequence[torch.Tensor]) -> List[np.ndarray]:
        with torch.no_grad():
            out = module(*inputs)
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    return run


def check_export(fmt: str, path: Path, model: nn.Module, wrapper: EncoderExport, task_cfg: Any,
                 atol: float = 1e-4, shapes: Sequence[Tuple[int, int, int]] = CHECKS) -> float:
    """Max abs difference between the exported file's outputs and the PyTorch model's on random inputs of
    the given `(batch, length, valid length of the last item)`, with and without padding; raises
    `ExportCheckError` above `atol`."""
    run = _run_exported(fmt, path)
    worst = 0.0
    for i, (batch, length, valid) in enumerate(shapes):
        inputs = example_inputs(wrapper, batch, length, valid, task_cfg, seed=i + 1)
        expected = reference_outputs(model, wrapper, inputs)
        got = run(inputs)
        for name, e, g in zip(wrapper.output_names, expected, got):
            if tuple(g.shape) != tuple(e.shape):
                raise ExportCheckError(f"{path}: output {name} has shape {tuple(g.shape)}, the model gives "
                                       f"{tuple(e.shape)} (batch {batch}, length {length})")
            worst = max(worst, float(np.abs(g - e.numpy()).max()))
    if not worst <= atol:  # also catches NaN
        raise ExportCheckError(f"{path}: outputs differ from the PyTorch model's by up to {worst:.3g} "
                               f"(tolerance {atol:g})")
    return worst


def load_for_export(checkpoint: str) -> Tuple[nn.Module, Dict[str, Any], Any]:
    """`(model in eval mode, config dict, task)` from a fairseq checkpoint or an exported safetensors folder."""
    path = Path(checkpoint)
    if path.is_dir() or path.suffix == ".safetensors":
        return load_safetensors_with_task(path)
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    with exit_on_checkpoint_error():
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], strict=True)
    model = models[0].eval()
    if getattr(model, "lora_base", None) is not None:  # a LoRA checkpoint exports full weights (avhubert.merge_lora)
        model.merge_adapters()
        cfg.model.lora_r = 0
    return model, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), task


def default_modalities(task_cfg: Any) -> List[str]:
    """All three settings when the task has both streams, else the task's one."""
    mods = list(getattr(task_cfg, "modalities", None) or ["audio", "video"])
    return list(MODALITY_CHOICES) if set(mods) == {"audio", "video"} else mods


def _task_settings(task_cfg: Any) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    keys = ("modalities", "normalize", "stack_order_audio", "image_crop_size", "image_mean", "image_std",
            "sample_rate", "label_rate")
    values = {k: getattr(task_cfg, k) for k in keys if hasattr(task_cfg, k)}
    return {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in values.items()}


def _export_safetensors(model: nn.Module, cfg: Dict[str, Any], task: Any, out: Path) -> Dict[str, Any]:
    start = time.perf_counter()
    weights = save_safetensors(model, cfg, out, task=task)
    loaded, _ = load_safetensors(out)
    mine, theirs = model.state_dict(), loaded.state_dict()
    same = mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    if not same:
        raise ExportCheckError(f"{weights}: the state dict loaded back differs from the model's")
    return {"file": weights.name, "bytes": weights.stat().st_size, "seconds": round(time.perf_counter() - start, 2),
            "max_abs_diff": 0.0}


def export_checkpoint(checkpoint: str, fmt: str, out: str | Path, modalities: Optional[Sequence[str]] = None,
                      padding_mask: bool = True, layer: Optional[int] = None, atol: float = 1e-4,
                      log: Any = print) -> Dict[str, Any]:
    """Export `checkpoint` in format `fmt` into folder `out`; returns the `export.json` summary.

    Raises `ExportCheckError` (after exporting the other modalities) when a file fails its check;
    that file is not written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, cfg, task = load_for_export(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task_cfg = task.cfg
    summary: Dict[str, Any] = {"checkpoint": str(checkpoint), "format": fmt, "model": cfg["model"].get("_name"),
                               "task": _task_settings(task_cfg), "files": []}
    if fmt == "safetensors":
        entry = _export_safetensors(model, cfg, task, out)
        log(f"{out / entry['file']}: {entry['bytes'] / 1e6:.1f} MB, loaded back without pickle, state dict equal "
            f"({entry['seconds']:.1f} s)")
        summary["files"].append(entry)
        return summary
    failures = []
    for modality in modalities or default_modalities(task_cfg):
        wrapper = EncoderExport(model, modality, padding_mask=padding_mask, layer=layer,
                                conv3d_stem=fmt == "onnx").eval()
        example = example_inputs(wrapper, *EXAMPLE, task_cfg)
        path = out / f"encoder_{modality.replace('-', '_')}{SUFFIX[fmt]}"
        start = time.perf_counter()
        try:
            with atomic_path(path) as tmp:
                (export_onnx if fmt == "onnx" else export_torchscript)(wrapper, example, tmp)
                diff = check_export(fmt, tmp, model, wrapper, task_cfg, atol)
        except ExportCheckError as e:
            failures.append(str(e).replace(str(temp_name(path)), str(path)))
            log(f"FAILED {failures[-1]}")
            continue
        seconds = time.perf_counter() - start
        entry = {"file": path.name, "modality": modality, "inputs": wrapper.input_names,
                 "outputs": wrapper.output_names, "layer": layer, "bytes": path.stat().st_size,
                 "seconds": round(seconds, 2), "max_abs_diff": diff}
        summary["files"].append(entry)
        log(f"{path}: max abs diff {diff:.2e} vs PyTorch ({'onnxruntime' if fmt == 'onnx' else 'torch.jit.load'}, "
            f"lengths {', '.join(str(c[1]) for c in CHECKS)}), {entry['bytes'] / 1e6:.1f} MB, {seconds:.1f} s")
    write_text(out / "export.json", json.dumps(summary, indent=1) + "\n")
    if failures:
        raise ExportCheckError("; ".join(failures))
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m avhubert.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--checkpoint", required=True, help="fairseq checkpoint (.pt) or exported safetensors folder/file")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", help="output folder (default: ./<checkpoint name>_<format>)")
    p.add_argument("--modality", nargs="+", choices=MODALITY_CHOICES,
                   help="encoder input settings to export (default: all three when the checkpoint's task has "
                        "both streams, else its one)")
    p.add_argument("--no-padding-mask", action="store_true", help="graphs without the padding_mask input")
    p.add_argument("--layer", type=int, help="output the features of transformer layer K (1-based) instead of the "
                                             "encoder output (no logits then)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed vs PyTorch (default 1e-4)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or f"{Path(args.checkpoint).name.removesuffix('.pt').removesuffix('.safetensors')}_{args.format}"
    try:
        export_checkpoint(args.checkpoint, args.format, out, args.modality, not args.no_padding_mask, args.layer,
                          args.atol)
    except ExportCheckError as e:
        print(f"error: {e}")
        return 1
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
