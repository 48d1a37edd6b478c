"""Train a sentencepiece unigram vocabulary and export the fairseq `dict.wrd.txt`.

Mirrors reference `preparation/gen_subword.py` + `lrs3_manifest.py` (av_hubert@258fb50):
lower-cased text, unigram model, character coverage 1.0, ids bos=0 pad=1 eos=2 unk=3, and a
dictionary of all pieces except the 4 specials with count 1. Unlike the reference, the training
text file is flushed and closed before training (its bug 16), and outputs are written atomically.
"""

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from avdata.atomic import write_text

logger = logging.getLogger(__name__)

__all__ = ["train_sentencepiece", "export_fairseq_dict", "main"]

SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>")


def train_sentencepiece(
    texts: Iterable[str],
    out_prefix: str | os.PathLike,
    vocab_size: int = 1000,
    model_type: str = "unigram",
    seed_sentencepiece_size: int = 1_000_000,
) -> Tuple[Path, Path]:
    """Train on lower-cased `texts`; writes `{out_prefix}.model/.vocab` and `{out_prefix}.txt`.

    Returns `(model_path, dict_path)`. `vocab_size` is an upper bound for tiny corpora
    (sentencepiece's `hard_vocab_limit=False`), so a small demo corpus still trains.
    """
    import sentencepiece as spm

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = [t.strip().lower() for t in texts if t.strip()]
    if not lines:
        raise ValueError("train_sentencepiece: no non-empty text to train on")
    # A hidden temp dir beside the outputs; one left by a killed run is removed here.
    tmp_name = f".{out_prefix.name}.tmp-"
    for stale in out_prefix.parent.glob(f"{tmp_name}*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out_prefix.parent, prefix=tmp_name) as tmp:
        text_path = Path(tmp) / "text.txt"
        text_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp_prefix = Path(tmp) / out_prefix.name
        spm.SentencePieceTrainer.train(
            input=str(text_path),
            model_prefix=str(tmp_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            bos_id=0,
            pad_id=1,
            eos_id=2,
            unk_id=3,
            hard_vocab_limit=False,
            seed_sentencepiece_size=seed_sentencepiece_size,
            minloglevel=2,
        )
        for ext in (".model", ".vocab"):
            os.replace(f"{tmp_prefix}{ext}", f"{out_prefix}{ext}")
    model_path = Path(f"{out_prefix}.model")
    dict_path = Path(f"{out_prefix}.txt")
    export_fairseq_dict(model_path, dict_path)
    return model_path, dict_path


def export_fairseq_dict(model_path: str | os.PathLike, dict_path: str | os.PathLike) -> List[str]:
    """Write `piece 1` for every non-special piece, in model order. Returns the pieces."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    pieces = [p for p in pieces if p not in SPECIAL_PIECES]
    dict_path = Path(dict_path)
    write_text(dict_path, "".join(f"{p} 1\n" for p in pieces))
    return pieces


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", help="text file, one transcript per line")
    parser.add_argument("--out-prefix", required=True, help="e.g. DIR/spm1000/spm_unigram1000")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    args = parser.parse_args(argv)
    with open(args.text, encoding="utf-8") as f:
        texts = f.read().splitlines()
    model, dct = train_sentencepiece(texts, args.out_prefix, args.vocab_size, args.model_type)
    logger.info("wrote %s and %s", model, dct)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(main())
