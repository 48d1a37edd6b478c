"""Beam-search decoding speed of a Base-size seq2seq decoder on random encoder outputs.

Builds `avhubert.modules.decoder.TransformerDecoder` with the Base fine-tuning sizes (6 layers,
768, FFN 3072, 4 heads, pre-LN, shared embeddings, vocabulary 1000), random weights, and decodes
random 768-d encoder outputs of `--frames` steps (75 = 3 s at 25 Hz) with
`avhubert.beam_search.beam_search` at each `--batch-sizes`. Prints, per batch size, seconds per
batch (and the process's CPU seconds per batch, steadier than wall time on a shared machine),
utterances/s, generated tokens/s (best hypotheses) and peak memory (process max RSS on CPU, which
never decreases across batch sizes; max allocated on CUDA).

Random weights almost never produce eos, so every hypothesis runs to its length limit
`int(max_len_a * frames + max_len_b)`: with the default `--max-len-a 1.0 --max-len-b 0`
(s2s_decode.yaml) that is `--frames` tokens, a worst case. `--max-len-a 0 --max-len-b 50` is the
workload of issue 13 ("Base seq2seq beam 5, 50 tokens"); `--max-len-b 15` a typical 3 s utterance.

`--quantize-decoder int8` times the decoder with int8 linear layers (`avhubert.quantize`, CPU
only) and then decodes the same batches with the float32 decoder (not timed) to count how many
best hypotheses, and how many utterances' whole beams, are identical to the float32 ones. Random
weights give flat next-token distributions, so this count is a pessimistic bound for trained models.

`--compare-ref` also decodes every timed batch with fairseq's own `TransformerDecoder` +
`SequenceGenerator` on the same weights -- the original AV-HuBERT's decoding path, timed the same
way after ours, so the speed-up over the original is measured on this machine -- and checks that
every hypothesis has the same tokens and the same score (1e-4); it exits 1 on a difference.

Example (issue 13's CPU workload):
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.bench_decoding --threads 2 --batch-sizes 1 8 \
        --max-len-a 0 --max-len-b 50 --compare-ref
    (or `PYTHONPATH=. python bench/bench_decoding.py ...` when the package is not installed)
"""

import argparse
import copy
import logging
import resource
import time
from typing import List, Optional, Tuple

import torch

from avhubert.beam_search import BeamSearchConfig, beam_search
from avhubert.modules.decoder import TransformerDecoder
from avhubert.quantize import QUANTIZE_CHOICES, quantize_decoder

logger = logging.getLogger("bench_decoding")

PAD, EOS, UNK = 1, 2, 3  # fairseq dictionary indices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-utterances", type=int, default=16, help="utterances decoded per batch size")
    parser.add_argument("--compare-ref", action="store_true",
                        help="check every hypothesis against fairseq's SequenceGenerator (not timed)")
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
    parser.add_argument("--quantize-decoder", choices=QUANTIZE_CHOICES, default="none",
                        help="int8: time the int8 decoder and count hypotheses equal to float32 ones (CPU, float32)")
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
    float_decoder = None
    if args.quantize_decoder != "none":
        if args.compare_ref:
            raise SystemExit("error: --compare-ref checks the float search against fairseq; drop --quantize-decoder")
        float_decoder = decoder
        try:
            decoder = quantize_decoder(copy.deepcopy(decoder), args.quantize_decoder)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    cfg = BeamSearchConfig(
        beam=args.beam,
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        ctc_weight=args.ctc_weight,
        ctc_pre_beam=args.ctc_pre_beam,
    )
    results, decoded = [], []
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
        outputs = []
        start, cpu_start = time.perf_counter(), time.process_time()
        for batch, ctc in batches:
            out = beam_search(decoder, batch, eos=EOS, pad=PAD, unk=UNK, config=cfg, ctc_log_probs=ctc)
            tokens += sum(len(hyps[0].tokens) for hyps in out)
            outputs.append(out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        utts = n_batches * bsz
        row = dict(batch=bsz, utterances=utts, seconds=elapsed, seconds_per_batch=elapsed / n_batches,
                   cpu_seconds_per_batch=cpu / n_batches,
                   utt_per_s=utts / elapsed, best_tokens_per_s=tokens / elapsed, mean_best_len=tokens / utts,
                   peak_mb=peak_memory_mb(device))
        print(
            f"batch {bsz:3d}: {row['seconds_per_batch']:7.3f} s/batch ({n_batches} batches; process CPU "
            f"{row['cpu_seconds_per_batch']:.3f} s/batch), "
            f"{row['utt_per_s']:7.2f} utt/s, {row['best_tokens_per_s']:8.1f} tokens/s "
            f"(best hypotheses, mean length {row['mean_best_len']:.1f}), peak memory {row['peak_mb']:.0f} MiB",
            flush=True,
        )
        if float_decoder is not None:  # not timed
            row["same_best"], row["same_beam"] = same_as_float(float_decoder, batches, outputs, cfg)
            print(f"batch {bsz:3d}: {args.quantize_decoder} vs float32: best hypothesis identical for "
                  f"{row['same_best']}/{utts} utterances, every beam hypothesis identical for "
                  f"{row['same_beam']}/{utts}",
                  flush=True)
        results.append(row)
        decoded.append((batches, outputs))
    if args.compare_ref:  # after all timings, so that the reference does not count in their peak memory
        for row, (batches, outputs) in zip(results, decoded):
            row["ref_mismatches"], row["ref_seconds_per_batch"], row["ref_cpu_seconds_per_batch"] = compare_with_fairseq(
                decoder, batches, outputs, args, cfg)
            verdict = "identical hypotheses" if row["ref_mismatches"] == 0 else f"{row['ref_mismatches']} DIFFERENT"
            print(f"batch {row['batch']:3d}: {row['utterances']} utterances vs fairseq SequenceGenerator: {verdict}; "
                  f"fairseq's TransformerDecoder + SequenceGenerator (the original's decoding path) "
                  f"{row['ref_seconds_per_batch']:.3f} s/batch (process CPU {row['ref_cpu_seconds_per_batch']:.3f}), "
                  f"this search {row['ref_seconds_per_batch'] / row['seconds_per_batch']:.2f}x faster", flush=True)
    return results


def same_as_float(decoder: TransformerDecoder, batches: list, outputs: list, cfg: BeamSearchConfig) -> Tuple[int, int]:
    """Decode `batches` with the float `decoder` and count the utterances of `outputs` whose best
    hypothesis, and whose every hypothesis, has the same tokens."""
    same_best = same_beam = 0
    for (batch, ctc), out in zip(batches, outputs):
        ref = beam_search(decoder, batch, eos=EOS, pad=PAD, unk=UNK, config=cfg, ctc_log_probs=ctc)
        for hyps, ref_hyps in zip(out, ref):
            tokens, ref_tokens = [h.tokens.tolist() for h in hyps], [h.tokens.tolist() for h in ref_hyps]
            same_best += tokens[0] == ref_tokens[0]
            same_beam += tokens == ref_tokens
    return same_best, same_beam


def compare_with_fairseq(decoder: TransformerDecoder, batches: list, outputs: list, args: argparse.Namespace,
                         cfg: BeamSearchConfig) -> Tuple[int, float, float]:
    """Decode `batches` with fairseq's `TransformerDecoder` + `SequenceGenerator` (same weights, fp32,
    on the CPU: the original AV-HuBERT's decoding path), timed like ours after one warm-up batch.
    Returns (utterances whose tokens of any hypothesis, or a score by more than 1e-4, differ from
    `outputs`; seconds per batch; process CPU seconds per batch); differences are logged."""
    from tests.decoding.helpers import fairseq_reference

    max_len = int(args.max_len_a * args.frames + args.max_len_b)  # every utterance has `frames` steps
    generate = fairseq_reference(copy.deepcopy(decoder).float().cpu(), args.vocab, 768, cfg, max_len=max_len)
    cpu_batches = [{k: v.detach().float().cpu() for k, v in batch.items()} for batch, _ in batches]
    generate(cpu_batches[0])  # warm-up, as for ours
    start, cpu_start = time.perf_counter(), time.process_time()
    refs = [generate(batch) for batch in cpu_batches]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    mismatches = 0
    for ours, ref in zip(outputs, refs):
        for i, (hyps, ref_hyps) in enumerate(zip(ours, ref)):
            same = [h.tokens.tolist() for h in hyps] == [r["tokens"].tolist() for r in ref_hyps] and all(
                abs(h.score - float(r["score"])) <= 1e-4 for h, r in zip(hyps, ref_hyps))
            if not same:
                mismatches += 1
                logger.error("utterance %d: ours %s vs fairseq %s", i,
                             [(h.tokens.tolist(), round(h.score, 5)) for h in hyps],
                             [(r["tokens"].tolist(), round(float(r["score"]), 5)) for r in ref_hyps])
    return mismatches, elapsed / len(batches), cpu / len(batches)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        f"device={args.device} dtype={args.dtype} threads={args.threads} beam={args.beam} frames={args.frames} "
        f"vocab={args.vocab} max_len=({args.max_len_a} * frames + {args.max_len_b}) ctc_weight={args.ctc_weight} "
        f"ctc_pre_beam={args.ctc_pre_beam} quantize_decoder={args.quantize_decoder} torch={torch.__version__}",
        flush=True,
    )
    results = run(args)
    return 1 if any(row.get("ref_mismatches") for row in results) else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
