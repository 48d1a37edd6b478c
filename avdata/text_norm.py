"""One text normaliser for training labels and for WER scoring, so that WER compares like with like.

A `TextNorm` has a case policy (`none`, `lower`, `upper`) and a punctuation policy (`keep`, `drop`,
or `keep:<chars>` which drops every punctuation character except the given ones, e.g. `keep:'-`).
Digits and letters of every script are always kept; whitespace is collapsed to single spaces.
"Punctuation" is every character whose Unicode category starts with P (punctuation) or S
(symbols: `$`, `+`, `©`, ...). A dropped character becomes a space ("hello,world" -> "hello world"),
except apostrophes, which join words and are removed ("don't" -> "dont"; kept with `keep:'`).

The policy is written beside the labels as `text_norm.json` by `preparation.import_manifest`;
`avhubert/infer_s2s.py` reads it from the label folder and applies it to references and hypotheses
before scoring.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

__all__ = ["TextNorm", "TEXT_NORM_FILE", "CASES", "read_text_norm"]

TEXT_NORM_FILE = "text_norm.json"
CASES = ("none", "lower", "upper")
_APOSTROPHES = "'\u2019"


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


@dataclass(frozen=True)
class TextNorm:
    """`case`: none | lower | upper; `punctuation`: keep | drop | keep:<chars>."""

    case: str = "none"
    punctuation: str = "keep"

    def __post_init__(self) -> None:
        if self.case not in CASES:
            raise ValueError(f"text normalisation: case must be one of {', '.join(CASES)}, got {self.case!r}")
        if self.punctuation not in ("keep", "drop") and not self.punctuation.startswith("keep:"):
            raise ValueError(
                f"text normalisation: punctuation must be 'keep', 'drop' or 'keep:<chars>', got {self.punctuation!r}"
            )

    @property
    def kept_punctuation(self) -> Optional[str]:
        """None when all punctuation is kept, else the characters kept (empty for `drop`)."""
        if self.punctuation == "keep":
            return None
        return "" if self.punctuation == "drop" else self.punctuation[len("keep:"):]

    @property
    def is_identity(self) -> bool:
        return self.case == "none" and self.punctuation == "keep"

    def __call__(self, text: str) -> str:
        if self.case == "lower":
            text = text.lower()
        elif self.case == "upper":
            text = text.upper()
        kept = self.kept_punctuation
        if kept is not None:
            out = []
            for ch in text:
                if not _is_punct(ch) or ch in kept:
                    out.append(ch)
                elif ch in _APOSTROPHES:
                    continue  # "don't" -> "dont": an apostrophe joins a word, it does not split it
                else:
                    out.append(" ")
            text = "".join(out)
        return " ".join(text.split())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict, where: str = "text normalisation") -> "TextNorm":
        unknown = set(data) - {"case", "punctuation"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected 'case', 'punctuation')")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def read_text_norm(folder: str | os.PathLike) -> Optional[TextNorm]:
    """The `text_norm.json` of a label folder, or None when there is none."""
    path = Path(folder) / TEXT_NORM_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'case' and 'punctuation'")
    return TextNorm.from_dict(data, where=str(path))
