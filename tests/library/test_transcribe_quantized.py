"""`python -m avhubert.transcribe --quantize-decoder int8`: the tiny seq2seq model says the same
text with an int8 decoder; a GPU device and a CTC model are refused in one line."""

from __future__ import annotations

import json

import pytest

from avhubert.transcribe import main
from tests.library.conftest import TEXTS


def test_int8_decoder_transcribes_the_same_text(clips, s2s_ckpt, tmp_path):
    out = tmp_path / "car.json"
    assert main([str(clips["car"]), "--checkpoint", str(s2s_ckpt), "--quantize-decoder", "int8",
                 "--output", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["text"] == TEXTS["car"]
    with pytest.raises(SystemExit, match="error: .*runs on the CPU only.*--device cpu"):
        main([str(clips["car"]), "--checkpoint", str(s2s_ckpt), "--quantize-decoder", "int8", "--device", "cuda"])


def test_int8_decoder_is_refused_for_a_ctc_model(clips, ctc_ckpt):
    with pytest.raises(SystemExit, match="applies to seq2seq models"):
        main([str(clips["car"]), "--checkpoint", str(ctc_ckpt), "--quantize-decoder", "int8"])
