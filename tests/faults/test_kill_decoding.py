"""SIGKILL during decoding (`avhubert/infer_s2s.py`, a tiny fine-tuned seq2seq model), then rerun.

Targeted kills land between the writes of the result files (`decode.jsonl`, `hypo-*.json`,
`wer.*`, `metrics.json`); a random kill lands anywhere. After every kill each visible result
must equal the uninterrupted run's, and the rerun must reproduce it: byte for byte, except
`metrics.json`'s timing fields (`decode_time_s`, `wall_time_s`, `utt_per_s`, compared without
them) and `decode.log` (a log, with timestamps; not compared).
"""

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from preparation.tokenizer import train_sentencepiece
from tests.faults.helpers import REPO, env, python, run_killed_when, run_ok

pytestmark = pytest.mark.faults

INJECT = str(REPO / "tests" / "faults" / "inject.py")
TIMING = ("decode_time_s", "wall_time_s", "utt_per_s")


def _train(conf: str, name: str, exp: Path, *overrides: str) -> Path:
    hydra = str(Path(sys.executable).parent / "fairseq-hydra-train")
    args = [hydra, "--config-dir", str(REPO / "conf" / conf), "--config-name", name, f"common.user_dir={REPO / 'avhubert'}",
            f"hydra.run.dir={exp}", f"checkpoint.save_dir={exp / 'ckpt'}", *overrides]
    proc = subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exp / "ckpt" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def model(synthetic_corpus, tmp_path_factory):
    """(data dir with a 4-utterance test split, tiny seq2seq checkpoint: 4 pre-training + 4 fine-tuning updates)."""
    data = tmp_path_factory.mktemp("dec")
    for f in synthetic_corpus.iterdir():
        if f.is_file():
            shutil.copy(f, data / f.name)
    shutil.copy(data / "valid.tsv", data / "test.tsv")
    shutil.copy(data / "valid.wrd", data / "test.wrd")
    _, dct = train_sentencepiece((data / "train.wrd").read_text().splitlines(), data / "spm" / "spm", vocab_size=30)
    shutil.copy(dct, data / "dict.wrd.txt")
    common = [f"task.data={data}", f"task.label_dir={data}"]
    pre = _train("pretrain", "tiny", data / "pt", *common, "optimization.max_update=4", "dataset.disable_validation=true")
    ckpt = _train("finetune", "tiny_s2s", data / "ft", *common, f"task.tokenizer_bpe_model={data / 'spm' / 'spm.model'}",
                  f"model.w2v_path={pre}", "optimization.max_update=4", "dataset.disable_validation=true")
    return data, ckpt


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
def reference(model, tmp_path_factory):
    data, ckpt = model
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
def test_targeted_kill_then_rerun(model, reference, tmp_path, event, glob, nth):
    (data, ckpt), (ref, _) = model, reference
    out = tmp_path / "dec"
    assert not run_killed_when([python(), INJECT, event, glob, str(nth), *decode_args(data, ckpt, out)], lambda: False, tmp_path / "log")
    assert "metrics.json" not in results(out), "the injected kill did not happen"
    check_not_partial(out, ref)
    run_ok([python(), *decode_args(data, ckpt, out)], tmp_path / "log")
    assert results(out) == ref


def test_random_kill_then_rerun(model, reference, tmp_path):
    (data, ckpt), (ref, seconds) = model, reference
    out = tmp_path / "dec"
    delay = random.Random(0).uniform(0.5, 1.0) * seconds
    start = time.monotonic()
    run_killed_when([python(), *decode_args(data, ckpt, out)], lambda: time.monotonic() - start > delay, tmp_path / "log")
    check_not_partial(out, ref)
    run_ok([python(), *decode_args(data, ckpt, out)], tmp_path / "log")
    assert results(out) == ref
