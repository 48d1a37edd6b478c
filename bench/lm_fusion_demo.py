"""Language-model shallow fusion on the demo: WER with and without a small transformer LM.

Reuses a finished `make demo` output folder (corpus, spm model) and a seq2seq model fine-tuned on it
(`--checkpoint`; default: the `seq2seq full` model of `python -m demo.compare_finetuning`, since the
demo's own model is CTC and shallow fusion needs a decoder):
  1. LM text: the training (and validation) transcripts as sentencepiece pieces -> <demo>/lm_fusion/text/
  2. LM: fairseq-preprocess (target dictionary) + fairseq-train transformer_lm -> <demo>/lm_fusion/lm/
  3. lm_weight chosen per mode on the VALID set (clean audio), from `--weights`
  4. test set, audio / video / audio-visual, clean and 0 dB babble, without and with the LM
  5. table -> <demo>/lm_fusion/results.md (+ results.json); every decode keeps its metrics.json

A rerun reuses the LM and finished decodes. Decoding settings are the demo's (beam 3,
max_len_b 12).

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.lm_fusion_demo --demo-dir demo_out
    (or `PYTHONPATH=. python bench/lm_fusion_demo.py ...`)
"""

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

from avhubert.language_model import prepare_lm_text, train_language_model

MODES = {"audio": ["audio"], "video": ["video"], "audio-visual": ["audio", "video"]}
CONDITIONS: Dict[str, Optional[float]] = {"clean": None, "0 dB": 0.0}


def decode_once(ckpt: Path, data: Path, out: Path, mods: List[str], split: str, beam: int,
                snr: Optional[float] = None, lm: Optional[Path] = None, lm_weight: float = 0.0) -> Dict:
    """One infer_s2s run (reused when its metrics.json exists); returns its metrics."""
    from omegaconf import OmegaConf

    from avhubert.infer_s2s import InferConfig, decode

    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    cfg = OmegaConf.structured(InferConfig)
    cfg.common_eval.path, cfg.common_eval.results_path = str(ckpt), str(out)
    cfg.dataset.gen_subset, cfg.dataset.max_tokens = split, 2000
    cfg.generation.beam, cfg.generation.max_len_a, cfg.generation.max_len_b = beam, 0.0, 12
    cfg.override.modalities, cfg.override.data = mods, str(data)
    if snr is not None:
        cfg.override.noise_wav, cfg.override.noise_prob, cfg.override.noise_snr = str(data / "noise"), 1.0, snr
    if lm is not None:
        cfg.generation.lm_path, cfg.generation.lm_weight = str(lm), lm_weight
    decode(cfg)
    return json.loads((out / "metrics.json").read_text())


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-dir", default="demo_out", help="a finished `make demo` output folder")
    p.add_argument("--checkpoint", default=None,
                   help="seq2seq checkpoint (default <demo-dir>/compare_finetuning/seq2seq_full/checkpoints/checkpoint_last.pt)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.5])
    # 600 demo transcripts: the LM overfits after ~100 updates (checkpoint_best.pt keeps the best valid loss)
    p.add_argument("--lm-updates", type=int, default=300)
    p.add_argument("--lm-layers", type=int, default=2)
    p.add_argument("--lm-dim", type=int, default=64)
    p.add_argument("--lm-dropout", type=float, default=0.3)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--lm-only", action="store_true", help="stop after training the LM (the demo may still run)")
    a = p.parse_args(argv)
    demo = Path(a.demo_dir).resolve()
    data = demo / "data"
    ckpt = Path(a.checkpoint).resolve() if a.checkpoint else demo / "compare_finetuning" / "seq2seq_full" / "checkpoints" / "checkpoint_last.pt"
    spm_models = sorted(data.glob("spm*/*.model"))
    if not spm_models or not (data / "dict.wrd.txt").is_file():
        raise SystemExit(f"no demo corpus in {data}: run `make demo` (or python -m demo.run --out-dir {demo}) first")
    spm_model = spm_models[0]
    work = demo / "lm_fusion"
    start = time.perf_counter()

    print("1/4 LM text and training", flush=True)
    lm_dir = work / "lm"
    lm_ckpt = lm_dir / "checkpoint_best.pt"
    if not lm_ckpt.is_file():
        for split in ("train", "valid"):
            n = prepare_lm_text(data / f"{split}.wrd", spm_model, work / "text" / f"{split}.txt")
            print(f"    {split}: {n} transcripts", flush=True)
        t0 = time.perf_counter()
        lm_ckpt = train_language_model(work / "text", data / "dict.wrd.txt", lm_dir, layers=a.lm_layers, dim=a.lm_dim,
                                       max_update=a.lm_updates, dropout=a.lm_dropout)
        print(f"    trained {lm_ckpt} in {time.perf_counter() - t0:.0f} s", flush=True)
    valid_ppl = [line for line in (lm_dir / "train.log").read_text().splitlines() if "| valid |" in line]
    if valid_ppl:
        print("    last validation:", valid_ppl[-1].split("| valid |")[1].strip(), flush=True)

    if a.lm_only:
        return 0
    if not ckpt.is_file():
        raise SystemExit(f"no seq2seq checkpoint {ckpt}: run `python -m demo.compare_finetuning --out-dir {demo}` "
                         "(its seq2seq full model) or pass --checkpoint")

    print("2/4 lm_weight on the valid set (clean)", flush=True)
    chosen: Dict[str, float] = {}
    sweep: Dict[str, Dict[str, float]] = {}
    for mode, mods in MODES.items():
        base = decode_once(ckpt, data, work / "valid" / mode / "nolm", mods, "valid", a.beam)
        sweep[mode] = {"0": base["wer"]}
        for w in a.weights:
            m = decode_once(ckpt, data, work / "valid" / mode / f"lm{w:g}", mods, "valid", a.beam, lm=lm_ckpt, lm_weight=w)
            sweep[mode][f"{w:g}"] = m["wer"]
        best = min(sweep[mode].items(), key=lambda kv: (kv[1], float(kv[0])))  # ties: the smaller weight
        chosen[mode] = float(best[0])
        print(f"    {mode:>12}: " + "  ".join(f"w={k}: {v:.1f}" for k, v in sweep[mode].items())
              + f"  -> {chosen[mode]:g}", flush=True)

    print("3/4 test set, without and with the LM", flush=True)
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for mode, mods in MODES.items():
        table[mode] = {}
        for cond, snr in CONDITIONS.items():
            if mode == "video" and snr is not None:  # video ignores audio noise
                table[mode][cond] = table[mode]["clean"]
                continue
            tag = cond.replace(" ", "")
            plain = decode_once(ckpt, data, work / "test" / mode / tag / "nolm", mods, "test", a.beam, snr=snr)
            fused = plain if chosen[mode] == 0 else decode_once(  # weight 0 chosen: the LM is not used
                ckpt, data, work / "test" / mode / tag / f"lm{chosen[mode]:g}", mods, "test", a.beam,
                snr=snr, lm=lm_ckpt, lm_weight=chosen[mode])
            table[mode][cond] = {"no_lm": plain["wer"], "lm": fused["wer"], "utts": plain["num_utts"],
                                 "utt_per_s_no_lm": plain["utt_per_s"], "utt_per_s_lm": fused["utt_per_s"]}
            print(f"    {mode:>12} {cond:>5}: WER {plain['wer']:.1f} -> {fused['wer']:.1f} with the LM "
                  f"(w={chosen[mode]:g}, {plain['num_utts']} utts)", flush=True)

    print("4/4 report", flush=True)
    lines = ["# Shallow fusion with a transformer LM on the demo test set (WER %)", "",
             f"LM: transformer_lm, {a.lm_layers} layers, {a.lm_dim}-d, dropout {a.lm_dropout}, best valid loss of "
             f"{a.lm_updates} updates on the training transcripts' sentencepiece pieces; lm_weight chosen per mode "
             "on the valid set (clean).", "",
             "| mode | lm_weight | clean, no LM | clean, LM | 0 dB, no LM | 0 dB, LM |", "|---|---|---|---|---|---|"]
    for mode, row in table.items():
        lines.append(f"| {mode} | {chosen[mode]:g} | {row['clean']['no_lm']:.1f} | {row['clean']['lm']:.1f} | "
                     f"{row['0 dB']['no_lm']:.1f} | {row['0 dB']['lm']:.1f} |")
    lines += ["", "Valid-set sweep (clean WER % by lm_weight):", ""]
    for mode, row in sweep.items():
        lines.append(f"- {mode}: " + ", ".join(f"{k}: {v:.1f}" for k, v in row.items()))
    text = "\n".join(lines) + "\n"
    (work / "results.md").write_text(text)
    (work / "results.json").write_text(json.dumps({"chosen": chosen, "sweep": sweep, "test": table}, indent=2))
    print(text)
    print(f"wrote {work / 'results.md'} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # each decode.log keeps the per-utterance REF/HYP lines
        handler.setLevel(logging.WARNING)
    raise SystemExit(main())
