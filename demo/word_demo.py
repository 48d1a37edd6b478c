"""Word classification on the demo corpus: pre-trained encoder vs from scratch, audio / video / audio-visual.

Stages (a rerun reuses finished ones; outputs under `--out-dir`):
  1. clips     single-word clips of the corpus (`demo.word_clips`)                      -> words/
  2. train     `av_hubert_classifier` (conf/classify/demo.yaml) from the pre-trained
               checkpoint, and the same architecture from random initialisation        -> pretrained/, scratch/
  3. evaluate  top-1 accuracy of each best checkpoint on the test clips (unseen speakers)
               with audio-only, video-only and audio-visual input                      -> results.md, results.json

Example (after `make demo`, or any demo pre-training run):
    python -m demo.word_demo --corpus demo_out/data \\
        --pretrained demo_out/pretrain/checkpoints/checkpoint_last.pt --out-dir demo_out/word_demo
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from avdata.atomic import write_text
from avdata.manifest import read_manifest, resolve
from demo.run import REPO, run_logged
from demo.word_clips import ClipSettings, make_word_clips

logger = logging.getLogger("demo.word_demo")

MODES = ("audio", "video", "audio-visual")


def train(words: Path, pretrained: Path, exp: Path, scratch: bool, updates: int, seed: int) -> Path:
    """One classifier run; returns its best checkpoint (by validation accuracy)."""
    best = exp / "checkpoints" / "checkpoint_best.pt"
    if (exp / ".done").is_file():
        print(f"    reusing finished run ({exp})", flush=True)
        return best
    warmup = max(updates // 10, 1)
    cmd = [str(Path(sys.executable).parent / "fairseq-hydra-train"), "--config-dir", str(REPO / "conf" / "classify"),
           "--config-name", "demo", f"common.user_dir={REPO / 'avhubert'}", f"hydra.run.dir={exp}",
           f"checkpoint.save_dir={exp / 'checkpoints'}", f"task.data={words}", f"task.label_dir={words}",
           f"model.w2v_path={pretrained}", f"model.no_pretrained_weights={str(scratch).lower()}", f"common.seed={seed}",
           f"optimization.max_update={updates}", f"lr_scheduler.warmup_steps={warmup}",
           f"lr_scheduler.decay_steps={updates - warmup}"]
    run_logged(cmd, exp / "train.log", show=("[valid]", "done training"))
    (exp / ".done").touch()
    return best


def evaluate(ckpt: Path, words: Path, split: str = "test") -> Dict[str, float]:
    """Top-1 accuracy (%) of `ckpt` on the `split` clips for each input mode."""
    from avhubert.classify import Classifier

    clf = Classifier(str(ckpt))
    root, rows = read_manifest(words / f"{split}.tsv")
    labels = (words / f"{split}.lbl").read_text(encoding="utf-8").split()
    out = {}
    for mode in MODES:
        correct = 0
        for row, label in zip(rows, labels):
            res = clf.predict(Path(resolve(root, row.video)), top_k=1, modality=mode)
            correct += res["top_k"][0]["label"] == label
        out[mode] = round(100.0 * correct / len(rows), 1)
    return out


def chance_accuracy(words: Path) -> float:
    """Accuracy (%) of always answering the most frequent training word."""
    guess = Counter((words / "train.lbl").read_text().split()).most_common(1)[0][0]
    test = (words / "test.lbl").read_text().split()
    return round(100.0 * sum(w == guess for w in test) / len(test), 1)


def report(out: Path, results: Dict[str, Dict[str, float]], chance: float, meta: dict) -> str:
    lines = ["# Demo word classification: test accuracy (%) on unseen speakers", "",
             f"{meta['clips']['train']} train / {meta['clips']['valid']} valid / {meta['clips']['test']} test single-word "
             f"clips of the demo corpus ({meta['classes']} words, {meta['frames_mean']} frames on average); chance "
             f"(most frequent training word) {chance:.1f}%.", "",
             "| encoder | " + " | ".join(MODES) + " |", "|---" * (len(MODES) + 1) + "|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[m]:.1f}" for m in MODES) + " |")
    text = "\n".join(lines) + "\n"
    write_text(out / "results.md", text)
    write_text(out / "results.json", json.dumps({"accuracy": results, "chance": chance, "clips": meta}, indent=2) + "\n")
    return text


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="demo corpus folder (python -m demo.make_corpus --out-dir)")
    p.add_argument("--pretrained", required=True, help="pre-trained av_hubert checkpoint (demo pre-training)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--updates", type=int, default=200, help="classifier training updates (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1337, help="training seed (default: %(default)s, as conf/classify/demo.yaml)")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch comparison")
    p.add_argument("--num-workers", type=int, default=2)
    a = p.parse_args(argv)
    out = Path(a.out_dir).resolve()
    start = time.perf_counter()
    words = out / "words"
    print("\n=== 1/3 single-word clips ===", flush=True)
    if not (words / "word_clips.json").is_file():
        make_word_clips(Path(a.corpus), words, ClipSettings(), a.num_workers)
    meta = json.loads((words / "word_clips.json").read_text())
    runs = {"pre-trained": False} if a.no_scratch else {"pre-trained": False, "from scratch": True}
    results: Dict[str, Dict[str, float]] = {}
    for name, scratch in runs.items():
        print(f"\n=== 2/3 train ({name}) ===", flush=True)
        best = train(words, Path(a.pretrained).resolve(), out / name.replace(" ", "_").replace("-", "_"), scratch, a.updates, a.seed)
        print(f"\n=== 3/3 evaluate ({name}) ===", flush=True)
        results[name] = evaluate(best, words)
        print("    " + ", ".join(f"{m} {v:.1f}%" for m, v in results[name].items()), flush=True)
    text = report(out, results, chance_accuracy(words), meta)
    print(text + f"\nwall time {(time.perf_counter() - start) / 60:.1f} min; wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
