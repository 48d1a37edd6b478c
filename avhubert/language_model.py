"""Language models for shallow fusion: train a fairseq `transformer_lm` on transcripts, load one safely.

Training (what the README's Decoding section shows as commands) is plain fairseq:

    prepare_lm_text(train.wrd, spm.model, lm/train.txt)      # lower case -> sentencepiece pieces
    fairseq-preprocess --only-source --srcdict dict.wrd.txt --trainpref lm/train.txt ... --destdir lm/bin
    fairseq-train lm/bin --task language_modeling --arch transformer_lm --sample-break-mode complete ...

`--sample-break-mode complete` packs whole transcripts into blocks, each one read after the
`</s>` that ends the one before, which is how the beam search starts a hypothesis (bos = eos,
fairseq convention). (`eos`, one transcript per block, would be the exact match, but fairseq
0.12's TokenBlockDataset uses `np.compat`, which numpy 2 removed, in that mode.)

Loading (`load_language_model`) uses the project's allow-list loader (no pickled code runs),
rebuilds the model from the checkpoint's own config with the dictionary found next to it (or
in the data directory it was trained on), and refuses a dictionary that differs from the
seq2seq model's target dictionary.
"""

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch
from omegaconf import OmegaConf, open_dict

__all__ = ["load_language_model", "prepare_lm_text", "lm_train_commands", "train_language_model"]

logger = logging.getLogger(__name__)


def _lm_dictionary_path(path: str, lm_cfg: Any) -> Path:
    """The LM's `dict.txt`: next to the checkpoint, else in the data directory it was trained on."""
    candidates = [Path(path).resolve().parent / "dict.txt"]
    data = lm_cfg.task.get("data", None) if lm_cfg.get("task", None) is not None else None
    if data:
        candidates.append(Path(str(data).split(os.pathsep)[0]) / "dict.txt")
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"generation.lm_path={path}: cannot find the language model's dictionary (tried "
        f"{', '.join(map(str, candidates))}); copy the dict.txt of its fairseq-preprocess output next to it")


def load_language_model(path: str, tgt_dict: Any, device: torch.device = torch.device("cpu"),
                        fp16: bool = False) -> torch.nn.Module:
    """A fairseq language model (eval mode, on `device`) whose dictionary equals `tgt_dict`.

    Raises FileNotFoundError (checkpoint or dictionary missing), ValueError (not a fairseq
    language model, or another dictionary) and the allow-list loader's refusal for checkpoints
    that pickle code."""
    from fairseq import tasks
    from fairseq.data import Dictionary
    from fairseq.models import FairseqLanguageModel

    from .checkpoint import load_checkpoint
    from .sequence_generator import check_lm_dictionary

    if not os.path.isfile(path):
        raise FileNotFoundError(f"language model {path} not found (generation.lm_path)")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("cfg") is None or "model" not in state:
        raise ValueError(f"generation.lm_path={path}: not a fairseq checkpoint with 'cfg' and 'model' entries")
    lm_cfg = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
    task_name = lm_cfg.task.get("_name", None) if lm_cfg.get("task", None) is not None else None
    if task_name != "language_modeling":
        raise ValueError(f"generation.lm_path={path}: a checkpoint of task {task_name!r}; shallow fusion needs a "
                         "fairseq language model (fairseq-train --task language_modeling)")
    dict_path = _lm_dictionary_path(path, lm_cfg)
    check_lm_dictionary(Dictionary.load(str(dict_path)), tgt_dict, where=f"language model {path} ({dict_path})")
    with open_dict(lm_cfg):
        lm_cfg.task.data = str(dict_path.parent)
    lm_task = tasks.setup_task(lm_cfg.task)
    lm = lm_task.build_model(lm_cfg.model)
    if not isinstance(lm, FairseqLanguageModel):
        raise ValueError(f"generation.lm_path={path}: {type(lm).__name__} is not a fairseq language model")
    lm.load_state_dict(state["model"], strict=True, model_cfg=lm_cfg.model)
    lm.eval().to(device)
    if fp16:
        lm.half()
    logger.info("language model %s (%s, %d parameters, dictionary %s)", path, lm_cfg.model.get("_name"),
                sum(p.numel() for p in lm.parameters()), dict_path)
    return lm


def prepare_lm_text(transcripts: Path, spm_model: Path, out: Path) -> int:
    """Transcripts (one per line) -> lower-cased sentencepiece pieces, as the task's label encoder
    makes them; returns the number of lines written (empty lines are dropped)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    lines = [" ".join(sp.encode(t.strip().lower(), out_type=str)) for t in
             Path(transcripts).read_text(encoding="utf-8").splitlines() if t.strip()]
    if not lines:
        raise ValueError(f"{transcripts}: no transcript to train a language model on")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def lm_train_commands(text_dir: Path, target_dict: Path, out_dir: Path, *, layers: int = 2, dim: int = 128,
                      max_update: int = 2000, seed: int = 1, max_tokens: int = 1024, tokens_per_sample: int = 128,
                      dropout: float = 0.1, extra: Sequence[str] = ()) -> List[List[str]]:
    """fairseq-preprocess + fairseq-train command lines for a small `transformer_lm` on
    `text_dir/{train,valid}.txt` with the target dictionary; the model lands in `out_dir`
    (`checkpoint_best.pt`, with `dict.txt` from the binarised data next to it).
    fairseq-fixed's batching drops each epoch's last partial batch: keep `max_tokens` a small
    multiple of `tokens_per_sample` so that an epoch has several batches."""
    bindir = Path(sys.executable).parent
    data_bin = out_dir / "bin"
    prep = [str(bindir / "fairseq-preprocess"), "--only-source", "--srcdict", str(target_dict),
            "--trainpref", str(text_dir / "train.txt"), "--destdir", str(data_bin), "--workers", "1"]
    if (text_dir / "valid.txt").is_file():
        prep += ["--validpref", str(text_dir / "valid.txt")]
    train = [str(bindir / "fairseq-train"), str(data_bin), "--task", "language_modeling", "--arch", "transformer_lm",
             "--decoder-layers", str(layers), "--decoder-embed-dim", str(dim), "--decoder-ffn-embed-dim", str(4 * dim),
             "--decoder-attention-heads", "4", "--share-decoder-input-output-embed", "--dropout", str(dropout),
             "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01", "--clip-norm", "0.0",
             "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(max(1, max_update // 10)),
             "--tokens-per-sample", str(tokens_per_sample), "--sample-break-mode", "complete",
             "--max-tokens", str(max_tokens), "--required-batch-size-multiple", "1",
             "--max-update", str(max_update), "--save-dir", str(out_dir), "--no-epoch-checkpoints", "--seed", str(seed),
             "--log-format", "simple", "--log-interval", "50", "--cpu", *extra]
    if not (text_dir / "valid.txt").is_file():
        train += ["--disable-validation"]
    return [prep, train]


def train_language_model(text_dir: Path, target_dict: Path, out_dir: Path, log: Optional[Path] = None,
                         **kwargs: Any) -> Path:
    """Run `lm_train_commands`; returns the checkpoint path (`checkpoint_best.pt`, else
    `checkpoint_last.pt`) with `dict.txt` copied beside it."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = log or out_dir / "train.log"
    with open(log_path, "w") as f:
        for cmd in lm_train_commands(text_dir, target_dict, out_dir, **kwargs):
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"language model training failed (exit {proc.returncode}): {' '.join(cmd)}; "
                                   f"log: {log_path}")
    shutil.copy(out_dir / "bin" / "dict.txt", out_dir / "dict.txt")
    best = out_dir / "checkpoint_best.pt"
    return best if best.is_file() else out_dir / "checkpoint_last.pt"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m avhubert.language_model --spm-model M --out-dir lm/text DATA/train.wrd DATA/valid.wrd`
    writes `lm/text/train.txt` and `lm/text/valid.txt` (sentencepiece pieces, one transcript a line)."""
    import argparse

    p = argparse.ArgumentParser(description="transcripts -> sentencepiece pieces for fairseq-preprocess (LM training)")
    p.add_argument("transcripts", nargs="+", type=Path, help="{split}.wrd files")
    p.add_argument("--spm-model", type=Path, required=True, help="the task's sentencepiece .model")
    p.add_argument("--out-dir", type=Path, required=True)
    a = p.parse_args(argv)
    for t in a.transcripts:
        n = prepare_lm_text(t, a.spm_model, a.out_dir / f"{t.stem}.txt")
        print(f"{a.out_dir / (t.stem + '.txt')}: {n} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
