"""Full fine-tuning vs LoRA vs an LLM decoder with LoRA, on the demo corpus (issue 15's table).

    python -m demo.compare_finetuning [--out-dir demo_out] [--updates 400] [--beam 3]

Reuses (or runs) `make demo`'s stages 1-3 in `--out-dir` (corpus, clusters, pre-training), builds a
tiny local causal LM on the training transcripts (`demo.tiny_llm`, no download), then fine-tunes
the same pre-trained encoder three ways with the demo recipe (audio-visual, babble augmentation,
modality dropout, `--updates` updates, seed fixed):

- `seq2seq full`: conf/demo/finetune.yaml, every weight trains (the demo itself fine-tunes with CTC,
  conf/demo/finetune_ctc.yaml; this table compares seq2seq-based methods);
- `seq2seq LoRA`: the same with `model.lora_r=8` on the encoder's attention projections (its base
  weights frozen, the decoder trains);
- `LLM + LoRA`: conf/demo/finetune_llm.yaml, encoder LoRA -> 2x frame stacking -> projector -> the
  tiny LM with LoRA on its attention projections;
- `LLM + LoRA, encoder trained`: the same with every encoder weight trained (LoRA on the LM only).

Each is decoded on the unseen test speakers with audio, video and audio-visual input (clean).
Trainable / total parameters, peak RSS and time per update come from each run's `metrics.json`
(avhubert/run_records.py). Writes `compare_finetuning/results.{md,json}` and prints the table;
every finished run or decode is reused on a rerun.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .run import _banner, _done, decode_grid, finetune_overrides, hydra_train, prepare_pretrained, run_logged

logger = logging.getLogger("demo.compare_finetuning")

MODES = ("audio", "video", "audio-visual")


def build_tiny_lm(data: Path, out: Path, seed: int) -> Path:
    """The demo's tiny causal LM (Llama-style, hidden 128 like the seq2seq decoder), trained on train.wrd."""
    if not _done(out / "config.json"):
        run_logged([sys.executable, "-m", "demo.tiny_llm", "--text", str(data / "train.wrd"), "--out", str(out),
                    "--hidden-size", "128", "--layers", "2", "--steps", "300", "--seed", str(seed)],
                   out.parent / "tiny_lm.log", show=("loss", "wrote"))
    return out


def write_table(out: Path, rows: Dict[str, Dict]) -> str:
    lines = ["# Fine-tuning methods on the demo corpus: test WER (%) on unseen speakers, clean audio", "",
             "| method | trainable params | total params | peak RSS (MB) | s / update | audio | video | audio-visual |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        wer = r["wer"]
        lines.append(f"| {name} | {r['params_trainable']:,} ({100 * r['params_trainable'] / r['params_total']:.1f} %) "
                     f"| {r['params_total']:,} | {r['peak_rss_mb']:.0f} | {r['time_per_update_s']:.3f} | "
                     + " | ".join(f"{wer[m]['clean']:.1f}" for m in MODES) + " |")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return text


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="demo_out", help="make demo's output folder (stages 1-3 reused or run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-updates", type=int, default=400)
    p.add_argument("--n-clusters", type=int, default=50)
    p.add_argument("--updates", type=int, default=400, help="fine-tuning updates of each method")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=2)
    a = p.parse_args(argv)
    out = Path(a.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data, paths, pre_ckpt = prepare_pretrained(out, a.seed, a.num_workers, a.n_clusters, a.pretrain_updates)
    cmp_dir = out / "compare_finetuning"
    tiny_lm = build_tiny_lm(data, cmp_dir / "tiny_lm", a.seed)

    common = finetune_overrides(data, paths.noise_dir, pre_ckpt, a.updates, a.seed)
    spm = f"task.tokenizer_bpe_model={paths.spm_model}"
    def lora(prefix: str) -> List[str]:  # "+": the key is not in the yaml (conf/demo/finetune.yaml)
        return [f"{prefix}model.lora_r={a.lora_r}", f"{prefix}model.lora_alpha={2 * a.lora_r}",
                f"{prefix}model.lora_targets=[q_proj,k_proj,v_proj,out_proj]"]

    methods = {
        "seq2seq full": ("finetune", [*common, spm], 12),
        "seq2seq LoRA": ("finetune", [*common, spm, *lora("+")], 12),
        "LLM + LoRA": ("finetune_llm", [*common, *lora(""), f"model.llm_path={tiny_lm}", f"model.llm_lora_r={a.lora_r}",
                                        f"model.llm_lora_alpha={2 * a.lora_r}"], 40),  # byte-level BPE: more tokens
        "LLM + LoRA, encoder trained": ("finetune_llm", [*common, "model.lora_r=0", "model.freeze_encoder=false",
                                                         f"model.llm_path={tiny_lm}", f"model.llm_lora_r={a.lora_r}",
                                                         f"model.llm_lora_alpha={2 * a.lora_r}"], 40),
    }
    rows: Dict[str, Dict] = {}
    for name, (conf, overrides, max_len_b) in methods.items():
        slug = name.lower().replace(" + ", "_").replace(", ", "_").replace(" ", "_")
        exp = cmp_dir / slug
        _banner(f"fine-tune: {name}")
        if not _done(exp / ".done"):
            hydra_train(conf, exp, overrides, procs=1)  # the README's comparison was measured with one rank
            (exp / ".done").touch()
        metrics = json.loads((exp / "checkpoints" / "metrics.json").read_text())
        _banner(f"decode: {name}")
        wer = decode_grid(exp / "checkpoints" / "checkpoint_last.pt", data, cmp_dir / "decode" / slug, a.beam,
                          conditions=[None], max_len_b=max_len_b)
        rows[name] = {k: metrics[k] for k in ("params_trainable", "params_total", "peak_rss_mb", "time_per_update_s",
                                               "updates", "wall_time_s")}
        rows[name]["wer"] = wer
    text = write_table(cmp_dir, rows)
    print(text)
    print(f"\nwrote {cmp_dir / 'results.md'} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
