"""Classification test data: the synthetic corpus with one class per clip (`{split}.lbl`, `dict.lbl.txt`:
the majority tone class of the clip, a function of the audio and the video); `pretrained` (a tiny
pre-training on it) comes from the fine-tuning tests."""

from collections import Counter
from pathlib import Path

import pytest

from tests.finetune.helpers import copy_corpus
from tests.finetune.test_finetune_decode import pretrained  # noqa: F401  (tiny pre-training on `ft_data`)


def write_class_labels(data: Path) -> list:
    """`{train,valid}.lbl` (the majority frame class of each clip, as its word) and `dict.lbl.txt`; returns the names."""
    from demo.synthetic_data import WORDS

    names = set()
    for split in ("train", "valid"):
        lines = []
        for row in (data / f"{split}.km").read_text().splitlines():
            word = WORDS[int(Counter(row.split()).most_common(1)[0][0])]
            names.add(word)
            lines.append(word)
        (data / f"{split}.lbl").write_text("\n".join(lines) + "\n")
    names = sorted(names)
    (data / "dict.lbl.txt").write_text("".join(f"{n} 1\n" for n in names))
    return names


@pytest.fixture(scope="package")
def cls_data(synthetic_corpus, tmp_path_factory) -> Path:
    data = copy_corpus(synthetic_corpus, tmp_path_factory.mktemp("clsdata"))
    write_class_labels(data)
    return data


@pytest.fixture(scope="module")
def ft_data(cls_data) -> Path:
    """What the imported `pretrained` fixture pre-trains on: the classification data."""
    return cls_data
