"""Beam-search decoding speed of a Base-size seq2seq decoder on random encoder outputs.

Builds `avhubert.modules.decoder.TransformerDecoder` with the Base fine-tuning sizes (6 layers,
768, FFN 3072, 4 heads, pre-LN, shared embeddings, vocabulary 1000), random weights, and decodes
random 768-d encoder outputs of `--frames` steps (75 = 3 s at 25 Hz) with
`avhubert.beam_search.beam_search` at each `--batch-sizes`. Prints wall time, utterances/s,
generated tokens/s and peak memory (process max RSS on CPU; max allocated on CUDA).

Random weights almost never produce eos, so with the default `--max-len-a 1.0 --max-len-b 0`
(s2s_decode.yaml) every hypothesis runs to the limit of `--frames` tokens: a worst case. Use
`--max-len-a 0 --max-len-b 15` for a typical 3 s utterance length.

Example:
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.bench_decoding --threads 2 --batch-sizes 1 8
    (or `PYTHONPATH=. python bench/bench_decoding.py ...` when the package is not installed)
"""

import argparse
import logging
import resource
import time
from typing import List, Optional

import torch

from avhubert.beam_search import BeamSearchConfig, beam_search
from avhubert.modules.decoder import TransformerDecoder

logger = logging.getLogger("bench_decoding")

PAD, EOS, UNK = 1, 2, 3  # fairseq dictionary indices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-utterances", type=int, default=16, help="utterances decoded per batch size")
    parser.add_argument("--frames", type=int, default=75, help="encoder time steps per utterance")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-len-a", type=float, default=1.0)
    parser.add_argument("--max-len-b", type=int, default=0)
    parser.add_argument("--ctc-weight", type=float, default=0.0, help=">0: joint CTC scoring with random CTC log-probs")
    parser.add_argument(
        "--ctc-pre-beam", type=int, default=0, help="CTC-score only this many attention candidates (0 = all)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def base_decoder(vocab: int) -> TransformerDecoder:
    """Base seq2seq decoder (spec §3.7): 6 layers, 768, FFN 3072, 4 heads, pre-LN, shared embeddings."""
    return TransformerDecoder(
        vocab,
        PAD,
        embed_dim=768,
        ffn_embed_dim=3072,
        layers=6,
        attention_heads=4,
        encoder_embed_dim=768,
        normalize_before=True,
        share_input_output_embed=True,
        no_scale_embedding=True,
    ).eval()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(args: argparse.Namespace) -> List[dict]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    decoder = base_decoder(args.vocab).to(device=device, dtype=dtype)
    cfg = BeamSearchConfig(
        beam=args.beam,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        ctc_weight=args.ctc_weight,
        ctc_pre_beam=args.ctc_pre_beam,
    )
    results = []
    for bsz in args.batch_sizes:
        n_batches = max(1, args.num_utterances // bsz)
        batches = []
        for _ in range(n_batches):
            enc = torch.randn(args.frames, bsz, 768, device=device, dtype=dtype)
            mask = torch.zeros(bsz, args.frames, dtype=torch.bool, device=device)
            batch = {"encoder_out": enc, "encoder_padding_mask": mask}
            ctc = None
            if args.ctc_weight:
                ctc = torch.log_softmax(torch.randn(bsz, args.frames, args.vocab, device=device), -1)
            batches.append((batch, ctc))
        # warm-up
        beam_search(decoder, batches[0][0], eos=EOS, pad=PAD, unk=UNK, config=cfg, ctc_log_probs=batches[0][1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        tokens = 0
        start = time.perf_counter()
        for batch, ctc in batches:
            out = beam_search(decoder, batch, eos=EOS, pad=PAD, unk=UNK, config=cfg, ctc_log_probs=ctc)
            tokens += sum(len(hyps[0].tokens) for hyps in out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        utts = n_batches * bsz
        row = dict(batch=bsz, utterances=utts, seconds=elapsed, utt_per_s=utts / elapsed,
                   best_tokens_per_s=tokens / elapsed, mean_best_len=tokens / utts, peak_mb=peak_memory_mb(device))
        results.append(row)
        print(
            f"batch {bsz:3d}: {utts} utts in {elapsed:7.2f} s = {row['utt_per_s']:7.2f} utt/s, "
            f"{row['best_tokens_per_s']:8.1f} best-hyp tokens/s (mean length {row['mean_best_len']:.1f}), "
            f"peak memory {row['peak_mb']:.0f} MiB",
            flush=True,
        )
    return results


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        f"device={args.device} dtype={args.dtype} threads={args.threads} beam={args.beam} frames={args.frames} "
        f"vocab={args.vocab} max_len=({args.max_len_a} * frames + {args.max_len_b}) ctc_weight={args.ctc_weight} "
        f"ctc_pre_beam={args.ctc_pre_beam} torch={torch.__version__}",
        flush=True,
    )
    run(args)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
