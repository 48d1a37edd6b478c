"""Build a tiny causal language model locally (no download) for `av_hubert_llm` tests and the demo.

    python -m demo.tiny_llm --text DATA/train.wrd --out TINY_LM [--arch llama|qwen2] [--steps 300]

Steps: a byte-level BPE tokenizer trained on the text with `tokenizers` (special tokens `<pad>`,
`<s>`, `</s>`, `<unk>`), wrapped in `PreTrainedTokenizerFast`; a small Llama- or Qwen2-style config
from `transformers`; a short pre-training on the text's lines (`<s> line </s>`, causal LM loss), so
the folder holds a real (if tiny) language model that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load like any downloaded one. The folder is written under a
temporary name and renamed when complete (a killed build leaves no half folder at `--out`).
"""

import argparse
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch

logger = logging.getLogger("demo.tiny_llm")

__all__ = ["TinyLlmConfig", "train_tokenizer", "build_tiny_llm", "main"]

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@dataclass
class TinyLlmConfig:
    """Size and training of the tiny LM (defaults: ~0.1 M parameters, ~20 s on one CPU core)."""

    arch: str = "llama"  # or "qwen2"
    vocab_size: int = 300
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 2048
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0


def train_tokenizer(lines: Sequence[str], vocab_size: int) -> "transformers.PreTrainedTokenizerFast":  # noqa: F821
    """Byte-level BPE trained on `lines`, with the four special tokens, as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def _model_config(cfg: TinyLlmConfig, tokenizer: "transformers.PreTrainedTokenizerFast"):  # noqa: F821
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_positions,
                  tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    if cfg.arch == "llama":
        return LlamaConfig(**common)
    if cfg.arch == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"arch must be llama or qwen2, got {cfg.arch!r}")


def _batches(ids: List[List[int]], batch_size: int, pad: int, rng: random.Random):
    """Endless random batches: `[B, L]` input ids, `[B, L]` labels (-100 at padding)."""
    while True:
        rows = [ids[rng.randrange(len(ids))] for _ in range(batch_size)]
        width = max(len(r) for r in rows)
        x = torch.full((batch_size, width), pad, dtype=torch.long)
        y = torch.full((batch_size, width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(r)
            y[i, : len(r)] = torch.tensor(r)
        yield x, y


def build_tiny_llm(lines: Sequence[str], out: Path, cfg: TinyLlmConfig = TinyLlmConfig()) -> Dict[str, float]:
    """Train the tokenizer and the LM on `lines`, save both to `out`; returns
    {"params", "loss_first", "loss_last", "seconds"} (losses in nats per token)."""
    from transformers import AutoModelForCausalLM

    lines = [l.strip() for l in lines if l.strip()]
    if not lines:
        raise ValueError("no text to train the tiny LM on (the text file has no non-empty line)")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    start = time.perf_counter()
    tokenizer = train_tokenizer(lines, cfg.vocab_size)
    model = AutoModelForCausalLM.from_config(_model_config(cfg, tokenizer))
    ids = [[tokenizer.bos_token_id, *tokenizer(l, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
           for l in lines]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    model.train()
    losses = []
    batches = _batches(ids, cfg.batch_size, tokenizer.pad_token_id, rng)
    for step in range(cfg.steps):
        x, y = next(batches)
        loss = model(input_ids=x, attention_mask=(y != -100).long(), labels=y).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == cfg.steps - 1:
            logger.info("tiny LM step %d/%d: loss %.3f", step + 1, cfg.steps, losses[-1])
    model.eval()
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    n = sum(p.numel() for p in model.parameters())
    last = sum(losses[-20:]) / len(losses[-20:])
    logger.info("tiny %s LM: %d parameters, vocabulary %d, loss %.3f -> %.3f in %.1f s -> %s",
                cfg.arch, n, len(tokenizer), losses[0], last, time.perf_counter() - start, out)
    return {"params": float(n), "loss_first": losses[0], "loss_last": last, "seconds": time.perf_counter() - start}


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, required=True, help="training text, one sentence per line (e.g. train.wrd)")
    p.add_argument("--out", type=Path, required=True, help="output folder (model + tokenizer, save_pretrained format)")
    defaults = TinyLlmConfig()
    p.add_argument("--arch", choices=["llama", "qwen2"], default=defaults.arch)
    p.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    p.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    p.add_argument("--layers", type=int, default=defaults.num_layers)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--seed", type=int, default=defaults.seed)
    a = p.parse_args(argv)
    if not a.text.is_file():
        p.error(f"--text {a.text}: no such file")
    cfg = TinyLlmConfig(arch=a.arch, vocab_size=a.vocab_size, hidden_size=a.hidden_size,
                        intermediate_size=2 * a.hidden_size, num_layers=a.layers, steps=a.steps, seed=a.seed)
    build_tiny_llm(a.text.read_text(encoding="utf-8").splitlines(), a.out, cfg)
    return 0


if __name__ == "__main__":
    from avdata.procs import run_main

    run_main(main)
