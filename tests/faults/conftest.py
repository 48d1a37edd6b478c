"""Shared fixtures of the fault-injection suite."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.helpers import REPO, env
from tests.finetune.helpers import add_test_split_and_vocab, copy_corpus


def _train(conf: str, name: str, exp: Path, *overrides: str) -> Path:
    hydra = str(Path(sys.executable).parent / "fairseq-hydra-train")
    args = [hydra, "--config-dir", str(REPO / "conf" / conf), "--config-name", name, f"common.user_dir={REPO / 'avhubert'}",
            f"hydra.run.dir={exp}", f"checkpoint.save_dir={exp / 'ckpt'}", *overrides]
    proc = subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exp / "ckpt" / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def decoder_model(synthetic_corpus, tmp_path_factory):
    """(data dir with a 4-utterance test split, tiny seq2seq checkpoint: 4 pre-training + 4 fine-tuning updates)."""
    data = add_test_split_and_vocab(copy_corpus(synthetic_corpus, tmp_path_factory.mktemp("dec")))
    common = [f"task.data={data}", f"task.label_dir={data}"]
    pre = _train("pretrain", "tiny", data / "pt", *common, "optimization.max_update=4", "dataset.disable_validation=true")
    ckpt = _train("finetune", "tiny_s2s", data / "ft", *common, f"task.tokenizer_bpe_model={data / 'spm' / 'spm.model'}",
                  f"model.w2v_path={pre}", "optimization.max_update=4", "dataset.disable_validation=true")
    return data, ckpt


