"""Trainers and the decoder exit with status 0 with fairseq's default prefetch buffer (issue 10).

Root cause of the old abort ("terminate called without an active exception", exit status -6/134):
fairseq's prefetch thread (`dataset.data_buffer_size`, default 10) was still decoding video inside
OpenCV when the interpreter exited; see `avhubert/clean_exit.py`. The worker test reproduces that
moment deterministically (exit right after the first batch) and shows the abort without the fix.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.finetune.test_finetune_decode import ft_data, hydra_train  # noqa: F401  (fixture + helper)

WORKER = REPO / "tests" / "plugin" / "prefetch_exit_worker.py"
ABORT_MARKS = ("terminate called", "exception not rethrown", "Aborted")


def run_worker(data: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(WORKER), str(data), *flags], env=env, capture_output=True,
                          text=True, timeout=300)


def assert_clean(proc: subprocess.CompletedProcess, what: str) -> None:
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"{what} exited with {proc.returncode}:\n{tail}"
    assert not any(m in proc.stderr for m in ABORT_MARKS), f"{what}:\n{tail}"


def test_exit_while_the_prefetch_thread_decodes_is_clean(ft_data):
    for attempt in range(3):
        proc = run_worker(ft_data)
        assert "first batch" in proc.stdout
        assert_clean(proc, f"prefetch worker, attempt {attempt + 1}")


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="CPython >= 3.14 no longer ends daemon threads with pthread_exit")
def test_without_the_exit_hook_the_same_run_aborts(ft_data):
    """Negative control: the worker aborts at exit when the plugin's exit hook is unregistered."""
    codes = [run_worker(ft_data, "--without-fix").returncode for _ in range(3)]
    assert any(c != 0 for c in codes), f"expected at least one abort without the fix, got exit codes {codes}"


def _pretrain(bin_dir: Path, data: Path, exp: Path) -> Path:
    hydra_train(bin_dir, REPO, "pretrain", "tiny", exp, f"task.data={data}", f"task.label_dir={data}",
                "optimization.max_update=2", "dataset.disable_validation=true")
    return exp / "ckpt" / "checkpoint_last.pt"


def _finetune(bin_dir: Path, data: Path, pretrained: Path, exp: Path) -> Path:
    hydra_train(bin_dir, REPO, "finetune", "tiny_s2s", exp, f"task.data={data}", f"task.label_dir={data}",
                f"task.tokenizer_bpe_model={data / 'spm' / 'spm.model'}", f"model.w2v_path={pretrained}",
                "optimization.max_update=2", "dataset.validate_interval=1")
    return exp / "ckpt" / "checkpoint_last.pt"


def _decode(s2s: Path, data: Path, out: Path) -> None:
    run_cli([sys.executable, str(REPO / "avhubert" / "infer_s2s.py"), "--config-dir", str(REPO / "conf"),
             "--config-name", "s2s_decode", f"common_eval.path={s2s}", f"common_eval.results_path={out}",
             "dataset.gen_subset=valid", "override.modalities=[audio,video]", f"+override.data={data}",
             f"+override.label_dir={data}", "generation.beam=2"])


def test_shipped_tiny_configs_train_and_decode_with_exit_status_0(bin_dir, ft_data, tmp_path):
    """Default `data_buffer_size`: pre-training, seq2seq fine-tuning (with validation) and
    `infer_s2s.py` each exit 0 (`run_cli` fails the test on any non-zero status)."""
    pretrained = _pretrain(bin_dir, ft_data, tmp_path / "pt")
    s2s = _finetune(bin_dir, ft_data, pretrained, tmp_path / "s2s")
    assert pretrained.is_file() and s2s.is_file()
    _decode(s2s, ft_data, tmp_path / "dec")
    assert list((tmp_path / "dec").glob("wer.*"))


@pytest.mark.slow
def test_repeated_trainer_runs_all_exit_0(bin_dir, ft_data, tmp_path):
    """Three pre-training and three fine-tuning runs in a row, every exit status 0."""
    pretrained = None
    for i in range(3):
        pretrained = _pretrain(bin_dir, ft_data, tmp_path / f"pt{i}")
    for i in range(3):
        _finetune(bin_dir, ft_data, pretrained, tmp_path / f"s2s{i}")
