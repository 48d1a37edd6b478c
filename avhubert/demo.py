"""`make demo`: generate a small audio-visual corpus and pre-train the tiny AV-HuBERT on CPU.

Stages (each reused on a rerun when its output exists):
  1. corpus  -> {out}/data      synthetic AV clips, manifests, 25 Hz labels, dictionaries
  2. pretrain -> {out}/pretrain  `fairseq-hydra-train --config-name tiny` (conf/pretrain/tiny.yaml)
Prints the first and last training losses and the checkpoint path.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

logger = logging.getLogger("avhubert.demo")

REPO = Path(__file__).resolve().parents[1]


def _stage(name: str, done: Path) -> bool:
    if done.exists():
        logger.info("[%s] already done (%s); skipping", name, done)
        return False
    logger.info("[%s] running", name)
    return True


def run_pretrain(data: Path, exp: Path, max_update: int) -> Path:
    """Tiny pre-training through fairseq-hydra-train; returns checkpoint_last.pt."""
    train_bin = Path(sys.executable).parent / "fairseq-hydra-train"
    cmd = [
        str(train_bin), "--config-dir", str(REPO / "conf" / "pretrain"), "--config-name", "tiny",
        f"task.data={data}", f"task.label_dir={data}", f"common.user_dir={REPO / 'avhubert'}",
        f"hydra.run.dir={exp}", f"checkpoint.save_dir={exp / 'checkpoints'}",
        f"optimization.max_update={max_update}", "common.log_format=json",
    ]
    log_path = exp / "train.log"
    exp.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        for line in proc.stdout:
            log.write(line)
            if "[train_inner]" in line or "[valid]" in line or "done training" in line:
                print(line.rstrip()[:200], flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"pre-training failed (exit {proc.returncode}); see {log_path}")
    return exp / "checkpoints" / "checkpoint_last.pt"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="demo_out")
    p.add_argument("--max-update", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out_dir).resolve()
    from preparation.make_synthetic_data import make_corpus

    data = out / "data"
    if _stage("corpus", data / ".done"):
        make_corpus(data, {"train": 48, "valid": 8}, num_classes=8, seed=a.seed)
        (data / ".done").touch()
    exp = out / "pretrain"
    ckpt = exp / "checkpoints" / "checkpoint_last.pt"
    if _stage("pretrain", exp / ".done"):
        ckpt = run_pretrain(data, exp, a.max_update)
        (exp / ".done").touch()
    losses = []
    for line in (exp / "train.log").read_text().splitlines():
        if "[train][INFO] - {" in line:
            losses.append(float(json.loads(line.split(" - ", 1)[1])["train_loss"]))
    summary = f"pre-training loss per epoch: first {losses[0]:.3f} -> last {losses[-1]:.3f}; checkpoint {ckpt}"
    (out / "results.md").write_text(f"# AV-HuBERT demo\n\n{summary}\n")
    print(summary)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(main())
