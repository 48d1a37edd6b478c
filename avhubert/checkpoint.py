"""Safe checkpoint loading: torch's `weights_only` unpickler with an explicit allow-list.

Original AV-HuBERT checkpoints pickle fairseq `Dictionary` and `SentencepieceBPE` objects (the
latter holding a `sentencepiece.SentencePieceProcessor`). Only those classes are admitted;
any other pickled object is refused with a clear message instead of running its code.
"""

import pickle
from typing import Any, Dict, List

import torch

__all__ = ["ALLOWED_CLASSES", "register_safe_globals", "load_checkpoint", "UnsafeCheckpointError"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint whose pickle needs a class outside the allow-list."""


def _allowed() -> List[Any]:
    import sentencepiece
    from fairseq.data.dictionary import Dictionary
    from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE

    # `int`: Python 2 `long` in the protocol-2 pickle of the sentencepiece processor
    return [Dictionary, SentencepieceBPE, sentencepiece.SentencePieceProcessor, int]


ALLOWED_CLASSES = ("fairseq.data.dictionary.Dictionary", "fairseq.data.encoders.sentencepiece_bpe.SentencepieceBPE",
                   "sentencepiece.SentencePieceProcessor")


def register_safe_globals() -> None:
    """Admit the allow-list into torch's weights-only unpickler (used by fairseq's loader)."""
    known = set(map(id, torch.serialization.get_safe_globals()))
    torch.serialization.add_safe_globals([c for c in _allowed() if id(c) not in known])


def load_checkpoint(path: str) -> Dict[str, Any]:
    """`torch.load(path, weights_only=True)` with the allow-list; a clear error otherwise."""
    try:
        register_safe_globals()  # (not the safe_globals context: on exit it drops pre-registered entries)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle: it needs objects outside the allow-list "
            f"({', '.join(ALLOWED_CLASSES)}). Details: {str(e).splitlines()[-1] if str(e) else e}"
        ) from None
