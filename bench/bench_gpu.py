"""GPU benchmark: Base pre-training, seq2seq fine-tuning and beam-5 decoding per precision.

For each of `--dtypes` (fp32 / fp16 / bf16) on `--device` (default cuda):
  * Base pre-training step (forward + backward + Adam, audio+video, input masking, the
    `bench_pretrain.BASE` config) at `--batch` x `--frames` (12 x 75 = 3 s clips): s/step, video
    frames/s, peak GPU memory; then the largest batch that fits (doubling, then bisection, up to
    `--max-batch`) with its frames/s and peak memory;
  * Base seq2seq fine-tuning step (encoder + 6-layer decoder, 25 target tokens, encoder not frozen);
  * beam-5 decoding (`avhubert.beam_search` through the seq2seq model: encoder + beam search,
    `--decode-len` tokens per hypothesis, random weights so every hypothesis runs to the limit)
    at each `--decode-batches` (default 1 and 16): utterances/s.
fp16 runs the step under `torch.autocast(float16)` with a `GradScaler`, bf16 under
`torch.autocast(bfloat16)` (fp32 weights and Adam, as fairseq's `common.amp`); decoding casts the
model to the dtype. Options known to pay on GPUs, all on by default on CUDA: `cudnn.benchmark`,
channels-last activations in the ResNet front-end, fused Adam; `--compile` wraps the pre-training
model in `torch.compile`; `--tf32` lets fp32 matmuls/convolutions use TF32.

`--device cpu --size tiny` is a smoke check of the whole script (tests/plugin/test_bench_gpu.py).
Run: `python bench/bench_gpu.py [--dtypes fp32 fp16 bf16] [--compile] [--json out.json]`.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench scripts run from a checkout

from avhubert.beam_search import BeamSearchConfig, beam_search  # noqa: E402
from avhubert.model import AVHubertConfig, AVHubertModel  # noqa: E402
from avhubert.model_asr import AVHubertSeq2Seq, AVHubertSeq2SeqConfig, HubertEncoderWrapper  # noqa: E402
from avhubert.modules.decoder import build_decoder_from_cfg  # noqa: E402
from avhubert.task import AVHubertPretrainingConfig  # noqa: E402
from bench.bench_pretrain import BASE  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
            final_dim=16, resnet_width=8, conv_pos=16, conv_pos_groups=4)
TINY_DECODER = dict(decoder_layers=2, decoder_embed_dim=64, decoder_ffn_embed_dim=128, decoder_attention_heads=4)
BASE_DECODER = dict(decoder_layers=6, decoder_embed_dim=768, decoder_ffn_embed_dim=3072, decoder_attention_heads=4,
                    decoder_normalize_before=True, share_decoder_input_output_embed=True)
NUM_CLASSES, VOCAB, PAD, EOS, UNK = 2000, 1000, 1, 2, 3


def _dictionary(n: int) -> Dictionary:
    d = Dictionary()
    for i in range(n - len(d)):
        d.add_symbol(str(i))
    return d


def encoder_cfg(size: str) -> Any:
    return OmegaConf.merge(OmegaConf.structured(AVHubertConfig), BASE, TINY if size == "tiny" else {})


def build_pretrain(size: str, device: torch.device, channels_last: bool) -> AVHubertModel:
    task = AVHubertPretrainingConfig(data="-", sample_rate=25, label_rate=25)
    model = AVHubertModel(encoder_cfg(size), task, [_dictionary(NUM_CLASSES)])
    model.feature_extractor_video.resnet.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device).train()


def build_seq2seq(size: str, device: torch.device, channels_last: bool) -> AVHubertSeq2Seq:
    w2v = build_pretrain(size, torch.device("cpu"), channels_last)
    w2v.remove_pretraining_modules()
    cfg = OmegaConf.merge(OmegaConf.structured(AVHubertSeq2SeqConfig), {"w2v_path": "-"},
                          TINY_DECODER if size == "tiny" else BASE_DECODER)
    decoder = build_decoder_from_cfg(cfg, VOCAB, PAD, encoder_embed_dim=w2v.cfg.encoder_embed_dim)
    return AVHubertSeq2Seq(HubertEncoderWrapper(w2v, cfg), decoder, cfg).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _optimizer(model: torch.nn.Module, device: torch.device, fused: bool) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=1e-4, fused=True) if fused and device.type == "cuda" else torch.optim.Adam(params, lr=1e-4)


class Stepper:
    """One training step (forward under autocast, scaled backward for fp16, Adam) of `loss_fn`."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], torch.Tensor], device: torch.device,
                 dtype: torch.dtype, fused_adam: bool) -> None:
        self.model, self.loss_fn, self.device, self.dtype = model, loss_fn, device, dtype
        self.opt = _optimizer(model, device, fused_adam)
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def __call__(self) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.loss_fn(self.model)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()

    def time(self, steps: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            self()
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self()
        _sync(self.device)
        return (time.perf_counter() - t0) / steps


def pretrain_loss(batch: int, frames: int, device: torch.device) -> Callable[[torch.nn.Module], torch.Tensor]:
    audio = torch.randn(batch, 104, frames, device=device)
    video = torch.randn(batch, 1, frames, 88, 88, device=device)
    targets = [torch.randint(4, NUM_CLASSES, (batch, frames), device=device)]

    def loss_fn(model: torch.nn.Module) -> torch.Tensor:
        out = model({"audio": audio, "video": video}, targets, None)
        loss = sum(F.cross_entropy(lg.float(), t, reduction="sum") for lg, t in zip(out["logit_m_list"], out["target_m_list"]))
        return loss + 10 * out["features_pen"].float()

    return loss_fn


def seq2seq_loss(batch: int, frames: int, tokens: int, device: torch.device) -> Callable[[torch.nn.Module], torch.Tensor]:
    audio = torch.randn(batch, 104, frames, device=device)
    video = torch.randn(batch, 1, frames, 88, 88, device=device)
    prev = torch.randint(4, VOCAB, (batch, tokens), device=device)
    target = torch.randint(4, VOCAB, (batch, tokens), device=device)
    pad = torch.zeros(batch, frames, dtype=torch.bool, device=device)

    def loss_fn(model: torch.nn.Module) -> torch.Tensor:
        logits, _ = model(source={"audio": audio, "video": video}, padding_mask=pad, prev_output_tokens=prev)
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="sum", label_smoothing=0.1)

    return loss_fn


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def largest_batch(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """Largest batch in [1, limit] for which `fits` is true, within ~6% (doubling from `start`, then
    bisection); 0 if none."""
    lo, hi, b = 0, limit + 1, start  # lo fits (0: none known), hi does not
    while b <= limit and fits(b):
        lo, b = b, b * 2
    hi = min(hi, b)
    while hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def bench_pretrain(args: argparse.Namespace, device: torch.device, name: str) -> Dict[str, Any]:
    dtype = DTYPES[name]
    model = build_pretrain(args.size, device, args.channels_last)
    run_model: torch.nn.Module = torch.compile(model) if args.compile else model
    _reset_peak(device)
    step = Stepper(run_model, pretrain_loss(args.batch, args.frames, device), device, dtype, args.fused_adam)
    per_step = step.time(args.steps)
    row: Dict[str, Any] = {"batch": args.batch, "frames": args.frames, "s_per_step": per_step,
                           "video_frames_per_s": args.batch * args.frames / per_step, "peak_mb": _peak_mb(device)}
    print(f"  pre-training {args.batch} x {args.frames}: {per_step:.4f} s/step, {row['video_frames_per_s']:.0f} video "
          f"frames/s, peak {row['peak_mb']:.0f} MiB", flush=True)
    del step
    if device.type != "cuda" or args.max_batch <= args.batch:
        return row

    def fits(b: int) -> bool:
        _reset_peak(device)
        try:
            Stepper(run_model, pretrain_loss(b, args.frames, device), device, dtype, args.fused_adam).time(1, warmup=1)
            return True
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    best = largest_batch(fits, args.batch, args.max_batch)
    if best:
        _reset_peak(device)
        t = Stepper(run_model, pretrain_loss(best, args.frames, device), device, dtype, args.fused_adam).time(max(2, args.steps // 2))
        row.update(max_batch=best, max_batch_s_per_step=t, max_batch_video_frames_per_s=best * args.frames / t,
                   max_batch_peak_mb=_peak_mb(device))
        print(f"  pre-training largest batch {best} x {args.frames}: {t:.4f} s/step, "
              f"{row['max_batch_video_frames_per_s']:.0f} video frames/s, peak {row['max_batch_peak_mb']:.0f} MiB", flush=True)
    return row


def bench_seq2seq(args: argparse.Namespace, device: torch.device, name: str) -> Dict[str, Any]:
    dtype = DTYPES[name]
    model = build_seq2seq(args.size, device, args.channels_last).train()
    _reset_peak(device)
    step = Stepper(model, seq2seq_loss(args.batch, args.frames, 25, device), device, dtype, args.fused_adam)
    per_step = step.time(args.steps)
    row = {"s2s_s_per_step": per_step, "s2s_peak_mb": _peak_mb(device)}
    print(f"  seq2seq fine-tuning {args.batch} x {args.frames}, 25 tokens: {per_step:.4f} s/step, "
          f"peak {row['s2s_peak_mb']:.0f} MiB", flush=True)
    del step
    model = model.eval().to(dtype)
    cfg = BeamSearchConfig(beam=5, max_len_a=0.0, max_len_b=args.decode_len)
    for bsz in args.decode_batches:
        n = max(1, args.decode_utts // bsz)
        srcs = [{"audio": torch.randn(bsz, 104, args.frames, device=device, dtype=dtype),
                 "video": torch.randn(bsz, 1, args.frames, 88, 88, device=device, dtype=dtype)} for _ in range(n)]
        pad = torch.zeros(bsz, args.frames, dtype=torch.bool, device=device)

        def decode(src: Dict[str, torch.Tensor]) -> List[Any]:
            with torch.inference_mode():
                enc = model.encoder(source=src, padding_mask=pad)
                return beam_search(model.decoder, enc, eos=EOS, pad=PAD, unk=UNK, config=cfg)

        decode(srcs[0])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for src in srcs:
            hyps = decode(src)
        _sync(device)
        dt = time.perf_counter() - t0
        row[f"decode_b{bsz}_utt_per_s"] = n * bsz / dt
        print(f"  beam-5 decoding batch {bsz}: {n * bsz / dt:.2f} utt/s ({dt / n:.3f} s/batch, "
              f"{len(hyps[0][0].tokens)} tokens per best hypothesis)", flush=True)
    return row


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--size", choices=["base", "tiny"], default="base", help="tiny: a CPU smoke check of the script")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--frames", type=int, default=75)
    p.add_argument("--max-batch", type=int, default=1024, help="upper limit of the largest-batch search (<= --batch: no search)")
    p.add_argument("--decode-batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--decode-utts", type=int, default=32, help="utterances decoded per batch size")
    p.add_argument("--decode-len", type=int, default=50, help="tokens per hypothesis")
    p.add_argument("--compile", action="store_true", help="torch.compile the pre-training model")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 matmuls and convolutions")
    p.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--no-fused-adam", dest="fused_adam", action="store_false")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available here (use --device cpu --size tiny for a smoke check)")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {args.size}, cudnn.benchmark={args.cudnn_benchmark}, "
          f"channels_last={args.channels_last}, fused_adam={args.fused_adam}, compile={args.compile}, tf32={args.tf32}",
          flush=True)
    results: Dict[str, Any] = {"device": name, "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    for dt in args.dtypes:
        print(dt, flush=True)
        results[dt] = {**bench_pretrain(args, device, dt), **bench_seq2seq(args, device, dt)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
