"""SIGKILL during decoding (`avhubert/infer_s2s.py`, a tiny fine-tuned seq2seq model), then rerun.

Targeted kills land between the writes of the result files (`decode.jsonl`, `hypo-*.json`,
`wer.*`, `metrics.json`); a random kill lands anywhere. After every kill each visible result
must equal the uninterrupted run's, and the rerun must reproduce it: byte for byte, except
`metrics.json`'s timing fields (`decode_time_s`, `wall_time_s`, `utt_per_s`, compared without
them) and `decode.log` (a log, with timestamps; not compared).
"""

import json
import random
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tests.faults.helpers import REPO, python, run_killed_when, run_ok

pytestmark = pytest.mark.faults

INJECT = str(REPO / "tests" / "faults" / "inject.py")
TIMING = ("decode_time_s", "wall_time_s", "utt_per_s")


def decode_args(data: Path, ckpt: Path, out: Path) -> List[str]:
    return [str(REPO / "avhubert" / "infer_s2s.py"), "--config-dir", str(REPO / "conf"), "--config-name", "s2s_decode",
            f"common_eval.path={ckpt}", f"common_eval.results_path={out}", "dataset.gen_subset=test",
            "override.modalities=[audio,video]", f"+override.data={data}", f"+override.label_dir={data}",
            "generation.beam=3", f"hydra.run.dir={out.parent / 'hydra'}"]


def results(out: Path) -> Dict[str, str]:
    """Visible result files -> comparable content (temporaries and the log left out)."""
    got = {}
    for p in sorted(out.glob("*")) if out.is_dir() else []:
        if ".tmp" in p.name or p.name == "decode.log":
            continue
        text = p.read_text(encoding="utf-8")
        if p.name == "metrics.json":
            text = json.dumps({k: v for k, v in json.loads(text).items() if k not in TIMING}, sort_keys=True)
        got[p.name] = text
    return got


@pytest.fixture(scope="module")
def reference(decoder_model, tmp_path_factory):
    data, ckpt = decoder_model
    out = tmp_path_factory.mktemp("ref") / "dec"
    start = time.monotonic()
    run_ok([python(), *decode_args(data, ckpt, out)], out.parent / "log")
    ref = results(out)
    assert {"decode.jsonl", "metrics.json"} <= set(ref) and any(n.startswith("wer.") for n in ref), ref.keys()
    return ref, time.monotonic() - start


def check_not_partial(out: Path, ref: Dict[str, str]) -> None:
    for name, text in results(out).items():
        assert ref.get(name) == text, f"{name} is visible but differs from the uninterrupted run (partial?)"


TARGETS = [
    ("after-replace", "decode.jsonl", 1),  # before the hypotheses file
    ("after-replace", "hypo-*.json", 1),  # before the WER file
    ("after-replace", "wer.*", 1),  # before metrics.json
    ("before-replace", "metrics.json", 1),  # metrics in their temp file
]


@pytest.mark.parametrize("event,glob,nth", TARGETS, ids=[f"{e}:{g}" for e, g, _ in TARGETS])
def test_targeted_kill_then_rerun(decoder_model, reference, tmp_path, event, glob, nth):
    (data, ckpt), (ref, _) = decoder_model, reference
    out = tmp_path / "dec"
    assert not run_killed_when([python(), INJECT, event, glob, str(nth), *decode_args(data, ckpt, out)], lambda: False, tmp_path / "log")
    assert "metrics.json" not in results(out), "the injected kill did not happen"
    check_not_partial(out, ref)
    run_ok([python(), *decode_args(data, ckpt, out)], tmp_path / "log")
    assert results(out) == ref


def test_random_kill_then_rerun(decoder_model, reference, tmp_path):
    (data, ckpt), (ref, seconds) = decoder_model, reference
    out = tmp_path / "dec"
    delay = random.Random(0).uniform(0.5, 1.0) * seconds
    start = time.monotonic()
    run_killed_when([python(), *decode_args(data, ckpt, out)], lambda: time.monotonic() - start > delay, tmp_path / "log")
    check_not_partial(out, ref)
    run_ok([python(), *decode_args(data, ckpt, out)], tmp_path / "log")
    assert results(out) == ref
