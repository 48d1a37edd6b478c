"""Shared fixtures of the fault-injection suite."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preparation.tokenizer import train_sentencepiece
from tests.faults.helpers import REPO, env


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


