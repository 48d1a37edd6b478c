"""Fine-tuning test data: a copy of a corpus with a test split (= valid), a sentencepiece vocabulary and dict."""

import shutil
from pathlib import Path

from preparation.tokenizer import train_sentencepiece


def copy_corpus(src: Path, dst: Path) -> Path:
    """Copy the files (not the folders) of `src` into `dst`."""
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, dst / f.name)
    return dst


def add_test_split_and_vocab(data: Path, vocab_size: int = 30, **spm_kwargs) -> Path:
    """valid -> test split; sentencepiece on train.wrd (`data/spm/spm.model`) and `dict.wrd.txt`. Returns `data`."""
    shutil.copy(data / "valid.tsv", data / "test.tsv")
    shutil.copy(data / "valid.wrd", data / "test.wrd")
    texts = (data / "train.wrd").read_text().splitlines()
    _, dct = train_sentencepiece(texts, data / "spm" / "spm", vocab_size=vocab_size, **spm_kwargs)
    shutil.copy(dct, data / "dict.wrd.txt")
    return data
